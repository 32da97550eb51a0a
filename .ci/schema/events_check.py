"""Checks `GET /events` against openapi.yaml with real traffic: the whole stream, every event, to the end.

usage: SCHEMA_TOKEN=... events_check.py BASE_URL SPEC

Schemathesis reads a `/events` response only up to its first event (the stream never ends). This follows
sandbox calls instead: it opens the feed, places three calls over MCP whose simulated callees between
them make every call event type (`call-status`, `transcription`, `call-ended`, `dtmf`, `error`), reads
until all three have ended, and has schemathesis validate that response — status, content type,
headers, and each event against the spec's event schema (the `data` of each against its type's
schema). Then it resumes from an id in the middle with `Last-Event-ID` and checks the replay the same
way, and that it holds exactly the events after that id, in order. Exit 0 when everything held.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time

import requests
import yaml
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# The simulated callee is chosen by the number's last four digits (README, "Quick start").
NUMBERS = {
    "+14155550100": "a conversation: statuses, both sides' words, the end",
    "+14155550008": "presses 1: dtmf",
    "+14155550005": "says 'error please': the voice model's error event",
}
# Only on a resume older than retention, which a fresh sandbox server cannot be made to have.
NOT_PRODUCED = {"replay-truncated"}
DEADLINE_S = 60


def fail(message: str) -> None:
    print(f"FAIL: {message}")
    sys.exit(1)


def place_call(base: str, token: str, number: str) -> str:
    """`tools/call trigger-call` over MCP (2026-07-28, stateless): one POST, no session."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "trigger-call",
            "arguments": {"toNumber": number, "callContext": "Schema check: ask whether they are open on Sunday."},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "trigger-call",
    }
    r = requests.post(f"{base}/mcp", json=body, headers=headers, timeout=20)
    if r.status_code != 200:
        raise RuntimeError(f"trigger-call {number}: HTTP {r.status_code}: {r.text[:300]}")
    sid = re.search(r"CA[0-9a-f]{32}", r.text)
    if sid is None:
        raise RuntimeError(f"trigger-call {number}: no callSid in {r.text[:300]}")
    return sid.group(0)


def parse(content: bytes) -> list[dict]:
    """Events with data, as an SSE reader sees them (comments and the retry hint are not events)."""
    events = []
    for block in re.split(r"\r\n\r\n|\n\n|\r\r", content.decode("utf-8")):
        fields: dict[str, str] = {}
        for line in re.split(r"\r\n|\n|\r", block):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append(fields)
    return events


def read_until(response: requests.Response, done, what: str) -> bytes:
    """Reads the stream until `done(events so far)`; the bytes read, cut after the last complete event."""
    buf = bytearray()
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        chunk = response.raw.read1(64 * 1024)
        if not chunk:
            fail(f"{what}: the stream ended early after {len(parse(bytes(buf)))} events")
        buf += chunk
        end = max(buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n"))
        if end >= 0 and done(parse(bytes(buf[: end + 2]))):
            response.close()
            return bytes(buf[: end + 2])
    fail(f"{what}: not done within {DEADLINE_S} s; events so far: {[e.get('event') for e in parse(bytes(buf))]}")
    raise AssertionError


def validate(operation, response: requests.Response, content: bytes, what: str, **case_args) -> list[dict]:
    """Schemathesis's own response checks on what was read, as if it had read the stream itself."""
    response._content = content
    response._content_consumed = True
    case = operation.Case(**case_args)
    try:
        case.validate_response(response, checks=CHECKS)
    except BaseExceptionGroup as exc:  # schemathesis's FailureGroup, naming every violation
        fail(f"{what}: the response does not match the spec:\n{exc}")
    events = parse(content)
    print(f"ok: {what}: HTTP {response.status_code}, {response.headers.get('content-type')}, {len(events)} events valid")
    return events


def main() -> None:
    base, spec = sys.argv[1].rstrip("/"), sys.argv[2]
    token = os.environ.get("SCHEMA_TOKEN", "")
    if not token:
        fail("SCHEMA_TOKEN is not set")
    operation = schemathesis.openapi.from_path(spec)["/events"]["GET"]
    with open(spec, encoding="utf-8") as f:
        frame = yaml.safe_load(f)["components"]["schemas"]["EventFrame"]
    documented = {branch["properties"]["event"]["const"] for branch in frame["oneOf"]}
    auth = {"Authorization": f"Bearer {token}"}

    # 1. Live: open the feed, then place the calls, read until every call has ended.
    live = requests.get(f"{base}/events", headers=auth, stream=True, timeout=(5, 30))
    sids: list[str] = []
    errors: list[str] = []

    def place_all() -> None:
        for number in NUMBERS:
            try:
                sids.append(place_call(base, token, number))
            except Exception as exc:  # reported by the main thread
                errors.append(str(exc))

    placing = threading.Thread(target=place_all)
    placing.start()

    def all_ended(events: list[dict]) -> bool:
        if errors:
            fail("; ".join(errors))
        ended = {json.loads(e["data"]).get("callSid") for e in events if e.get("event") == "call-ended"}
        return len(sids) == len(NUMBERS) and set(sids) <= ended

    content = read_until(live, all_ended, "live feed")
    placing.join()
    events = validate(operation, live, content, "live feed", headers=auth)
    seen = {e["event"] for e in events}
    missing = documented - NOT_PRODUCED - seen
    if missing:
        fail(f"live feed: no {sorted(missing)} event from the sandbox calls; seen {sorted(seen)}")
    ids = [int(e["id"]) for e in events if "id" in e]
    if ids != sorted(set(ids)):
        fail(f"live feed: ids not strictly increasing: {ids}")
    undocumented = seen - documented
    if undocumented:
        fail(f"live feed: event types the spec does not name: {sorted(undocumented)}")
    print(f"ok: live feed: every event type the spec names appeared ({', '.join(sorted(seen))}) for {len(sids)} calls")

    # 2. Resume after an id in the middle: the rest of the log, in order, nothing else.
    after = ids[len(ids) // 2]
    want = [i for i in ids if i > after]
    headers = {**auth, "Last-Event-ID": str(after)}
    replay = requests.get(f"{base}/events", headers=headers, stream=True, timeout=(5, 30))
    content = read_until(replay, lambda evs: any(e.get("id") == str(ids[-1]) for e in evs), "replay")
    replayed = validate(operation, replay, content, f"replay after id {after}", headers=headers)
    got = [int(e["id"]) for e in replayed if "id" in e]
    if got != want:
        fail(f"replay after {after}: ids {got}, expected {want}")
    print(f"ok: replay after id {after}: exactly the {len(want)} later events, in order")


if __name__ == "__main__":
    main()
