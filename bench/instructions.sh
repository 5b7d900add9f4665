#!/usr/bin/env bash
# Instructions per request: the proxy's CPU cost as a count that does not depend on how busy the
# machine is (issue [perf]).
#
#   bench/instructions.sh                 # memory store, every request updates its session
#   MIX=read STORE=fs-nofsync bench/instructions.sh
#   MIX=new STORE=sqlite-fsync bench/instructions.sh  # every request creates a session
#   STORE=redis bench/instructions.sh     # on a redis-server of its own
#   USER_KEY=profile bench/instructions.sh  # with a user index (session.user_key)
#   SECRET=1 MIX=write bench/instructions.sh  # signed cookies: verify + sign on every request
#   ASSERTION=1 bench/instructions.sh     # with [assertion]: every request gets a signed JWT
#   STORE_KEY=1 bench/instructions.sh     # session data encrypted at rest (store.encryption_key)
#   TRACING=1 bench/instructions.sh       # [tracing] on: every request's spans exported (ratio 1)
#   BODY=512 bench/instructions.sh        # POSTs of a 512-byte body (buffered: limits.request_buffer)
#   BODY=512 BUFFER=0 bench/instructions.sh  # the same bodies streamed (request_buffer = 0)
#   SKIP=1 bench/instructions.sh           # `[session] skip = ["/"]`: every path skipped (no
#                                          # store call, no session headers; the rest still runs)
#   TARGET=bare-hop bench/instructions.sh  # the bare hop (bench/tools/src/bin/bare_hop.rs): the
#                                          # proxy's engine with no session work, the reference
#   TARGET=bare-plain bench/instructions.sh  # hyper alone: one client connection per client's
#
# Throughput on a shared VM swings by ±20 % between runs of the same binary, so a change worth
# 5 % cannot be seen in bench/load.sh. This runs the proxy under valgrind's callgrind (user-space
# instructions, exact and repeatable), drives it for DURATION seconds with 16 connections, and
# prints instructions per request for the whole process and for the proxy's own functions
# (inclusive). Compare two commits by running it on each. Kernel time (the sockets) is not
# counted: bench/profile.sh (perf) shows that half.
#
# Needs valgrind (apt-get install -y valgrind). Traffic goes only to 127.0.0.1; every process is
# stopped by its PID on exit. Environment: TARGET [proxy; bare-hop, bare-plain: the
# reference hops, whose config and session settings are ignored], DURATION [8], MIX [write; read, new], STORE [memory], TOP [30],
# LOG [warn] (the proxy's RUST_LOG; info, the default level, adds the access-log line's cost),
# USER_KEY [unset] (`session.user_key`; the bench app's sessions hold `visits`, an integer that
# every update changes, so every write moves the session to another user: the worst case, and
# `profile`, a string set once, so the user never changes: the common case), SECRET [unset; 1]
# (`cookie.secret` set, one key, and `cookie.max_age = "1d"`: every cookie is signed, and
# loadgen's clients keep the Set-Cookie they get, so each request after a connection's first
# carries a signed cookie the proxy verifies; max_age makes the expiry slide, so each write also
# re-sends the cookie, signed again: MIX=write verifies and signs on every request, MIX=read
# verifies on every one and signs on the 10 % that update), ASSERTION [unset] (1: `[assertion]`
# on, a fresh key in the work directory, so every request is signed), BODY [0] (bytes of
# each request's body: 0 sends GETs, which carry none; N sends POSTs with a Content-Length), BUFFER
# [unset] (`limits.request_buffer`; 0 streams every body, as before request buffering), STORE_KEY
# [unset] (1: one `store.encryption_key`, given as SESSION_PROXY_STORE_KEY: every load opens and
# every write seals the session's data), NEW_PER_IP [unset] (`limits.new_sessions_per_ip`: with
# MIX=new, "1000000/s" asks the cap on every creation and lets each through, "1/h" refuses all but
# the first), TRACING [unset] (a ratio: `[tracing]` on with that `sample_ratio`, the spans sent
# over OTLP/HTTP to the bench upstream, which answers 200).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
MIX=${MIX:-write}
STORE=${STORE:-memory}
TOP=${TOP:-30}
LOG=${LOG:-warn}
SECRET=${SECRET:-}
SIGNED=off
[ -z "$SECRET" ] || SIGNED=on
for tool in valgrind callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y valgrind" >&2; exit 1; }
done

# BENCH_PROFILE [dist]: the cargo profile built and run. `release` (thin LTO) builds in a fraction
# of dist's time, for an A/B of two commits; compare both arms on the same profile, and quote
# dist's figures against other sections of bench/PROFILE.md.
BENCH_PROFILE=${BENCH_PROFILE:-dist}
BIN=target/$BENCH_PROFILE
cargo build --profile "$BENCH_PROFILE" --quiet --bins -p session-proxy -p bench-tools
OUTDIR=target/bench-instructions
mkdir -p "$OUTDIR"
WORK=$(mktemp -d "$PWD/target/bench-instructions.XXXXXX")

# shellcheck source=bench/common.sh
source bench/common.sh

# "new": cookie-less clients, every response updates, so every request creates a session.
COOKIES=()
UP_MIX=$MIX
if [ "$MIX" = new ]; then
  COOKIES=(--no-cookies)
  UP_MIX=write
fi
if [ "$STORE" = redis ]; then
  start_redis
  [ -n "$REDIS_PORT" ] || { echo "$REDIS_NOTE" >&2; exit 1; }
