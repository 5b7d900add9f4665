#!/usr/bin/env bash
# The proxy's memory under slow request bodies (issue [boundary] part 1): CLIENTS connections
# (default 1,000) each send a POST head with `Content-Length: 65536`, 61,440 bytes of the body at
# once, and then one byte a second, so every one would sit in a request buffer
# (`limits.request_buffer = 65536`). `limits.request_buffer_total` is TOTAL bytes (default
# 16 MiB); what does not fit streams to the bench app (which reads it). The proxy's RSS is read
# before the clients come, every second while they hold, and its peak (VmHWM) at the end, with
# the `request_buffer_overflows_total` metric. `body_min_rate` is RATE (default 0: off, so the
# clients hold for the whole run: the worst case for memory).
#
#   bench/slow_bodies.sh                      # total 16 MiB
#   TOTAL=268435456 bench/slow_bodies.sh      # the default total (256 MiB): every client buffers
#   BUFFER=0 bench/slow_bodies.sh             # no buffering: every body streams (as before)
#
# Environment: CLIENTS [1000], BUFFER [65536] (`request_buffer`), TOTAL [16777216], RATE [0],
# DURATION [30]. Traffic goes only to
# 127.0.0.1; every process is stopped by its PID on exit (bench/common.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-1000}
BUFFER=${BUFFER:-65536}
TOTAL=${TOTAL:-16777216}
RATE=${RATE:-0}
DURATION=${DURATION:-30}

cargo build --profile dist --quiet --bins -p session-proxy -p bench-tools
mkdir -p target
WORK=$(mktemp -d "$PWD/target/bench-slow-bodies.XXXXXX")

# shellcheck source=bench/common.sh
source bench/common.sh

upstream_and_config write memory
printf '[limits]\nrequest_buffer = %s\nrequest_buffer_total = %s\nbody_min_rate = %s\n[admin]\nlisten = "127.0.0.1:0"\n' \
  "$BUFFER" "$TOTAL" "$RATE" >>"$WORK/proxy.toml"
start proxy "$WORK/proxy.log" target/dist/session-proxy --config "$WORK/proxy.toml" \
  --listen 127.0.0.1:0 --upstream "http://$UP"
PROXY_PID=$STARTED_PID
PROXY=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'listening on http://([0-9.:]+) ')
ADMIN=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'admin on http://([0-9.:]+)')
status_kib() { awk -v k="$1" '$1 == k {print $2}' "/proc/$PROXY_PID/status"; }

echo "== $CLIENTS slow bodies (65536 declared, 61440 sent at once, then 1 byte/s), request_buffer = $BUFFER, request_buffer_total = $TOTAL, body_min_rate = $RATE, ${DURATION}s"
echo "proxy RSS before the clients: $(status_kib VmRSS:) KiB"
"${PIN_LOAD[@]}" target/dist/soak_conns --addr "$PROXY" --slow-bodies "$CLIENTS" \
  --duration "$DURATION" --trickle-ms 1000 >"$WORK/conns.out" &
CONNS_PID=$!
PIDS+=("$CONNS_PID")
max_rss=0
for _ in $(seq "$DURATION"); do
  sleep 1
  rss=$(status_kib VmRSS:)
  [ "$rss" -gt "$max_rss" ] && max_rss=$rss
done
wait "$CONNS_PID" || true
echo "clients: $(cat "$WORK/conns.out")"
echo "proxy RSS, highest of the 1 s samples: $max_rss KiB; peak (VmHWM): $(status_kib VmHWM:) KiB"
curl -s "http://$ADMIN/metrics" | grep -E '^session_proxy_(request_buffer_overflows_total|requests_total)' || true
