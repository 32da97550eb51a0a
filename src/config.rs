//! One `Config`, from flags, environment variables and `.env`, validated once at start.
//!
//! Clap reads every setting as a plain string (flag or env var, same name as DESIGN.md) and this module
//! does the checking itself, so that a wrong value produces one line naming the setting the operator
//! actually typed (`PORT: 'http' is not a port number`) and `check` can list every problem at once.

use crate::calls::{DestinationPolicy, E164};
use clap::Args;
use std::net::IpAddr;
use std::time::Duration;
use url::Url;

/// Every setting as the operator typed it. Flags and env vars share a name (`--public-url` = `PUBLIC_URL`).
#[derive(Debug, Clone, Default, Args)]
pub struct RawConfig {
    /// The public https URL Twilio and MCP clients reach this server at (e.g. https://calls.example.com).
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Port to listen on [default: 8080].
    #[arg(long, env = "PORT")]
    pub port: Option<String>,
    /// Address to bind [default: 127.0.0.1; use 0.0.0.0 in a container].
    #[arg(long, env = "BIND")]
    pub bind: Option<String>,
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub twilio_api_key_sid: Option<String>,
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub twilio_api_key_secret: Option<String>,
    /// The Twilio number calls come from (E.164).
    #[arg(long, env = "TWILIO_NUMBER")]
    pub twilio_number: Option<String>,
    /// Scheme and host of Twilio's REST API [default: https://api.twilio.com].
    #[arg(long, env = "TWILIO_API_BASE")]
    pub twilio_api_base: Option<String>,
    /// Longest one Twilio REST request may take, in seconds [default: 15].
    #[arg(long, env = "TWILIO_TIMEOUT_SECS")]
    pub twilio_timeout_secs: Option<String>,
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Realtime endpoint without the model [default: wss://api.openai.com/v1/realtime].
    #[arg(long, env = "OPENAI_REALTIME_URL")]
    pub openai_realtime_url: Option<String>,
    /// Full Realtime URL with the model, used exactly as given (the original project's setting).
    #[arg(long, env = "OPENAI_WEBSOCKET_URL")]
    pub openai_websocket_url: Option<String>,
    /// [default: gpt-realtime]
    #[arg(long, env = "OPENAI_REALTIME_MODEL")]
    pub openai_realtime_model: Option<String>,
    /// [default: marin]
    #[arg(long, env = "OPENAI_VOICE")]
    pub openai_voice: Option<String>,
    /// `authorization` (OpenAI) or `api-key` (Azure) [default: authorization].
    #[arg(long, env = "OPENAI_AUTH_HEADER")]
    pub openai_auth_header: Option<String>,
    /// Record calls by default [default: false].
    #[arg(long, env = "RECORD_CALLS")]
    pub record_calls: Option<String>,
    /// Comma-separated E.164 prefixes that may be called (empty = any).
    #[arg(long, env = "ALLOWED_DESTINATIONS")]
    pub allowed_destinations: Option<String>,
    /// Comma-separated E.164 prefixes that may never be called.
    #[arg(long, env = "DENIED_DESTINATIONS")]
    pub denied_destinations: Option<String>,
    /// [default: 10]
    #[arg(long, env = "MAX_CONCURRENT_CALLS")]
    pub max_concurrent_calls: Option<String>,
    /// [default: 600]
    #[arg(long, env = "MAX_CALL_DURATION_SECS")]
    pub max_call_duration_secs: Option<String>,
    /// Seconds to let the phone ring before giving up [default: 30].
    #[arg(long, env = "RING_TIMEOUT_SECS")]
    pub ring_timeout_secs: Option<String>,
    /// Seconds to let in-flight requests finish on SIGTERM [default: 10].
    #[arg(long, env = "SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<String>,
    /// Run against built-in simulators: no accounts, no network [default: false].
    #[arg(long, env = "SANDBOX", num_args = 0..=1, default_missing_value = "true")]
    pub sandbox: Option<String>,
    /// HMAC secret for HS256/384/512 tokens (at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS*/PS*/ES*/EdDSA tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<String>,
    /// JWKS URL of an external authorization server (Auth0, Keycloak, Entra).
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// The one algorithm tokens may use [default: HS256 with JWT_SECRET, RS256 otherwise].
    #[arg(long, env = "JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Where calls and events are kept [default: sqlite://./data/voice-call.db; in memory in sandbox mode].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Events older than this many days are deleted [default: 30].
    #[arg(long, env = "EVENT_RETENTION_DAYS")]
    pub event_retention_days: Option<String>,
    /// At most this many events are kept [default: 1000000].
    #[arg(long, env = "EVENT_RETENTION_COUNT")]
    pub event_retention_count: Option<String>,
    /// At most this many ended calls (with their transcripts) are kept [default: 100000].
    #[arg(long, env = "CALL_RETENTION_COUNT")]
    pub call_retention_count: Option<String>,
    /// Milliseconds between SSE heartbeat comments [default: 30000].
    #[arg(long, env = "SSE_HEARTBEAT_INTERVAL")]
    pub sse_heartbeat_interval: Option<String>,
    /// Origin allowed to read /events from a browser (CORS); comma-separated [default: none].
    #[arg(long, env = "SSE_CORS_ORIGIN")]
    pub sse_cors_origin: Option<String>,
    /// Open /events streams in total [default: 10000].
    #[arg(long, env = "SSE_MAX_CONNECTIONS")]
    pub sse_max_connections: Option<String>,
    /// Open /events streams per token subject [default: 20].
    #[arg(long, env = "SSE_MAX_CONNECTIONS_PER_SUBJECT")]
    pub sse_max_connections_per_subject: Option<String>,
    /// `jwt` (bearer tokens on /mcp) or `none` (only on a loopback BIND, behind an authenticating proxy)
    /// [default: jwt].
    #[arg(long, env = "MCP_AUTH")]
    pub mcp_auth: Option<String>,
    /// Comma-separated authorization server URLs for the OAuth metadata [default: JWT_ISSUER].
    #[arg(long, env = "OAUTH_AUTHORIZATION_SERVERS")]
    pub oauth_authorization_servers: Option<String>,
    /// Take the client address from X-Forwarded-For / Forwarded (only behind a proxy that sets them)
    /// [default: false].
    #[arg(long, env = "TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: Option<String>,
    /// Requests per minute to /mcp, per client address and per token subject [default: 300].
    #[arg(long, env = "RATE_LIMIT_MCP")]
    pub rate_limit_mcp: Option<String>,
    /// /events connects per minute, per client address and per token subject [default: 60].
    #[arg(long, env = "RATE_LIMIT_EVENTS")]
    pub rate_limit_events: Option<String>,
    /// Requests per minute to the Twilio routes, per client address [default: 6000].
    #[arg(long, env = "RATE_LIMIT_TWILIO")]
    pub rate_limit_twilio: Option<String>,
    /// Calls one token subject may place per hour [default: 60].
    #[arg(long, env = "CALLS_PER_HOUR")]
    pub calls_per_hour: Option<String>,
    /// Seconds active calls may go on after SIGTERM before the AI is told to wrap up [default: 30].
    #[arg(long, env = "DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<String>,
    /// OTLP/HTTP collector base URL (e.g. http://localhost:4318): traces and metrics are exported there.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// `text` or `json` (one JSON object per line) [default: text].
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Bearer token `GET /metrics` requires; without it /metrics answers loopback peers only.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Async worker threads [default: one per CPU the process may use, CPU quota included].
    #[arg(long, env = "WORKER_THREADS")]
    pub worker_threads: Option<String>,
    /// `off`, `auto` or `on`: keep each worker thread on a CPU of its own (for a host the server has to
    /// itself); `auto` does when the process may use exactly as many CPUs as it has workers [default: off].
    #[arg(long, env = "WORKER_CPU_AFFINITY")]
    pub worker_cpu_affinity: Option<String>,
}

/// Where the token-verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    Secret(String),
    PublicKeyFile(std::path::PathBuf),
    Jwks(Url),
}

