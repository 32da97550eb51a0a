//! Load benchmark for the audio relay: N simulated calls at real-time pace through the real server binary.
//!
//! ```text
//! cargo build --release                      # the server under test: target/release/voice-call-mcp
//! cargo run --release --example relay_load -- --calls 50 --seconds 10
//! cargo run --release --example relay_load -- --calls 400 --seconds 20 --runs 3
//! ```
//!
//! This process plays every peer of the server, on loopback, and the server runs as a child process so
//! its CPU and memory are its own:
//! - a Twilio REST stub (`Calls.json`) that remembers each call's inline TwiML (stream URL, callToken);
//! - a fake OpenAI Realtime server (`/v1/realtime`) that reads `session.update`, then sends
//!   `response.output_audio.delta` at 50/s and reads every `input_audio_buffer.append` (never any
//!   `speech_started`: no barge-in during the load);
//! - an MCP client (rmcp, stateless 2026-07-28) that places the calls with `trigger-call`;
//! - Twilio's side of each media stream: signed handshake, `connected`, `start`, then a `media` frame
//!   every 20 ms, echoing every `mark` at once.
//!
//! One tokio task per call side. The N calls' frames are spread evenly over the 20 ms period by a pacer
//! thread (`--slot-us`, default 250 µs): tokio's timer wheel ticks in whole milliseconds and would send
//! N/20 calls' frames in one burst per tick, which showed up as ~0.4 ms of queueing in p50 at 200 calls.
//!
//! Each frame's 160 µ-law bytes start with (call index u32, frame number u32), so the receiving side reads
//! the frame's identity from the first 12 base64 characters without the server decoding anything. From
//! that: lost (sent, never received by the end of a short drain), reordered (a frame number lower than the
//! highest seen for that call), misrouted (another call's audio), and latency each way, twice over:
//! - *read*: when the generator's task read the frame − its send instant (one process clock). This
//!   includes the generator's own scheduling before it gets to read.
//! - *in socket*: the kernel's receive timestamp (SO_TIMESTAMPNS, via `recvmsg`) of the bytes that
//!   completed the frame in the generator's socket − its send instant: what the server adds, without the
//!   generator's scheduling on the receiving side. Kernel stamps are CLOCK_REALTIME, mapped onto the
//!   process clock with one (Instant, SystemTime) pair per run. The send instant is taken just before the
//!   write, so a preemption of the sender in between still counts against the server. The stamp belongs to
//!   a read, not a message: a message read together with later bytes gets their stamp, and once the
//!   generator falls more than a frame period behind, a call's next frame is already queued behind it (the
//!   kernel even merges queued segments, keeping the newest stamp). The in-socket figure is then an upper
//!   bound, inflated by up to the generator's own lag.
//!
//! Server CPU is utime+stime from /proc/PID/stat over the media phase; RSS per call is the peak VmRSS
//! sampled during the media phase minus VmRSS before any call, divided by N. The generator's own CPU and
//! the rest of the machine's load ("other load", in cores) are printed too: they share the cores with the
//! server. The generator does the mirror image of the server's socket work, so it costs about as much
//! CPU as the server, and once the machine is near saturation the read tails measure the generator's wait
//! for a core, not the relay. (Running the generator at a lower priority does not help: starved, it falls
//! behind and sends in bursts, which the server then queues.) `--quiet-wait` waits for other work to stop.
//! On loopback the sender of each packet also pays for the receiver's TCP processing (softirq).
//!
//! `--floor` runs the same load against a minimal relay (this program in a hidden relay mode, as its own
//! child process): the cost of the bare socket work on this machine, to compare the server with.
//! Exit status: 0 when every frame arrived in order on the right call, 1 when anything was lost,
//! reordered or misrouted, 2 when the run could not be set up.

#[path = "support/mcp.rs"]
mod mcp;
#[path = "support/process.rs"]
mod process;
#[path = "support/stamp.rs"]
mod stamp;

use anyhow::{Context as _, Result, anyhow, bail};
use axum::extract::{Form, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use process::{
    ServerProcess, clean_command, clock_ticks, free_port, open_file_limit, proc_cpu_ticks, rss_kib, system_ticks,
};
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Parser)]
#[command(about = "Load benchmark for the Twilio <-> OpenAI Realtime audio relay")]
struct Args {
    /// Concurrent calls.
    #[arg(long, default_value_t = 50)]
    calls: u32,
    /// Seconds of media per call (50 frames per second each way).
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Runs, each against a fresh server process; the RESULT line holds the medians.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// After the last frame, how long receivers keep listening before a missing frame counts as lost.
    #[arg(long, default_value_t = 1000)]
    drain_ms: u64,
    /// The server binary [default: target/release/voice-call-mcp].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The pacer's time slot in microseconds: frames due within one slot are released together. Tokio's
    /// timers tick in whole milliseconds, which would bunch N/20 calls into each tick; a dedicated pacer
    /// thread spreads them much more evenly over the 20 ms period.
    #[arg(long, default_value_t = 250)]
    slot_us: u64,
    /// Extra environment for the server, e.g. `--server-env TOKIO_WORKER_THREADS=1` (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    server_env: Vec<String>,
    /// Before each run, wait up to this many seconds for the machine to be quiet (other processes using
    /// under a quarter of a core), since they share the cores with the server and this generator.
    #[arg(long, default_value_t = 0)]
    quiet_wait: u64,
    /// Run the same load against a minimal relay (this program in relay mode, as a child process, on a
    /// default tokio runtime: one borrowed parse and one write per frame, a mark after each delta, nothing
    /// else) instead of the server: the floor for this machine.
    #[arg(long)]
    floor: bool,
    /// With --floor: the minimal relay sends a mark after every Nth delta only (what-if: fewer marks).
    #[arg(long, default_value_t = 1)]
    floor_mark_every: u64,
    /// With --floor: the minimal relay writes media and its mark in one write (feed, feed, flush).
    #[arg(long)]
    floor_batch: bool,
    /// (internal) Be the minimal relay, listening on this port.
    #[arg(long, hide = true)]
    relay_port: Option<u16>,
    /// (internal) The minimal relay's Realtime URL.
    #[arg(long, hide = true)]
    relay_realtime: Option<String>,
    /// Worker threads of this load generator's runtime.
    #[arg(long, default_value_t = 2)]
    gen_threads: usize,
}

const FRAME_MS: u64 = 20;
const FRAME_BYTES: usize = 160;
const AUTH_TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const CONTEXT_MARK: &str = "relay-load call #";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = Args::parse();
    if let (Some(port), Some(realtime)) = (args.relay_port, args.relay_realtime.clone()) {
        // The minimal relay: the server's default runtime shape (multi-thread, one worker per core).
        let result = tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(relay::serve(port, realtime, args.floor_mark_every.max(1), args.floor_batch)));
        if let Err(e) = result {
            eprintln!("relay: {e:#}");
        }
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.gen_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    process::exit_code(runtime.block_on(run_all(&args)))
}

// ---------------------------------------------------------------------------------------------------
// Runs and the report
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Report {
    calls: u32,
    seconds: u32,
    server_cpu_ms_per_call_min: f64,
    gen_cpu_ms_per_call_min: f64,
    rss_kib_per_call: f64,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    machine_busy_pct: f64,
    other_cores: f64,
    inbound: DirReport,
    outbound: DirReport,
    marks_echoed: u64,
    unexpected: u64,
}

