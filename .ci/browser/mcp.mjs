// Browser check: an MCP client in a page on another loopback origin (http://localhost:PAGE_PORT, as the
// MCP Inspector runs in direct mode beside a server at http://127.0.0.1:PORT) opens a session, lists
// the tools and ends the session, all through Chromium's fetch: preflights, CORS and the readable
// Mcp-Session-Id header are the browser's own, not simulated.
//
// Run by run.sh (environment as for check.mjs): SERVER_URL, PAGE_PORT, MCP_TOKEN, CHROMIUM, RESULTS,
// PROFILE_DIR. Exit 0 when every assertion held, 1 otherwise (reason on the last lines).
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Browser, CheckFailed, env, log, must, openPage, sleep, runCheck } from './lib.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const SERVER = env('SERVER_URL');
const PAGE_PORT = Number(env('PAGE_PORT'));
const TOKEN = env('MCP_TOKEN');
// Not the origin SSE_CORS_ORIGIN names (127.0.0.1:PAGE_PORT): admitted only as a loopback origin.
const PAGE_ORIGIN = `http://localhost:${PAGE_PORT}`;
const redact = (s) => String(s).split(TOKEN).join('<mcp-token>');

function servePage() {
  const html = readFileSync(join(HERE, 'mcp-page.html'), 'utf8')
    .replace('__SERVER__', JSON.stringify(SERVER))
    .replace('__TOKEN__', JSON.stringify(TOKEN));
  const server = createServer((req, res) => {
    if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(html);
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(PAGE_PORT, '127.0.0.1', () => resolve(server));
  });
}

async function main() {
  const pageServer = await servePage();
  const browser = new Browser();
  const notes = [];
  try {
    browser.launch();
    const page = await openPage(browser, notes, (method, p) => {
      if (method === 'Network.loadingFailed') {
        notes.push(`network: ${p.type} failed: ${p.errorText}${p.corsErrorStatus ? ` (CORS: ${p.corsErrorStatus.corsError})` : ''}`);
      }
    });
    const nav = await browser.send('Page.navigate', { url: `${PAGE_ORIGIN}/` }, page);
    must(!nav.errorText, `navigating to ${PAGE_ORIGIN}/ failed: ${nav.errorText}`);
    let result;
    for (const deadline = Date.now() + 30_000; ;) {
      const r = await browser.send('Runtime.evaluate', { returnByValue: true,
        expression: `document.getElementById('result')?.textContent` }, page);
      const text = r.result?.value;
      if (text && text !== 'running') { result = JSON.parse(text); break; }
      must(Date.now() < deadline, 'the page did not finish within 30 s');
      await sleep(100);
    }
    log(`page ${PAGE_ORIGIN} saw: ${redact(JSON.stringify(result))}`);
    must(!result.error, `the page's MCP client failed: ${result.error}\n${notes.map(redact).join('\n')}`);
    must(result.origin === PAGE_ORIGIN, `the page ran on ${result.origin}`);
    must(typeof result.session === 'string' && result.session.length > 0, 'Mcp-Session-Id was not readable from the page');
    must(result.tools.includes('trigger-call') && result.tools.includes('wait-for-call'), `tools: ${result.tools}`);
    must(result.deleted === 204, `DELETE /mcp answered ${result.deleted}`);
    if (notes.length) log(`page notes:\n${notes.map((n) => `      ${redact(n)}`).join('\n')}`);
  } finally {
    await browser.close();
    pageServer.close();
  }
}

runCheck(main, redact);
