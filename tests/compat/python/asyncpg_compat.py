"""asyncpg through tierwarden (run by tests/compat.rs).

Connects as app_runtime to the production-tier environment with TLS
(sslmode=verify-full against the quickstart CA) and checks: simple query
protocol, parameterized and prepared statements, a transaction rolled back,
COPY in and out, a cancel request, and a policy denial that leaves the
session usable. Prints one `ok <step>` line per step and exits non-zero on
the first failure.

Environment: TW_HOST TW_PORT TW_USER TW_PASSWORD TW_DB TW_CA TW_TABLE.
"""

import asyncio
import io
from urllib.parse import quote

import asyncpg

from compat_common import E, TABLE, check, fail


async def connect():
    dsn = "postgresql://{}:{}@{}:{}/{}?sslmode=verify-full&sslrootcert={}".format(
        quote(E["TW_USER"], safe=""),
        quote(E["TW_PASSWORD"], safe=""),
        E["TW_HOST"],
        E["TW_PORT"],
        quote(E["TW_DB"], safe=""),
        quote(E["TW_CA"], safe="/"),
    )
    return await asyncpg.connect(dsn, timeout=10)


async def main():
    print(f"version asyncpg {asyncpg.__version__}", flush=True)
    conn = await connect()
    ssl_obj = conn._transport.get_extra_info("ssl_object")  # noqa: SLF001
    check(ssl_obj is not None, "tls verify-full")

    # simple query protocol: execute() without arguments, several statements
    await conn.execute(f"SELECT 1; DELETE FROM {TABLE} WHERE id < 0")
    check(await conn.fetchval("SELECT 40 + 2") == 42, "simple query")

    # parameterized and prepared statements
    await conn.executemany(
        f"INSERT INTO {TABLE} (id, name) VALUES ($1, $2)",
        [(i, f"n{i}") for i in range(1, 21)],
    )
    stmt = await conn.prepare(f"SELECT name FROM {TABLE} WHERE id = $1")
    names = [await stmt.fetchval(i) for i in (3, 7, 11)]
    n = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE id >= $1", 1)
    check(names == ["n3", "n7", "n11"] and n == 20, "prepared statement")

    # transaction rolled back
    tr = conn.transaction()
    await tr.start()
    await conn.execute(f"INSERT INTO {TABLE} (id, name) VALUES ($1, $2)", 100, "gone")
    await conn.execute(f"UPDATE {TABLE} SET name = 'changed'")
    inside = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
    await tr.rollback()
    n = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
    first = await conn.fetchval(f"SELECT name FROM {TABLE} WHERE id = 1")
    check(inside == 21 and n == 20 and first == "n1", "transaction rollback")

    # COPY FROM STDIN (binary) and TO STDOUT
    res = await conn.copy_records_to_table(
        TABLE, records=[(i, f"copied {i}") for i in range(1000, 1500)], columns=["id", "name"]
    )
    buf = io.BytesIO()
    await conn.copy_from_query(f"SELECT id, name FROM {TABLE} WHERE id >= 1000", output=buf)
    lines = buf.getvalue().decode().splitlines()
    check(res == "COPY 500" and len(lines) == 500, "copy in and out")

    # a denial is an ordinary error; the session stays usable
    try:
        await conn.execute("CREATE TABLE compat_asyncpg_denied (a int)")
        fail("ddl as app_runtime in prod was not denied")
    except asyncpg.InsufficientPrivilegeError as e:
        if not str(e).startswith("tierwarden: denied"):
            fail(f"denial message: {e}")
    check(await conn.fetchval("SELECT 1") == 1, "denial 42501, session usable")

    await cancel(conn)
    await conn.close()


async def cancel(watcher):
    victim = await connect()
    pid = await victim.fetchval("SELECT pg_backend_pid()")
    task = asyncio.create_task(victim.fetchval("SELECT pg_sleep(60)"))
    for _ in range(200):
        ev = await watcher.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid)
        if ev == "PgSleep":
            break
        await asyncio.sleep(0.05)
    else:
        fail("the query to cancel never started")
    # cancelling the task makes asyncpg send a CancelRequest
    task.cancel()
    try:
        await task
        fail("pg_sleep finished despite the cancel")
    except asyncio.CancelledError:
        pass
    # the backend stopped sleeping (a lost cancel would keep it in PgSleep)
    v = await asyncio.wait_for(victim.fetchval("SELECT 2"), 30)
    ev = await watcher.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid)
    check(v == 2 and ev != "PgSleep", "cancel")
    await victim.close()


if __name__ == "__main__":
    asyncio.run(main())
    print("ALL OK", flush=True)
