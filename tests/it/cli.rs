//! The binary as an operator meets it: clear configuration errors, sandbox start, clean shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_voice-call-mcp");

/// A command with none of the settings inherited from whoever runs the tests.
fn bare(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    // Run where no `.env` can be picked up.
    cmd.current_dir(std::env::temp_dir());
    cmd
}

#[test]
fn serve_without_credentials_says_how_to_choose_and_exits_non_zero() {
    let out = bare(&["serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sandbox") && err.contains("TWILIO_ACCOUNT_SID"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn check_names_each_bad_setting_on_its_own_line() {
    let out = bare(&["check"])
        .envs([
            ("PUBLIC_URL", "https://calls.example.com"),
            ("PORT", "eighty"),
            ("TWILIO_ACCOUNT_SID", "AC123"),
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_NUMBER", "+14155550199"),
            ("OPENAI_API_KEY", "k"),
            ("MAX_CONCURRENT_CALLS", "lots"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "error: PORT: 'eighty' is not a port number (1-65535)",
            "error: TWILIO_ACCOUNT_SID: must be 'AC' followed by 32 hex digits",
            "error: MAX_CONCURRENT_CALLS: 'lots' is not a whole number",
        ]
    );

    let good = bare(&["check", "--sandbox"]).output().unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("configuration is valid (sandbox"));
}

#[test]
fn sandbox_serves_and_exits_zero_on_sigterm() {
    let mut child =
        bare(&["serve", "--sandbox", "--port", "0"]).env("RUST_LOG", "info").stderr(Stdio::piped()).spawn().unwrap();
    // Wait for the line that says it is listening (bounded: the child's stderr closes if it dies).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut url = None;
    while url.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && let Some(rest) = line.split("MCP endpoint: ").nth(1)
        {
            url = Some(rest.trim().to_owned());
        }
    }
    let url = url.expect("sandbox printed its MCP endpoint");
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"), "{url}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}
