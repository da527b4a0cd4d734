-- look customers up by name
CREATE INDEX tw_sqlx_customers_name_idx ON tw_sqlx_customers (name);
