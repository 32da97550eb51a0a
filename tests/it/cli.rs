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

/// A sandbox server as a child process, with every stderr line collected.
struct Sandbox {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    mcp_url: String,
}

impl Sandbox {
    fn start(log: &str) -> Sandbox {
        let mut child =
            bare(&["serve", "--sandbox", "--port", "0"]).env("RUST_LOG", log).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut sandbox = Sandbox { child, lines, seen: Vec::new(), mcp_url: String::new() };
        // Wait for the line that says it is listening (bounded: the child's stderr closes if it dies).
        let line = sandbox.wait_for("MCP endpoint: ");
        sandbox.mcp_url = line.split("MCP endpoint: ").nth(1).unwrap().trim().to_owned();
        sandbox
    }

    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!("the server never printed {needle:?}; it printed {:?}", self.seen);
    }

    /// SIGTERM, then the exit code and everything it printed.
    fn stop(mut self) -> (Option<i32>, Vec<String>) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        self.seen.extend(self.lines.try_iter());
        (code, self.seen)
    }
}

#[test]
fn sandbox_serves_and_exits_zero_on_sigterm() {
    let sandbox = Sandbox::start("info");
    let url = sandbox.mcp_url.clone();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"), "{url}");
    let (code, _) = sandbox.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn an_access_token_in_the_query_never_reaches_the_logs() {
    let mut sandbox = Sandbox::start("trace");
    let token_line = sandbox.wait_for("Events token (24 h): ");
    let printed = token_line.split("Events token (24 h): ").nth(1).unwrap_or_default();
    assert_eq!(printed.trim().split('.').count(), 3, "a JWT is printed for the sandbox user");
    let events = sandbox.mcp_url.replace("/mcp", "/events");
    let planted = "planted.secret-token.value";
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{events}?callSid=CA1&access_token={planted}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    sandbox.wait_for("access_token=REDACTED");
    let (code, lines) = sandbox.stop();
    assert_eq!(code, Some(0));
    assert!(!lines.iter().any(|l| l.contains(planted)), "the planted token was logged");
}
