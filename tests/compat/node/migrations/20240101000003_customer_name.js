// knex migration 3 of 3: a column with a default and a raw check constraint.
exports.up = async (knex) => {
  await knex.schema.alterTable('tw_knex_customers', (t) => {
    t.text('name').notNullable().defaultTo('');
  });
  await knex.raw('ALTER TABLE tw_knex_invoices ADD CONSTRAINT tw_knex_invoices_amount_ck CHECK (amount_cents >= 0)');
};
exports.down = async (knex) => {
  await knex.raw('ALTER TABLE tw_knex_invoices DROP CONSTRAINT tw_knex_invoices_amount_ck');
  await knex.schema.alterTable('tw_knex_customers', (t) => t.dropColumn('name'));
};
