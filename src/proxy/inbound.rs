//! Client → upstream: classify, decide, forward or substitute.
//!
//! Owns: the per-session maps of prepared statements (protocol Parse and
//! SQL PREPARE) and portals, the decision for each Query, Parse, Bind and
//! Execute, FunctionCall refusal, and the idle-in-transaction timeout.
//! Must never: send a denied statement's text upstream, or write to the
//! client (denials travel through the tracker, in order).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::time::Sleep;

use super::admission::Admitted;
use super::gatekeeper::{self, TxView};
use super::names::Names;
use super::observe_hooks::Observer;
use super::outgoing::{Msg, Outgoing};
use super::recent::Recent;
use super::relay::{injected_bind, injected_query, RelayEnd, RESERVED_NAME};
use super::signal::{KillReason, SessionSignal};
use super::stream::ClientReader;
use super::tracker::{InFlight, Tracker};
use crate::policy::{
    decide, Classified, Decision, Denial, Level, Statement, StatementClass, Tier, TxControl,
};
use crate::promotion::gate::{Gate, GateDecision};
use crate::promotion::{statement_fingerprints, Snapshot};
use crate::protocol::encode::{self, Severity};
use crate::protocol::{messages, sqlstate};
use crate::shared::{EnvRuntime, Runtime, Shared};

/// A statement known to the session: its classification and text.
#[derive(Clone)]
struct Known {
    stmts: Arc<Classified>,
    text: Arc<str>,
    /// Canonical fingerprints per statement (migration sessions with a
    /// promotion gate only).
    fps: Option<Arc<Vec<String>>>,
    /// The role matrix allowed these statements for this session at Parse.
    /// The decision is a pure function of the statements and the session's
    /// subject, both fixed, so a Bind of it need not decide again.
    allowed: bool,
}

/// Why a message is refused, and how.
struct Refusal {
    class: StatementClass,
    denial: Denial,
    /// A refused COMMIT: roll the transaction back instead of failing it.
    rollback: bool,
}

/// Client → upstream state of one session.
pub struct Inbound<'a> {
    adm: &'a Admitted,
    env: &'a EnvRuntime,
    rt: &'a Runtime,
    shared: &'a Shared,
    observer: &'a Observer<'a>,
    /// Protocol-level prepared statements by name (None: denied).
    parsed: Names<Option<Known>>,
    /// SQL-level PREPARE names.
    sql_prepared: HashMap<String, Known>,
    /// Portals by name.
    portals: Names<Known>,
    /// The texts classified last (skips the shared cache for repeats).
    recent: Recent,
    kill: Option<(Arc<SessionSignal>, KillReason)>,
    /// Promotion gate, for migration sessions where a control database is configured.
    gate: Option<Arc<Gate>>,
    /// The predecessor's outcomes, refreshed before ddl and COMMIT.
    snap: Result<Snapshot, String>,
    /// The transaction as the client has shaped it (for the gate).
    tx: TxView,
    /// The idle-in-transaction check's timer, one per session.
    idle_timer: Option<Pin<Box<Sleep>>>,
}

impl<'a> Inbound<'a> {
    /// State for a new session.
    pub fn new(
        adm: &'a Admitted,
        env: &'a EnvRuntime,
        rt: &'a Runtime,
        shared: &'a Shared,
        observer: &'a Observer<'a>,
    ) -> Self {
        Inbound {
            adm,
            env,
            rt,
            shared,
            observer,
            parsed: Names::default(),
            sql_prepared: HashMap::new(),
            portals: Names::default(),
            recent: Recent::default(),
            kill: None,
            gate: env
                .gate
                .clone()
                .filter(|_| adm.migrations_role || adm.login.level == Level::Migrate),
            snap: Err("not read yet".into()),
            tx: TxView::default(),
            idle_timer: None,
        }
    }

    /// Whether this is a migration session the promotion gate checks
    /// (only those need `refresh_gate`; asked first, so other sessions do
    /// not build its future for every read).
    pub fn gated(&self) -> bool {
        self.checking_gate().is_some()
    }