/// JWT validation settings; `None` in [`Config::auth`] when no key is configured.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub key: JwtKey,
    /// The algorithm name as configured (`HS256`, `RS256`, `ES256`, `EdDSA`, …), pinned: tokens naming
    /// another are refused.
    pub algorithm: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Who may use the server and how hard: `/mcp` authorization and the abuse limits.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Whether `/mcp` requires a bearer token (false only with `MCP_AUTH=none` on a loopback bind).
    pub mcp_requires_token: bool,
    /// The OAuth authorization servers named in the protected-resource metadata.
    pub authorization_servers: Vec<String>,
    pub trust_forwarded_for: bool,
    pub mcp_per_minute: u32,
    pub events_per_minute: u32,
    pub twilio_per_minute: u32,
    pub calls_per_hour: u32,
}

#[derive(Debug, Clone)]
pub struct SseConfig {
    pub heartbeat: Duration,
    pub cors_origins: Vec<String>,
    pub max_connections: usize,
    pub max_connections_per_subject: usize,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://PATH` (a file, created with its directory) or `sqlite::memory:`.
    pub database_url: String,
    pub retention: Duration,
    pub retention_count: u64,
    /// Ended calls kept (with their transcripts), newest first; older ones also go with the age limit.
    pub call_retention_count: u64,
}

pub const JWT_ALGORITHMS: &[&str] =
    &["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioAuth {
    AuthToken,
    ApiKey { sid: String, secret: String },
}

#[derive(Debug, Clone)]
pub struct TwilioConfig {
    pub account_sid: String,
    /// Always needed: it is the key Twilio signs webhooks with, even when REST uses an API key.
    pub auth_token: String,
    pub auth: TwilioAuth,
    pub number: E164,
    pub api_base: Url,
    /// Longest one REST request may take (`TWILIO_TIMEOUT_SECS`).
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenAiAuthHeader {
    Authorization,
    ApiKey,
}

#[derive(Debug, Clone)]
pub struct VoiceConfig {
    pub api_key: String,
    /// The full Realtime URL, model included.
    pub url: Url,
    pub model: String,
    pub voice: String,
    pub auth_header: OpenAiAuthHeader,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub public_url: Url,
    /// False in sandbox mode without `PUBLIC_URL`: the URL is then made from the bound port.
    pub public_url_given: bool,
    pub port: u16,
    pub bind: IpAddr,
    pub twilio: TwilioConfig,
    pub voice: VoiceConfig,
    pub record_calls: bool,
    pub policy: DestinationPolicy,
    pub max_concurrent_calls: usize,
    pub max_call_duration: Duration,
    pub ring_timeout: Duration,
    pub shutdown_grace: Duration,
    /// How long active calls may go on after SIGTERM before they are wrapped up.
    pub drain_timeout: Duration,
    pub sandbox: bool,
    pub auth: Option<AuthConfig>,
    pub access: AccessConfig,
    pub store: StoreConfig,
    pub sse: SseConfig,
    /// Where traces and metrics are pushed (OTLP/HTTP base URL); `None`: not pushed.
    pub otlp_endpoint: Option<Url>,
    pub log_format: crate::telemetry::LogFormat,
    /// The bearer token `/metrics` requires; `None`: loopback peers only.
    pub metrics_token: Option<String>,
    /// Worker threads and their CPU affinity.
    pub runtime: crate::runtime::RuntimeConfig,
}

/// One problem with one setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

pub const VOICES: &[&str] = &["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"];

/// Collects every error instead of stopping at the first, so `check` can name them all.
struct Checker(Vec<ConfigError>);

impl Checker {
    fn fail(&mut self, setting: &'static str, problem: impl Into<String>) {
        self.0.push(ConfigError { setting, problem: problem.into() });
    }

