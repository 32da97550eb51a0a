//! Soak benchmark: the release server under hours-like load, sampled for leaks. Waves of sandbox calls
//! placed over MCP, a fleet of `/events` subscribers reading all the while, and every `--sample-secs`
//! the server's memory, file descriptors, threads, async tasks and event store measured; at the end, the
//! least-squares slope of each series after a warm-up, and a verdict: flat, or growing (a leak).
//!
//! ```text
//! cargo build --release                        # the server under test: target/release/voice-call-mcp
//! cargo run --release --example soak -- --minutes 2                  # smoke run
//! nohup nice -n 5 cargo run --release --example soak > target/soak.log 2>&1 &   # the 30-minute soak
//! ```
//!
//! What it does:
//! - Starts `voice-call-mcp serve --sandbox` as a child process (on a free loopback port, `RUST_LOG=warn`)
//!   with a file database, `DATABASE_URL=sqlite://<tmp>/soak.db`, so the store's size can be measured,
//!   `EVENT_RETENTION_COUNT=--retention-count` and `CALL_RETENTION_COUNT=--call-retention-count`
//!   (default 2,000) so the event log and the stored calls reach a steady state, a `JWT_SECRET`
//!   to mint one token with every scope, and the abuse limits (`MAX_CONCURRENT_CALLS`, `CALLS_PER_HOUR`,
//!   `RATE_LIMIT_*`, `SSE_MAX_CONNECTIONS*`) raised above the load: they are not what this measures.
//! - Opens `--subscribers` streams on `/events` (HTTP/1.1 on a bare socket, `support/sse.rs`) that read
//!   continuously and count what they receive; a stream that ends (the server disconnects a reader that
//!   fell too far behind) reconnects with `Last-Event-ID`, so it resumes where it was.
//! - Places calls in waves over MCP (rmcp's client, the stateless 2026-07-28 protocol): each wave
//!   places `--calls` calls at once to sandbox numbers that hold a normal conversation (`+1415555` then
//!   1000–8999), follows each with `wait-for-call` (bounded by `--wave-timeout-secs`; a call still live
//!   then is ended with `end-call` and counted), waits for `list-calls` to say no call is active, lets
//!   the server settle (`--settle-secs`) and takes a "wave-end" sample: the server idle between waves,
//!   where a leak cannot hide behind the load. Then the next wave, until `--minutes` have passed.
//! - Every `--sample-secs` (and at each wave's end) it reads the server's VmRSS and Threads
//!   (/proc/PID/status), its open descriptors (/proc/PID/fd), its CPU time, `/metrics`
//!   (`voice_call_runtime_tasks`: tokio's live tasks; `voice_call_calls_active`;
//!   `voice_call_sse_subscribers`), and the store: the bytes of `soak.db` and `soak.db-wal`, and, read
//!   from the file (read-only, in WAL mode it never blocks the server's writer), the rows of `events`,
//!   `calls` and `transcript_lines` and the pages the event log's table and index take (`dbstat`).
//!   Every sample is a line of `--out` (CSV; `kind` is `periodic` or `wave-end`); each wave a line of
//!   `<out>-waves.csv`.
//! - At the end, for each series: the slope per hour (least squares) over the samples after
//!   `--warmup-minutes` and over the last half of the run, first / last / max, and a verdict: `flat`
//!   when the slope is under 1% of the series' mean per hour, `flat (noise)` when it is within three
//!   standard errors of zero (the periodic samples swing with the waves), else `GROWS` / `shrinks`.
//!
//! The store grows by design: call records and transcripts are kept (retention applies to the event
//! log only), so `store_bytes` grows with the calls placed; the event log (`events_rows`,
//! `events_bytes`) is what retention holds steady once it holds `--retention-count` events. The server
//! keeps the last 10,000 ended calls in memory for `list-calls`, so its RSS grows until that many calls
//! have ended, then stays: the last-half slope shows it.
//!
//! Flags: `--minutes` (30), `--calls` per wave (200), `--subscribers` (2000), `--warmup-minutes` (5;
//! at most half the run), `--sample-secs` (10), `--out` (target/soak.csv), `--retention-count` (20000),
//! `--wave-timeout-secs` (120), `--settle-secs` (2), `--types` (the subscribers' `types=` filter, e.g.
//! `call-status,call-ended`; default: every event), `--server-bin`, `--server-env NAME=VALUE`
//! (repeatable), `--client-threads` (2), `--connect-concurrency` (200), `--keep-db`.
//!
//! Exit status: 0 when nothing grew (the wave-end descriptors, tasks, threads and RSS flat) and every
//! call ended, 1 when something grew or a call did not end, 2 when the run could not be set up.

