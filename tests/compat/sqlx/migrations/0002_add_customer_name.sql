-- a display name with a default, so existing rows stay valid
ALTER TABLE tw_sqlx_customers ADD COLUMN name text NOT NULL DEFAULT '';