    fn parse<T>(&mut self, setting: &'static str, raw: &Option<String>, default: T, what: &str) -> T
    where
        T: std::str::FromStr,
    {
        match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                self.fail(setting, format!("'{s}' is not {what}"));
                default
            }),
        }
    }

    fn bool(&mut self, setting: &'static str, raw: &Option<String>) -> bool {
        match raw.as_deref().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(other) => {
                self.fail(setting, format!("'{other}' is not true or false"));
                false
            }
        }
    }

    fn required(&mut self, setting: &'static str, raw: &Option<String>, hint: &str) -> String {
        match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => s.to_owned(),
            None => {
                self.fail(setting, format!("is not set ({hint})"));
                String::new()
            }
        }
    }

    fn url(&mut self, setting: &'static str, raw: &str, schemes: &[&str]) -> Option<Url> {
        match Url::parse(raw) {
            Ok(u) if schemes.contains(&u.scheme()) && u.host_str().is_some() => Some(u),
            Ok(_) => {
                self.fail(setting, format!("'{raw}' must be a {} URL with a host", schemes.join(" or ")));
                None
            }
            Err(e) => {
                self.fail(setting, format!("'{raw}' is not a URL ({e})"));
                None
            }
        }
    }
}

fn prefixes(raw: &Option<String>) -> Vec<String> {
    raw.as_deref().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn placeholder_url() -> Url {
    Url::parse("http://127.0.0.1/").unwrap_or_else(|_| unreachable!("a constant URL parses"))
}

impl RawConfig {
    /// Whether sandbox mode was asked for (decides which settings are required).
    pub fn wants_sandbox(&self) -> bool {
        Checker(Vec::new()).bool("SANDBOX", &self.sandbox)
    }

    /// Validates every setting. In sandbox mode the carrier and voice credentials are not needed; the
    /// caller fills them in with the simulators' via [`Config::sandboxed`].
    pub fn validate(&self) -> Result<Config, Vec<ConfigError>> {
        let mut c = Checker(Vec::new());
        let sandbox = c.bool("SANDBOX", &self.sandbox);
        let port: u16 = c.parse("PORT", &self.port, 8080, "a port number (1-65535)");
        if self.port.is_some() && port == 0 && !sandbox {
            c.fail("PORT", "must not be 0 (only sandbox mode may pick a free port)");
        }
        let bind: IpAddr = c.parse("BIND", &self.bind, IpAddr::from([127, 0, 0, 1]), "an IP address");

        let public_url = match self.public_url.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(raw) => c.url("PUBLIC_URL", raw, &["https", "http"]).map(|mut u| {
                if u.path() != "/" || u.query().is_some() {
                    c.fail("PUBLIC_URL", format!("'{raw}' must be just scheme and host (and port), no path"));
                }
                u.set_path("/");
                u
            }),
            None if sandbox => None, // filled in once the port is known
            None => {
                c.fail("PUBLIC_URL", "is not set (the https URL Twilio reaches this server at)");
                None
            }
        };

        let live = !sandbox;
        let (account_sid, auth_token, number) = if live {
            let sid = c.required("TWILIO_ACCOUNT_SID", &self.twilio_account_sid, "from the Twilio console");
            if !sid.is_empty() && !is_sid(&sid, "AC") {
                c.fail("TWILIO_ACCOUNT_SID", "must be 'AC' followed by 32 hex digits");
            }
            let token = c.required("TWILIO_AUTH_TOKEN", &self.twilio_auth_token, "from the Twilio console");
            let number = c.required("TWILIO_NUMBER", &self.twilio_number, "the Twilio number to call from");
            (sid, token, number)
        } else {
            (String::new(), String::new(), String::new())
        };
        let number = if number.is_empty() {
            None
        } else {
            E164::parse(&number).map_err(|e| c.fail("TWILIO_NUMBER", e.to_string())).ok()
        };
        let auth = match (&self.twilio_api_key_sid, &self.twilio_api_key_secret) {
            (Some(sid), Some(secret)) if live => {
                if !is_sid(sid.trim(), "SK") {
                    c.fail("TWILIO_API_KEY_SID", "must be 'SK' followed by 32 hex digits");
                }
                TwilioAuth::ApiKey { sid: sid.trim().to_owned(), secret: secret.trim().to_owned() }
            }
            (Some(_), None) if live => {
                c.fail("TWILIO_API_KEY_SECRET", "is not set but TWILIO_API_KEY_SID is");
                TwilioAuth::AuthToken
            }
            (None, Some(_)) if live => {
                c.fail("TWILIO_API_KEY_SID", "is not set but TWILIO_API_KEY_SECRET is");
                TwilioAuth::AuthToken
            }
            _ => TwilioAuth::AuthToken,
        };
        let api_base_raw = self.twilio_api_base.clone().unwrap_or_else(|| "https://api.twilio.com".into());
        let api_base = c.url("TWILIO_API_BASE", api_base_raw.trim(), &["https", "http"]);

        let api_key = if live {
            c.required("OPENAI_API_KEY", &self.openai_api_key, "an OpenAI or Azure OpenAI key")
        } else {
            String::new()
        };
        let model = self.openai_realtime_model.clone().unwrap_or_else(|| "gpt-realtime".into());
        let voice_url = match self.openai_websocket_url.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(full) => c.url("OPENAI_WEBSOCKET_URL", full, &["wss", "ws"]),
            None => {
                let base = self.openai_realtime_url.as_deref().unwrap_or("wss://api.openai.com/v1/realtime");
                c.url("OPENAI_REALTIME_URL", base.trim(), &["wss", "ws"]).map(|mut u| {
                    u.query_pairs_mut().append_pair("model", &model);
                    u
                })
            }
        };
        let voice = self.openai_voice.clone().unwrap_or_else(|| "marin".into());
        if !VOICES.contains(&voice.as_str()) {
            c.fail("OPENAI_VOICE", format!("'{voice}' is not one of {}", VOICES.join(", ")));
        }
        let auth_header = match self.openai_auth_header.as_deref().map(str::trim) {
            None | Some("") | Some("authorization") => OpenAiAuthHeader::Authorization,
            Some("api-key") => OpenAiAuthHeader::ApiKey,
            Some(other) => {
                c.fail("OPENAI_AUTH_HEADER", format!("'{other}' is not 'authorization' or 'api-key'"));
                OpenAiAuthHeader::Authorization
            }
        };

        let record_calls = c.bool("RECORD_CALLS", &self.record_calls);
        let policy = DestinationPolicy::new(prefixes(&self.allowed_destinations), prefixes(&self.denied_destinations))
            .unwrap_or_else(|e| {
                let setting = if prefixes(&self.allowed_destinations).contains(&e.0) {
                    "ALLOWED_DESTINATIONS"
                } else {
                    "DENIED_DESTINATIONS"
                };
                c.fail(setting, e.to_string());
                DestinationPolicy::default()
            });
        let max_concurrent_calls: usize =
            c.parse("MAX_CONCURRENT_CALLS", &self.max_concurrent_calls, 10, "a whole number");
        if max_concurrent_calls == 0 {
            c.fail("MAX_CONCURRENT_CALLS", "must be at least 1");
        }
        let max_secs: u64 = c.parse("MAX_CALL_DURATION_SECS", &self.max_call_duration_secs, 600, "a number of seconds");
        if !(10..=14_400).contains(&max_secs) {
            c.fail("MAX_CALL_DURATION_SECS", "must be between 10 and 14400 (Twilio's 4-hour limit)");
        }
        let ring_secs: u64 = c.parse("RING_TIMEOUT_SECS", &self.ring_timeout_secs, 30, "a number of seconds");
        let twilio_secs: u64 = c.parse("TWILIO_TIMEOUT_SECS", &self.twilio_timeout_secs, 15, "a number of seconds");
        if !(1..=120).contains(&twilio_secs) {
            c.fail("TWILIO_TIMEOUT_SECS", "must be between 1 and 120");
        }
        if !(5..=600).contains(&ring_secs) {
            c.fail("RING_TIMEOUT_SECS", "must be between 5 and 600");
        }
        let grace_secs: u64 = c.parse("SHUTDOWN_GRACE_SECS", &self.shutdown_grace_secs, 10, "a number of seconds");
        let jwt = self.jwt(&mut c);
        // Sandbox calls are make-believe: kept in memory unless a database is named explicitly.
        let default_db = if sandbox { "sqlite::memory:" } else { "sqlite://./data/voice-call.db" };
        let database_url = self.database_url.clone().unwrap_or_else(|| default_db.into());
        if !database_url.starts_with("sqlite:") {
            c.fail("DATABASE_URL", format!("'{database_url}' is not supported: use sqlite://PATH or sqlite::memory:"));
        }
        let retention_days: u64 = c.parse("EVENT_RETENTION_DAYS", &self.event_retention_days, 30, "a number of days");
        let retention_count: u64 =
            c.parse("EVENT_RETENTION_COUNT", &self.event_retention_count, 1_000_000, "a whole number");
        let call_retention_count: u64 =
            c.parse("CALL_RETENTION_COUNT", &self.call_retention_count, 100_000, "a whole number");
        if call_retention_count == 0 {
            c.fail("CALL_RETENTION_COUNT", "must be at least 1");
        }
        if retention_days == 0 || retention_count == 0 {
            c.fail(
                if retention_days == 0 { "EVENT_RETENTION_DAYS" } else { "EVENT_RETENTION_COUNT" },
                "must be at least 1",
            );
        }
        let heartbeat_ms: u64 =
            c.parse("SSE_HEARTBEAT_INTERVAL", &self.sse_heartbeat_interval, 30_000, "a number of milliseconds");
        if !(100..=300_000).contains(&heartbeat_ms) {
            c.fail("SSE_HEARTBEAT_INTERVAL", "must be between 100 and 300000 milliseconds");
        }
        let cors_origins = prefixes(&self.sse_cors_origin);
        for origin in &cors_origins {
            if origin != "*" && Url::parse(origin).map_or(true, |u| u.origin().ascii_serialization() != *origin) {
                c.fail("SSE_CORS_ORIGIN", format!("'{origin}' is not an origin like https://dash.example.com"));
            }
        }
        let max_sse: usize = c.parse("SSE_MAX_CONNECTIONS", &self.sse_max_connections, 10_000, "a whole number");
        let max_sse_subject: usize =
            c.parse("SSE_MAX_CONNECTIONS_PER_SUBJECT", &self.sse_max_connections_per_subject, 20, "a whole number");
        let drain_secs: u64 = c.parse("DRAIN_TIMEOUT_SECS", &self.drain_timeout_secs, 30, "a number of seconds");
        let access = self.access(&mut c, bind, sandbox, jwt.as_ref());
        // The resource this server is: tokens must be issued for it (RFC 8707, MCP authorization).
        let jwt = jwt.map(|mut a| {
            if a.audience.is_none() {
                a.audience = public_url.as_ref().map(resource_url);
            }
            a
        });
        let otlp_endpoint = match self.otel_exporter_otlp_endpoint.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(raw) => c.url("OTEL_EXPORTER_OTLP_ENDPOINT", raw, &["http", "https"]),
            None => None,
        };
        let log_format =
            crate::telemetry::LogFormat::parse(self.log_format.as_deref().unwrap_or("")).unwrap_or_else(|| {
                c.fail("LOG_FORMAT", format!("'{}' is not text or json", self.log_format.as_deref().unwrap_or("")));
                crate::telemetry::LogFormat::Text
            });
        let metrics_token = self.metrics_token.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            c.fail("METRICS_TOKEN", "must be at least 16 characters long (e.g. openssl rand -hex 24)");
        }
        let runtime = self.runtime(&mut c);

        if !c.0.is_empty() {
            return Err(c.0);
        }
        Ok(Config {
            public_url_given: public_url.is_some(),
            public_url: public_url.unwrap_or_else(placeholder_url),
            port,
            bind,
            twilio: TwilioConfig {
                account_sid,
                auth_token,
                auth,
                number: number.unwrap_or_else(sandbox_number),
                api_base: api_base.unwrap_or_else(placeholder_url),
                request_timeout: Duration::from_secs(twilio_secs),
            },
            voice: VoiceConfig { api_key, url: voice_url.unwrap_or_else(placeholder_url), model, voice, auth_header },
            record_calls,
            policy,
            max_concurrent_calls,
            max_call_duration: Duration::from_secs(max_secs),
            ring_timeout: Duration::from_secs(ring_secs),
            shutdown_grace: Duration::from_secs(grace_secs),
            drain_timeout: Duration::from_secs(drain_secs),
            sandbox,
            auth: jwt,
            access,
            store: StoreConfig {
                database_url,
                retention: Duration::from_secs(retention_days * 86_400),
                retention_count,
                call_retention_count,
            },
            sse: SseConfig {
                heartbeat: Duration::from_millis(heartbeat_ms),
                cors_origins,
                max_connections: max_sse.max(1),
                max_connections_per_subject: max_sse_subject.max(1),
            },
            otlp_endpoint,
            log_format,
            metrics_token,
            runtime,
        })
    }

    fn runtime(&self, c: &mut Checker) -> crate::runtime::RuntimeConfig {
        use crate::runtime::{CpuAffinity, default_worker_threads};
        let worker_threads: usize =
            c.parse("WORKER_THREADS", &self.worker_threads, default_worker_threads(), "a whole number");
        if !(1..=1024).contains(&worker_threads) {
            c.fail("WORKER_THREADS", "must be between 1 and 1024");
        }
        let raw = self.worker_cpu_affinity.as_deref().unwrap_or("");
        let affinity = CpuAffinity::parse(raw).unwrap_or_else(|| {
            c.fail("WORKER_CPU_AFFINITY", format!("'{}' is not off, auto or on", raw.trim()));
            CpuAffinity::Off
        });
        crate::runtime::RuntimeConfig { worker_threads, affinity }
    }

    /// `/mcp` authorization and the abuse limits. `/mcp` without tokens is only for a loopback bind,
    /// where an authenticating proxy on the same host is the only way in.
    fn access(&self, c: &mut Checker, bind: IpAddr, sandbox: bool, jwt: Option<&AuthConfig>) -> AccessConfig {
        let mcp_requires_token = match self.mcp_auth.as_deref().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "jwt") => true,
            Some("none") => {
                if !bind.is_loopback() {
                    c.fail("MCP_AUTH", "'none' is only allowed with a loopback BIND (behind an authenticating proxy)");
                }
                false
            }
            Some(other) => {
                c.fail("MCP_AUTH", format!("'{other}' is not 'jwt' or 'none'"));
                true
            }
        };
        // Sandbox mode makes up a secret when none is configured. (A key setting that is set but wrong has
        // its own error already.)
        let no_key_setting = [&self.jwt_secret, &self.jwt_public_key_file, &self.jwt_jwks_url]
            .iter()
            .all(|v| v.as_deref().is_none_or(|s| s.trim().is_empty()));
        if mcp_requires_token && jwt.is_none() && no_key_setting && !sandbox {
            c.fail(
                "JWT_SECRET",
                "is not set: /mcp needs a key to check tokens (JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL)",
            );
        }
        let mut authorization_servers = prefixes(&self.oauth_authorization_servers);
        for server in &authorization_servers {
            let _ = c.url("OAUTH_AUTHORIZATION_SERVERS", server, &["https", "http"]);
        }
        if authorization_servers.is_empty()
            && let Some(issuer) = jwt.and_then(|a| a.issuer.clone())
            && Url::parse(&issuer).is_ok()
        {
            authorization_servers.push(issuer);
        }
        let per_minute = |c: &mut Checker, setting: &'static str, raw: &Option<String>, default: u32| -> u32 {
            let n: u32 = c.parse(setting, raw, default, "a whole number");
            if n == 0 {
                c.fail(setting, "must be at least 1");
            }
            n.max(1)
        };
        let mcp_per_minute = per_minute(c, "RATE_LIMIT_MCP", &self.rate_limit_mcp, 300);
        let events_per_minute = per_minute(c, "RATE_LIMIT_EVENTS", &self.rate_limit_events, 60);
        let twilio_per_minute = per_minute(c, "RATE_LIMIT_TWILIO", &self.rate_limit_twilio, 6000);
        let calls_per_hour = per_minute(c, "CALLS_PER_HOUR", &self.calls_per_hour, 60);
        AccessConfig {
            mcp_requires_token,
            authorization_servers,
            trust_forwarded_for: c.bool("TRUST_FORWARDED_FOR", &self.trust_forwarded_for),
            mcp_per_minute,
            events_per_minute,
            twilio_per_minute,
            calls_per_hour,
        }
    }

    /// The JWT settings: exactly one key source, an algorithm that fits it.
    fn jwt(&self, c: &mut Checker) -> Option<AuthConfig> {
        let given = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        // The secret is used byte for byte, surrounding spaces included, as the token issuer uses it.
        let secret = self.jwt_secret.clone().filter(|s| !s.trim().is_empty());
        let algorithm = given(&self.jwt_algorithm);
        let key = match (secret, given(&self.jwt_public_key_file), given(&self.jwt_jwks_url)) {
            (None, None, None) => return None,
            (Some(secret), None, None) => {
                // RFC 7518 §3.2: the key is at least as long as the hash.
                let needed = match algorithm.as_deref() {
                    Some("HS384") => 48,
                    Some("HS512") => 64,
                    _ => 32,
                };
                if secret.len() < needed {
                    c.fail(
                        "JWT_SECRET",
                        format!("must be at least {needed} bytes long (e.g. openssl rand -base64 64)"),
                    );
                }
                JwtKey::Secret(secret)
            }
            (None, Some(file), None) => {
                let path = std::path::PathBuf::from(&file);
                if !path.is_file() {
                    c.fail("JWT_PUBLIC_KEY_FILE", format!("'{file}' is not a readable file"));
                }
                JwtKey::PublicKeyFile(path)
            }
            (None, None, Some(url)) => match c.url("JWT_JWKS_URL", &url, &["https", "http"]) {
                Some(u) => {
                    let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
                    if u.scheme() == "http" && !loopback {
                        // Keys fetched in the clear could be swapped by anyone on the path.
                        c.fail("JWT_JWKS_URL", format!("'{url}' must be https (plain http only on loopback)"));
                    }
                    JwtKey::Jwks(u)
                }
                None => return None,
            },
            (secret, file, jwks) => {
                let named: Vec<&str> = [
                    ("JWT_SECRET", secret.is_some()),
                    ("JWT_PUBLIC_KEY_FILE", file.is_some()),
                    ("JWT_JWKS_URL", jwks.is_some()),
                ]
                .iter()
                .filter(|(_, set)| *set)
                .map(|(n, _)| *n)
                .collect();
                c.fail(
                    named[0],
                    format!(
                        "set only one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL (both {} are set)",
                        named.join(" and ")
                    ),
                );
                return None;
            }
        };
        let hmac = matches!(key, JwtKey::Secret(_));
        let algorithm = algorithm.unwrap_or_else(|| if hmac { "HS256" } else { "RS256" }.into());
        if !JWT_ALGORITHMS.contains(&algorithm.as_str()) {
            c.fail("JWT_ALGORITHM", format!("'{algorithm}' is not one of {}", JWT_ALGORITHMS.join(", ")));
        } else if hmac != algorithm.starts_with("HS") {
            // An HMAC secret and a public key never serve the same validator (RFC 8725 §3.1).
            c.fail("JWT_ALGORITHM", format!("'{algorithm}' does not fit the configured key"));
        }
        Some(AuthConfig { key, algorithm, issuer: given(&self.jwt_issuer), audience: given(&self.jwt_audience) })
    }
}

