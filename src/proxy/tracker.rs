//! Request/response bookkeeping shared by the two relay directions.
//!
//! Owns: the queue of response segments (one per Query, Sync or
//! FunctionCall: each ends with exactly one ReadyForQuery), the statements
//! in flight in each, which upstream ErrorResponse must be replaced by a
//! proxy denial, the transaction status and the migration episode. It is
//! pure (no IO, the clock is passed in) and returns what the relay must do
//! and what observe/audit must record.
//!
//! Why substitution: a denied statement is never sent; the proxy sends a
//! harmless message that makes the upstream raise an error instead, and
//! replaces that error with the denial. The upstream therefore keeps the
//! exact transaction semantics of a server error (ReadyForQuery 'E', a later
//! COMMIT rolls back, extended protocol skips to Sync) and pipelined
//! responses stay in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::policy::StatementClass;

/// A statement sent upstream whose completion is awaited.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Its class.
    pub class: StatementClass,
    /// The message text it came from (for slow logs and audit).
    pub text: Arc<str>,
    /// When it was sent.
    pub sent: Instant,
    /// Canonical fingerprint, for ddl of migration sessions.
    pub fp: Option<Arc<str>>,
}

/// A finished statement, for metrics, slow log and audit.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The statement.
    pub stmt: InFlight,
    /// Time from send (or the previous completion) to completion.
    pub duration: Duration,
    /// SQLSTATE when it failed.
    pub error: Option<String>,
}

/// A migration episode that ended, with its ddl statements' fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedMigration {
    /// How it ended.
    pub outcome: MigrationEnd,
    /// Fingerprints of its ddl statements, in order.
    pub statements: Vec<Arc<str>>,
    /// Text of its first ddl statement's message.
    pub first_text: Option<Arc<str>>,
}

/// How a migration episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationEnd {
    /// Committed.
    Applied,
    /// Errored or rolled back.
    Failed,
}

#[derive(Debug)]
struct Segment {
    extended: bool,
    open: bool,
    /// Extended messages forwarded so far (each yields one terminal response).
    sent_msgs: usize,
    /// Terminal responses seen so far.
    seen_terminals: usize,
    /// Denial to substitute: (terminal index, error frame).
    denial: Option<(usize, Bytes)>,
    /// Replace the first CommandComplete with this error (a refused COMMIT
    /// that the proxy turned into ROLLBACK).
    swap_complete: Option<Bytes>,
    stmts: VecDeque<InFlight>,
    errored: bool,
    /// The upstream answered CopyInResponse: it is in copy-in mode and
    /// ignores Sync until the client's CopyDone/CopyFail.
    in_copy: bool,
}

impl Segment {
    /// A segment with `stmts` (a recycled, empty queue or the statements
    /// of a Query), every other field at its start value.
    fn new(extended: bool, open: bool, stmts: VecDeque<InFlight>) -> Segment {
        Segment {
            extended,
            open,
            sent_msgs: 0,
            seen_terminals: 0,
            denial: None,
            swap_complete: None,
            stmts,
            errored: false,
            in_copy: false,
        }
    }
}

/// What the upstream→client side must do with one backend message.
#[derive(Debug)]
pub enum Action {
    /// Forward the original bytes.
    Forward,
    /// Send this frame instead.
    Replace(Bytes),
}

/// Shared state of one session's relay.
#[derive(Debug)]
pub struct Tracker {
    segments: VecDeque<Segment>,
    /// Last ReadyForQuery status seen from upstream.
    pub status: u8,
    migrations: bool,
    mig_ddl: bool,
    mig_error: bool,
    mig_fps: Vec<Arc<str>>,
    mig_text: Option<Arc<str>>,
    last_tag: Vec<u8>,
    last_mark: Option<Instant>,
    /// Statements finished since the relay last drained them.
    pub completed: Vec<Completed>,
    /// Migration episodes finished since the relay last drained them.
    pub migrations_ended: Vec<EndedMigration>,
    /// The statement queue of the last finished segment, emptied, for the
    /// next one (no allocation per request).
    spare: VecDeque<InFlight>,
}

impl Tracker {
    /// A tracker for a session; `migrations` when ddl transactions of this
    /// session are migrations (migrate level or a `migrations = true` role).
    pub fn new(migrations: bool) -> Self {
        Tracker {
            segments: VecDeque::new(),
            status: b'I',
            migrations,
            mig_ddl: false,
            mig_error: false,
            mig_fps: Vec::new(),
            mig_text: None,
            last_tag: Vec::new(),
            last_mark: None,
            completed: Vec::new(),
            migrations_ended: Vec::new(),
            spare: VecDeque::new(),
        }
    }

