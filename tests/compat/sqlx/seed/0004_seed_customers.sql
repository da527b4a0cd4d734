-- data seeding written as a migration: a write to an application table,
-- which level `migrate` does not allow (denied by tierwarden in prod)
INSERT INTO tw_sqlx_customers (email, name) VALUES ('seed@example.com', 'seed');