    /// The promotion gate, when it checks this session.
    fn checking_gate(&self) -> Option<&Arc<Gate>> {
        self.gate.as_ref().filter(|g| g.checks())
    }

    /// Before a batch of client messages: when it holds ddl or a COMMIT of
    /// a gated migration session, read the predecessor's outcomes afresh.
    pub async fn refresh_gate(&mut self, buf: &BytesMut) {
        let Some(g) = self.checking_gate().cloned() else {
            return;
        };
        let mut rest: &[u8] = buf;
        let mut needed = false;
        while let Ok(Some((tag, total))) = crate::protocol::frame::peek_header(rest) {
            if total > rest.len() {
                break;
            }
            let body = &rest[5..total];
            let text = match tag {
                b'Q' => messages::query_text(body).ok(),
                b'P' => messages::parse_msg(body).ok().map(|(_, q)| q),
                _ => None,
            };
            if let Some(t) = text {
                let c = self.rt.classifier.classify(&String::from_utf8_lossy(t));
                needed |= c
                    .statements
                    .iter()
                    .any(|s| s.class == StatementClass::Ddl || s.tx == Some(TxControl::Commit));
            }
            rest = &rest[total..];
        }
        if needed {
            self.snap = g.snapshot().await;
        }
    }

    /// Let the inbound side end the session with a FATAL (written by the
    /// outbound side, which owns the client writer).
    pub fn set_kill(&mut self, kill: Arc<SessionSignal>, reason: KillReason) {
        self.kill = Some((kill, reason));
    }

    fn end_with(&self, why: String) {
        if let Some((k, r)) = &self.kill {
            if let Ok(mut g) = r.lock() {
                *g = Some(why);
            }
            k.kill();
        }
    }

