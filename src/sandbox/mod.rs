//! Simulators that speak the vendors' real wire protocols, for sandbox mode and tests.
//!
//! Sandbox mode runs them in-process on loopback and points the real carrier code at them, so a new
//! user sees the whole flow with no accounts and no network, and the tests exercise the same code a
//! live deployment runs.

pub mod faults;
pub mod realtime;
pub mod speech;
pub mod twilio;

use crate::auth::{self, Claims};
use crate::config::{AuthConfig, Config, JwtKey, OpenAiAuthHeader};
use rand::Rng;
use realtime::{RealtimeSimConfig, RealtimeSimulator};
use std::time::Duration;
use twilio::{SimulatorConfig, TwilioSimulator};

/// The simulators sandbox mode runs; dropped or shut down together.
#[derive(Debug)]
pub struct Simulators {
    pub twilio: TwilioSimulator,
    pub realtime: RealtimeSimulator,
    /// A token for `/mcp` and the events feed, signed with a secret made up for this run. `None` when the operator
    /// configured their own key: then a token printed to the log would be a real credential.
    pub token: Option<String>,
}

impl Simulators {
    pub async fn shutdown(self) {
        self.twilio.shutdown().await;
        self.realtime.shutdown().await;
    }
}

/// Starts both simulators and points `config` at them: their URLs, their (random) credentials, and —
/// when no `PUBLIC_URL` was given — this server's own loopback address on `port`.
pub async fn start(config: &mut Config, port: u16) -> std::io::Result<Simulators> {
    let hex = |n: usize| -> String {
        let mut rng = rand::rng();
        (0..n).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect()
    };
    let sim_config = SimulatorConfig {
        account_sid: format!("AC{}", hex(32)),
        auth_token: hex(32),
        api_key: None,
        step_delay: Duration::from_millis(400),
        // A safety net: the scripted conversation ends the call itself well before this.
        talk_time: Some(Duration::from_secs(60)),
        media: true,
        ms_per_char: 45,
    };
    let sim = TwilioSimulator::start(sim_config.clone()).await?;
    let rt_config = RealtimeSimConfig { api_key: hex(32), ms_per_char: 45, delta_ms: 100, end_silence_ms: 500 };
    let realtime = RealtimeSimulator::start(rt_config.clone()).await?;
    let mut voice_url = url::Url::parse(&realtime.url()).map_err(std::io::Error::other)?;
    voice_url.query_pairs_mut().append_pair("model", &config.voice.model);
    config.voice.url = voice_url;
    config.voice.api_key = rt_config.api_key;
    config.voice.auth_header = OpenAiAuthHeader::Authorization;
    // No key configured: make one up for this run, so /mcp and the events feed work out of the box.
    let made_up_key = config.auth.is_none();
    if made_up_key {
        config.auth =
            Some(AuthConfig { key: JwtKey::Secret(hex(64)), algorithm: "HS256".into(), issuer: None, audience: None });
    }
    if !config.public_url_given {
        let url = format!("http://127.0.0.1:{port}/");
        config.set_public_url(url::Url::parse(&url).map_err(std::io::Error::other)?);
    } else {
        let resource = config.resource();
        if let Some(auth) = config.auth.as_mut()
            && auth.audience.is_none()
        {
            auth.audience = Some(resource);
        }
    }
    config.twilio.account_sid = sim_config.account_sid;
    config.twilio.auth_token = sim_config.auth_token;
    config.twilio.auth = crate::config::TwilioAuth::AuthToken;
    config.twilio.api_base = url::Url::parse(&sim.base_url()).map_err(std::io::Error::other)?;
    let token = if made_up_key { sandbox_token(config) } else { None };
    // Tests read what the simulators saw; sandbox mode never does, so it keeps no log.
    sim.discard_log();
    realtime.discard_log();
    Ok(Simulators { twilio: sim, realtime, token })
}

/// A token for the sandbox's `/mcp` and events feed, with every scope, valid for a day.
fn sandbox_token(config: &Config) -> Option<String> {
    let auth = config.auth.as_ref()?;
    let JwtKey::Secret(secret) = &auth.key else { return None };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let claims = Claims {
        sub: "sandbox".into(),
        exp: now + 86_400,
        iat: Some(now),
        nbf: None,
        iss: auth.issuer.clone(),
        aud: auth.audience.clone().map(Into::into),
        scope: [auth::SCOPE_CALLS_WRITE, auth::SCOPE_CALLS_READ, auth::SCOPE_EVENTS_READ].join(" "),
        calls: None,
    };
    auth::mint(secret, &auth.algorithm, &claims).ok()
}
