// knex migration 1 of 3: customers table.
exports.up = (knex) =>
  knex.schema.createTable('tw_knex_customers', (t) => {
    t.bigIncrements('id');
    t.text('email').notNullable().unique();
  });
exports.down = (knex) => knex.schema.dropTable('tw_knex_customers');
