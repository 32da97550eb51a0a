#!/usr/bin/env bash
# The schema check: openapi.yaml against the running server.
#
#   bash .ci/schema/run.sh [BINARY]      default BINARY: target/debug/voice-call-mcp (repo root)
#
# Installs schemathesis (pinned, requirements.txt) under .ci/schema/.venv, starts
# `BINARY serve --sandbox` on a free loopback port and reads the token it prints, and a second server
# with made-up Twilio credentials (nothing is dialed), then runs:
#   events-stream  events_check.py: /events followed through three sandbox calls to their end, and a
#                  resume; every event, the headers and the content type validated against the spec by
#                  schemathesis's own checks (schemathesis itself reads a stream only to its first event)
#   schemathesis   `schemathesis run openapi.yaml` (settings in schemathesis.toml): every operation, with
#                  examples, coverage and fuzzing phases; any response the spec does not describe (status,
#                  content type, headers, body), valid data refused or invalid data accepted, an
#                  undocumented method not 405, or a secured route answering without its credentials, fails
#   schemathesis-signed-webhooks  the same for Twilio's three webhooks on the second server, each request
#                  signed (twilio_signer.py), so the handlers' answers are checked and not only the 403
# The rate limits are raised on both servers: the fuzzer sends hundreds of requests a second from one
# address, and the spec's 429s are exercised by the integration tests, not here.
# Prints PASS/FAIL per check, ends with "N passed, M failed"; exits 1 if any failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV="$HERE/.venv"
RESULTS="$HERE/results"
SPEC="$REPO/openapi.yaml"
BIN=${1:-"$REPO/target/debug/voice-call-mcp"}
# Test cases per operation and phase: 500 makes ~3,500 requests in ~30 s on 2 cores.
MAX_EXAMPLES=${SCHEMA_MAX_EXAMPLES:-500}

log() { printf '[schema] %s\n' "$*"; }
die() { printf '[schema] ERROR: %s\n' "$*" >&2; echo "0 passed, 1 failed"; exit 1; }

# ---------------------------------------------------------------- install (idempotent)
# shellcheck source=../lib/venv.sh
source "$HERE/../lib/venv.sh"
install_python() { install_venv "$VENV" "$HERE/requirements.txt"; }

install_python
log "versions: schemathesis $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))')"

# ---------------------------------------------------------------- servers
[[ -x "$BIN" ]] || die "server binary not found or not executable: $BIN"
free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rm -rf "$RESULTS"; mkdir -p "$RESULTS"
PIDS=()
stop_servers() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap stop_servers EXIT
trap 'exit 130' INT TERM

# start LOG PORT [VAR=value...] [--sandbox]: the server on 127.0.0.1:PORT, its output in LOG; waits for it.
start() {
  local log=$1 port=$2; shift 2
  local settings=() flags=()
  for a in "$@"; do [[ $a == --* ]] && flags+=("$a") || settings+=("$a"); done
  log "starting: $BIN serve ${flags[*]} --port $port --bind 127.0.0.1"
  env NO_COLOR=1 RATE_LIMIT_MCP=1000000 RATE_LIMIT_EVENTS=1000000 RATE_LIMIT_TWILIO=1000000 \
    SSE_MAX_CONNECTIONS_PER_SUBJECT=1000 "${settings[@]}" \
    "$BIN" serve "${flags[@]}" --port "$port" --bind 127.0.0.1 >"$log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 120); do   # up to ~60 s
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "server exited at start ($log)"; }
    grep -q 'voice-call-mcp listening' "$log" && return
    sleep 0.5
  done
  tail -50 "$log" >&2; die "server not listening within 60 s ($log)"
}

