#!/usr/bin/env bash
# Browser check: a real browser's EventSource follows a call on GET /events, cross-origin, with the token
# in the `access_token` query parameter.
#
#   bash .ci/browser/run.sh [BINARY]      default BINARY: target/debug/voice-call-mcp (repo root)
#
# Installs Debian's chromium if /usr/bin/chromium is missing (needs root). Starts
# `BINARY serve --sandbox` on a free loopback port with a known JWT_SECRET and SSE_CORS_ORIGIN set to the
# origin of a page that check.mjs serves on another loopback port, mints an events:read token with
# `BINARY token`, then check.mjs (plain Node >= 18, no npm packages) drives headless Chromium over the
# DevTools pipe to the page, places a sandbox call with trigger-call over MCP, and polls the page's DOM
# until it shows connected, call-status, transcription (ai and human) and call-ended for that callSid.
# Screenshot and logs: .ci/browser/results/. Prints PASS/FAIL, ends with "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RESULTS="$HERE/results"
BIN=${1:-"$REPO/target/debug/voice-call-mcp"}
# The server runs from an empty temp directory (no .env is read there), so the path must be absolute.
[[ "$BIN" == /* ]] || BIN="$PWD/$BIN"
CHROMIUM=/usr/bin/chromium
NAME=browser-eventsource

log() { printf '[browser] %s\n' "$*"; }
fail() {
  printf 'FAIL  %s (%s)\n' "$NAME" "$1"
  if [[ -n "${SERVER_LOG:-}" && -f "$SERVER_LOG" ]]; then
    echo "---- last 30 lines of the server log ($SERVER_LOG):"
    tail -30 "$SERVER_LOG" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/      /'
  fi
  echo "0 passed, 1 failed"
  exit 1
}

# ---------------------------------------------------------------- installs
if [[ ! -x "$CHROMIUM" ]]; then
  [[ $(id -u) == 0 ]] || fail "$CHROMIUM is missing and installing it needs root"
  log "installing Debian's chromium (once)"
  started=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || fail "apt-get update failed"
  apt-get install -y -q chromium >/dev/null || fail "apt-get install chromium failed"
  log "chromium installed in $((SECONDS - started)) s"
fi
command -v node >/dev/null || fail "node not found"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || fail "Node >= 18 needed (fetch, web streams), found $(node --version)"
[[ -x "$BIN" ]] || fail "server binary not found or not executable: $BIN"
log "versions: $("$CHROMIUM" --version 2>/dev/null | head -1), node $(node --version)"

# ---------------------------------------------------------------- server
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
PAGE_PORT=$(free_port)
while [[ $PAGE_PORT == "$PORT" ]]; do PAGE_PORT=$(free_port); done
SERVER_URL="http://127.0.0.1:$PORT"
PAGE_ORIGIN="http://127.0.0.1:$PAGE_PORT"

rm -rf "$RESULTS"; mkdir -p "$RESULTS"
SERVER_LOG="$RESULTS/server.log"
PROFILE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/voice-call-mcp-chromium.XXXXXX")

# A throwaway secret for this run; run from an empty directory so no .env is read.
export JWT_SECRET; JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
# Debug-level HTTP tracing, so the check also proves the query token never reaches a log line.
export SSE_CORS_ORIGIN="$PAGE_ORIGIN" NO_COLOR=1 RUST_LOG="info,tower_http=debug"
WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/voice-call-mcp-browser.XXXXXX")

SERVER_PID=
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$PROFILE_DIR" "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting: $BIN serve --sandbox --port $PORT --bind 127.0.0.1 (SSE_CORS_ORIGIN=$PAGE_ORIGIN)"
(cd "$WORKDIR" && exec "$BIN" serve --sandbox --port "$PORT" --bind 127.0.0.1) >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

started=$SECONDS
healthy=0
for _ in $(seq 120); do   # up to ~60 s
  kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited before becoming healthy"
  if python3 - "$SERVER_URL/healthz" 2>/dev/null <<'EOF'
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
EOF
  then healthy=1; break; fi
  sleep 0.5
done
[[ $healthy == 1 ]] || fail "/healthz not 200 within 60 s"
log "server healthy at $SERVER_URL after $((SECONDS - started)) s"

token() { (cd "$WORKDIR" && "$BIN" token "$@" 2>>"$RESULTS/token.log"); }
EVENTS_TOKEN=$(token --scope events:read --ttl 600) || fail "token --scope events:read failed: $(cat "$RESULTS/token.log")"
# For /mcp, should it ever ask for one; sent as a bearer header, never in a URL.
MCP_TOKEN=$(token --scope 'calls:write calls:read' --ttl 600) || fail "token --scope calls:write failed: $(cat "$RESULTS/token.log")"
[[ -n "$EVENTS_TOKEN" && -n "$MCP_TOKEN" ]] || fail "token printed nothing"

# ---------------------------------------------------------------- the check
rc=0
SERVER_URL="$SERVER_URL" PAGE_PORT="$PAGE_PORT" EVENTS_TOKEN="$EVENTS_TOKEN" MCP_TOKEN="$MCP_TOKEN" \
  CHROMIUM="$CHROMIUM" RESULTS="$RESULTS" PROFILE_DIR="$PROFILE_DIR" \
  timeout --kill-after=10 150 node "$HERE/check.mjs" >"$RESULTS/check.log" 2>&1 || rc=$?
cat "$RESULTS/check.log"

reason=
if [[ $rc == 124 || $rc == 137 ]]; then reason="timed out after 150 s"
elif [[ $rc != 0 ]]; then reason=$(grep -m1 '  FAILED: ' "$RESULTS/check.log" | sed 's/^  FAILED: //' || true); reason=${reason:-"exit $rc"}
fi
kill -0 "$SERVER_PID" 2>/dev/null || reason=${reason:-"the server exited during the check"}
# The README promises a query-string token is never logged.
if grep -qF -- "$EVENTS_TOKEN" "$SERVER_LOG"; then reason=${reason:-"the events token appears in the server log"}; fi
[[ -z "$reason" ]] || fail "$reason"
echo "PASS  $NAME"
echo "1 passed, 0 failed"
