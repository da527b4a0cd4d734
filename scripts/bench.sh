#!/usr/bin/env bash
# scripts/bench.sh — tierwarden side by side with PostgreSQL and PgBouncer.
#
# One run, on 127.0.0.1 only:
#   1. cargo build --release
#   2. a throwaway quickstart (`tierwarden quickstart`: cluster + proxy with
#      the full policy, metrics and audit on) in a temporary directory;
#      the cluster gets max_connections for the idle test and
#      synchronous_commit=off (same for every target: the run measures the
#      proxies, not the disk's flush latency)
#   3. pgbench -i -s SCALE into app_dev (and app_prod) as their owner
#   4. PgBouncer (session mode, SCRAM with a plain-text auth_file) in front
#      of the same cluster
#   5. pgbench select-only (-S) and TPC-B-like, -M simple and extended,
#      -c 1/8/32, each case against direct PostgreSQL, PgBouncer and
#      tierwarden (env dev, role app_runtime, no TLS) back to back, in
#      BENCH_ROUNDS rounds whose target order rotates (a shared machine's
#      noise swings one run by ±15%: the report takes each target's median
#      run, and shows the spread of the per-round ratios); one case through
#      tierwarden prod (TLS verify-full, every statement audited);
#      connection setup (pgbench -C -S); RSS with N idle sessions
#      (scripts/idle_clients.py) for tierwarden and PgBouncer
#   6. with BENCH_AA=1 (the default), a second, identical PgBouncer
#      ("PgBouncer B") in every pgbench case's rotation: an A/A control.
#      PgBouncer B ÷ PgBouncer is what two equal proxies measure on this
#      machine, so tierwarden ÷ PgBouncer reads against it
#   7. a markdown report on stdout (progress goes to stderr)
# Everything it starts is stopped by PID on exit (trap EXIT).
#
# Knobs (environment): BENCH_SECONDS (5) per pgbench run, BENCH_ROUNDS (3),
# BENCH_SCALE (10), BENCH_AA (1: the PgBouncer A/A control; 0: without),
# BENCH_CLIENTS ("1 8 32"), BENCH_IDLE (1000), BENCH_PROD_TLS (1),
# BENCH_OUT (also write the report to this file), BENCH_LOGDIR
# (target/bench-logs: pgbench and server logs of the last run),
# BENCH_KEEP=1 (keep the temporary directory).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
SCALE=${BENCH_SCALE:-10}
read -r -a CLIENTS <<<"${BENCH_CLIENTS:-1 8 32}"
IDLE=${BENCH_IDLE:-1000}
PROD_TLS=${BENCH_PROD_TLS:-1}
AA=${BENCH_AA:-1}
OUT=${BENCH_OUT:-}
LOGDIR=${BENCH_LOGDIR:-$ROOT/target/bench-logs}
NPROC=$(nproc)
STARTED_AT=$(date +%s)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

for tool in pgbench psql python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y postgresql-client python3)"
done
if ! command -v pgbouncer >/dev/null; then
    [ "$(id -u)" = 0 ] || die "pgbouncer not found (apt-get install -y pgbouncer)"
    log "installing pgbouncer"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >&2
fi

if [ "$(id -u)" = 0 ]; then
    # The quickstart runs PostgreSQL, and this script PgBouncer, as postgres.
    id postgres >/dev/null 2>&1 || die "running as root needs a postgres system user"
fi

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release"
BIN=$ROOT/target/release/tierwarden
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT (+ uncommitted changes)"
fi

rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"
WORK=$(mktemp -d /tmp/tierwarden-bench.XXXXXX)
chmod 711 "$WORK"
QS=$WORK/qs
RESULTS=$WORK/results.tsv
: >"$RESULTS"

TW_PID=""
PGB_PID=""
PGB_B_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in $PGB_B_PID $PGB_PID $TW_PID; do
        stop_pid "$pid"
    done
    stop_leftover_postmaster "$QS"
    [ -f "$QS/pgdata/postgres.log" ] && cp "$QS/pgdata/postgres.log" "$LOGDIR/postgres.log"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Seven consecutive free ports: quickstart uses base..base+4, PgBouncer
