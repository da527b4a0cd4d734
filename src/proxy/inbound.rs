//! Client → upstream: classify, decide, forward or substitute.
//!
//! Owns: the per-session maps of prepared statements (protocol Parse and
//! SQL PREPARE) and portals, the decision for each Query, Parse, Bind and
//! Execute, FunctionCall refusal, and the idle-in-transaction timeout.
//! Must never: send a denied statement's text upstream, or write to the
//! client (denials travel through the tracker, in order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, ReadHalf};
use tokio_util::sync::CancellationToken;

use super::admission::Admitted;
use super::observe_hooks::Observer;
use super::relay::{injected_bind, injected_query, RelayEnd, RESERVED_NAME};
use super::stream::ClientStream;
use super::tracker::{InFlight, Tracker};
use crate::policy::{decide, Decision, Denial, Statement, StatementClass, Tier};
use crate::protocol::encode::{self, Severity};
use crate::protocol::frame::Frame;
use crate::protocol::{messages, sqlstate};
use crate::shared::{EnvRuntime, Runtime, Shared};

/// A statement known to the session: its classification and text.
#[derive(Clone)]
struct Known {
    stmts: Arc<Vec<Statement>>,
    text: Arc<str>,
}

/// Client → upstream state of one session.
pub struct Inbound<'a> {
    adm: &'a Admitted,
    env: &'a EnvRuntime,
    rt: &'a Runtime,
    shared: &'a Shared,
    observer: &'a Observer<'a>,
    /// Protocol-level prepared statements by name (None: denied).
    parsed: HashMap<Vec<u8>, Option<Known>>,
    /// SQL-level PREPARE names.
    sql_prepared: HashMap<String, Known>,
    /// Portals by name.
    portals: HashMap<Vec<u8>, Known>,
    kill: Option<(CancellationToken, Arc<Mutex<Option<String>>>)>,
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
            parsed: HashMap::new(),
            sql_prepared: HashMap::new(),
            portals: HashMap::new(),
            kill: None,
        }
    }

    /// Let the inbound side end the session with a FATAL (written by the
    /// outbound side, which owns the client writer).
    pub fn set_kill(&mut self, kill: CancellationToken, reason: Arc<Mutex<Option<String>>>) {
        self.kill = Some((kill, reason));
    }

    fn end_with(&self, why: String) {
        if let Some((k, r)) = &self.kill {
            if let Ok(mut g) = r.lock() {
                *g = Some(why);
            }
            k.cancel();
        }
    }

    /// Read from the client, applying the idle-in-transaction timeout.
    pub async fn read(
        &mut self,
        cr: &mut ReadHalf<ClientStream>,
        buf: &mut BytesMut,
        tracker: &Mutex<Tracker>,
    ) -> Result<usize, RelayEnd> {
        let limit = self
            .env
            .cfg
            .idle_in_transaction_timeout_ms
            .map(Duration::from_millis);
        let in_tx = tracker
            .lock()
            .map(|t| t.idle() && t.status != b'I')
            .unwrap_or(false);
        let read = cr.read_buf(buf);
        let r = match limit.filter(|_| in_tx) {
            Some(l) => match tokio::time::timeout(l, read).await {
                Ok(r) => r,
                Err(_) => {
                    self.end_with(format!(
                        "terminating connection due to idle-in-transaction timeout ({} ms)",
                        l.as_millis()
                    ));
                    std::future::pending::<()>().await;
                    return Err(RelayEnd::Killed("idle in transaction".into()));
                }
            },
            None => read.await,
        };
        r.map_err(|e| RelayEnd::Protocol(format!("client read failed: {e}")))
    }

    /// Handle one complete client message; `Ok(false)` after Terminate.
    pub fn handle(
        &mut self,
        f: Frame,
        out: &mut BytesMut,
        tracker: &Mutex<Tracker>,
    ) -> Result<bool, RelayEnd> {
        let mut t = match tracker.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let bad = |e: messages::Malformed| RelayEnd::Protocol(e.to_string());
        match f.tag {
            b'Q' => {
                let text = messages::query_text(f.body()).map_err(bad)?;
                self.query(&f, text, out, &mut t);
            }
            b'P' => {
                let (name, text) = messages::parse_msg(f.body()).map_err(bad)?;
                if !t.skipping() {
                    self.parse(&f, name.to_vec(), text, out, &mut t);
                }
            }
            b'B' => {
                let (portal, name) = messages::bind_msg(f.body()).map_err(bad)?;
                if !t.skipping() {
                    self.bind(&f, portal.to_vec(), name, out, &mut t);
                }
            }
            b'E' => {
                let portal = messages::execute_msg(f.body()).map_err(bad)?;
                if !t.skipping() {
                    let known = self.portals.get(portal).cloned();
                    t.extended(known.map(|k| self.inflight(&k)));
                    out.extend_from_slice(&f.bytes);
                }
            }
            b'C' | b'D' => {
                let (kind, name) = messages::target_msg(f.body()).map_err(bad)?;
                if !t.skipping() {
                    if f.tag == b'C' {
                        match kind {
                            b'S' => self.parsed.remove(name),
                            _ => self.portals.remove(name).map(|_| None),
                        };
                    }
                    t.extended(None);
                    out.extend_from_slice(&f.bytes);
                }
            }
            b'S' => {
                t.sync();
                out.extend_from_slice(&f.bytes);
            }
            b'H' => {
                if !t.skipping() {
                    out.extend_from_slice(&f.bytes);
                }
            }
            b'F' => {
                let d = Denial {
                    class: StatementClass::Privileged,
                    message: format!(
                        "tierwarden: denied: the FunctionCall protocol message is not allowed for role {} in environment {}",
                        self.adm.login.role, self.env.name
                    ),
                    hint: "call the function with SELECT so the proxy can classify it".into(),
                };
                self.observer
                    .denied(StatementClass::Privileged, &d, "<FunctionCall>");
                t.simple(vec![], Some(denial_frame(&d)));
                out.extend_from_slice(&injected_query());
            }
            b'd' | b'c' | b'f' => out.extend_from_slice(&f.bytes),
            b'X' => {
                out.extend_from_slice(&f.bytes);
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
        InFlight {
            class,
            text: Arc::clone(&k.text),
            sent: Instant::now(),
        }
    }

    /// Classify `text` and resolve EXECUTE of SQL-prepared statements.
    fn classify(&self, text: &[u8]) -> Known {
        let text: Arc<str> = Arc::from(String::from_utf8_lossy(text).as_ref());
        let classified = self.rt.classifier.classify(&text);
        let stmts = classified
            .statements
            .iter()
            .map(|s| match &s.execute_name {
                Some(name) => match self.sql_prepared.get(name) {
                    Some(k) if k.stmts.len() == 1 => {
                        let mut body = k.stmts[0].clone();
                        body.prepare_name = None;
                        body
                    }
                    _ => unknown_statement(format!("EXECUTE {name} (unknown prepared statement)")),
                },
                None => s.clone(),
            })
            .collect();
        Known {
            stmts: Arc::new(stmts),
            text,
        }
    }

    /// The first denial among the statements, if any (audit failures in
    /// the production tier deny everything).
    fn judge(&self, k: &Known) -> Option<(StatementClass, Denial)> {
        let subject = self.adm.subject(self.env);
        for s in k.stmts.iter() {
            if let Decision::Deny(d) = decide(s, &subject) {
                return Some((s.class, d));
            }
        }
        if self.env.tier() == Tier::Production && !k.stmts.is_empty() {
            if let Some(a) = &self.shared.audit {
                if !a.healthy() {
                    return Some((
                        StatementClass::Unclassified,
                        Denial {
                            class: StatementClass::Unclassified,
                            message: format!(
                                "tierwarden: refused: the audit log of production environment {} cannot be written, so no statement may run",
                                self.env.name
                            ),
                            hint: "an operator must fix the audit sink (disk full or unwritable); statements are refused until it recovers".into(),
                        },
                    ));
                }
            }
        }
        None
    }

    fn query(&mut self, f: &Frame, text: &[u8], out: &mut BytesMut, t: &mut Tracker) {
        let k = self.classify(text);
        if let Some((class, d)) = self.judge(&k) {
            self.deny(class, &d, &k.text, t);
            t.simple(vec![], Some(denial_frame(&d)));
            out.extend_from_slice(&injected_query());
            return;
        }
        self.remember_sql_prepares(&k);
        let now = Instant::now();
        let inflight = k
            .stmts
            .iter()
            .map(|s| InFlight {
                class: s.class,
                text: Arc::clone(&k.text),
                sent: now,
            })
            .collect();
        self.observer.allowed(&k.stmts, &k.text);
        t.simple(inflight, None);
        out.extend_from_slice(&f.bytes);
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
                        stmts: Arc::new(vec![s.clone()]),
                        text: Arc::clone(&k.text),
                    },
                );
            }
            match &s.deallocate {
                Some(Some(name)) => {
                    self.sql_prepared.remove(name);
                }
                Some(None) => self.sql_prepared.clear(),
                None => {}
            }
            if s.summary.eq_ignore_ascii_case("DISCARD ALL") {
                self.sql_prepared.clear();
                self.parsed.clear();
                self.portals.clear();
            }
        }
    }

    fn parse(
        &mut self,
        f: &Frame,
        name: Vec<u8>,
        text: &[u8],
        out: &mut BytesMut,
        t: &mut Tracker,
    ) {
        let k = if name.starts_with(RESERVED_NAME) {
            let mut k = self.classify(b"");
            k.stmts = Arc::new(vec![unknown_statement("reserved statement name".into())]);
            k
        } else {
            self.classify(text)
        };
        if let Some((class, d)) = self.judge(&k) {
            self.deny(class, &d, &k.text, t);
            self.parsed.insert(name, None);
            t.extended_denial(denial_frame(&d));
            out.extend_from_slice(&injected_bind());
            return;
        }
        self.remember_sql_prepares(&k);
        self.observer.allowed(&k.stmts, &k.text);
        self.parsed.insert(name, Some(k));
        t.extended(None);
        out.extend_from_slice(&f.bytes);
    }

    fn bind(
        &mut self,
        f: &Frame,
        portal: Vec<u8>,
        name: &[u8],
        out: &mut BytesMut,
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
            stmts: Arc::new(vec![unknown_statement(format!(
                "Bind of unknown or denied statement {:?}",
                String::from_utf8_lossy(name)
            ))]),
            text: Arc::from(""),
        });
        if let Some((class, d)) = self.judge(&known) {
            self.deny(class, &d, &known.text, t);
            t.extended_denial(denial_frame(&d));
            out.extend_from_slice(&injected_bind());
            return;
        }
        self.portals.insert(portal, known);
        t.extended(None);
        out.extend_from_slice(&f.bytes);
    }
}

fn unknown_statement(summary: String) -> Statement {
    Statement {
        class: StatementClass::Unclassified,
        tables_written: Vec::new(),
        ledger_only_write: false,
        makes_writable: false,
        tx: None,
        prepare_name: None,
        execute_name: None,
        deallocate: None,
        summary,
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
