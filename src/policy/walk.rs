//! Generic walk of a whole parse (sub)tree (THREATS.md #3, #4, #5, #14).
//!
//! Owns the search for side effects hidden anywhere in a statement: function
//! calls (looked up in `functions.rs`, `set_config` through `settings.rs`),
//! data-modifying statements nested in CTEs or subqueries, locking clauses
//! (`FOR UPDATE/SHARE`) and `SELECT … INTO`. The walk is generic over the serde
//! image of `pg_query`'s protobuf tree, so no node type can be skipped by
//! omission (pg_query's own `nodes()` walks only a subset). Its depth is bounded
//! by prost's decode recursion limit. Pure; no IO.

use serde_json::{Map, Value};

use super::functions::FunctionTable;
use super::settings;
use super::StatementClass;

/// What the classifier has learnt about one statement so far.
#[derive(Debug)]
pub(crate) struct Acc<'a> {
    pub class: StatementClass,
    pub summary: String,
    pub tables: Vec<String>,
    pub makes_writable: bool,
    pub funcs: &'a FunctionTable,
}

impl<'a> Acc<'a> {
    pub fn new(funcs: &'a FunctionTable) -> Acc<'a> {
        Acc {
            class: StatementClass::Read,
            summary: String::new(),
            tables: Vec::new(),
            makes_writable: false,
            funcs,
        }
    }

    /// Record a class; the statement keeps the most dangerous one and its summary.
    pub fn note(&mut self, class: StatementClass, summary: impl Into<String>) {
        if self.summary.is_empty() || class.rank() > self.class.rank() {
            self.class = class;
            self.summary = summary.into();
        }
    }

    pub fn add_table(&mut self, name: String) {
        if !self.tables.contains(&name) {
            self.tables.push(name);
        }
    }
}

/// Walk every node under `v`.
pub(crate) fn walk(v: &Value, acc: &mut Acc<'_>) {
    match v {
        Value::Object(map) => walk_object(map, acc),
        Value::Array(items) => items.iter().for_each(|i| walk(i, acc)),
        _ => {}
    }
}

fn walk_object(map: &Map<String, Value>, acc: &mut Acc<'_>) {
    for (key, val) in map {
        match key.as_str() {
            "FuncCall" | "funccall" => func_call(val, acc),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                let verb = key.trim_end_matches("Stmt").to_ascii_uppercase();
                acc.note(StatementClass::Write, format!("data-modifying {verb}"));
                if let Some(name) = val.get("relation").and_then(range_var_name) {
                    acc.add_table(name);
                }
            }
            "locking_clause" => locking(map, val, acc),
            "into_clause" if !val.is_null() => {
                acc.note(StatementClass::Ddl, "SELECT ... INTO");
            }
            _ => {}
        }
        walk(val, acc);
    }
}

fn locking(select: &Map<String, Value>, clause: &Value, acc: &mut Acc<'_>) {
    let Some(items) = clause.as_array() else {
        return;
    };
    if items.is_empty() {
        return;
    }
    let strength = items
        .iter()
        .filter_map(|i| i.pointer("/node/LockingClause/strength"))
        .filter_map(Value::as_i64)
        .max()
        .unwrap_or(5);
    let what = match strength {
        2 => "FOR KEY SHARE",
        3 => "FOR SHARE",
        4 => "FOR NO KEY UPDATE",
        _ => "FOR UPDATE",
    };
    acc.note(StatementClass::Write, format!("SELECT ... {what}"));
    // Row locks count as writes of every relation in FROM (conservative: the
    // statement is ledger-only only if all of them are ledger tables).
    let mut names = Vec::new();
    if let Some(from) = select.get("from_clause") {
        collect_range_vars(from, &mut names);
    }
    if names.is_empty() {
        names.push("<unknown>".to_string());
    }
    names.into_iter().for_each(|n| acc.add_table(n));
}

