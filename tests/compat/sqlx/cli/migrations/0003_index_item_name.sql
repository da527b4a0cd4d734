CREATE INDEX tw_cli_items_name_idx ON tw_cli_items (name);
