# Shared by load.sh and profile.sh: the lifecycle of the processes a benchmark starts, so both
# stop every one of them by its PID however they end. Source it after WORK is set (cleanup
# removes it); LOADGEN_CPU and SERVER_CPU choose the cores (defaults 0 and 1).

LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}

PIDS=()
stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_LOAD=(taskset -c "$LOADGEN_CPU")
  PIN_SERVER=(taskset -c "$SERVER_CPU")
  PINNING="load generator on core $LOADGEN_CPU; upstream, proxy and the store's server (redis-server, postgres) on core $SERVER_CPU"
else
  PIN_LOAD=()
  PIN_SERVER=()
  PINNING="not pinned (needs taskset and 2+ cores)"
fi

# start NAME LOGFILE CMD...: starts CMD in the background, pinned to the server core; sets
# STARTED_PID. (taskset execs the command, so $! is the process itself.)
start() {
  local name=$1 log=$2
  shift 2
  # Truncate here, not in the background job: a wait_line that runs first must not find the
  # previous run's line.
  : >"$log"
  : >"$log.err"
  "${PIN_SERVER[@]}" "$@" >"$log" 2>"$log.err" &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# wait_line PID LOGFILE REGEX: waits up to 10 s for the line and prints its first capture.
wait_line() {
  local pid=$1 log=$2 re=$3 i
  for i in $(seq 100); do
    if grep -qE "$re" "$log" 2>/dev/null; then
      sed -nE "s#.*$re.*#\\1#p" "$log" | head -1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# upstream_and_config MIX STORE: for the single-case scripts (profile.sh, instructions.sh).
# Starts the bench upstream for MIX (read: 10 % of responses update, write: all) on the server
# core and writes $WORK/proxy.toml for STORE (memory, sqlite-fsync, sqlite-nofsync, fs-fsync,
# fs-nofsync or redis: call start_redis first). Sets UP_PID and
# UP (its address). Exits 2 on an unknown MIX or STORE.
upstream_and_config() {
  local mix=$1 store=$2 percent
  case $mix in
    read) percent=10 ;;
    write) percent=100 ;;
    *) echo "MIX is read or write" >&2; exit 2 ;;
  esac
  case $store in
    memory) printf 'shutdown_timeout = "1s"\n[store]\nkind = "memory"\n' ;;
    sqlite-fsync | sqlite-nofsync)
      printf 'shutdown_timeout = "1s"\n[store]\nkind = "sqlite"\npath = "%s"\nfsync = %s\n' \
        "$WORK/sessions.db" "$([ "$store" = sqlite-fsync ] && echo true || echo false)"
      ;;
    fs-fsync | fs-nofsync)
      printf 'shutdown_timeout = "1s"\n[store]\nkind = "fs"\npath = "%s"\nfsync = %s\n' \
        "$WORK/sessions" "$([ "$store" = fs-fsync ] && echo true || echo false)"
      ;;
    redis)
      [ -n "${REDIS_PORT:-}" ] || { echo "STORE=redis needs start_redis first" >&2; exit 2; }
      printf 'shutdown_timeout = "1s"\n[store]\nkind = "redis"\nurl = "redis://127.0.0.1:%s/0"\n' \
        "$REDIS_PORT"
      ;;
    *) echo "STORE is memory, sqlite-fsync, sqlite-nofsync, fs-fsync, fs-nofsync or redis" >&2; exit 2 ;;
  esac >"$WORK/proxy.toml"
  start upstream "$WORK/up.log" target/${BENCH_PROFILE:-dist}/bench_upstream --listen 127.0.0.1:0 \
    --update-percent "$percent"
  UP_PID=$STARTED_PID
  UP=$(wait_line "$UP_PID" "$WORK/up.log" 'listening on http://([0-9.:]+)')
}

# start_redis: a redis-server of our own (no persistence) on a free port, on the server core.
# Sets REDIS_PID and REDIS_PORT, or REDIS_NOTE (why not) with both empty.
REDIS_PID=
REDIS_PORT=
REDIS_NOTE=
start_redis() {
  if ! command -v redis-server >/dev/null; then
    REDIS_NOTE="redis-server is not installed (apt-get install -y redis-server)"
    return
  fi
  local port try
  for try in $(seq 20); do
    port=$((20000 + RANDOM % 30000))
    start redis "$WORK/redis.log" redis-server --port "$port" --bind 127.0.0.1 \
      --save "" --appendonly no --dir "$WORK" --daemonize no
    if wait_line "$STARTED_PID" "$WORK/redis.log" "(Ready to accept connections)" >/dev/null; then
      REDIS_PID=$STARTED_PID
      REDIS_PORT=$port
      return
    fi
    stop_pid "$STARTED_PID"
  done
  REDIS_NOTE="could not start redis-server on a free port"
}

# start_postgres: a PostgreSQL cluster of our own (initdb in $WORK/pg, run as nobody when we
# are root, since initdb refuses root) on a free port of 127.0.0.1, on the server core, with
# two databases: `sync` (the defaults: a commit waits for its WAL flush) and `async`
# (`synchronous_commit = off`: a commit does not wait for the flush; a server crash may lose
# the last ~0.2 s of commits, never corrupt). Sets PG_PID and PG_PORT, or PG_NOTE (why not).
PG_PID=
PG_PORT=
PG_NOTE=
pg_bin() {
  command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1
}
start_postgres() {
  local initdb postgres psql as=() port try
  initdb=$(pg_bin initdb)
  postgres=$(pg_bin postgres)
  psql=$(pg_bin psql)
  if [ -z "$initdb" ] || [ -z "$postgres" ] || [ -z "$psql" ]; then
    PG_NOTE="PostgreSQL is not installed (apt-get install -y postgresql)"
    return
  fi
  mkdir -p "$WORK/pg"
  if [ "$(id -u)" = 0 ]; then
    chmod 711 "$WORK"
    chown nobody:nogroup "$WORK/pg"
    as=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  fi
  "${as[@]}" "$initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 --locale=C \
    >"$WORK/initdb.log" 2>&1 || { PG_NOTE="initdb failed: $(tail -1 "$WORK/initdb.log")"; return; }
  for try in $(seq 20); do
    port=$((20000 + RANDOM % 30000))
    start postgres "$WORK/postgres.log" "${as[@]}" "$postgres" -D "$WORK/pg/data" -p "$port" \
      -k "$WORK/pg" -c listen_addresses=127.0.0.1 -c shared_buffers=256MB -c max_connections=200
    if wait_line "$STARTED_PID" "$WORK/postgres.log.err" "(ready to accept connections)" >/dev/null; then
      PG_PID=$STARTED_PID
      PG_PORT=$port
      "$psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c 'CREATE DATABASE sync' -c 'CREATE DATABASE async' \
        -c 'ALTER DATABASE async SET synchronous_commit = off' >/dev/null
      return
    fi
    stop_pid "$STARTED_PID"
  done
  PG_NOTE="could not start postgres on a free port: $(tail -1 "$WORK/postgres.log.err")"
}
