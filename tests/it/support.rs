//! Starting a server against the simulator, and talking to it as an MCP client would.

use rmcp::RoleClient;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::oneshot;
use voice_call_mcp::auth::{self, Claims};
use voice_call_mcp::calls::{Call, CallStatus, TranscriptLine};
use voice_call_mcp::sandbox::realtime::{RealtimeSimConfig, RealtimeSimEvent, RealtimeSimulator};
use voice_call_mcp::sandbox::twilio::{SimRequest, SimulatorConfig, TwilioSimulator};
use voice_call_mcp::voice::bridge::Timing;
use voice_call_mcp::{AppState, RawConfig};

/// Generous bound for anything a test awaits: loopback work takes milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "simulated-auth-token";
/// The HMAC secret test servers validate event-feed tokens with.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

pub type Client = RunningService<RoleClient, ClientConfig>;

/// Which MCP protocol era the client speaks.
#[derive(Debug, Clone, Copy)]
pub enum Era {
    /// 2025-11-25: `initialize`, a session, a GET stream.
    Session,
    /// 2026-07-28: no initialize, no session; every request stands alone.
    Stateless,
}

pub struct TestServer {
    pub base: String,
    pub state: AppState,
    pub sim: TwilioSimulator,
    pub realtime: RealtimeSimulator,
    raw: RawConfig,
    timing: Timing,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// How the simulated callee behaves and how the server is configured.
pub struct Setup {
    /// How long answered calls last; `None` = until hung up.
    pub talk_time: Option<Duration>,
    pub raw: RawConfig,
    /// The token the *server* believes Twilio signs with (to test a mismatch).
    pub server_auth_token: &'static str,
    /// Whether the simulated phone opens a media stream when answered (the voice tests).
    pub media: bool,
    pub timing: Timing,
    /// An API key pair the simulated Twilio also accepts (SK…, secret).
    pub api_key: Option<(String, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            talk_time: Some(Duration::from_millis(200)),
            raw: RawConfig::default(),
            server_auth_token: AUTH_TOKEN,
            media: false,
            timing: Timing { goodbye_grace: Duration::from_secs(5), wrap_up_grace: Duration::from_secs(2) },
            api_key: None,
        }
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Self {
        let sim = TwilioSimulator::start(SimulatorConfig {
            account_sid: ACCOUNT_SID.into(),
            auth_token: AUTH_TOKEN.into(),
            api_key: setup.api_key.clone(),
            step_delay: Duration::from_millis(15),
            talk_time: setup.talk_time,
            media: setup.media,
            ms_per_char: 8,
        })
        .await
        .expect("simulator starts");
        let realtime = RealtimeSimulator::start(RealtimeSimConfig {
            api_key: "sk-test".into(),
            ms_per_char: 8,
            delta_ms: 20,
            end_silence_ms: 120,
        })
        .await
        .expect("realtime simulator starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let raw = RawConfig {
            public_url: Some(base.clone()),
            twilio_account_sid: Some(ACCOUNT_SID.into()),
            twilio_auth_token: Some(setup.server_auth_token.into()),
            twilio_number: Some("+15005550006".into()),
            twilio_api_base: Some(sim.base_url()),
            openai_api_key: Some("sk-test".into()),
            openai_realtime_url: Some(realtime.url()),
            shutdown_grace_secs: Some("2".into()),
            // Calls still up when a test stops the server get one second before they are wrapped up.
            drain_timeout_secs: setup.raw.drain_timeout_secs.clone().or_else(|| Some("1".into())),
            database_url: setup.raw.database_url.clone().or_else(|| Some("sqlite::memory:".into())),
            // The shared HMAC secret, unless the test names another key source (a JWKS, a PEM file).
            jwt_secret: setup.raw.jwt_secret.clone().or_else(|| {
                (setup.raw.jwt_jwks_url.is_none() && setup.raw.jwt_public_key_file.is_none()).then(|| JWT_SECRET.into())
            }),
            ..setup.raw
        };
        Self::serve_on(listener, base, raw, setup.timing, sim, realtime).await
    }

