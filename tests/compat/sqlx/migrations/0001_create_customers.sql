-- customers, with a unique e-mail
CREATE TABLE tw_sqlx_customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE
);
COMMENT ON TABLE tw_sqlx_customers IS 'sqlx migration test';
