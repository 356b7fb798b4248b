#!/usr/bin/env bash
# Portico's gateway against nginx, in one command on this machine (see bench/README.md).
#   direct  — wrk → the upstream (nginx returning a small JSON body)
#   nginx   — wrk → nginx as a plain keep-alive reverse proxy → the upstream
#   portico — wrk → Portico's gateway (key auth, subscription, rate limit that never triggers,
#             operation match, metering journal) → the upstream
#   unmetered — the same binary and data with `--unmetered` (metering off), for the cost of
#             metering (the metering issue's "within 3%")
# Runs alternate nginx and portico; each figure is the median of RUNS runs. Then a second pass
# loads direct, nginx and portico at a fixed rate of half of nginx's median throughput (oha,
# open loop, latency corrected) and reports the p99 each proxy adds over calling the upstream
# directly. With 4 cores or more each part is pinned (taskset): the upstream, the load
# generator and the proxy under test on cores of their own. The last line is
#   portico/nginx throughput ratio: X.XX
# Usage: bench/gateway.sh [seconds per run, default 10] [connections, default 32] [runs, default 5]
# BENCH_PERF=FILE also records a CPU profile of the gateway (perf) during its first run.
# BENCH_B=PATH (another build of portico) makes the second Portico an A/B peer instead: the
# same data served metered by that build, reported as "b" (the metered/unmetered line becomes
# b/portico). The build under test is BENCH_A=PATH when given, else this checkout's dist build.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-32}"
RUNS="${3:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portico-target}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk || ! need taskset; then
  echo "bench: installing nginx, wrk and taskset (Debian packages)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk util-linux >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
# The fixed-rate pass needs an open-loop load generator: oha (crates.io).
export PATH="$HOME/.cargo/bin:$PATH"
if ! need oha; then
  echo "bench: installing oha (cargo install oha --locked)"
  cargo install oha --locked -q
fi

# Pinning: the upstream, the load generator and the proxy under test each on cores of their own
# when there are enough; on fewer than 4 cores everything shares them (the figures say so).
CORES=$(nproc)
if [ "$CORES" -ge 4 ]; then
  PIN_UP=(taskset -c 0); PIN_LOAD=(taskset -c 1); PIN_PROXY=(taskset -c "2-$((CORES - 1))")
  PROXY_WORKERS=$((CORES - 2))
  PINNING="upstream on core 0, load generator on core 1, the proxy under test on cores 2-$((CORES - 1))"
else
  PIN_UP=(); PIN_LOAD=(); PIN_PROXY=(); PROXY_WORKERS=$CORES
  PINNING="not pinned: $CORES cores shared by the load generator, the upstream and the proxies"
fi

if [ -n "${BENCH_A:-}" ]; then
  PORTICO="$BENCH_A"
else
  echo "bench: building portico (the dist profile: release with LTO)"
  cargo build --profile dist -p portico -q
  PORTICO="$CARGO_TARGET_DIR/dist/portico"
fi
# The second Portico: this build unmetered, or (BENCH_B) another build metered.
PORTICO_B="${BENCH_B:-$PORTICO}"
if [ -n "${BENCH_B:-}" ]; then B_ARGS=""; B_NAME=b; else B_ARGS="--unmetered"; B_NAME=unmetered; fi
export B_NAME

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in upstream nginx; do "$NGINX" -p "$WORK/$d" -c nginx.conf -s stop 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UP=$(free_port); PROXY=$(free_port); GW=$(free_port); API=$(free_port); GW2=$(free_port); API2=$(free_port)
MET=$(free_port); MET2=$(free_port)

