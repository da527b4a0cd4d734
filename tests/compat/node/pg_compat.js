// node-postgres (`pg`) through tierwarden (run by tests/compat.rs).
//
// Connects as app_runtime to the production-tier environment with TLS
// (CA pinned to the quickstart CA, certificate and host name verified: the
// verify-full equivalent) and checks: simple query protocol, parameterized
// and named prepared statements, a transaction rolled back, COPY in and out
// (pg-copy-streams), a cancel request, and a policy denial that leaves the
// session usable. Prints one `ok <step>` line per step and exits non-zero on
// the first failure.
//
// Environment: TW_HOST TW_PORT TW_USER TW_PASSWORD TW_DB TW_CA TW_TABLE.
'use strict';

const fs = require('fs');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const pg = require('pg');
const copy = require('pg-copy-streams');

const E = process.env;
const T = E.TW_TABLE;

function fail(what) {
  console.log(`FAIL ${what}`);
  process.exit(1);
}

function check(cond, what) {
  if (!cond) fail(what);
  console.log(`ok ${what}`);
}

function config() {
  return {
    host: E.TW_HOST,
    port: Number(E.TW_PORT),
    user: E.TW_USER,
    password: E.TW_PASSWORD,
    database: E.TW_DB,
    connectionTimeoutMillis: 10000,
    ssl: { ca: fs.readFileSync(E.TW_CA), rejectUnauthorized: true },
  };
}

async function connect() {
  const c = new pg.Client(config());
  await c.connect();
  return c;
}

const count = async (c) => Number((await c.query(`SELECT count(*) AS n FROM ${T}`)).rows[0].n);

async function main() {
  console.log(`version pg ${require('pg/package.json').version} pg-copy-streams ${require('pg-copy-streams/package.json').version}`);
  const c = await connect();
  check(c.connection.stream.encrypted === true && c.connection.stream.authorized === true, 'tls verify-full');

  // simple query protocol: no values, several statements in one message
  const multi = await c.query(`SELECT 40 + 2 AS v; DELETE FROM ${T} WHERE id < 0`);
  check(multi[0].rows[0].v === 42, 'simple query');

  // parameterized (unnamed) and named prepared statements
  for (let i = 1; i <= 20; i++) {
    await c.query({ name: 'compat_ins', text: `INSERT INTO ${T} (id, name) VALUES ($1, $2)`, values: [i, `n${i}`] });
  }
  const names = [];
  for (const id of [3, 7, 11]) {
    names.push((await c.query({ name: 'compat_sel', text: `SELECT name FROM ${T} WHERE id = $1`, values: [id] })).rows[0].name);
  }
  const ge = await c.query(`SELECT count(*) AS n FROM ${T} WHERE id >= $1`, [1]);
  check(names.join() === 'n3,n7,n11' && Number(ge.rows[0].n) === 20, 'prepared statement');

  // transaction rolled back
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${T} (id, name) VALUES ($1, $2)`, [100, 'gone']);
  await c.query(`UPDATE ${T} SET name = 'changed'`);
  const inside = await count(c);
  await c.query('ROLLBACK');
  const first = (await c.query(`SELECT name FROM ${T} WHERE id = 1`)).rows[0].name;
  check(inside === 21 && (await count(c)) === 20 && first === 'n1', 'transaction rollback');

  // COPY FROM STDIN and TO STDOUT
  let data = '';
  for (let i = 1000; i < 1500; i++) data += `${i}\tcopied ${i}\n`;
  const sink = c.query(copy.from(`COPY ${T} (id, name) FROM STDIN`));
  await pipeline(Readable.from([data]), sink);
  let out = '';
  const src = c.query(copy.to(`COPY (SELECT id, name FROM ${T} WHERE id >= 1000) TO STDOUT`));
  await pipeline(src, new Writable({ write(chunk, _enc, cb) { out += chunk; cb(); } }));
  check(sink.rowCount === 500 && out.trim().split('\n').length === 500 && (await count(c)) === 520, 'copy in and out');

  // a denial is an ordinary error; the session stays usable
  try {
    await c.query('CREATE TABLE compat_pg_denied (a int)');
    fail('ddl as app_runtime in prod was not denied');
  } catch (e) {
    if (e.code !== '42501' || !String(e.message).startsWith('tierwarden: denied')) fail(`denial: ${e.code} ${e.message}`);
  }
  check((await c.query('SELECT 1 AS v')).rows[0].v === 1, 'denial 42501, session usable');

  await cancel(c);
  await c.end();
}

async function cancel(watcher) {
  const victim = await connect();
  const pid = (await victim.query('SELECT pg_backend_pid() AS p')).rows[0].p;
  const q = new pg.Query('SELECT pg_sleep(60)');
  const done = new Promise((resolve) => {
    q.on('error', (e) => resolve(e.code));
    q.on('end', () => resolve('finished'));
  });
  victim.query(q);
  let started = false;
  for (let i = 0; i < 200 && !started; i++) {
    const r = await watcher.query('SELECT wait_event FROM pg_stat_activity WHERE pid = $1', [pid]);
    started = r.rows.length === 1 && r.rows[0].wait_event === 'PgSleep';
    if (!started) await new Promise((r) => setTimeout(r, 50));
  }
  if (!started) fail('the query to cancel never started');
  // pg's CancelRequest: a fresh Client sends the victim's key on a plain
  // connection (as libpq before 17 does; the key is the secret)
  const canceller = new pg.Client({ ...config(), ssl: false });
  canceller.connection.on('error', () => {});
  canceller.cancel(victim, q);
  const outcome = await Promise.race([done, new Promise((r) => setTimeout(() => r('timeout'), 30000))]);
  check(outcome === '57014', `cancel (${outcome})`);
  check((await victim.query('SELECT 2 AS v')).rows[0].v === 2, 'session usable after cancel');
  await victim.end();
}

main().then(
  () => { console.log('ALL OK'); process.exit(0); },
  (e) => { console.log(`FAIL ${e && e.stack ? e.stack : e}`); process.exit(1); },
);
