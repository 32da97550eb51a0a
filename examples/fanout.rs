//! Fan-out benchmark for the `/events` feed (Server-Sent Events): memory per idle subscriber, and delivery
//! latency from publish to every subscriber.
//!
//! ```text
//! cargo build --release                      # the server under test for --idle: target/release/voice-call-mcp
//! cargo run --release --example fanout -- --idle 10000
//! cargo run --release --example fanout -- --subscribers 1000 --rate 50 --seconds 20
//! ```
//!
//! Targets (2 cores): at most 16 KiB of server memory per idle subscriber, socket buffers included, at
//! 10,000 subscribers; publish → subscriber socket p99 at most 10 ms at 1,000 subscribers × 50 events/s.
//!
//! `--idle S` runs the release binary (`serve --sandbox`) as a child process, so its memory is its own,
//! and opens S streams from this process (reqwest, HTTP/1.1 over loopback, one token for all), each
//! waiting for its `connected` event. It reads, before the streams and again once they are open and the
//! server has settled: the server's VmRSS (/proc/PID/status); the kernel's TCP buffer memory
//! (/proc/net/sockstat `TCP … mem`, pages — machine-wide, so both ends of every loopback connection);
//! the server's own sockets' charged buffer memory (`ss -tm`: rmem_alloc + wmem_queued + fwd_alloc) when
//! `ss` is installed; and kernel slab (/proc/meminfo, machine-wide: socket, file and epoll objects of both
//! ends). Each is reported per subscriber; the target is checked against RSS + the sockstat figure,
//! which over-counts (it includes the client ends).
//!
//! `--subscribers N` measures latency. The server publishes only what calls produce (about fifteen
//! events over ten seconds per call), too slow for 50 events/s, so this part runs the server in-process
//! on its own runtime, built as the binary builds its own (`runtime::build`: one worker per CPU, placed
//! by the kernel; `--server-affinity auto` pins each to a CPU of its own, as `WORKER_CPU_AFFINITY=auto`
//! does): `AppState::new` and `serve` on a real loopback listener, sandbox configuration. A task on the
//! server's runtime publishes `dtmf` events through `state.events.publish` at `--rate` for `--seconds`,
//! noting the instant just before each publish against the id it returns; N real HTTP SSE clients on a
//! second runtime (in this same process, so the same clock) note the instant each event's bytes come
//! off their socket. Latency is receive − publish, for every (subscriber, event); every subscriber must
//! receive every event, once and in order. The clients share the 2 cores with the server, so that figure includes their own
//! scheduling: the CPU each side used is printed. They stand in for dashboards on other machines, so
//! their threads run under SCHED_IDLE (`--client-sched idle`): they use the CPU the server leaves and
//! never preempt it. At the server's priority (`--client-sched normal`) each write wakes a subscriber
//! that preempts the writing worker, and the fan-out takes the clients' reads too. The default client (`--client raw`: HTTP/1.1 on a bare
//! socket, chunked decoding by hand) also reads each event's kernel receive timestamp (SO_TIMESTAMPNS):
//! when its bytes reached the subscriber's socket, which is what the target measures.
//!
//! Diagnostics: `--idle-kind http` opens keep-alive connections that made one `GET /healthz` instead
//! of streams (what the HTTP connection alone costs); `--server-bin` runs another build (or a wrapper,
//! e.g. one that starts the server under heaptrack); `--server-env` adds to the server's environment.
//! With no mode given, both run (1,000 idle streams, then 1,000 subscribers).
//!
//! Exit status: 0 when every target was met and nothing was lost, 1 when a target was missed or an
//! event lost, 2 when the run could not be set up.

#[path = "support/process.rs"]
mod process;
#[path = "support/sse.rs"]
mod sse;
#[path = "support/stamp.rs"]
mod stamp;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use process::{
    ServerProcess, clean_command, clock_ticks, free_port, open_file_limit, page_size, system_ticks, wait_healthy,
};
use sse::{Dechunker, SseParser};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use voice_call_mcp::auth;
use voice_call_mcp::events::CallEvent;
use voice_call_mcp::runtime;
use voice_call_mcp::{AppState, RawConfig};

