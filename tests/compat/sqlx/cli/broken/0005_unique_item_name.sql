-- applies in stage, fails in prod at the third statement (duplicate names)
CREATE TABLE tw_cli_broken (id int PRIMARY KEY);
ALTER TABLE tw_cli_items ADD COLUMN price numeric;
CREATE UNIQUE INDEX tw_cli_items_name_uq ON tw_cli_items (name);
