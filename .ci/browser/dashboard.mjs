// Browser check: the built-in GET /dashboard follows sandbox calls in headless Chromium, and survives
// its token expiring. No npm dependencies (lib.mjs drives Chromium over the DevTools pipe and speaks MCP).
//
//  1. Open /dashboard, paste a token, wait until the page's EventSource is live.
//  2. Place a call over MCP; poll the DOM (bounded) until that call shows completed with a final
//     duration and its transcript has both speakers; the duration must have ticked while it was live.
//     Screenshots: results/dashboard-live.png (in progress), dashboard.png (ended), dashboard-narrow.png
//     (phone width), dashboard-token.png (asking for a new token).
//  3. Switch to a token minted with a short --ttl; when it expires the server closes the stream, the
//     reconnect is refused, and the page must ask for a new token.
//  4. While the page is disconnected, place a second call (to a number whose simulated voice model sends
//     an `error`); then paste a new token. The page must reconnect with `lastEventId` = the last id it
//     showed, show the second call from its first event (replayed) to call-ended, its error marked,
//     and not one line of the first call twice. Screenshot: results/dashboard-resumed.png.
// Throughout: no Content-Security-Policy violation, no page exception, the token never in the URL bar
// or in localStorage, and no token in the server log.
//
// Environment (from run.sh): SERVER_URL, DASH_TOKEN, NEXT_TOKEN (tokens for the page), MCP_TOKEN,
// BIN and WORKDIR (to mint the short-lived token with `BIN token`, JWT_SECRET and PUBLIC_URL exported),
// SERVER_LOG, CHROMIUM, RESULTS, PROFILE_DIR. Exit 0 when every assertion held, 1 otherwise.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Browser, CheckFailed, endSession, env, log, must, openPage, screenshot, sleep, triggerCall, runCheck } from './lib.mjs';

const SERVER = env('SERVER_URL');
const RESULTS = env('RESULTS');
const BIN = env('BIN');
const WORKDIR = env('WORKDIR');
const SERVER_LOG = env('SERVER_LOG');
const MCP_TOKEN = process.env.MCP_TOKEN || '';
const FIRST_TOKEN = env('DASH_TOKEN');
const NEXT_TOKEN = env('NEXT_TOKEN');
const SHORT_TTL = 8; // seconds
const CALL_DEADLINE_MS = 60_000;
const SCOPES = 'calls:write calls:read events:read';

const tokens = { '<first-token>': FIRST_TOKEN, '<next-token>': NEXT_TOKEN, '<mcp-token>': MCP_TOKEN };
const redact = (s) => Object.entries(tokens).reduce((t, [name, v]) => (v ? t.split(v).join(name) : t), String(s));

// ------------------------------------------------------------------ the page, as seen from outside
const READ_PAGE = `(() => {
  const conn = document.getElementById('conn');
  const panel = document.getElementById('token-panel');
  const problem = document.getElementById('token-problem');
  if (!conn || !panel || !problem) return { loading: true, calls: [], text: document.body?.innerText ?? '' };
  return {
    conn: conn.dataset.state, connText: conn.textContent.trim(), lastEventId: conn.dataset.lastEventId ?? null,
    asking: !panel.hidden, problem: problem.hidden ? '' : problem.textContent,
    url: location.href, stored: sessionStorage.length, local: localStorage.length,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    calls: [...document.querySelectorAll('#calls > li.call')].map((li) => ({
      sid: li.dataset.callSid, status: li.dataset.status || '', ended: 'ended' in li.dataset,
      errors: Number(li.dataset.errors || 0), to: li.querySelector('.to').textContent,
      statusText: li.querySelector('.status').textContent,
      duration: li.querySelector('.duration').textContent, final: li.querySelector('.duration').dataset.final ?? null,
      lines: [...li.querySelectorAll('.transcript > li')].map((l) => ({
        id: l.dataset.id || '', speaker: l.dataset.speaker || '', kind: l.className,
        who: l.querySelector('.who').textContent, text: l.querySelector('.text').textContent,
      })),
    })),
    text: document.body.innerText,
  };
})()`;

function mint(ttl) {
  // The same command an operator runs; JWT_SECRET and PUBLIC_URL come from run.sh's environment.
  const token = execFileSync(BIN, ['token', '--scope', SCOPES, '--ttl', String(ttl)], { cwd: WORKDIR, encoding: 'utf8' }).trim();
  must(token.split('.').length === 3, 'token printed something that is not a JWT');
  return token;
}

