//! The one table of function classes (THREATS.md #4, #5, #8).
//!
//! Owns the mapping "function name → statement class" for functions with side
//! effects. A statement calling a function takes the more dangerous of its own
//! class and the function's. Names are matched lower-cased on the unqualified name,
//! whatever the schema (`pg_catalog.nextval`, `public.dblink_exec`, `ext.dblink`):
//! a user function that merely shares a dangerous name is classified as dangerous
//! too (fail closed). Functions not in the table keep the statement's own class:
//! user-defined functions are defended upstream (THREATS.md #6). `set_config` is
//! not in the table: `settings.rs` classifies it as the SET it performs.
//! Pure data and lookups; no IO.

use std::collections::HashMap;

use super::{PolicyExtensions, StatementClass};

use StatementClass::{Privileged, Read, Session, Write};

/// Built-in function classes. A trailing `*` matches every name with that prefix.
/// Advisory locks are `session` (migration tools take them; allowed at every level).
pub const FUNCTION_CLASSES: &[(&str, StatementClass)] = &[
    // sequences
    ("nextval", Write),
    ("setval", Write),
    // notifications
    ("pg_notify", Write),
    // large objects: writers are write, file-system import/export is privileged
    ("lo_import", Privileged),
    ("lo_export", Privileged),
    ("lo_creat", Write),
    ("lo_create", Write),
    ("lo_unlink", Write),
    ("lowrite", Write),
    ("lo_put", Write),
    ("lo_truncate", Write),
    ("lo_truncate64", Write),
    ("lo_from_bytea", Write),
    ("be_lo_unlink", Write),
    // other sessions / server processes
    ("pg_terminate_backend", Privileged),
    ("pg_cancel_backend", Privileged),
    ("pg_signal_backend", Privileged),
    ("pg_log_backend_memory_contexts", Privileged),
    ("dblink*", Privileged),
    ("postgres_fdw_disconnect*", Privileged),
    // file system
    ("pg_read_file", Privileged),
    ("pg_read_binary_file", Privileged),
    ("pg_ls_*", Privileged),
    ("pg_stat_file", Privileged),
    ("pg_file_*", Privileged),
    ("pg_logdir_ls", Privileged),
    // server-wide configuration and WAL
    ("pg_reload_conf", Privileged),
    ("pg_rotate_logfile", Privileged),
    ("pg_rotate_logfile_old", Privileged),
    ("pg_switch_wal", Privileged),
    ("pg_switch_xlog", Privileged),
    ("pg_create_restore_point", Privileged),
    ("pg_start_backup", Privileged),
    ("pg_stop_backup", Privileged),
    ("pg_backup_start", Privileged),
    ("pg_backup_stop", Privileged),
    ("pg_promote", Privileged),
    ("pg_wal_replay_pause", Privileged),
    ("pg_wal_replay_resume", Privileged),
    ("pg_xlog_replay_pause", Privileged),
    ("pg_xlog_replay_resume", Privileged),
    ("pg_import_system_collations", Privileged),
    // replication slots, origins, logical decoding
    ("pg_create_physical_replication_slot", Privileged),
    ("pg_create_logical_replication_slot", Privileged),
    ("pg_drop_replication_slot", Privileged),
    ("pg_copy_physical_replication_slot", Privileged),
    ("pg_copy_logical_replication_slot", Privileged),
    ("pg_replication_slot_advance", Privileged),
    ("pg_sync_replication_slots", Privileged),
    ("pg_logical_slot_*", Privileged),
    ("pg_logical_emit_message", Privileged),
    ("pg_replication_origin_*", Privileged),
    // statistics resets and planner-statistics injection
    ("pg_stat_reset*", Privileged),
    ("pg_stat_statements_reset", Privileged),
    ("pg_stat_clear_snapshot", Read),
    ("pg_restore_relation_stats", Privileged),
    ("pg_restore_attribute_stats", Privileged),
    ("pg_clear_relation_stats", Privileged),
    ("pg_clear_attribute_stats", Privileged),
    // dynamic SQL the proxy cannot inspect (THREATS.md #8)
    ("query_to_xml", Privileged),
    ("query_to_xmlschema", Privileged),
    ("query_to_xml_and_xmlschema", Privileged),
    ("ts_stat", Privileged),
    // advisory locks: session-scoped effects, allowed (migration tools take them)
    ("pg_advisory_*", Session),
    ("pg_try_advisory_*", Session),
    // explicitly harmless, listed so a reader sees they were considered
    ("pg_sleep", Read),
    ("pg_sleep_for", Read),
    ("pg_sleep_until", Read),
    ("currval", Read),
    ("lastval", Read),
    ("lo_open", Read),
    ("lo_close", Read),
    ("loread", Read),
    ("lo_get", Read),
    ("lo_lseek", Read),
    ("lo_lseek64", Read),
    ("lo_tell", Read),
    ("lo_tell64", Read),
    ("current_setting", Read),
    ("pg_current_logfile", Read),
];

/// Lookup table built from [`FUNCTION_CLASSES`] plus config extensions.
#[derive(Clone, Debug)]
pub struct FunctionTable {
    exact: HashMap<String, StatementClass>,
    prefixes: Vec<(String, StatementClass)>,
}

impl FunctionTable {
    pub fn new(extra: &PolicyExtensions) -> FunctionTable {
        let mut table = FunctionTable {
            exact: HashMap::new(),
            prefixes: Vec::new(),
        };
        for (name, class) in FUNCTION_CLASSES {
            table.insert(name, *class, false);
        }
        // Config entries override built-in write/read entries (the operator's word),
        // but never downgrade a built-in privileged function.
        for name in &extra.extra_read_functions {
            table.insert(name, Read, true);
        }
        for name in &extra.extra_write_functions {
            table.insert(name, Write, true);
        }
        for name in &extra.extra_privileged_functions {
            table.insert(name, Privileged, true);
        }
        table
    }

    fn insert(&mut self, name: &str, class: StatementClass, from_config: bool) {
        let name = name.trim().to_ascii_lowercase();
        let name = name.rsplit('.').next().unwrap_or("").to_string();
        if name.is_empty() {
            return;
        }
        let keep_old = |old: StatementClass| from_config && old == Privileged;
        if let Some(prefix) = name.strip_suffix('*') {
            if let Some(entry) = self.prefixes.iter_mut().find(|(p, _)| p == prefix) {
                if !keep_old(entry.1) {
                    entry.1 = class;
                }
            } else {
                self.prefixes.push((prefix.to_string(), class));
            }
            return;
        }
        match self.exact.get(&name) {
            Some(old) if keep_old(*old) => {}
            _ => {
                self.exact.insert(name, class);
            }
        }
    }

    /// Class of a function by its (already lower-cased, unqualified) name; `None`
    /// for functions the table does not know.
    pub fn class_of(&self, name: &str) -> Option<StatementClass> {
        let by_prefix = self
            .prefixes
            .iter()
            .filter(|(p, _)| name.starts_with(p.as_str()))
            .map(|(_, c)| *c)
            .max_by_key(|c| c.rank());
        // A privileged prefix (`dblink*`) cannot be escaped by an exact entry.
        if by_prefix == Some(Privileged) {
            return by_prefix;
        }
        self.exact.get(name).copied().or(by_prefix)
    }
}