#[derive(Debug, Clone, Default)]
struct DirReport {
    sent: u64,
    lost: u64,
    reordered: u64,
    duplicated: u64,
    misrouted: u64,
    /// Latency as the generator read each frame (after its own scheduling).
    read: Pcts,
    /// Latency to the kernel's receive timestamp of each frame in the generator's socket.
    sock: Pcts,
    /// Frames received without a kernel timestamp (not in `sock`).
    unstamped: u64,
}

/// Latency percentiles, in µs.
#[derive(Debug, Clone, Copy, Default)]
struct Pcts {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

async fn run_all(args: &Args) -> Result<bool> {
    if args.calls == 0 || args.seconds == 0 {
        bail!("--calls and --seconds must be at least 1");
    }
    let bin = process::server_binary(args.server_bin.as_deref())?;
    let fds = open_file_limit();
    // Server: 2 sockets per call; this process: 2 per call plus the stub's.
    let needed = u64::from(args.calls) * 2 + 64;
    if let Some(limit) = fds
        && limit < needed
    {
        bail!(
            "the open-file limit ({limit}) is below the ~{needed} descriptors {} calls need: raise `ulimit -n`",
            args.calls
        );
    }
    println!(
        "relay_load: {} calls x {} s, {} run(s); under test: {}; {} CPUs; loadavg {}; open-file limit {}",
        args.calls,
        args.seconds,
        args.runs,
        if args.floor {
            "the minimal relay (--floor)".to_owned()
        } else {
            format!("{} {}", bin.display(), args.server_env.join(" "))
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        fds.map_or_else(|| "?".into(), |n| n.to_string()),
    );
    print_header();
    let mut reports = Vec::new();
    for run in 1..=args.runs.max(1) {
        if args.quiet_wait > 0 {
            wait_quiet(Duration::from_secs(args.quiet_wait)).await?;
        }
        let report = run_once(args, &bin, run).await.with_context(|| format!("run {run}"))?;
        print_row(&report, &run.to_string());
        reports.push(report);
    }
    let median = median_report(&reports);
    if reports.len() > 1 {
        print_row(&median, "median");
    }
    print_details(&median);
    let lost: u64 = reports.iter().map(|r| r.inbound.lost + r.outbound.lost).sum();
    let misrouted: u64 = reports.iter().map(|r| r.inbound.misrouted + r.outbound.misrouted).sum();
    let reordered: u64 = reports.iter().map(|r| r.inbound.reordered + r.outbound.reordered).sum();
    let duplicated: u64 = reports.iter().map(|r| r.inbound.duplicated + r.outbound.duplicated).sum();
    // p50/p99_*: read; sock_*: in socket.
    println!(
        "RESULT calls={} cpu_ms_per_call_min={:.1} rss_kib_per_call={:.1} lost={} reordered={} p50_in_us={:.0} p99_in_us={:.0} p50_out_us={:.0} p99_out_us={:.0} sock_p50_in_us={:.0} sock_p99_in_us={:.0} sock_p50_out_us={:.0} sock_p99_out_us={:.0}",
        median.calls,
        median.server_cpu_ms_per_call_min,
        median.rss_kib_per_call,
        lost + misrouted,
        reordered,
        median.inbound.read.p50_us,
        median.inbound.read.p99_us,
        median.outbound.read.p50_us,
        median.outbound.read.p99_us,
        median.inbound.sock.p50_us,
        median.inbound.sock.p99_us,
        median.outbound.sock.p50_us,
        median.outbound.sock.p99_us,
    );
    Ok(lost == 0 && misrouted == 0 && reordered == 0 && duplicated == 0)
}

/// Waits until the machine's CPUs were less than 1/8 busy (a quarter core of 2) over one second.
async fn wait_quiet(limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (b0, t0) = system_ticks()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (b1, t1) = system_ticks()?;
        let busy = b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64;
        if busy < 0.125 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!("  note: the machine is still {:.0}% busy; running anyway", busy * 100.0);
            return Ok(());
        }
    }
}

fn print_header() {
    let dir =
        |name: &str| format!("{:>22} {:>8} {:>8} {:>8} {:>8}", name, "read p50", "read p99", "sock p50", "sock p99");
    let units = format!("{:>22} {:>8} {:>8} {:>8} {:>8}", "", "us", "us", "us", "us");
    println!(
        "{:>6} {:>5} {:>4} | {:>8} {:>8} | {:>8} | {} | {} | {:>10}",
        "run",
        "calls",
        "secs",
        "srv CPU",
        "gen CPU",
        "RSS",
        dir("in: lost/reord/misr"),
        dir("out: lost/reord/misr"),
        "other load"
    );
    println!(
        "{:>6} {:>5} {:>4} | {:>8} {:>8} | {:>8} | {} | {} | {:>10}",
        "", "", "", "ms/c-min", "ms/c-min", "KiB/call", units, units, "cores"
    );
}

fn print_row(r: &Report, label: &str) {
    let dir = |d: &DirReport| {
        format!(
            "{:>22} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
            format!("{}/{}/{}", d.lost, d.reordered, d.misrouted),
            d.read.p50_us,
            d.read.p99_us,
            d.sock.p50_us,
            d.sock.p99_us
        )
    };
    println!(
        "{:>6} {:>5} {:>4} | {:>8.1} {:>8.1} | {:>8.1} | {} | {} | {:>10.2}",
        label,
        r.calls,
        r.seconds,
        r.server_cpu_ms_per_call_min,
        r.gen_cpu_ms_per_call_min,
        r.rss_kib_per_call,
        dir(&r.inbound),
        dir(&r.outbound),
        r.other_cores,
    );
}

