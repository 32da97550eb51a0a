// One sandbox call through a TLS reverse proxy, watched from both client faces at once.
//
//   BASE=https://localhost:PORT MCP_TOKEN=… EVENTS_TOKEN=… SDK=…/@modelcontextprotocol/sdk node check.mjs
//
// NODE_EXTRA_CA_CERTS must name the proxy's CA. Opens GET /events, then an MCP session (official TS SDK,
// 2025-11-25, Streamable HTTP with its GET stream) with a bearer token, places a call with trigger-call,
// and follows it to the end. Prints one line per finding and a JSON verdict as the last line:
//   {"mcp": [ok, why], "events": [ok, why], "media": [ok, why], "callSid": "CA…"}
//   mcp     notifications/message and notifications/resources/updated for the call arrive on the session
//           after trigger-call has returned (the GET SSE stream through the proxy)
//   events  /events delivers each of the call's events as it is published, not in a burst: `connected`
//           at once, every event within a small bound of its own timestamp, the first ones while the call
//           is still in progress
//   media   the call completes with transcripts on both sides (the simulated Twilio's media WebSocket and
//           its signed status callbacks went through the proxy to PUBLIC_URL)
import { pathToFileURL } from 'node:url';

const { BASE, MCP_TOKEN, EVENTS_TOKEN, SDK } = process.env;
const TO = process.env.TO || '+14155550123'; // ends in none of the sandbox's special digits: a full talk
const { Client } = await import(pathToFileURL(`${SDK}/dist/esm/client/index.js`).href);
const { StreamableHTTPClientTransport } = await import(pathToFileURL(`${SDK}/dist/esm/client/streamableHttp.js`).href);
const { LoggingMessageNotificationSchema, ResourceUpdatedNotificationSchema } = await import(
  pathToFileURL(`${SDK}/dist/esm/types.js`).href
);

// Transcription events carry the server's clock to the nanosecond; status events carry Twilio's
// `Timestamp` (RFC 2822, whole seconds), hence the looser bound for them.
const BOUND_MS = { transcription: 750, default: 2000 };
const CONNECTED_WITHIN_MS = 2000;
const CALL_TIMEOUT_MS = 60_000;

const t0 = Date.now();
const rel = (t) => `+${((t - t0) / 1000).toFixed(3)}s`;
const say = (s) => console.log(`  ${s}`);
const verdict = { mcp: [false, 'not reached'], events: [false, 'not reached'], media: [false, 'not reached'] };

/** RFC 3339 with up to 9 fractional digits, to epoch milliseconds (Date.parse wants at most 3). */
function parseTime(s) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(s || '');
  if (!m) return NaN;
  return Date.parse(`${m[1]}.${((m[2] || '') + '000').slice(0, 3)}${m[3]}`);
}

// ---------------------------------------------------------------- /events, read as it arrives
const events = []; // {type, id, data, at}
let eventsError = null;
let wakeEvents = () => {};
async function followEvents() {
  const started = Date.now();
  const res = await fetch(`${BASE}/events`, {
    headers: { Authorization: `Bearer ${EVENTS_TOKEN}`, Accept: 'text/event-stream' },
  });
  const type = res.headers.get('content-type') || '';
  say(`/events: HTTP ${res.status} ${type} after ${Date.now() - started} ms`);
  if (res.status !== 200 || !type.startsWith('text/event-stream')) {
    throw new Error(`/events answered ${res.status} ${type}: ${(await res.text()).slice(0, 300)}`);
  }
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body) {
    const at = Date.now();
    buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = 'message', id = null, data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') type = value;
        else if (field === 'id') id = value;
        else if (field === 'data') data.push(value);
      }
      if (!data.length) continue;
      let parsed = null;
      try {
        parsed = JSON.parse(data.join('\n'));
      } catch {
        parsed = data.join('\n');
      }
      events.push({ type, id, data: parsed, at });
      wakeEvents();
    }
  }
  throw new Error('/events stream ended');
}
const eventsDone = followEvents().catch((e) => {
  eventsError = e;
  wakeEvents();
});

function waitForEvent(pred, ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), ms);
    const check = () => {
      const hit = events.find(pred);
      if (hit || eventsError) {
        clearTimeout(timer);
        resolve(hit || null);
        return true;
      }
      return false;
    };
    if (check()) return;
    const prev = wakeEvents;
    wakeEvents = () => {
      prev();
      check();
    };
  });
}