fi
upstream_and_config "$UP_MIX" "$STORE"
if [ -n "${BUFFER:-}${NEW_PER_IP:-}" ]; then
  printf '[limits]\n' >>"$WORK/proxy.toml"
  [ -z "${BUFFER:-}" ] || printf 'request_buffer = %s\n' "$BUFFER" >>"$WORK/proxy.toml"
  [ -z "${NEW_PER_IP:-}" ] || printf 'new_sessions_per_ip = "%s"\n' "$NEW_PER_IP" >>"$WORK/proxy.toml"
fi
if [ -n "${SKIP:-}${USER_KEY:-}" ]; then
  printf '[session]\n' >>"$WORK/proxy.toml"
  [ -z "${SKIP:-}" ] || printf 'skip = ["/"]\n' >>"$WORK/proxy.toml"
  [ -z "${USER_KEY:-}" ] || printf 'user_key = "%s"\n' "$USER_KEY" >>"$WORK/proxy.toml"
fi
if [ "$SIGNED" = on ]; then
  printf '[cookie]\nsecret = "%s"\nmax_age = "1d"\n' \
    "bench-instructions-only-0123456789abcdef0123456789" >>"$WORK/proxy.toml"
fi
if [ -n "${ASSERTION:-}" ]; then
  printf '[assertion]\nkey_file = "%s"\n' "$WORK/assertion.pem" >>"$WORK/proxy.toml"
fi
if [ -n "${TRACING:-}" ]; then
  # The bench upstream stands in for the collector: it answers every POST with a 200, which is
  # all the exporter waits for; the spans' encoding and sending are the proxy's, and counted.
  printf '[tracing]\notlp_endpoint = "http://%s/v1/traces"\nsample_ratio = %s\n' \
    "$UP" "$TRACING" >>"$WORK/proxy.toml"
fi
if [ -n "${STORE_KEY:-}" ]; then
  export SESSION_PROXY_STORE_KEY="bench-instructions-store-key-0123456789abcdef"
fi
# RUST_LOG is set outside valgrind: under `env`, valgrind would instrument env, not the proxy.
export RUST_LOG=$LOG
TARGET=${TARGET:-proxy}
case $TARGET in
  proxy) HOP=("$BIN/session-proxy" --config "$WORK/proxy.toml" --upstream "http://$UP") ;;
  bare-hop) HOP=("$BIN/bare_hop" --mode pooled --upstream "$UP") ;;
  bare-plain) HOP=("$BIN/bare_hop" --mode plain --upstream "$UP") ;;
  *) echo "TARGET is proxy, bare-hop or bare-plain" >&2; exit 2 ;;
esac
start proxy "$WORK/proxy.log" valgrind --tool=callgrind \
  --callgrind-out-file="$OUTDIR/callgrind.out" "${HOP[@]}" --listen 127.0.0.1:0
PROXY_PID=$STARTED_PID
# Under valgrind the proxy takes a few seconds to start.
for _ in 1 2 3; do
  PROXY=$(wait_line "$PROXY_PID" "$WORK/proxy.log" 'listening on http://([0-9.:]+) ') && break
done
[ -n "${PROXY:-}" ] || { echo "the proxy did not start:" >&2; cat "$WORK/proxy.log.err" >&2; exit 1; }

echo "== callgrind on $TARGET ($BENCH_PROFILE), store=$STORE, mix=$MIX, skip=${SKIP:-off}, user_key=${USER_KEY:-off}, signed=$SIGNED, assertion=${ASSERTION:-off}, store_key=${STORE_KEY:-off}, tracing=${TRACING:-off}, body=${BODY:-0} bytes, request_buffer=${BUFFER:-default}, RUST_LOG=$LOG, ${DURATION}s, 16 connections"
LINE=$("${PIN_LOAD[@]}" "$BIN/loadgen" run --url "http://$PROXY/" \
  --connections 16 --warmup 0 --duration "$DURATION" --body "${BODY:-0}" "${COOKIES[@]}")
REQUESTS=$(echo "$LINE" | tr '\t' '\n' | sed -n 's/^requests=//p')
# SIGTERM: the proxy shuts down gracefully and callgrind writes its file on exit.
stop_pid "$PROXY_PID"
[ -s "$OUTDIR/callgrind.out" ] || { echo "callgrind wrote nothing" >&2; exit 1; }

callgrind_annotate --inclusive=yes "$OUTDIR/callgrind.out" 2>/dev/null >"$OUTDIR/inclusive.txt"
TOTAL=$(sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' "$OUTDIR/inclusive.txt" | tr -d ,)
echo "requests: $REQUESTS"
echo "instructions per request, whole process (start-up included, under 1 %): $((TOTAL / REQUESTS))"
echo
echo "== top $TOP of the proxy's own functions, inclusive, per request ($OUTDIR/inclusive.txt)"
# The bare hop's own functions are `bare_hop::`; the library's, `session_proxy::`.
grep -v '=>' "$OUTDIR/inclusive.txt" | grep -E 'session_proxy::|bare_hop::' |
  sed -E 's#^ *([0-9,]+) .*((session_proxy|bare_hop)::[^ ]*).*#\1 \2#' | tr -d , |
  awk -v n="$REQUESTS" '!seen[$2]++ { printf "%8.0f  %s\n", $1 / n, $2 }' |
  sort -rn | head -"$TOP"
