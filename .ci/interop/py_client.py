"""Interop check with the official Python MCP client (PyPI `mcp`, pinned in requirements.txt).

usage: MCP_TOKEN=... py_client.py URL default|legacy|unauthorized

The bearer token for /mcp comes from MCP_TOKEN (an environment variable, so it is not on the command
line), sent as `Authorization: Bearer` by the client's own HTTP client.

default: `Client(url)` -- mode="auto": probes `server/discover` and adopts 2026-07-28
         (stateless). If the server does not answer discover it silently falls back
         to initialize, so the negotiated version is asserted to be 2026-07-28.
legacy:  `Client(url, mode="legacy")` -- forces the initialize handshake (sessions,
         newest handshake-era version, 2025-11-25 in mcp 2.3.0). Leaving the client ends the
         session with DELETE; the client only logs a refusal ("Session termination failed: 202"
         for anything but 200/204), so its log is checked for that.
unauthorized: the client without a token must be refused, and the server's 401 must name
         the RFC 9728 metadata document, which must name this resource.

Exit 0 when every step passed; prints one line per step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from typing import Any

import os
import urllib.error
import urllib.request

from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

EXPECTED_TOOLS = {"trigger-call", "get-call", "list-calls", "end-call", "wait-for-call"}
TRIGGER_KEYS = {"callSid", "status", "message", "sseUrl", "resourceUri"}
UNKNOWN_SID = "CA00000000000000000000000000000000"


class CheckFailed(Exception):
    pass


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def dump(result: Any) -> str:
    try:
        return json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True))[:1500]
    except Exception:  # noqa: BLE001 - diagnostics only
        return repr(result)[:1500]


class Warnings(logging.Handler):
    """What the client's transport logs at WARNING and above: it reports a failed DELETE only there."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def transport(url: str):
    token = os.environ.get("MCP_TOKEN", "")
    require(token != "", "MCP_TOKEN is not set")
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return streamable_http_client(url, http_client=http)


def unauthorized(url: str) -> None:
    """Without a token: 401, a Bearer challenge naming the metadata, and metadata naming this resource."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise CheckFailed("a request without a token was served")
    except urllib.error.HTTPError as e:
        require(e.code == 401, f"expected 401, got {e.code}")
        challenge = e.headers.get("WWW-Authenticate", "")
        print(f"  401 WWW-Authenticate: {challenge}")
        require(challenge.startswith("Bearer "), "the challenge is not Bearer")
        marker = 'resource_metadata="'
        require(marker in challenge, "the challenge does not name resource_metadata")
        metadata_url = challenge.split(marker, 1)[1].split('"', 1)[0]
    with urllib.request.urlopen(metadata_url, timeout=10) as r:
        metadata = json.load(r)
    print(f"  metadata: {json.dumps(metadata)}")
    require(metadata.get("resource") == url, f"metadata resource {metadata.get('resource')!r} is not {url!r}")
    require(metadata.get("bearer_methods_supported") == ["header"], "tokens must be accepted in the header only")
    require("calls:write" in metadata.get("scopes_supported", []), "scopes_supported lacks calls:write")


async def run(url: str, mode: str) -> None:
    if mode == "unauthorized":
        unauthorized(url)
        return
    warnings = Warnings()
    logging.getLogger("mcp.client.streamable_http").addHandler(warnings)
    client = (Client(transport(url)) if mode == "default"
              else Client(transport(url), mode="legacy", read_timeout_seconds=30))
    async with client:
        version = client.protocol_version
        print(f"  negotiated protocol version: {version}")
        if mode == "default":
            require(version == "2026-07-28", f"default mode negotiated {version}, expected 2026-07-28 "
                    "(server/discover not answered? the client fell back to initialize)")
        else:
            require(version in HANDSHAKE_PROTOCOL_VERSIONS, f"legacy mode negotiated {version}")

        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        print(f"  tools/list: {sorted(names)}")
        require(EXPECTED_TOOLS <= names, f"missing tools: {sorted(EXPECTED_TOOLS - names)}")

        trig = await client.call_tool(
            "trigger-call",
            {"toNumber": "+15005550006", "callContext": f"interop check (python {mode})"},
        )
        print(f"  trigger-call: {dump(trig)}")
        require(not trig.is_error, "trigger-call returned isError=true")
        sc = trig.structured_content
        require(isinstance(sc, dict), "trigger-call has no structuredContent object")
        require(TRIGGER_KEYS <= set(sc), f"trigger-call structuredContent lacks {sorted(TRIGGER_KEYS - set(sc))}")
        sid = sc["callSid"]
        require(isinstance(sid, str) and sid != "", "callSid is not a non-empty string")

        got = await client.call_tool("get-call", {"callSid": sid})
        print(f"  get-call: {dump(got)}")
        require(not got.is_error, "get-call returned isError=true")
        require(isinstance(got.structured_content, dict), "get-call has no structuredContent object")
        require(got.structured_content.get("callSid") == sid,
                f"get-call callSid {got.structured_content.get('callSid')!r} != {sid!r}")

        try:
            unknown = await client.call_tool("get-call", {"callSid": UNKNOWN_SID})
        except Exception as e:  # noqa: BLE001
            raise CheckFailed(f"get-call on an unknown sid raised instead of returning isError=true: {e!r}") from e
        print(f"  get-call(unknown): {dump(unknown)}")
        require(unknown.is_error, "get-call on an unknown sid did not return isError=true")
    # Leaving the client has ended the session (legacy mode) with DELETE; a refusal is only logged.
    failed = [m for m in warnings.messages if "Session termination failed" in m]
    require(not failed, f"the client could not end its session: {failed}")


def main() -> int:
    url, mode = sys.argv[1], sys.argv[2]
    if mode not in ("default", "legacy", "unauthorized"):
        print("mode must be default, legacy or unauthorized", file=sys.stderr)
        return 2
    try:
        asyncio.run(asyncio.wait_for(run(url, mode), timeout=90))
    except CheckFailed as e:
        print(f"  FAILED: {e}")
        return 1
    except BaseException as e:  # noqa: BLE001 - report anything, incl. ExceptionGroup
        print(f"  FAILED with exception: {e!r}")
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