#[derive(Debug, Parser)]
#[command(about = "Fan-out benchmark for the /events SSE feed: memory per idle subscriber, delivery latency")]
struct Args {
    /// Idle streams to open against the release binary (memory per subscriber).
    #[arg(long)]
    idle: Option<usize>,
    /// What the idle connections are: `sse` streams (the benchmark), or, to separate the HTTP
    /// connection's own cost from the stream's, `http` keep-alive connections that made one
    /// `GET /healthz` and then sit idle.
    #[arg(long, value_enum, default_value_t = IdleKind::Sse)]
    idle_kind: IdleKind,
    /// Subscribers for the latency run (in-process server).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Events published per second in the latency run.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Seconds of publishing in the latency run.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// The server binary for --idle [default: target/release/voice-call-mcp].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra environment for the server child, e.g. `--server-env MALLOC_ARENA_MAX=2` (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    server_env: Vec<String>,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds the server settles after the last stream opened, before its memory is read.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Worker threads of the in-process server's runtime [default: one per CPU, as the binary].
    #[arg(long)]
    server_threads: Option<usize>,
    /// The in-process server's workers' CPU affinity, as the binary's WORKER_CPU_AFFINITY (and its
    /// default): `auto` pins each worker to a CPU of its own when there are exactly as many CPUs as workers.
    #[arg(long, value_enum, default_value_t = Affinity::Off)]
    server_affinity: Affinity,
    /// Worker threads of this process's client runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// After the last publish, how long subscribers keep reading before a missing event counts as lost.
    #[arg(long, default_value_t = 2000)]
    drain_ms: u64,
    /// The latency run's subscribers: `raw` HTTP/1.1 over a bare socket, read with `recvmsg` so each
    /// event also carries the kernel's receive timestamp (when it reached the subscriber's socket), or
    /// `reqwest` (hyper's client; only the moment the client read the event). Both cost the shared cores
    /// about the same (0.4–0.5 cores at 1,000 × 50/s here).
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    client: ClientKind,
    /// The subscribers' scheduling: `idle` (SCHED_IDLE: they stand in for dashboards on other machines,
    /// so they use only CPU time the server leaves and never preempt it) or `normal` (the server's
    /// priority: every event written wakes a subscriber that preempts the writing worker, so the
    /// clients' reads land inside the fan-out).
    #[arg(long, value_enum, default_value_t = ClientSched::Idle)]
    client_sched: ClientSched,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientSched {
    Idle,
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Affinity {
    Auto,
    On,
    Off,
}

impl From<Affinity> for runtime::CpuAffinity {
    fn from(a: Affinity) -> Self {
        match a {
            Affinity::Auto => Self::Auto,
            Affinity::On => Self::On,
            Affinity::Off => Self::Off,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientKind {
    Raw,
    Reqwest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IdleKind {
    Sse,
    Http,
    /// An SSE stream read by [`raw_subscriber`] (the latency run's default client).
    RawSse,
}

/// Server memory per idle subscriber, socket buffers included (KiB).
const IDLE_TARGET_KIB: f64 = 16.0;
/// Publish → subscriber socket, 99th percentile (ms).
const P99_TARGET_MS: f64 = 10.0;
/// The token audience both ends agree on (JWT_AUDIENCE).
const AUDIENCE: &str = "voice-call-mcp-fanout";
/// Every subscriber connects from one address with one token: the per-minute limits must not apply.
const NO_RATE_LIMIT: &str = "100000000";

/// The HMAC secret both ends share (JWT_SECRET needs at least 32 bytes).
const SECRET: &str = "fanout-benchmark-secret-0123456789abcdef-not-for-production";
/// Opening one stream: connect, response head, `connected` event.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.idle.is_none() && args.subscribers.is_none() {
        args.idle = Some(1000);
        args.subscribers = Some(1000);
    }
    let idle_clients = args.client_sched == ClientSched::Idle;
    let client_rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("fanout-client")
        .on_thread_start(move || {
            if idle_clients && let Err(e) = process::idle_current_thread() {
                eprintln!("warning: the subscribers run at the server's priority: {e:#}");
            }
        })
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    process::exit_code(run(&args, &client_rt))
}

fn run(args: &Args, client_rt: &tokio::runtime::Runtime) -> Result<bool> {
    if args.rate == 0 || args.seconds == 0 {
        bail!("--rate and --seconds must be at least 1");
    }
    let fds = open_file_limit();
    println!(
        "fanout: {} CPUs; loadavg {}; open-file limit {}; page {} B",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        fds.map_or_else(|| "?".into(), |n| n.to_string()),
        page_size(),
    );
    let mut ok = true;
    let idle = match args.idle {
        Some(subs) => {
            let r = client_rt.block_on(run_idle(args, subs)).context("idle run")?;
            print_idle(&r);
            ok &= r.failed == 0 && r.rss_kib_per_sub() + r.sock_kib_per_sub() <= IDLE_TARGET_KIB;
            Some(r)
        }
        None => None,
    };
    let latency = match args.subscribers {
        Some(subs) => {
            let r = run_latency(args, subs, client_rt).context("latency run")?;
            print_latency(&r);
            ok &= r.met();
            Some(r)
        }
        None => None,
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "RESULT idle={} rss_kib_per_sub={} sock_kib_per_sub={} subs={} rate={} p50_ms={} p99_ms={} in_socket_p50_ms={} in_socket_p99_ms={} lost={}",
        opt(idle.as_ref().map(|r| r.opened.to_string())),
        opt(idle.as_ref().map(|r| format!("{:.2}", r.rss_kib_per_sub()))),
        opt(idle.as_ref().map(|r| format!("{:.2}", r.sock_kib_per_sub()))),
        opt(latency.as_ref().map(|r| r.subs.to_string())),
        opt(latency.as_ref().map(|r| r.rate.to_string())),
        opt(latency.as_ref().map(|r| format!("{:.2}", r.p50_ms))),
        opt(latency.as_ref().map(|r| format!("{:.2}", r.p99_ms))),
        opt(latency.as_ref().and_then(|r| r.socket).map(|p| format!("{:.2}", p[0]))),
        opt(latency.as_ref().and_then(|r| r.socket).map(|p| format!("{:.2}", p[2]))),
        opt(latency.as_ref().map(|r| r.lost.to_string())),
    );
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------------------------------

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubResult {
    /// (event id, when its bytes came off the socket), in arrival order.
    events: Vec<(u64, Instant)>,
    /// Per entry of `events` (raw client only): when the kernel put its bytes in the subscriber's socket
    /// (SO_TIMESTAMPNS), before the subscriber was even scheduled to read them.
    in_socket: Vec<SystemTime>,
    /// The stream ended or failed before it was told to stop.
    dropped: Option<String>,
}

/// Opens one stream and reads until `connected`; returns the response to keep reading and the parser.
async fn open_stream(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<(reqwest::Response, SseParser), String> {
    let mut resp = client
        .get(url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {}", body.trim()));
    }
    let mut parser = SseParser::default();
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                let mut connected = false;
                parser.feed(&bytes, |f| connected |= f.kind == "connected");
                if connected {
                    return Ok((resp, parser));
                }
            }
            Ok(None) => return Err("the stream ended before its `connected` event".into()),
            Err(e) => return Err(error_chain(&e)),
        }
    }
}

/// One subscriber: opens its stream (holding a permit, so only so many connect at once), says whether
/// it is connected, then reads — recording event ids when `record` — until `stop`.
async fn subscriber(
    client: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    permits: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<Result<(), String>>,
    stop: CancellationToken,
    record: usize,
) -> SubResult {
    let mut result = SubResult { events: Vec::with_capacity(record), ..Default::default() };
    let Ok(permit) = permits.acquire_owned().await else { return result };
    let Some((mut resp, mut parser)) = within_open_timeout(open_stream(&client, &url, &token), &opened).await else {
        return result;
    };
    drop(permit);
    let _ = opened.send(Ok(()));
    let events = &mut result.events;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            chunk = resp.chunk() => {
                let at = Instant::now();
                match chunk {
                    Ok(Some(bytes)) => parser.feed(&bytes, |f| {
                        if record > 0 && let Some(id) = f.id {
                            events.push((id, at));
                        }
                    }),
                    Ok(None) => {
                        result.dropped = Some("the server ended the stream".into());
                        break;
                    }
                    Err(e) => {
                        result.dropped = Some(error_chain(&e));
                        break;
                    }
                }
            }
        }
    }
    result
}

/// Opens a stream within [`OPEN_TIMEOUT`]; a failure is reported on `opened` and gives `None`.
async fn within_open_timeout<T>(
    open: impl std::future::Future<Output = Result<T, String>>,
    opened: &mpsc::UnboundedSender<Result<(), String>>,
) -> Option<T> {
    let failure = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => e,
        Err(_) => format!("not connected within {OPEN_TIMEOUT:?}"),
    };
    let _ = opened.send(Err(failure));
    None
}

