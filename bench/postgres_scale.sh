#!/usr/bin/env bash
# The PostgreSQL store at a million sessions (issue [postgres]): a page of 50 of the admin
# listing, and the request p99 while the sweeper prunes 100,000 expired sessions. One command,
# re-runnable:
#
#   bench/postgres_scale.sh                   # 1,000,000 sessions, a tenth expired; writes bench/POSTGRES.md
#   SESSIONS=200000 bench/postgres_scale.sh   # a quick run
#
# Starts a PostgreSQL cluster of its own (bench/common.sh start_postgres, database `async`:
# `synchronous_commit = off`, as the `postgres` rows of bench/load.sh), lets `session-proxy
# check` create the schema, fills it with SESSIONS sessions of ~200 bytes in one INSERT (a
# tenth already expired; handles as the proxy makes them, base64url of a SHA-256), then starts
# the release proxy on it with the admin listener and `sweep_interval = SWEEP`:
#
# 1. listing: SAMPLES calls of `GET /sessions?limit=50` at each of three cursors (the start,
#    the middle and the end of the handle space), timed by curl (`time_total`: connect, request
#    and the whole answer, over HTTP on 127.0.0.1), before any load;
# 2. prune: back-to-back loadgen windows of WINDOW seconds (64 connections with cookie jars,
#    every request updates its session, as sqlite_prune.sh) from then until two windows after
#    the sweeper logs its pass: the windows before the pass are the baseline, those it
#    overlaps are "during".
#
# Pinning as bench/load.sh (load generator on one core; proxy, upstream and postgres on the
# other). Every process is stopped by its PID on exit.
#
# Environment (defaults in brackets): SESSIONS [1000000], SAMPLES [100], SWEEP [30],
# WINDOW [1], CONNECTIONS [64], OUT [bench/POSTGRES.md].
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-1000000}
SAMPLES=${SAMPLES:-100}
SWEEP=${SWEEP:-30}
WINDOW=${WINDOW:-1}
CONNECTIONS=${CONNECTIONS:-64}
OUT=${OUT:-bench/POSTGRES.md}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no -- src bench/tools Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes to src/, bench/tools or Cargo.*)"
fi

echo "== building (release) at $COMMIT"
cargo build --profile dist --quiet --bins -p session-proxy -p bench-tools
BIN=target/dist
mkdir -p target
WORK=$(mktemp -d "$PWD/target/bench-pg.XXXXXX")
# shellcheck source=bench/common.sh
source bench/common.sh

start_postgres
[ -n "$PG_PID" ] || { echo "no PostgreSQL: $PG_NOTE" >&2; exit 1; }
PSQL=(psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d async)
URL="postgres://postgres@127.0.0.1:$PG_PORT/async?sslmode=disable"

start upstream "$WORK/up.log" "$BIN/bench_upstream" --listen 127.0.0.1:0 --update-percent 100
UP_PID=$STARTED_PID
UP=$(wait_line "$UP_PID" "$WORK/up.log" 'listening on http://([0-9.:]+)')
printf 'shutdown_timeout = "1s"\n[store]\nkind = "postgres"\nurl = "%s"\nsweep_interval = "%ss"\n[admin]\nlisten = "127.0.0.1:0"\n' \
  "$URL" "$SWEEP" >"$WORK/proxy.toml"
"$BIN/session-proxy" check --config "$WORK/proxy.toml" --upstream "http://$UP" >/dev/null

echo "== filling with $SESSIONS sessions (a tenth expired)"
FILL_START=$(date +%s.%N)
"${PSQL[@]}" <<SQL
INSERT INTO session_proxy.sessions (handle, data, created_at, updated_at, expires_at, version)
SELECT rtrim(translate(encode(sha256(('bench-' || i)::bytea), 'base64'), '+/', '-_'), '='),
       '{"user":"user' || (i % 50000) || '","cart":[1,2,3],"pad":"' || repeat('x', 140) || '"}',
       t, t, CASE WHEN i % 10 = 0 THEN t - 1000 ELSE t + 86400000 END, 1
FROM generate_series(1, $SESSIONS) AS i,
     (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS t) AS now;
VACUUM ANALYZE session_proxy.sessions;
SQL
FILL_S=$(awk -v s="$FILL_START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
ROWS=$("${PSQL[@]}" -At -c 'SELECT count(*) FROM session_proxy.sessions')
SIZE=$("${PSQL[@]}" -At -c "SELECT pg_size_pretty(pg_total_relation_size('session_proxy.sessions'))")
echo "   $ROWS rows, $SIZE with indexes, in ${FILL_S} s"

# The sweeper's pass is logged at info; everything else at warn, as in bench/load.sh.
start proxy "$WORK/proxy.log" env RUST_LOG=warn,session_proxy::store=info "$BIN/session-proxy" \
  --config "$WORK/proxy.toml" --listen 127.0.0.1:0 --upstream "http://$UP"
PROXY_PID=$STARTED_PID
ADDR=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'listening on http://([0-9.:]+) ')
ADMIN=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'admin on http://([0-9.:]+)')
T0=$(date +%s.%N)

