#!/usr/bin/env bash
# Soak test of session-proxy (issue [hardening] #12): does it hold steady under hours-like load?
# Not part of the test run; one command, from a clean checkout:
#
#   bench/soak.sh                  # 10 minutes, writes bench/SOAK.md
#   SOAK_SECS=120 bench/soak.sh    # a quick run
#
# It builds with the `dist` profile, starts bench_upstream (10 % of responses update the session) and the
# dist-profile proxy in front of it with the default store (sqlite, a file in a temp dir, fsync on)
# and default limits, then for SOAK_SECS runs all at once:
#   - loadgen with cookie jars: CONNECTIONS [16] keep-alive browsers, each reusing its session;
#   - a burst of new sessions every BURST_EVERY [60] s: BURST_CONNECTIONS [32] cookie-less
#     connections for BURST_SECS [5] s;
#   - IDLE [2000] idle keep-alive connections (one request, then silence until the proxy closes
#     them; each is reopened at once), from bench/tools/src/bin/soak_conns.rs;
#   - SLOWLORIS [50] connections trickling a request head a byte a second, which
#     limits.header_read_timeout (10 s) must cut; each is reopened at once.
# It samples the proxy's RSS and open fds (/proc/PID) before the load, every 30 s, at the end
# and once the load has gone, prints a table and writes it to OUT [bench/SOAK.md].
#
# It fails (exit 1) when:
#   - RSS at the end > RSS after the warm-up (WARMUP [60] s) x RSS_BOUND [1.25]: the warm-up
#     fills what is filled once (allocator arenas for ~2,100 connections, SQLite's page cache,
#     the upstream pool), so later growth is a leak;
#   - open fds, once every client has gone and the upstream pool's idle connections have
#     expired (30 s), are not back to the baseline before the load + FD_SLACK [4]: a leaked
#     socket or file;
#   - a slowloris connection was never cut, or lived longer than header_read_timeout + 5 s;
#   - more than 1 % of loadgen's requests failed, or the proxy died.
#
# Every process started here is stopped by its PID on exit, however the script ends. All traffic
# goes to 127.0.0.1. The open-file limit is raised to the hard limit (needs IDLE + ~200).
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECS=${SOAK_SECS:-600}
WARMUP=${WARMUP:-60}
CONNECTIONS=${CONNECTIONS:-16}
BURST_EVERY=${BURST_EVERY:-60}
BURST_SECS=${BURST_SECS:-5}
BURST_CONNECTIONS=${BURST_CONNECTIONS:-32}
IDLE=${IDLE:-2000}
SLOWLORIS=${SLOWLORIS:-50}
RSS_BOUND=${RSS_BOUND:-1.25}
FD_SLACK=${FD_SLACK:-4}
SETTLE_SECS=${SETTLE_SECS:-75}
HEADER_READ_TIMEOUT=10
OUT=${OUT:-bench/SOAK.md}

[ "$WARMUP" -lt "$SOAK_SECS" ] || { echo "WARMUP must be less than SOAK_SECS" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
need=$((IDLE + SLOWLORIS + CONNECTIONS + BURST_CONNECTIONS + 200))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "the open-file limit $(ulimit -n) is below the $need this soak needs" >&2
  exit 2
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes to src/ or Cargo.*)"
fi
echo "== building (dist) at $COMMIT"
cargo build --profile dist --quiet --bins -p session-proxy -p bench-tools
BIN=target/dist
mkdir -p target
WORK=$(mktemp -d "$PWD/target/bench-soak.XXXXXX")

# Process lifecycle (PIDS, stop_pid, the exit trap, pinning, start, wait_line).
# shellcheck source=bench/common.sh
source bench/common.sh