#[path = "support/mcp.rs"]
mod mcp;
#[path = "support/process.rs"]
mod process;
#[path = "support/sse.rs"]
mod sse;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use process::{ServerProcess, clean_command, clock_ticks, free_port, proc_cpu_ticks, wait_healthy};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "Soak benchmark: waves of sandbox calls and /events subscribers, sampled for leaks")]
struct Args {
    /// How long to place waves of calls.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Calls placed at once in each wave.
    #[arg(long, default_value_t = 200)]
    calls: u32,
    /// `/events` streams kept open and reading for the whole run.
    #[arg(long, default_value_t = 2000)]
    subscribers: usize,
    /// Samples from the first minutes are left out of the slopes (at most half the run).
    #[arg(long, default_value_t = 5.0)]
    warmup_minutes: f64,
    /// Seconds between periodic samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// The samples, as CSV; the waves go to `<out>-waves.csv` beside it.
    #[arg(long, default_value = "target/soak.csv")]
    out: PathBuf,
    /// The server's EVENT_RETENTION_COUNT: the event log's size once retention holds it steady.
    #[arg(long, default_value_t = 20_000)]
    retention_count: u64,
    /// The server's CALL_RETENTION_COUNT: ended calls (and their transcripts) kept in the store.
    #[arg(long, default_value_t = 2_000)]
    call_retention_count: u64,
    /// A call not ended this long after its wave was placed is ended with `end-call` and counted.
    #[arg(long, default_value_t = 120)]
    wave_timeout_secs: u64,
    /// Seconds the server settles after a wave's last call ended, before the wave-end sample.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// The subscribers' `types` filter (comma-separated event names) [default: every event].
    #[arg(long)]
    types: Option<String>,
    /// The server binary [default: target/release/voice-call-mcp].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra environment for the server, e.g. `--server-env MALLOC_ARENA_MAX=2` (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    server_env: Vec<String>,
    /// Worker threads of this process's runtime (the subscribers and the MCP client).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Keep the database (and the server's log) when the run ends.
    #[arg(long)]
    keep_db: bool,
}

/// The HMAC secret the server checks tokens with (JWT_SECRET needs at least 32 bytes).
const SECRET: &str = "soak-benchmark-secret-0123456789abcdef-not-for-production";
/// The token audience both ends agree on (JWT_AUDIENCE).
const AUDIENCE: &str = "voice-call-mcp-soak";
/// The abuse limits are raised to this: they are not what a soak measures.
const NO_LIMIT: &str = "100000000";
/// Opening one stream: connect and response head.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// A flat series' slope is under this share of its mean per hour.
const FLAT_PER_HOUR: f64 = 0.01;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("soak-client")
        .enable_all()
        .build()
        .context("starting the runtime");
    process::exit_code(runtime.and_then(|rt| rt.block_on(run(&args))))
}

