//! The binary as an operator meets it: clear configuration errors, sandbox start, clean shutdown.

use crate::support::ServerProcess;
use std::process::Command;
use std::time::Duration;

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
            "error: JWT_SECRET: is not set: /mcp needs a key to check tokens (JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL)",
        ]
    );

    let good = bare(&["check", "--sandbox"]).output().unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("configuration is valid (sandbox"));
}

/// A sandbox server as a child process (`--port 0`), with what it printed at start.
pub(crate) struct Sandbox {
    process: ServerProcess,
    pub(crate) mcp_url: String,
}

impl Sandbox {
    fn start(log: &str) -> Sandbox {
        Self::start_with(log, &[])
    }

    /// Started with extra settings in its environment.
    pub(crate) fn start_with(log: &str, envs: &[(&str, &str)]) -> Sandbox {
        let mut command = bare(&["serve", "--sandbox", "--port", "0"]);
        command.env("RUST_LOG", log).envs(envs.iter().copied());
        let mut process = ServerProcess::spawn(command);
        let line = process.wait_for("MCP endpoint: ");
        let mcp_url = line.split("MCP endpoint: ").nth(1).unwrap().trim().to_owned();
        Sandbox { process, mcp_url }
    }

    /// The token sandbox mode printed for its made-up secret.
    pub(crate) fn token(&mut self) -> String {
        let line = self.wait_for("Access token (24 h, every scope): ");
        line.split("Access token (24 h, every scope): ").nth(1).unwrap_or_default().trim().to_owned()
    }

    pub(crate) fn wait_for(&mut self, needle: &str) -> String {
        self.process.wait_for(needle)
    }

    pub(crate) fn stop(self) -> (Option<i32>, Vec<String>) {
        self.process.stop()
    }

    pub(crate) fn terminate(&self) {
        self.process.terminate();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(crate) fn wait_exit(self, within: Duration) -> (Option<i32>, Vec<String>) {
        self.process.wait_exit(within)
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

/// The CPUs each of the process's threads named `name` may run on, from /proc.
#[cfg(target_os = "linux")]
fn cpus_of_threads(pid: u32, name: &str) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(Result::ok)
        .map(|t| t.path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).unwrap_or_default().trim() == name)
        .filter_map(|t| std::fs::read_to_string(t.join("status")).ok())
        .filter_map(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|c| c.trim().to_owned()))
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn an_operator_can_pin_the_worker_threads_one_cpu_each() {
    let mut sandbox = Sandbox::start_with("info", &[("WORKER_THREADS", "2"), ("WORKER_CPU_AFFINITY", "on")]);
    sandbox.wait_for("worker threads pinned, one CPU each");
    // Each worker pins itself when it first parks; an idle server's workers have all parked, or soon do.
    // Bounded wait on the threads' own state.
    let single = |cpus: &String| !cpus.contains([',', '-']);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let threads = cpus_of_threads(sandbox.pid(), "voice-call-mcp");
        if threads.iter().filter(|c| single(c)).count() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no two pinned worker threads: {threads:?}");
        std::thread::yield_now();
    }
    let (code, _) = sandbox.stop();
    assert_eq!(code, Some(0));

    // The default leaves them to the kernel, and says so.
    let mut unpinned = Sandbox::start("info");
    unpinned.wait_for("worker threads not pinned");
    let out = bare(&["check", "--sandbox"]).env("WORKER_CPU_AFFINITY", "0-1").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WORKER_CPU_AFFINITY: '0-1' is not off, auto or on"), "{stderr}");
}

#[test]
fn an_access_token_in_the_query_never_reaches_the_logs() {
    let mut sandbox = Sandbox::start("trace");
    let token_line = sandbox.wait_for("Access token (24 h, every scope): ");
    let printed = token_line.split("Access token (24 h, every scope): ").nth(1).unwrap_or_default();
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
