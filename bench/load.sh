#!/usr/bin/env bash
# Load benchmark of session-proxy (issue [perf]): one command, from a clean checkout.
#
#   bench/load.sh                  # every case, 3 rounds of 8 s (about 18 minutes), writes bench/RESULTS.md
#   DURATION=3 ROUNDS=1 bench/load.sh   # a quick run
#
# It builds with the `dist` profile (what ships: fat LTO), then for each case starts a fresh upstream (bench/tools/src/bin/bench_upstream.rs)
# and, except for "direct", a fresh session-proxy in front of it, and drives it with
# bench/tools/src/bin/loadgen.rs: 64 keep-alive connections, each with its own cookie jar, so sessions are
# real and reused. Cases: direct to the upstream (the limit), then the proxy with the memory store,
# the memory store again with the default log level (memory-info: one access-log line per request
# to stderr, which goes to a file), the memory store asked for a path that `[session] skip` lists
# (memory-skip: `skip = ["/static/"]`, every request to /static/x, so no store call and no session
# headers; its rows against the memory rows of the same run show what a skipped path saves), the
# memory store with session data encrypted at rest (memory-sealed: one `store.encryption_key`;
# against the memory rows, what sealing costs), the sqlite store (the default) with fsync on and
# off and without fsync encrypted (sqlite-nofsync-sealed), the fs
# store with fsync on and off, the Redis store (on a
# redis-server of our own), and the PostgreSQL store (on a cluster of our own, initdb'd for the
# run: postgres-sync with PostgreSQL's defaults, each commit waiting for its WAL flush, and
# postgres with `synchronous_commit = off`, as bench/common.sh start_postgres says); each for
# a read-heavy mix (10 % of requests update the session), a write-heavy mix (every request
# updates) and "new" (cookie-less clients, every request creates a session). A reference row,
# nginx (a plain keep-alive proxy_pass, no session work), shows what one proxy hop costs on this
# machine in the same run; it is skipped when nginx is not installed. Two more reference rows
# (issue [perf-3]): bare-hop, the proxy's own engine with no session work
# (bench/tools/src/bin/bare_hop.rs: the downstream builder's settings, the body wrappers and the
# upstream pool, nothing else), the hop the proxy's own cost is measured above; and bare-plain,
# hyper's HTTP/1 server and one client connection per client connection, no pool (not in the
# default TARGETS: add it by name). The memory
# benchmark (bench/tools/src/bin/mem_bench.rs) stores 1,000,000 sessions of 200 bytes.
#
# On a machine with 2+ cores the load generator is pinned to core $LOADGEN_CPU and everything
# under test (upstream, proxy, redis-server, postgres) to core $SERVER_CPU. All traffic goes to 127.0.0.1.
# Every process started here is stopped by its PID on exit, however the script ends.
#
# Every case runs ROUNDS times, round after round (all cases once, then all again), and the report
# gives each case's median over its rounds, and each target ratio on the medians and on every
# round's own rows: on this shared 2-core machine one 10-s row can be off by a third (a memory-store
# row below the sqlite one it is the reference for), and a single round's ratio then says nothing.
#
# Environment (defaults in brackets): DURATION [8] and WARMUP [1] seconds per case, ROUNDS [3],
# CONNECTIONS [64], TARGETS ["direct nginx bare-hop memory memory-info memory-skip memory-sealed sqlite-fsync sqlite-nofsync
# sqlite-nofsync-sealed fs-fsync fs-nofsync redis postgres postgres-sync"],
# MIXES ["read write new"],
# MEM_SESSIONS [1000000] (0 skips the memory benchmark), LOADGEN_CPU [0], SERVER_CPU [1],
# OUT [bench/RESULTS.md].
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-64}
TARGETS=${TARGETS:-direct nginx bare-hop memory memory-info memory-skip memory-sealed sqlite-fsync sqlite-nofsync sqlite-nofsync-sealed fs-fsync fs-nofsync redis postgres postgres-sync}
MIXES=${MIXES:-read write new}
MEM_SESSIONS=${MEM_SESSIONS:-1000000}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
OUT=${OUT:-bench/RESULTS.md}