    fn open_extended(&mut self) -> &mut Segment {
        let needs_new = !matches!(self.segments.back(), Some(s) if s.open);
        if needs_new {
            let stmts = std::mem::take(&mut self.spare);
            self.segments.push_back(Segment::new(true, true, stmts));
        }
        // just pushed or checked above
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// A simple Query (or FunctionCall) is being forwarded with these
    /// statements; `denial` when the proxy replaced it.
    pub fn simple(&mut self, stmts: impl IntoIterator<Item = InFlight>, denial: Option<Bytes>) {
        if let Some(s) = self.segments.back_mut().filter(|s| s.open) {
            // A Query after unsynced extended messages closes their segment.
            s.open = false;
            // (one at a time: `extend` reserves from the iterator's size
            // hint first, which costs more than the usual one statement)
            for st in stmts {
                s.stmts.push_back(st);
            }
            if s.denial.is_none() {
                s.denial = denial.map(|d| (s.sent_msgs, d));
            }
            return;
        }
        let mut queue = std::mem::take(&mut self.spare);
        for st in stmts {
            queue.push_back(st);
        }
        let mut s = Segment::new(false, false, queue);
        s.denial = denial.map(|d| (0, d));
        self.segments.push_back(s);
    }

    /// A refused COMMIT: the proxy sends ROLLBACK and its CommandComplete
    /// is replaced by `error` (the transaction ends rolled back, as when a
    /// COMMIT fails in PostgreSQL).
    pub fn simple_swap(&mut self, error: Bytes) {
        let mut s = Segment::new(false, false, VecDeque::new());
        s.swap_complete = Some(error);
        self.segments.push_back(s);
    }

    /// An extended-protocol message that yields one terminal response
    /// (Parse, Bind, Describe, Close, Execute) is being forwarded.
    pub fn extended(&mut self, stmt: Option<InFlight>) {
        let s = self.open_extended();
        s.sent_msgs += 1;
        if let Some(st) = stmt {
            s.stmts.push_back(st);
        }
    }

    /// An extended-protocol denial: the proxy forwards a message that fails
    /// in its place; the error is replaced by `error`.
    pub fn extended_denial(&mut self, error: Bytes) {
        let s = self.open_extended();
        if s.denial.is_none() {
            s.denial = Some((s.sent_msgs, error));
        }
        s.sent_msgs += 1;
    }

    /// Whether the open extended segment already holds a denial (the proxy
    /// then skips client messages until Sync, as PostgreSQL does).
    pub fn skipping(&self) -> bool {
        matches!(self.segments.back(), Some(s) if s.open && s.denial.is_some())
    }

    /// A Sync is being forwarded.
    pub fn sync(&mut self) {
        let s = self.open_extended();
        s.open = false;
    }

    /// The client's CopyDone or CopyFail is being forwarded. PostgreSQL
    /// ignores Sync in copy-in mode, so when the COPY came from the extended
    /// protocol (drivers send Bind/Execute/Sync, then the data) the Syncs
    /// sent since its Execute answer nothing: the segment in copy-in mode is
    /// reopened and the next Sync closes it; segments opened by ignored Syncs
    /// are dropped. Without a CopyInResponse first, nothing changes.
    pub fn copy_end(&mut self) {
        let Some(pos) = self.segments.iter().position(|s| s.in_copy) else {
            return;
        };
        self.segments.truncate(pos + 1);
        let s = &mut self.segments[pos];
        s.in_copy = false;
        if s.extended {
            s.open = true;
        }
    }

    /// Handle one backend message (`body` excludes the 5-byte header).
    pub fn on_backend(&mut self, tag: u8, body: &[u8], now: Instant) -> Action {
        match tag {
            b'1' | b'2' | b'3' | b'n' | b'T' => self.terminal(),
            b'C' | b'I' | b's' => {
                if tag == b'C' {
                    if let Some(err) = self
                        .segments
                        .front_mut()
                        .and_then(|s| s.swap_complete.take())
                    {
                        self.mig_error = true;
                        self.last_tag = b"ROLLBACK".to_vec();
                        return Action::Replace(err);
                    }
                }
                self.terminal();
                if tag == b'C' {
                    self.last_tag.clear();
                    self.last_tag
                        .extend(body.iter().take_while(|b| **b != 0 && **b != b' '));
                }
                self.complete(now, None);
            }
            b'E' => return self.error(body, now),
            b'G' => {
                if let Some(s) = self.segments.front_mut() {
                    s.in_copy = true;
                }
            }
            b'Z' => self.ready(body.first().copied().unwrap_or(b'I')),
            _ => {}
        }
        Action::Forward
    }

    fn terminal(&mut self) {
        if let Some(s) = self.segments.front_mut() {
            if s.extended {
                s.seen_terminals += 1;
            }
        }
    }

    fn complete(&mut self, now: Instant, error: Option<String>) {
        let Some(seg) = self.segments.front_mut() else {
            return;
        };
        if let Some(stmt) = seg.stmts.pop_front() {
            let start = match self.last_mark {
                Some(m) if m > stmt.sent => m,
                _ => stmt.sent,
            };
            if self.migrations && stmt.class == StatementClass::Ddl {
                self.mig_ddl = true;
                if let Some(fp) = &stmt.fp {
                    self.mig_fps.push(Arc::clone(fp));
                }
                if self.mig_text.is_none() {
                    self.mig_text = Some(Arc::clone(&stmt.text));
                }
            }
            self.completed.push(Completed {
                duration: now.saturating_duration_since(start),
                stmt,
                error,
            });
            self.last_mark = Some(now);
        }
    }

    fn error(&mut self, body: &[u8], now: Instant) -> Action {
        self.mig_error = true;
        let Some(seg) = self.segments.front_mut() else {
            return Action::Forward;
        };
        seg.errored = true;
        if let Some((k, _)) = &seg.denial {
            if !seg.extended || *k == seg.seen_terminals {
                if let Some((_, frame)) = seg.denial.take() {
                    seg.stmts.clear();
                    return Action::Replace(frame);
                }
            }
        }
        let code = crate::protocol::messages::error_fields(body)
            .map(|e| e.code)
            .unwrap_or_default();
        self.complete(now, Some(code));
        if let Some(seg) = self.segments.front_mut() {
            // The rest of the message (simple) or up to Sync (extended) is skipped.
            seg.stmts.clear();
        }
        Action::Forward
    }

    /// A migration transaction containing a denied ddl statement fails.
    pub fn note_denied_ddl(&mut self) {
        if self.migrations {
            self.mig_ddl = true;
            self.mig_error = true;
        }
    }

    fn ready(&mut self, status: u8) {
        if let Some(mut done) = self.segments.pop_front() {
            done.stmts.clear();
            // (a queue grown by a long pipeline is let go)
            if done.stmts.capacity() > self.spare.capacity() && done.stmts.capacity() <= 64 {
                self.spare = done.stmts;
            }
        }
        self.status = status;
        self.last_mark = None;
        if status == b'I' {
            if self.mig_ddl {
                let committed = self.last_tag == b"COMMIT" || !self.mig_error;
                let rolled_back = self.last_tag == b"ROLLBACK";
                self.migrations_ended.push(EndedMigration {
                    outcome: if committed && !rolled_back {
                        MigrationEnd::Applied
                    } else {
                        MigrationEnd::Failed
                    },
                    statements: std::mem::take(&mut self.mig_fps),
                    first_text: self.mig_text.take(),
                });
            }
            self.mig_fps.clear();
            self.mig_text = None;
            self.mig_ddl = false;
            self.mig_error = false;
        }
    }

    /// The session ends without a clean idle state, so the proxy closes
    /// the upstream connection and PostgreSQL rolls back what is open. A
    /// migration episode that already failed, or whose transaction is open
    /// with nothing in flight, ends here as failed (a client that leaves
    /// right after the error, with its ROLLBACK still unanswered, is the
    /// common case). One with a statement in flight that could still
    /// commit is left unrecorded: its outcome is unknown.
    pub fn abandon(&mut self) {
        let rolled_back = self.mig_error || (self.idle() && self.status != b'I');
        if self.mig_ddl && rolled_back {
            self.migrations_ended.push(EndedMigration {
                outcome: MigrationEnd::Failed,
                statements: std::mem::take(&mut self.mig_fps),
                first_text: self.mig_text.take(),
            });
        }
        self.mig_ddl = false;
        self.mig_error = false;
    }

    /// Whether every sent request has been answered.
    pub fn idle(&self) -> bool {
        self.segments.is_empty()
    }

    /// Whether the session is between transactions with nothing in flight.
    pub fn at_rest(&self) -> bool {
        self.idle() && self.status == b'I'
    }

    /// Requests still awaiting their ReadyForQuery (bounded by what the
    /// client sent; checked by the fuzz tests).
    pub fn pending(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