# The server under test: sandbox mode, as a developer runs it.
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
SERVER_LOG="$RESULTS/server.log"
start "$SERVER_LOG" "$PORT" --sandbox
# Sandbox mode makes up a JWT secret and prints a token with every scope for it, just after listening.
for _ in $(seq 20); do grep -q '^Access token (24 h, every scope): ' "$SERVER_LOG" && break; sleep 0.25; done
SCHEMA_TOKEN=$(sed -n 's/^Access token (24 h, every scope): //p' "$SERVER_LOG" | head -1)
[[ -n "$SCHEMA_TOKEN" ]] || { tail -50 "$SERVER_LOG" >&2; die "the sandbox server printed no access token"; }
export SCHEMA_TOKEN   # read by events_check.py and by schemathesis.toml (`${SCHEMA_TOKEN}`), never on a command line
log "server up at $BASE"

# Sandbox mode signs Twilio's webhooks with a secret of its own making, so every webhook the fuzzer sends
# it is (rightly) 403. To reach the handlers behind the signature check, a second server runs with
# Twilio credentials this script makes up, and the fuzzer signs with them (twilio_signer.py). Nothing
# is dialed: no call is placed, and its Twilio and OpenAI addresses are a closed port.
SIGNED_PORT=$(free_port)
SIGNED_BASE="http://127.0.0.1:$SIGNED_PORT"
TWILIO_AUTH_TOKEN=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
export TWILIO_AUTH_TOKEN   # read by twilio_signer.py
start "$RESULTS/server-signed.log" "$SIGNED_PORT" PUBLIC_URL="$SIGNED_BASE" \
  TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_NUMBER=+15005550006 \
  TWILIO_API_BASE=http://127.0.0.1:9 OPENAI_API_KEY=sk-unused OPENAI_REALTIME_URL=ws://127.0.0.1:9 \
  JWT_SECRET="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))')" DATABASE_URL=sqlite::memory:

# ---------------------------------------------------------------- checks
PASSED=0; FAILED=0; FAILED_NAMES=()

# check NAME TIMEOUT_S CMD...   runs CMD, output to results/NAME.log
check() {
  local name=$1 secs=$2; shift 2
  local out="$RESULTS/$name.log" rc=0 started=$SECONDS
  timeout --kill-after=10 "$secs" "$@" >"$out" 2>&1 || rc=$?
  if [[ $rc == 0 ]]; then
    PASSED=$((PASSED + 1)); echo "PASS  $name ($((SECONDS - started)) s)"
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name")
    [[ $rc == 124 ]] && echo "FAIL  $name (timed out after ${secs}s)" || echo "FAIL  $name (exit $rc)"
    sed 's/^/      /' "$out" | tail -150
  fi
}

check events-stream 120 "$VENV/bin/python" "$HERE/events_check.py" "$BASE" "$SPEC"
# The events above are in the log now: the `lastEventId` example ("0") makes schemathesis replay them too.
check schemathesis 240 "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis.toml" run "$SPEC" \
  --url "$BASE" --max-examples "$MAX_EXAMPLES" --no-color \
  --report junit,ndjson --report-dir "$RESULTS/schemathesis"
summary() {   # what a schemathesis run did, for the CI log: its phases and the count of test cases
  grep -E '^ +(✅|❌|⏭) +(Examples|Coverage|Fuzzing) \(in|^  [0-9]+ generated|^Seed:' "$RESULTS/$1.log" | sed 's/^ */      /' || true
}
summary schemathesis
check schemathesis-signed-webhooks 240 env PYTHONPATH="$HERE" SCHEMATHESIS_HOOKS=twilio_signer \
  "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis.toml" run "$SPEC" \
  --url "$SIGNED_BASE" --max-examples "$MAX_EXAMPLES" --no-color --include-path-regex '^/twilio/(status|recording|amd)$' \
  --report junit,ndjson --report-dir "$RESULTS/schemathesis-signed-webhooks"
summary schemathesis-signed-webhooks

for pid in "${PIDS[@]}"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("server-alive"); echo "FAIL  server-alive (a server exited during the checks)"
  fi
done
if [[ $FAILED -gt 0 ]]; then
  echo "---- failed: ${FAILED_NAMES[*]}"
  for server_log in "$SERVER_LOG" "$RESULTS/server-signed.log"; do
    echo "---- last 40 lines of $server_log:"
    tail -40 "$server_log" | sed 's/^/      /'
  done
  echo "---- full logs and reports: $RESULTS"
fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
