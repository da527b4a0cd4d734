CREATE TABLE tw_cli_items (id bigserial PRIMARY KEY, sku text NOT NULL);