fn sandbox_number() -> E164 {
    E164::parse("+15005550006").unwrap_or_else(|_| unreachable!("a constant E.164 number parses"))
}

fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `https://HOST/mcp`: the MCP endpoint's resource identifier, the audience tokens are issued for.
pub fn resource_url(public_url: &Url) -> String {
    format!("{}/mcp", public_url.as_str().trim_end_matches('/'))
}

impl Config {
    /// This server's resource identifier (RFC 9728 / RFC 8707): the `/mcp` URL.
    pub fn resource(&self) -> String {
        resource_url(&self.public_url)
    }

    /// Sets `PUBLIC_URL` once it is known (sandbox mode without one), and with it the token audience
    /// unless `JWT_AUDIENCE` named one.
    pub fn set_public_url(&mut self, url: Url) {
        self.public_url = url;
        if let Some(auth) = self.auth.as_mut()
            && auth.audience.is_none()
        {
            auth.audience = Some(resource_url(&self.public_url));
        }
    }

    /// The base URL with `path` appended, e.g. `status_url("/twilio/status")`.
    pub fn public(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }

    /// `wss://HOST/twilio/media` (or `ws://` for a plain-http public URL, as in local tests).
    pub fn media_stream_url(&self) -> String {
        let scheme = if self.public_url.scheme() == "https" { "wss" } else { "ws" };
        let host = self.public_url.host_str().unwrap_or("localhost");
        match self.public_url.port() {
            Some(p) => format!("{scheme}://{host}:{p}/twilio/media"),
            None => format!("{scheme}://{host}/twilio/media"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn live() -> RawConfig {
        RawConfig {
            public_url: Some("https://calls.example.com".into()),
            twilio_account_sid: Some(format!("AC{}", "a".repeat(32))),
            twilio_auth_token: Some("secret".into()),
            twilio_number: Some("+14155550199".into()),
            openai_api_key: Some("sk-test".into()),
            ..RawConfig::default()
        }
    }

    #[test]
    fn a_complete_live_config_validates_with_defaults() {
        let c = RawConfig { jwt_secret: Some(SECRET.into()), ..live() }.validate().unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.voice.url.as_str(), "wss://api.openai.com/v1/realtime?model=gpt-realtime");
        assert_eq!(c.media_stream_url(), "wss://calls.example.com/twilio/media");
        assert_eq!(c.public("/twilio/status"), "https://calls.example.com/twilio/status");
        assert_eq!(c.max_concurrent_calls, 10);
        // Tokens are checked for this server's resource URL unless JWT_AUDIENCE says otherwise.
        assert_eq!(c.auth.as_ref().unwrap().audience.as_deref(), Some("https://calls.example.com/mcp"));
        assert!(c.access.mcp_requires_token);
        assert_eq!((c.access.mcp_per_minute, c.access.calls_per_hour), (300, 60));
    }

    #[test]
    fn mcp_needs_a_key_or_an_explicit_loopback_only_opt_out() {
        let errors: Vec<String> = live().validate().unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "JWT_SECRET: is not set: /mcp needs a key to check tokens (JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL)"
            ]
        );
        let open = RawConfig { mcp_auth: Some("none".into()), ..live() }.validate().unwrap();
        assert!(!open.access.mcp_requires_token);
        let exposed = RawConfig { mcp_auth: Some("none".into()), bind: Some("0.0.0.0".into()), ..live() };
        let errors: Vec<String> = exposed.validate().unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(errors, ["MCP_AUTH: 'none' is only allowed with a loopback BIND (behind an authenticating proxy)"]);
        let given = RawConfig { jwt_secret: Some(SECRET.into()), jwt_audience: Some("api://calls".into()), ..live() };
        assert_eq!(given.validate().unwrap().auth.unwrap().audience.as_deref(), Some("api://calls"));
    }