# Two nginx instances: the upstream (one worker) and the reverse proxy (as many workers as
# Portico's gateway has), so that the proxy never shares a worker with the upstream.
nginx_conf() {
  local dir=$1 workers=$2 server=$3
  mkdir -p "$WORK/$dir/logs"
  cat > "$WORK/$dir/nginx.conf" <<CONF
worker_processes $workers;
pid $WORK/$dir/nginx.pid;
error_log $WORK/$dir/logs/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; }
  $server
}
CONF
}
nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{\"ok\":true,\"city\":\"Lisbon\",\"temperature_c\":21.5}'; } }"
nginx_conf nginx "$PROXY_WORKERS" "server { listen 127.0.0.1:$PROXY; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
"${PIN_UP[@]}" "$NGINX" -p "$WORK/upstream" -c nginx.conf
"${PIN_PROXY[@]}" "$NGINX" -p "$WORK/nginx" -c nginx.conf

# The upstream runs on loopback, which the outbound (SSRF) policy refuses unless allowed.
# BENCH_PORTICO_ARGS adds flags, e.g. "--request-log errors".
# shellcheck disable=SC2086
"$PORTICO" serve --data-dir "$WORK/portico" --gateway-addr "127.0.0.1:$GW" --api-addr "127.0.0.1:$API" --metrics-addr off \
  --outbound-allow-cidrs 127.0.0.0/8 ${BENCH_PORTICO_ARGS:-} >"$WORK/portico.log" 2>&1 &
PORTICO_PID=$!
PIDS+=("$PORTICO_PID")
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$API/readyz" >/dev/null && break; sleep 0.1; done
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
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Api-Key: $KEY" "http://127.0.0.1:$GW/bench/v1/weather")" = 200 ] && break; sleep 0.1
done

# The same marketplace without metering: a copy of the data dir (database, key pepper, master
# key) served by a second process with --unmetered, so both answer the same key.
curl -sf "http://127.0.0.1:$API/readyz" >/dev/null
kill -TERM "$PORTICO_PID"; wait "$PORTICO_PID" 2>/dev/null || true
cp -a "$WORK/portico" "$WORK/unmetered"; rm -rf "$WORK/unmetered/journal"
# Both serve /metrics (the metered one's journal gauges tell when its backlog has drained).
# shellcheck disable=SC2086
"${PIN_PROXY[@]}" "$PORTICO" serve --data-dir "$WORK/portico" --gateway-addr "127.0.0.1:$GW" --api-addr "127.0.0.1:$API" --metrics-addr "127.0.0.1:$MET" \
  --outbound-allow-cidrs 127.0.0.0/8 ${BENCH_PORTICO_ARGS:-} >>"$WORK/portico.log" 2>&1 &
PORTICO_PID=$!
PIDS+=("$PORTICO_PID")
# shellcheck disable=SC2086
"${PIN_PROXY[@]}" "$PORTICO_B" serve --data-dir "$WORK/unmetered" --gateway-addr "127.0.0.1:$GW2" --api-addr "127.0.0.1:$API2" --metrics-addr "127.0.0.1:$MET2" \
  --outbound-allow-cidrs 127.0.0.0/8 $B_ARGS ${BENCH_PORTICO_ARGS:-} >"$WORK/unmetered.log" 2>&1 &
UNMETERED_PID=$!
PIDS+=("$UNMETERED_PID")
for gw in "$GW" "$GW2"; do
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Api-Key: $KEY" "http://127.0.0.1:$gw/bench/v1/weather")" = 200 ] && break; sleep 0.1
  done
done

# CPU time (µs) used so far by a set of processes.
cpu_us() { python3 - "$@" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    except OSError:
        pass
print(total * 1_000_000 // tick)
PY
}
# nginx's workers, by instance (the master's children).
workers_of() { pgrep -P "$(cat "$WORK/$1/nginx.pid")" | tr '\n' ' '; }
UPSTREAM_PIDS=$(workers_of upstream)
NGINX_PIDS=$(workers_of nginx)

# Waits until the metered gateway's shipper has moved its journal into the store (the shipper
# runs at a lower CPU priority, so under load it lags; the next run must not pay for it).
drained() {
  local zero=0 port=${1:-$MET}
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$port/metrics" | grep -qx 'portico_journal_pending_bytes 0'; then
      zero=$((zero + 1)); [ "$zero" -ge 2 ] && return 0
    else
      zero=0
    fi
    sleep 0.3
  done
  echo "bench: the metered gateway's journal did not drain within 3 minutes" >&2; return 1
}

# run NAME URL CPU-PIDS [wrk args] → appends "rps p50_us p99_us cpu_us_per_req cpu_us_per_req_with_drain"
# to $WORK/NAME.runs (the last column also counts the CPU spent shipping the run's calls after it).
run() {
  local name=$1 url=$2 pids=$3; shift 3
  local before after drain
  before=$(cpu_us $pids)
  "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" > "$WORK/$name.txt"
  after=$(cpu_us $pids)
  drain=$after
  if [ "$name" = portico ]; then drained; drain=$(cpu_us $pids); fi
  if [ "$name" = unmetered ] && [ -n "${BENCH_B:-}" ]; then drained "$MET2"; drain=$(cpu_us $pids); fi
  python3 - "$WORK/$name.txt" "$before" "$after" "$drain" >> "$WORK/$name.runs" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def us(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
reqs = int(re.search(r"(\d+) requests in", text).group(1))
p50 = us(re.search(r"^\s*50%\s+(\S+)", text, re.M).group(1))
p99 = us(re.search(r"^\s*99%\s+(\S+)", text, re.M).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if non2xx:
    sys.exit(f"{sys.argv[1]}: {non2xx.group(1)} non-2xx answers")
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / max(reqs, 1)
drained = (int(sys.argv[4]) - int(sys.argv[2])) / max(reqs, 1)
print(f"{rps} {p50} {p99} {cpu} {drained}")
PY
}

echo "bench: wrk -t1 -c$CONNS -d${DURATION}s, median of $RUNS alternating runs; $PINNING"
# Warm-up, discarded.
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PROXY/weather" >/dev/null 2>&1 || true
wrk -t1 -c"$CONNS" -d2s -H "X-Api-Key: $KEY" "http://127.0.0.1:$GW/bench/v1/weather" >/dev/null 2>&1 || true
wrk -t1 -c"$CONNS" -d2s -H "X-Api-Key: $KEY" "http://127.0.0.1:$GW2/bench/v1/weather" >/dev/null 2>&1 || true
drained
run direct "http://127.0.0.1:$UP/weather" "$UPSTREAM_PIDS"
if [ -n "${BENCH_PERF:-}" ]; then
  (sleep 1; perf record -e cpu-clock -g -o "$BENCH_PERF" -p "$PORTICO_PID" -- sleep 3 >/dev/null 2>&1) &
fi
for _ in $(seq 1 "$RUNS"); do
  run nginx "http://127.0.0.1:$PROXY/weather" "$NGINX_PIDS"
  run portico "http://127.0.0.1:$GW/bench/v1/weather" "$PORTICO_PID" -H "X-Api-Key: $KEY"
  run unmetered "http://127.0.0.1:$GW2/bench/v1/weather" "$UNMETERED_PID" -H "X-Api-Key: $KEY"
done

# The second pass: a fixed rate of half of nginx's median throughput, the same for each peer,
# open loop (oha starts each request on schedule and counts a late start as latency).
RATE=$(python3 -c "import statistics, sys; print(int(statistics.median(float(l.split()[0]) for l in open(sys.argv[1]) if l.strip()) / 2))" "$WORK/nginx.runs")
# At a fixed rate each peer does the same work in the same time, so its CPU per request is a
# steadier measure of its cost than closed-loop req/s on a shared 2-core machine (the metered
# gateway's counts its shipping, until its journal has drained).
fixed() {
  local name=$1 url=$2 pids=$3; shift 3
  local before
  before=$(cpu_us $pids)
  "${PIN_LOAD[@]}" oha -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction --no-tui --output-format json "$@" "$url" > "$WORK/$name.fixed.json"
  if [ "$name" = portico ]; then drained; fi
  if [ "$name" = unmetered ] && [ -n "${BENCH_B:-}" ]; then drained "$MET2"; fi
  echo $(( $(cpu_us $pids) - before )) > "$WORK/$name.fixed.cpu"
}
echo "bench: fixed rate of $RATE req/s (half of nginx's median) for ${DURATION}s each"
fixed direct "http://127.0.0.1:$UP/weather" "$UPSTREAM_PIDS"
fixed nginx "http://127.0.0.1:$PROXY/weather" "$NGINX_PIDS"
fixed portico "http://127.0.0.1:$GW/bench/v1/weather" "$PORTICO_PID" -H "X-Api-Key: $KEY"
fixed unmetered "http://127.0.0.1:$GW2/bench/v1/weather" "$UNMETERED_PID" -H "X-Api-Key: $KEY"

python3 - "$WORK" "$RATE" <<'PY'
import json, os, statistics, sys
work, rate = sys.argv[1], int(sys.argv[2])
# The second Portico's name in the tables: "unmetered", or "b" for an A/B (BENCH_B).
B = os.environ.get("B_NAME", "unmetered")
show = lambda n: B if n == "unmetered" else n
def med(name):
    rows = [list(map(float, l.split())) for l in open(f"{work}/{name}.runs") if l.strip()]
    return [statistics.median(col) for col in zip(*rows)]
rows = {n: med(n) for n in ("direct", "nginx", "portico", "unmetered")}
print(f"{'peer':10} {'req/s':>12} {'p50 µs':>9} {'p99 µs':>9} {'CPU µs/req':>11} {'+ shipping':>11}")
for n, (rps, p50, p99, cpu, drained) in rows.items():
    print(f"{show(n):10} {rps:12.0f} {p50:9.0f} {p99:9.0f} {cpu:11.1f} {drained:11.1f}")
print()
print(f"fixed rate {rate} req/s: {'peer':8} {'req/s':>9} {'p50 µs':>9} {'p99 µs':>9} {'p99 added':>10} {'CPU µs/req':>11}")
fixed = {}
for n in ("direct", "nginx", "portico", "unmetered"):
    d = json.load(open(f"{work}/{n}.fixed.json"))
    codes = d.get("statusCodeDistribution", {})
    if set(codes) - {"200"}:
        sys.exit(f"{n}: answers other than 200 at the fixed rate: {codes}")
    p = d["latencyPercentiles"]
    served = sum(codes.values())
    cpu = int(open(f"{work}/{n}.fixed.cpu").read()) / max(served, 1)
    fixed[n] = (d["summary"]["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, cpu)
for n, (rps, p50, p99, cpu) in fixed.items():
    added = "" if n == "direct" else f"{p99 - fixed['direct'][2]:.0f}"
    print(f"{'':22}{show(n):8} {rps:9.0f} {p50:9.0f} {p99:9.0f} {added:>10} {cpu:11.1f}")
if B == "unmetered":
    print(f"metering's CPU at the fixed rate: {fixed['portico'][3]:.1f} µs/req metered, {fixed['unmetered'][3]:.1f} unmetered ({fixed['portico'][3] / fixed['unmetered'][3] - 1:+.0%})")
else:
    print(f"CPU at the fixed rate: {fixed['portico'][3]:.1f} µs/req portico, {fixed['unmetered'][3]:.1f} b ({fixed['unmetered'][3] / fixed['portico'][3] - 1:+.0%})")
print(f"p99 added over direct at half load: nginx {fixed['nginx'][2] - fixed['direct'][2]:.0f} µs, portico {fixed['portico'][2] - fixed['direct'][2]:.0f} µs")
if B == "unmetered":
    print(f"metered/unmetered throughput ratio: {rows['portico'][0] / rows['unmetered'][0]:.2f}")
else:
    print(f"b/portico throughput ratio: {rows['unmetered'][0] / rows['portico'][0]:.3f}")
print(f"portico/direct throughput ratio: {rows['portico'][0] / rows['direct'][0]:.2f}")
print(f"nginx/direct throughput ratio: {rows['nginx'][0] / rows['direct'][0]:.2f}")
print(f"portico/nginx throughput ratio: {rows['portico'][0] / rows['nginx'][0]:.2f}")
PY
