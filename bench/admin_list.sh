#!/usr/bin/env bash
# Listing at scale (issue [admin]): the session listing of the memory and fs stores at a million
# sessions, and what paging through the whole store does to the proxy's own requests.
#
#   bench/admin_list.sh                         # everything, writes bench/LISTING.md
#   SESSIONS=100000 DURATION=3 bench/admin_list.sh   # a quick run
#
# Steps (all through bench/tools/src/bin/list_bench.rs unless said otherwise):
# 1. designs: the memory-store layouts considered, side by side (index_designs).
# 2. memory per session of the memory store (mem_bench, as bench/load.sh runs it).
# 3. fs fill: SESSIONS files written straight into a fresh directory in the store's format.
# 4. pages: for each store, opened through session_proxy::store::open (fs: on the filled
#    directory, timing the open, which builds the index from the names; memory: filled through
#    the store), SAMPLES pages of 50 after cursors at the start, middle and end of the id space,
#    then one walk of the whole store in pages of 1000.
# 5. p99: for each store, the real proxy (Proxy::open + Proxy::serve) in list_bench's process
#    on 127.0.0.1:0 in front of bench_upstream (10 % of responses update), driven by loadgen as
#    in bench/load.sh (CONNECTIONS keep-alive clients with cookies), three runs of DURATION
#    seconds: idle, while a task in the proxy's runtime walks the whole store over and over in
#    pages of 1000 (where an admin API handler would run), idle again.
#
# A run at a million sessions took 14 minutes here: 1.5 to 4 minutes to write the files
# (depending on what else the machine does), 9 to remove them at the end; FS_DIR (below) keeps
# them for the next run instead.
#
# On a machine with 2+ cores the load generator is pinned to core $LOADGEN_CPU and everything
# under test (upstream, the proxy, the benches) to core $SERVER_CPU. All traffic goes to
# 127.0.0.1. Every process started here is stopped by its PID on exit (bench/common.sh).
#
# Environment (defaults in brackets): SESSIONS [1000000] (at least 5000), SAMPLES [200] pages per position,
# DURATION [10] and WARMUP [1] seconds per load run, CONNECTIONS [64], STORES ["memory fs"],
# DESIGNS [1] (0 skips step 1), LOADGEN_CPU [0], SERVER_CPU [1], OUT [bench/LISTING.md],
# FS_DIR [a fresh directory, removed at the end]: set it to keep the filled directory for the
# next run; one that already holds at least SESSIONS session files is used as it is (each run
# adds CONNECTIONS sessions per load run).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-1000000}
SAMPLES=${SAMPLES:-200}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-64}
STORES=${STORES:-memory fs}
DESIGNS=${DESIGNS:-1}
OUT=${OUT:-bench/LISTING.md}

# The commit as built: taken now, since others may commit while the benchmark runs.
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no -- src bench/tools Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes to src/, bench/tools or Cargo.*)"
fi
echo "== building (dist) at $COMMIT"
cargo build --profile dist --quiet --bins -p session-proxy -p bench-tools
BIN=target/dist
mkdir -p target
WORK=$(mktemp -d "$PWD/target/bench-list.XXXXXX")
RAW="$WORK/raw.tsv"
: >"$RAW"

# Process lifecycle (PIDS, stop_pid, the exit trap, pinning, start, wait_line).
# shellcheck source=bench/common.sh
source bench/common.sh

# field LINE KEY: the value of KEY in a tab-separated key=value line ("–" if absent).
field() {
  local v
  v=$(printf '%s\n' "$1" | tr '\t' '\n' | sed -n "s/^$2=//p" | head -1)
  echo "${v:-–}"
}

# wait_long PID LOG REGEX TRIES: wait_line, TRIES times 10 s (a store of a million takes a while
# to fill or open before the proxy listens).
wait_long() {
  local pid=$1 log=$2 re=$3 tries=$4 i
  for i in $(seq "$tries"); do
    wait_line "$pid" "$log" "$re" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
  done
  return 1
}

# bench_line CMD...: runs CMD in the foreground pinned to the server core, its line to RAW and
# LAST_LINE. (NOPIN=1: not pinned.)
bench_line() {
  local line pin=("${PIN_SERVER[@]}")
  [ "${NOPIN:-0}" = 1 ] && pin=()
  line=$("${pin[@]}" "$@")
  echo "$line" >>"$RAW"
  echo "   $line" | cut -c1-400
  LAST_LINE=$line
}

DESIGN_LINES=()
if [ "$DESIGNS" != 0 ]; then
  echo "== designs: the memory-store layouts at $SESSIONS sessions"
  for d in dashmap dashmap+skipset skipmap+stripes sharded-btree sharded-btree-4096; do
    bench_line "$BIN/index_designs" --design "$d" --sessions "$SESSIONS"
    DESIGN_LINES+=("$LAST_LINE")
  done
