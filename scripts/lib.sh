# shellcheck shell=bash
# scripts/lib.sh — shell helpers shared by bench.sh, bench_instructions.sh,
# bench_metrics.sh and soak.sh (sourced, not run). The sourcing script
# defines log() and die() first.

# stop_pid PID: SIGTERM, up to 30 s, then SIGKILL; reaps it if it is our child.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "PID $pid did not stop in 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
}

# stop_leftover_postmaster QSDIR: the quickstart stops its cluster on
# SIGTERM; if it could not, stop the postmaster named in postmaster.pid.
stop_leftover_postmaster() {
    local pidfile=$1/pgdata/data/postmaster.pid pid
    [ -f "$pidfile" ] || return 0
    pid=$(head -1 "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping the leftover postmaster $pid"
        stop_pid "$pid"
    fi
}

# free_port_base N: print a port P such that P..P+N-1 are free on 127.0.0.1
# (empty output when no such range was found).
free_port_base() {
    python3 - "$1" <<'PYEOF'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    base = random.randint(20000, 40000)
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    break
PYEOF
}

# start_quickstart BIN QSDIR BASE LOGFILE: start `BIN quickstart` in the
# background (its PID in TW_PID) and wait until it is ready (180 s).
start_quickstart() {
    local bin=$1 qs=$2 base=$3 logfile=$4
    log "starting tierwarden quickstart on ports $base..$((base + 4)) in $qs"
    rm -f "$qs/quickstart.json"
    "$bin" quickstart --dir "$qs" --port-base "$base" >>"$logfile" 2>&1 &
    TW_PID=$!
    for _ in $(seq 1 1800); do
        [ -f "$qs/quickstart.json" ] && return 0
        kill -0 "$TW_PID" 2>/dev/null || die "quickstart exited: $(tail -5 "$logfile")"
        sleep 0.1
    done
    die "quickstart not ready after 180 s"
}

# write_pgbouncer_config DIR PG_PORT LISTEN_PORT USER PASSWORD [EXTRA]:
# pgbouncer.ini (session mode, database app_dev on 127.0.0.1:PG_PORT, SCRAM
# from a plain-text auth_file holding USER's throwaway password) in DIR;
# EXTRA is appended to the [pgbouncer] section. Owned by postgres when run
# as root (PgBouncer refuses to run as root).
write_pgbouncer_config() {
    local dir=$1 pg_port=$2 port=$3 user=$4 pw=$5 extra=${6:-}
    mkdir -p "$dir"
    printf '"%s" "%s"\n' "$user" "$pw" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOT
[databases]
app_dev = host=127.0.0.1 port=$pg_port dbname=app_dev

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = session
logfile = $dir/pgbouncer.log
$extra
EOT
    chmod 600 "$dir/userlist.txt" "$dir/pgbouncer.ini"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$dir"
    fi
}

# wait_for_pgbouncer URL PASSWORD PID LOGFILE SECONDS: until `select 1`
# through URL works; dies if PID exits first or after SECONDS.
wait_for_pgbouncer() {
    local url=$1 pw=$2 pid=$3 logfile=$4 seconds=$5
    for _ in $(seq 1 $((seconds * 10))); do
        PGPASSWORD=$pw psql -X -q -At "$url" -c 'select 1' >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || die "pgbouncer exited (see $logfile)"
        sleep 0.1
    done
    die "pgbouncer not answering after $seconds s (see $logfile)"
}
