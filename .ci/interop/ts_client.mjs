// Interop check with the official TypeScript SDK client (npm @modelcontextprotocol/sdk 1.x,
// pinned in package.json) over StreamableHTTPClientTransport. SDK 1.32 negotiates 2025-11-25
// via initialize (sessions).
//
// usage: MCP_TOKEN=... node ts_client.mjs URL      exit 0 when every step passed
// The bearer token comes from MCP_TOKEN and is sent with every request (requestInit headers).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const url = process.argv[2];
const EXPECTED_TOOLS = ['trigger-call', 'get-call', 'list-calls', 'end-call', 'wait-for-call'];
const TRIGGER_KEYS = ['callSid', 'status', 'message', 'sseUrl', 'resourceUri'];
const UNKNOWN_SID = 'CA00000000000000000000000000000000';

class CheckFailed extends Error {}
function require(cond, msg) {
  if (!cond) throw new CheckFailed(msg);
}
const dump = (v) => JSON.stringify(v).slice(0, 1500);

async function run() {
  const client = new Client({ name: 'voice-call-mcp-interop-ts', version: '1.0.0' });
  const token = process.env.MCP_TOKEN;
  require(token, 'MCP_TOKEN is not set');
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  try {
    console.log(`  negotiated protocol version: ${transport.protocolVersion}, session: ${transport.sessionId ? 'yes' : 'no'}`);
    require(transport.protocolVersion === '2025-11-25',
      `negotiated ${transport.protocolVersion}, expected 2025-11-25`);

    const tools = await client.listTools();
    const names = tools.tools.map((t) => t.name);
    console.log(`  tools/list: ${JSON.stringify(names.slice().sort())}`);
    const missing = EXPECTED_TOOLS.filter((n) => !names.includes(n));
    require(missing.length === 0, `missing tools: ${missing.join(', ')}`);

    const trig = await client.callTool({
      name: 'trigger-call',
      arguments: { toNumber: '+15005550006', callContext: 'interop check (typescript)' },
    });
    console.log(`  trigger-call: ${dump(trig)}`);
    require(!trig.isError, 'trigger-call returned isError=true');
    const sc = trig.structuredContent;
    require(sc && typeof sc === 'object' && !Array.isArray(sc), 'trigger-call has no structuredContent object');
    const lacking = TRIGGER_KEYS.filter((k) => !(k in sc));
    require(lacking.length === 0, `trigger-call structuredContent lacks ${lacking.join(', ')}`);
    const sid = sc.callSid;
    require(typeof sid === 'string' && sid.length > 0, 'callSid is not a non-empty string');

    const got = await client.callTool({ name: 'get-call', arguments: { callSid: sid } });
    console.log(`  get-call: ${dump(got)}`);
    require(!got.isError, 'get-call returned isError=true');
    require(got.structuredContent && typeof got.structuredContent === 'object', 'get-call has no structuredContent object');
    require(got.structuredContent.callSid === sid, `get-call callSid ${got.structuredContent.callSid} != ${sid}`);

    let unknown;
    try {
      unknown = await client.callTool({ name: 'get-call', arguments: { callSid: UNKNOWN_SID } });
    } catch (e) {
      throw new CheckFailed(`get-call on an unknown sid threw instead of returning isError=true: ${e}`);
    }
    console.log(`  get-call(unknown): ${dump(unknown)}`);
    require(unknown.isError === true, 'get-call on an unknown sid did not return isError=true');
  } finally {
    try {
      await transport.terminateSession();
    } catch {
      // DELETE may be refused with 405; not what this check is about
    }
    await client.close();
  }
}

const timer = setTimeout(() => {
  console.log('  FAILED: timed out after 90 s');
  process.exit(1);
}, 90_000);
run().then(
  () => {
    clearTimeout(timer);
    process.exit(0);
  },
  (e) => {
    clearTimeout(timer);
    console.log(`  FAILED: ${e instanceof CheckFailed ? e.message : (e && e.stack) || e}`);
    process.exit(1);
  },
);