# base+5, PgBouncer B base+6.
BASE=$(free_port_base 7)
[ -n "$BASE" ] || die "no free port range"
DEV_PORT=$BASE
PROD_PORT=$((BASE + 3))
PGB_PORT=$((BASE + 5))
PGB_B_PORT=$((BASE + 6))

start_quickstart "$BIN" "$QS" "$BASE" "$LOGDIR/tierwarden.log"

jq_py() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$2"; }
PG_PORT=$(jq_py 'd["pg_port"]' "$QS/state.json")
SUPER_PW=$(cat "$QS/pgdata/superuser.password")
DEV_OWNER_PW=$(cat "$QS/secrets/tw_dev_owner.password")
PROD_OWNER_PW=$(cat "$QS/secrets/tw_prod_owner.password")
APP_DEV_PW=$(jq_py 'd["identities"]["app_runtime"]["passwords"]["dev"]' "$QS/quickstart.json")
APP_PROD_PW=$(jq_py 'd["identities"]["app_runtime"]["passwords"]["prod"]' "$QS/quickstart.json")
ADMIN_URL=$(jq_py 'd["admin_url"]' "$QS/quickstart.json")
PG_BINDIR=$(dirname "$(readlink -f "/proc/$(head -1 "$QS/pgdata/data/postmaster.pid")/exe")")

super_sql() {
    PGPASSWORD=$SUPER_PW psql -X -q -At -v ON_ERROR_STOP=1 \
        "host=127.0.0.1 port=$PG_PORT user=tierwarden_admin dbname=${2:-postgres} sslmode=disable" -c "$1"
}

log "cluster on port $PG_PORT: max_connections=$((IDLE + 300)), synchronous_commit=off; restarting the quickstart"
super_sql "ALTER SYSTEM SET max_connections = $((IDLE + 300))" >/dev/null
super_sql "ALTER SYSTEM SET synchronous_commit = off" >/dev/null
# The quickstart stops its cluster on SIGTERM and reuses it (same port,
# same passwords, postgresql.auto.conf kept) when started again.
stop_pid "$TW_PID"
start_quickstart "$BIN" "$QS" "$BASE" "$LOGDIR/tierwarden.log"
[ "$(super_sql 'SHOW max_connections')" = $((IDLE + 300)) ] || die "max_connections not applied"

# Warm backends for both proxies: PgBouncer keeps the server connections of
# every client count below (default_pool_size, server_idle_timeout 600 s);
# tierwarden keeps as many idle upstream sessions per login
# (upstream_pool_size, default 20), set in the quickstart's configuration
# and applied with a reload. Otherwise a 32-client run would start 12 fresh
# backends through tierwarden every time, and a fresh backend pays page
# faults on shared memory and cold caches for its first thousands of
# transactions (docs/benchmarks.md).
TW_POOL=0
for c in "${CLIENTS[@]}"; do
    if [ "$c" -gt "$TW_POOL" ]; then TW_POOL=$c; fi
done
reloads() { grep -c 'configuration reloaded' "$LOGDIR/tierwarden.log" || true; }
before=$(reloads)
sed -i "s/^\[proxy\]\$/[proxy]\nupstream_pool_size = $TW_POOL/" "$QS/tierwarden.toml"
grep -q "^upstream_pool_size = $TW_POOL\$" "$QS/tierwarden.toml" || die "cannot set upstream_pool_size in $QS/tierwarden.toml"
kill -HUP "$TW_PID"
for _ in $(seq 1 50); do
    [ "$(reloads)" -gt "$before" ] && break
    sleep 0.1
done
[ "$(reloads)" -gt "$before" ] || die "tierwarden did not reload (see $LOGDIR/tierwarden.log)"
log "tierwarden upstream_pool_size = $TW_POOL (reloaded)"

