// knex seed: data writes, which a migrate-level session must not do.
exports.seed = async (knex) => {
  await knex('tw_knex_customers').del();
  await knex('tw_knex_customers').insert([
    { email: 'ada@example.com', name: 'Ada' },
    { email: 'alan@example.com', name: 'Alan' },
  ]);
};