async function main() {
  const browser = new Browser('chromium-dashboard.log');
  const notes = []; // console messages, exceptions, failed loads
  const feedRequests = []; // URLs of every /events request the page made
  let page = null;
  let shotTaken = false;
  let seen = null;
  const report = (p) => (p ? `conn '${p.conn}' (${p.connText}), asking for token: ${p.asking} ${p.problem}\n${redact(p.text).split('\n').map((l) => `      | ${l}`).join('\n')}` : '(page not read)');
  try {
    browser.launch();
    const version = await browser.send('Browser.getVersion', {}, undefined, 30_000);
    log(`browser: ${version.product}`);
    let dashboardHeaders = null;
    page = await openPage(browser, notes, (method, p) => {
      if (method === 'Network.requestWillBeSent' && p.request.url.startsWith(`${SERVER}/events`)) {
        feedRequests.push(p.request.url);
      } else if (method === 'Network.responseReceived' && p.response.url === `${SERVER}/dashboard`) {
        dashboardHeaders = p.response.headers;
      }
    });
    const viewport = (width, height) => browser.send('Emulation.setDeviceMetricsOverride',
      { width, height, deviceScaleFactor: 1, mobile: width < 600 }, page);

    const readPage = async () => {
      const r = await browser.send('Runtime.evaluate', { expression: READ_PAGE, returnByValue: true }, page);
      must(!r.exceptionDetails, `reading the page failed: ${JSON.stringify(r.exceptionDetails)}`);
      seen = r.result.value;
      return seen;
    };
    // Bounded polling of the DOM: the only synchronisation with the page.
    const waitFor = async (what, ok, ms) => {
      for (const deadline = Date.now() + ms; ;) {
        const p = await readPage();
        if (ok(p)) return p;
        must(Date.now() < deadline, `${what}: not seen within ${ms / 1000} s\n${report(p)}`);
        await sleep(200);
      }
    };
    const evaluate = async (expression) => {
      const r = await browser.send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true }, page);
      must(!r.exceptionDetails, `${expression}: ${JSON.stringify(r.exceptionDetails)}`);
      return r.result.value;
    };
    const paste = async (text) => {
      await evaluate(`document.getElementById('token').focus()`);
      await browser.send('Input.insertText', { text }, page);
      await evaluate(`document.querySelector('#token-form button[type=submit]').click()`);
    };

    // 1. Open the page and give it a token.
    const nav = await browser.send('Page.navigate', { url: `${SERVER}/dashboard` }, page);
    must(!nav.errorText, `opening ${SERVER}/dashboard failed: ${nav.errorText}`);
    await waitFor('the token form', (p) => p.asking, 10_000);
    if (dashboardHeaders) {
      const h = Object.fromEntries(Object.entries(dashboardHeaders).map(([k, v]) => [k.toLowerCase(), v]));
      log(`/dashboard: ${h['content-type']}; CSP ${h['content-security-policy']?.replace(/'sha256-[^']+'/g, "'sha256-…'")}`);
    }
    await paste(FIRST_TOKEN);
    seen = await waitFor('the feed open (live)', (p) => p.conn === 'live' && !p.asking, 20_000);
    log(`dashboard live: '${seen.connText}'`);

    // 2. A call, followed to its end.
    const first = await triggerCall('+14155550123', 'dashboard check');
    const callOf = (p, sid) => p.calls.find((c) => c.sid === sid);
    const speakers = (c) => new Set(c.lines.map((l) => l.speaker).filter(Boolean));
    let liveDuration = null;
    let ticked = false;
    const started = Date.now();
    const done = (c) => c.status === 'completed' && c.final !== null && speakers(c).has('ai') && speakers(c).has('human');
    const watch = (p) => {
      const c = callOf(p, first);
      if (!c) return null;
      if (c.status === 'in-progress' && c.final === null && /^\d+:\d\d$/.test(c.duration)) {
        if (liveDuration === null) liveDuration = c.duration;
        else if (c.duration !== liveDuration) ticked = true;
      }
      return c;
    };
    seen = await waitFor(`call ${first} in progress with its duration ticking`, (p) => {
      const c = watch(p);
      return c && (ticked || c.ended);
    }, CALL_DEADLINE_MS);
    if (ticked) await screenshot(browser, page, 'dashboard-live.png');
    seen = await waitFor(`call ${first} completed with both speakers and a duration`, (p) => {
      const c = watch(p);
      return c && done(c);
    }, CALL_DEADLINE_MS);
    let c1 = callOf(seen, first);
    log(`call ${first} on the page after ${((Date.now() - started) / 1000).toFixed(1)} s: to ${c1.to}, '${c1.statusText}', duration ${c1.duration}, ${c1.lines.length} transcript lines`);
    must(c1.to === '+14155550123', `the call shows number '${c1.to}'`);
    must(ticked, `the duration did not tick while the call was in progress (saw only '${liveDuration}')`);
    must(c1.lines.every((l) => l.id), 'a transcript line has no event id');
    await screenshot(browser, page, 'dashboard.png');
    shotTaken = true;
    await viewport(390, 844);
    seen = await readPage();
    must(seen.overflow <= 0, `at 390 px wide the page scrolls sideways by ${seen.overflow} px`);
    await screenshot(browser, page, 'dashboard-narrow.png', 390);
    await viewport(1280, 900);

    // 3. A short-lived token: it expires, and the page asks for a new one.
    seen = await readPage();
    const beforeShort = seen.lastEventId;
    const shortToken = mint(SHORT_TTL);
    tokens['<short-token>'] = shortToken;
    await evaluate(`document.getElementById('change-token').click()`);
    await paste(shortToken);
    const switched = Date.now();
    seen = await waitFor('the feed live again with the short-lived token', (p) => p.conn === 'live' && !p.asking, 15_000);
    seen = await waitFor(`the page asking for a new token after --ttl ${SHORT_TTL} expired`,
      (p) => p.asking && p.conn === 'refused', (SHORT_TTL + 30) * 1000);
    log(`${((Date.now() - switched) / 1000).toFixed(1)} s after the ${SHORT_TTL} s token: '${seen.connText}'; asks: ${seen.problem}`);
    must(/expired|refused/i.test(seen.problem), `the page does not say the token expired or was refused: '${seen.problem}'`);
    await screenshot(browser, page, 'dashboard-token.png');
    const resumeFrom = seen.lastEventId;
    must(resumeFrom !== null && Number(resumeFrom) >= Number(beforeShort), `last event id ${resumeFrom}, had ${beforeShort}`);
    const linesBefore = callOf(seen, first).lines.map((l) => l.id);

    // 4. A call while the page is disconnected, then a new token: resume after the last id shown.
    const second = await triggerCall('+14155550005', 'dashboard check, resumed');
    const requestsBefore = feedRequests.length;
    await paste(`Events token: ${NEXT_TOKEN}\n`);
    seen = await waitFor(`call ${second} completed with both speakers, its error marked, after the new token`, (p) => {
      const c = callOf(p, second);
      return c && c.status === 'completed' && c.final !== null && speakers(c).has('ai') && speakers(c).has('human')
        && c.errors > 0 && !p.asking;
    }, CALL_DEADLINE_MS);
    const resumed = feedRequests.slice(requestsBefore).map((u) => new URL(u));
    must(resumed.length > 0, 'no /events request after the new token');
    must(resumed[0].searchParams.get('lastEventId') === resumeFrom,
      `the page reconnected with lastEventId=${resumed[0].searchParams.get('lastEventId')}, expected ${resumeFrom}`);
    must(resumed[0].searchParams.get('access_token') === NEXT_TOKEN, 'the page reconnected without the new token');
    log(`reconnected with lastEventId=${resumeFrom} and the new token`);
    const c2 = callOf(seen, second);
    c1 = callOf(seen, first);
    must(c2.to === '+14155550005', `the second call shows number '${c2.to}' (its first event, sent while disconnected, is missing)`);
    const errorLine = c2.lines.find((l) => l.kind.includes('error'));
    must(errorLine && errorLine.text.length > 0, 'the error is not shown on the second call');
    log(`call ${second}: '${c2.statusText}', duration ${c2.duration}, ${c2.lines.length} lines, ${c2.errors} error(s): ${errorLine.who}: ${errorLine.text}`);
    must(JSON.stringify(c1.lines.map((l) => l.id)) === JSON.stringify(linesBefore),
      `the first call's transcript changed after resuming: ${linesBefore.length} lines before, ${c1.lines.length} after`);
    const ids = seen.calls.flatMap((c) => c.lines.map((l) => l.id));
    must(new Set(ids).size === ids.length, `a transcript line is shown twice (ids ${ids.join(',')})`);
    must(seen.calls.filter((c) => c.sid === first).length === 1 && seen.calls.filter((c) => c.sid === second).length === 1, 'a call is shown twice');
    must(Number(seen.lastEventId) > Number(resumeFrom), 'the last event id did not move on');

    // Hygiene: the token stays out of the URL bar and localStorage, the policy was never violated.
    must(!seen.url.includes('access_token') && !seen.url.includes(NEXT_TOKEN.slice(0, 20)), `the URL bar shows a token: ${redact(seen.url)}`);
    must(seen.local === 0 && seen.stored === 1, `storage: ${seen.stored} sessionStorage and ${seen.local} localStorage items`);
    must(!notes.some((n) => /Content Security Policy/i.test(n)), `a Content-Security-Policy violation:\n${notes.map(redact).join('\n')}`);
    must(!notes.some((n) => n.startsWith('exception')), `the page threw:\n${notes.map(redact).join('\n')}`);
    const serverLog = readFileSync(SERVER_LOG, 'utf8');
    for (const [name, value] of Object.entries(tokens)) must(!value || !serverLog.includes(value), `the ${name} is in the server log`);

    await screenshot(browser, page, 'dashboard-resumed.png');
    writeFileSync(join(RESULTS, 'dashboard.txt'), redact(seen.text) + '\n');
    if (notes.length) log(`page notes (expected: the refused reconnect):\n${notes.map((n) => `      ${redact(n)}`).join('\n')}`);
  } catch (e) {
    if (page && !shotTaken) await screenshot(browser, page, 'dashboard.png').catch(() => {});
    if (notes.length) console.log(`  page notes:\n${notes.map((n) => `      ${redact(n)}`).join('\n')}`);
    if (seen && !(e instanceof CheckFailed)) console.log(`  page: ${report(seen)}`);
    throw e;
  } finally {
    await endSession();
    await browser.close();
  }
}

runCheck(main, redact);
