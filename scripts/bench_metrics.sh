#!/usr/bin/env bash
# scripts/bench_metrics.sh — what metrics collection costs on the statement path.
#
# A/B on one machine, 127.0.0.1 only:
#   ON   target/release/tierwarden built from this tree.
#   OFF  the same tree copied to a temporary directory with one change:
#        `SessionMetrics::record_statement` (src/observe/metrics.rs) returns
#        `false` at once — no queries_total / duration histogram / slow
#        counter per statement. Everything else (policy, tracker, audit
#        decisions) is identical. Built there with its own target dir (seeded
#        from target/release so only tierwarden recompiles); the runtime has
#        no switch for this on purpose.
#   1. a throwaway `tierwarden quickstart` (ON binary) provides the cluster;
#      pgbench -i -s SCALE into app_dev as tw_dev_owner (direct)
#   2. `tierwarden serve --env dev` from each binary, each with a copy of the
#      generated config on its own ports (and its own audit file), both
#      against the same cluster
#   3. ROUNDS rounds of pgbench -S (-M MODE, -c CLIENTS) alternating
#      direct / ON / OFF, so drift and background load hit all alike
#   4. per-run TPS, medians, and ON vs OFF on stdout
# Everything it starts is stopped by PID on exit.
#
# Knobs: BENCH_SECONDS (10), BENCH_ROUNDS (5), BENCH_CLIENTS (8),
# BENCH_MODE (simple), BENCH_SCALE (10), BENCH_KEEP=1 keeps the work dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-5}
C=${BENCH_CLIENTS:-8}
MODE=${BENCH_MODE:-simple}
SCALE=${BENCH_SCALE:-10}
J=$((C < $(nproc) ? C : $(nproc)))

