//! The `voice-call-mcp` command: `serve` runs the server, `check` validates a configuration.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use voice_call_mcp::{AppState, RawConfig};

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check(raw) => check(&raw),
        Command::Serve(raw) => serve(raw),
    }
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
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
        let sandbox = config.sandbox;
        let state = match AppState::new(config) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(%mcp_url, local = %addr, sandbox, "voice-call-mcp listening");
        if sandbox {
            eprintln!(
                "\nSandbox mode: calls go to a built-in simulator, nothing real is dialed.\n\
                 MCP endpoint: {mcp_url}\n\
                 Claude Code:  claude mcp add --transport http voice-call {mcp_url}\n"
            );
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
