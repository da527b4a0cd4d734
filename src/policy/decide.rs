//! The decision: may this subject run this statement? (SPEC §4 role matrix.)
//!
//! Owns the level × tier × class rules, the production hard rule (ddl only at
//! `migrate`, whatever any configuration says) and the wording of denials. It is a
//! pure function of its arguments: no IO, no clock, no globals, no config lookups.
//! `privileged` and `unclassified` are never allowed. A statement that would make
//! the session writable (`makes_writable`) is treated as `privileged` unless the
//! subject may write anyway (`rw`, or `controlled` with a break-glass token, which
//! is rw-equivalent). `Subject::migrations_role` marks migration tracking only; it
//! grants nothing here.

use super::{Level, Statement, StatementClass, Tier};

use StatementClass::{
    Ddl, Maintenance, Privileged, Read, Session, Transaction, Unclassified, Write,
};

/// Who is asking, where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject<'a> {
    pub role: &'a str,
    pub env: &'a str,
    pub tier: Tier,
    pub level: Level,
    /// A valid, unexpired break-glass token is attached to the session.
    pub break_glass: bool,
    /// The role is flagged `migrations = true` (migration tracking; no extra rights).
    pub migrations_role: bool,
}

/// The verdict for one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

/// Why a statement is denied; `message` starts with `tierwarden: denied:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The class the denial is about (`privileged` for read-only escapes).
    pub class: StatementClass,
    pub message: String,
    pub hint: String,
}

/// Decide one statement for one subject. Pure.
pub fn decide(stmt: &Statement, subject: &Subject<'_>) -> Decision {
    let writer = match subject.level {
        Level::Rw => true,
        Level::Controlled => subject.break_glass,
        _ => false,
    };
    // Read-only escapes are privileged for everyone who may not write.
    let class = if stmt.makes_writable && !writer && stmt.class != Unclassified {
        Privileged
    } else {
        stmt.class
    };
    if allowed(class, stmt, subject) {
        Decision::Allow
    } else {
        Decision::Deny(denial(class, stmt, subject))
    }
}

fn allowed(class: StatementClass, stmt: &Statement, s: &Subject<'_>) -> bool {
    let prod = s.tier == Tier::Production;
    // Production hard rule: ddl only at migrate. Checked first so no level rule
    // below can ever override it.
    if prod && class == Ddl && s.level != Level::Migrate {
        return false;
    }
    let basic = matches!(class, Read | Transaction | Session);
    match s.level {
        Level::None => false,
        Level::Ro => basic,
        Level::Rw => basic || class == Write || (!prod && matches!(class, Ddl | Maintenance)),
        Level::Migrate => {
            basic
                || matches!(class, Ddl | Maintenance)
                || (class == Write && stmt.ledger_only_write)
        }
        Level::Controlled if s.break_glass => {
            basic || class == Write || (!prod && class == Maintenance)
        }
        Level::Controlled => basic,
    }
}

fn denial(class: StatementClass, stmt: &Statement, s: &Subject<'_>) -> Denial {
    let who = format!(
        "for role {} at level {} in environment {} ({})",
        s.role,
        s.level.as_str(),
        s.env,
        s.tier.as_str()
    );
    let message = if class == Unclassified {
        format!(
            "tierwarden: denied: unclassified statement (it could not be parsed) is not allowed {who}; \
             the proxy fails closed and denies what it cannot parse"
        )
    } else if stmt.makes_writable && class == Privileged && stmt.class != Privileged {
        format!(
            "tierwarden: denied: privileged statement ({}: it would make the session writable) is not allowed {who}",
            stmt.summary
        )
    } else {
        format!(
            "tierwarden: denied: {} statement ({}) is not allowed {who}",
            class.as_str(),
            stmt.summary
        )
    };
    Denial {
        class,
        message,
        hint: hint(class, stmt, s),
    }
}

fn hint(class: StatementClass, stmt: &Statement, s: &Subject<'_>) -> String {
    let prod = s.tier == Tier::Production;
    let allows = match s.level {
        Level::None => "level none allows nothing in this environment".to_string(),
        Level::Ro => "level ro allows read, transaction control (not READ WRITE) and session statements".to_string(),
        Level::Rw if prod => "level rw allows read, write, transaction control and session statements; \
             ddl and maintenance in production run only through a migrate-level role (CI migrations)"
            .to_string(),
        Level::Rw => "level rw allows read, write, ddl, maintenance, transaction control and session statements".to_string(),
        Level::Migrate => "level migrate allows read, ddl, maintenance, transaction control, session statements \
             and writes to migration-ledger tables only"
            .to_string(),
        Level::Controlled if s.break_glass => "level controlled with a break-glass token allows read, write, \
             transaction control and session statements (never ddl)"
            .to_string(),
        Level::Controlled => "level controlled allows read, transaction control and session statements; \
             writes need a break-glass token with a reason"
            .to_string(),
    };
    let extra = match class {
        Unclassified => "; check the statement's syntax against PostgreSQL".to_string(),
        Privileged => "; privileged statements are never allowed through tierwarden: \
             ask a database administrator"
            .to_string(),
        Ddl if prod => "; production hard rule: ddl only at level migrate".to_string(),
        Write if s.level == Level::Migrate && !stmt.tables_written.is_empty() => {
            format!("; written tables: {}", stmt.tables_written.join(", "))
        }
        _ => String::new(),
    };
    format!("{allows}{extra}")
}
