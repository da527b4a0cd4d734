"""psycopg 3 through tierwarden (run by tests/compat.rs).

Connects as app_runtime to the production-tier environment with TLS
(sslmode=verify-full against the quickstart CA) and checks: simple query
protocol, parameterized and server-side prepared statements, a transaction
rolled back, COPY in and out, a cancel request, and a policy denial that
leaves the session usable. Prints one `ok <step>` line per step and exits
non-zero on the first failure.

Environment: TW_HOST TW_PORT TW_USER TW_PASSWORD TW_DB TW_CA TW_TABLE.
"""

import threading
import time

import psycopg
from psycopg import errors, sql

from compat_common import E, TABLE, check, fail


def connect():
    return psycopg.connect(
        host=E["TW_HOST"],
        port=E["TW_PORT"],
        user=E["TW_USER"],
        password=E["TW_PASSWORD"],
        dbname=E["TW_DB"],
        sslmode="verify-full",
        sslrootcert=E["TW_CA"],
        connect_timeout=10,
        autocommit=True,
    )


def count(conn):
    q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE))
    return conn.execute(q).fetchone()[0]


def main():
    print(f"version psycopg {psycopg.__version__} libpq {psycopg.pq.version()}", flush=True)
    t = sql.Identifier(TABLE)
    with connect() as conn:
        check(conn.pgconn.ssl_in_use, "tls verify-full")

        # simple query protocol (client-side binding), two statements in one message
        with psycopg.ClientCursor(conn) as cur:
            cur.execute("SELECT %s::int + 1; SELECT 'two'", (41,))
            check(cur.fetchone() == (42,), "simple query")

        # parameterized (extended protocol) and server-side prepared statements
        ins = sql.SQL("INSERT INTO {} (id, name) VALUES (%s, %s)").format(t)
        with conn.cursor() as cur:
            cur.executemany(ins, [(i, f"n{i}") for i in range(1, 21)])
            for _ in range(3):
                cur.execute(
                    sql.SQL("SELECT name FROM {} WHERE id = %s").format(t), (7,), prepare=True
                )
                name = cur.fetchone()[0]
        check(name == "n7" and count(conn) == 20, "prepared statement")

        # transaction rolled back (psycopg.Rollback leaves the block quietly)
        with conn.transaction():
            conn.execute(ins, (100, "gone"))
            conn.execute(sql.SQL("UPDATE {} SET name = 'changed'").format(t))
            inside = count(conn)
            raise psycopg.Rollback()
        n = count(conn)
        first = conn.execute(sql.SQL("SELECT name FROM {} WHERE id = 1").format(t)).fetchone()[0]
        check(inside == 21 and n == 20 and first == "n1", "transaction rollback")

        # COPY FROM STDIN and TO STDOUT
        with conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} (id, name) FROM STDIN").format(t)) as cp:
                for i in range(1000, 1500):
                    cp.write_row((i, f"copied {i}"))
            rows = []
            with cur.copy(sql.SQL("COPY (SELECT id, name FROM {} WHERE id >= 1000) TO STDOUT").format(t)) as cp:
                for row in cp.rows():
                    rows.append(row)
        check(len(rows) == 500 and count(conn) == 520, "copy in and out")

        # a denial is an ordinary error; the session stays usable
        try:
            conn.execute("CREATE TABLE compat_psycopg_denied (a int)")
            fail("ddl as app_runtime in prod was not denied")
        except errors.InsufficientPrivilege as e:
            msg = e.diag.message_primary or ""
            if not msg.startswith("tierwarden: denied"):
                fail(f"denial message: {msg}")
        check(conn.execute("SELECT 1").fetchone()[0] == 1, "denial 42501, session usable")

        cancel(conn)


def cancel(watcher):
    victim = connect()
    pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
    outcome = []

    def sleeper():
        try:
            victim.execute("SELECT pg_sleep(60)")
            outcome.append("finished")
        except errors.QueryCanceled:
            outcome.append("cancelled")
        except Exception as e:  # noqa: BLE001 - report whatever happened
            outcome.append(f"error {type(e).__name__}: {e}")

    th = threading.Thread(target=sleeper, daemon=True)
    th.start()
    wait_sleeping(watcher, pid)
    victim.cancel_safe(timeout=10)
    th.join(30)
    check(outcome == ["cancelled"], f"cancel ({outcome})")
    check(victim.execute("SELECT 2").fetchone()[0] == 2, "session usable after cancel")
    victim.close()


def wait_sleeping(watcher, pid):
    for _ in range(200):
        row = watcher.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row and row[0] == "PgSleep":
            return
        time.sleep(0.05)
    fail("the query to cancel never started")


if __name__ == "__main__":
    main()
    print("ALL OK", flush=True)
