#!/usr/bin/env bash
# Requests while the sweeper prunes (issue [store]: "`prune` of 100k expired ones without a
# request's p99 rising above 3x its baseline while it runs"). One command, re-runnable:
#
#   bench/sqlite_prune.sh                    # 1,000,000 sessions, 100,000 expired; writes bench/PRUNE.md
#   SESSIONS=200000 bench/sqlite_prune.sh    # a quick run
#
# The report quotes the store's warnings about commits and checkpoints of 100 ms or more.
# Fills a sqlite file with SESSIONS sessions of ~200 bytes, a tenth of them already expired
# (bench/tools/src/bin/sqlite_bench.rs `fill`), then starts the dist-profile proxy on it (fsync on,
# the default) in front of bench_upstream (every response updates its session), with
# `sweep_interval = SWEEP` so the sweeper's first pass comes SWEEP seconds after start. The
# load generator runs back-to-back windows of WINDOW seconds (64 connections with cookie jars)
# from the start until two windows after the sweeper logs its pass: the windows before the pass
# are the baseline, the ones it overlaps are "during". Pinning as bench/load.sh (load generator
# on one core, proxy and upstream on the other). Every process is stopped by its PID on exit.
#
# Environment (defaults in brackets): SESSIONS [1000000], SWEEP [20], WINDOW [1],
# CONNECTIONS [64], OUT [bench/PRUNE.md].
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-1000000}
SWEEP=${SWEEP:-20}
WINDOW=${WINDOW:-1}
CONNECTIONS=${CONNECTIONS:-64}
OUT=${OUT:-bench/PRUNE.md}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no -- src bench/tools Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes to src/, bench/tools or Cargo.*)"
fi

echo "== building (dist) at $COMMIT"
cargo build --profile dist --quiet --bins -p session-proxy -p bench-tools
BIN=target/dist
mkdir -p target
WORK=$(mktemp -d "$PWD/target/bench-prune.XXXXXX")
# shellcheck source=bench/common.sh
source bench/common.sh

DB="$WORK/sessions.db"
echo "== filling $DB with $SESSIONS sessions (a tenth expired)"
"$BIN/sqlite_bench" fill --sessions "$SESSIONS" --path "$DB" | tee "$WORK/fill.txt"

start upstream "$WORK/up.log" "$BIN/bench_upstream" --listen 127.0.0.1:0 --update-percent 100
UP_PID=$STARTED_PID
UP=$(wait_line "$UP_PID" "$WORK/up.log" 'listening on http://([0-9.:]+)')

printf 'shutdown_timeout = "1s"\n[store]\nkind = "sqlite"\npath = "%s"\nfsync = true\nsweep_interval = "%ss"\n' \
  "$DB" "$SWEEP" >"$WORK/proxy.toml"
# The sweeper's pass is logged at info; everything else at warn, as in bench/load.sh.
start proxy "$WORK/proxy.log" env RUST_LOG=warn,session_proxy::store=info "$BIN/session-proxy" \
  --config "$WORK/proxy.toml" --listen 127.0.0.1:0 --upstream "http://$UP"
PROXY_PID=$STARTED_PID
ADDR=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'listening on http://([0-9.:]+) ')
T0=$(date +%s.%N)

RAW="$WORK/windows.tsv"
: >"$RAW"
swept() { grep -q 'swept expired sessions' "$WORK/proxy.log.err"; }
after=0
for w in $(seq 1000); do
  # Whether the pass had already finished when this window began.
  done_before=false
  swept && done_before=true
  started=$(date +%s.%N)
  line=$("${PIN_LOAD[@]}" "$BIN/loadgen" run --url "http://$ADDR/" --connections "$CONNECTIONS" \
    --warmup 0 --duration "$WINDOW" --clk-tck "$(getconf CLK_TCK)" --pid "proxy=$PROXY_PID")
  ended=$(date +%s.%N)
  # The pass begins SWEEP s after T0 and ends when its line is logged: a window that ends
  # before the one and begins before the other is the baseline, after both is "after", and
  # any window in between overlaps the pass.
  if awk -v e="$ended" -v t="$T0" -v p="$SWEEP" 'BEGIN { exit !(e - t < p) }'; then
    phase=baseline
  elif [ "$done_before" = true ]; then
    phase=after
  else
    phase=during
  fi
  printf 'window=%s\tat=%.1f\tphase=%s\t%s\n' "$w" "$(awk -v s="$started" -v t="$T0" 'BEGIN { print s - t }')" \
    "$phase" "$line" | tee -a "$RAW"
  if [ "$phase" = after ]; then
    after=$((after + 1))
    [ "$after" -ge 2 ] && break
  fi
  if [ "$w" -gt $((SWEEP * 10 / WINDOW)) ] && ! swept; then
    echo "the sweeper never logged a pass" >&2
    exit 1
  fi
done
SWEPT_LINE=$(grep 'swept expired sessions' "$WORK/proxy.log.err" | head -1)
# The store's own account of its slow moments (commits and checkpoints of 100 ms or more,
# logged at warn with whether a checkpoint ran and how many pages it copied).
SLOW_LINES=$(grep -E 'slow sqlite' "$WORK/proxy.log.err" | sed -E 's/^[^ ]+ +//' || true)
COUNT=$(sqlite3 "$DB" 'select count(*) from sessions' 2>/dev/null || echo '?')

field() { tr '\t' '\n' | sed -n "s/^$1=//p"; }
# The median of the baseline windows' p99, and the worst p99 of the windows during the pass.
BASE=$(grep 'phase=baseline' "$RAW" | tail -n +3 | field p99_ms | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
WORST=$(grep 'phase=during' "$RAW" | field p99_ms | sort -g | tail -1)
RATIO=$(awk -v w="$WORST" -v b="$BASE" 'BEGIN { printf "%.2f", w / b }')
MET=$(awk -v r="$RATIO" 'BEGIN { print (r <= 3) ? "yes" : "**no**" }')

{
  echo "# Requests while the sweeper prunes the sqlite store"
  echo
  echo "Written by \`bench/sqlite_prune.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $COMMIT;"
  echo "$(nproc) cores, $PINNING; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  echo "$SESSIONS sessions of ~200 bytes, a tenth expired, \`fsync = true\`; every request"
  echo "updates its session; $CONNECTIONS connections with cookie jars; windows of ${WINDOW} s."
  echo "The first two baseline windows are left out of the baseline (the page cache warming)."
  echo
  echo "| target | baseline p99 (median of windows) | worst p99 during the pass | ratio | met |"
  echo "|---|---:|---:|---:|---|"
  echo "| p99 during prune ≤ 3× baseline | ${BASE} ms | ${WORST} ms | ${RATIO}× | $MET |"
  echo
  echo "The sweeper's line: \`${SWEPT_LINE#*INFO }\`; sessions left: $COUNT."
  echo
  if [ -n "$SLOW_LINES" ]; then
    echo "The store's warnings (slow commits and checkpoints, 100 ms or more), $(echo "$SLOW_LINES" | wc -l) in all:"
    echo
    echo '```'
    echo "$SLOW_LINES" | head -40
    echo '```'
  else
    echo "No commit or checkpoint took 100 ms or more (the store logs each one that does)."
  fi
  echo
  echo '```'
  cat "$WORK/fill.txt"
  sed -E 's/\tcpu_proxy=[^\t]*//' "$RAW"
  echo '```'
} >"$OUT"
echo "== wrote $OUT"
