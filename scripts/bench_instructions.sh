#!/usr/bin/env bash
# scripts/bench_instructions.sh — user-space instructions per transaction,
# tierwarden next to PgBouncer, counted by valgrind's callgrind.
#
# TPS and CPU time on a shared or virtual machine move by ±15% between
# identical runs; the number of instructions a proxy executes per
# transaction does not (±3% here). This script runs both proxies under
# callgrind (instrumentation off until measured), in front of one
# throwaway cluster on 127.0.0.1, and for each workload counts the
# instructions of two pgbench runs of different length: the difference
# divided by the difference in transactions is the marginal cost of one
# transaction, without connection setup (SCRAM, startup) and warm-up.
# Kernel work (the socket calls themselves) is not counted: both proxies
# make the same ones (see docs/benchmarks.md).
#
# Knobs (environment): INSTR_SHORT (100) and INSTR_LONG (600)
# transactions per client, INSTR_CASES (";"-separated pgbench options),
# BENCH_OUT (also write the report to this file), BENCH_KEEP=1.
# Needs valgrind (installed with apt-get when run as root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHORT=${INSTR_SHORT:-100}
LONG=${INSTR_LONG:-600}
IFS=';' read -r -a CASES <<<"${INSTR_CASES:--S -M simple -c 4;-S -M extended -c 4;-M simple -c 2;-M extended -c 2}"
OUT=${BENCH_OUT:-}

log() { printf '[instructions %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v pgbouncer >/dev/null || need+=(pgbouncer)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing: ${need[*]} (apt-get install -y ${need[*]})"
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >&2
fi
for tool in pgbench psql python3 callgrind_control; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1 || die "running as root needs a postgres system user"

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release"
BIN=$ROOT/target/release/tierwarden
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] ||
    COMMIT="$COMMIT (+ uncommitted changes)"

WORK=$(mktemp -d /tmp/tierwarden-instr.XXXXXX)
chmod 711 "$WORK"
QS=$WORK/qs
TW_PID=""
PGB_PID=""
PGB_VG=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in $PGB_VG $PGB_PID $TW_PID; do
        stop_pid "$pid"
    done
    stop_leftover_postmaster "$QS"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BASE=$(free_port_base 7)
[ -n "$BASE" ] || die "no free port range"
PGB_PORT=$((BASE + 5))

# tierwarden under callgrind: the wrapper execs valgrind, so the PID the
# quickstart helper records is the measured process.
cat >"$WORK/tierwarden-callgrind" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$WORK/tw.callgrind.%p "$BIN" "\$@"
EOF
chmod 755 "$WORK/tierwarden-callgrind"
start_quickstart "$WORK/tierwarden-callgrind" "$QS" "$BASE" "$WORK/tierwarden.log"

jq_py() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$2"; }
PG_PORT=$(jq_py 'd["pg_port"]' "$QS/state.json")
OWNER_PW=$(cat "$QS/secrets/tw_dev_owner.password")
APP_PW=$(jq_py 'd["identities"]["app_runtime"]["passwords"]["dev"]' "$QS/quickstart.json")
TW_URL="postgresql://app_runtime@127.0.0.1:$BASE/app_dev?sslmode=disable"
PGB_URL="postgresql://tw_dev_owner@127.0.0.1:$PGB_PORT/app_dev?sslmode=disable"

log "pgbench -i -s 1 (app_dev)"
PGPASSWORD=$OWNER_PW pgbench -i -q -s 1 \
    "postgresql://tw_dev_owner@127.0.0.1:$PG_PORT/app_dev?sslmode=disable" >"$WORK/init.log" 2>&1 ||
    die "pgbench -i (see $WORK/init.log)"