/// A subscriber on a bare socket: writes the request, checks the status line, then decodes the chunked
/// body itself and records each event as its bytes come off the socket, with the kernel's receive
/// timestamp of those bytes (which hyper's client cannot give).
async fn raw_subscriber(
    url: Arc<str>,
    token: Arc<str>,
    permits: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<Result<(), String>>,
    stop: CancellationToken,
    record: usize,
) -> SubResult {
    use tokio::io::AsyncReadExt as _;
    let mut result =
        SubResult { events: Vec::with_capacity(record), in_socket: Vec::with_capacity(record), dropped: None };
    let Ok(permit) = permits.acquire_owned().await else { return result };
    let authority = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    let open = sse::open_raw(&authority, "/events", &token, None);
    let Some(sse::RawStream { mut tcp, first, mut buf }) = within_open_timeout(open, &opened).await else {
        return result;
    };
    let mut chunks = Dechunker::default();
    let mut parser = SseParser::default();
    let mut connected = false;
    let mut body = Vec::with_capacity(8192);
    let mut on_bytes =
        |bytes: &[u8], at: Instant, stamp: Option<SystemTime>, r: &mut SubResult, connected: &mut bool| {
            body.clear();
            let ended = chunks.feed(bytes, &mut body);
            parser.feed(&body, |f| {
                *connected |= f.kind == "connected";
                if *connected
                    && record > 0
                    && let Some(id) = f.id
                {
                    r.events.push((id, at));
                    // A read that holds several events carries the first one's stamp: the others' can only be
                    // later, so a figure from it errs on the late side, never the early.
                    r.in_socket.push(stamp.unwrap_or_else(SystemTime::now));
                }
            });
            ended
        };
    let mut ended = on_bytes(&first, Instant::now(), None, &mut result, &mut connected);
    drop(permit);
    // `connected` is the first event the server sends; wait for it like the reqwest client does.
    while !connected && !ended {
        match tokio::time::timeout(OPEN_TIMEOUT, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => ended = on_bytes(&buf[..n], Instant::now(), None, &mut result, &mut connected),
            _ => {
                let _ = opened.send(Err("the stream ended before its `connected` event".into()));
                return result;
            }
        }
    }
    let _ = opened.send(Ok(()));
    // Its own child of the stop token, made once: polling a pending `cancelled()` locks the token's
    // waiter list, and a shared one would be a lock every subscriber takes on every event.
    let stop = stop.child_token();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    if let Err(e) = stamp::enable(&tcp) {
        result.dropped = Some(format!("SO_TIMESTAMPNS: {e}"));
        return result;
    }
    let mut control = stamp::control_buffer();
    while !ended {
        tokio::select! {
            biased;
            () = &mut stopped => return result,
            read = read_stamped(&tcp, &mut buf, &mut control) => {
                let at = Instant::now();
                match read {
                    Ok((0, _)) => break,
                    Ok((n, stamp)) => ended = on_bytes(&buf[..n], at, stamp, &mut result, &mut connected),
                    Err(e) => {
                        result.dropped = Some(e.to_string());
                        return result;
                    }
                }
            }
        }
    }
    result.dropped = Some("the server ended the stream".into());
    result
}

