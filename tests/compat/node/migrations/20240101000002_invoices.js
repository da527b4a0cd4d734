// knex migration 2 of 3: invoices referencing customers, with an index.
exports.up = (knex) =>
  knex.schema.createTable('tw_knex_invoices', (t) => {
    t.bigIncrements('id');
    t.bigInteger('customer_id').notNullable().references('id').inTable('tw_knex_customers');
    t.integer('amount_cents').notNullable();
    t.index(['customer_id'], 'tw_knex_invoices_customer_idx');
  });
exports.down = (knex) => knex.schema.dropTable('tw_knex_invoices');
