//! Simulators that speak the vendors' real wire protocols, for sandbox mode and tests.
//!
//! Sandbox mode runs them in-process on loopback and points the real carrier code at them, so a new
//! user sees the whole flow with no accounts and no network, and the tests exercise the same code a
//! live deployment runs.

pub mod twilio;

use crate::config::Config;
use rand::Rng;
use std::time::Duration;
use twilio::{SimulatorConfig, TwilioSimulator};

/// Starts the Twilio simulator and points `config` at it: its URL, its (random) credentials, and — when
/// no `PUBLIC_URL` was given — this server's own loopback address on `port`.
pub async fn start(config: &mut Config, port: u16) -> std::io::Result<TwilioSimulator> {
    let hex = |n: usize| -> String {
        let mut rng = rand::rng();
        (0..n).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect()
    };
    let sim_config = SimulatorConfig {
        account_sid: format!("AC{}", hex(32)),
        auth_token: hex(32),
        api_key: None,
        step_delay: Duration::from_millis(700),
        talk_time: Some(Duration::from_secs(6)),
    };
    let sim = TwilioSimulator::start(sim_config.clone()).await?;
    if !config.public_url_given {
        let url = format!("http://127.0.0.1:{port}/");
        config.public_url = url::Url::parse(&url).map_err(std::io::Error::other)?;
    }
    config.twilio.account_sid = sim_config.account_sid;
    config.twilio.auth_token = sim_config.auth_token;
    config.twilio.auth = crate::config::TwilioAuth::AuthToken;
    config.twilio.api_base = url::Url::parse(&sim.base_url()).map_err(std::io::Error::other)?;
    Ok(sim)
}