async fn run(args: &Args) -> Result<bool> {
    if args.calls == 0 || args.minutes <= 0.0 || args.sample_secs == 0 {
        bail!("--calls, --minutes and --sample-secs must be positive");
    }
    let bin = process::server_binary(args.server_bin.as_deref())?;
    // This process: a descriptor per stream, two per call in flight (MCP requests), and its own.
    process::ensure_open_files(args.subscribers as u64 + 2 * u64::from(args.calls) + 256, "the streams and calls")?;
    let dir = std::env::temp_dir().join(format!("soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("soak.db");
    let port = free_port()?;
    let log = dir.join("server.log");
    let server = spawn_server(args, &bin, port, &db, &log)?;
    let pid = server.pid();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &server, Duration::from_secs(30)).await?;
    let ttl = Duration::from_secs_f64(args.minutes * 60.0) + Duration::from_secs(3600);
    let token = process::mint_token(SECRET, "soak", AUDIENCE, "calls:write calls:read events:read", ttl)?;
    println!(
        "soak: waves of {} calls for {} min, {} subscribers{}; server {} (pid {pid}, port {port}); database {}; \
         {} CPUs, loadavg {}",
        args.calls,
        args.minutes,
        args.subscribers,
        args.types.as_deref().map(|t| format!(" (types={t})")).unwrap_or_default(),
        bin.display(),
        db.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
    );

    // The subscribers, all open before the first wave.
    let feed = Arc::new(Feed::default());
    let stop = CancellationToken::new();
    let path: Arc<str> = match &args.types {
        Some(t) => format!("/events?types={t}").into(),
        None => "/events".into(),
    };
    let authority: Arc<str> = format!("127.0.0.1:{port}").into();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let token_arc: Arc<str> = token.as_str().into();
    let subscribers: Vec<_> = (0..args.subscribers)
        .map(|_| {
            tokio::spawn(subscriber(
                authority.clone(),
                path.clone(),
                token_arc.clone(),
                feed.clone(),
                permits.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let opening = Instant::now();
    while (feed.connected.load(Ordering::Relaxed) as usize) < args.subscribers {
        if opening.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {} subscribers connected in 120 s: {}",
                feed.connected.load(Ordering::Relaxed),
                args.subscribers,
                feed.last_error()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  {} subscribers connected in {:.1} s", args.subscribers, opening.elapsed().as_secs_f64());

    // The sampler: periodic samples on a thread of its own (it blocks on /proc, SQLite and /metrics).
    let out = args.out.clone();
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    let waves_out = out.with_file_name(format!(
        "{}-waves.csv",
        out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "soak".into())
    ));
    let started = Instant::now();
    let wave_no = Arc::new(AtomicU32::new(0));
    let sampler = Arc::new(Mutex::new(Sampler::new(pid, port, &db, started, feed.clone(), wave_no.clone(), &out)?));
    let sampling = CancellationToken::new();
    let periodic = {
        let (sampler, sampling, every) = (sampler.clone(), sampling.clone(), Duration::from_secs(args.sample_secs));
        std::thread::Builder::new().name("soak-sampler".into()).spawn(move || {
            let mut next = Instant::now();
            while !sampling.is_cancelled() {
                sample(&sampler, Kind::Periodic);
                next += every;
                while Instant::now() < next && !sampling.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100).min(next.saturating_duration_since(Instant::now())));
                }
            }
        })?
    };

    // The waves.
    let client = mcp::connect(&base, token.clone(), Duration::from_secs(20)).await?;
    let mut waves_csv =
        std::fs::File::create(&waves_out).with_context(|| format!("creating {}", waves_out.display()))?;
    writeln!(waves_csv, "wave,start_s,secs,placed,refused,completed,other_ended,not_ended,statuses,active_after")?;
    let deadline = started + Duration::from_secs_f64(args.minutes * 60.0);
    let mut waves = Vec::new();
    let mut server = server;
    while Instant::now() < deadline {
        if !server.alive() {
            bail!("the server exited during the run; its log ends:\n{}", server.log_tail());
        }
        let n = wave_no.fetch_add(1, Ordering::Relaxed) + 1;
        let w = run_wave(&client, n, args, started).await;
        // Settle: the last sockets of the wave close; then the idle server's figures.
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let s = {
            let sampler = sampler.clone();
            tokio::task::spawn_blocking(move || sample(&sampler, Kind::WaveEnd)).await?
        };
        println!(
            "  wave {:>3} at {:>6.0} s: {:>4} placed, {:>4} completed, {} other, {} not ended, {:>5.1} s | idle: \
             RSS {} KiB, fds {}, threads {}, tasks {}, store {:.1} MiB ({} events) | feed {} events, {} reconnects",
            w.wave,
            w.start_s,
            w.placed,
            w.completed,
            w.other_ended,
            w.not_ended,
            w.secs,
            s.rss_kib,
            s.fds,
            s.threads,
            opt(s.tasks),
            s.store_bytes as f64 / 1048576.0,
            s.events_rows.map_or_else(|| "?".into(), |n| n.to_string()),
            s.events_received,
            s.reconnects,
        );
        if w.refused > 0 || !w.first_error.is_empty() {
            println!("    {} refused or failed: {}", w.refused, w.first_error);
        }
        writeln!(
            waves_csv,
            "{},{:.1},{:.1},{},{},{},{},{},{},{}",
            w.wave,
            w.start_s,
            w.secs,
            w.placed,
            w.refused,
            w.completed,
            w.other_ended,
            w.not_ended,
            w.statuses.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            w.active_after.map_or_else(|| "?".into(), |n| n.to_string()),
        )?;
        waves_csv.flush()?;
        waves.push(w);
    }
    let _ = client.cancel().await;
    // A last look with the subscribers still open, then they are told to stop.
    sampling.cancel();
    let _ = periodic.join();
    let connected_at_end = feed.connected.load(Ordering::Relaxed);
    stop.cancel();
    for s in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }

    let samples = sampler.lock().unwrap_or_else(|p| p.into_inner()).samples.clone();
    let ok = report(args, &samples, &waves, &feed, connected_at_end, &out, &waves_out);
    drop(server);
    if args.keep_db {
        println!("kept: {} (and the server's log, {})", db.display(), log.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ok)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The server under test; killed when dropped (at the end of the run, and on any error).
fn spawn_server(args: &Args, bin: &Path, port: u16, db: &Path, log: &Path) -> Result<ServerProcess> {
    let streams = (args.subscribers + 1000).to_string();
    let mut cmd = clean_command(bin);
    cmd.args(["serve", "--sandbox"])
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("EVENT_RETENTION_COUNT", args.retention_count.to_string())
        .env("CALL_RETENTION_COUNT", args.call_retention_count.to_string())
        .env("JWT_SECRET", SECRET)
        .env("JWT_AUDIENCE", AUDIENCE)
        .env("MAX_CONCURRENT_CALLS", (args.calls + 50).to_string())
        .env("CALLS_PER_HOUR", NO_LIMIT)
        .env("RATE_LIMIT_MCP", NO_LIMIT)
        .env("RATE_LIMIT_EVENTS", NO_LIMIT)
        .env("RATE_LIMIT_TWILIO", NO_LIMIT)
        .env("SSE_MAX_CONNECTIONS", &streams)
        .env("SSE_MAX_CONNECTIONS_PER_SUBJECT", &streams)
        .env("RUST_LOG", "warn")
        .envs(args.server_env.iter().filter_map(|kv| kv.split_once('=')));
    ServerProcess::start(cmd, log)
}

// ---------------------------------------------------------------------------------------------------
// The subscribers
// ---------------------------------------------------------------------------------------------------

/// What the subscribers saw, all together.
#[derive(Debug, Default)]
struct Feed {
    /// Streams open now.
    connected: AtomicU64,
    /// Events with an id received (replayed ones included).
    received: AtomicU64,
    /// Streams opened again after one ended.
    reconnects: AtomicU64,
    /// Streams the server ended (a reader that fell behind is told where to resume, then closed).
    ended_by_server: AtomicU64,
    /// Streams that failed (a reset, a read error).
    failed: AtomicU64,
    /// Connects refused or timed out.
    open_failures: AtomicU64,
    /// `replay-truncated` events: a resume id older than retention.
    truncated: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Feed {
    fn note_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "no error".into())
    }
}

/// How one stream ended.
enum End {
    Stopped,
    ByServer,
    Failed(String),
}

/// One subscriber for the whole run: opens its stream, reads it, and when it ends opens it again from
/// the last id it saw (`Last-Event-ID`), until `stop`.
async fn subscriber(
    authority: Arc<str>,
    path: Arc<str>,
    token: Arc<str>,
    feed: Arc<Feed>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) {
    // Its own child of the stop token: polling a shared pending `cancelled()` takes one lock for all.
    let stop = stop.child_token();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut last_id = None;
    let mut opened_before = false;
    loop {
        let open = async {
            let _permit = permits.acquire().await;
            tokio::time::timeout(OPEN_TIMEOUT, sse::open_raw(&authority, &path, &token, last_id)).await
        };
        let stream = tokio::select! {
            biased;
            () = &mut stopped => return,
            opened = open => opened,
        };
        let stream = match stream {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                feed.open_failures.fetch_add(1, Ordering::Relaxed);
                feed.note_error(format!("open: {e}"));
                if pause(&mut stopped, 1000).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                feed.open_failures.fetch_add(1, Ordering::Relaxed);
                feed.note_error(format!("open: no response head within {OPEN_TIMEOUT:?}"));
                continue;
            }
        };
        if opened_before {
            feed.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        opened_before = true;
        feed.connected.fetch_add(1, Ordering::Relaxed);
        let end = read_stream(stream, &mut last_id, &feed, &mut stopped).await;
        feed.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stopped => return,
            End::ByServer => {
                feed.ended_by_server.fetch_add(1, Ordering::Relaxed);
            }
            End::Failed(e) => {
                feed.failed.fetch_add(1, Ordering::Relaxed);
                feed.note_error(format!("read: {e}"));
            }
        }
        // As EventSource does: a moment, then resume (spread out, so a mass disconnect is no stampede).
        if pause(&mut stopped, 200).await {
            return;
        }
    }
}

/// Sleeps `base_ms` plus up to as much again at random; true if stopped meanwhile.
async fn pause(
    stopped: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    base_ms: u64,
) -> bool {
    let ms = base_ms + rand::random_range(0..=base_ms);
    tokio::select! {
        () = stopped.as_mut() => true,
        () = tokio::time::sleep(Duration::from_millis(ms)) => false,
    }
}

async fn read_stream(
    stream: sse::RawStream,
    last_id: &mut Option<u64>,
    feed: &Feed,
    stopped: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> End {
    let sse::RawStream { mut tcp, first, mut buf } = stream;
    let mut chunks = sse::Dechunker::default();
    let mut parser = sse::SseParser::default();
    let mut body = Vec::with_capacity(8192);
    let mut on_bytes = |bytes: &[u8]| {
        body.clear();
        let ended = chunks.feed(bytes, &mut body);
        let (mut n, mut truncated) = (0, 0);
        parser.feed(&body, |f| {
            if let Some(id) = f.id {
                *last_id = Some(id);
                n += 1;
            }
            if f.kind == "replay-truncated" {
                truncated += 1;
            }
        });
        feed.received.fetch_add(n, Ordering::Relaxed);
        if truncated > 0 {
            feed.truncated.fetch_add(truncated, Ordering::Relaxed);
        }
        ended
    };
    if on_bytes(&first) {
        return End::ByServer;
    }
    loop {
        tokio::select! {
            biased;
            () = stopped.as_mut() => return End::Stopped,
            read = tcp.read(&mut buf) => match read {
                Ok(0) => return End::ByServer,
                Ok(n) => if on_bytes(&buf[..n]) { return End::ByServer },
                Err(e) => return End::Failed(e.to_string()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The waves
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Wave {
    wave: u32,
    start_s: f64,
    secs: f64,
    placed: u32,
    refused: u32,
    completed: u32,
    /// Ended in another status (busy, no-answer, failed, canceled): none expected here.
    other_ended: u32,
    /// Still live when the wave's time was up (then ended with `end-call`).
    not_ended: u32,
    statuses: BTreeMap<String, u32>,
    /// `list-calls`' `active` once the wave was over.
    active_after: Option<u64>,
    first_error: String,
}

/// How one call of a wave went.
enum Outcome {
    Refused(String),
    Ended(String),
    NotEnded(String),
}

async fn run_wave(client: &mcp::Client, wave: u32, args: &Args, started: Instant) -> Wave {
    let t0 = Instant::now();
    let mut w = Wave { wave, start_s: t0.duration_since(started).as_secs_f64(), ..Default::default() };
    let wait_secs = args.wave_timeout_secs;
    // Each call: placed (at most 32 requests at once), then followed until it ends.
    let placing = Arc::new(Semaphore::new(32));
    let calls = (0..args.calls).map(|i| {
        let placing = placing.clone();
        async move {
            let to = format!("+1415555{:04}", 1000 + (wave * args.calls + i) % 8000);
            let placed = {
                let _permit = placing.acquire().await;
                let brief = format!("Soak wave {wave} call {i}: ask whether they are open on Sunday.");
                mcp::call(
                    client,
                    "trigger-call",
                    json!({"toNumber": to, "callContext": brief}),
                    Duration::from_secs(30),
                )
                .await
            };
            let sid = match placed.as_ref().map(|v| v.get("callSid").and_then(|s| s.as_str())) {
                Ok(Some(sid)) => sid.to_owned(),
                Ok(None) => return Outcome::Refused("trigger-call: no callSid".into()),
                Err(e) => return Outcome::Refused(format!("{e:#}")),
            };
            let left = Duration::from_secs(wait_secs).saturating_sub(t0.elapsed()).max(Duration::from_secs(1));
            let waited = mcp::call(
                client,
                "wait-for-call",
                json!({"callSid": sid, "timeoutSecs": left.as_secs()}),
                left + Duration::from_secs(10),
            )
            .await;
            match waited {
                Ok(v) => {
                    let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("?").to_owned();
                    if v.get("ended").and_then(serde_json::Value::as_bool) == Some(true) {
                        Outcome::Ended(status)
                    } else {
                        let _ = mcp::call(client, "end-call", json!({"callSid": sid}), Duration::from_secs(10)).await;
                        Outcome::NotEnded(status)
                    }
                }
                Err(e) => {
                    let _ = mcp::call(client, "end-call", json!({"callSid": sid}), Duration::from_secs(10)).await;
                    Outcome::NotEnded(format!("wait failed: {e:#}"))
                }
            }
        }
    });
    for outcome in futures::future::join_all(calls).await {
        match outcome {
            Outcome::Refused(e) => {
                w.refused += 1;
                if w.first_error.is_empty() {
                    w.first_error = e;
                }
            }
            Outcome::Ended(status) => {
                w.placed += 1;
                if status == "completed" {
                    w.completed += 1;
                } else {
                    w.other_ended += 1;
                }
                *w.statuses.entry(status).or_default() += 1;
            }
            Outcome::NotEnded(status) => {
                w.placed += 1;
                w.not_ended += 1;
                *w.statuses.entry(format!("live:{status}")).or_default() += 1;
            }
        }
    }
    // Bounded: the server's own count of live calls must come back to 0.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let active = mcp::call(client, "list-calls", json!({"limit": 1}), Duration::from_secs(10))
            .await
            .ok()
            .and_then(|v| v.get("active").and_then(serde_json::Value::as_u64));
        w.active_after = active;
        if active == Some(0) || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    w.secs = t0.elapsed().as_secs_f64();
    w
}

// ---------------------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Periodic,
    WaveEnd,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Periodic => "periodic",
            Kind::WaveEnd => "wave-end",
        }
    }
}

#[derive(Debug, Clone)]
struct Sample {
    kind: Kind,
    t_s: f64,
    wave: u32,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    tasks: Option<u64>,
    cpu_s: f64,
    store_bytes: u64,
    db_bytes: u64,
    wal_bytes: u64,
    events_rows: Option<u64>,
    events_bytes: Option<u64>,
    calls_rows: Option<u64>,
    transcript_rows: Option<u64>,
    calls_active: Option<u64>,
    sse_subscribers: Option<u64>,
    subs_connected: u64,
    events_received: u64,
    reconnects: u64,
    load1: f64,
}

const CSV_HEADER: &str = "kind,t_s,wave,rss_kib,fds,threads,tasks,cpu_s,store_bytes,db_bytes,wal_bytes,events_rows,\
events_bytes,calls_rows,transcript_rows,calls_active,sse_subscribers,subs_connected,events_received,reconnects,load1";

impl Sample {
    fn csv(&self) -> String {
        let o = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{},{:.1},{},{},{},{},{},{:.2},{},{},{},{},{},{},{},{},{},{},{},{},{:.2}",
            self.kind.as_str(),
            self.t_s,
            self.wave,
            self.rss_kib,
            self.fds,
            self.threads,
            o(self.tasks),
            self.cpu_s,
            self.store_bytes,
            self.db_bytes,
            self.wal_bytes,
            o(self.events_rows),
            o(self.events_bytes),
            o(self.calls_rows),
            o(self.transcript_rows),
            o(self.calls_active),
            o(self.sse_subscribers),
            self.subs_connected,
            self.events_received,
            self.reconnects,
            self.load1,
        )
    }
}

/// Reads the server's figures; shared by the periodic thread and the wave loop (one at a time).
struct Sampler {
    pid: u32,
    port: u16,
    db: PathBuf,
    wal: PathBuf,
    started: Instant,
    feed: Arc<Feed>,
    wave: Arc<AtomicU32>,
    /// Opened on first use, read-only: in WAL mode a reader never blocks the server's writer.
    conn: Option<rusqlite::Connection>,
    csv: std::fs::File,
    samples: Vec<Sample>,
}

impl Sampler {
    fn new(
        pid: u32,
        port: u16,
        db: &Path,
        started: Instant,
        feed: Arc<Feed>,
        wave: Arc<AtomicU32>,
        out: &Path,
    ) -> Result<Self> {
        let mut csv = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        writeln!(csv, "{CSV_HEADER}")?;
        let wal = db.with_file_name(format!("{}-wal", db.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        Ok(Self { pid, port, db: db.to_owned(), wal, started, feed, wave, conn: None, csv, samples: Vec::new() })
    }

    fn take(&mut self, kind: Kind) -> Sample {
        let pid = self.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| process::status_field(&status, name).unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        let cpu_s = proc_cpu_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0) as f64 / clock_ticks() as f64;
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let (db_bytes, wal_bytes) = (size(&self.db), size(&self.wal));
        let metrics = scrape_metrics(self.port).unwrap_or_default();
        let gauge = |name: &str| metrics.get(name).map(|&v| v.max(0.0) as u64);
        let store = self.store_rows();
        let feed = &self.feed;
        Sample {
            kind,
            t_s: self.started.elapsed().as_secs_f64(),
            wave: self.wave.load(Ordering::Relaxed),
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:"),
            tasks: gauge("voice_call_runtime_tasks"),
            cpu_s,
            store_bytes: db_bytes + wal_bytes,
            db_bytes,
            wal_bytes,
            events_rows: store.map(|s| s.0),
            events_bytes: store.map(|s| s.1),
            calls_rows: store.map(|s| s.2),
            transcript_rows: store.map(|s| s.3),
            calls_active: gauge("voice_call_calls_active"),
            sse_subscribers: gauge("voice_call_sse_subscribers"),
            subs_connected: feed.connected.load(Ordering::Relaxed),
            events_received: feed.received.load(Ordering::Relaxed),
            reconnects: feed.reconnects.load(Ordering::Relaxed),
            load1: loadavg().split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0),
        }
    }

    /// (events, bytes of the event log's table and index, calls, transcript lines), from the file.
    fn store_rows(&mut self) -> Option<(u64, u64, u64, u64)> {
        if self.conn.is_none() {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = rusqlite::Connection::open_with_flags(&self.db, flags).ok()?;
            conn.busy_timeout(Duration::from_secs(2)).ok()?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_ref()?;
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).ok().map(|n| n.max(0) as u64);
        Some((
            count("SELECT count(*) FROM events")?,
            count(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE aggregate = 1 AND name IN ('events', 'events_at')",
            )?,
            count("SELECT count(*) FROM calls")?,
            count("SELECT count(*) FROM transcript_lines")?,
        ))
    }
}

/// Takes a sample, writes its CSV line and keeps it.
fn sample(sampler: &Mutex<Sampler>, kind: Kind) -> Sample {
    let mut s = sampler.lock().unwrap_or_else(|p| p.into_inner());
    let taken = s.take(kind);
    let _ = writeln!(s.csv, "{}", taken.csv());
    let _ = s.csv.flush();
    s.samples.push(taken.clone());
    taken
}

/// `GET /metrics` (loopback needs no token), its unlabelled samples by name.
fn scrape_metrics(port: u16) -> Result<BTreeMap<String, f64>> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(tcp, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    tcp.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("/metrics: no response head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("/metrics: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, value)| Some((name.to_owned(), value.trim().parse().ok()?)))
        .collect())
}

// ---------------------------------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------------------------------

/// A least-squares line through (hours, value).
#[derive(Debug, Clone, Copy)]
struct Fit {
    slope_per_h: f64,
    /// The slope's standard error.
    stderr: f64,
    mean: f64,
}

fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let residual: f64 = points.iter().map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2)).sum();
    let stderr = (residual / (n - 2.0) / sxx).sqrt();
    Some(Fit { slope_per_h: slope, stderr, mean: my })
}

