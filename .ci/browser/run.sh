#!/usr/bin/env bash
# Browser checks, in headless Chromium against `BINARY serve --sandbox`:
#   browser-eventsource  a page on another origin follows a call on GET /events with EventSource, the token
#                        in the `access_token` query parameter (check.mjs, page.html)
#   browser-dashboard    the built-in GET /dashboard: paste a token, follow a call to its end (screenshot),
#                        let a short-lived token expire, give a new one, resume with lastEventId without
#                        missing or repeating anything (dashboard.mjs)
#   browser-mcp          an MCP client in a page on another loopback origin (http://localhost:PORT, as the
#                        MCP Inspector in direct mode): preflighted fetches, a session read from
#                        Mcp-Session-Id, tools/list, DELETE (mcp.mjs, mcp-page.html)
#
#   bash .ci/browser/run.sh [BINARY]      default BINARY: target/debug/voice-call-mcp (repo root)
#
# Installs Debian's chromium if /usr/bin/chromium is missing (needs root). Starts the server on a free
# loopback port with a known JWT_SECRET and PUBLIC_URL (the same for `BINARY token`), and SSE_CORS_ORIGIN
# set to the origin of the page check.mjs serves on another loopback port. Tokens are minted with
# `BINARY token --scope "calls:write calls:read events:read"`; every MCP request carries one as
# `Authorization: Bearer`. The scripts are plain Node >= 18 (no npm packages) driving Chromium over the
# DevTools pipe (lib.mjs); they place sandbox calls over MCP and poll the pages' DOM, bounded.
# Screenshots and logs: .ci/browser/results/. Prints PASS/FAIL per check, ends with "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RESULTS="$HERE/results"
BIN=${1:-"$REPO/target/debug/voice-call-mcp"}
# The server runs from an empty temp directory (no .env is read there), so the path must be absolute.
[[ "$BIN" == /* ]] || BIN="$PWD/$BIN"
CHROMIUM=/usr/bin/chromium
CHECKS=(browser-eventsource browser-dashboard browser-mcp)

log() { printf '[browser] %s\n' "$*"; }
server_tail() {
  if [[ -n "${SERVER_LOG:-}" && -f "$SERVER_LOG" ]]; then
    echo "---- last 30 lines of the server log ($SERVER_LOG):"
    tail -30 "$SERVER_LOG" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/      /'
  fi
}
# Setup failed: no check could run.
fail() {
  for name in "${CHECKS[@]}"; do printf 'FAIL  %s (%s)\n' "$name" "$1"; done
  server_tail
  echo "0 passed, ${#CHECKS[@]} failed"
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

# A throwaway secret for this run, and the public URL (a token's audience may be derived from it): both
# exported, so the server and `BINARY token` agree. Run from an empty directory so no .env is read.
export JWT_SECRET; JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export PUBLIC_URL="$SERVER_URL/"
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

log "starting: $BIN serve --sandbox --port $PORT --bind 127.0.0.1 (PUBLIC_URL=$PUBLIC_URL SSE_CORS_ORIGIN=$PAGE_ORIGIN)"
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
SCOPES="calls:write calls:read events:read"
mint() { token --scope "$SCOPES" --ttl "$1"; }
minting_failed() { fail "token --scope '$SCOPES' failed: $(cat "$RESULTS/token.log")"; }
EVENTS_TOKEN=$(mint 600) || minting_failed
MCP_TOKEN=$(mint 900) || minting_failed   # sent as `Authorization: Bearer` on every MCP request, never in a URL
DASH_TOKEN=$(mint 600) || minting_failed  # pasted into the dashboard; dashboard.mjs mints its short-lived one itself
NEXT_TOKEN=$(mint 600) || minting_failed  # pasted after that one expired
for t in "$EVENTS_TOKEN" "$MCP_TOKEN" "$DASH_TOKEN" "$NEXT_TOKEN"; do [[ -n "$t" ]] || fail "token printed nothing"; done

# ---------------------------------------------------------------- the checks
passed=0; failed=0
# run_check NAME SCRIPT TIMEOUT: runs one script, prints its output and PASS or FAIL with the reason.
run_check() {
  local name=$1 script=$2 limit=$3 rc=0 reason= out="$RESULTS/$1.log"
  local profile; profile=$(mktemp -d "$PROFILE_DIR/profile.XXXXXX")
  SERVER_URL="$SERVER_URL" PAGE_PORT="$PAGE_PORT" EVENTS_TOKEN="$EVENTS_TOKEN" MCP_TOKEN="$MCP_TOKEN" \
    DASH_TOKEN="$DASH_TOKEN" NEXT_TOKEN="$NEXT_TOKEN" BIN="$BIN" WORKDIR="$WORKDIR" SERVER_LOG="$SERVER_LOG" \
    CHROMIUM="$CHROMIUM" RESULTS="$RESULTS" PROFILE_DIR="$profile" \
    timeout --kill-after=10 "$limit" node "$HERE/$script" >"$out" 2>&1 || rc=$?
  echo "---- $name"
  cat "$out"
  if [[ $rc == 124 || $rc == 137 ]]; then reason="timed out after $limit s"
  elif [[ $rc != 0 ]]; then reason=$(grep -m1 '  FAILED: ' "$out" | sed 's/^  FAILED: //' || true); reason=${reason:-"exit $rc"}
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || reason=${reason:-"the server exited during the check"}
  # The README promises a query-string token is never logged.
  for t in "$EVENTS_TOKEN" "$DASH_TOKEN" "$NEXT_TOKEN"; do
    if grep -qF -- "$t" "$SERVER_LOG"; then reason=${reason:-"a query-string token appears in the server log"}; fi
  done
  if [[ -z "$reason" ]]; then
    echo "PASS  $name"; passed=$((passed + 1))
  else
    echo "FAIL  $name ($reason)"; failed=$((failed + 1))
  fi
}

run_check browser-eventsource check.mjs 150
run_check browser-dashboard dashboard.mjs 240
run_check browser-mcp mcp.mjs 90
(( failed == 0 )) || server_tail
echo "$passed passed, $failed failed"
(( failed == 0 ))
