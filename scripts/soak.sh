#!/usr/bin/env bash
# scripts/soak.sh — soak tierwarden with many concurrent sessions (loopback only).
#
#   1. cargo build --release (the binary and examples/soak.rs)
#   2. a throwaway `tierwarden quickstart` in a temporary directory; the
#      cluster gets max_connections = SESSIONS + 200 (ALTER SYSTEM, then the
#      quickstart is restarted and reuses its cluster)
#   3. the load client (examples/soak.rs): SOAK_SESSIONS concurrent sessions
#      over every role/environment pair the matrix allows (TLS for prod),
#      each running allowed statements (must succeed) and forbidden ones
#      (must be denied) for SOAK_WARMUP + SOAK_SECONDS; during the measured
#      SOAK_SECONDS it samples the proxy process's RSS and open fds every
#      second and compares the first and last quarter (the warm-up lets every
#      session's relay buffers reach their size first)
#   4. prints the summary and one `SOAK_JSON {...}` line; exit code 0 only
#      when there was no unexpected error, no denied legitimate statement,
#      no allowed forbidden one, and RSS/fds did not grow
# Everything it starts is stopped by PID on exit (trap EXIT).
#
# Knobs (environment): SOAK_SESSIONS (1000), SOAK_SECONDS (150), SOAK_WARMUP (240),
# SOAK_THINK_MS (50: pause between two statements of one session),
# SOAK_OUT (also write the output there), SOAK_KEEP=1 (keep the directory).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SESSIONS=${SOAK_SESSIONS:-1000}
SECONDS_RUN=${SOAK_SECONDS:-150}
WARMUP=${SOAK_WARMUP:-240}
THINK=${SOAK_THINK_MS:-50}
OUT=${SOAK_OUT:-}

log() { printf '[soak %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

for tool in psql python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y postgresql-client python3)"
done
# Sessions hold a client and an upstream socket each, in one process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "cargo build --release (tierwarden + examples/soak)"
(cd "$ROOT" && cargo build --release --quiet --bin tierwarden --example soak) || die "cargo build"
BIN=$ROOT/target/release/tierwarden
LOAD=$ROOT/target/release/examples/soak

WORK=$(mktemp -d /tmp/tierwarden-soak.XXXXXX)
chmod 711 "$WORK"
QS=$WORK/qs
LOGFILE=$WORK/tierwarden.log
TW_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -n "$TW_PID" ] && stop_pid "$TW_PID"
    stop_leftover_postmaster "$QS"
    if [ "${SOAK_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BASE=$(free_port_base 5)
[ -n "$BASE" ] || die "no free port range"

start_quickstart "$BIN" "$QS" "$BASE" "$LOGFILE"

PG_PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pg_port"])' "$QS/state.json")
super_sql() {
    PGPASSWORD=$(cat "$QS/pgdata/superuser.password") psql -XAtq -v ON_ERROR_STOP=1 \
        "host=127.0.0.1 port=$PG_PORT user=tierwarden_admin dbname=postgres sslmode=disable" -c "$1"
}
MAXCONN=$((SESSIONS + 200))
log "cluster on port $PG_PORT: max_connections=$MAXCONN; restarting the quickstart"
super_sql "ALTER SYSTEM SET max_connections = $MAXCONN" >/dev/null
stop_pid "$TW_PID"
start_quickstart "$BIN" "$QS" "$BASE" "$LOGFILE"
[ "$(super_sql 'SHOW max_connections')" = "$MAXCONN" ] || die "max_connections not applied"

log "load: $SESSIONS sessions, $WARMUP s warm-up + $SECONDS_RUN s measured (think $THINK ms), proxy PID $TW_PID"
set +e
"$LOAD" --dir "$QS" --pid "$TW_PID" --sessions "$SESSIONS" --warmup "$WARMUP" --seconds "$SECONDS_RUN" \
    --think-ms "$THINK" | tee "$WORK/soak.out"
RC=${PIPESTATUS[0]}
set -e
[ -n "$OUT" ] && cp "$WORK/soak.out" "$OUT"
if grep -q "panicked" "$LOGFILE"; then
    log "the proxy log shows a panic"
    RC=1
fi
log "done (exit $RC); stopping the quickstart"
exit "$RC"