/// Every relation named under `v` (`RangeVar` nodes), lower-cased and qualified
/// as written.
pub(crate) fn collect_range_vars(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, val) in map {
                if key == "RangeVar" {
                    if let Some(name) = range_var_name(val) {
                        out.push(name);
                    }
                }
                collect_range_vars(val, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_range_vars(i, out)),
        _ => {}
    }
}

/// `catalog.schema.rel` as written, lower-cased; `None` if not a RangeVar image.
pub(crate) fn range_var_name(v: &Value) -> Option<String> {
    let rel = v.get("relname")?.as_str()?;
    let mut parts = Vec::new();
    for key in ["catalogname", "schemaname"] {
        if let Some(p) = v.get(key).and_then(Value::as_str) {
            if !p.is_empty() {
                parts.push(p);
            }
        }
    }
    parts.push(rel);
    Some(parts.join(".").to_lowercase())
}

/// Names of a `funcname` list: lower-cased, unqualified name last.
fn func_name(call: &Value) -> Option<String> {
    let parts = call.get("funcname")?.as_array()?;
    let last = parts.last()?.pointer("/node/String/sval")?.as_str()?;
    Some(last.to_lowercase())
}

fn func_call(call: &Value, acc: &mut Acc<'_>) {
    let Some(name) = func_name(call) else {
        acc.note(
            StatementClass::Privileged,
            "function with an unreadable name",
        );
        return;
    };
    if name == "set_config" {
        let args = call.get("args").and_then(Value::as_array);
        let arg = |i: usize| args.and_then(|a| a.get(i)).and_then(literal);
        let outcome = match arg(0) {
            Some(Literal::Str(setting)) => {
                let value = arg(1).unwrap_or(Literal::Unknown);
                settings::assignment(&setting.to_lowercase(), &value)
            }
            _ => settings::Outcome::privileged("set_config() with a non-literal setting name"),
        };
        acc.makes_writable |= outcome.makes_writable;
        acc.note(outcome.class, outcome.summary);
        return;
    }
    if let Some(class) = acc.funcs.class_of(&name) {
        if class == StatementClass::Write {
            // A sequence or large object is written: never ledger-only.
            acc.add_table(format!("{name}()"));
        }
        acc.note(class, format!("function {name}()"));
    }
}

/// A constant argument, seen through type casts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Literal {
    Str(String),
    Int(i64),
    Bool(bool),
    Other,
    /// Not a constant (expression, parameter, column).
    Unknown,
}

/// The literal a node denotes, if it is a constant (possibly cast).
pub(crate) fn literal(node: &Value) -> Option<Literal> {
    let inner = node.get("node").unwrap_or(node);
    if let Some(cast) = inner.get("TypeCast") {
        return cast.get("arg").and_then(literal);
    }
    // Option values (DefElem args) are bare value nodes.
    if let Some(s) = inner.pointer("/String/sval").and_then(Value::as_str) {
        return Some(Literal::Str(s.to_string()));
    }
    if let Some(i) = inner.pointer("/Integer/ival").and_then(Value::as_i64) {
        return Some(Literal::Int(i));
    }
    if let Some(b) = inner.pointer("/Boolean/boolval").and_then(Value::as_bool) {
        return Some(Literal::Bool(b));
    }
    let Some(konst) = inner.get("AConst") else {
        return Some(Literal::Unknown);
    };
    if konst.get("isnull").and_then(Value::as_bool) == Some(true) {
        return Some(Literal::Other);
    }
    let val = konst.get("val")?;
    if let Some(s) = val.pointer("/Sval/sval").and_then(Value::as_str) {
        return Some(Literal::Str(s.to_string()));
    }
    if let Some(i) = val.pointer("/Ival/ival").and_then(Value::as_i64) {
        return Some(Literal::Int(i));
    }
    if let Some(b) = val.get("Boolval") {
        return Some(Literal::Bool(
            b.get("boolval").and_then(Value::as_bool).unwrap_or(false),
        ));
    }
    Some(Literal::Other)
}