    #[test]
    fn every_bad_setting_is_named() {
        let raw = RawConfig {
            port: Some("http".into()),
            twilio_number: Some("555-0100".into()),
            openai_voice: Some("robot".into()),
            max_concurrent_calls: Some("0".into()),
            denied_destinations: Some("+1,1900".into()),
            twilio_api_key_sid: Some("SKnope".into()),
            worker_threads: Some("0".into()),
            worker_cpu_affinity: Some("0,1".into()),
            twilio_timeout_secs: Some("0".into()),
            call_retention_count: Some("0".into()),
            ..live()
        };
        let errors = raw.validate().unwrap_err();
        let named: Vec<_> = errors.iter().map(|e| e.setting).collect();
        for s in [
            "PORT",
            "TWILIO_NUMBER",
            "OPENAI_VOICE",
            "MAX_CONCURRENT_CALLS",
            "DENIED_DESTINATIONS",
            "TWILIO_API_KEY_SECRET",
            "WORKER_THREADS",
            "WORKER_CPU_AFFINITY",
            "TWILIO_TIMEOUT_SECS",
            "CALL_RETENTION_COUNT",
        ] {
            assert!(named.contains(&s), "{s} not named in {errors:?}");
        }
        assert!(errors.iter().any(|e| e.to_string() == "PORT: 'http' is not a port number (1-65535)"));
    }

