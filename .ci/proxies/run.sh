#!/usr/bin/env bash
# The deploy/ recipes, checked: each configuration file validated by its own tool, then the server run
# behind each shipped reverse-proxy configuration, over TLS on loopback.
#
#   bash .ci/proxies/run.sh [BINARY]      default BINARY: target/debug/voice-call-mcp (repo root)
#
# Installs Debian's caddy and nginx when missing (needs root). Static checks: the Caddyfile adapts and
# validates (both TLS modes), the nginx site passes `nginx -t`, the systemd unit passes
# `systemd-analyze verify` (when present), the Kubernetes manifests parse (and render with
# `kubectl kustomize` when present), docker-compose.yml and fly.toml parse and say what they must, and
# the Dockerfile has the shape the README promises (images cannot be pulled here, so it is not built).
#
# Then, for Caddy (deploy/Caddyfile with TLS_MODE=internal: Caddy's own CA) and nginx
# (deploy/nginx/voice-call-mcp.conf with host, ports, upstream, paths and a certificate from a CA made
# with openssl here substituted): `BINARY serve --sandbox` with PUBLIC_URL=https://localhost:PROXY_PORT
# behind the proxy, and check.mjs (the official TS SDK from .ci/interop/node_modules) proves through it:
#   PROXY mcp-notifications   an MCP session (bearer JWT) gets notifications for its call after
#                             trigger-call returned, on its GET SSE stream
#   PROXY events-unbuffered   GET /events (bearer JWT) delivers each event as it is published
#   PROXY twilio-media        the simulated Twilio dials wss://localhost:PORT/twilio/media and posts its
#                             signed status callbacks to https://localhost:PORT/twilio/status through the
#                             proxy (trusting the test CA through SSL_CERT_FILE), and the call completes
#                             with transcripts on both sides; the proxy's access log shows them
# Prints PASS/FAIL per check, ends with "N passed, M failed"; exits 1 if any failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# PROXIES_DEPLOY_DIR: check a modified copy of deploy/ (e.g. to see a broken proxy config fail).
DEPLOY=${PROXIES_DEPLOY_DIR:-"$REPO/deploy"}
INTEROP="$REPO/.ci/interop"
SDK="$INTEROP/node_modules/@modelcontextprotocol/sdk"
RESULTS="$HERE/results"
BIN=${1:-"$REPO/target/debug/voice-call-mcp"}
[[ "$BIN" == /* ]] || BIN="$PWD/$BIN"

log() { printf '[proxies] %s\n' "$*"; }
die() { printf '[proxies] ERROR: %s\n' "$*" >&2; echo "0 passed, 1 failed"; exit 1; }
strip_ansi() { sed -e 's/\x1b\[[0-9;]*m//g'; }

PASSED=0; FAILED=0; FAILED_NAMES=()
pass() { PASSED=$((PASSED + 1)); echo "PASS  $1${2:+ ($2)}"; }
fail() { FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); echo "FAIL  $1 ($2)"; }

# ---------------------------------------------------------------- installs (idempotent)
missing=()
command -v caddy >/dev/null || missing+=(caddy)
command -v nginx >/dev/null || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || die "${missing[*]} missing and installing needs root"
  log "installing Debian's ${missing[*]} (once)"
  started=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  log "installed in $((SECONDS - started)) s"
fi
# The Debian packages start their services where an init system runs; the checks start their own.
[[ -x "$BIN" ]] || die "server binary not found or not executable: $BIN"
# The TS SDK and Node 22 that .ci/interop/run.sh installs (it runs first in .ci/run); alone, install them.
if [[ ! -f "$SDK/package.json" ]]; then
  command -v npm >/dev/null || die "npm not found (needed for .ci/interop's node_modules)"
  log "no $SDK: npm ci in $INTEROP"
  (cd "$INTEROP" && npm ci --no-audit --no-fund --loglevel=error) >/dev/null || die "npm ci in $INTEROP failed"
fi
NODE="$INTEROP/node_modules/.bin/node"
"$NODE" --version >/dev/null 2>&1 || NODE=node
"$NODE" -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || die "Node >= 20 needed, found $("$NODE" --version)"
PY=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import yaml, tomllib' 2>/dev/null; then PY=$p; break; fi
done
if [[ -z "$PY" ]]; then
  [[ $(id -u) == 0 ]] || die "no python3 with PyYAML (and tomllib) and installing python3-yaml needs root"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-yaml >/dev/null || die "apt-get install python3-yaml failed"
  PY=/usr/bin/python3
fi
log "versions: caddy $(caddy version | cut -d' ' -f1), $(nginx -v 2>&1 | cut -d' ' -f3), node $("$NODE" --version), SDK $("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$SDK/package.json")"

rm -rf "$RESULTS"; mkdir -p "$RESULTS"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/voice-call-mcp-proxies.XXXXXX")
chmod 755 "$TMP"
PIDS=()
stop() { # stop PID: SIGTERM, then SIGKILL after 5 s
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop "$pid"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- static checks
# static NAME CMD...: PASS when CMD exits 0; its output is kept in results/ and shown on failure
static() {
  local name=$1 out="$RESULTS/static-${1//[^A-Za-z0-9._-]/_}.log" rc=0; shift
  "$@" >"$out" 2>&1 || rc=$?
  if [[ $rc == 0 ]]; then pass "$name"; else fail "$name" "exit $rc"; sed 's/^/      /' "$out" | head -40; fi
}

caddy_static() {
  local mode site
  for mode in acme internal; do
    site=https://calls.example.com
    [[ $mode == internal ]] && site=https://localhost:8443
    SITE_ADDRESS=$site UPSTREAM=127.0.0.1:8080 TLS_MODE=$mode \
      caddy adapt --config "$DEPLOY/Caddyfile" --adapter caddyfile --validate >"$TMP/caddy-$mode.json" 2>"$TMP/caddy-$mode.err" \
      || { cat "$TMP/caddy-$mode.err"; return 1; }
    # What the file must keep saying, read from the adapted JSON.
    "$PY" - "$TMP/caddy-$mode.json" "$mode" <<'EOF' || return 1
import json, sys
conf, mode = json.load(open(sys.argv[1])), sys.argv[2]
def walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values(): yield from walk(v)
    elif isinstance(node, list):
        for v in node: yield from walk(v)
proxies = [n for n in walk(conf["apps"]["http"]) if n.get("handler") == "reverse_proxy"]
assert len(proxies) == 1, f"{len(proxies)} reverse_proxy handlers"
p = proxies[0]
assert p.get("flush_interval") == -1, f"flush_interval is {p.get('flush_interval')}, not -1"
assert p["upstreams"] == [{"dial": "127.0.0.1:8080"}], p["upstreams"]
t = p.get("transport", {})
assert not t.get("read_timeout") and not t.get("write_timeout"), f"upstream timeouts set: {t}"
assert not any(n.get("handler") == "encode" for n in walk(conf["apps"]["http"])), "encode would buffer SSE"
issuers = [i["module"] for pol in conf["apps"].get("tls", {}).get("automation", {}).get("policies", []) for i in pol.get("issuers", [])]
assert (mode == "internal") == (issuers == ["internal"]), f"{mode}: issuers {issuers}"
assert conf["apps"].get("pki", {}).get("certificate_authorities", {}).get("local", {}).get("install_trust") is False, "skip_install_trust missing"
print(f"caddy {mode}: ok")
EOF
  done
  caddy fmt "$DEPLOY/Caddyfile" | diff -u "$DEPLOY/Caddyfile" - || { echo "run: caddy fmt --overwrite deploy/Caddyfile"; return 1; }
}
static "static caddy: deploy/Caddyfile adapts and validates (acme and internal TLS)" caddy_static

# A CA and a certificate for localhost, 127.0.0.1 and ::1: the nginx checks' TLS, and nginx -t's.
make_ca() {
  local d=$1
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=voice-call-mcp CI test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/leaf.key" -out "$d/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$d/leaf.ext"
  openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/leaf.ext" -out "$d/leaf.crt" 2>/dev/null
  cat "$d/leaf.crt" "$d/ca.crt" >"$d/fullchain.pem"
}
mkdir -p "$TMP/nginx-ca"; make_ca "$TMP/nginx-ca" || die "openssl could not make the test CA"

# nginx_site DIR HOST_PORT HTTP_PORT UPSTREAM ACCESS_LOG: deploy/nginx/voice-call-mcp.conf with the example
# values replaced, each of which must be found (a changed file cannot slip past the substitution), into
# DIR/site.conf, and DIR/nginx.conf around it.
nginx_site() {
  local dir=$1 port=$2 http=$3 upstream=$4 access=$5 src="$DEPLOY/nginx/voice-call-mcp.conf" s
  s=$(cat "$src")
  replace() { # replace LITERAL WITH
    [[ "$s" == *"$1"* ]] || { echo "nginx site: '$1' not found in $src"; return 1; }
    s=${s//"$1"/"$2"}
  }
  replace /etc/letsencrypt/live/calls.example.com/fullchain.pem "$TMP/nginx-ca/fullchain.pem" || return 1
  replace /etc/letsencrypt/live/calls.example.com/privkey.pem "$TMP/nginx-ca/leaf.key" || return 1
  replace /var/log/nginx/voice-call-mcp.access.log "$access" || return 1
  replace calls.example.com localhost || return 1
  replace "server 127.0.0.1:8080;" "server $upstream;" || return 1
  replace "listen 443 ssl http2;" "listen 127.0.0.1:$port ssl http2;" || return 1
  replace "listen [::]:443 ssl http2;" "listen [::1]:$port ssl http2;" || return 1
  replace "listen 80;" "listen 127.0.0.1:$http;" || return 1
  replace "listen [::]:80;" "listen [::1]:$http;" || return 1
  if ! ip -6 addr show dev lo 2>/dev/null | grep -q '::1'; then s=$(grep -v 'listen \[::1\]' <<<"$s"); fi
  printf '%s\n' "$s" >"$dir/site.conf"
  mkdir -p "$dir/temp"; chmod 1777 "$dir/temp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log info;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path $dir/temp/body;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    access_log off;
    include $dir/site.conf;
}
EOF
}
nginx_static() {
  mkdir -p "$TMP/nginx-static"
  nginx_site "$TMP/nginx-static" 8443 8080 127.0.0.1:18080 "$TMP/nginx-static/access.log" || return 1
  nginx -t -q -c "$TMP/nginx-static/nginx.conf" -p "$TMP/nginx-static" -g 'daemon off;'
}
static "static nginx: deploy/nginx/voice-call-mcp.conf passes nginx -t" nginx_static

systemd_static() {
  # verify wants ExecStart to exist: point it at the binary under test. It exits 0 on unknown keys and bad
  # values, so any output at all is a failure.
  sed "s#/usr/local/bin/voice-call-mcp#$BIN#g" "$DEPLOY/systemd/voice-call-mcp.service" >"$TMP/voice-call-mcp.service"
  local out
  out=$(systemd-analyze verify "$TMP/voice-call-mcp.service" 2>&1) || { echo "$out"; return 1; }
  [[ -z "$out" ]] || { echo "$out"; return 1; }
  local unit="$DEPLOY/systemd/voice-call-mcp.service" key
  for key in DynamicUser=yes ProtectSystem=strict StateDirectory= EnvironmentFile= Restart=on-failure KillSignal=SIGTERM TimeoutStopSec=; do
    grep -q "^$key" "$unit" || { echo "$unit lacks $key"; return 1; }
  done
}
if command -v systemd-analyze >/dev/null; then
  static "static systemd: deploy/systemd/voice-call-mcp.service passes systemd-analyze verify" systemd_static
else
  log "systemd-analyze not installed: the unit is not verified"
fi

static "static deploy files: k8s manifests, docker-compose.yml, fly.toml, Dockerfile say what they must" \
  "$PY" "$HERE/static.py" "$DEPLOY" "$REPO/Cargo.toml"
if command -v kubectl >/dev/null; then
  static "static k8s: kubectl kustomize deploy/k8s renders" kubectl kustomize "$DEPLOY/k8s"
fi
if docker compose version >/dev/null 2>&1; then
  static "static compose: docker compose config" \
    env PUBLIC_URL=https://calls.example.com docker compose -f "$DEPLOY/docker-compose.yml" --env-file /dev/null config -q
else
  log "no docker compose plugin: docker-compose.yml checked by static.py only"
fi

# ---------------------------------------------------------------- live: the server behind each proxy
export JWT_SECRET; JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
WORKDIR="$TMP/work"; mkdir -p "$WORKDIR"   # empty: no .env is read

# wait_https URL CA SECONDS: until GET URL answers 200 over TLS trusting CA
wait_https() {
  local url=$1 ca=$2 secs=$3 i
  for ((i = 0; i < secs * 4; i++)); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$ca" "$url" 2>/dev/null)" == 200 ]] && return 0
    sleep 0.25
  done
  return 1
}

# live PROXY: the proxy and its CA must be up (PROXY_PORT, CA, PROXY_LOG set); starts the server, runs
# check.mjs, prints the three verdicts.
live() {
  local proxy=$1 dir="$RESULTS/$1" port server_pid rc=0
  port=$SERVER_PORT
  log "$proxy: starting $BIN serve --sandbox --port $port (PUBLIC_URL=https://localhost:$PROXY_PORT)"
  # SSL_CERT_FILE: the simulated Twilio's HTTP client (reqwest, rustls-platform-verifier) and its media
  # WebSocket (tokio-tungstenite, native roots) read the system roots, which this replaces with the test CA.
  local server_env=(SANDBOX=true PUBLIC_URL="https://localhost:$PROXY_PORT" BIND=127.0.0.1 PORT="$port"
    SSL_CERT_FILE="$CA" NO_COLOR=1 RUST_LOG=info)
  (cd "$WORKDIR" && exec env "${server_env[@]}" "$BIN" serve) >"$dir/server.log" 2>&1 &
  server_pid=$!; PIDS+=("$server_pid")
  local started=$SECONDS
  if ! wait_https "https://localhost:$PROXY_PORT/healthz" "$CA" 60; then
    for name in mcp-notifications events-unbuffered twilio-media; do fail "$proxy $name" "no 200 from https://localhost:$PROXY_PORT/healthz through $proxy within 60 s"; done
    tail -20 "$dir/server.log" | strip_ansi | sed 's/^/      /'; tail -20 "$PROXY_LOG" | sed 's/^/      /'
    stop "$server_pid"; return
  fi
  log "$proxy: healthy through the proxy after $((SECONDS - started)) s"
  local token
  # Minted under the server's own settings (JWT_SECRET, and whatever else may come to shape a token).
  token=$(cd "$WORKDIR" && env "${server_env[@]}" "$BIN" token --scope "calls:write calls:read events:read" --ttl 600 2>"$dir/token.log") \
    || { fail "$proxy token" "$(cat "$dir/token.log")"; stop "$server_pid"; return; }

  started=$SECONDS
  BASE="https://localhost:$PROXY_PORT" MCP_TOKEN="$token" EVENTS_TOKEN="$token" SDK="$SDK" NODE_EXTRA_CA_CERTS="$CA" \
    timeout --kill-after=10 120 "$NODE" "$HERE/check.mjs" >"$dir/check.log" 2>&1 || rc=$?
  log "$proxy: check.mjs exit $rc after $((SECONDS - started)) s"
  sed '$d' "$dir/check.log" | sed 's/^/    /'
  local verdict; verdict=$(tail -1 "$dir/check.log")
  stop "$server_pid"

  # What the proxy saw and what the server said, for the media check.
  local proxy_says server_says
  proxy_says=$(TOKEN="$token" "$PY" "$HERE/access_log.py" "$proxy" "$dir/access.log") || proxy_says="FAIL cannot read the access log"
  server_says=""
  grep -q 'media stream started' "$dir/server.log" || server_says="the server logged no 'media stream started'"
  if grep -qE 'webhook rejected|media stream refused' "$dir/server.log"; then
    server_says="the server rejected a signature: $(grep -m1 -E 'webhook rejected|media stream refused' "$dir/server.log" | strip_ansi | cut -c1-200)"
  fi

  local name key
  for name in mcp-notifications events-unbuffered twilio-media; do
    case $name in mcp-notifications) key=mcp ;; events-unbuffered) key=events ;; twilio-media) key=media ;; esac
    local line
    line=$("$PY" -c 'import json,sys
try: v = json.loads(sys.argv[1])[sys.argv[2]]
except Exception: v = [False, "check.mjs gave no verdict"]
print(("ok " if v[0] else "no ") + v[1])' "$verdict" "$key")
    if [[ $name == twilio-media && $line == ok* ]]; then
      if [[ $proxy_says != OK* ]]; then line="no $proxy_says"
      elif [[ -n $server_says ]]; then line="no $server_says"
      else line="$line; ${proxy_says#OK }"; fi
    fi
    if [[ $line == ok* ]]; then pass "$proxy $name" "${line#ok }"; else fail "$proxy $name" "${line#no }"; fi
  done
  if [[ $rc != 0 ]] || [[ $line != ok* ]]; then
    echo "    ---- last 15 lines of the server log ($dir/server.log):"
    tail -15 "$dir/server.log" | strip_ansi | sed 's/^/      /'
  fi
}

# ---- Caddy: deploy/Caddyfile as shipped, TLS_MODE=internal
mkdir -p "$RESULTS/caddy" "$TMP/caddy"
PROXY_PORT=$(free_port); SERVER_PORT=$(free_port); CADDY_HTTP=$(free_port); CADDY_ADMIN_PORT=$(free_port)
log "caddy: https://localhost:$PROXY_PORT -> 127.0.0.1:$SERVER_PORT (deploy/Caddyfile, TLS_MODE=internal)"
# Access log (stdout) and runtime log (stderr) apart. Its data (the CA) under $TMP, not the home directory.
env SITE_ADDRESS="https://localhost:$PROXY_PORT" UPSTREAM="127.0.0.1:$SERVER_PORT" TLS_MODE=internal \
  HTTP_PORT="$CADDY_HTTP" CADDY_ADMIN="127.0.0.1:$CADDY_ADMIN_PORT" \
  XDG_DATA_HOME="$TMP/caddy/data" XDG_CONFIG_HOME="$TMP/caddy/config" HOME="$TMP/caddy" \
  caddy run --config "$DEPLOY/Caddyfile" --adapter caddyfile >"$RESULTS/caddy/access.log" 2>"$RESULTS/caddy/caddy.log" &
CADDY_PID=$!; PIDS+=("$CADDY_PID")
CA="$TMP/caddy/data/caddy/pki/authorities/local/root.crt"
for _ in $(seq 120); do [[ -s "$CA" ]] && break; kill -0 "$CADDY_PID" 2>/dev/null || break; sleep 0.25; done
if [[ -s "$CA" ]] && kill -0 "$CADDY_PID" 2>/dev/null; then
  PROXY_LOG="$RESULTS/caddy/caddy.log" live caddy
else
  for name in mcp-notifications events-unbuffered twilio-media; do fail "caddy $name" "caddy did not start (or made no CA) within 30 s"; done
  tail -20 "$RESULTS/caddy/caddy.log" | sed 's/^/      /'
fi
stop "$CADDY_PID"

# ---- nginx: deploy/nginx/voice-call-mcp.conf with the test host, ports and certificate
mkdir -p "$RESULTS/nginx"
PROXY_PORT=$(free_port); SERVER_PORT=$(free_port); NGINX_HTTP=$(free_port)
log "nginx: https://localhost:$PROXY_PORT -> 127.0.0.1:$SERVER_PORT (deploy/nginx/voice-call-mcp.conf)"
mkdir -p "$TMP/nginx"
if nginx_site "$TMP/nginx" "$PROXY_PORT" "$NGINX_HTTP" "127.0.0.1:$SERVER_PORT" "$RESULTS/nginx/access.log" \
    >"$RESULTS/nginx/nginx.log" 2>&1; then
  cp "$TMP/nginx/site.conf" "$RESULTS/nginx/site.conf"
  nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -g 'daemon off;' >>"$RESULTS/nginx/nginx.log" 2>&1 &
  NGINX_PID=$!; PIDS+=("$NGINX_PID")
  sleep 0.3
  if kill -0 "$NGINX_PID" 2>/dev/null; then
    CA="$TMP/nginx-ca/ca.crt" PROXY_LOG="$TMP/nginx/error.log" live nginx
  else
    for name in mcp-notifications events-unbuffered twilio-media; do fail "nginx $name" "nginx did not start"; done
    sed 's/^/      /' "$RESULTS/nginx/nginx.log"
  fi
  stop "$NGINX_PID"
  cp "$TMP/nginx/error.log" "$RESULTS/nginx/" 2>/dev/null || true
else
  for name in mcp-notifications events-unbuffered twilio-media; do fail "nginx $name" "the site file could not be prepared"; done
  sed 's/^/      /' "$RESULTS/nginx/nginx.log"
fi

if [[ $FAILED -gt 0 ]]; then
  echo "---- failed: ${FAILED_NAMES[*]}"
  echo "---- logs: $RESULTS"
fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