# client NAME CMD...: a load client, pinned to the load core, output in $WORK/NAME.out; sets
# STARTED_PID.
client() {
  local name=$1
  shift
  "${PIN_LOAD[@]}" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

start upstream "$WORK/up.log" "$BIN/bench_upstream" --listen 127.0.0.1:0 --update-percent 10
UP_PID=$STARTED_PID
UP=$(wait_line "$UP_PID" "$WORK/up.log" 'listening on http://([0-9.:]+)') || {
  echo "bench_upstream did not start" >&2
  cat "$WORK/up.log.err" >&2
  exit 1
}
printf 'shutdown_timeout = "1s"\n[store]\nkind = "sqlite"\npath = "%s"\n' \
  "$WORK/sessions.db" >"$WORK/proxy.toml"
start proxy "$WORK/proxy.log" env RUST_LOG=warn "$BIN/session-proxy" \
  --config "$WORK/proxy.toml" --listen 127.0.0.1:0 --upstream "http://$UP"
PROXY_PID=$STARTED_PID
PROXY=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'listening on http://([0-9.:]+) ') || {
  echo "the proxy did not start" >&2
  cat "$WORK/proxy.log.err" >&2
  exit 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status"; }
fds() { find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
alive() { kill -0 "$PROXY_PID" 2>/dev/null; }
START=$(date +%s)
ROWS=()
# sample LABEL: one row of the table.
sample() {
  alive || { echo "the proxy died" >&2; exit 1; }
  local row
  row=$(printf '| %s | %s | %s | %s | %s |' "$1" "$(($(date +%s) - START))" \
    "$(awk -v k="$(rss_kib)" 'BEGIN {printf "%.1f", k / 1024}')" "$(fds)" \
    "$(cut -d' ' -f1 /proc/loadavg)")
  ROWS+=("$row")
  echo "$row"
}

# A first request opens what the proxy opens lazily (the store's reader, the upstream pool).
curl -fsS -o /dev/null "http://$PROXY/" || { echo "the proxy does not answer" >&2; exit 1; }
sleep 1
echo "== soak: ${SOAK_SECS}s against $PROXY (upstream $UP); $PINNING"
echo "| when | s | RSS MiB | fds | load1 |"
echo "|---|---:|---:|---:|---:|"
sample baseline
BASE_FDS=$(fds)

LOAD_START=$(date +%s)
client loadgen "$BIN/loadgen" run --url "http://$PROXY/" --connections "$CONNECTIONS" \
  --warmup 0 --duration "$SOAK_SECS"
LOADGEN_PID=$STARTED_PID
client conns "$BIN/soak_conns" --addr "$PROXY" --idle "$IDLE" --slowloris "$SLOWLORIS" \
  --duration "$SOAK_SECS"
CONNS_PID=$STARTED_PID

: >"$WORK/bursts.out"
BURST_PIDS=()
next_burst=$BURST_EVERY
next_sample=30
warm_rss=
# On the clock, not by counting sleeps (sampling takes time); the last sample is taken 3 s
# before the clients stop, while every part of the load still runs.
while sleep 1; do
  t=$(($(date +%s) - LOAD_START))
  [ "$t" -lt $((SOAK_SECS - 3)) ] || break
  if [ "$t" -ge "$next_burst" ] && [ $((t + BURST_SECS)) -lt "$SOAK_SECS" ]; then
    # Cookie-less: every request is a new session (10 % of them stored).
    "${PIN_LOAD[@]}" "$BIN/loadgen" run --url "http://$PROXY/burst" --no-cookies \
      --connections "$BURST_CONNECTIONS" --warmup 0 --duration "$BURST_SECS" \
      >>"$WORK/bursts.out" 2>>"$WORK/bursts.err" &
    PIDS+=("$!")
    BURST_PIDS+=("$!")
    next_burst=$((next_burst + BURST_EVERY))
  fi
  if [ -z "$warm_rss" ] && [ "$t" -ge "$WARMUP" ]; then
    sample "warm (after ${WARMUP}s)"
    warm_rss=$(rss_kib)
    next_sample=$((WARMUP + 30))
  elif [ "$t" -ge "$next_sample" ]; then
    sample load
    next_sample=$((next_sample + 30))
  fi
done
sample "end of load"
end_rss=$(rss_kib)

# The clients stop by themselves at SOAK_SECS (closing every connection); wait for their reports.
for pid in "$LOADGEN_PID" "$CONNS_PID" "${BURST_PIDS[@]}"; do wait "$pid" || true; done
sample "clients gone"
# The upstream pool drops a connection idle for 30 s, checked every 30 s: give it twice that.
settled=
for _ in $(seq "$SETTLE_SECS"); do
  if [ "$(fds)" -le $((BASE_FDS + FD_SLACK)) ]; then settled=yes; break; fi
  sleep 1
done
sample "settled"
after_fds=$(fds)
# What is still open, by kind (socket:, pipe:, anon_inode:, a file path), for the report.
fd_kinds=$(find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' | sed -E 's/:.*/:/; s#^/.*#file#' |
  sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep = ", "}')
upstream_conns=$(ss -Htn state established "dst $UP" 2>/dev/null | wc -l || echo "?")

LOAD=$(cat "$WORK/loadgen.out")
CONNS=$(cat "$WORK/conns.out")
field() { echo "$1" | tr '\t' '\n' | sed -n "s/^$2=//p" | head -1; }
requests=$(field "$LOAD" requests)
errors=$(field "$LOAD" errors)
burst_requests=$(awk -F'\t' '{for (i = 1; i <= NF; i++) if ($i ~ /^requests=/) {sub(/requests=/, "", $i); s += $i}} END {print s + 0}' "$WORK/bursts.out")
burst_errors=$(awk -F'\t' '{for (i = 1; i <= NF; i++) if ($i ~ /^errors=/) {sub(/errors=/, "", $i); s += $i}} END {print s + 0}' "$WORK/bursts.out")
bursts=$(wc -l <"$WORK/bursts.out")
slow_cut=$(field "$CONNS" slowloris_cut)
slow_max=$(field "$CONNS" slowloris_max_ms)
sessions=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from sessions').fetchone()[0])" "$WORK/sessions.db" 2>/dev/null || echo "?")

failures=()
rss_limit=$(awk -v w="$warm_rss" -v b="$RSS_BOUND" 'BEGIN {printf "%d", w * b}')
[ "$end_rss" -le "$rss_limit" ] ||
  failures+=("RSS at the end ${end_rss} KiB > ${RSS_BOUND} x ${warm_rss} KiB after the warm-up")
[ -n "$settled" ] ||
  failures+=("open fds ${after_fds} did not come back to the baseline ${BASE_FDS} + ${FD_SLACK}")
[ "${slow_cut:-0}" -gt 0 ] || failures+=("no slowloris connection was cut")
[ "${slow_max:-0}" -le $(((HEADER_READ_TIMEOUT + 5) * 1000)) ] ||
  failures+=("a slowloris connection lived ${slow_max} ms (header_read_timeout ${HEADER_READ_TIMEOUT}s)")
[ "$((errors * 100))" -le "$((requests + 0))" ] ||
  failures+=("loadgen: ${errors} errors for ${requests} requests (over 1 %)")
alive || failures+=("the proxy died")
verdict=pass
[ ${#failures[@]} -eq 0 ] || verdict="FAIL: $(IFS=';'; echo "${failures[*]}")"

{
  echo "# Soak: bench/soak.sh"
  echo
  echo "Commit $COMMIT, $(date -u +%Y-%m-%dT%H:%MZ), ${SOAK_SECS} s, $(nproc) cores ($PINNING)."
  echo "The proxy built with the dist profile, with the sqlite store (fsync on) and default limits, in front of"
  echo "bench_upstream (10 % of responses update the session). At once: loadgen with $CONNECTIONS cookie"
  echo "jars; a burst of $BURST_CONNECTIONS cookie-less connections for ${BURST_SECS} s every ${BURST_EVERY} s;"
  echo "$IDLE idle keep-alive connections and $SLOWLORIS slowloris connections (bench/tools/src/bin/soak_conns.rs),"
  echo "each reopened when the proxy closes it. Sampled from /proc/PID; load1 is the machine's."
  echo
  echo "| when | s | RSS MiB | fds | load1 |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "- loadgen (cookie jars): $requests requests, $errors errors, $(field "$LOAD" rps) req/s, p99 $(field "$LOAD" p99_ms) ms, $(field "$LOAD" connects) connects, non-2xx: $(field "$LOAD" statuses)"
  echo "- bursts of new sessions: $bursts bursts, $burst_requests requests, $burst_errors errors"
  echo "- idle: $(field "$CONNS" idle_connects) connects, $(field "$CONNS" idle_ok) answered, $(field "$CONNS" idle_closed_by_proxy) closed by the proxy after at most $(field "$CONNS" idle_max_ms) ms idle, $(field "$CONNS" idle_open_max) open at once, $(field "$CONNS" idle_errors) errors"
  echo "- slowloris: $(field "$CONNS" slowloris_connects) connects, $slow_cut cut, the longest lived $slow_max ms, $(field "$CONNS" slowloris_bytes) bytes trickled"
  echo "- sessions in the store at the end: $sessions"
  echo
  echo "Bounds: RSS at the end <= ${RSS_BOUND} x RSS after the ${WARMUP} s warm-up ($(awk -v k="$rss_limit" 'BEGIN {printf "%.1f", k / 1024}') MiB);"
  echo "fds once the clients are gone and the upstream pool has expired <= baseline ${BASE_FDS} + ${FD_SLACK}"
  echo "(now ${after_fds}: ${fd_kinds}; ${upstream_conns} connections to the upstream); every slowloris connection cut within header_read_timeout + 5 s; loadgen errors <= 1 %."
  echo
  echo "Result: **$verdict**"
} >"$OUT"
echo
tail -n +$(($(grep -n '^- loadgen' "$OUT" | cut -d: -f1))) "$OUT"
echo "(written to $OUT)"
[ "$verdict" = pass ] || exit 1
