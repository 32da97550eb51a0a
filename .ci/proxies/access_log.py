"""What a proxy's access log says about the simulated Twilio's traffic, and that no token reached it.

usage: TOKEN=… access_log.py caddy|nginx FILE
Prints "OK …" (a summary) or "FAIL …" (the reason); exit 0 either way unless the file is unreadable.
caddy: deploy/Caddyfile's JSON lines (Authorization appears there redacted, as []). nginx: deploy/nginx/voice-call-mcp.conf's `voice_call_mcp` format,
  REMOTE - [TIME] "METHOD URI PROTO" STATUS BYTES SECONDS "AGENT"
"""

from __future__ import annotations

import json
import os
import re
import sys

NGINX = re.compile(r'^\S+ - \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) ')


def entries(kind: str, text: str):
    for line in text.splitlines():
        if kind == "caddy":
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            req = rec.get("request") or {}
            if "status" in rec and req:
                status = int(rec["status"])
                # Caddy 2.6 logs an upgraded (hijacked) connection with status 0; the handshake's answer
                # is in resp_headers.
                if status == 0 and (rec.get("resp_headers") or {}).get("Sec-Websocket-Accept"):
                    status = 101
                yield req.get("method"), req.get("uri", ""), status
        else:
            m = NGINX.match(line)
            if m:
                yield m.group(1), m.group(2), int(m.group(3))


def main() -> int:
    kind, path = sys.argv[1], sys.argv[2]
    text = open(path, encoding="utf-8", errors="replace").read()
    token = os.environ.get("TOKEN", "")
    if token and token in text:
        print("FAIL the bearer token appears in the proxy's access log")
        return 0
    seen = list(entries(kind, text))
    media = [s for m, u, s in seen if m == "GET" and u.split("?")[0] == "/twilio/media"]
    status = [s for m, u, s in seen if m == "POST" and u.split("?")[0] == "/twilio/status"]
    refused = [(m, u, s) for m, u, s in seen if u.startswith("/twilio/") and s >= 400]
    if refused:
        print(f"FAIL the server refused Twilio requests through the proxy: {refused[:3]}")
    elif 101 not in media:
        print(f"FAIL no GET /twilio/media answered 101 in the access log (saw {media or 'none'})")
    elif len([s for s in status if 200 <= s < 300]) < 3:
        print(f"FAIL fewer than 3 POST /twilio/status answered 2xx in the access log (saw {status or 'none'})")
    else:
        print(f"OK {kind} logged GET /twilio/media 101 and {len(status)} signed POST /twilio/status 2xx"
              f" ({len(seen)} requests, no token in the log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
