-- applies in stage (no customers), fails in prod at the third statement:
-- prod holds two customers with the same name (23505 unique_violation)
CREATE TABLE tw_sqlx_broken (id int PRIMARY KEY);
ALTER TABLE tw_sqlx_customers ADD COLUMN tier text;
CREATE UNIQUE INDEX tw_sqlx_customers_name_uq ON tw_sqlx_customers (name);