    #[test]
    fn missing_credentials_are_each_reported_unless_sandboxed() {
        let errors = RawConfig::default().validate().unwrap_err();
        let named: Vec<_> = errors.iter().map(|e| e.setting).collect();
        for s in ["PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_NUMBER", "OPENAI_API_KEY"] {
            assert!(named.contains(&s), "{s} not named");
        }
        let sandbox = RawConfig { sandbox: Some("true".into()), ..RawConfig::default() };
        assert!(sandbox.validate().unwrap().sandbox);
    }

    #[test]
    fn the_seed_websocket_url_is_used_exactly() {
        let raw = RawConfig {
            openai_websocket_url: Some("wss://x.openai.azure.com/openai/v1/realtime?model=my-dep".into()),
            openai_auth_header: Some("api-key".into()),
            jwt_secret: Some(SECRET.into()),
            ..live()
        };
        let c = raw.validate().unwrap();
        assert_eq!(c.voice.url.as_str(), "wss://x.openai.azure.com/openai/v1/realtime?model=my-dep");
        assert_eq!(c.voice.auth_header, OpenAiAuthHeader::ApiKey);
    }

    #[test]
    fn public_url_must_be_bare() {
        let raw = RawConfig { public_url: Some("https://x.example.com/mcp".into()), ..live() };
        assert!(raw.validate().unwrap_err().iter().any(|e| e.setting == "PUBLIC_URL"));
    }