/// One `recvmsg` once the socket is readable: the bytes, and when the kernel received them.
async fn read_stamped(
    tcp: &tokio::net::TcpStream,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<(usize, Option<SystemTime>)> {
    loop {
        tcp.readable().await?;
        match tcp.try_io(tokio::io::Interest::READABLE, || stamp::recv(tcp, buf, control)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// S subscribers being opened; `wait` returns once all have said whether they connected.
struct Fleet {
    handles: Vec<tokio::task::JoinHandle<SubResult>>,
    opened_rx: mpsc::UnboundedReceiver<Result<(), String>>,
    stop: CancellationToken,
}

impl Fleet {
    fn start(
        client: &reqwest::Client,
        url: &str,
        token: &str,
        n: usize,
        concurrency: usize,
        record: usize,
        kind: IdleKind,
    ) -> Self {
        let (tx, opened_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let (url, token): (Arc<str>, Arc<str>) = (url.into(), token.into());
        let handles = (0..n)
            .map(|_| match kind {
                IdleKind::Sse => tokio::spawn(subscriber(
                    client.clone(),
                    url.clone(),
                    token.clone(),
                    permits.clone(),
                    tx.clone(),
                    stop.clone(),
                    record,
                )),
                IdleKind::Http => tokio::spawn(keep_alive(url.clone(), permits.clone(), tx.clone(), stop.clone())),
                IdleKind::RawSse => tokio::spawn(raw_subscriber(
                    url.clone(),
                    token.clone(),
                    permits.clone(),
                    tx.clone(),
                    stop.clone(),
                    record,
                )),
            })
            .collect();
        Self { handles, opened_rx, stop }
    }

    /// (opened, failed, the commonest failure) once every subscriber has reported, bounded.
    async fn wait(&mut self, deadline: Duration) -> (usize, usize, Option<String>) {
        let n = self.handles.len();
        let (mut ok, mut failed) = (0, 0);
        let mut errors: HashMap<String, usize> = HashMap::new();
        let end = tokio::time::Instant::now() + deadline;
        while ok + failed < n {
            match tokio::time::timeout_at(end, self.opened_rx.recv()).await {
                Ok(Some(Ok(()))) => ok += 1,
                Ok(Some(Err(e))) => {
                    failed += 1;
                    *errors.entry(e).or_default() += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    let missing = n - ok - failed;
                    failed += missing;
                    *errors.entry(format!("not reported within {deadline:?}")).or_default() += missing;
                    break;
                }
            }
        }
        let commonest = errors.into_iter().max_by_key(|(_, c)| *c).map(|(e, c)| format!("{c}x {e}"));
        (ok, failed, commonest)
    }

    /// Stops every subscriber and collects what each saw (bounded).
    async fn finish(self) -> Vec<SubResult> {
        self.stop.cancel();
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            let abort = h.abort_handle();
            match tokio::time::timeout(Duration::from_secs(10), h).await {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(_)) => {
                    out.push(SubResult { dropped: Some("subscriber task panicked".into()), ..Default::default() })
                }
                Err(_) => {
                    abort.abort();
                    out.push(SubResult { dropped: Some("subscriber did not stop".into()), ..Default::default() });
                }
            }
        }
        out
    }
}

/// A keep-alive HTTP/1.1 connection that makes one `GET /healthz`, then sits idle until `stop`.
async fn keep_alive(
    url: Arc<str>,
    permits: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<Result<(), String>>,
    stop: CancellationToken,
) -> SubResult {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut result = SubResult::default();
    let Ok(permit) = permits.acquire_owned().await else { return result };
    let authority = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(&authority).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let req = format!("GET /healthz HTTP/1.1\r\nhost: {authority}\r\naccept: */*\r\n\r\n");
        stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        // The whole response: its head and the `content-length` body (`ok\n`).
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the response".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
                if !text.starts_with("http/1.1 200") {
                    return Err(text.lines().next().unwrap_or_default().to_owned());
                }
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= head + 4 + len {
                    return Ok(stream);
                }
            }
        }
    };
    let mut stream = match tokio::time::timeout(OPEN_TIMEOUT, request).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = opened.send(Err(e));
            return result;
        }
        Err(_) => {
            let _ = opened.send(Err(format!("no response within {OPEN_TIMEOUT:?}")));
            return result;
        }
    };
    drop(permit);
    let _ = opened.send(Ok(()));
    let mut sink = [0u8; 64];
    tokio::select! {
        () = stop.cancelled() => {}
        r = stream.read(&mut sink) => {
            result.dropped = Some(match r {
                Ok(0) => "the server closed the connection".into(),
                Ok(_) => "unexpected bytes on an idle connection".into(),
                Err(e) => e.to_string(),
            });
        }
    }
    result
}

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

fn mint_token() -> Result<String> {
    process::mint_token(SECRET, "fanout-benchmark", AUDIENCE, auth::SCOPE_EVENTS_READ, Duration::from_secs(3600))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

// ---------------------------------------------------------------------------------------------------
// Idle streams against the release binary
// ---------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct IdleReport {
    subs: usize,
    opened: usize,
    failed: usize,
    commonest_failure: Option<String>,
    open_secs: f64,
    before: Snapshot,
    after: Snapshot,
    client_rss_before_kib: u64,
    client_rss_after_kib: u64,
    server_pid: u32,
}

impl IdleReport {
    fn per_sub(&self, delta: f64) -> f64 {
        if self.opened == 0 { 0.0 } else { delta / self.opened as f64 }
    }

    fn rss_kib_per_sub(&self) -> f64 {
        self.per_sub(self.after.rss_kib as f64 - self.before.rss_kib as f64)
    }

    /// Machine-wide TCP buffer memory (both ends of every loopback connection), per subscriber.
    fn sock_kib_per_sub(&self) -> f64 {
        let pages = self.after.tcp_mem_pages as f64 - self.before.tcp_mem_pages as f64;
        self.per_sub(pages * page_size() as f64 / 1024.0)
    }