# The commit as built: taken now, since others may commit while the benchmark runs.
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes to src/ or Cargo.*)"
fi
echo "== building (dist) at $COMMIT"
cargo build --profile dist --quiet --bins -p session-proxy -p bench-tools
BIN=target/dist
mkdir -p target
WORK=$(mktemp -d "$PWD/target/bench-load.XXXXXX")
RAW="$WORK/raw.tsv"
: >"$RAW"

# Process lifecycle (PIDS, stop_pid, the exit trap, pinning, start, wait_line).
# shellcheck source=bench/common.sh
source bench/common.sh

# One line of the raw file for a row that could not run; tabs and newlines are not allowed.
skip_row() {
  local target=$1 mix=$2 note=$3
  printf 'target=%s\tmix=%s\tround=%s\tskipped=%s\n' "$target" "$mix" "${round:-1}" "$(echo "$note" | tr '\t\n|' '   ')" >>"$RAW"
}

# start_redis (REDIS_PID, REDIS_PORT, REDIS_NOTE) comes from bench/common.sh.

# The reference hop: nginx in front of the same upstream, one worker (one core, as the proxy
# gets), keep-alive on both sides, no access log. Sets NGINX_PID and NGINX_ADDR, or NGINX_NOTE.
NGINX_PID=
NGINX_ADDR=
NGINX_NOTE=
start_nginx() {
  local upstream=$1 port try i dir="$WORK/nginx"
  NGINX_PID=
  if ! command -v nginx >/dev/null; then
    NGINX_NOTE="nginx is not installed (apt-get install -y nginx-light)"
    return
  fi
  mkdir -p "$dir/logs"
  for try in $(seq 20); do
    port=$((20000 + RANDOM % 30000))
    cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  upstream app { server $upstream; keepalive 64; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
    start nginx "$WORK/nginx.log" nginx -p "$dir" -c "$dir/nginx.conf"
    for i in $(seq 50); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        NGINX_PID=$STARTED_PID
        NGINX_ADDR=127.0.0.1:$port
        return
      fi
      kill -0 "$STARTED_PID" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$STARTED_PID"
  done
  NGINX_NOTE="could not start nginx on a free port: $(tail -1 "$dir/error.log" 2>/dev/null)"
}

# config TARGET: writes the proxy's config for TARGET and prints its path.
config() {
  local target=$1 file="$WORK/$1.toml"
  {
    echo 'shutdown_timeout = "1s"'
    echo '[store]'
    case $target in
      memory | memory-info | memory-skip | memory-sealed) echo 'kind = "memory"' ;;
      sqlite-fsync | sqlite-nofsync | sqlite-nofsync-sealed)
        echo 'kind = "sqlite"'
        echo "path = \"$WORK/sessions-$target.db\""
        [ "$target" = sqlite-fsync ] && echo 'fsync = true' || echo 'fsync = false'
        ;;
      fs-fsync | fs-nofsync)
        echo 'kind = "fs"'
        echo "path = \"$WORK/sessions-$target\""
        [ "$target" = fs-fsync ] && echo 'fsync = true' || echo 'fsync = false'
        ;;
      redis)
        echo 'kind = "redis"'
        echo "url = \"redis://127.0.0.1:$REDIS_PORT/0\""
        ;;
      postgres | postgres-sync)
        # A schema of its own per case (store.table), so each starts empty.
        echo 'kind = "postgres"'
        local db=async
        [ "$target" = postgres-sync ] && db=sync
        echo "url = \"postgres://postgres@127.0.0.1:$PG_PORT/$db?sslmode=disable\""
        echo "table = \"bench_${target//-/_}_${mix}_${round}\""
        ;;
    esac
    case $target in
      *-sealed) echo 'encryption_key = "bench-load-store-key-0123456789abcdef0123"' ;;
    esac
    if [ "$target" = memory-skip ]; then
      echo '[session]'
      echo 'skip = ["/static/"]'
    fi
  } >"$file"
  echo "$file"
}

