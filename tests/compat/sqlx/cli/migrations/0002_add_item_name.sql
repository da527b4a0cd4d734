ALTER TABLE tw_cli_items ADD COLUMN name text;
