// knex migrations through tierwarden (run by tests/compat.rs).
//
// Usage: node knex_migrate.js migrate|seed|broken
//   migrate: `migrate.latest` of migrations/ (three migrations, one batch,
//            one transaction), prints `ok migrate <n>`;
//   seed:    `seed.run` of seeds/ (data writes), prints `ok seed` or
//            `error <sqlstate> <message>`;
//   broken:  `migrate.latest` with migrations_broken/ added (applies in
//            stage, fails midway on prod's data), prints `ok migrate ...`
//            or `error <sqlstate> <message>`.
// Exits 0 when the tool succeeded, 3 when it reported a database error.
//
// Environment: TW_HOST TW_PORT TW_USER TW_PASSWORD TW_DB TW_CA.
'use strict';

const fs = require('fs');
const path = require('path');
const knexLib = require('knex');

const E = process.env;
const mode = process.argv[2];

const knex = knexLib({
  client: 'pg',
  connection: {
    host: E.TW_HOST,
    port: Number(E.TW_PORT),
    user: E.TW_USER,
    password: E.TW_PASSWORD,
    database: E.TW_DB,
    ssl: { ca: fs.readFileSync(E.TW_CA), rejectUnauthorized: true },
    connectionTimeoutMillis: 10000,
  },
  pool: { min: 0, max: 2 },
});

const dir = (d) => path.join(__dirname, d);

async function main() {
  console.log(`version knex ${require('knex/package.json').version} pg ${require('pg/package.json').version}`);
  if (mode === 'migrate') {
    const [batch, files] = await knex.migrate.latest({ directory: dir('migrations') });
    console.log(`ok migrate batch ${batch} ran ${files.length}`);
  } else if (mode === 'seed') {
    await knex.seed.run({ directory: dir('seeds') });
    console.log('ok seed');
  } else if (mode === 'broken') {
    const [batch, files] = await knex.migrate.latest({ directory: [dir('migrations'), dir('migrations_broken')] });
    console.log(`ok migrate batch ${batch} ran ${files.length}`);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
}

main().then(
  async () => { await knex.destroy(); process.exit(0); },
  async (e) => {
    // knex's seeder wraps the driver's error in `original`
    const code = e.code || (e.original && e.original.code);
    console.log(`error ${code || '-'} ${e.message}`);
    await knex.destroy();
    process.exit(code ? 3 : 1);
  },
);