log() { printf '[bench-metrics %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
for tool in pgbench psql python3 curl tar; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

WORK=$(mktemp -d /tmp/tierwarden-bench-metrics.XXXXXX)
chmod 711 "$WORK"
QS=$WORK/qs
PIDS=()
cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "build ON (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet --bin tierwarden) || die "build ON"
ON_BIN=$WORK/tierwarden-on
cp "$ROOT/target/release/tierwarden" "$ON_BIN"

log "build OFF (record_statement is a no-op) in $WORK/off"
mkdir -p "$WORK/off"
tar -C "$ROOT" --exclude=./target --exclude=./.git -cf - . | tar -C "$WORK/off" -xf -
python3 - "$WORK/off/src/observe/metrics.rs" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
anchor = "        slow_threshold: Duration,\n    ) -> bool {\n"
assert s.count(anchor) == 1, "record_statement signature changed: update bench_metrics.sh"
s = s.replace(anchor, anchor + "        if std::hint::black_box(true) {\n            return false; // bench_metrics.sh: metrics OFF\n        }\n")
open(p, "w").write(s)
EOF
mkdir -p "$WORK/off-target"
[ -d "$ROOT/target/release" ] && cp -a "$ROOT/target/release" "$WORK/off-target/release"
rm -f "$WORK/off-target/release/tierwarden"
(cd "$WORK/off" && CARGO_TARGET_DIR=$WORK/off-target cargo build --release --quiet --bin tierwarden) ||
    die "build OFF"
OFF_BIN=$WORK/tierwarden-off
cp "$WORK/off-target/release/tierwarden" "$OFF_BIN"
rm -rf "$WORK/off-target" "$WORK/off"

# Nine consecutive free ports: quickstart base..base+4, ON and OFF 5..8.
BASE=$(free_port_base 9)
[ -n "$BASE" ] || die "no free port range"

start_quickstart "$ON_BIN" "$QS" "$BASE" "$WORK/quickstart.log"
PIDS+=("$TW_PID")
jqp() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$2"; }
PG_PORT=$(jqp 'd["pg_port"]' "$QS/state.json")
OWNER_PW=$(cat "$QS/secrets/tw_dev_owner.password")
APP_PW=$(jqp 'd["identities"]["app_runtime"]["passwords"]["dev"]' "$QS/quickstart.json")
DIRECT_URL="postgresql://tw_dev_owner@127.0.0.1:$PG_PORT/app_dev?sslmode=disable"

# serve_variant NAME BIN PORT ADMIN_PORT: dev only, own ports and audit file.
serve_variant() {
    local name=$1 bin=$2 port=$3 admin=$4 cfg=$QS/tierwarden-$1.toml
    python3 - "$QS/tierwarden.toml" "$cfg" "$BASE" "$port" "$admin" "$name" <<'EOF'
import sys
src, dst, base, port, admin, name = sys.argv[1:]
s = open(src).read()
for old, new in [
    (f'listen = "127.0.0.1:{base}"', f'listen = "127.0.0.1:{port}"'),
    (f'listen = "127.0.0.1:{int(base) + 4}"', f'listen = "127.0.0.1:{admin}"'),
    ('/audit.jsonl"', f'/audit-{name}.jsonl"'),
]:
    assert s.count(old) == 1, old
    s = s.replace(old, new)
open(dst, "w").write(s)
EOF
    chmod 600 "$cfg"
    "$bin" serve --config "$cfg" --env dev >"$WORK/serve-$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ] && return 0
        sleep 0.1
    done
    die "$name proxy not ready: $(tail -5 "$WORK/serve-$name.log")"
}
ON_PORT=$((BASE + 5)) ON_ADMIN=$((BASE + 6)) OFF_PORT=$((BASE + 7)) OFF_ADMIN=$((BASE + 8))
serve_variant on "$ON_BIN" "$ON_PORT" "$ON_ADMIN"
serve_variant off "$OFF_BIN" "$OFF_PORT" "$OFF_ADMIN"

log "pgbench -i -s $SCALE (app_dev, direct as owner)"
PGPASSWORD=$OWNER_PW pgbench -i -q -s "$SCALE" "$DIRECT_URL" >"$WORK/init.log" 2>&1 ||
    die "pgbench -i: $(tail -5 "$WORK/init.log")"
PGPASSWORD=$OWNER_PW pgbench -n -S -T 2 -c 2 -j 2 "$DIRECT_URL" >/dev/null 2>&1 || true

RESULTS=$WORK/results.tsv
: >"$RESULTS"
run() {
    local round=$1 target=$2 url=$3 pw=$4 out=$WORK/run-$1-$2.log tps
    PGPASSWORD=$pw timeout -k 5 $((T + 60)) pgbench -n -S -M "$MODE" -c "$C" -j "$J" -T "$T" "$url" \
        >"$out" 2>&1 || die "pgbench $target round $round: $(tail -3 "$out")"
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
    [ -n "$tps" ] || die "no tps in $out"
    printf '%s\t%s\t%s\n' "$round" "$target" "$tps" >>"$RESULTS"
    log "round $round $target: tps=$tps"
}
for r in $(seq 1 "$ROUNDS"); do
    # Alternate the order of ON and OFF between rounds.
    if [ $((r % 2)) = 1 ]; then order="direct on off"; else order="direct off on"; fi
    for t in $order; do
        case $t in
        direct) run "$r" direct "$DIRECT_URL" "$OWNER_PW" ;;
        on) run "$r" on "postgresql://app_runtime@127.0.0.1:$ON_PORT/app_dev?sslmode=disable" "$APP_PW" ;;
        off) run "$r" off "postgresql://app_runtime@127.0.0.1:$OFF_PORT/app_dev?sslmode=disable" "$APP_PW" ;;
        esac
    done
done

counted() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '/^tierwarden_queries_total/ {s += $NF} END {printf "%d", s}'
}
ON_COUNTED=$(counted "$ON_ADMIN")
OFF_COUNTED=$(counted "$OFF_ADMIN")
[ "$OFF_COUNTED" = 0 ] || die "OFF build still counts statements ($OFF_COUNTED): patch not applied"
[ "$ON_COUNTED" -gt 0 ] || die "ON build counted nothing"

python3 - "$RESULTS" "$ON_COUNTED" <<EOF
import sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = {}
for r, t, tps in rows:
    by.setdefault(t, []).append(float(tps))
med = {t: statistics.median(v) for t, v in by.items()}
print("## Metrics on the statement path: pgbench -S -M $MODE -c $C -j $J, $T s x $ROUNDS rounds, scale $SCALE")
print()
print("| target | runs (tps) | median tps | min..max |")
print("| --- | --- | --- | --- |")
for t in ("direct", "on", "off"):
    v = by[t]
    print(f"| {t} | {', '.join(f'{x:.0f}' for x in v)} | {med[t]:.0f} | {min(v):.0f}..{max(v):.0f} |")
d = (med["off"] - med["on"]) / med["off"] * 100
spread = (max(by["off"]) - min(by["off"])) / med["off"] * 100
print()
print(f"ON vs OFF (median): {d:+.2f}% throughput lost to metrics; run-to-run spread of OFF: {spread:.1f}%")
print(f"statements counted by ON: {sys.argv[2]} (OFF: 0)")
print(f"at ON's median rate the proxy relays one statement every {1e6 / med['on']:.1f} us (all clients)")
EOF