run_case() {
  local target=$1 mix=$2 round=$3 percent cookies=() up_pid up_addr proxy_pid= url pids
  case $mix in
    read) percent=10 ;;
    write) percent=100 ;;
    new)
      percent=100
      cookies=(--no-cookies)
      ;;
    *)
      echo "unknown mix $mix" >&2
      return 1
      ;;
  esac
  if [ "$target" = redis ] && [ -z "$REDIS_PID" ]; then
    echo "-- $target/$mix: skipped: $REDIS_NOTE"
    skip_row "$target" "$mix" "$REDIS_NOTE"
    return
  fi
  case $target in postgres*) if [ -z "$PG_PID" ]; then
    echo "-- $target/$mix: skipped: $PG_NOTE"
    skip_row "$target" "$mix" "$PG_NOTE"
    return
  fi ;; esac
  # Start from a flushed disk: the previous case's files (and their deletion) must not be
  # written back during this one.
  sync
  start upstream "$WORK/upstream.log" "$BIN/bench_upstream" \
    --listen 127.0.0.1:0 --update-percent "$percent"
  up_pid=$STARTED_PID
  up_addr=$(wait_line "$up_pid" "$WORK/upstream.log" 'listening on http://([0-9.:]+)') || {
    echo "bench_upstream did not start:" >&2
    cat "$WORK/upstream.log.err" >&2
    return 1
  }
  url="http://$up_addr/"
  pids=(--pid "upstream=$up_pid")
  if [ "$target" = nginx ]; then
    start_nginx "$up_addr"
    if [ -z "$NGINX_PID" ]; then
      echo "-- $target/$mix: skipped: $NGINX_NOTE"
      skip_row "$target" "$mix" "$NGINX_NOTE"
      stop_pid "$up_pid"
      return
    fi
    proxy_pid=$NGINX_PID
    url="http://$NGINX_ADDR/"
    pids+=(--pid "proxy=$proxy_pid")
  elif [ "$target" = bare-hop ] || [ "$target" = bare-plain ]; then
    local mode=pooled
    [ "$target" = bare-plain ] && mode=plain
    start proxy "$WORK/proxy.log" "$BIN/bare_hop" --mode "$mode" \
      --listen 127.0.0.1:0 --upstream "$up_addr"
    proxy_pid=$STARTED_PID
    local hop_addr
    hop_addr=$(wait_line "$proxy_pid" "$WORK/proxy.log" 'listening on http://([0-9.:]+) ') || {
      echo "bare_hop did not start:" >&2
      cat "$WORK/proxy.log.err" >&2
      return 1
    }
    url="http://$hop_addr/"
    pids+=(--pid "proxy=$proxy_pid")
  elif [ "$target" != direct ]; then
    local level=warn
    [ "$target" = memory-info ] && level=info
    start proxy "$WORK/proxy.log" env RUST_LOG=$level "$BIN/session-proxy" \
      --config "$(config "$target")" --listen 127.0.0.1:0 --upstream "http://$up_addr"
    proxy_pid=$STARTED_PID
    local proxy_addr
    if ! proxy_addr=$(wait_line "$proxy_pid" "$WORK/proxy.log" 'listening on http://([0-9.:]+) '); then
      local why
      why=$(tail -1 "$WORK/proxy.log.err")
      echo "-- $target/$mix: skipped: the proxy did not start: $why"
      skip_row "$target" "$mix" "the proxy did not start: $why"
      stop_pid "$proxy_pid"
      stop_pid "$up_pid"
      return
    fi
    url="http://$proxy_addr/"
    [ "$target" = memory-skip ] && url="http://$proxy_addr/static/x"
    pids+=(--pid "proxy=$proxy_pid")
  fi
  [ "$target" = redis ] && pids+=(--pid "redis=$REDIS_PID")
  local line
  line=$("${PIN_LOAD[@]}" "$BIN/loadgen" run --url "$url" \
    --connections "$CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" \
    --clk-tck "$(getconf CLK_TCK)" "${cookies[@]}" "${pids[@]}" \
    --label "target=$target" --label "mix=$mix" --label "round=$round" --label "load1=$(cut -d' ' -f1 /proc/loadavg)")
  echo "$line" >>"$RAW"
  echo "-- $target/$mix ($round/$ROUNDS): $(echo "$line" | tr '\t' ' ' | sed 's/target=[^ ]* mix=[^ ]* round=[^ ]* //')"
  [ -n "$proxy_pid" ] && stop_pid "$proxy_pid"
  stop_pid "$up_pid"
  if [ "$target" != memory-info ] && [ -s "$WORK/proxy.log.err" ]; then
    echo "   proxy stderr (last lines):"
    tail -3 "$WORK/proxy.log.err" | sed 's/^/   /'
    : >"$WORK/proxy.log.err"
  fi
  rm -rf "$WORK/sessions-$target" "$WORK/sessions-$target.db" "$WORK/sessions-$target.db-wal" \
    "$WORK/sessions-$target.db-shm"
  : >"$WORK/proxy.log.err"
  if [ "$target" = redis ] && command -v redis-cli >/dev/null; then
    redis-cli -p "$REDIS_PORT" flushall >/dev/null || true
  fi
}

