#!/usr/bin/env bash
# The demo stack without containers: the release binary, Debian's Prometheus loading deploy/prometheus/rules.yml,
# and a real-time replay load in a loop. Ctrl-C stops everything. Grafana is not packaged by Debian: import
# deploy/grafana/dashboard.json (and fleet.json) into any Grafana pointed at the Prometheus URL printed below.
#   make ort build && deploy/local-stack.sh                 (or `make local-stack`)
# Settings (environment): GRPC_PORT=50051 HTTP_PORT=8000 (KServe V2 REST) METRICS_PORT=9090 PROM_PORT=9091
# STREAMS=8 DURATION=0 (seconds; 0 = until Ctrl-C; otherwise stop after that long and check that Prometheus saw
# windows and REST answers), DATA=folder of recordings (default: the committed CWRU excerpts; e.g. DATA=../shared/data/cwru/12k_DE
# for longer ones).
set -euo pipefail
cd "$(dirname "$0")/.."

GRPC_PORT=${GRPC_PORT:-50051}
HTTP_PORT=${HTTP_PORT:-8000}
METRICS_PORT=${METRICS_PORT:-9090}
PROM_PORT=${PROM_PORT:-9091}
STREAMS=${STREAMS:-8}
DURATION=${DURATION:-0}
DATA=${DATA:-models/training/tests/fixtures/cwru_mini/0HP}
BIN=${DRSN_SERVE_BIN:-${CARGO_TARGET_DIR:-target}/release/drsn-serve}

[ -x "$BIN" ] || { echo "no $BIN: run make ort build" >&2; exit 1; }
command -v prometheus >/dev/null || { echo "no prometheus: apt-get install prometheus" >&2; exit 1; }
command -v curl >/dev/null || { echo "no curl: apt-get install curl" >&2; exit 1; }
shopt -s nullglob
files=("$DATA"/*.mat "$DATA"/*.csv "$DATA"/*.npy "$DATA"/*.wav)
[ ${#files[@]} -gt 0 ] || { echo "no recordings in $DATA" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  touch "$tmp/stop"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The scrape config and rules of deploy/prometheus, aimed at this server instead of the compose service.
cp deploy/prometheus/rules.yml "$tmp/"
sed "s/drsn-serve:9090/127.0.0.1:${METRICS_PORT}/" deploy/prometheus/prometheus.yml > "$tmp/prometheus.yml"

# Per-machine series (fleet dashboard, machine alerts): DRSN_MACHINE_METRICS.
DRSN_LISTEN=127.0.0.1:$GRPC_PORT DRSN_HTTP_LISTEN=127.0.0.1:$HTTP_PORT DRSN_METRICS_LISTEN=127.0.0.1:$METRICS_PORT \
  DRSN_LOG_FORMAT=json DRSN_MACHINE_METRICS=true "$BIN" serve > "$tmp/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.2
done

prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" > "$tmp/prometheus.log" 2>&1 &
pids+=($!)

(
  child=
  trap 'kill $child 2>/dev/null; exit 0' TERM  # take the replay in flight along
  while [ ! -e "$tmp/stop" ]; do
    "$BIN" replay --addr "http://127.0.0.1:$GRPC_PORT" --realtime --quiet --streams "$STREAMS" "${files[@]}" \
      > /dev/null 2>> "$tmp/load.log" &
    child=$!
    wait "$child" || sleep 1
  done
) &
pids+=($!)

echo "drsn-serve  gRPC 127.0.0.1:$GRPC_PORT, REST http://127.0.0.1:$HTTP_PORT/v2, metrics http://127.0.0.1:$METRICS_PORT/metrics"
echo "Prometheus  http://127.0.0.1:$PROM_PORT (rules and alerts loaded; dashboards: deploy/grafana/dashboard.json, fleet.json)"
echo "load        ${#files[@]} recording(s) x $STREAMS stream(s), real time, in a loop"

if [ "$DURATION" = 0 ]; then
  echo "Ctrl-C to stop."
  wait "${pids[0]}"
  exit 1  # the server ended on its own
fi

sleep "$DURATION"
# Then wait (up to 30s more) for a scrape that shows diagnosed windows.
query='sum(drsn_windows_diagnosed_total{job="drsn-serve"}) > 0'
for _ in $(seq 60); do
  windows=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$query" |
    sed -n 's/.*"value":\[[^,]*,"\([0-9.e+]*\)"\].*/\1/p')
  [ -n "$windows" ] && break
  sleep 0.5
done
echo "after ${DURATION}s Prometheus has seen ${windows:-no} windows diagnosed"
rest=$(curl -sf "http://127.0.0.1:$HTTP_PORT/v2/health/ready" || true)
echo "REST /v2/health/ready: ${rest:-no answer}"
[ -n "$windows" ] && [ -n "$rest" ]