    fn slab_kib_per_sub(&self) -> f64 {
        self.per_sub(self.after.slab_kib as f64 - self.before.slab_kib as f64)
    }
}

/// The server's and the machine's memory at one moment.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    rss_kib: u64,
    rss_anon_kib: u64,
    threads: u64,
    tcp_mem_pages: u64,
    tcp_inuse: u64,
    slab_kib: u64,
    /// The server's established sockets (`ss -tm`): count, and charged bytes (r + w + f).
    server_sockets: Option<(u64, u64)>,
}

impl Snapshot {
    fn take(pid: u32, port: u16) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the server's status")?;
        let field = |name: &str| process::status_field(&status, name).unwrap_or(0);
        let (tcp_inuse, tcp_mem_pages) = tcp_sockstat()?;
        Ok(Self {
            rss_kib: field("VmRSS:"),
            rss_anon_kib: field("RssAnon:"),
            threads: field("Threads:"),
            tcp_mem_pages,
            tcp_inuse,
            slab_kib: meminfo_kib("Slab:")?,
            server_sockets: ss_server_sockets(port),
        })
    }
}

async fn run_idle(args: &Args, subs: usize) -> Result<IdleReport> {
    if subs == 0 {
        bail!("--idle must be at least 1");
    }
    let bin = process::server_binary(args.server_bin.as_deref())?;
    // Each process holds one descriptor per stream, plus its own.
    process::ensure_open_files(subs as u64 + 128, &format!("{subs} streams"))?;
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("fanout-server-{port}.log"));
    let server = spawn_server(&bin, port, &log, subs, &args.server_env)?;
    let pid = server.pid();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &server, Duration::from_secs(20)).await?;
    let what = match args.idle_kind {
        IdleKind::Sse => "SSE streams",
        IdleKind::Http => "keep-alive HTTP connections after one GET /healthz (not streams: a comparison)",
        IdleKind::RawSse => "SSE streams (read by the bare-socket client)",
    };
    println!("\nidle: {subs} {what} against {} (pid {pid}, port {port}, log {})", bin.display(), log.display());
    let token = mint_token()?;
    let client = http_client()?;
    let url = format!("{base}/events");

    // One stream first, so what is set up once (token validation, the router) is not counted per stream.
    let warm = tokio::time::timeout(OPEN_TIMEOUT, open_stream(&client, &url, &token))
        .await
        .map_err(|_| anyhow!("the warm-up stream did not connect in time"))?
        .map_err(|e| anyhow!("the warm-up stream: {e}"))?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = Snapshot::take(pid, port)?;
    let client_rss_before_kib = self_rss_kib();
    let started = Instant::now();
    let mut fleet = Fleet::start(&client, &url, &token, subs, args.connect_concurrency, 0, args.idle_kind);
    let (opened, failed, commonest_failure) = fleet.wait(Duration::from_secs(60) + OPEN_TIMEOUT).await;
    let open_secs = started.elapsed().as_secs_f64();
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("the server exited while streams were opening; its log ends:\n{}", server.log_tail());
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = Snapshot::take(pid, port)?;
    let client_rss_after_kib = self_rss_kib();
    let results = fleet.finish().await;
    let dropped = results.iter().filter(|r| r.dropped.is_some()).count();
    if dropped > 0 {
        eprintln!("  note: {dropped} idle streams ended before the end of the measurement");
    }
    drop(server);
    Ok(IdleReport {
        subs,
        opened,
        failed,
        commonest_failure,
        open_secs,
        before,
        after,
        client_rss_before_kib,
        client_rss_after_kib,
        server_pid: pid,
    })
}

