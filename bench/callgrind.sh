#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable on a noisy
# machine, unlike seconds (see bench/README.md). One command:
#   bench/callgrind.sh [requests, default 2000]
# It starts nginx as the upstream and as a plain reverse proxy, and Portico with the same
# published API as bench/gateway.sh (key auth, subscription, rate limit, operation match,
# metering shipped to SQLite), each under callgrind with collection off; warms each up with 200
# calls, then counts the instructions of N keep-alive calls (every thread of the process: the
# gateway's workers and the metering shipper) and prints Ir per request for each, and as its
# last line: `portico/nginx instructions per request: X.XX`.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portico-target}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need valgrind; then
  echo "callgrind: installing nginx and valgrind (Debian packages)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light valgrind >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
echo "callgrind: building portico (the dist profile: release with LTO)"
cargo build --profile dist -p portico -q
PORTICO="$CARGO_TARGET_DIR/dist/portico"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # The upstream nginx (a daemon) is stopped through its pid file, before the directory goes.
  [ -f "$WORK/up/nginx.pid" ] && "$NGINX" -p "$WORK/up" -c nginx.conf -s stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UP=$(free_port); PROXY=$(free_port); GW=$(free_port); API=$(free_port)

# The upstream (not measured) and the measured nginx proxy are two nginx instances.
mkdir -p "$WORK/up/logs" "$WORK/proxy/logs"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1; daemon on; pid $WORK/up/nginx.pid; error_log $WORK/up/logs/error.log crit;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{"ok":true,"city":"Lisbon","temperature_c":21.5}'; } } }
CONF
cat > "$WORK/proxy/nginx.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $WORK/proxy/nginx.pid; error_log $WORK/proxy/logs/error.log crit;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; upstream backend { server 127.0.0.1:$UP; keepalive 16; }
  server { listen 127.0.0.1:$PROXY; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
"$NGINX" -p "$WORK/up" -c nginx.conf

CG="valgrind --tool=callgrind --instr-atstart=no --trace-children=no"
$CG --callgrind-out-file="$WORK/nginx.cg" "$NGINX" -p "$WORK/proxy" -c nginx.conf >"$WORK/nginx-vg.log" 2>&1 &
NGINX_VG=$!; PIDS+=("$NGINX_VG")
$CG --callgrind-out-file="$WORK/portico.cg" "$PORTICO" serve --data-dir "$WORK/portico" --gateway-addr "127.0.0.1:$GW" \
  --api-addr "127.0.0.1:$API" --metrics-addr off --outbound-allow-cidrs 127.0.0.0/8 ${BENCH_PORTICO_ARGS:-} >"$WORK/portico-vg.log" 2>&1 &
PORTICO_VG=$!; PIDS+=("$PORTICO_VG")
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$API/readyz" >/dev/null && break; sleep 0.2; done
TOKEN=$("$PORTICO" admin create --email bench@example.com --password 'bench password 1' --data-dir "$WORK/portico" | tail -n 1)
cat > "$WORK/bench.yaml" <<YAML
providers:
  - slug: bench-provider
    name: Bench Provider
    apis:
      - slug: bench
        name: Bench
        versions:
          - version: 1.0.0
            state: published
            upstream_url: http://127.0.0.1:$UP
            openapi:
              openapi: 3.1.0
              info: {title: Bench, version: 1.0.0}
              paths:
                /weather: {get: {responses: {"200": {description: ok}}}}
        plans:
          - slug: unlimited
            name: Unlimited
            pricing: {type: free}
            rate_limit: {requests: 1000000, per: second}
consumers:
  - slug: bench-consumer
    name: Bench Consumer
    apps:
      - slug: loadgen
        name: Load generator
        subscriptions: [{api: bench, plan: unlimited}]
YAML
"$PORTICO" apply -f "$WORK/bench.yaml" --server "http://127.0.0.1:$API" --token "$TOKEN" >/dev/null
APP_ID=$(curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API/api/v1/apps" | python3 -c 'import json,sys; print([a["id"] for a in json.load(sys.stdin)["items"] if a["slug"]=="loadgen"][0])')
KEY=$(curl -sf -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API/api/v1/apps/$APP_ID/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Api-Key: $KEY" "http://127.0.0.1:$GW/bench/v1/weather")" = 200 ] && break; sleep 0.2
done

# calls PORT PATH N: N keep-alive GETs with the key, each must answer 200.
calls() { python3 - "$@" "$KEY" <<'PY'
import http.client, sys
port, path, n, key = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    c.request("GET", path, headers={"X-Api-Key": key})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"{path}: {r.status}")
PY
}
# measure NAME PID PORT PATH → instructions per request
measure() {
  local name=$1 pid=$2 port=$3 path=$4
  calls "$port" "$path" 200
  sleep 1 # let background work of the warm-up settle (the shipper ships every 250 ms)
  callgrind_control -z "$pid" >/dev/null; callgrind_control -i on "$pid" >/dev/null
  calls "$port" "$path" "$N"
  sleep 1 # the shipper moves the measured calls into the store: that is part of their cost
  callgrind_control -i off "$pid" >/dev/null
  callgrind_control -d "$pid" >/dev/null
  # The dump is written by the process itself, slowly under valgrind: wait for its totals.
  for _ in $(seq 1 300); do grep -qs "^totals:" "$WORK/$name".cg.* && break; sleep 0.2; done
  python3 - "$WORK" "$name" "$N" <<'PY'
import glob, re, sys
work, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
total = 0
for f in glob.glob(f"{work}/{name}.cg*"):
    for line in open(f, errors="replace"):
        m = re.match(r"totals: (\d+)", line)  # "summary:" reads 0 after a zeroing
        if m:
            total += int(m.group(1))
            break
print(f"{name:8} {total / n:12.0f} instructions per request ({total} over {n} calls)")
PY
}
echo "callgrind: $N keep-alive calls per peer, all threads counted"
measure nginx "$NGINX_VG" "$PROXY" /weather | tee "$WORK/nginx.out"
measure portico "$PORTICO_VG" "$GW" /bench/v1/weather | tee "$WORK/portico.out"
python3 - "$WORK" <<'PY'
import sys
w = sys.argv[1]
n = float(open(f"{w}/nginx.out").read().split()[1]); p = float(open(f"{w}/portico.out").read().split()[1])
print(f"portico/nginx instructions per request: {p / n:.2f}")
PY