fn verdict(f: Option<Fit>) -> &'static str {
    let Some(f) = f else { return "too few samples" };
    if f.slope_per_h.abs() <= FLAT_PER_HOUR * f.mean.abs() || f.slope_per_h == 0.0 {
        "flat"
    } else if f.slope_per_h.abs() <= 3.0 * f.stderr {
        "flat (noise)"
    } else if f.slope_per_h > 0.0 {
        "GROWS"
    } else {
        "shrinks"
    }
}

/// One series for the summary: its name, which samples, and the value.
struct Series {
    name: &'static str,
    kind: Kind,
    value: fn(&Sample) -> Option<f64>,
    /// A growth here fails the run (a leak), rather than being reported.
    leak_check: bool,
}

fn series() -> Vec<Series> {
    fn s(name: &'static str, kind: Kind, value: fn(&Sample) -> Option<f64>, leak_check: bool) -> Series {
        Series { name, kind, value, leak_check }
    }
    vec![
        s("rss_kib", Kind::Periodic, |x| Some(x.rss_kib as f64), false),
        s("fds", Kind::Periodic, |x| Some(x.fds as f64), false),
        s("threads", Kind::Periodic, |x| Some(x.threads as f64), false),
        s("tasks", Kind::Periodic, |x| x.tasks.map(|v| v as f64), false),
        s("calls_active", Kind::Periodic, |x| x.calls_active.map(|v| v as f64), false),
        s("sse_subscribers", Kind::Periodic, |x| x.sse_subscribers.map(|v| v as f64), false),
        s("store_bytes", Kind::Periodic, |x| Some(x.store_bytes as f64), false),
        s("events_rows", Kind::Periodic, |x| x.events_rows.map(|v| v as f64), false),
        s("events_bytes", Kind::Periodic, |x| x.events_bytes.map(|v| v as f64), false),
        s("calls_rows", Kind::Periodic, |x| x.calls_rows.map(|v| v as f64), false),
        s("rss_kib (wave end)", Kind::WaveEnd, |x| Some(x.rss_kib as f64), true),
        s("fds (wave end)", Kind::WaveEnd, |x| Some(x.fds as f64), true),
        s("threads (wave end)", Kind::WaveEnd, |x| Some(x.threads as f64), true),
        s("tasks (wave end)", Kind::WaveEnd, |x| x.tasks.map(|v| v as f64), true),
    ]
}

