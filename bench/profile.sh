#!/usr/bin/env bash
# CPU profile of session-proxy under the write-heavy memory-store load (every request reads and
# updates its session), with `perf record` and DWARF call graphs (the `dist` profile keeps
# line tables: `debug = 1`).
#
#   bench/profile.sh               # 10 s; prints the top self and inclusive entries
#   DURATION=5 MIX=read bench/profile.sh
#   STORE=fs-nofsync bench/profile.sh    # or fs-fsync; the default is memory
#
# The setup is load.sh's (64 connections with cookie jars; load generator on core 0, upstream and
# proxy on core 1). perf.data and the two reports stay in target/bench-profile/.
# Needs perf (Debian: apt-get install -y linux-perf); without hardware counters (a VM) perf falls
# back to the cpu-clock software event, which is fine for this.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
MIX=${MIX:-write}
STORE=${STORE:-memory}
CONNECTIONS=${CONNECTIONS:-64}
TOP=${TOP:-40}
command -v perf >/dev/null || { echo "perf is missing: apt-get install -y linux-perf" >&2; exit 1; }

cargo build --profile dist --quiet --bins -p session-proxy -p bench-tools
OUTDIR=target/bench-profile
mkdir -p "$OUTDIR"
WORK=$(mktemp -d "$PWD/target/bench-profile.XXXXXX")

# Process lifecycle (PIDS, stop_pid, the exit trap, pinning, start, wait_line).
# shellcheck source=bench/common.sh
source bench/common.sh

upstream_and_config "$MIX" "$STORE"
start proxy "$WORK/proxy.log" env RUST_LOG=warn target/dist/session-proxy \
  --config "$WORK/proxy.toml" --listen 127.0.0.1:0 --upstream "http://$UP"
PROXY_PID=$STARTED_PID
PROXY=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'listening on http://([0-9.:]+) ')

echo "== profiling the proxy (pid $PROXY_PID), store=$STORE, mix=$MIX, ${DURATION}s"
"${PIN_LOAD[@]}" target/dist/loadgen run --url "http://$PROXY/" \
  --connections "$CONNECTIONS" --warmup 1 --duration "$((DURATION + 2))" \
  --pid "proxy=$PROXY_PID" --pid "upstream=$UP_PID" >"$OUTDIR/loadgen.tsv" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
sleep 1.5
perf record -q -F 997 -g --call-graph dwarf,16384 -p "$PROXY_PID" -o "$OUTDIR/perf.data" \
  -- sleep "$DURATION" 2>"$OUTDIR/perf-record.log" || cat "$OUTDIR/perf-record.log" >&2
wait "$LOAD_PID"
tr '\t' ' ' <"$OUTDIR/loadgen.tsv"
echo "(throughput is lower than in load.sh: perf's DWARF unwinding costs the proxy's core time)"

perf report -i "$OUTDIR/perf.data" --no-children --percent-limit 0.5 --stdio -g none \
  -F overhead,sym 2>/dev/null | grep -v '^$' | sed -E 's/[[:space:]]+$//' >"$OUTDIR/self.txt"
perf report -i "$OUTDIR/perf.data" --children --percent-limit 1 --stdio -g none \
  --sort sym 2>/dev/null | grep -v '^$' | sed -E 's/[[:space:]]+$//' >"$OUTDIR/children.txt"
echo
echo "== top $TOP by self time ($OUTDIR/self.txt)"
grep -v '^#' "$OUTDIR/self.txt" | head -"$TOP" || true
echo
echo "== top $TOP by inclusive time ($OUTDIR/children.txt)"
grep -v '^#' "$OUTDIR/children.txt" | head -"$TOP" || true
