// Shared by the browser checks: Chromium driven over the DevTools pipe, and a minimal MCP client.
// No npm dependencies: Chromium runs with --remote-debugging-pipe (JSON messages, NUL-terminated, we
// write fd 3 and read fd 4); MCP is spoken with fetch (Streamable HTTP, 2025-11-25 sessions).
import { spawn } from 'node:child_process';
import { writeFileSync, createWriteStream } from 'node:fs';
import { join } from 'node:path';

export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const SERVER = env('SERVER_URL');
const CHROMIUM = env('CHROMIUM');
const RESULTS = env('RESULTS');
const PROFILE = env('PROFILE_DIR');
// Sent as `Authorization: Bearer` on every MCP request (/mcp requires it once authentication lands).
const MCP_TOKEN = process.env.MCP_TOKEN || '';
const PROTOCOL = '2025-11-25';

export class CheckFailed extends Error {}
export const must = (cond, msg) => {
  if (!cond) throw new CheckFailed(msg);
};
// Runs a check's `main`: exit 0 when it returns, 1 with the reason (passed through `redact`) when it throws.
export function runCheck(main, redact) {
  main().then(
    () => process.exit(0),
    (e) => {
      console.log(`  FAILED: ${redact(e instanceof CheckFailed ? e.message : e.stack || e)}`);
      process.exit(1);
    },
  );
}
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
export const log = (msg) => console.log(`  [${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

// ------------------------------------------------------------------ Chromium over the DevTools pipe
export class Browser {
  constructor(logName = 'chromium.log') {
    this.logName = logName;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = [];
    this.buffer = '';
    this.exited = null;
  }

  launch() {
    const args = [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${PROFILE}`, '--remote-debugging-pipe',
      '--no-default-browser-check', '--disable-extensions', '--mute-audio', '--hide-scrollbars',
      '--window-size=1280,900', 'about:blank',
    ];
    this.proc = spawn(CHROMIUM, args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'] });
    const chromeLog = createWriteStream(join(RESULTS, this.logName));
    this.proc.stdout.pipe(chromeLog);
    this.proc.stderr.pipe(chromeLog);
    this.proc.on('exit', (code, signal) => {
      this.exited = `chromium exited (code ${code}, signal ${signal})`;
      for (const { reject } of this.pending.values()) reject(new CheckFailed(this.exited));
      this.pending.clear();
    });
    this.proc.on('error', (e) => {
      this.exited = `chromium could not start: ${e.message}`;
    });
    this.out = this.proc.stdio[3];
    this.in = this.proc.stdio[4];
    this.in.setEncoding('utf8');
    this.in.on('data', (chunk) => {
      this.buffer += chunk;
      let end;
      while ((end = this.buffer.indexOf('\0')) >= 0) {
        const raw = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 1);
        this.dispatch(JSON.parse(raw));
      }
    });
    this.out.on('error', () => {}); // EPIPE after chromium died: reported through `exited`
  }

  dispatch(msg) {
    if (msg.id !== undefined) {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(new Error(`${p.method}: ${JSON.stringify(msg.error)}`));
      else p.resolve(msg.result);
    } else {
      for (const fn of this.listeners) fn(msg);
    }
  }

  send(method, params = {}, sessionId, timeoutMs = 15_000) {
    if (this.exited) return Promise.reject(new CheckFailed(this.exited));
    const id = this.nextId++;
    const msg = { id, method, params };
    if (sessionId) msg.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CheckFailed(`DevTools ${method} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        method,
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.out.write(JSON.stringify(msg) + '\0');
    });
  }

  on(fn) {
    this.listeners.push(fn);
  }

  async close() {
    if (!this.proc || this.exited) return;
    try {
      await this.send('Browser.close', {}, undefined, 3000);
    } catch { /* killed below */ }
    for (let i = 0; i < 30 && !this.exited; i++) await sleep(100);
    if (!this.exited) this.proc.kill('SIGKILL');
  }
}


// ------------------------------------------------------------------ MCP over Streamable HTTP
let sessionId = null;
let rpcId = 0;

// One JSON-RPC POST; returns the response for `id` (from a JSON body or an SSE stream), or null for a
// notification (202).
export async function rpc(method, params, { notification = false } = {}) {
  const body = { jsonrpc: '2.0', method, params };
  const id = notification ? undefined : ++rpcId;
  if (!notification) body.id = id;
  const headers = {
    accept: 'application/json, text/event-stream',
    'content-type': 'application/json',
    'mcp-protocol-version': PROTOCOL,
  };
  if (sessionId) headers['mcp-session-id'] = sessionId;
  if (MCP_TOKEN) headers.authorization = `Bearer ${MCP_TOKEN}`;
  const res = await fetch(`${SERVER}/mcp`, {
    method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(30_000),
  });
  if (!sessionId && res.headers.get('mcp-session-id')) sessionId = res.headers.get('mcp-session-id');
  if (!res.ok) throw new CheckFailed(`${method}: HTTP ${res.status} ${(await res.text()).slice(0, 800)}`);
  if (notification) {
    await res.body?.cancel();
    return null;
  }
  const type = res.headers.get('content-type') || '';
  if (type.startsWith('application/json')) return check(await res.json());
  must(type.startsWith('text/event-stream'), `${method}: unexpected content-type '${type}'`);
  // Read SSE frames until the response with our id; notifications before it are ignored.
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (!data) continue;
        const msg = JSON.parse(data);
        if (msg.id === id) return check(msg);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  throw new CheckFailed(`${method}: the stream ended without a response to id ${id}`);

  function check(msg) {
    must(!msg.error, `${method}: JSON-RPC error ${JSON.stringify(msg.error)}`);
    return msg.result;
  }
}

export async function triggerCall(toNumber = '+14155550123', callContext = 'browser check') {
  if (!sessionId) await initialize();
  const result = await rpc('tools/call', {
    name: 'trigger-call',
    arguments: { toNumber, callContext },
  });
  must(!result.isError, `trigger-call returned isError: ${JSON.stringify(result).slice(0, 800)}`);
  const sid = result.structuredContent?.callSid;
  must(typeof sid === 'string' && sid.length > 0, `trigger-call gave no callSid: ${JSON.stringify(result).slice(0, 800)}`);
  log(`trigger-call ${toNumber}: callSid ${sid}, status ${result.structuredContent.status}`);
  return sid;
}

async function initialize() {
  const init = await rpc('initialize', {
    protocolVersion: PROTOCOL,
    capabilities: {},
    clientInfo: { name: 'voice-call-mcp-browser-check', version: '1.0.0' },
  });
  log(`MCP initialize: protocol ${init.protocolVersion}, server ${init.serverInfo?.name} ${init.serverInfo?.version}, session ${sessionId ? 'yes' : 'no'}`);
  await rpc('notifications/initialized', {}, { notification: true });
}

export async function endSession() {
  if (!sessionId) return;
  const headers = { 'mcp-session-id': sessionId, 'mcp-protocol-version': PROTOCOL };
  if (MCP_TOKEN) headers.authorization = `Bearer ${MCP_TOKEN}`;
  await fetch(`${SERVER}/mcp`, { method: 'DELETE', headers, signal: AbortSignal.timeout(5000) }).catch(() => {});
}


// A full-page PNG of what the page shows now (at least `minWidth` wide).
export async function screenshot(browser, page, file, minWidth = 1280) {
  const metrics = await browser.send('Page.getLayoutMetrics', {}, page);
  const size = metrics.cssContentSize || metrics.contentSize;
  const shot = await browser.send('Page.captureScreenshot', {
    format: 'png', captureBeyondViewport: true,
    clip: { x: 0, y: 0, width: Math.max(minWidth, Math.ceil(size.width)), height: Math.max(200, Math.ceil(size.height)), scale: 1 },
  }, page);
  const png = join(RESULTS, file);
  writeFileSync(png, Buffer.from(shot.data, 'base64'));
  log(`screenshot: ${png}`);
}

/// Opens a blank 1280×900 tab and returns its session id. The page's console lines, uncaught exceptions
/// and log entries go to `notes` (printed when a check fails); its other events go to
/// `onEvent(method, params)`.
export async function openPage(browser, notes, onEvent = () => {}) {
  const { targetId } = await browser.send('Target.createTarget', { url: 'about:blank' });
  const page = (await browser.send('Target.attachToTarget', { targetId, flatten: true })).sessionId;
  browser.on((msg) => {
    if (msg.sessionId !== page) return;
    const p = msg.params;
    switch (msg.method) {
      case 'Runtime.consoleAPICalled':
        notes.push(`console.${p.type}: ${p.args.map((a) => a.value ?? a.description).join(' ')}`);
        break;
      case 'Runtime.exceptionThrown':
        notes.push(`exception: ${p.exceptionDetails.exception?.description ?? p.exceptionDetails.text}`);
        break;
      case 'Log.entryAdded':
        notes.push(`${p.entry.source}.${p.entry.level}: ${p.entry.text}`);
        break;
      default:
        onEvent(msg.method, p);
    }
  });
  await Promise.all(['Runtime.enable', 'Log.enable', 'Network.enable', 'Page.enable'].map((m) => browser.send(m, {}, page)));
  await browser.send('Emulation.setDeviceMetricsOverride', { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false }, page);
  return page;
}