echo "== listing: $SAMPLES pages of 50 at each of three cursors"
LIST="$WORK/list.tsv"
: >"$LIST"
# Cursors: none (the start), and the handles at the middle and near the end of the order.
MID=$("${PSQL[@]}" -At -c "SELECT handle FROM session_proxy.sessions ORDER BY handle OFFSET $((SESSIONS / 2)) LIMIT 1")
END=$("${PSQL[@]}" -At -c "SELECT handle FROM session_proxy.sessions ORDER BY handle OFFSET $((SESSIONS - 200)) LIMIT 1")
for at in start middle end; do
  case $at in
    start) q='limit=50' ;;
    middle) q="limit=50&cursor=$MID" ;;
    end) q="limit=50&cursor=$END" ;;
  esac
  for i in $(seq "$SAMPLES"); do
    curl -s -o "$WORK/page.json" -w "$at\t%{http_code}\t%{time_total}\n" "http://$ADMIN/sessions?$q" >>"$LIST"
  done
  n=$(grep -o '"handle"' "$WORK/page.json" | wc -l)
  echo "$at: $n sessions in the last page" >>"$WORK/pages.txt"
done
if grep -qv "	200	" "$LIST"; then
  echo "a listing call failed:" >&2
  grep -v "	200	" "$LIST" | head >&2
  exit 1
fi
# p50, p99 and max of one cursor's times, in ms.
stats() {
  grep "^$1	" "$LIST" | cut -f3 | sort -g |
    awk '{ a[NR] = $1 * 1000 } END { printf "%.2f\t%.2f\t%.2f", a[int(NR * 0.5 + 0.5)], a[int(NR * 0.99 + 0.5)], a[NR] }'
}

echo "== prune: windows of ${WINDOW} s until two after the sweeper's pass (at ${SWEEP} s)"
RAW="$WORK/windows.tsv"
: >"$RAW"
swept() { grep -q 'swept expired sessions' "$WORK/proxy.log.err"; }
after=0
for w in $(seq 1000); do
  done_before=false
  swept && done_before=true
  started=$(date +%s.%N)
  line=$("${PIN_LOAD[@]}" "$BIN/loadgen" run --url "http://$ADDR/" --connections "$CONNECTIONS" \
    --warmup 0 --duration "$WINDOW" --clk-tck "$(getconf CLK_TCK)" --pid "proxy=$PROXY_PID")
  ended=$(date +%s.%N)
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
LEFT=$("${PSQL[@]}" -At -c 'SELECT count(*) FROM session_proxy.sessions')

field() { tr '\t' '\n' | sed -n "s/^$1=//p"; }
BASE=$(grep 'phase=baseline' "$RAW" | tail -n +3 | field p99_ms | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
WORST=$(grep 'phase=during' "$RAW" | field p99_ms | sort -g | tail -1)
RATIO=$(awk -v w="$WORST" -v b="$BASE" 'BEGIN { printf "%.2f", w / b }')
MET=$(awk -v r="$RATIO" 'BEGIN { print (r <= 3) ? "yes" : "**no**" }')
WORST_PAGE=$(for at in start middle end; do stats "$at" | cut -f2; done | sort -g | tail -1)
PAGE_MET=$(awk -v p="$WORST_PAGE" 'BEGIN { print (p < 10) ? "yes" : "**no**" }')

{
  echo "# The PostgreSQL store at a million sessions"
  echo
  echo "Written by \`bench/postgres_scale.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $COMMIT;"
  echo "$(nproc) cores, $PINNING; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  echo "$("$(pg_bin postgres)" --version), a cluster initdb'd for the run (\`shared_buffers = 256MB\`,"
  echo "fsync on, \`synchronous_commit = off\` on the database). $ROWS sessions of ~200 bytes"
  echo "($SIZE with indexes), a tenth expired, filled in ${FILL_S} s; the proxy's pool at its default 16."
  echo
  echo "| target | measured | met |"
  echo "|---|---|---|"
  echo "| a page of 50 in < 10 ms (worst p99 of the three cursors) | ${WORST_PAGE} ms | $PAGE_MET |"
  echo "| p99 during the prune of the expired ≤ 3× baseline | ${BASE} ms → ${WORST} ms (${RATIO}×) | $MET |"
  echo
  echo "## A page of 50 (\`GET /sessions?limit=50\` on the admin listener, curl's time_total)"
  echo
  echo "| cursor | calls | p50 ms | p99 ms | max ms |"
  echo "|---|---:|---:|---:|---:|"
  for at in start middle end; do
    IFS=$'\t' read -r p50 p99 max <<<"$(stats "$at")"
    echo "| $at | $SAMPLES | $p50 | $p99 | $max |"
  done
  echo
  echo "## Requests while the sweeper prunes"
  echo
  echo "Every request updates its session; $CONNECTIONS connections with cookie jars; windows of"
  echo "${WINDOW} s; the first two baseline windows are left out of the baseline. The sweeper's line:"
  echo "\`${SWEPT_LINE#*INFO }\`; sessions left: $LEFT."
  echo
  echo '```'
  cat "$WORK/pages.txt"
  sed -E 's/\tcpu_proxy=[^\t]*//' "$RAW"
  echo '```'
} >"$OUT"
echo "== wrote $OUT"
cat "$OUT"