    /// Read from the client, applying the idle-in-transaction timeout.
    pub async fn read(
        &mut self,
        cr: &mut ClientReader<'_>,
        buf: &mut BytesMut,
        tracker: &Mutex<Tracker>,
    ) -> Result<usize, RelayEnd> {
        let limit = self
            .env
            .cfg
            .idle_in_transaction_timeout_ms
            .map(Duration::from_millis);
        let failed = |e: std::io::Error| RelayEnd::Protocol(format!("client read failed: {e}"));
        let Some(l) = limit else {
            return cr.read_buf(buf).await.map_err(failed);
        };
        // The read usually starts while the client's last statement is in
        // flight (not idle yet): look at the state again every tick.
        // `read_buf` is cancel-safe, so a timed-out read loses no bytes.
        let tick = (l / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut idle_since: Option<Instant> = None;
        loop {
            let in_tx = tracker
                .lock()
                .map(|t| t.idle() && t.status != b'I')
                .unwrap_or(false);
            if !in_tx {
                idle_since = None;
            } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= l {
                self.end_with(format!(
                    "terminating connection due to idle-in-transaction timeout ({} ms)",
                    l.as_millis()
                ));
                std::future::pending::<()>().await;
                return Err(RelayEnd::Killed("idle in transaction".into()));
            }
            // One timer per session, pushed back before every wait: a
            // later deadline only updates the registered entry (the timer
            // wheel is touched when the old deadline passes), where a new
            // timeout per read would register and remove one every time.
            let deadline = tokio::time::Instant::now() + tick;
            let timer = match &mut self.idle_timer {
                Some(t) => {
                    t.as_mut().reset(deadline);
                    t
                }
                None => self
                    .idle_timer
                    .insert(Box::pin(crate::timers::sleep_until(deadline))),
            };
            tokio::select! {
                biased;
                r = cr.read_buf(buf) => return r.map_err(failed),
                () = timer.as_mut() => {}
            }
        }
    }

    /// Handle one complete client message; `Ok(false)` after Terminate.
    pub fn handle(
        &mut self,
        m: &Msg<'_>,
        out: &mut Outgoing,
        t: &mut Tracker,
    ) -> Result<bool, RelayEnd> {
        let bad = |e: messages::Malformed| RelayEnd::Protocol(e.to_string());
        match m.tag {
            b'Q' => {
                let text = messages::query_text(m.body()).map_err(bad)?;
                self.query(m, text, out, t);
            }
            b'P' => {
                let (name, text) = messages::parse_msg(m.body()).map_err(bad)?;
                if !t.skipping() {
                    self.parse(m, name, text, out, t);
                }
            }
            b'B' => {
                let (portal, name) = messages::bind_msg(m.body()).map_err(bad)?;
                if !t.skipping() {
                    self.bind(m, portal, name, out, t);
                }
            }
            b'E' => {
                let portal = messages::execute_msg(m.body()).map_err(bad)?;
                if !t.skipping() {
                    t.extended(self.portals.get(portal).map(|k| self.inflight(k)));
                    out.forward_msg(m);
                }
            }
            b'C' | b'D' => {
                let (kind, name) = messages::target_msg(m.body()).map_err(bad)?;
                if !t.skipping() {
                    if m.tag == b'C' {
                        match kind {
                            b'S' => self.parsed.remove(name),
                            _ => self.portals.remove(name).map(|_| None),
                        };
                    }
                    t.extended(None);
                    out.forward_msg(m);
                }
            }
            b'S' => {
                t.sync();
                out.forward_msg(m);
            }
            b'H' => {
                if !t.skipping() {
                    out.forward_msg(m);
                }
            }
            b'F' => {
                let d = Denial {
                    class: StatementClass::Privileged,
                    message: format!(
                        "tierwarden: denied: privileged statement (FunctionCall protocol message) is not allowed for role {} at level {} in environment {} ({})",
                        self.adm.login.role,
                        self.adm.login.level.as_str(),
                        self.env.name,
                        self.env.tier().as_str()
                    ),
                    hint: "call the function with SELECT so the proxy can classify it".into(),
                };
                self.observer
                    .denied(StatementClass::Privileged, &d, "<FunctionCall>");
                t.simple(vec![], Some(denial_frame(&d)));
                out.replace(m, &injected_query());
            }
            b'd' => out.forward_msg(m),
            b'c' | b'f' => {
                t.copy_end();
                out.forward_msg(m);
            }
            b'X' => {
                // Not forwarded: the relay decides whether the upstream
                // session is reset for reuse or terminated.
                return Ok(false);
            }
            other => {
                let why = format!("invalid frontend message type {:?}", other as char);
                self.end_with(why.clone());
                return Err(RelayEnd::Protocol(why));
            }
        }
        Ok(true)
    }

    fn inflight(&self, k: &Known) -> InFlight {
        let class = k
            .stmts
            .iter()
            .map(|s| s.class)
            .max_by_key(|c| c.rank())
            .unwrap_or(StatementClass::Read);
        let fp = k
            .fps
            .as_ref()
            .and_then(|f| f.first())
            .filter(|_| class == StatementClass::Ddl)
            .map(|f| Arc::from(f.as_str()));
        InFlight {
            class,
            text: Arc::clone(&k.text),
            sent: Instant::now(),
            fp,
        }
    }

    /// Classify `text` and resolve EXECUTE of SQL-prepared statements.
    fn classify(&mut self, bytes: &[u8]) -> Known {
        let (text, classified) = match self.recent.get(bytes) {
            Some((t, c)) => (Arc::clone(t), Arc::clone(c)),
            None => {
                let text: Arc<str> = match std::str::from_utf8(bytes) {
                    Ok(t) => Arc::from(t),
                    Err(_) => Arc::from(String::from_utf8_lossy(bytes).as_ref()),
                };
                let classified = self.recent.classify(&text, &self.rt.classifier);
                (text, classified)
            }
        };
        let stmts = if classified.iter().any(|s| s.execute_name.is_some()) {
            Arc::new(self.resolve_executes(&classified))
        } else {
            classified
        };
        let fps = self
            .gate
            .as_ref()
            .filter(|_| {
                stmts
                    .iter()
                    .any(|s: &Statement| s.class == StatementClass::Ddl)
            })
            .and_then(|_| statement_fingerprints(&text))
            .map(Arc::new);
        Known {
            stmts,
            text,
            fps,
            allowed: false,
        }
    }

    /// The statements with each EXECUTE of an SQL-prepared statement
    /// replaced by the prepared body it runs.
    fn resolve_executes(&self, classified: &Classified) -> Classified {
        // PREPAREs earlier in this same message count for its EXECUTEs.
        let mut here: HashMap<&str, &Statement> = HashMap::new();
        let mut stmts: Vec<Statement> = Vec::with_capacity(classified.len());
        for s in classified.iter() {
            stmts.push(match &s.execute_name {
                Some(name) => {
                    let remembered = self
                        .sql_prepared
                        .get(name)
                        .filter(|k| k.stmts.len() == 1)
                        .map(|k| &k.stmts[0]);
                    match here.get(name.as_str()).copied().or(remembered) {
                        Some(body) => body.executed_with(s),
                        None => unknown_statement(format!(
                            "EXECUTE {name} (unknown prepared statement)"
                        )),
                    }
                }
                None => s.clone(),
            });
            if let Some(name) = &s.prepare_name {
                here.insert(name, s);
            }
        }
        stmts.into()
    }

    /// The first refusal among the statements, if any: the role matrix
    /// (unless it allowed them at Parse), the production audit rule, then
    /// (for migration sessions at Query and Parse) the promotion gate.
    fn judge(&self, k: &Known, gate_now: bool) -> Option<Refusal> {
        if !k.allowed {
            let subject = self.adm.subject(self.env);
            for s in k.stmts.iter() {
                if let Decision::Deny(d) = decide(s, &subject) {
                    return Some(Refusal {
                        class: s.class,
                        denial: d,
                        rollback: false,
                    });
                }
            }
        }
        if self.env.tier() == Tier::Production && !k.stmts.is_empty() {
            if let Some(a) = &self.shared.audit {
                if !a.healthy() {
                    return Some(Refusal {
                        class: StatementClass::Unclassified,
                        rollback: false,
                        denial: Denial {
                            class: StatementClass::Unclassified,
                            message: format!(
                                "tierwarden: refused: the audit log of production environment {} cannot be written, so no statement may run",
                                self.env.name
                            ),
                            hint: "an operator must fix the audit sink (disk full or unwritable); statements are refused until it recovers".into(),
                        },
                    });
                }
            }
        }
        let gate = self.gate.as_ref().filter(|_| gate_now)?;
        let call = gatekeeper::check(gate, &self.snap, &k.stmts, k.fps.as_deref(), &self.tx);
        match call.decision {
            GateDecision::Pass => None,
            GateDecision::Warn(m) => {
                self.observer.gate(&m, false, &k.text);
                None
            }
            GateDecision::Deny(m) => {
                self.observer.gate(&m, true, &k.text);
                let pred = gate.pred.clone().unwrap_or_default();
                Some(Refusal {
                    class: StatementClass::Ddl,
                    rollback: call.at_commit,
                    denial: Denial {
                        class: StatementClass::Ddl,
                        message: format!("tierwarden: denied: {m}"),
                        hint: format!(
                            "promotion order: a migration must be applied in {pred} before {}; `tierwarden migrations status --config <file>` shows where each migration has been applied",
                            self.env.name
                        ),
                    },
                })
            }
        }
    }

    fn query(&mut self, m: &Msg<'_>, text: &[u8], out: &mut Outgoing, t: &mut Tracker) {
        let k = self.classify(text);
        if let Some(r) = self.judge(&k, true) {
            self.deny(r.class, &r.denial, &k.text, t);
            if r.rollback {
                // A refused COMMIT ends the transaction rolled back.
                t.simple_swap(denial_frame(&r.denial));
                out.replace(m, &encode::query("ROLLBACK"));
                self.tx = TxView::default();
            } else {
                t.simple(vec![], Some(denial_frame(&r.denial)));
                out.replace(m, &injected_query());
            }
            return;
        }
        self.tx.after(&k.stmts, k.fps.as_deref());
        self.remember_sql_prepares(&k);
        let now = Instant::now();
        let inflight = k.stmts.iter().enumerate().map(|(i, s)| InFlight {
            class: s.class,
            text: Arc::clone(&k.text),
            sent: now,
            fp: k
                .fps
                .as_ref()
                .and_then(|f| f.get(i))
                .filter(|_| s.class == StatementClass::Ddl)
                .map(|f| Arc::from(f.as_str())),
        });
        t.simple(inflight, None);
        out.forward_msg(m);
    }

    fn deny(&self, class: StatementClass, d: &Denial, text: &str, t: &mut Tracker) {
        if class == StatementClass::Ddl {
            t.note_denied_ddl();
        }
        self.observer.denied(class, d, text);
    }

    fn remember_sql_prepares(&mut self, k: &Known) {
        for s in k.stmts.iter() {
            if let Some(name) = &s.prepare_name {
                self.sql_prepared.insert(
                    name.clone(),
                    Known {
                        stmts: Arc::new(vec![s.clone()].into()),
                        text: Arc::clone(&k.text),
                        fps: None,
                        allowed: false,
                    },
                );
            }
            // SQL-level names are forgotten at once (an EXECUTE of them is
            // then denied: fail closed). Protocol-level statements survive
            // DISCARD ALL here, because it may still fail upstream (inside a
            // transaction) and drivers keep using them; a stale entry is
            // harmless — the upstream no longer has the statement, and a new
            // Parse of the name replaces the entry.
            match &s.deallocate {
                Some(Some(name)) => {
                    self.sql_prepared.remove(name);
                }
                Some(None) => self.sql_prepared.clear(),
                None => {}
            }
            if s.summary.eq_ignore_ascii_case("DISCARD ALL") {
                self.sql_prepared.clear();
            }
        }
    }

    fn parse(
        &mut self,
        m: &Msg<'_>,
        name: &[u8],
        text: &[u8],
        out: &mut Outgoing,
        t: &mut Tracker,
    ) {
        let k = if name.starts_with(RESERVED_NAME) {
            let mut k = self.classify(b"");
            k.stmts = Arc::new(vec![unknown_statement("reserved statement name".into())].into());
            k
        } else {
            self.classify(text)
        };
        if let Some(r) = self.judge(&k, true) {
            self.deny(r.class, &r.denial, &k.text, t);
            self.parsed.insert(name, None);
            t.extended_denial(denial_frame(&r.denial));
            out.replace(m, &injected_bind());
            return;
        }
        self.remember_sql_prepares(&k);
        self.tx.after(&k.stmts, k.fps.as_deref());
        self.parsed.insert(name, Some(Known { allowed: true, ..k }));
        t.extended(None);
        out.forward_msg(m);
    }

    fn bind(
        &mut self,
        m: &Msg<'_>,
        portal: &[u8],
        name: &[u8],
        out: &mut Outgoing,
        t: &mut Tracker,
    ) {
        let known = match self.parsed.get(name) {
            Some(Some(k)) => Some(k.clone()),
            Some(None) => None,
            None => std::str::from_utf8(name)
                .ok()
                .and_then(|n| self.sql_prepared.get(n).cloned()),
        };
        let known = known.unwrap_or_else(|| Known {
            stmts: Arc::new(
                vec![unknown_statement(format!(
                    "Bind of unknown or denied statement {:?}",
                    String::from_utf8_lossy(name)
                ))]
                .into(),
            ),
            text: Arc::from(""),
            fps: None,
            allowed: false,
        });
        if let Some(r) = self.judge(&known, false) {
            self.deny(r.class, &r.denial, &known.text, t);
            t.extended_denial(denial_frame(&r.denial));
            out.replace(m, &injected_bind());
            return;
        }
        self.portals.insert(portal, known);
        t.extended(None);
        out.forward_msg(m);
    }
}

fn unknown_statement(summary: String) -> Statement {
    Statement {
        summary,
        ..Statement::unclassified()
    }
}

/// The ErrorResponse a client receives for a denial.
pub fn denial_frame(d: &Denial) -> Bytes {
    let code = if d.message.starts_with("tierwarden: refused: the audit log") {
        sqlstate::IO_ERROR
    } else {
        sqlstate::INSUFFICIENT_PRIVILEGE
    };
    encode::error(Severity::Error, code, &d.message, Some(&d.hint))
}