    // JWT settings: exactly one key source, an algorithm that fits it, nothing when none is given.

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn jwt(raw: RawConfig) -> Result<Option<AuthConfig>, Vec<ConfigError>> {
        raw.validate().map(|c| c.auth)
    }

    fn jwt_errors(raw: RawConfig) -> Vec<String> {
        raw.validate().unwrap_err().iter().filter(|e| e.setting.starts_with("JWT_")).map(ToString::to_string).collect()
    }

    #[test]
    fn no_jwt_key_means_no_auth_and_blank_values_count_as_unset() {
        // Without a key, /mcp must be opened explicitly (on loopback), and the events feed stays closed.
        let open = || RawConfig { mcp_auth: Some("none".into()), ..live() };
        assert!(jwt(open()).unwrap().is_none());
        let blank = RawConfig { jwt_secret: Some("  ".into()), jwt_jwks_url: Some(String::new()), ..open() };
        assert!(jwt(blank).unwrap().is_none());
    }

    #[test]
    fn a_secret_defaults_to_hs256_and_carries_issuer_and_audience() {
        let raw = RawConfig {
            jwt_secret: Some(SECRET.into()),
            jwt_issuer: Some("https://auth.example.com/".into()),
            jwt_audience: Some("https://calls.example.com".into()),
            ..live()
        };
        let auth = jwt(raw).unwrap().unwrap();
        assert_eq!(auth.key, JwtKey::Secret(SECRET.into()));
        assert_eq!(auth.algorithm, "HS256");
        assert_eq!(auth.issuer.as_deref(), Some("https://auth.example.com/"));
        assert_eq!(auth.audience.as_deref(), Some("https://calls.example.com"));
        let long = "k".repeat(64);
        let hs512 = RawConfig { jwt_secret: Some(long.clone()), jwt_algorithm: Some("HS512".into()), ..live() };
        assert_eq!(jwt(hs512).unwrap().unwrap().algorithm, "HS512");
        // RFC 7518 §3.2: an HS512 key is at least 64 bytes.
        let short = RawConfig { jwt_secret: Some(long[..48].into()), jwt_algorithm: Some("HS512".into()), ..live() };
        assert_eq!(jwt_errors(short), ["JWT_SECRET: must be at least 64 bytes long (e.g. openssl rand -base64 64)"]);
    }