DIRECT_URL="postgresql://tw_dev_owner@127.0.0.1:$PG_PORT/app_dev?sslmode=disable"
PGB_URL="postgresql://tw_dev_owner@127.0.0.1:$PGB_PORT/app_dev?sslmode=disable"
PGB_B_URL="postgresql://tw_dev_owner@127.0.0.1:$PGB_B_PORT/app_dev?sslmode=disable"
TW_URL="postgresql://app_runtime@127.0.0.1:$DEV_PORT/app_dev?sslmode=disable"
TW_PROD_URL="postgresql://app_runtime@127.0.0.1:$PROD_PORT/app_prod?sslmode=verify-full&sslrootcert=$QS/tls/ca.crt"

log "pgbench -i -s $SCALE (app_dev as tw_dev_owner)"
PGPASSWORD=$DEV_OWNER_PW pgbench -i -q -s "$SCALE" \
    "postgresql://tw_dev_owner@127.0.0.1:$PG_PORT/app_dev?sslmode=disable" >"$LOGDIR/init_dev.log" 2>&1 ||
    die "pgbench -i app_dev (see $LOGDIR/init_dev.log)"
if [ "$PROD_TLS" = 1 ]; then
    log "pgbench -i -s $SCALE (app_prod as tw_prod_owner)"
    PGPASSWORD=$PROD_OWNER_PW pgbench -i -q -s "$SCALE" \
        "postgresql://tw_prod_owner@127.0.0.1:$PG_PORT/app_prod?sslmode=disable" >"$LOGDIR/init_prod.log" 2>&1 ||
        die "pgbench -i app_prod (see $LOGDIR/init_prod.log)"
fi

PGB_USER_ARGS=()
[ "$(id -u)" != 0 ] || PGB_USER_ARGS=(-u postgres)
# start_pgbouncer NAME PORT: a PgBouncer of this run's configuration in
# $WORK/NAME; its PID in PGB_STARTED.
start_pgbouncer() {
    local name=$1 port=$2
    log "starting $name (session mode) on port $port"
    write_pgbouncer_config "$WORK/$name" "$PG_PORT" "$port" tw_dev_owner "$DEV_OWNER_PW" \
        "max_client_conn = $((IDLE + 100))
default_pool_size = $((IDLE + 50))"
    pgbouncer -q "${PGB_USER_ARGS[@]}" "$WORK/$name/pgbouncer.ini" >"$LOGDIR/$name.stdout" 2>&1 &
    PGB_STARTED=$!
    wait_for_pgbouncer "postgresql://tw_dev_owner@127.0.0.1:$port/app_dev?sslmode=disable" \
        "$DEV_OWNER_PW" "$PGB_STARTED" "$LOGDIR/$name.stdout" 10
}
start_pgbouncer pgbouncer "$PGB_PORT"
PGB_PID=$PGB_STARTED
PGB_TARGETS=(pgbouncer)
if [ "$AA" = 1 ]; then
    start_pgbouncer pgbouncer-b "$PGB_B_PORT"
    PGB_B_PID=$PGB_STARTED
    PGB_TARGETS=(pgbouncer pgbouncer-b)
fi

CLK_TCK=$(getconf CLK_TCK)
# CPU time (user + system, clock ticks) of a process; 0 for none.
cpu_ticks() {
    if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
        awk '{print $14 + $15}' "/proc/$1/stat"
    else
        echo 0
    fi
}

# The whole machine's CPU time (clock ticks, all CPUs): "busy idle", busy =
# user + nice + system + irq + softirq + steal, idle = idle + iowait.
machine_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit}' /proc/stat
}
# Page faults of the whole machine so far (a fresh PostgreSQL backend takes
# one per page of shared memory it touches first).
page_faults() {
    awk '/^pgfault / {print $2}' /proc/vmstat
}