fn print_idle(r: &IdleReport) {
    let (b, a) = (&r.before, &r.after);
    println!(
        "{:>6} {:>6} {:>6} {:>6} | {:>10} {:>10} {:>8} | {:>9} {:>9} | {:>8} {:>8} | {:>8}",
        "subs",
        "opened",
        "failed",
        "open s",
        "RSS before",
        "RSS after",
        "KiB/sub",
        "TCP mem",
        "KiB/sub",
        "slab",
        "KiB/sub",
        "target"
    );
    let total = r.rss_kib_per_sub() + r.sock_kib_per_sub();
    println!(
        "{:>6} {:>6} {:>6} {:>6.1} | {:>7} KiB {:>6} KiB {:>8.2} | {:>5} pg {:>9.2} | {:>4} MiB {:>8.2} | {:>8}",
        r.subs,
        r.opened,
        r.failed,
        r.open_secs,
        b.rss_kib,
        a.rss_kib,
        r.rss_kib_per_sub(),
        a.tcp_mem_pages as i64 - b.tcp_mem_pages as i64,
        r.sock_kib_per_sub(),
        (a.slab_kib as i64 - b.slab_kib as i64) / 1024,
        r.slab_kib_per_sub(),
        if total <= IDLE_TARGET_KIB && r.failed == 0 { "met" } else { "MISSED" },
    );
    println!(
        "  server (pid {}): RSS + TCP buffers = {total:.2} KiB per idle subscriber (target <= {IDLE_TARGET_KIB} KiB); \
         anonymous RSS {} -> {} KiB; threads {} -> {}",
        r.server_pid, b.rss_anon_kib, a.rss_anon_kib, b.threads, a.threads
    );
    println!(
        "  TCP mem and slab are machine-wide (both ends of each loopback connection): TCP mem {} -> {} pages, \
         TCP sockets in use {} -> {}, slab {} -> {} KiB",
        b.tcp_mem_pages, a.tcp_mem_pages, b.tcp_inuse, a.tcp_inuse, b.slab_kib, a.slab_kib
    );
    match (b.server_sockets, a.server_sockets) {
        (Some((n0, bytes0)), Some((n1, bytes1))) => {
            let per = if n1 > 0 { bytes1 as f64 / n1 as f64 / 1024.0 } else { 0.0 };
            println!(
                "  the server's own sockets (ss -tm, r+w+f): {n0} -> {n1} established, {} -> {} KiB charged, {per:.2} KiB per socket",
                bytes0 / 1024,
                bytes1 / 1024
            );
        }
        _ => println!("  (ss not available: no per-socket figure for the server's side)"),
    }
    println!(
        "  this process (the clients): RSS {} -> {} KiB ({:.2} KiB per stream)",
        r.client_rss_before_kib,
        r.client_rss_after_kib,
        r.per_sub(r.client_rss_after_kib as f64 - r.client_rss_before_kib as f64)
    );
    if let Some(e) = &r.commonest_failure {
        println!("  failures: {e}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Latency, in-process
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LatencyReport {
    subs: usize,
    rate: u32,
    seconds: u32,
    server_threads: usize,
    failed: usize,
    commonest_failure: Option<String>,
    published: usize,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    unexpected: u64,
    dropped: usize,
    first_drop: Option<String>,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Publish → the event's bytes in the subscriber's socket (kernel receive timestamp): p50, p90, p99,
    /// p99.9, max. Only with the raw client.
    socket: Option<[f64; 5]>,
    /// Per event, when its last subscriber got it.
    last_p50_ms: f64,
    last_p99_ms: f64,
    /// Per event, when its first subscriber got it.
    first_p50_ms: f64,
    publish_jitter_max_ms: f64,
    server_cores: f64,
    client_cores: f64,
    other_cores: f64,
    machine_busy: f64,
    /// Cores other processes kept busy during the window.
    foreign_cores: f64,
}

fn run_latency(args: &Args, subs: usize, client_rt: &tokio::runtime::Runtime) -> Result<LatencyReport> {
    if subs == 0 {
        bail!("--subscribers must be at least 1");
    }
    process::ensure_open_files(2 * subs as u64 + 128, &format!("{subs} subscribers in one process"))?;
    let server_threads = args.server_threads.unwrap_or_else(runtime::default_worker_threads).max(1);
    // Built as the binary builds its own, so the workers are placed as they are in production.
    let (server_rt, placement) = runtime::build(
        runtime::RuntimeConfig { worker_threads: server_threads, affinity: args.server_affinity.into() },
        "fanout-server",
    )?;
    let placement = match placement {
        runtime::Placement::Pinned { cpus } => format!("pinned to CPUs {cpus:?}"),
        runtime::Placement::Unpinned { reason } => format!("not pinned: {reason}"),
    };
    // Set up on a worker of the server runtime, so any thread the server starts is named as its own.
    let (state, base, serving, sim) = server_rt.block_on(async {
        server_rt
            .spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
                let listener = socket.listen(1024)?;
                let port = listener.local_addr()?.port();
                let raw = RawConfig {
                    sandbox: Some("true".into()),
                    jwt_secret: Some(SECRET.into()),
                    jwt_audience: Some(AUDIENCE.into()),
                    rate_limit_events: Some(NO_RATE_LIMIT.into()),
                    sse_max_connections: Some("20000".into()),
                    sse_max_connections_per_subject: Some("20000".into()),
                    sse_heartbeat_interval: Some("30000".into()),
                    ..RawConfig::default()
                };
                let mut config = raw.validate().map_err(|e| anyhow!("configuration: {e:?}"))?;
                let sim = voice_call_mcp::sandbox::start(&mut config, port).await?;
                let state = AppState::new(config).await?;
                let serving = tokio::spawn(voice_call_mcp::serve(listener, state.clone(), std::future::pending()));
                anyhow::Ok((state, format!("http://127.0.0.1:{port}"), serving, sim))
            })
            .await?
    })?;
    println!(
        "\nlatency: {subs} subscribers x {} events/s x {} s; in-process server ({server_threads} worker threads, {placement}) at {base}, clients on {} threads ({:?} scheduling)",
        args.rate, args.seconds, args.client_threads, args.client_sched,
    );
    let result = client_rt.block_on(measure_latency(args, subs, &base, &state, server_rt.handle()));
    state.shutdown.cancel();
    server_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(15), serving).await;
        sim.shutdown().await;
    });
    server_rt.shutdown_timeout(Duration::from_secs(2));
    let mut report = result?;
    report.server_threads = server_threads;
    Ok(report)
}