fn print_details(r: &Report) {
    let pcts =
        |p: &Pcts| format!("p50 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0} us", p.p50_us, p.p99_us, p.p999_us, p.max_us);
    for (name, d) in [
        ("in  (Twilio media -> input_audio_buffer.append)", &r.inbound),
        ("out (output_audio.delta -> Twilio media)        ", &r.outbound),
    ] {
        let unstamped =
            if d.unstamped > 0 { format!(" ({} frames had no kernel stamp)", d.unstamped) } else { "".into() };
        println!("  {name}: {} frames sent, duplicated {}", d.sent, d.duplicated);
        println!("      {:<60} {}", "read      (after the generator's own scheduling):", pcts(&d.read));
        println!(
            "      {:<60} {}{unstamped}",
            "in socket (kernel receive timestamp: what the server adds):",
            pcts(&d.sock)
        );
    }
    println!(
        "  server RSS {} KiB before calls, {} KiB peak during media; marks echoed {}; unexpected events {}; machine busy {:.0}% over the media phase",
        r.rss_before_kib, r.rss_peak_kib, r.marks_echoed, r.unexpected, r.machine_busy_pct
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_report(reports: &[Report]) -> Report {
    let m = |f: &dyn Fn(&Report) -> f64| median(reports.iter().map(f).collect());
    let pcts = |pick: &dyn Fn(&Report) -> Pcts| Pcts {
        p50_us: m(&|r| pick(r).p50_us),
        p99_us: m(&|r| pick(r).p99_us),
        p999_us: m(&|r| pick(r).p999_us),
        max_us: m(&|r| pick(r).max_us),
    };
    let dir = |pick: &dyn Fn(&Report) -> &DirReport| DirReport {
        sent: reports.iter().map(|r| pick(r).sent).sum(),
        lost: reports.iter().map(|r| pick(r).lost).sum(),
        reordered: reports.iter().map(|r| pick(r).reordered).sum(),
        duplicated: reports.iter().map(|r| pick(r).duplicated).sum(),
        misrouted: reports.iter().map(|r| pick(r).misrouted).sum(),
        read: pcts(&|r| pick(r).read),
        sock: pcts(&|r| pick(r).sock),
        unstamped: reports.iter().map(|r| pick(r).unstamped).sum(),
    };
    let first = reports.first().cloned().unwrap_or_default();
    Report {
        calls: first.calls,
        seconds: first.seconds,
        server_cpu_ms_per_call_min: m(&|r| r.server_cpu_ms_per_call_min),
        gen_cpu_ms_per_call_min: m(&|r| r.gen_cpu_ms_per_call_min),
        rss_kib_per_call: m(&|r| r.rss_kib_per_call),
        rss_before_kib: m(&|r| r.rss_before_kib as f64) as u64,
        rss_peak_kib: m(&|r| r.rss_peak_kib as f64) as u64,
        machine_busy_pct: m(&|r| r.machine_busy_pct),
        other_cores: m(&|r| r.other_cores),
        inbound: dir(&|r| &r.inbound),
        outbound: dir(&|r| &r.outbound),
        marks_echoed: reports.iter().map(|r| r.marks_echoed).sum(),
        unexpected: reports.iter().map(|r| r.unexpected).sum(),
    }
}

// ---------------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------------

/// What every simulated peer shares: the send instants of every frame, per call and direction.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// The wall-clock time at `epoch`: maps the kernel's receive timestamps (CLOCK_REALTIME) onto stamps.
    wall_epoch: SystemTime,
    frames: u32,
    calls: u32,
    seconds: u32,
    drain: Duration,
    /// Twilio → server → Realtime, written by the Twilio side, read by the fake Realtime.
    sent_in: Vec<Box<[AtomicU64]>>,
    /// Realtime → server → Twilio, written by the fake Realtime, read by the Twilio side.
    sent_out: Vec<Box<[AtomicU64]>>,
    /// Base64 of bytes 9..160 of every payload (0xFF, µ-law silence): the same for all frames.
    payload_tail: String,
    ready: mpsc::UnboundedSender<Ready>,
    results: mpsc::UnboundedSender<SideResult>,
    t0: watch::Receiver<Option<Instant>>,
    /// Per call side (2 × call for Twilio, 2 × call + 1 for the Realtime side): when its frames are due.
    pace: Vec<Pace>,
    /// Set once every side has reported: only then do the Twilio sides send `stop`.
    hang_up: watch::Receiver<bool>,
}

/// One side's schedule: the pacer thread raises `due` (frames that should have been sent by now) and
/// wakes the side's task, which sends until it has caught up.
#[derive(Debug, Default)]
struct Pace {
    due: AtomicU32,
    notify: tokio::sync::Notify,
}

/// Where in the 20 ms period a side sends: calls spread evenly, each call's Realtime side half a period
/// after its Twilio side so the two directions interleave.
fn offset_ns(call: u32, calls: u32, side: Side) -> u64 {
    let period = FRAME_MS * 1_000_000;
    let base = u64::from(call) * period / u64::from(calls.max(1));
    match side {
        Side::Twilio => base,
        Side::Realtime => (base + period / 2) % period,
    }
}

/// The pacer: a plain thread that sleeps to each slot (sub-millisecond, unlike tokio's timer wheel) and
/// releases the frames due in it.
fn pacer(shared: Arc<Shared>, t0: Instant, slot: Duration, stop: Arc<AtomicBool>) {
    let period = FRAME_MS * 1_000_000;
    let slot_ns = u64::try_from(slot.as_nanos()).unwrap_or(period).clamp(1, period);
    let mut slots: Vec<Vec<usize>> = vec![Vec::new(); usize::try_from(period.div_ceil(slot_ns)).unwrap_or(1)];
    for call in 0..shared.calls {
        for (k, side) in [Side::Twilio, Side::Realtime].into_iter().enumerate() {
            let s = usize::try_from(offset_ns(call, shared.calls, side) / slot_ns).unwrap_or(0);
            if let Some(v) = slots.get_mut(s) {
                v.push(2 * call as usize + k);
            }
        }
    }
    for frame in 0..shared.frames {
        for (s, sides) in slots.iter().enumerate() {
            if sides.is_empty() {
                continue;
            }
            let at = t0 + Duration::from_nanos(u64::from(frame) * period + s as u64 * slot_ns);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            for &i in sides {
                if let Some(pace) = shared.pace.get(i) {
                    pace.due.store(frame + 1, Ordering::Release);
                    pace.notify.notify_one();
                }
            }
        }
    }
}

/// Stops and joins the pacer thread when dropped.
struct PacerThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PacerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }
    fn instant(&self, stamp: u64) -> Option<Instant> {
        (stamp != 0).then(|| self.epoch + Duration::from_nanos(stamp - 1))
    }
    /// A wall-clock time as nanoseconds since `epoch` (0 if before it).
    fn wall_ns(&self, at: SystemTime) -> u64 {
        at.duration_since(self.wall_epoch).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

#[derive(Debug)]
enum Ready {
    /// The fake Realtime got a call's `session.update` (the server pre-opened the session while ringing).
    Session(u32),
    /// The fake Realtime got `response.create` (the server's bridge is running: the stream started).
    Response(u32),
    /// A Realtime connection that could not be matched to a call.
    Stray(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Twilio,
    Realtime,
}

#[derive(Debug)]
struct SideResult {
    side: Side,
    call: u32,
    /// Frames this side sent (Twilio side: inbound; Realtime side: outbound).
    sent: u32,
    rx: RxStats,
    marks_echoed: u64,
    unexpected: u64,
    error: Option<String>,
}

/// What one side received of its call's frames.
#[derive(Debug)]
struct RxStats {
    call: u32,
    seen: Vec<bool>,
    highest: Option<u32>,
    received: u64,
    reordered: u64,
    duplicated: u64,
    misrouted: u64,
    malformed: u64,
    /// Frames received without a kernel timestamp: in `read`, not in `sock`.
    unstamped: u64,
    /// Send → read by the generator's task.
    read: Latencies,
    /// Send → the kernel's receive timestamp of the bytes that completed the frame.
    sock: Latencies,
}

/// One kind of latency for every frame a side received. u32 nanoseconds (saturating at ~4.3 s, far
/// beyond anything a working relay shows) so the two kinds together cost what one list of u64 did; the
/// maximum is kept exactly besides.
#[derive(Debug, Default)]
struct Latencies {
    ns: Vec<u32>,
    max_ns: u64,
}

impl Latencies {
    fn with_capacity(n: usize) -> Self {
        Self { ns: Vec::with_capacity(n), max_ns: 0 }
    }

    fn push(&mut self, ns: u64) {
        self.ns.push(u32::try_from(ns).unwrap_or(u32::MAX));
        self.max_ns = self.max_ns.max(ns);
    }

    fn append(&mut self, other: &Self) {
        self.ns.extend_from_slice(&other.ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    fn percentiles(&mut self) -> Pcts {
        self.ns.sort_unstable();
        Pcts {
            p50_us: percentile_us(&self.ns, 50.0),
            p99_us: percentile_us(&self.ns, 99.0),
            p999_us: percentile_us(&self.ns, 99.9),
            max_us: self.max_ns as f64 / 1000.0,
        }
    }
}

impl RxStats {
    fn new(call: u32, frames: u32) -> Self {
        Self {
            call,
            seen: vec![false; frames as usize],
            highest: None,
            received: 0,
            reordered: 0,
            duplicated: 0,
            misrouted: 0,
            malformed: 0,
            unstamped: 0,
            read: Latencies::with_capacity(frames as usize),
            sock: Latencies::with_capacity(frames as usize),
        }
    }

    /// Records one received payload (its first 12 base64 characters carry the frame's identity): `at` is
    /// when the task read it, `in_socket` the kernel's receive timestamp of the read that completed it.
    fn record(
        &mut self,
        b64_head: Option<&str>,
        at: Instant,
        in_socket: Option<SystemTime>,
        sent: &[Box<[AtomicU64]>],
        shared: &Shared,
    ) {
        let Some((call, frame)) = b64_head.and_then(decode_id) else {
            self.malformed += 1;
            return;
        };
        if call != self.call {
            self.misrouted += 1;
            return;
        }
        let Some(seen) = self.seen.get_mut(frame as usize) else {
            self.malformed += 1;
            return;
        };
        if *seen {
            self.duplicated += 1;
            return;
        }
        *seen = true;
        self.received += 1;
        match self.highest {
            Some(h) if frame < h => self.reordered += 1,
            _ => self.highest = Some(frame),
        }
        let stamp =
            sent.get(call as usize).and_then(|v| v.get(frame as usize)).map_or(0, |a| a.load(Ordering::Acquire));
        let Some(sent_at) = shared.instant(stamp) else {
            self.malformed += 1;
            return;
        };
        self.read.push(u64::try_from(at.saturating_duration_since(sent_at).as_nanos()).unwrap_or(u64::MAX));
        match in_socket {
            // `stamp - 1`: nanoseconds since the epoch (see `Shared::stamp`).
            Some(rx) => self.sock.push(shared.wall_ns(rx).saturating_sub(stamp - 1)),
            None => self.unstamped += 1,
        }
    }
}

fn encode_id(call: u32, frame: u32) -> [u8; 12] {
    let mut raw = [0xFFu8; 9];
    raw[..4].copy_from_slice(&call.to_le_bytes());
    raw[4..8].copy_from_slice(&frame.to_le_bytes());
    let mut out = [0u8; 12];
    // 9 bytes are exactly 12 base64 characters: this cannot fail.
    let _ = STANDARD.encode_slice(raw, &mut out);
    out
}

fn decode_id(b64: &str) -> Option<(u32, u32)> {
    let head = b64.get(..12)?;
    let mut raw = [0u8; 12];
    let n = STANDARD.decode_slice(head, &mut raw).ok()?;
    if n < 8 {
        return None;
    }
    let call = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let frame = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    Some((call, frame))
}

/// The text after `key` in `text` (e.g. after `"payload":"`).
fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.find(key).map(|i| &text[i + key.len()..])
}

async fn run_once(args: &Args, bin: &Path, run: u32) -> Result<Report> {
    let n = args.calls;
    let frames = args.seconds * (1000 / FRAME_MS as u32);
    let clk_tck = clock_ticks();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let (t0_tx, t0_rx) = watch::channel(None);
    let (hang_up_tx, hang_up_rx) = watch::channel(false);
    let table = |_: u32| (0..frames).map(|_| AtomicU64::new(0)).collect::<Vec<_>>().into_boxed_slice();
    // The wall clock read between two reads of the process clock: the pair is off by under a microsecond.
    let (before, wall_epoch, after) = (Instant::now(), SystemTime::now(), Instant::now());
    let shared = Arc::new(Shared {
        epoch: before + (after - before) / 2,
        wall_epoch,
        frames,
        calls: n,
        seconds: args.seconds,
        drain: Duration::from_millis(args.drain_ms),
        sent_in: (0..n).map(table).collect(),
        sent_out: (0..n).map(table).collect(),
        payload_tail: STANDARD.encode([0xFFu8; FRAME_BYTES - 9]),
        ready: ready_tx,
        results: results_tx,
        t0: t0_rx,
        hang_up: hang_up_rx,
        pace: (0..2 * n).map(|_| Pace::default()).collect(),
    });

    // The peers this process plays: Twilio's REST API and OpenAI's Realtime API.
    let stub = Arc::new(Stub::default());
    let stub_listener = TcpListener::bind("127.0.0.1:0").await?;
    let stub_port = stub_listener.local_addr()?.port();
    let stub_task = tokio::spawn(axum::serve(stub_listener, stub_router(stub.clone())).into_future());
    let rt_listener = TcpListener::bind("127.0.0.1:0").await?;
    let rt_port = rt_listener.local_addr()?.port();
    let rt_task = tokio::spawn(fake_realtime(rt_listener, shared.clone()));
    let _abort = AbortOnDrop(vec![stub_task.abort_handle(), rt_task.abort_handle()]);

    // The server under test.
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("relay_load-server-{}-run{run}.log", std::process::id()));
    let mut server = spawn_server(args, bin, (port, stub_port, rt_port), &log)?;
    let pid = server.pid();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &server, args.floor).await?;
    let rss_before = rss_kib(pid)?;

    let mut readiness = Readiness::new(n);
    let sids = if args.floor {
        // The minimal relay has no MCP and no REST: its calls are "dialed" here, and it opens the Realtime
        // session when the stream starts (the start's callToken names the call, for the fake Realtime).
        let sids: Vec<String> = (0..n).map(|i| format!("CA{:032x}", u64::from(i) + 1)).collect();
        for (i, sid) in sids.iter().enumerate() {
            let dialed = Dialed {
                stream_url: format!("ws://127.0.0.1:{port}/twilio/media"),
                token: format!("{CONTEXT_MARK}{i}"),
            };
            stub.dialed.lock().unwrap_or_else(|p| p.into_inner()).insert(sid.clone(), dialed);
        }
        sids
    } else {
        // Place the calls over MCP; the server pre-opens each call's Realtime session while "ringing".
        let sids = place_calls(&base, n).await?;
        let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(u64::from(n) * 20);
        readiness
            .wait(&mut ready_rx, false, deadline)
            .await
            .context("waiting for the server to open every call's Realtime session")?;
        sids
    };

    // Twilio starts each call's media stream.
    let mut twilio_tasks = Vec::with_capacity(n as usize);
    let connects = futures::stream::iter(sids.iter().enumerate().map(|(i, sid)| {
        let dialed = stub.dialed(sid);
        let shared = shared.clone();
        let sid = sid.clone();
        async move {
            let dialed = dialed.ok_or_else(|| anyhow!("the stub never saw call {sid} dialed"))?;
            let ws = twilio_connect(&dialed, &sid, i as u32)
                .await
                .with_context(|| format!("call {i} ({sid}): media stream"))?;
            Ok::<_, anyhow::Error>(tokio::spawn(twilio_side(ws, i as u32, sid, shared)))
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await;
    for c in connects {
        twilio_tasks.push(c?);
    }
    let _abort_twilio = AbortOnDrop(twilio_tasks.iter().map(|t| t.abort_handle()).collect());
    if args.floor {
        let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(u64::from(n) * 20);
        readiness
            .wait(&mut ready_rx, false, deadline)
            .await
            .context("waiting for the relay to open every call's Realtime session")?;
    }
    let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(u64::from(n) * 20);
    readiness
        .wait(&mut ready_rx, true, deadline)
        .await
        .context("waiting for every call's bridge to start (response.create at the Realtime side)")?;

    // The media phase: every side starts at t0, frames spread over the 20 ms period.
    let t0 = Instant::now() + Duration::from_millis(300);
    t0_tx.send(Some(t0)).map_err(|_| anyhow!("no side is listening"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (shared, stop, slot) = (shared.clone(), stop.clone(), Duration::from_micros(args.slot_us.max(1)));
        std::thread::Builder::new().name("pacer".into()).spawn(move || pacer(shared, t0, slot, stop))?
    };
    let pacer_thread = PacerThread { stop, thread: Some(thread) };
    let media = Duration::from_secs(u64::from(args.seconds));
    sleep_until(t0.into()).await;
    let srv0 = proc_cpu_ticks(&format!("/proc/{pid}/stat"))?;
    let gen0 = proc_cpu_ticks("/proc/self/stat")?;
    let sys0 = system_ticks()?;
    let mut rss_peak = 0;
    let mut at = t0;
    while at < t0 + media {
        at = (at + Duration::from_millis(500)).min(t0 + media);
        sleep_until(at.into()).await;
        if at < t0 + media {
            rss_peak = rss_peak.max(rss_kib(pid)?);
        }
    }
    let srv1 = proc_cpu_ticks(&format!("/proc/{pid}/stat"))?;
    let gen1 = proc_cpu_ticks("/proc/self/stat")?;
    let sys1 = system_ticks()?;
    rss_peak = rss_peak.max(rss_kib(pid)?);

    // Collect both sides of every call (they report once the drain is over).
    let mut results: Vec<SideResult> = Vec::with_capacity(2 * n as usize);
    let deadline = t0 + media + shared.drain + Duration::from_secs(15);
    while results.len() < 2 * n as usize {
        match tokio::time::timeout_at(deadline.into(), results_rx.recv()).await {
            Ok(Some(r)) => results.push(r),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = hang_up_tx.send(true);
    drop(pacer_thread);
    let mut unexpected = readiness.unexpected;
    while let Ok(r) = ready_rx.try_recv() {
        if let Ready::Stray(why) = r {
            eprintln!("  note: stray Realtime connection: {why}");
            unexpected += 1;
        }
    }
    if !server.alive() {
        eprintln!("  warning: the server exited during the run; see {}", log.display());
    }
    drop(server);
    match std::fs::read_to_string(&log) {
        Ok(text) if !text.trim().is_empty() => {
            eprintln!("  note: the server logged {} line(s) at warn or above: {}", text.lines().count(), log.display());
        }
        _ => {
            let _ = std::fs::remove_file(&log);
        }
    }

    // Figures.
    let secs_total = f64::from(n) * f64::from(args.seconds) / 60.0;
    let ms = |ticks: u64| ticks as f64 * 1000.0 / clk_tck as f64;
    let window_ticks = media.as_secs_f64() * clk_tck as f64;
    let busy = sys1.0.saturating_sub(sys0.0) as f64;
    let total = sys1.1.saturating_sub(sys0.1) as f64;
    let srv_ticks = srv1.saturating_sub(srv0);
    let gen_ticks = gen1.saturating_sub(gen0);
    let mut report = Report {
        calls: n,
        seconds: args.seconds,
        server_cpu_ms_per_call_min: ms(srv_ticks) / secs_total,
        gen_cpu_ms_per_call_min: ms(gen_ticks) / secs_total,
        rss_kib_per_call: rss_peak.saturating_sub(rss_before) as f64 / f64::from(n),
        rss_before_kib: rss_before,
        rss_peak_kib: rss_peak,
        machine_busy_pct: if total > 0.0 { 100.0 * busy / total } else { 0.0 },
        other_cores: ((busy - srv_ticks as f64 - gen_ticks as f64) / window_ticks).max(0.0),
        unexpected,
        ..Report::default()
    };
    let (mut lat_in, mut lat_out) =
        ((Latencies::default(), Latencies::default()), (Latencies::default(), Latencies::default()));
    let mut sent_in = vec![0u64; n as usize];
    let mut sent_out = vec![0u64; n as usize];
    let mut recv_in = vec![0u64; n as usize];
    let mut recv_out = vec![0u64; n as usize];
    for r in results {
        let i = r.call as usize;
        if let Some(e) = &r.error {
            eprintln!("  note: call {} {:?} side: {e}", r.call, r.side);
        }
        report.marks_echoed += r.marks_echoed;
        report.unexpected += r.unexpected + r.rx.malformed;
        let (sent, recv, dir, lat) = match r.side {
            Side::Twilio => (&mut sent_in, &mut recv_out, &mut report.outbound, &mut lat_out),
            Side::Realtime => (&mut sent_out, &mut recv_in, &mut report.inbound, &mut lat_in),
        };
        if let (Some(s), Some(v)) = (sent.get_mut(i), recv.get_mut(i)) {
            *s += u64::from(r.sent);
            *v += r.rx.received;
        }
        dir.reordered += r.rx.reordered;
        dir.duplicated += r.rx.duplicated;
        dir.misrouted += r.rx.misrouted;
        dir.unstamped += r.rx.unstamped;
        lat.0.append(&r.rx.read);
        lat.1.append(&r.rx.sock);
    }
    for (dir, sent, recv, lat) in [
        (&mut report.inbound, &sent_in, &recv_in, &mut lat_in),
        (&mut report.outbound, &sent_out, &recv_out, &mut lat_out),
    ] {
        // A side that never reported sent nothing we know of: count its whole schedule.
        dir.sent = sent.iter().map(|&s| if s == 0 { u64::from(frames) } else { s }).sum();
        dir.lost =
            sent.iter().zip(recv).map(|(&s, &r)| if s == 0 { u64::from(frames) } else { s.saturating_sub(r) }).sum();
        dir.read = lat.0.percentiles();
        dir.sock = lat.1.percentiles();
    }
    Ok(report)
}

fn percentile_us(sorted_ns: &[u32], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    f64::from(sorted_ns[rank.clamp(1, sorted_ns.len()) - 1]) / 1000.0
}

/// Which calls the fake Realtime has seen configured (`session.update`) and started (`response.create`).
struct Readiness {
    sessions: Vec<bool>,
    responses: Vec<bool>,
    unexpected: u64,
}

impl Readiness {
    fn new(n: u32) -> Self {
        Self { sessions: vec![false; n as usize], responses: vec![false; n as usize], unexpected: 0 }
    }

    /// Waits until every call has reached the stage: its `response.create` when `started`, else its
    /// `session.update` (events of the other stage that arrive meanwhile are kept).
    async fn wait(&mut self, rx: &mut mpsc::UnboundedReceiver<Ready>, started: bool, deadline: Instant) -> Result<()> {
        loop {
            let target = if started { &self.responses } else { &self.sessions };
            let missing = target.iter().filter(|d| !**d).count();
            if missing == 0 {
                return Ok(());
            }
            let r = match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => bail!("the fake Realtime server stopped"),
                Err(_) => bail!("{missing} of {} calls not ready in time", target.len()),
            };
            let slot = match &r {
                Ready::Session(i) => self.sessions.get_mut(*i as usize),
                Ready::Response(i) => self.responses.get_mut(*i as usize),
                Ready::Stray(_) => None,
            };
            match slot {
                Some(seen) if !*seen => *seen = true,
                _ => {
                    eprintln!("  note: unexpected readiness event {r:?}");
                    self.unexpected += 1;
                }
            }
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------------

/// The server under test; killed when dropped (at the end of a run, and on any error).
/// `ports`: the server's own, the Twilio REST stub's and the fake Realtime's.
fn spawn_server(args: &Args, bin: &Path, ports: (u16, u16, u16), log: &Path) -> Result<ServerProcess> {
    let (port, stub_port, rt_port) = ports;
    let (calls, extra_env, floor) = (args.calls, &args.server_env, args.floor);
    let mut cmd = if floor {
        let mut cmd = clean_command(std::env::current_exe()?);
        cmd.arg("--relay-port")
            .arg(port.to_string())
            .arg("--floor-mark-every")
            .arg(args.floor_mark_every.to_string())
            .args(args.floor_batch.then_some("--floor-batch"))
            .arg("--relay-realtime")
            .arg(format!("ws://127.0.0.1:{rt_port}/v1/realtime"));
        cmd
    } else {
        let mut cmd = clean_command(bin);
        cmd.arg("serve");
        cmd
    };
    cmd.env("PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env("TWILIO_NUMBER", "+15005550006")
        .env("TWILIO_API_BASE", format!("http://127.0.0.1:{stub_port}"))
        .env("OPENAI_API_KEY", "sk-relay-load")
        .env("OPENAI_REALTIME_URL", format!("ws://127.0.0.1:{rt_port}/v1/realtime"))
        .env("MAX_CONCURRENT_CALLS", (calls + 10).to_string())
        .env("MAX_CALL_DURATION_SECS", "3600")
        .env("JWT_SECRET", JWT_SECRET)
        // One client places every call at once: the abuse limits are not what this measures.
        .env("CALLS_PER_HOUR", "100000000")
        .env("RATE_LIMIT_MCP", "100000000")
        .env("RATE_LIMIT_TWILIO", "100000000")
        .env("RUST_LOG", "warn")
        .envs(extra_env.iter().filter_map(|kv| kv.split_once('=')));
    ServerProcess::start(cmd, log)
}

async fn wait_healthy(base: &str, server: &ServerProcess, floor: bool) -> Result<()> {
    if !floor {
        return process::wait_healthy(base, server, Duration::from_secs(15)).await;
    }
    // The minimal relay speaks WebSocket only: a TCP connect will do.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(base.trim_start_matches("http://")).await.is_ok() {
            return Ok(());
        }
        if !Path::new(&format!("/proc/{}", server.pid())).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the relay did not start listening; its log ({}) ends:\n{}", server.log.display(), server.log_tail())
}

// ---------------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------
// Twilio REST stub
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Dialed {
    stream_url: String,
    token: String,
}

#[derive(Debug, Default)]
struct Stub {
    next: AtomicU64,
    dialed: Mutex<HashMap<String, Dialed>>,
}

impl Stub {
    fn dialed(&self, sid: &str) -> Option<Dialed> {
        self.dialed.lock().unwrap_or_else(|p| p.into_inner()).get(sid).cloned()
    }
}

fn stub_router(stub: Arc<Stub>) -> axum::Router {
    axum::Router::new()
        .route("/2010-04-01/Accounts/{account}/Calls.json", post(create_call))
        .route("/2010-04-01/Accounts/{account}/Calls/{call}", post(update_call))
        .with_state(stub)
}

fn twilio_error(message: &str) -> (StatusCode, axum::Json<serde_json::Value>) {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"code": 21205, "message": message, "status": 400})))
}

async fn create_call(
    State(stub): State<Arc<Stub>>,
    UrlPath(_account): UrlPath<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let Some(twiml) = field("Twiml") else { return twilio_error("no Twiml") };
    let attr = |key: &str| after(twiml, key).and_then(|s| s.split('"').next()).map(xml_unescape);
    let (Some(stream_url), Some(token)) = (attr(r#"<Stream url=""#), attr(r#"name="callToken" value=""#)) else {
        return twilio_error("the TwiML has no <Stream> with a callToken");
    };
    let sid = format!("CA{:032x}", stub.next.fetch_add(1, Ordering::Relaxed) + 1);
    stub.dialed.lock().unwrap_or_else(|p| p.into_inner()).insert(sid.clone(), Dialed { stream_url, token });
    let body =
        json!({"sid": sid, "status": "queued", "to": field("To"), "from": field("From"), "direction": "outbound-api"});
    (StatusCode::CREATED, axum::Json(body))
}

async fn update_call(UrlPath((_account, call)): UrlPath<(String, String)>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"sid": call.trim_end_matches(".json"), "status": "completed"}))
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

// ---------------------------------------------------------------------------------------------------
// MCP: placing the calls
// ---------------------------------------------------------------------------------------------------

/// The HMAC secret the server checks `/mcp` tokens with.
const JWT_SECRET: &str = "relay-load-benchmark-secret-0123456789abcdef";

/// A `calls:write calls:read` token for the server at `base` (audience: its `/mcp` URL).
fn mcp_token(base: &str) -> Result<String> {
    let audience = format!("{base}/mcp");
    process::mint_token(JWT_SECRET, "relay-load", &audience, "calls:write calls:read", Duration::from_secs(86_400))
}

async fn place_calls(base: &str, n: u32) -> Result<Vec<String>> {
    let service = mcp::connect(base, mcp_token(base)?, CONNECT_TIMEOUT).await?;
    let client = &service;
    let placed = futures::stream::iter((0..n).map(|i| async move {
        let args = json!({"toNumber": format!("+1415555{:04}", 1000 + i), "callContext": format!("{CONTEXT_MARK}{i} (load test)")});
        let placed = mcp::call(client, "trigger-call", args, Duration::from_secs(20))
            .await
            .with_context(|| format!("trigger-call #{i}"))?;
        let sid = placed
            .get("callSid")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("trigger-call #{i}: no callSid in the result"))?;
        anyhow::Ok((i, sid.to_owned()))
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    let mut sids = vec![String::new(); n as usize];
    for p in placed {
        let (i, sid) = p?;
        sids[i as usize] = sid;
    }
    let _ = service.cancel().await;
    Ok(sids)
}

// ---------------------------------------------------------------------------------------------------
// Twilio's side of a media stream
// ---------------------------------------------------------------------------------------------------

/// Either peer's end of a WebSocket: after each message, `ws.get_ref().last_rx()` is when the kernel
/// received its last bytes.
type PeerWs = WebSocketStream<StampedTcp>;

fn ws_config() -> WebSocketConfig {
    // Small buffers: tungstenite zero-fills its whole read buffer before every read. Messages here are
    // ~0.3 KiB (the session.update is read in a few reads).
    WebSocketConfig::default().read_buffer_size(2 * 1024).write_buffer_size(8 * 1024).max_message_size(Some(1 << 20))
}

fn stream_sid(call: u32) -> String {
    format!("MZ{:032x}", u64::from(call) + 1)
}

async fn twilio_connect(dialed: &Dialed, call_sid: &str, call: u32) -> Result<PeerWs> {
    let mut request = dialed.stream_url.as_str().into_client_request()?;
    let signature = voice_call_mcp::carrier::signature::compute(AUTH_TOKEN, &dialed.stream_url, &[]);
    request.headers_mut().insert("x-twilio-signature", HeaderValue::from_str(&signature)?);
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        bail!("the stream URL {} is not ws:// (this benchmark speaks plain TCP)", dialed.stream_url);
    }
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let tcp = StampedTcp::new(tcp)?;
        anyhow::Ok(tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config())).await?)
    })
    .await
    .map_err(|_| anyhow!("connect timed out"))??;
    let sid = stream_sid(call);
    let connected = json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
    let start = json!({
        "event": "start", "sequenceNumber": "1", "streamSid": sid,
        "start": {
            "accountSid": ACCOUNT_SID, "streamSid": sid, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": {"callToken": dialed.token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        }
    });
    ws.send(Message::text(connected.to_string())).await?;
    ws.send(Message::text(start.to_string())).await?;
    Ok(ws)
}

async fn wait_t0(shared: &Shared) -> Option<Instant> {
    let mut rx = shared.t0.clone();
    rx.wait_for(Option::is_some).await.ok().and_then(|v| *v)
}

/// One call's Twilio side: `media` every 20 ms, reads the server's `media` (recording each frame's
/// identity and latency) and echoes every `mark` at once.
async fn twilio_side(mut ws: PeerWs, call: u32, call_sid: String, shared: Arc<Shared>) {
    let mut result = SideResult {
        side: Side::Twilio,
        call,
        sent: 0,
        rx: RxStats::new(call, shared.frames),
        marks_echoed: 0,
        unexpected: 0,
        error: None,
    };
    let Some(t0) = wait_t0(&shared).await else { return };
    let sid = stream_sid(call);
    let end = t0 + Duration::from_secs(u64::from(shared.seconds)) + shared.drain;
    let Some(pace) = shared.pace.get(2 * call as usize) else { return };
    let mut tick = Box::pin(pace.notify.notified());
    let stop = sleep_until(end.into());
    tokio::pin!(stop);
    let mut seq: u64 = 1;
    let mut frame: u32 = 0;
    'run: loop {
        tokio::select! {
            biased;
            msg = ws.next() => {
                let at = Instant::now();
                // The kernel's receive timestamp of the read that completed this message. If one read
                // carried two messages, both get its (later) stamp: conservative.
                let in_socket = ws.get_ref().last_rx();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => { result.error = Some("the server closed the stream early".into()); break }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => { result.error = Some(format!("read: {e}")); break }
                };
                let text = text.as_str();
                if text.starts_with(r#"{"event":"media""#) {
                    result.rx.record(after(text, r#""payload":""#), at, in_socket, &shared.sent_out, &shared);
                } else if text.starts_with(r#"{"event":"mark""#) {
                    let Some(name) = after(text, r#""name":""#).and_then(|s| s.split('"').next()) else {
                        result.unexpected += 1;
                        continue;
                    };
                    seq += 1;
                    let echo = format!(r#"{{"event":"mark","sequenceNumber":"{seq}","streamSid":"{sid}","mark":{{"name":"{name}"}}}}"#);
                    if let Err(e) = ws.send(Message::text(echo)).await {
                        result.error = Some(format!("mark echo: {e}"));
                        break;
                    }
                    result.marks_echoed += 1;
                } else {
                    // `clear` (a barge-in) or anything else: never expected in this load.
                    result.unexpected += 1;
                }
            }
            () = tick.as_mut(), if frame < shared.frames => {
                tick.set(pace.notify.notified());
                let due = pace.due.load(Ordering::Acquire).min(shared.frames);
                while frame < due {
                    seq += 1;
                    let id = encode_id(call, frame);
                    let mut msg = String::with_capacity(400);
                    let _ = write!(
                        msg,
                        r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":"{sid}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":""#,
                        frame + 1,
                        u64::from(frame) * FRAME_MS
                    );
                    msg.push_str(std::str::from_utf8(&id).unwrap_or("AAAAAAAAAAAA"));
                    msg.push_str(&shared.payload_tail);
                    msg.push_str(r#""}}"#);
                    let now = Instant::now();
                    if let Some(slot) = shared.sent_in.get(call as usize).and_then(|v| v.get(frame as usize)) {
                        slot.store(shared.stamp(now), Ordering::Release);
                    }
                    if let Err(e) = ws.send(Message::text(msg)).await {
                        result.error = Some(format!("write: {e}"));
                        break 'run;
                    }
                    frame += 1;
                    result.sent = frame;
                }
            }
            () = &mut stop => break,
        }
    }
    let _ = shared.results.send(result);
    // Hang up the stream like Twilio does (once every side has reported), and let the server close its end.
    let mut hang_up = shared.hang_up.clone();
    let _ = tokio::time::timeout(Duration::from_secs(30), hang_up.wait_for(|h| *h)).await;
    seq += 1;
    let stop_msg = format!(
        r#"{{"event":"stop","sequenceNumber":"{seq}","streamSid":"{sid}","stop":{{"accountSid":"{ACCOUNT_SID}","callSid":"{call_sid}"}}}}"#
    );
    let _ = ws.send(Message::text(stop_msg)).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

// ---------------------------------------------------------------------------------------------------
// Kernel receive timestamps
// ---------------------------------------------------------------------------------------------------

/// A TCP stream that reads with `recvmsg` and keeps the kernel's receive timestamp (SO_TIMESTAMPNS) of
/// its latest read: for TCP, the timestamp of the last segment that read consumed, i.e. when the newest of
/// the bytes it returned arrived (segments merged in the receive queue keep the newest stamp). Writes go
/// straight to the stream.
#[derive(Debug)]
struct StampedTcp {
    tcp: TcpStream,
    /// Room for one SCM_TIMESTAMPNS control message.
    control: Vec<u8>,
    last_rx: Option<SystemTime>,
}

impl StampedTcp {
    fn new(tcp: TcpStream) -> std::io::Result<Self> {
        stamp::enable(&tcp)?;
        Ok(Self { tcp, control: stamp::control_buffer(), last_rx: None })
    }

    /// When the kernel received the bytes of the latest read (None before any, or if it had no stamp).
    fn last_rx(&self) -> Option<SystemTime> {
        self.last_rx
    }
}

impl AsyncRead for StampedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let (tcp, control) = (&this.tcp, &mut this.control);
            let unfilled = buf.initialize_unfilled();
            // `try_io` clears the readiness when `recvmsg` says WouldBlock; `poll_read_ready` then
            // registers the waker for the next edge.
            let read = tcp.try_io(Interest::READABLE, || stamp::recv(tcp, unfilled, control));
            match read {
                Ok((n, received)) => {
                    if n > 0 {
                        this.last_rx = received;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------------
// The fake OpenAI Realtime server
// ---------------------------------------------------------------------------------------------------

async fn fake_realtime(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(realtime_conn(stream, shared.clone()));
    }
}

async fn realtime_conn(stream: TcpStream, shared: Arc<Shared>) {
    let stream = match StampedTcp::new(stream) {
        Ok(s) => s,
        Err(e) => {
            let _ = shared.ready.send(Ready::Stray(format!("SO_TIMESTAMPNS: {e}")));
            return;
        }
    };
    let check = check_realtime_handshake;
    let accepted = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config())),
    )
    .await;
    let Ok(Ok(mut ws)) = accepted else {
        let _ = shared.ready.send(Ready::Stray("handshake failed".into()));
        return;
    };
    // Which call is this? Its session.update's instructions carry our callContext.
    let call = match tokio::time::timeout(Duration::from_secs(60), read_session_update(&mut ws)).await {
        Ok(Ok(call)) if call < shared.calls => call,
        Ok(Ok(call)) => {
            let _ = shared.ready.send(Ready::Stray(format!("call index {call} out of range")));
            return;
        }
        Ok(Err(e)) => {
            let _ = shared.ready.send(Ready::Stray(format!("{e:#}")));
            return;
        }
        Err(_) => {
            let _ = shared.ready.send(Ready::Stray("no session.update".into()));
            return;
        }
    };
    let _ = shared.ready.send(Ready::Session(call));
    let mut result = SideResult {
        side: Side::Realtime,
        call,
        sent: 0,
        rx: RxStats::new(call, shared.frames),
        marks_echoed: 0,
        unexpected: 0,
        error: None,
    };
    // The bridge sends response.create once Twilio's stream has started.
    loop {
        match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with(r#"{"type":"response.create""#) => break,
            Ok(Some(Ok(Message::Text(_)))) => result.unexpected += 1,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => return,
            Ok(Some(Ok(_))) => {}
        }
    }
    let _ = shared.ready.send(Ready::Response(call));
    let Some(t0) = wait_t0(&shared).await else { return };
    let end = t0 + Duration::from_secs(u64::from(shared.seconds)) + shared.drain;
    let Some(pace) = shared.pace.get(2 * call as usize + 1) else { return };
    let mut tick = Box::pin(pace.notify.notified());
    let stop = sleep_until(end.into());
    tokio::pin!(stop);
    let mut frame: u32 = 0;
    'run: loop {
        tokio::select! {
            biased;
            msg = ws.next() => {
                let at = Instant::now();
                // As on the Twilio side: the stamp of the read that completed this message.
                let in_socket = ws.get_ref().last_rx();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => { result.error = Some("the server closed the session early".into()); break }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => { result.error = Some(format!("read: {e}")); break }
                };
                let text = text.as_str();
                if text.starts_with(r#"{"type":"input_audio_buffer.append""#) {
                    result.rx.record(after(text, r#""audio":""#), at, in_socket, &shared.sent_in, &shared);
                } else {
                    // conversation.item.truncate (a barge-in) or anything else: never expected here.
                    result.unexpected += 1;
                }
            }
            () = tick.as_mut(), if frame < shared.frames => {
                tick.set(pace.notify.notified());
                let due = pace.due.load(Ordering::Acquire).min(shared.frames);
                while frame < due {
                    let id = encode_id(call, frame);
                    let mut msg = String::with_capacity(400);
                    let _ = write!(
                        msg,
                        r#"{{"type":"response.output_audio.delta","event_id":"e{call}_{frame}","response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":""#
                    );
                    msg.push_str(std::str::from_utf8(&id).unwrap_or("AAAAAAAAAAAA"));
                    msg.push_str(&shared.payload_tail);
                    msg.push_str(r#""}"#);
                    let now = Instant::now();
                    if let Some(slot) = shared.sent_out.get(call as usize).and_then(|v| v.get(frame as usize)) {
                        slot.store(shared.stamp(now), Ordering::Release);
                    }
                    if let Err(e) = ws.send(Message::text(msg)).await {
                        result.error = Some(format!("write: {e}"));
                        break 'run;
                    }
                    frame += 1;
                    result.sent = frame;
                }
            }
            () = &mut stop => break,
        }
    }
    let _ = shared.results.send(result);
    // Let the server end the session (it does once Twilio's stream stops).
    let _ = tokio::time::timeout(Duration::from_secs(3), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// The handshake the server makes to OpenAI: `/v1/realtime` with a bearer key.
// The `Err` type is tungstenite's `Callback` signature, not ours to shrink.
#[allow(clippy::result_large_err)]
fn check_realtime_handshake(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    let authorized = req.headers().get("authorization").is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
    if req.uri().path() != "/v1/realtime" || !authorized {
        let mut refusal = ErrorResponse::new(Some("not /v1/realtime with a bearer key".into()));
        *refusal.status_mut() = StatusCode::FORBIDDEN;
        return Err(refusal);
    }
    Ok(resp)
}

async fn read_session_update(ws: &mut PeerWs) -> Result<u32> {
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let event: serde_json::Value = serde_json::from_str(text.as_str())?;
        if event["type"] != "session.update" {
            continue;
        }
        let format = &event["session"]["audio"]["input"]["format"]["type"];
        if format != "audio/pcmu" {
            bail!("session.update does not ask for audio/pcmu input (got {format})");
        }
        let instructions = event["session"]["instructions"].as_str().unwrap_or_default();
        let digits: String = after(instructions, CONTEXT_MARK)
            .map(|s| s.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_default();
        return digits.parse().map_err(|_| anyhow!("session.update instructions do not name a load-test call"));
    }
    bail!("closed before session.update")
}

// ---------------------------------------------------------------------------------------------------
// The minimal relay (`--floor`)
// ---------------------------------------------------------------------------------------------------

/// What a plain relay does for each frame and nothing more: for the floor of this machine.
mod relay {
    use super::{Message, TcpListener, TcpStream, ws_config};
    use anyhow::{Result, bail};
    use futures::{SinkExt, StreamExt};
    use serde::Deserialize;
    use std::borrow::Cow;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    #[derive(Deserialize)]
    struct TwilioFrame<'a> {
        #[serde(borrow)]
        event: Cow<'a, str>,
        #[serde(borrow, default)]
        media: Option<Payload<'a>>,
    }

    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        payload: Cow<'a, str>,
    }

    #[derive(Deserialize)]
    struct RealtimeEvent<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        delta: Option<Cow<'a, str>>,
    }

    pub(super) async fn serve(port: u16, realtime: String, mark_every: u64, batch: bool) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let realtime = realtime.clone();
            tokio::spawn(async move {
                if let Err(e) = call(stream, &realtime, mark_every, batch).await {
                    eprintln!("relay: call ended: {e:#}");
                }
            });
        }
    }

    async fn call(stream: TcpStream, realtime: &str, mark_every: u64, batch: bool) -> Result<()> {
        // The benchmark's readiness probe connects and closes: not a call, nothing to report.
        let Ok(mut twilio) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await else {
            return Ok(());
        };
        let (stream_sid, token) = loop {
            let Some(msg) = twilio.next().await else { bail!("closed before start") };
            let Message::Text(text) = msg? else { continue };
            let v: serde_json::Value = serde_json::from_str(text.as_str())?;
            if v["event"] == "start" {
                let sid = v["streamSid"].as_str().unwrap_or_default().to_owned();
                break (sid, v["start"]["customParameters"]["callToken"].as_str().unwrap_or_default().to_owned());
            }
        };
        let mut request = format!("{realtime}?model=gpt-realtime").into_client_request()?;
        request.headers_mut().insert("authorization", HeaderValue::from_static("Bearer sk-relay-load"));
        let (mut rt, _) = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true).await?;
        let update = serde_json::json!({"type": "session.update", "session": {"type": "realtime", "instructions": token,
            "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}});
        rt.send(Message::text(update.to_string())).await?;
        rt.send(Message::text(r#"{"type":"response.create"}"#)).await?;
        let (mut deltas, mut marks) = (0u64, 0u64);
        loop {
            tokio::select! {
                msg = twilio.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let frame: TwilioFrame<'_> = serde_json::from_str(text.as_str())?;
                    match (frame.event.as_ref(), frame.media) {
                        ("media", Some(media)) => {
                            let mut out = String::with_capacity(320);
                            out.push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
                            out.push_str(&media.payload);
                            out.push_str(r#""}"#);
                            rt.send(Message::text(out)).await?;
                        }
                        ("stop", _) => break,
                        _ => {}
                    }
                }
                msg = rt.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let event: RealtimeEvent<'_> = serde_json::from_str(text.as_str())?;
                    let ("response.output_audio.delta", Some(delta)) = (event.kind.as_ref(), event.delta) else {
                        continue;
                    };
                    let mut out = String::with_capacity(320);
                    out.push_str(r#"{"event":"media","streamSid":""#);
                    out.push_str(&stream_sid);
                    out.push_str(r#"","media":{"payload":""#);
                    out.push_str(&delta);
                    out.push_str(r#""}}"#);
                    deltas += 1;
                    if deltas % mark_every != 0 {
                        twilio.send(Message::text(out)).await?;
                        continue;
                    }
                    marks += 1;
                    let mark = format!(r#"{{"event":"mark","streamSid":"{stream_sid}","mark":{{"name":"m{marks}"}}}}"#);
                    if batch {
                        twilio.feed(Message::text(out)).await?;
                        twilio.feed(Message::text(mark)).await?;
                        twilio.flush().await?;
                    } else {
                        twilio.send(Message::text(out)).await?;
                        twilio.send(Message::text(mark)).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