# run_pgbench KEY TARGET URL PASSWORD PROXY_PID ROUND pgbench-args... — one
# result line; PROXY_PID (may be empty) is the process whose CPU time is
# counted, besides the whole machine's.
run_pgbench() {
    local key=$1 target=$2 url=$3 pw=$4 ppid=$5 round=$6
    shift 6
    local name
    name=$(printf '%s_%s_%s' "$key" "$target" "$round" | tr ' /' '__')
    local out="$LOGDIR/$name.log" rc=0 status=ok cpu0 cpu1 busy0 idle0 busy1 idle1 pf0 pf1
    cpu0=$(cpu_ticks "$ppid")
    read -r busy0 idle0 < <(machine_ticks)
    pf0=$(page_faults)
    PGPASSWORD=$pw timeout -k 5 $((T + 60)) pgbench -n -T "$T" "$@" "$url" >"$out" 2>&1 || rc=$?
    pf1=$(page_faults)
    read -r busy1 idle1 < <(machine_ticks)
    cpu1=$(cpu_ticks "$ppid")
    local tps lat conn failed txns cpu_us="-" busy_us="-" idle_us="-" faults="-"
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)
    if [ -n "$txns" ] && [ "$txns" -gt 0 ]; then
        [ -z "$ppid" ] || cpu_us=$(((cpu1 - cpu0) * 1000000 / CLK_TCK / txns))
        busy_us=$(((busy1 - busy0) * 1000000 / CLK_TCK / txns))
        idle_us=$(((idle1 - idle0) * 1000000 / CLK_TCK / txns))
        faults=$(awk -v f="$((pf1 - pf0))" -v n="$txns" 'BEGIN {printf "%.2f", f / n}')
    fi
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)
    conn=$(sed -n 's/^average connection time = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -1)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status=HANG
    elif [ "$rc" != 0 ] || [ -z "$tps" ] || [ "${failed:-0}" != 0 ]; then
        status=FAIL
    fi
    [ "$status" = ok ] || log "$key $target: $status (exit $rc), see $out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$target" "${tps:--}" "${lat:--}" \
        "${conn:--}" "$status" "$cpu_us" "$round" "$busy_us" "$idle_us" "$faults" >>"$RESULTS"
    log "$key $target (round $round): tps=${tps:--} lat=${lat:--}ms cpu=${cpu_us}us/tx machine=${busy_us}us/tx idle=${idle_us}us/tx faults=${faults}/tx $status"
}

pgbench_reset() {
    # What pgbench's own pre-run vacuum does (the runs use -n so that no
    # target's run includes it).
    PGPASSWORD=$DEV_OWNER_PW psql -X -q "$DIRECT_URL" \
        -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' -c 'TRUNCATE pgbench_history' \
        >>"$LOGDIR/reset.log" 2>&1 || die "reset before TPC-B run (see $LOGDIR/reset.log)"
}

# set_target NAME: url, pw and ppid (the proxy's PID, empty for direct).
set_target() {
    case $1 in
    direct) url=$DIRECT_URL pw=$DEV_OWNER_PW ppid="" ;;
    pgbouncer) url=$PGB_URL pw=$DEV_OWNER_PW ppid=$PGB_PID ;;
    pgbouncer-b) url=$PGB_B_URL pw=$DEV_OWNER_PW ppid=$PGB_B_PID ;;
    tierwarden) url=$TW_URL pw=$APP_DEV_PW ppid=$TW_PID ;;
    esac
}