    async fn serve_on(
        listener: tokio::net::TcpListener,
        base: String,
        raw: RawConfig,
        timing: Timing,
        sim: TwilioSimulator,
        realtime: RealtimeSimulator,
    ) -> Self {
        let config = raw.clone().validate().expect("test configuration is valid");
        let state = AppState::with_timing(config, timing.clone()).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(voice_call_mcp::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Self { base, state, sim, realtime, raw, timing, stop: Some(stop), served: Some(served) }
    }

    /// The server dies mid-call (no drain: its calls are left as they were, on the simulators too) and
    /// comes back on the same address and database, as under systemd after a crash;
    /// `while_down` runs between the two (e.g. a call ends on Twilio's side, its callback finds nobody).
    pub async fn crash_and_restart(mut self, while_down: impl std::future::Future<Output = ()>) -> Self {
        self.state.shutdown.cancel();
        if let Some(served) = self.served.take() {
            tokio::time::timeout(WAIT, served).await.expect("server stops in time").unwrap().unwrap();
        }
        while_down.await;
        let Self { base, raw, timing, sim, realtime, .. } = self;
        let addr = base.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("the same address is free again");
        Self::serve_on(listener, base, raw, timing, sim, realtime).await
    }

    /// An MCP client whose token has every scope.
    pub async fn client(&self, era: Era) -> Client {
        self.client_with(era, &self.token(ALL_SCOPES)).await
    }

    /// An MCP client presenting `token`.
    pub async fn client_with(&self, era: Era, token: &str) -> Client {
        ClientConfig::default()
            .serve_with_lifecycle(mcp_transport(&self.base, token), lifecycle(era))
            .await
            .expect("MCP client connects")
    }

    /// A token for this server (subject `assistant`, an hour) with `scope`.
    pub fn token(&self, scope: &str) -> String {
        mint(&self.base, "assistant", scope, None, 3600)
    }

    /// The next thing the simulator saw, skipping nothing.
    pub async fn next_sim(&self) -> SimRequest {
        tokio::time::timeout(WAIT, self.sim.next_request()).await.expect("simulator saw something in time").unwrap()
    }

    /// Waits until the simulator sees a request matching `pick`, returning it; others are dropped.
    pub async fn sim_until<T>(&self, mut pick: impl FnMut(SimRequest) -> Option<T>) -> T {
        loop {
            if let Some(found) = pick(self.next_sim().await) {
                return found;
            }
        }
    }

    /// Waits until the Realtime simulator reports something matching `pick`.
    pub async fn rt_until<T>(&self, mut pick: impl FnMut(RealtimeSimEvent) -> Option<T>) -> T {
        loop {
            let event = tokio::time::timeout(WAIT, self.realtime.next_event())
                .await
                .expect("the realtime simulator saw something in time")
                .unwrap();
            if let Some(found) = pick(event) {
                return found;
            }
        }
    }

    /// Everything the simulator has seen so far, without waiting.
    pub fn sim_drain(&self) -> Vec<SimRequest> {
        std::iter::from_fn(|| self.sim.try_next_request()).collect()
    }

    /// Waits (on the call's own change signal) until `sid` reaches `status` or beyond.
    pub async fn until_status(&self, sid: &str, want: impl Fn(CallStatus) -> bool) {
        self.until_call(sid, |c| want(c.status)).await;
    }

    /// Waits (on the call's own change signal) until the call's record satisfies `want`.
    pub async fn until_call(&self, sid: &str, want: impl Fn(&Call) -> bool) -> Call {
        let entry = self.state.calls.entry(sid).expect("call is registered");
        let mut changes = entry.subscribe();
        tokio::time::timeout(WAIT, async {
            loop {
                let call = entry.snapshot();
                if want(&call) {
                    return call;
                }
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("call {sid} never got there; it is {:?}", entry.snapshot()))
    }

    /// Waits (on the call's own change signal) until the call's whole transcript satisfies `want`.
    pub async fn until_transcript(&self, sid: &str, want: impl Fn(&[TranscriptLine]) -> bool) -> Vec<TranscriptLine> {
        let entry = self.state.calls.entry(sid).expect("call is registered");
        let mut changes = entry.subscribe();
        tokio::time::timeout(WAIT, async {
            loop {
                let lines = entry.transcript_since(0, usize::MAX);
                if want(&lines) {
                    return lines;
                }
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("call {sid}'s transcript never got there: {:?}", entry.transcript_since(0, 100)))
    }

    /// The call's whole transcript now.
    pub fn transcript(&self, sid: &str) -> Vec<TranscriptLine> {
        self.state.calls.entry(sid).expect("call is registered").transcript_since(0, usize::MAX)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(WAIT, served).await.expect("server drains in time").unwrap().unwrap();
        }
        self.sim.shutdown().await;
        self.realtime.shutdown().await;
    }
}

pub fn lifecycle(era: Era) -> ClientLifecycleMode {
    match era {
        Era::Session => ClientLifecycleMode::Initialize,
        Era::Stateless => ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] },
    }
}

/// Every scope this server knows.
pub const ALL_SCOPES: &str = "calls:write calls:read events:read";

/// A token for the test server at `base`: signed with [`JWT_SECRET`], for the audience `{base}/mcp`
/// (the server's resource URL, its default audience).
pub fn mint(base: &str, sub: &str, scope: &str, calls: Option<Vec<String>>, ttl: u64) -> String {
    let base_claims = claims(base, scope);
    let now = base_claims.iat.unwrap_or_default();
    let claims = Claims { sub: sub.into(), exp: now + ttl, calls, ..base_claims };
    auth::mint(JWT_SECRET, "HS256", &claims).unwrap()
}

/// A database file of the test's own, for tests that restart a server on the same history; the
/// directory is removed when this is dropped.
pub struct TempDatabase {
    dir: std::path::PathBuf,
    pub url: String,
}

impl TempDatabase {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vcm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = format!("sqlite://{}/calls.db", dir.display());
        Self { dir, url }
    }

    /// A configuration using this database.
    pub fn raw(&self) -> RawConfig {
        RawConfig { database_url: Some(self.url.clone()), ..RawConfig::default() }
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Claims of a token for the test server at `base` (subject `assistant`, ten minutes, every call),
/// for tests that change a field or sign with another key.
pub fn claims(base: &str, scope: &str) -> Claims {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    Claims {
        sub: "assistant".into(),
        exp: now + 600,
        iat: Some(now),
        nbf: None,
        iss: None,
        aud: Some(format!("{base}/mcp").into()),
        scope: scope.into(),
        calls: None,
    }
}

/// The Streamable HTTP client transport for `{base}/mcp`, sending `token` as a bearer token.
pub fn mcp_transport(base: &str, token: &str) -> StreamableHttpClientTransport<reqwest::Client> {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(token);
    StreamableHttpClientTransport::from_config(config)
}

/// `tools/call` from any client, whatever handles its notifications.
pub async fn call_tool<H: rmcp::ClientHandler>(
    client: &RunningService<RoleClient, H>,
    name: &'static str,
    args: Value,
) -> CallToolResult {
    let args = match args {
        Value::Object(map) => map,
        other => panic!("tool arguments must be an object, got {other}"),
    };
    client.call_tool(CallToolRequestParams::new(name).with_arguments(args)).await.expect("tools/call answered")
}

/// The structured content of a successful tool result.
pub fn ok(result: &CallToolResult) -> &Value {
    assert_eq!(result.is_error, Some(false), "tool failed: {result:?}");
    result.structured_content.as_ref().expect("structured content")
}

/// The text of a failed tool result.
pub fn error_text(result: &CallToolResult) -> String {
    assert_eq!(result.is_error, Some(true), "tool unexpectedly succeeded: {result:?}");
    result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join(" ")
}

pub fn form_values<'a>(form: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    form.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

/// The server binary as a child process, with every stderr line collected as it comes. Killed when
/// dropped, so a failed test leaves nothing running.
pub struct ServerProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl ServerProcess {
    /// Spawns `command` (stderr captured) and starts reading its lines.
    pub fn spawn(mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = command.stderr(std::process::Stdio::piped()).spawn().expect("the server binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// Waits (bounded by [`WAIT`]) for a line containing `needle`, and returns it. The child's stderr
    /// closes if it dies, which ends the wait at once.
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = std::time::Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("the server never printed {needle:?}; it printed {:#?}", self.seen);
    }

    /// The child's process id (to read its threads under /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(status.expect("kill runs").success());
    }

    /// Waits (bounded) for the process to exit — its stderr closing — and returns its exit code and
    /// every line it printed.
    pub fn wait_exit(mut self, within: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now()).unwrap_or_default();
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the server did not exit in {within:?}; it printed {:#?}", self.seen)
                }
            }
        }
        let code = self.child.wait().expect("the exit status is read").code();
        (code, std::mem::take(&mut self.seen))
    }

    /// SIGTERM, then the exit code and everything it printed.
    pub fn stop(self) -> (Option<i32>, Vec<String>) {
        self.terminate();
        self.wait_exit(WAIT)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
