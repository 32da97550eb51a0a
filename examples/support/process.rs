//! What the benchmark examples share: running the server under test as a child process, reading the
//! kernel's accounting of it (/proc), and scheduling the load generator's threads. Each example includes
//! this file with `#[path]`; each uses a subset.
#![allow(dead_code)]

use anyhow::{Context as _, Result, anyhow};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

/// The server under test; killed when dropped, so no run leaves one behind.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) log: PathBuf,
}

impl ServerProcess {
    /// Starts `cmd` (already given its arguments and environment) with stdout and stderr in `log`.
    pub(crate) fn start(mut cmd: Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child =
            cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().with_context(|| format!("starting {program}"))?;
        Ok(Self { child, log: log.to_owned() })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command with nothing from this shell (or a `.env` in the working directory) leaking into it.
pub(crate) fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().current_dir(std::env::temp_dir()).env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn warn_if_stale(bin: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else { return };
    let newest = newest_mtime(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    if newest.is_some_and(|t| t > built) {
        eprintln!(
            "warning: {} is older than the newest file in src/: run `cargo build --release` first",
            bin.display()
        );
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() { newest_mtime(&path) } else { entry.metadata().and_then(|m| m.modified()).ok() };
        newest = newest.max(t);
    }
    newest
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn proc_cpu_ticks(stat_path: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(stat_path).with_context(|| format!("reading {stat_path}"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("{stat_path}: unexpected format"))?;
    // After the command name: field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("{stat_path}: no utime"))?;
    let stime: u64 = fields.get(12).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("{stat_path}: no stime"))?;
    Ok(utime + stime)
}

/// (busy, total) clock ticks of the whole machine, all CPUs.
pub(crate) fn system_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or_else(|| anyhow!("/proc/stat is empty"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|s| s.parse().ok()).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Ok((busy, busy + get(3) + get(4)))
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_field(&status, "VmRSS:").ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// A number from /proc/PID/status text: `name` with its colon (`"VmRSS:"`, in KiB; `"Threads:"`).
pub(crate) fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn getconf(name: &str, default: u64) -> u64 {
    Command::new("getconf")
        .arg(name)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

pub(crate) fn clock_ticks() -> u64 {
    getconf("CLK_TCK", 100)
}

pub(crate) fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| getconf("PAGESIZE", 4096))
}

pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Moves the calling thread to the SCHED_IDLE policy (threads it creates later inherit it): it runs only
/// on CPU time nothing else wants and never preempts the server. The fan-out benchmark's subscribers stand
/// in for dashboards on other machines; at the server's priority, each event written to one of them woke
/// it on the writing core, which then switched between the server and that client every 15–40 µs (seen
/// with `perf sched timehist`), putting the clients' reads into the server's fan-out time. A lower nice
/// value does not stop that: the clients still get whole time slices in the middle of a fan-out.
/// `chrt` (util-linux) because nix has no `sched_setscheduler` and unsafe code is forbidden.
pub(crate) fn idle_current_thread() -> Result<()> {
    // `/proc/thread-self` links to `PID/task/TID`.
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    let tid = link.file_name().map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
    let status = Command::new("chrt")
        .args(["--idle", "-p", "0", &tid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running chrt")?;
    if !status.success() {
        return Err(anyhow!("chrt --idle -p 0 {tid}: {status}"));
    }
    Ok(())
}

/// Waits until `GET {base}/healthz` answers 200, for at most `within`; fails at once, with the end of the
/// server's log, if the server exits first.
pub(crate) async fn wait_healthy(base: &str, server: &ServerProcess, within: std::time::Duration) -> Result<()> {
    let http = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(2)).build()?;
    let deadline = std::time::Instant::now() + within;
    // `alive` needs &mut; a look at /proc does here.
    let alive = || Path::new(&format!("/proc/{}", server.pid())).exists();
    while std::time::Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if !alive() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(anyhow!("the server did not become healthy; its log ({}) ends:\n{}", server.log.display(), server.log_tail()))
}

/// A token the server under test accepts: HS256 with its `JWT_SECRET`, for `audience` (its
/// `JWT_AUDIENCE`, or `PUBLIC_URL/mcp`), carrying `scope` (space-separated), valid for `ttl`.
pub(crate) fn mint_token(
    secret: &str,
    subject: &str,
    audience: &str,
    scope: &str,
    ttl: std::time::Duration,
) -> Result<String> {
    use voice_call_mcp::auth::{self, Claims};
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: subject.into(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
        iss: None,
        aud: Some(audience.to_owned().into()),
        scope: scope.into(),
        calls: None,
    };
    auth::mint(secret, "HS256", &claims).map_err(|e| anyhow!("minting the token: {e}"))
}

/// The server binary to run: `given`, else the release build (`target/release/voice-call-mcp`), as an
/// absolute path (the child runs in the temporary directory, where a relative one names nothing). An
/// error if it is missing; a warning if it is older than the sources.
pub(crate) fn server_binary(given: Option<&Path>) -> Result<PathBuf> {
    let bin = given
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/voice-call-mcp"), Path::to_owned);
    if !bin.is_file() {
        return Err(anyhow!(
            "the server binary {} is missing: build it first with `cargo build --release`",
            bin.display()
        ));
    }
    let bin = std::fs::canonicalize(&bin).with_context(|| format!("resolving {}", bin.display()))?;
    warn_if_stale(&bin);
    Ok(bin)
}

/// Fails unless this process may open `needed` descriptors; `what` says what needs them.
pub(crate) fn ensure_open_files(needed: u64, what: &str) -> Result<()> {
    match open_file_limit() {
        Some(limit) if limit < needed => Err(anyhow!(
            "the open-file limit ({limit}) is below the ~{needed} descriptors {what} need: raise `ulimit -n`"
        )),
        _ => Ok(()),
    }
}

/// The benchmarks' exit status: 0 when every target was met, 1 when one was missed, 2 (the error
/// printed) when the run could not be set up.
pub(crate) fn exit_code(outcome: Result<bool>) -> std::process::ExitCode {
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