fi

echo "== memory per session: $SESSIONS sessions in the memory store"
bench_line "$BIN/mem_bench" --sessions "$SESSIONS" --data-bytes 200
MEM_LINE=$LAST_LINE

FS_DIR=${FS_DIR:-$WORK/sessions}
FILL_LINE=
case " $STORES " in
  *" fs "*)
    have=0
    [ -d "$FS_DIR" ] && have=$(find "$FS_DIR" -maxdepth 1 -name 'session_*.json' | wc -l)
    if [ "$have" -ge "$SESSIONS" ]; then
      echo "== fs fill: reusing $FS_DIR ($have files)"
      FILL_LINE=$(printf 'fill=fs\tsessions=%s\tfill_secs=reused' "$have")
    elif [ "$have" -gt 0 ]; then
      echo "FS_DIR $FS_DIR holds $have session files, fewer than SESSIONS=$SESSIONS" >&2
      exit 2
    else
      echo "== fs fill: $SESSIONS files"
      # Not pinned: the fill writes on two threads.
      NOPIN=1 bench_line "$BIN/list_bench" fill-fs --dir "$FS_DIR" --sessions "$SESSIONS"
      FILL_LINE=$LAST_LINE
    fi
    ;;
esac

declare -A PAGES
for store in $STORES; do
  echo "== pages: $store"
  bench_line "$BIN/list_bench" pages --store "$store" --dir "$FS_DIR" \
    --sessions "$SESSIONS" --samples "$SAMPLES"
  PAGES[$store]=$LAST_LINE
done

declare -A LOAD WALK SERVE
for store in $STORES; do
  echo "== p99: $store"
  start upstream "$WORK/up.log" "$BIN/bench_upstream" --listen 127.0.0.1:0 --update-percent 10
  up_pid=$STARTED_PID
  up=$(wait_line "$up_pid" "$WORK/up.log" 'listening on http://([0-9.:]+)')
  flag="$WORK/walk-$store"
  rm -f "$flag"
  start proxy "$WORK/proxy.log" env RUST_LOG=warn "$BIN/list_bench" serve --store "$store" \
    --dir "$FS_DIR" --sessions "$SESSIONS" --upstream "$up" --walk-flag "$flag"
  proxy_pid=$STARTED_PID
  if ! addr=$(wait_long "$proxy_pid" "$WORK/proxy.log" 'list-bench listening on http://([0-9.:]+)' 30); then
    echo "list_bench serve did not start:" >&2
    tail -5 "$WORK/proxy.log.err" >&2
    exit 1
  fi
  SERVE[$store]=$(grep '^store=' "$WORK/proxy.log" | head -1)
  for phase in idle walking idle2; do
    if [ "$phase" = walking ]; then
      touch "$flag"
      sleep 0.5
    fi
    line=$("${PIN_LOAD[@]}" "$BIN/loadgen" run --url "http://$addr/" \
      --connections "$CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" \
      --clk-tck "$(getconf CLK_TCK)" --pid "proxy=$proxy_pid" --pid "upstream=$up_pid" \
      --label "store=$store" --label "phase=$phase" --label "load1=$(cut -d' ' -f1 /proc/loadavg)")
    echo "$line" >>"$RAW"
    echo "   $line"
    LOAD[$store-$phase]=$line
    if [ "$phase" = walking ]; then
      rm -f "$flag"
      WALK[$store]=$(wait_long "$proxy_pid" "$WORK/proxy.log" '(walks_started=.*)' 12) || WALK[$store]=
      echo "$store walking" "${WALK[$store]}" | tr '\t' ' ' >>"$RAW"
      echo "   walker: ${WALK[$store]}"
    fi
  done
  stop_pid "$proxy_pid"
  stop_pid "$up_pid"
  : >"$WORK/proxy.log"
done

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
FS_TYPE=$(df -T "$WORK" | awk 'NR == 2 { print $2 }')
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "–" }'; }
mean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (a + b) / 2 }'; }

