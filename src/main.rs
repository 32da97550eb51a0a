//! The `voice-call-mcp` command: `serve` runs the server, `check` validates a configuration, `token` mints
//! a token for the events feed from the configured HMAC secret.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use voice_call_mcp::runtime::Placement;
use voice_call_mcp::{AppState, RawConfig, telemetry};

#[derive(Debug, Parser)]
#[command(name = "voice-call-mcp", version, about = "A remote MCP server that places and runs phone calls")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (`--sandbox` for simulated calls, no accounts needed).
    Serve(RawConfig),
    /// Validate the configuration and name every missing or malformed setting.
    Check(RawConfig),
    /// Mint an access token from JWT_SECRET; prints only the token, so `TOKEN=$(voice-call-mcp token …)` works.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Space-separated scopes: calls:write, calls:read, events:read.
    #[arg(long)]
    scope: String,
    /// Comma-separated CallSids the token may see [default: all calls].
    #[arg(long)]
    calls: Option<String>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// The token's subject; per-subject limits (open /events streams) count by it.
    #[arg(long, default_value = "operator")]
    sub: String,
    #[command(flatten)]
    config: RawConfig,
}

fn main() -> ExitCode {
    // `.env` fills in what the environment does not already set; a missing file is fine.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env could not be read: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    // Read leniently here, so logging works from the first line; `validate` names a bad value later.
    let raw = match &cli.command {
        Command::Serve(raw) | Command::Check(raw) => raw,
        Command::Token(args) => &args.config,
    };
    let format = telemetry::LogFormat::parse(raw.log_format.as_deref().unwrap_or("")).unwrap_or_default();
    // Only a server exports; `check` and `token` have nothing to trace.
    let otlp = match &cli.command {
        Command::Serve(raw) => raw.otel_exporter_otlp_endpoint.as_deref().and_then(|u| url::Url::parse(u.trim()).ok()),
        _ => None,
    };
    let (telemetry, telemetry_error) = telemetry::init(format, otlp.as_ref());
    if let Some(e) = telemetry_error {
        tracing::error!(error = %e, "traces and metrics will not be exported");
    }
    let code = match cli.command {
        Command::Check(raw) => check(&raw),
        Command::Serve(raw) => serve(raw),
        Command::Token(args) => token(args),
    };
    // After the runtime is gone: the exporters' blocking HTTP client must not be dropped inside it.
    telemetry.shutdown();
    code
}

fn report(raw: &RawConfig, errors: &[voice_call_mcp::config::ConfigError]) {
    let no_credentials = raw.twilio_account_sid.is_none() && raw.openai_api_key.is_none();
    if no_credentials && !raw.wants_sandbox() {
        eprintln!(
            "error: no Twilio or OpenAI credentials are configured.\n\
             - To try it with simulated calls and no accounts: voice-call-mcp serve --sandbox\n\
             - To place real calls: set PUBLIC_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_NUMBER and \
             OPENAI_API_KEY (see .env.example)"
        );
        return;
    }
    for e in errors {
        eprintln!("error: {e}");
    }
}

