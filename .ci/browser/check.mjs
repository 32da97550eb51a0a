// Browser check: headless Chromium's EventSource follows a sandbox call on GET /events, cross-origin,
// with the token in the `access_token` query parameter. No npm dependencies: Chromium is driven over
// the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages, NUL-terminated, we write
// fd 3 and read fd 4), the page is served by node:http, MCP is spoken with fetch.
//
// Run by run.sh, which starts the server and passes (environment):
//   SERVER_URL    http://127.0.0.1:PORT of the server (SSE_CORS_ORIGIN = this page's origin)
//   PAGE_PORT     loopback port to serve the page on
//   EVENTS_TOKEN  an events:read token
//   MCP_TOKEN     optional bearer token for /mcp (sent if set; harmless where /mcp takes none)
//   CHROMIUM      browser executable            RESULTS  directory for the screenshot and logs
//   PROFILE_DIR   fresh, empty --user-data-dir
// Prints what it saw; exit 0 when every assertion held, 1 otherwise (reason on the last lines).
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { readFileSync, writeFileSync, createWriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const SERVER = env('SERVER_URL');
const PAGE_PORT = Number(env('PAGE_PORT'));
const TOKEN = env('EVENTS_TOKEN');
const MCP_TOKEN = process.env.MCP_TOKEN || '';
const CHROMIUM = env('CHROMIUM');
const RESULTS = env('RESULTS');
const PROFILE = env('PROFILE_DIR');
const PAGE_ORIGIN = `http://127.0.0.1:${PAGE_PORT}`;
const EVENTS_DEADLINE_MS = 60_000;
const PROTOCOL = '2025-11-25';

class CheckFailed extends Error {}
const must = (cond, msg) => {
  if (!cond) throw new CheckFailed(msg);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const log = (msg) => console.log(`  [${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);
const redact = (s) => String(s).split(TOKEN).join('<events-token>').split(MCP_TOKEN || '\0').join('<mcp-token>');

// ------------------------------------------------------------------ the page (another origin)
function servePage() {
  const html = readFileSync(join(HERE, 'page.html'), 'utf8')
    .replace('__SERVER__', JSON.stringify(SERVER))
    .replace('__TOKEN__', JSON.stringify(TOKEN));
  const server = createServer((req, res) => {
    if (req.url === '/' || req.url.startsWith('/?')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(html);
    } else if (req.url === '/favicon.ico') {
      res.writeHead(204).end();
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(PAGE_PORT, '127.0.0.1', () => resolve(server));
  });
}

// ------------------------------------------------------------------ Chromium over the DevTools pipe
class Browser {
  constructor() {
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
    const chromeLog = createWriteStream(join(RESULTS, 'chromium.log'));
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
async function rpc(method, params, { notification = false } = {}) {
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

async function triggerCall() {
  const init = await rpc('initialize', {
    protocolVersion: PROTOCOL,
    capabilities: {},
    clientInfo: { name: 'voice-call-mcp-browser-check', version: '1.0.0' },
  });
  log(`MCP initialize: protocol ${init.protocolVersion}, server ${init.serverInfo?.name} ${init.serverInfo?.version}, session ${sessionId ? 'yes' : 'no'}`);
  await rpc('notifications/initialized', {}, { notification: true });
  const result = await rpc('tools/call', {
    name: 'trigger-call',
    arguments: { toNumber: '+14155550123', callContext: 'browser check' },
  });
  must(!result.isError, `trigger-call returned isError: ${JSON.stringify(result).slice(0, 800)}`);
  const sid = result.structuredContent?.callSid;
  must(typeof sid === 'string' && sid.length > 0, `trigger-call gave no callSid: ${JSON.stringify(result).slice(0, 800)}`);
  log(`trigger-call: callSid ${sid}, status ${result.structuredContent.status}`);
  return sid;
}

async function endSession() {
  if (!sessionId) return;
  const headers = { 'mcp-session-id': sessionId, 'mcp-protocol-version': PROTOCOL };
  if (MCP_TOKEN) headers.authorization = `Bearer ${MCP_TOKEN}`;
  await fetch(`${SERVER}/mcp`, { method: 'DELETE', headers, signal: AbortSignal.timeout(5000) }).catch(() => {});
}

// ------------------------------------------------------------------ the check
async function screenshot(browser, page) {
  const metrics = await browser.send('Page.getLayoutMetrics', {}, page);
  const size = metrics.cssContentSize || metrics.contentSize;
  const shot = await browser.send('Page.captureScreenshot', {
    format: 'png', captureBeyondViewport: true,
    clip: { x: 0, y: 0, width: Math.max(1280, Math.ceil(size.width)), height: Math.max(200, Math.ceil(size.height)), scale: 1 },
  }, page);
  const png = join(RESULTS, 'eventsource.png');
  writeFileSync(png, Buffer.from(shot.data, 'base64'));
  log(`screenshot: ${png}`);
}

async function main() {
  const pageServer = await servePage();
  const browser = new Browser();
  const notes = []; // console messages, exceptions, network failures from the page
  const eventsResponses = [];
  let page = null;
  let shotTaken = false;
  try {
    browser.launch();
    const version = await browser.send('Browser.getVersion', {}, undefined, 30_000);
    log(`browser: ${version.product} (DevTools protocol ${version.protocolVersion})`);

    const { targetId } = await browser.send('Target.createTarget', { url: 'about:blank' });
    page = (await browser.send('Target.attachToTarget', { targetId, flatten: true })).sessionId;
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
        case 'Network.responseReceived':
          if (p.response.url.startsWith(`${SERVER}/events`)) eventsResponses.push(p.response);
          break;
        case 'Network.loadingFailed':
          notes.push(`network: ${p.type} failed: ${p.errorText}${p.corsErrorStatus ? ` (CORS: ${p.corsErrorStatus.corsError})` : ''}`);
          break;
        default:
      }
    });
    await Promise.all(['Runtime.enable', 'Log.enable', 'Network.enable', 'Page.enable'].map((m) => browser.send(m, {}, page)));
    await browser.send('Emulation.setDeviceMetricsOverride', { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false }, page);

    const nav = await browser.send('Page.navigate', { url: `${PAGE_ORIGIN}/` }, page);
    must(!nav.errorText, `navigating to ${PAGE_ORIGIN}/ failed: ${nav.errorText}`);
    log(`page ${PAGE_ORIGIN}/ opened; EventSource -> ${SERVER}/events?access_token=…`);

    const readPage = async () => {
      const r = await browser.send('Runtime.evaluate', {
        returnByValue: true,
        expression: `({
          state: document.getElementById('state')?.textContent,
          events: [...document.querySelectorAll('#events li')].map((li) => ({
            type: li.dataset.type, id: li.dataset.id || '', data: li.querySelector('code')?.textContent ?? '',
          })),
          text: document.body ? document.body.innerText : '',
        })`,
      }, page);
      must(!r.exceptionDetails, `reading the page failed: ${JSON.stringify(r.exceptionDetails)}`);
      return r.result.value;
    };
    const pageReport = (p) => `page state '${p.state}', ${p.events.length} events:\n${redact(p.text).split('\n').map((l) => `      | ${l}`).join('\n')}`;

    // 1. The stream is open before the call is placed: without Last-Event-ID the feed is live only.
    let seen;
    for (const deadline = Date.now() + 20_000; ;) {
      seen = await readPage();
      if (seen.events.some((e) => e.type === 'connected')) break;
      must(!seen.events.some((e) => e.type === 'connection-error' && seen.state === 'closed'),
        `EventSource gave up (closed) before 'connected'\n${pageReport(seen)}`);
      must(Date.now() < deadline, `no 'connected' event within 20 s\n${pageReport(seen)}`);
      await sleep(100);
    }
    log(`EventSource open, 'connected' received: ${seen.events.find((e) => e.type === 'connected').data}`);
    for (const r of eventsResponses) {
      const h = Object.fromEntries(Object.entries(r.headers).map(([k, v]) => [k.toLowerCase(), v]));
      log(`/events response: HTTP ${r.status}, content-type ${h['content-type']}, access-control-allow-origin ${h['access-control-allow-origin'] ?? '(none)'}, access-control-allow-credentials ${h['access-control-allow-credentials'] ?? '(none)'}, vary ${h.vary ?? '(none)'}`);
    }

    // 2. Place the call.
    const callSid = await triggerCall();

    // 3. Poll the DOM until the whole call has been seen.
    const parsed = (p) => p.events.filter((e) => e.type !== 'connection-error').map((e) => {
      let data = null;
      try { data = JSON.parse(e.data); } catch { /* left null */ }
      return { ...e, json: data };
    });
    const complete = (evs) => {
      const calls = evs.filter((e) => e.type !== 'connected');
      return calls.some((e) => e.type === 'call-status')
        && calls.some((e) => e.type === 'transcription' && e.json?.speaker === 'ai')
        && calls.some((e) => e.type === 'transcription' && e.json?.speaker === 'human')
        && calls.some((e) => e.type === 'call-ended');
    };
    const callStart = Date.now();
    let evs;
    for (const deadline = Date.now() + EVENTS_DEADLINE_MS; ;) {
      seen = await readPage();
      evs = parsed(seen);
      if (complete(evs)) break;
      must(Date.now() < deadline, `the page did not show connected, call-status, transcription (ai and human) and call-ended within ${EVENTS_DEADLINE_MS / 1000} s of trigger-call\n${pageReport(seen)}`);
      await sleep(250);
    }
    log(`whole call seen on the page ${((Date.now() - callStart) / 1000).toFixed(1)} s after trigger-call returned`);
    // Let trailing events land (bounded): stop once nothing new arrived for 1 s.
    for (let n = evs.length, quiet = 0, deadline = Date.now() + 5000; quiet < 4 && Date.now() < deadline;) {
      await sleep(250);
      seen = await readPage();
      evs = parsed(seen);
      quiet = evs.length === n ? quiet + 1 : 0;
      n = evs.length;
    }

    // 4. Assertions on what the page shows.
    const callEvents = evs.filter((e) => !['connected', 'replay-truncated', 'message'].includes(e.type));
    const summary = callEvents.map((e) => (e.type === 'call-status' ? `call-status:${e.json?.status}`
      : e.type === 'transcription' ? `transcription:${e.json?.speaker}` : e.type));
    log(`events (${callEvents.length}): ${summary.join(' ')}`);
    must(callEvents.every((e) => e.json && typeof e.json === 'object'), `an event's data is not JSON\n${pageReport(seen)}`);
    const wrong = callEvents.filter((e) => e.json.callSid !== callSid);
    must(wrong.length === 0, `events for another callSid than ${callSid}: ${wrong.map((e) => `${e.type} ${e.json.callSid}`).join(', ')}`);
    const typeMismatch = callEvents.filter((e) => e.json.type !== e.type);
    must(typeMismatch.length === 0, `SSE event name and data.type differ: ${typeMismatch.map((e) => `${e.type}/${e.json.type}`).join(', ')}`);
    const ids = callEvents.map((e) => Number(e.id));
    must(ids.every((id, i) => Number.isInteger(id) && id > 0 && (i === 0 || id > ids[i - 1])),
      `event ids are not increasing integers: ${ids.join(',')}`);
    const statuses = callEvents.filter((e) => e.type === 'call-status').map((e) => e.json.status);
    log(`call-status sequence: ${statuses.join(' -> ')}; event ids ${ids[0]}..${ids[ids.length - 1]}`);
    const ended = callEvents.find((e) => e.type === 'call-ended');
    log(`call-ended: status ${ended.json.status}, duration ${ended.json.duration} s`);
    const afterEnd = callEvents.slice(callEvents.indexOf(ended) + 1).map((e) => e.type);
    if (afterEnd.length) log(`note: after call-ended came: ${afterEnd.join(', ')}`);
    const connErrors = seen.events.filter((e) => e.type === 'connection-error').length;
    if (connErrors) log(`note: EventSource reported ${connErrors} connection error(s) (reconnects)`);

    // 5. Screenshot (also taken on failure, below).
    await screenshot(browser, page);
    shotTaken = true;
    writeFileSync(join(RESULTS, 'page.txt'), redact(seen.text) + '\n');
    if (notes.length) log(`page notes:\n${notes.map((n) => `      ${redact(n)}`).join('\n')}`);
  } catch (e) {
    if (page && !shotTaken) await screenshot(browser, page).catch(() => {});
    if (notes.length) console.log(`  page notes:\n${notes.map((n) => `      ${redact(n)}`).join('\n')}`);
    throw e;
  } finally {
    await endSession();
    await browser.close();
    pageServer.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(`  FAILED: ${redact(e instanceof CheckFailed ? e.message : e.stack || e)}`);
    process.exit(1);
  },
);