    #[test]
    fn a_short_secret_is_refused() {
        let raw = RawConfig { jwt_secret: Some("too-short".into()), ..live() };
        assert_eq!(jwt_errors(raw), ["JWT_SECRET: must be at least 32 bytes long (e.g. openssl rand -base64 64)"]);
    }

    #[test]
    fn public_keys_default_to_rs256_and_the_file_must_exist() {
        let file = std::env::temp_dir().join(format!("voice-call-mcp-config-{}.pem", std::process::id()));
        std::fs::write(&file, "-----BEGIN PUBLIC KEY-----\n").unwrap();
        let raw = RawConfig { jwt_public_key_file: Some(file.display().to_string()), ..live() };
        let auth = jwt(raw).unwrap().unwrap();
        assert_eq!((auth.key, auth.algorithm.as_str()), (JwtKey::PublicKeyFile(file.clone()), "RS256"));
        let es = RawConfig {
            jwt_public_key_file: Some(file.display().to_string()),
            jwt_algorithm: Some("ES256".into()),
            ..live()
        };
        assert_eq!(jwt(es).unwrap().unwrap().algorithm, "ES256");
        let missing = RawConfig { jwt_public_key_file: Some("/nonexistent/key.pem".into()), ..live() };
        assert_eq!(jwt_errors(missing), ["JWT_PUBLIC_KEY_FILE: '/nonexistent/key.pem' is not a readable file"]);
    }

    #[test]
    fn a_jwks_url_must_be_http_or_https() {
        let raw = RawConfig { jwt_jwks_url: Some("https://auth.example.com/.well-known/jwks.json".into()), ..live() };
        let auth = jwt(raw).unwrap().unwrap();
        assert_eq!(auth.algorithm, "RS256");
        assert!(matches!(auth.key, JwtKey::Jwks(u) if u.host_str() == Some("auth.example.com")));
        for bad in ["ftp://auth.example.com/jwks", "not a url", "file:///etc/jwks.json"] {
            let raw = RawConfig { jwt_jwks_url: Some(bad.into()), ..live() };
            let errors = jwt_errors(raw);
            assert!(errors.len() == 1 && errors[0].starts_with("JWT_JWKS_URL: "), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn only_one_key_source_may_be_set() {
        let raw = RawConfig {
            jwt_secret: Some(SECRET.into()),
            jwt_jwks_url: Some("https://auth.example.com/jwks".into()),
            ..live()
        };
        assert_eq!(
            jwt_errors(raw),
            [
                "JWT_SECRET: set only one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL (both JWT_SECRET and JWT_JWKS_URL are set)"
            ]
        );
        let plain = RawConfig { jwt_jwks_url: Some("http://auth.example.com/jwks".into()), ..live() };
        assert_eq!(
            jwt_errors(plain),
            ["JWT_JWKS_URL: 'http://auth.example.com/jwks' must be https (plain http only on loopback)"]
        );
    }

    #[test]
    fn the_algorithm_must_be_known_and_fit_the_key() {
        let secret =
            |alg: &str| RawConfig { jwt_secret: Some(SECRET.into()), jwt_algorithm: Some(alg.into()), ..live() };
        let jwks = |alg: &str| RawConfig {
            jwt_jwks_url: Some("https://auth.example.com/jwks".into()),
            jwt_algorithm: Some(alg.into()),
            ..live()
        };
        // RFC 8725 §3.1: an HMAC secret never verifies public-key algorithms, nor a public key HMAC ones.
        assert_eq!(jwt_errors(secret("RS256")), ["JWT_ALGORITHM: 'RS256' does not fit the configured key"]);
        assert_eq!(jwt_errors(jwks("HS256")), ["JWT_ALGORITHM: 'HS256' does not fit the configured key"]);
        for bad in ["none", "hs256", "ES512"] {
            let errors = jwt_errors(secret(bad));
            assert!(
                errors.len() == 1 && errors[0].starts_with(&format!("JWT_ALGORITHM: '{bad}' is not one of")),
                "{errors:?}"
            );
        }
        for alg in JWT_ALGORITHMS.iter().filter(|a| !a.starts_with("HS")) {
            assert_eq!(jwt(jwks(alg)).unwrap().unwrap().algorithm, *alg);
        }
    }

    #[test]
    fn observability_settings_default_off_and_name_bad_values() {
        let keyed = || RawConfig { jwt_secret: Some(SECRET.into()), ..live() };
        let c = keyed().validate().unwrap();
        assert_eq!((c.otlp_endpoint, c.log_format, c.metrics_token), (None, crate::telemetry::LogFormat::Text, None));
        let raw = RawConfig {
            otel_exporter_otlp_endpoint: Some("http://collector:4318".into()),
            log_format: Some("JSON".into()),
            metrics_token: Some("0123456789abcdef".into()),
            ..keyed()
        };
        let c = raw.validate().unwrap();
        assert_eq!(c.otlp_endpoint.unwrap().as_str(), "http://collector:4318/");
        assert_eq!(c.log_format, crate::telemetry::LogFormat::Json);
        assert_eq!(c.metrics_token.as_deref(), Some("0123456789abcdef"));
        let bad = RawConfig {
            otel_exporter_otlp_endpoint: Some("collector:4317".into()),
            log_format: Some("xml".into()),
            metrics_token: Some("short".into()),
            ..keyed()
        };
        let errors: Vec<String> = bad.validate().unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4317' must be a http or https URL with a host",
                "LOG_FORMAT: 'xml' is not text or json",
                "METRICS_TOKEN: must be at least 16 characters long (e.g. openssl rand -hex 24)",
            ]
        );
    }

    #[test]
    fn jwt_settings_are_checked_in_sandbox_mode_too() {
        let raw = RawConfig { sandbox: Some("true".into()), jwt_secret: Some("short".into()), ..RawConfig::default() };
        assert!(raw.validate().unwrap_err().iter().any(|e| e.setting == "JWT_SECRET"));
    }
}