case " $TARGETS " in *" redis "*) start_redis ;; esac
case " $TARGETS " in *" postgres"*) start_postgres ;; esac

echo "== load: $ROUNDS rounds, ${DURATION}s per case (+${WARMUP}s warm-up), $CONNECTIONS connections; $PINNING"
for round in $(seq "$ROUNDS"); do
  for target in $TARGETS; do
    for mix in $MIXES; do
      run_case "$target" "$mix" "$round"
    done
  done
done

MEM="$WORK/mem.tsv"
: >"$MEM"
if [ "$MEM_SESSIONS" != 0 ]; then
  echo "== memory: $MEM_SESSIONS sessions in the memory store"
  "$BIN/mem_bench" --sessions "$MEM_SESSIONS" --data-bytes 200 | tee "$MEM"
fi

TABLE=$("$BIN/loadgen" report "$RAW" --mem "$MEM")
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
FS_TYPE=$(df -T "$WORK" | awk 'NR == 2 { print $2 }')

{
  echo "# session-proxy load benchmark"
  echo
  echo "Written by \`bench/load.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Rerun with \`bench/load.sh\`"
  echo "(\`DURATION=3 bench/load.sh\` for a quick run)."
  echo
  echo "- commit: $COMMIT"
  echo "- machine: $(nproc) cores, ${CPU_MODEL:-unknown CPU}, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "- $(rustc --version)"
  echo "- per case: ${WARMUP} s warm-up, then ${DURATION} s measured, $ROUNDS rounds (all cases once, then again), each row the median of its rounds; $CONNECTIONS keep-alive connections, each with its own cookie jar; closed loop (each connection sends its next request when the last answer is in)"
  echo "- pinning: $PINNING"
  echo "- postgres: $("$(pg_bin postgres)" --version 2>/dev/null || echo "not installed"), a cluster initdb'd for the run (\`shared_buffers = 256MB\`, otherwise the defaults, fsync on); \`postgres\` rows with \`synchronous_commit = off\`, \`postgres-sync\` with the default (on); the proxy's pool at its default 16; each case in a schema of its own (\`store.table\`)"
  echo "- fs store directory and sqlite file on $FS_TYPE; proxy with \`RUST_LOG=warn\` (memory-info: \`RUST_LOG=info\`, the default, stderr to a file; \`*-sealed\`: one \`store.encryption_key\`), default config otherwise"
  echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //' || echo "not installed"), one worker, keep-alive to the upstream, no access log: a plain proxy hop with no session work, for reference"
  echo "- \"steal %\" is the share of the machine's CPU time that the hypervisor gave to other guests during the measured part (\`/proc/stat\`; the median over rounds): on this shared VM it changes from one row to the next, and a row with more steal is slower for no reason in the code"
  echo "- \"load avg\" is \`/proc/loadavg\` (1 min) as each case started, the highest of its rounds; the benchmark itself adds about 2, so a higher value means other processes competed for the $(nproc) cores"
  echo
  echo "Mixes: **read** = 10 % of responses carry \`X-Session-Update\`; **write** = every response does;"
  echo "**new** = cookie-less clients and every response updates, so each request creates a session."
  echo "\"× direct\" compares with the upstream alone under the same mix (its \"new\" row is the same"
  echo "traffic without a proxy). CPU is utime + stime from \`/proc/PID/stat\` over the measured"
  echo "part, in CPU-seconds per 10,000 requests; the upstream's is measured in the same run."
  echo "Sessions hold ~200 bytes of JSON once the first update has landed."
  echo
  echo "$TABLE"
  echo
  echo "<details><summary>Raw loadgen output</summary>"
  echo
  echo '```'
  cat "$RAW" "$MEM"
  echo '```'
  echo
  echo "</details>"
} >"$OUT"
echo "== wrote $OUT"
echo
echo "$TABLE"