# rotated ROUND TARGET... — the targets, starting at position ROUND - 1,
# forward in odd rounds and backward in even ones: no target always runs
# first (or first after a TPC-B reset), and no target always runs right
# after the same one (a plain rotation keeps every target's predecessor).
rotated() {
    local r=$1
    shift
    local n=$#
    local -a t=("$@")
    for i in $(seq 0 $((n - 1))); do
        if [ $((r % 2)) = 0 ]; then
            printf '%s\n' "${t[$((((r - 1 - i) % n + n) % n))]}"
        else
            printf '%s\n' "${t[$(((r - 1 + i) % n))]}"
        fi
    done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "warm-up (2 s, direct)"
PGPASSWORD=$DEV_OWNER_PW pgbench -n -S -T 2 -c 2 -j 2 "$DIRECT_URL" >"$LOGDIR/warmup.log" 2>&1 || true

for workload in select-only tpcb-like; do
    for mode in simple extended; do
        for c in "${CLIENTS[@]}"; do
            j=$((c < NPROC ? c : NPROC))
            key="$workload $mode $c"
            for round in $(seq 1 "$ROUNDS"); do
                for target in $(rotated "$round" direct "${PGB_TARGETS[@]}" tierwarden); do
                    set_target "$target"
                    [ "$workload" = tpcb-like ] && pgbench_reset
                    run_pgbench "$key" "$target" "$url" "$pw" "$ppid" "$round" \
                        -b "$workload" -M "$mode" -c "$c" -j "$j"
                done
            done
        done
    done
done

if [ "$PROD_TLS" = 1 ]; then
    c=8
    for round in $(seq 1 "$ROUNDS"); do
        run_pgbench "select-only extended $c" tierwarden-prod-tls "$TW_PROD_URL" "$APP_PROD_PW" "$TW_PID" \
            "$round" -b select-only -M extended -c "$c" -j "$((c < NPROC ? c : NPROC))"
    done
fi

CONN_C=4
for round in $(seq 1 "$ROUNDS"); do
    for target in $(rotated "$round" direct pgbouncer tierwarden); do
        set_target "$target"
        run_pgbench "connect $CONN_C" "$target" "$url" "$pw" "$ppid" "$round" \
            -C -S -M simple -c "$CONN_C" -j "$((CONN_C < NPROC ? CONN_C : NPROC))"
    done
done

wait_backends_below() {
    for _ in $(seq 1 300); do
        # shellcheck disable=SC2016 # $$…$$ is an SQL dollar quote
        [ "$(super_sql 'SELECT count(*) FROM pg_stat_activity WHERE backend_type = $$client backend$$')" -lt "$1" ] && return 0
        sleep 0.1
    done
    log "warning: still $(super_sql 'SELECT count(*) FROM pg_stat_activity') backends"
}

idle_test() {
    local target=$1 port=$2 user=$3 pw=$4 pid=$5 rc=0
    log "$IDLE idle sessions through $target (PID $pid)"
    PGPASSWORD=$pw timeout -k 5 300 python3 "$ROOT/scripts/idle_clients.py" --port "$port" \
        --user "$user" --database app_dev --pid "$pid" -n "$IDLE" >"$LOGDIR/idle_$target.json" \
        2>"$LOGDIR/idle_$target.err" || rc=$?
    [ "$rc" = 0 ] || log "idle test through $target: exit $rc (see $LOGDIR/idle_$target.err)"
    printf 'idle %s\t%s\t%s\n' "$target" "$rc" "$(cat "$LOGDIR/idle_$target.json" 2>/dev/null)" >>"$RESULTS"
}
# Headroom for the idle test: tierwarden's session pool and PgBouncer keep
# some idle upstream sessions (bounded) after their clients leave.
wait_backends_below 150
idle_test tierwarden "$DEV_PORT" app_runtime "$APP_DEV_PW" "$TW_PID"
wait_backends_below 150
idle_test pgbouncer "$PGB_PORT" tw_dev_owner "$DEV_OWNER_PW" "$PGB_PID"

COUNTED=$(curl -s --max-time 5 "$ADMIN_URL/metrics" 2>/dev/null |
    awk '/^tierwarden_queries_total/ {s += $NF} END {printf "%d", s}' || echo "?")

ELAPSED=$(($(date +%s) - STARTED_AT))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
export LOAD_BEFORE LOAD_AFTER
export RESULTS T ROUNDS SCALE IDLE COMMIT NPROC ELAPSED COUNTED CONN_C TW_POOL
PG_VERSION=$("$PG_BINDIR/postgres" --version)
PGB_VERSION=$(pgbouncer --version | head -1)
PGBENCH_VERSION=$(pgbench --version)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
MEM_TOTAL=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
KERNEL=$(uname -r)
# Scheduler autogroups decide who shares the CPU with whom (docs/benchmarks.md).
AUTOGROUP=$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo unknown)
export PG_VERSION PGB_VERSION PGBENCH_VERSION CPU_MODEL MEM_TOTAL KERNEL AUTOGROUP
python3 "$ROOT/scripts/bench_report.py" | tee ${OUT:+"$OUT"}
log "done in ${ELAPSED}s; logs in $LOGDIR"
