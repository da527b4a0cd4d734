-- data seeding written as a migration: denied for level `migrate`
INSERT INTO tw_cli_items (sku, name) VALUES ('seed-1', 'seed');