{
  echo "# Session listing at scale"
  echo
  echo "Written by \`bench/admin_list.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); rerun with"
  echo "\`bench/admin_list.sh\` (\`SESSIONS=100000 DURATION=3 bench/admin_list.sh\` for a quick run)."
  echo "The script's header says what each step does."
  echo
  echo "- commit: $COMMIT"
  echo "- machine: $(nproc) cores, ${CPU_MODEL:-unknown CPU}, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r); fs store directory on $FS_TYPE, page cache warm (just written)"
  echo "- $(rustc --version)"
  echo "- $SESSIONS sessions of 200 bytes of JSON; pinning: $PINNING"
  echo "- load runs: ${WARMUP} s warm-up, ${DURATION} s measured, $CONNECTIONS keep-alive clients with cookies, 10 % of responses update"
  echo
  echo "## Page latency"
  echo
  echo "Pages of 50 (p50 / max of $SAMPLES each) after a cursor at the start, the middle and the end of the"
  echo "id space, and one walk of the whole store in pages of 1000 (every session seen once, in order)."
  echo
  echo "| store | open s | open RSS MiB | fill s | start p50 / max ms | middle p50 / max ms | end p50 / max ms | walk s | walk page p50 / p99 / max ms |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for store in $STORES; do
    l=${PAGES[$store]}
    fill=$(field "$l" fill_secs)
    [ "$store" = fs ] && fill="$(field "$FILL_LINE" fill_secs) (files)"
    echo "| $store | $(field "$l" open_secs) | $(field "$l" open_rss_mib) | $fill \
| $(field "$l" page50_start_p50_ms) / $(field "$l" page50_start_max_ms) \
| $(field "$l" page50_middle_p50_ms) / $(field "$l" page50_middle_max_ms) \
| $(field "$l" page50_end_p50_ms) / $(field "$l" page50_end_max_ms) \
| $(field "$l" walk1000_secs) \
| $(field "$l" walk1000_page_p50_ms) / $(field "$l" walk1000_page_p99_ms) / $(field "$l" walk1000_page_max_ms) |"
  done
  echo
  echo "\"open s\" for fs is \`store::open\` on the full directory: the index is built there from the"
  echo "names alone (\"open RSS\": what it added to the process, i.e. the index). Before this change that"
  echo "scan (and a sort) was paid on every page."
  echo
  echo "## The proxy's latency while the store is paged"
  echo
  echo "idle, then walking (a task in the proxy's runtime pages through the whole store in pages of"
  echo "1000, back to back, for the whole run), then idle again. \"× idle\" is the walking p99 over the"
  echo "mean of the two idle p99s; the requirement is at most 2. \"load avg\" is \`/proc/loadavg\` (1 min)"
  echo "as each run started: the benchmark itself adds about 2, so more means other work shared the"
  echo "$(nproc) cores, and the figures are that noisy."
  echo
  echo "| store | phase | req/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU s | load avg | × idle (p99) |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for store in $STORES; do
    idle=$(mean "$(field "${LOAD[$store-idle]}" p99_ms)" "$(field "${LOAD[$store-idle2]}" p99_ms)")
    for phase in idle walking idle2; do
      l=${LOAD[$store-$phase]}
      x=
      [ "$phase" = walking ] && x=$(ratio "$(field "$l" p99_ms)" "$idle")
      echo "| $store | $phase | $(field "$l" rps) | $(field "$l" p50_ms) | $(field "$l" p99_ms) | $(field "$l" p999_ms) | $(field "$l" errors) | $(field "$l" cpu_proxy) | $(field "$l" load1) | $x |"
    done
  done
  echo
  echo "What the walker did during the walking run:"
  echo
  echo "| store | open s (in the proxy) | full walks | sessions listed | pages | page p50 / p99 / max ms |"
  echo "|---|---:|---:|---:|---:|---:|"
  for store in $STORES; do
    w=${WALK[$store]}
    echo "| $store | $(field "${SERVE[$store]}" open_secs) | $(field "$w" walks_complete) | $(field "$w" walk_sessions) | $(field "$w" walk_pages) | $(field "$w" walk_page_p50_ms) / $(field "$w" walk_page_p99_ms) / $(field "$w" walk_page_max_ms) |"
  done
  echo
  echo "## Memory store: layout and memory per session"
  echo
  echo "Overhead is RSS per session beyond its 200 bytes of data. Before this change (commit bacd8ae, a"
  echo "\`DashMap\`, no index) \`mem_bench\` measured 393.9 bytes per session, 193.9 overhead; now:"
  echo "$(field "$MEM_LINE" bytes_per_session) bytes per session, $(field "$MEM_LINE" overhead_bytes) overhead."
  echo
  if [ "${#DESIGN_LINES[@]}" -gt 0 ]; then
    echo "The layouts considered (\`index_designs\`, single-threaded, one process each; load and update on"
    echo "200,000 random ids; an update here is the structure's read-modify-write only, no JSON merge):"
    echo
    echo "| design | overhead B/session | create ns | load ns | update ns | page of 50 µs (start / middle / end) |"
    echo "|---|---:|---:|---:|---:|---:|"
    for l in "${DESIGN_LINES[@]}"; do
      echo "| $(field "$l" design) | $(field "$l" overhead_bytes) | $(field "$l" create_ns) | $(field "$l" load_ns) | $(field "$l" update_ns) | $(field "$l" page50_start_us) / $(field "$l" page50_middle_us) / $(field "$l" page50_end_us) |"
    done
    echo
  fi
  echo "<details><summary>Raw output</summary>"
  echo
  echo '```'
  cat "$RAW"
  echo '```'
  echo
  echo "</details>"
} >"$OUT"
echo "== wrote $OUT"