async fn measure_latency(
    args: &Args,
    subs: usize,
    base: &str,
    state: &AppState,
    server: &tokio::runtime::Handle,
) -> Result<LatencyReport> {
    let token = mint_token()?;
    let client = http_client()?;
    let url = format!("{base}/events");
    let events = (args.rate as usize) * (args.seconds as usize);
    let kind = match args.client {
        ClientKind::Raw => IdleKind::RawSse,
        ClientKind::Reqwest => IdleKind::Sse,
    };
    let mut fleet = Fleet::start(&client, &url, &token, subs, args.connect_concurrency, events, kind);
    let (opened, failed, commonest_failure) = fleet.wait(Duration::from_secs(60) + OPEN_TIMEOUT).await;
    if opened == 0 {
        bail!("no subscriber connected: {}", commonest_failure.unwrap_or_default());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cpu0 = thread_cpu();
    let sys0 = system_ticks()?;
    let started = Instant::now();
    let bus = state.events.clone();
    let (rate, count) = (args.rate, events);
    // The publisher runs where the server's own publishers run: on its runtime.
    let published = server
        .spawn(async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut out: Vec<(u64, Instant, SystemTime)> = Vec::with_capacity(count);
            let mut jitter = Duration::ZERO;
            for n in 0..count {
                let due = tick.tick().await;
                let event = CallEvent::Dtmf {
                    call_sid: "CAfa0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f".into(),
                    digit: ((n % 10) as u8).to_string(),
                    timestamp: time::OffsetDateTime::now_utc(),
                };
                let (at, wall) = (Instant::now(), SystemTime::now());
                let id = bus.publish(&event);
                out.push((id, at, wall));
                jitter = jitter.max(tokio::time::Instant::now().saturating_duration_since(due));
            }
            (out, jitter)
        })
        .await?;
    let (published, jitter) = published;
    let window = started.elapsed();
    let cpu1 = thread_cpu();
    let sys1 = system_ticks()?;
    tokio::time::sleep(Duration::from_millis(args.drain_ms)).await;
    let results = fleet.finish().await;

    // Subscribers that never connected have nothing to compare; those that did must have every event.
    let published_at: HashMap<u64, (Instant, SystemTime)> =
        published.iter().map(|&(id, at, wall)| (id, (at, wall))).collect();
    let mut lat: Vec<u64> = Vec::with_capacity(opened * published.len());
    let mut lat_socket: Vec<u64> = Vec::with_capacity(opened * published.len());
    let mut first: HashMap<u64, u64> = HashMap::new();
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut report = LatencyReport {
        subs,
        rate: args.rate,
        seconds: args.seconds,
        failed,
        commonest_failure,
        published: published.len(),
        ..Default::default()
    };
    for r in &results {
        if let Some(d) = &r.dropped {
            report.dropped += 1;
            report.first_drop.get_or_insert_with(|| d.clone());
        }
        let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::with_capacity(r.events.len());
        let mut prev = 0;
        for (i, &(id, at)) in r.events.iter().enumerate() {
            let Some(&(sent, sent_wall)) = published_at.get(&id) else {
                report.unexpected += 1;
                continue;
            };
            if !seen.insert(id) {
                report.duplicated += 1;
                continue;
            }
            if id < prev {
                report.reordered += 1;
            }
            prev = id;
            if let Some(stamp) = r.in_socket.get(i) {
                let ns = stamp.duration_since(sent_wall).map_or(0, |d| d.as_nanos());
                lat_socket.push(u64::try_from(ns).unwrap_or(u64::MAX));
            }
            let ns = u64::try_from(at.saturating_duration_since(sent).as_nanos()).unwrap_or(u64::MAX);
            lat.push(ns);
            let f = first.entry(id).or_insert(ns);
            *f = (*f).min(ns);
            let l = last.entry(id).or_insert(ns);
            *l = (*l).max(ns);
        }
        report.delivered += seen.len() as u64;
    }
    report.lost = (opened as u64 * published.len() as u64).saturating_sub(report.delivered);
    lat.sort_unstable();
    report.p50_ms = percentile_ms(&lat, 50.0);
    report.p90_ms = percentile_ms(&lat, 90.0);
    report.p99_ms = percentile_ms(&lat, 99.0);
    report.p999_ms = percentile_ms(&lat, 99.9);
    report.max_ms = lat.last().map_or(0.0, |&v| v as f64 / 1e6);
    lat_socket.sort_unstable();
    report.socket =
        (!lat_socket.is_empty()).then(|| [50.0, 90.0, 99.0, 99.9, 100.0].map(|p| percentile_ms(&lat_socket, p)));
    let mut lasts: Vec<u64> = last.into_values().collect();
    lasts.sort_unstable();
    report.last_p50_ms = percentile_ms(&lasts, 50.0);
    report.last_p99_ms = percentile_ms(&lasts, 99.0);
    let mut firsts: Vec<u64> = first.into_values().collect();
    firsts.sort_unstable();
    report.first_p50_ms = percentile_ms(&firsts, 50.0);
    report.publish_jitter_max_ms = jitter.as_secs_f64() * 1e3;

    let ticks = clock_ticks() as f64;
    let secs = window.as_secs_f64().max(1e-3);
    let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / ticks / secs;
    report.server_cores = cores(cpu0.server, cpu1.server);
    report.client_cores = cores(cpu0.client, cpu1.client);
    report.other_cores = cores(cpu0.other, cpu1.other);
    let (busy, total) = (sys1.0.saturating_sub(sys0.0), sys1.1.saturating_sub(sys0.1));
    report.machine_busy = if total > 0 { busy as f64 / total as f64 } else { 0.0 };
    let ours = report.server_cores + report.client_cores + report.other_cores;
    report.foreign_cores = (busy as f64 / ticks / secs - ours).max(0.0);
    Ok(report)
}