fn check(raw: &RawConfig) -> ExitCode {
    match raw.validate() {
        Ok(c) => {
            println!(
                "configuration is valid ({}; public URL {}, listening on {}:{})",
                if c.sandbox { "sandbox" } else { "live" },
                c.public_url,
                c.bind,
                c.port
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(raw, &errors);
            ExitCode::from(2)
        }
    }
}

fn serve(raw: RawConfig) -> ExitCode {
    let mut config = match raw.validate() {
        Ok(c) => c,
        Err(errors) => {
            report(&raw, &errors);
            return ExitCode::from(2);
        }
    };
    let runtime = match voice_call_mcp::runtime::build(config.runtime, "voice-call-mcp") {
        Ok((runtime, placement)) => {
            let workers = config.runtime.worker_threads;
            match placement {
                Placement::Pinned { cpus } => tracing::info!(workers, ?cpus, "worker threads pinned, one CPU each"),
                Placement::Unpinned { reason } => tracing::info!(workers, %reason, "worker threads not pinned"),
            }
            runtime
        }
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Listen for signals before anything says "listening": a SIGTERM sent right after must drain, not kill.
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: could not listen for shutdown signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = std::net::SocketAddr::new(config.bind, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: BIND/PORT: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(config.port);
        let simulator = if config.sandbox {
            match voice_call_mcp::sandbox::start(&mut config, port).await {
                Ok(sim) => Some(sim),
                Err(e) => {
                    eprintln!("error: the sandbox simulators could not start: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let mcp_url = config.public("/mcp");
        let events_url = config.public("/events");
        let sandbox = config.sandbox;
        let json_logs = config.log_format == telemetry::LogFormat::Json;
        let sandbox_token = simulator.as_ref().and_then(|s| s.token.clone());
        let state = match AppState::new(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(%mcp_url, local = %addr, sandbox, "voice-call-mcp listening");
        if sandbox && json_logs {
            // Every stderr line stays one JSON object: the banner is a log record too.
            tracing::info!(
                mcp_endpoint = %mcp_url,
                access_token = sandbox_token.as_deref(),
                "Sandbox mode: calls go to a built-in simulator, nothing real is dialed. MCP endpoint: {mcp_url}"
            );
        } else if sandbox {
            eprintln!(
                "\nSandbox mode: calls go to a built-in simulator, nothing real is dialed.\n\
                 MCP endpoint: {mcp_url}"
            );
            match sandbox_token {
                Some(token) => {
                    let client = serde_json::json!({"mcpServers": {"voice-call": {
                        "type": "http", "url": mcp_url, "headers": {"Authorization": format!("Bearer {token}")}
                    }}});
                    eprintln!(
                        "Access token (24 h, every scope): {token}\n\
                         Claude Code:  claude mcp add --transport http voice-call {mcp_url} --header \"Authorization: Bearer {token}\"\n\
                         Claude Desktop / Cursor (mcp.json): {client}\n\
                         Live events:  curl -N -H \"Authorization: Bearer {token}\" {events_url}"
                    );
                }
                None => eprintln!(
                    "Tokens: your JWT settings apply; mint one with: voice-call-mcp token --scope \"calls:write calls:read events:read\""
                ),
            }
            eprintln!();
        }
        let result = voice_call_mcp::serve(listener, state, shutdown).await;
        if let Some(sim) = simulator {
            sim.shutdown().await;
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: the server stopped: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGINT (Ctrl-C) or SIGTERM (container stop, systemd). The handlers are installed now; the returned
/// future resolves on the first signal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// `token`: mints an HMAC token with the configured secret, issuer and audience. Errors go to stderr as
/// one line and exit 2; stdout carries the token alone.
fn token(args: TokenArgs) -> ExitCode {
    use voice_call_mcp::auth;
    use voice_call_mcp::config::JwtKey;
    fn fail(message: impl std::fmt::Display) -> ExitCode {
        eprintln!("token: {message}");
        ExitCode::from(2)
    }
    const HMAC_ONLY: &str = "JWT_SECRET is not set; the token command only mints HMAC tokens";
    let known = [auth::SCOPE_CALLS_WRITE, auth::SCOPE_CALLS_READ, auth::SCOPE_EVENTS_READ];
    let scopes: Vec<&str> = args.scope.split_ascii_whitespace().collect();
    if scopes.is_empty() {
        return fail(format!("--scope is empty; give one or more of {}", known.join(" ")));
    }
    // A typo ("event:read") would mint a token that is refused later, far from the mistake.
    if let Some(bad) = scopes.iter().find(|s| !known.contains(s)) {
        return fail(format!("'{bad}' is not a scope; scopes are {}", known.join(", ")));
    }
    let calls = match args.calls.as_deref() {
        None => None,
        Some(list) => {
            let sids: Vec<String> =
                list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if sids.is_empty() {
                return fail("--calls names no CallSid (leave it out for a token that sees all calls)");
            }
            Some(sids)
        }
    };
    if args.ttl == 0 {
        return fail("--ttl must be at least 1 second");
    }
    if args.sub.trim().is_empty() {
        return fail("--sub is empty");
    }
    // Only the JWT settings are validated: minting needs no Twilio or OpenAI credentials, and an unrelated
    // mistake elsewhere in the configuration should not stop it.
    let c = &args.config;
    let jwt_only = RawConfig {
        sandbox: Some("true".into()),
        jwt_secret: c.jwt_secret.clone(),
        jwt_public_key_file: c.jwt_public_key_file.clone(),
        jwt_jwks_url: c.jwt_jwks_url.clone(),
        jwt_algorithm: c.jwt_algorithm.clone(),
        jwt_issuer: c.jwt_issuer.clone(),
        jwt_audience: c.jwt_audience.clone(),
        // The audience defaults to PUBLIC_URL's /mcp, as the server's does.
        public_url: c.public_url.clone(),
        ..RawConfig::default()
    };
    let auth = match jwt_only.validate() {
        Ok(config) => config.auth,
        Err(errors) => return fail(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
    };
    let Some(auth) = auth else { return fail(HMAC_ONLY) };
    if auth.audience.is_none() {
        return fail(
            "PUBLIC_URL is not set: tokens are minted for the server's URL (PUBLIC_URL/mcp, or JWT_AUDIENCE); \
             set the one the server uses",
        );
    }
    let JwtKey::Secret(secret) = &auth.key else {
        return fail(format!("{HMAC_ONLY} (with a public key or JWKS, tokens come from the authorization server)"));
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = auth::Claims {
        sub: args.sub,
        exp: now.saturating_add(args.ttl),
        iat: Some(now),
        nbf: None,
        iss: auth.issuer.clone(),
        aud: auth.audience.clone().map(Into::into),
        scope: scopes.join(" "),
        calls,
    };
    match auth::mint(secret, &auth.algorithm, &claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
