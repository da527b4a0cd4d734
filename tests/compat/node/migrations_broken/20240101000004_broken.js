// A migration that fails midway in prod only: it applies in stage (empty
// table), but prod holds two customers with the same name, so the unique
// index (third statement) fails with 23505 after two statements succeeded;
// knex's transaction must leave nothing behind.
exports.up = async (knex) => {
  await knex.schema.createTable('tw_knex_broken', (t) => t.integer('id').primary());
  await knex.schema.alterTable('tw_knex_customers', (t) => t.text('tier'));
  await knex.raw('CREATE UNIQUE INDEX tw_knex_customers_name_uq ON tw_knex_customers (name)');
};
exports.down = async (knex) => {
  await knex.raw('DROP INDEX tw_knex_customers_name_uq');
  await knex.schema.alterTable('tw_knex_customers', (t) => t.dropColumn('tier'));
  await knex.schema.dropTable('tw_knex_broken');
};