fn report(
    args: &Args,
    samples: &[Sample],
    waves: &[Wave],
    feed: &Feed,
    connected_at_end: u64,
    out: &Path,
    waves_out: &Path,
) -> bool {
    let total_s = samples.iter().map(|s| s.t_s).fold(0.0, f64::max);
    let warmup_s = (args.warmup_minutes * 60.0).min(total_s / 2.0);
    let sum = |f: fn(&Wave) -> u32| waves.iter().map(f).sum::<u32>();
    let (placed, refused, completed, other, not_ended) =
        (sum(|w| w.placed), sum(|w| w.refused), sum(|w| w.completed), sum(|w| w.other_ended), sum(|w| w.not_ended));
    let mean_wave = if waves.is_empty() { 0.0 } else { waves.iter().map(|w| w.secs).sum::<f64>() / waves.len() as f64 };
    println!(
        "\nsoak: {:.1} min, {} waves of {} calls ({mean_wave:.1} s each on average): {placed} placed, {completed} completed, \
         {other} ended otherwise, {not_ended} not ended in time, {refused} refused",
        total_s / 60.0,
        waves.len(),
        args.calls
    );
    println!(
        "feed: {} subscribers, {connected_at_end} connected at the end; {} events received; {} reconnects \
         ({} ended by the server, {} failed, {} connects failed, {} replay-truncated){}",
        args.subscribers,
        feed.received.load(Ordering::Relaxed),
        feed.reconnects.load(Ordering::Relaxed),
        feed.ended_by_server.load(Ordering::Relaxed),
        feed.failed.load(Ordering::Relaxed),
        feed.open_failures.load(Ordering::Relaxed),
        feed.truncated.load(Ordering::Relaxed),
        if feed.failed.load(Ordering::Relaxed) + feed.open_failures.load(Ordering::Relaxed) > 0 {
            format!("; last error: {}", feed.last_error())
        } else {
            String::new()
        },
    );
    println!(
        "slopes: least squares over the samples after the first {:.1} min (warm-up) and over the last half; \
         flat = under {:.0}% of the mean per hour, (noise) = within 3 standard errors of 0",
        warmup_s / 60.0,
        FLAT_PER_HOUR * 100.0
    );
    println!(
        "{:<20} {:>14} {:>12} {:>14} {:>14} {:>14} {:>14} {:>14}  verdict",
        "series", "slope/h", "± stderr", "last half /h", "mean", "first", "last", "max"
    );
    let mut ok = not_ended == 0 && refused == 0;
    for s in series() {
        let all: Vec<(f64, f64)> =
            samples.iter().filter(|x| x.kind == s.kind).filter_map(|x| Some((x.t_s, (s.value)(x)?))).collect();
        if all.is_empty() {
            println!("{:<20} (no samples)", s.name);
            continue;
        }
        let hours = |pts: &[(f64, f64)]| pts.iter().map(|&(t, v)| (t / 3600.0, v)).collect::<Vec<_>>();
        let after: Vec<(f64, f64)> = all.iter().copied().filter(|p| p.0 >= warmup_s).collect();
        let half: Vec<(f64, f64)> = all.iter().copied().filter(|p| p.0 >= total_s / 2.0).collect();
        let f = fit(&hours(&after));
        let h = fit(&hours(&half));
        let v = verdict(f);
        if s.leak_check && v == "GROWS" {
            ok = false;
        }
        let max = all.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let n = |x: f64| format!("{x:.1}");
        println!(
            "{:<20} {:>14} {:>12} {:>14} {:>14} {:>14} {:>14} {:>14}  {v}",
            s.name,
            f.map_or_else(|| "-".into(), |f| n(f.slope_per_h)),
            f.map_or_else(|| "-".into(), |f| n(f.stderr)),
            h.map_or_else(|| "-".into(), |f| format!("{} ({})", n(f.slope_per_h), verdict(Some(f)))),
            f.map_or_else(|| "-".into(), |f| n(f.mean)),
            n(all[0].1),
            n(all[all.len() - 1].1),
            n(max),
        );
    }
    println!("samples: {} (CSV); waves: {}", out.display(), waves_out.display());
    println!("RESULT {}", if ok { "nothing grew" } else { "something grew or a call did not end" });
    ok
}