fn print_latency(r: &LatencyReport) {
    println!(
        "{:>6} {:>5} {:>5} {:>7} | {:>7} {:>7} {:>7} {:>7} {:>7} | {:>13} {:>7} | {:>6} {:>5} {:>6} {:>6} | {:>13} | {:>6}",
        "subs",
        "ev/s",
        "secs",
        "events",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "last p50/p99",
        "first",
        "lost",
        "dup",
        "reord",
        "dropd",
        "CPU srv/cli",
        "target"
    );
    println!(
        "{:>6} {:>5} {:>5} {:>7} | {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {:>6.2}/{:<6.2} {:>7.2} | {:>6} {:>5} {:>6} {:>6} | {:>5.2} / {:<5.2} | {:>6}",
        r.subs,
        r.rate,
        r.seconds,
        r.published,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        r.last_p50_ms,
        r.last_p99_ms,
        r.first_p50_ms,
        r.lost,
        r.duplicated,
        r.reordered,
        r.dropped,
        r.server_cores,
        r.client_cores,
        if r.met() { "met" } else { "MISSED" },
    );
    println!(
        "  latency = publish() call -> the subscriber's read of the event's bytes, over {} (subscriber, event) pairs; \
         \"last\"/\"first\" = per event, when its slowest/fastest subscriber got it",
        r.delivered
    );
    if let Some([p50, p90, p99, p999, max]) = r.socket {
        println!(
            "  in the subscriber's socket (kernel receive timestamp, SO_TIMESTAMPNS; what the target measures, \
             before the subscriber's own scheduling): p50 {p50:.2} / p90 {p90:.2} / p99 {p99:.2} / p99.9 {p999:.2} / max {max:.2} ms"
        );
    }
    println!(
        "  CPU in cores over the publishing window: server runtime + store writer {:.2}, clients {:.2}, rest of this process {:.2}; \
         machine {:.0}% busy, {:.2} cores of it other processes (the clients' parsing shares the {} cores with the server); \
         publisher's worst tick lateness {:.2} ms",
        r.server_cores,
        r.client_cores,
        r.other_cores,
        r.machine_busy * 100.0,
        r.foreign_cores,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        r.publish_jitter_max_ms
    );
    if r.failed > 0 {
        println!("  {} subscribers failed to connect: {}", r.failed, r.commonest_failure.as_deref().unwrap_or("?"));
    }
    if r.unexpected > 0 {
        println!("  {} events with ids this run did not publish", r.unexpected);
    }
    if let Some(d) = &r.first_drop {
        println!("  {} streams ended early, e.g.: {d}", r.dropped);
    }
}

impl LatencyReport {
    /// The target is publish → the subscriber's socket: the kernel's receive timestamp when the client
    /// reads it (raw client), else the later moment the client read the bytes.
    fn p99_for_target(&self) -> f64 {
        self.socket.map_or(self.p99_ms, |p| p[2])
    }

    fn met(&self) -> bool {
        self.p99_for_target() <= P99_TARGET_MS && self.lost == 0 && self.failed == 0 && self.dropped == 0
    }
}

fn percentile_ms(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------------

/// The server under test; killed when dropped (at the end of the run, and on any error).
fn spawn_server(bin: &Path, port: u16, log: &Path, subs: usize, extra_env: &[String]) -> Result<ServerProcess> {
    let max = (subs + 100).max(20_000).to_string();
    let mut cmd = clean_command(bin);
    cmd.args(["serve", "--sandbox", "--port", &port.to_string()])
        .env("BIND", "127.0.0.1")
        .env("JWT_SECRET", SECRET)
        .env("JWT_AUDIENCE", AUDIENCE)
        .env("RATE_LIMIT_EVENTS", NO_RATE_LIMIT)
        .env("SSE_MAX_CONNECTIONS", &max)
        .env("SSE_MAX_CONNECTIONS_PER_SUBJECT", &max)
        .env("SSE_HEARTBEAT_INTERVAL", "30000")
        .env("RUST_LOG", "warn")
        .envs(extra_env.iter().filter_map(|kv| kv.split_once('=')));
    ServerProcess::start(cmd, log)
}

// ---------------------------------------------------------------------------------------------------
// /proc and friends
// ---------------------------------------------------------------------------------------------------

/// (TCP sockets in use, TCP buffer memory in pages), machine-wide, from /proc/net/sockstat.
fn tcp_sockstat() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    let line = text.lines().find(|l| l.starts_with("TCP:")).ok_or_else(|| anyhow!("no TCP line in sockstat"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let get = |key: &str| {
        words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    Ok((get("inuse"), get("mem")))
}

fn meminfo_kib(key: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/meminfo"))
}

/// The server's established sockets and their charged buffer memory (rmem_alloc + wmem_queued +
/// fwd_alloc, bytes), from `ss -tm`; `None` without `ss`.
fn ss_server_sockets(port: u16) -> Option<(u64, u64)> {
    let out = Command::new("ss")
        .args(["-tmnH", "state", "established", &format!("( sport = :{port} )")])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut sockets, mut bytes) = (0u64, 0u64);
    for skmem in text.split("skmem:(").skip(1) {
        let inner = skmem.split(')').next().unwrap_or("");
        sockets += 1;
        for field in inner.split(',') {
            let (name, value): (String, String) = field.chars().partition(|c| c.is_ascii_alphabetic());
            if matches!(name.as_str(), "r" | "w" | "f") {
                bytes += value.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some((sockets, bytes))
}

fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|s| process::status_field(&s, "VmRSS:")).unwrap_or(0)
}

/// This process's CPU (clock ticks) by thread group: the server's runtime and store writer, the clients'
/// runtime, everything else.
#[derive(Debug, Default, Clone, Copy)]
struct ThreadCpu {
    server: u64,
    client: u64,
    other: u64,
}

fn thread_cpu() -> ThreadCpu {
    let mut cpu = ThreadCpu::default();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return cpu };
    for task in dir.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let comm = comm.trim();
        if comm.starts_with("fanout-server") || comm.starts_with("store-writer") {
            cpu.server += ticks;
        } else if comm.starts_with("fanout-client") {
            cpu.client += ticks;
        } else {
            cpu.other += ticks;
        }
    }
    cpu
}
