// Browser check: headless Chromium's EventSource follows a sandbox call on GET /events, cross-origin,
// with the token in the `access_token` query parameter. No npm dependencies: Chromium is driven over
// the DevTools protocol on a pipe (lib.mjs), the page is served by node:http, MCP is spoken with fetch.
//
// Run by run.sh, which starts the server and passes (environment):
//   SERVER_URL    http://127.0.0.1:PORT of the server (SSE_CORS_ORIGIN = this page's origin)
//   PAGE_PORT     loopback port to serve the page on
//   EVENTS_TOKEN  an events:read token
//   MCP_TOKEN     bearer token sent on every /mcp request
//   CHROMIUM      browser executable            RESULTS  directory for the screenshot and logs
//   PROFILE_DIR   fresh, empty --user-data-dir
// Prints what it saw; exit 0 when every assertion held, 1 otherwise (reason on the last lines).
import { createServer } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Browser, CheckFailed, endSession, env, log, must, openPage, screenshot as capture, sleep, triggerCall, runCheck } from './lib.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const SERVER = env('SERVER_URL');
const PAGE_PORT = Number(env('PAGE_PORT'));
const TOKEN = env('EVENTS_TOKEN');
const MCP_TOKEN = process.env.MCP_TOKEN || '';
const RESULTS = env('RESULTS');
const PAGE_ORIGIN = `http://127.0.0.1:${PAGE_PORT}`;
const EVENTS_DEADLINE_MS = 60_000;

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

// ------------------------------------------------------------------ the check
const screenshot = (browser, page) => capture(browser, page, 'eventsource.png');

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

    page = await openPage(browser, notes, (method, p) => {
      if (method === 'Network.responseReceived' && p.response.url.startsWith(`${SERVER}/events`)) {
        eventsResponses.push(p.response);
      } else if (method === 'Network.loadingFailed') {
        notes.push(`network: ${p.type} failed: ${p.errorText}${p.corsErrorStatus ? ` (CORS: ${p.corsErrorStatus.corsError})` : ''}`);
      }
    });

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

runCheck(main, redact);