log "starting PgBouncer (session mode) under callgrind on port $PGB_PORT"
PGB_DIR=$WORK/pgbouncer
write_pgbouncer_config "$PGB_DIR" "$PG_PORT" "$PGB_PORT" tw_dev_owner "$OWNER_PW"
# PgBouncer refuses root; callgrind_control must then run as its user too.
AS_PGB=()
[ "$(id -u)" != 0 ] || AS_PGB=(runuser -u postgres --)
"${AS_PGB[@]}" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$PGB_DIR/pgb.callgrind.%p" pgbouncer "$PGB_DIR/pgbouncer.ini" \
    >"$WORK/pgbouncer.stdout" 2>&1 &
PGB_PID=$!
wait_for_pgbouncer "$PGB_URL" "$OWNER_PW" "$PGB_PID" "$WORK/pgbouncer.stdout" 60
# runuser stays the parent: the measured process is valgrind's.
PGB_VG=$(pgrep -n -f -- "--callgrind-out-file=$PGB_DIR/") || die "PgBouncer's valgrind process not found"

# run TARGET "pgbench options" TX_PER_CLIENT → pgbench's output
run() {
    local url pw
    case $1 in
        tierwarden) url=$TW_URL pw=$APP_PW ;;
        *) url=$PGB_URL pw=$OWNER_PW ;;
    esac
    # shellcheck disable=SC2086 # options are words
    PGPASSWORD=$pw pgbench -n $2 -t "$3" "$url" 2>&1 || die "pgbench $2 via $1"
}

# measure TARGET "pgbench options" TX_PER_CLIENT → "instructions transactions"
measure() {
    local target=$1 opts=$2 n=$3 pid dir ctl=()
    case $target in
        tierwarden) pid=$TW_PID dir=$WORK ;;
        pgbouncer) pid=$PGB_VG dir=$PGB_DIR ctl=("${AS_PGB[@]}") ;;
    esac
    "${ctl[@]}" callgrind_control -z "$pid" >/dev/null
    "${ctl[@]}" callgrind_control -i on "$pid" >/dev/null
    local out
    out=$(run "$target" "$opts" "$n")
    "${ctl[@]}" callgrind_control -i off "$pid" >/dev/null
    "${ctl[@]}" callgrind_control -d "$pid" >/dev/null
    local dump tx
    # shellcheck disable=SC2012 # names are callgrind's own: PREFIX.PID.N
    dump=$(ls -t "$dir"/*.callgrind.*.* | head -1)
    tx=$(grep -oP 'number of transactions actually processed: \K[0-9]+' <<<"$out")
    echo "$(grep -oP '^totals: \K[0-9]+' "$dump") $tx"
}

ROWS=()
for opts in "${CASES[@]}"; do
    row="| \`$opts\` |"
    declare -A per=()
    for target in tierwarden pgbouncer; do
        log "$opts via $target"
        # Warm-up, twice: with one, the first measured run through a
        # freshly started PgBouncer counted ≈45 M instructions more than
        # the longer run after it (about four SCRAM logins' worth), which
        # made its marginal cost negative.
        run "$target" "$opts" 50 >/dev/null
        run "$target" "$opts" 50 >/dev/null
        read -r i1 t1 < <(measure "$target" "$opts" "$SHORT")
        read -r i2 t2 < <(measure "$target" "$opts" "$LONG")
        per[$target]=$(((i2 - i1) / (t2 - t1)))
        row="$row $(printf "%'d" "${per[$target]}") |"
    done
    row="$row $(python3 -c "print(f'{$((per[tierwarden])) / $((per[pgbouncer])):.2f}')") |"
    ROWS+=("$row")
    unset per
done

report() {
    echo "Instructions per transaction in each proxy's own process (user space,"
    echo "callgrind; marginal cost between $SHORT and $LONG transactions per client,"
    echo "so connection setup and warm-up are excluded). tierwarden $COMMIT"
    echo "(env dev, role app_runtime, policy + metrics + audit on); $(pgbouncer --version | head -1),"
    echo "session mode; $(valgrind --version); $(date -u +%Y-%m-%d)."
    echo
    echo "| pgbench | tierwarden | PgBouncer | tierwarden / PgBouncer |"
    echo "|---|--:|--:|--:|"
    printf '%s\n' "${ROWS[@]}"
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