// ---------------------------------------------------------------- the check
async function run() {
  const connected = await waitForEvent((e) => e.type === 'connected', 10_000);
  if (eventsError) throw eventsError;
  if (!connected) throw new Error('/events: no `connected` event within 10 s');
  say(`/events: connected ${rel(connected.at)}`);

  const notes = []; // {method, params, at}
  const client = new Client({ name: 'voice-call-mcp-proxy-check', version: '1.0.0' });
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
    notes.push({ method: n.method, params: n.params, at: Date.now() });
  });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
    notes.push({ method: n.method, params: n.params, at: Date.now() });
  });
  const transport = new StreamableHTTPClientTransport(new URL(`${BASE}/mcp`), {
    requestInit: { headers: { Authorization: `Bearer ${MCP_TOKEN}` } },
  });
  await client.connect(transport);
  say(`mcp: protocol ${transport.protocolVersion}, session ${transport.sessionId ? 'yes' : 'no'}`);
  let sid;
  try {
    const trig = await client.callTool({
      name: 'trigger-call',
      arguments: { toNumber: TO, callContext: 'Proxy check: ask whether they are open on Sunday.' },
    });
    const returnedAt = Date.now();
    if (trig.isError) throw new Error(`trigger-call failed: ${JSON.stringify(trig.content).slice(0, 500)}`);
    sid = trig.structuredContent?.callSid;
    verdict.callSid = sid;
    say(`mcp: trigger-call returned ${rel(returnedAt)}: ${sid} ${trig.structuredContent?.status}`);

    const ended = await waitForEvent((e) => e.type === 'call-ended' && e.data?.callSid === sid, CALL_TIMEOUT_MS);
    if (eventsError) throw eventsError;
    // The session's copy of call-ended rides another stream: give it a moment.
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline && !notes.some((n) => n.params?.data?.type === 'call-ended' && n.params?.data?.callSid === sid)) {
      await new Promise((r) => setTimeout(r, 100));
    }

    // (b) /events, unbuffered
    const mine = events.filter((e) => e.data?.callSid === sid);
    for (const e of mine) {
      const lag = e.at - parseTime(e.data.timestamp);
      const what = e.type === 'transcription' ? `${e.data.speaker}: ${String(e.data.transcription).slice(0, 40)}` : e.data.status ?? '';
      say(`/events ${rel(e.at)} id=${e.id} ${e.type} ${what} (received ${lag} ms after its timestamp)`);
    }
    verdict.events = (() => {
      if (!ended) return [false, `no call-ended for ${sid} on /events within ${CALL_TIMEOUT_MS / 1000} s`];
      if (connected.at - t0 > CONNECTED_WITHIN_MS)
        return [false, `the connected event took ${connected.at - t0} ms: the proxy held the stream's start back`];
      const kinds = new Set(mine.map((e) => (e.type === 'transcription' ? `transcription/${e.data.speaker}` : e.type)));
      for (const k of ['call-status', 'transcription/ai', 'transcription/human', 'call-ended']) {
        if (!kinds.has(k)) return [false, `no ${k} event for the call (got ${[...kinds].join(', ')})`];
      }
      for (const e of mine) {
        const lag = e.at - parseTime(e.data.timestamp);
        const bound = BOUND_MS[e.type] ?? BOUND_MS.default;
        if (!(lag <= bound)) return [false, `${e.type} id=${e.id} arrived ${lag} ms after its timestamp (bound ${bound} ms): buffered`];
      }
      const endStamp = parseTime(ended.data.timestamp);
      const early = mine.filter((e) => e.type === 'transcription' && e.at < endStamp - 1000);
      if (early.length < 2) return [false, `only ${early.length} transcription(s) arrived a second or more before the call ended: delivered in a burst`];
      const spread = ended.at - mine[0].at;
      return [true, `${mine.length} events over ${(spread / 1000).toFixed(1)} s, ${early.length} transcriptions before the end, each within its bound`];
    })();

    // (a) MCP notifications after the tool returned
    const late = notes.filter((n) => n.at > returnedAt);
    const messages = late.filter((n) => n.method === 'notifications/message' && n.params?.data?.callSid === sid);
    const updates = late.filter((n) => n.method === 'notifications/resources/updated' && n.params?.uri === `call://${sid}`);
    say(`mcp: ${notes.length} notifications, ${messages.length} messages and ${updates.length} resources/updated for the call after trigger-call returned`);
    for (const n of messages.slice(0, 40)) say(`mcp ${rel(n.at)} notifications/message ${n.params.data.type} ${n.params.data.status ?? n.params.data.speaker ?? ''}`);
    verdict.mcp = (() => {
      const types = new Set(messages.map((n) => n.params.data.type));
      if (!types.has('transcription')) return [false, `no notifications/message with a transcription after the tool returned (types: ${[...types].join(', ') || 'none'})`];
      if (!types.has('call-ended')) return [false, `no notifications/message call-ended after the tool returned (types: ${[...types].join(', ')})`];
      if (!updates.length) return [false, 'no notifications/resources/updated for the call after the tool returned'];
      return [true, `${messages.length} notifications/message (${[...types].join(', ')}) and ${updates.length} resources/updated after the tool returned`];
    })();

    // (c) the call itself: completed, both sides heard (media WebSocket and status callbacks via the proxy)
    const got = await client.callTool({ name: 'get-call', arguments: { callSid: sid } });
    const call = got.structuredContent || {};
    const speakers = new Set((call.transcript || []).map((l) => l.speaker));
    say(`mcp: get-call: status ${call.status}, ${(call.transcript || []).length} transcript lines (${[...speakers].join(', ')}), errors ${JSON.stringify(call.errors || [])}`);
    verdict.media = (() => {
      if (got.isError) return [false, `get-call failed: ${JSON.stringify(got.content).slice(0, 300)}`];
      if (call.status !== 'completed') return [false, `the call ended ${call.status}, not completed`];
      if (!speakers.has('ai') || !speakers.has('human')) return [false, `transcript lacks a side: ${[...speakers].join(', ') || 'empty'}`];
      return [true, `completed, ${(call.transcript || []).length} transcript lines from both sides`];
    })();
  } finally {
    try {
      await transport.terminateSession();
    } catch {
      // not what this check is about
    }
    await client.close();
  }
}

const timer = setTimeout(() => {
  console.log('  timed out after 100 s');
  console.log(JSON.stringify(verdict));
  process.exit(1);
}, 100_000);
run().then(
  () => {
    clearTimeout(timer);
    console.log(JSON.stringify(verdict));
    process.exit(0);
  },
  (e) => {
    clearTimeout(timer);
    const why = String((e && e.message) || e).slice(0, 400);
    console.log(`  error: ${(e && e.stack) || e}`);
    for (const k of ['mcp', 'events', 'media']) if (verdict[k][1] === 'not reached') verdict[k] = [false, why];
    console.log(JSON.stringify(verdict));
    process.exit(1);
  },
);
void eventsDone;
