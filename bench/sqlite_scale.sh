#!/usr/bin/env bash
# The sqlite store at scale (issue [store]), without HTTP around it: one command, re-runnable.
#
#   bench/sqlite_scale.sh                    # 1,000,000 sessions; writes bench/SQLITE.md
#   SESSIONS=100000 bench/sqlite_scale.sh    # a quick run
#
# Runs bench/tools/src/bin/sqlite_bench.rs twice: `reads` (a point read inline on the async
# worker against spawn_blocking: the measurement behind `store::sqlite::Reads`), then `scale`
# (SESSIONS sessions of ~200 bytes, a tenth of them expired, written through the store; then
# the open, a page of 50 at 200 cursors, 10,000 point reads, the prune of the expired tenth).
# The file lives under target/ (on the same disk as the proxy's would) and is removed after.
#
# Environment (defaults in brackets): SESSIONS [1000000], SECONDS_PER_MODE [5],
# OUT [bench/SQLITE.md].
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-1000000}
SECONDS_PER_MODE=${SECONDS_PER_MODE:-5}
OUT=${OUT:-bench/SQLITE.md}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no -- src bench/tools Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes to src/, bench/tools or Cargo.*)"
fi

cargo build --profile dist --quiet -p bench-tools --bin sqlite_bench
mkdir -p target
RAW=$(mktemp "$PWD/target/sqlite-scale.XXXXXX")
trap 'rm -f "$RAW"' EXIT

echo "== reads: inline against spawn_blocking, ${SECONDS_PER_MODE}s per mode, twice each"
target/dist/sqlite_bench reads --seconds "$SECONDS_PER_MODE" --dir target | tee -a "$RAW"
echo "== scale: $SESSIONS sessions"
target/dist/sqlite_bench scale --sessions "$SESSIONS" --dir target | tee -a "$RAW"

field() { grep "^bench=$1	" "$RAW" | tr '\t' '\n' | sed -n "s/^$2=//p" | head -1; }
verdict() { awk -v v="$1" -v l="$2" 'BEGIN { print (v + 0 < l + 0) ? "yes" : "**no**" }'; }
OPEN_MS=$(field open open_ms)
PAGE_MAX=$(field page page50_max_ms)
FIRST=$(field page first_page_ms)
PRUNE=$(field prune secs)
REMOVED=$(field prune removed)

{
  echo "# sqlite store at scale"
  echo
  echo "Written by \`bench/sqlite_scale.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $COMMIT;"
  echo "$(nproc) cores, Linux $(uname -r), the file on $(df -T target | awk 'NR == 2 { print $2 }'),"
  echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end (other processes share the machine)."
  echo "\`fsync = false\` while filling; every figure is after a fresh open of the file, which"
  echo "is in the page cache (as it is for a proxy restarted on the same machine)."
  echo
  echo "| target | measured | met |"
  echo "|---|---|---|"
  echo "| open a file of $SESSIONS sessions in < 1 s | ${OPEN_MS} ms | $(verdict "$OPEN_MS" 1000) |"
  echo "| a page of 50 in < 10 ms (first page ${FIRST} ms; 200 pages at random cursors, the slowest) | ${PAGE_MAX} ms | $(verdict "$PAGE_MAX" 10) |"
  echo "| prune of the expired tenth ($REMOVED sessions, chunks of 100 through the writer) | ${PRUNE} s | – |"
  echo
  echo "Reads (\`reads\`): 64 tasks on a 2-worker runtime, 10 % of their operations updates"
  echo "through the writer; the latency is one \`load\` call."
  echo
  echo '```'
  cat "$RAW"
  echo '```'
} >"$OUT"
echo "== wrote $OUT"
