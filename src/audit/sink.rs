//! The audit sink: a bounded queue in front of one writer task that owns the
//! file, assigns `seq`/`prev` (the hash chain), buffers, flushes and fsyncs.
//!
//! May use tokio (task, mpsc, oneshot, time, `spawn_blocking` for file IO),
//! std fs and tracing. Must never block a caller (`log` is `try_send`), never
//! panic or exit on an IO error, and never drop bytes it has accepted into its
//! buffer: a failed write keeps the unwritten bytes and is retried on every
//! flush tick; meanwhile `healthy()` is false and `log` refuses new records.
//!
//! Health: `healthy()` is false when the last write/flush/fsync failed (set
//! at the failing flush, which happens at most one flush interval after a
//! record is queued), while one write/fsync has been stuck longer than
//! `stall_timeout`, or once the writer task is gone. It becomes true again
//! when a later flush writes everything pending.
//!
//! Restart: on start the last line of an existing file is read. If it is a
//! valid record the chain continues (`seq + 1`, `prev` = its hash). If it is
//! not (crash mid-write, tampering), a `\n` is appended when the line was
//! unterminated and a `chain_restart` record starts a new segment: `seq` 0,
//! `prev` = hash of the bad line's bytes, `detail` saying why. `verify` will
//! still report the bad line as the first broken link: the damage stays
//! visible, the new segment is itself chained.

use super::record::{line_hash, AuditRecord, EventKind, Outcome};
use super::tail::{chain_start, read_tail, ChainStart};
use super::AuditError;
use serde::Deserialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Flush early when this many bytes are buffered.
const FLUSH_THRESHOLD: usize = 256 * 1024;
/// `statement` and `detail` longer than this are cut (at a char boundary).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Messages handled per wake-up before the writer flushes and yields.
const MAX_BATCH: usize = 1024;

/// When the writer calls fsync (`sync_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch: the writer flushes and syncs as soon as the queue
    /// is momentarily empty (group commit), without waiting for the tick.
    Always,
    /// At a flush when at least this long has passed since the last sync,
    /// and at shutdown.
    Interval(Duration),
    /// Never; the OS decides.
    Never,
}

/// Sink settings. In TOML (all but `path` optional):
/// `path = "..."`, `fsync = "always" | "interval" | "never"` (default
/// `"interval"`), `fsync_interval_ms` (default 1000, only with `"interval"`),
/// `flush_interval_ms` (default 200), `queue` (default 65536),
/// `stall_timeout_ms` (default 2000).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawAuditConfig")]
pub struct AuditConfig {
    /// JSON Lines file, opened in append mode, created with mode 0600.
    pub path: PathBuf,
    pub fsync: FsyncPolicy,
    /// Buffered records are written at least this often.
    pub flush_interval: Duration,
    /// Capacity of the queue between `log` and the writer.
    pub queue: usize,
    /// A single write or fsync taking longer than this makes `healthy()` false.
    pub stall_timeout: Duration,
}

impl AuditConfig {
    /// Defaults: fsync every 1 s, flush every 200 ms, queue 65536, stall 2 s.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            path: path.into(),
            fsync: FsyncPolicy::Interval(Duration::from_millis(1000)),
            flush_interval: Duration::from_millis(200),
            queue: 65536,
            stall_timeout: Duration::from_millis(2000),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditConfig {
    path: PathBuf,
    fsync: Option<String>,
    fsync_interval_ms: Option<u64>,
    flush_interval_ms: Option<u64>,
    queue: Option<usize>,
    stall_timeout_ms: Option<u64>,
}

impl TryFrom<RawAuditConfig> for AuditConfig {
    type Error = String;

    fn try_from(raw: RawAuditConfig) -> Result<Self, String> {
        let mut cfg = AuditConfig::new(raw.path);
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(format!("{key} must be greater than 0"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        cfg.fsync = match (raw.fsync.as_deref(), raw.fsync_interval_ms) {
            (None | Some("interval"), ms) => {
                FsyncPolicy::Interval(positive("fsync_interval_ms", ms.unwrap_or(1000))?)
            }
            (Some("always"), None) => FsyncPolicy::Always,
            (Some("never"), None) => FsyncPolicy::Never,
            (Some(mode @ ("always" | "never")), Some(_)) => {
                return Err(format!(
                    "fsync_interval_ms is only valid with fsync = \"interval\", not \"{mode}\""
                ))
            }
            (Some(other), _) => {
                return Err(format!(
                    "fsync = \"{other}\": expected \"always\", \"interval\" or \"never\""
                ))
            }
        };
        if let Some(ms) = raw.flush_interval_ms {
            cfg.flush_interval = positive("flush_interval_ms", ms)?;
        }
        if let Some(ms) = raw.stall_timeout_ms {
            cfg.stall_timeout = positive("stall_timeout_ms", ms)?;
        }
        if let Some(q) = raw.queue {
            if q == 0 {
                return Err("queue must be greater than 0".to_string());
            }
            cfg.queue = q;
        }
        Ok(cfg)
    }
}

/// Why `log` (or `flush`) could not accept or complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuditUnavailable {
    #[error("audit queue is full")]
    QueueFull,
    #[error("audit sink is unhealthy (write, flush or fsync failing or stalled)")]
    Unhealthy,
    #[error("audit sink is shut down")]
    Closed,
}

enum Msg {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<bool>),
    Shutdown(oneshot::Sender<()>),
}

/// State shared by the handles and the writer.
struct Health {
    ok: AtomicBool,
    /// Milliseconds since `epoch` + 1 when an IO call started; 0 when idle.
    busy_since: AtomicU64,
    epoch: Instant,
    stall_ms: u64,
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn stalled(&self) -> bool {
        let busy = self.busy_since.load(Ordering::Acquire);
        busy != 0 && self.now_ms().saturating_add(1).saturating_sub(busy) > self.stall_ms
    }
}

/// Cheap, cloneable front of the sink, handed to every session.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Msg>,
    health: Arc<Health>,
}

impl AuditHandle {
    /// Queues a record without waiting. `Err` when the sink is unhealthy,
    /// the queue is full, or the sink is shut down; the record is then
    /// dropped (the production tier refuses the statement).
    pub fn log(&self, rec: AuditRecord) -> Result<(), AuditUnavailable> {
        if !self.healthy() {
            return Err(if self.tx.is_closed() {
                AuditUnavailable::Closed
            } else {
                AuditUnavailable::Unhealthy
            });
        }
        self.tx
            .try_send(Msg::Record(Box::new(rec)))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AuditUnavailable::QueueFull,
                mpsc::error::TrySendError::Closed(_) => AuditUnavailable::Closed,
            })
    }

    /// True while the last write succeeded, no IO call is stalled and the
    /// writer is running.
    pub fn healthy(&self) -> bool {
        self.health.ok.load(Ordering::Acquire) && !self.health.stalled() && !self.tx.is_closed()
    }

    /// Waits until every record queued before this call is written and
    /// flushed to the OS (fsync only if the policy says so now).
    pub async fn flush(&self) -> Result<(), AuditUnavailable> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(ack))
            .await
            .map_err(|_| AuditUnavailable::Closed)?;
        match done.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuditUnavailable::Unhealthy),
            Err(_) => Err(AuditUnavailable::Closed),
        }
    }

    /// Stops the sink for every handle: records already queued (by any
    /// clone) are written, flushed and (unless `Never`) synced, then the
    /// writer task ends. Later `log` calls get `Closed`. If the final write
    /// fails the bytes are lost and an error is traced.
    pub async fn shutdown(self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Where the writer's bytes go. `File` in production; tests inject failures.
pub(crate) trait Target: Write + Send + 'static {
    fn sync(&mut self) -> io::Result<()>;
}

impl Target for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Entry point; see [`AuditSink::start`].
pub struct AuditSink;

impl AuditSink {
    /// Opens (or creates, mode 0600) the file, recovers the chain from its
    /// last line and spawns the writer task. Must be called inside a tokio
    /// runtime. The `JoinHandle` ends after `shutdown` or when every handle
    /// is dropped.
    pub fn start(cfg: AuditConfig) -> Result<(AuditHandle, JoinHandle<()>), AuditError> {
        let path = cfg.path.as_path();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        let meta = file.metadata().map_err(|e| AuditError::io(path, e))?;
        let regular = meta.is_file();
        if regular && meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "audit file is readable or writable by group/others");
        }
        let tail = if regular {
            read_tail(&file, meta.len()).map_err(|e| AuditError::io(path, e))?
        } else {
            None
        };
        let start = chain_start(tail);
        if let Some(reason) = &start.restart {
            tracing::error!(path = %path.display(), %reason, "audit chain restarted");
        }
        // fsync on a pipe or character device (/dev/stdout) fails with
        // EINVAL; only regular files are synced.
        let policy = if regular {
            cfg.fsync
        } else {
            FsyncPolicy::Never
        };
        Ok(spawn_writer(file, start, &cfg, policy))
    }
}

pub(crate) fn spawn_writer<T: Target>(
    target: T,
    start: ChainStart,
    cfg: &AuditConfig,
    policy: FsyncPolicy,
) -> (AuditHandle, JoinHandle<()>) {
    let health = Arc::new(Health {
        ok: AtomicBool::new(true),
        busy_since: AtomicU64::new(0),
        epoch: Instant::now(),
        stall_ms: u64::try_from(cfg.stall_timeout.as_millis()).unwrap_or(u64::MAX),
    });
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let mut writer = Writer {
        target: Some(target),
        pending: start.preamble,
        next_seq: start.next_seq,
        prev: start.prev,
        policy,
        last_sync: tokio::time::Instant::now(),
        unsynced: false,
        health: Arc::clone(&health),
        name: cfg.path.display().to_string(),
    };
    if let Some(reason) = start.restart {
        let mut rec = AuditRecord::new(EventKind::ChainRestart, "", "", Outcome::Error);
        rec.detail = Some(reason);
        writer.append(rec);
    }
    let task = tokio::spawn(writer.run(rx, cfg.flush_interval.max(Duration::from_millis(1))));
    (AuditHandle { tx, health }, task)
}

struct Writer<T: Target> {
    /// `None` only if a blocking IO task was lost (panic); then always failing.
    target: Option<T>,
    pending: Vec<u8>,
    next_seq: u64,
    prev: String,
    policy: FsyncPolicy,
    last_sync: tokio::time::Instant,
    unsynced: bool,
    health: Arc<Health>,
    name: String,
}

impl<T: Target> Writer<T> {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, every: Duration) {
        let mut tick = crate::timers::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.pending.is_empty() {
            self.flush(false).await;
        }
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(mut msg) = msg else { break };
                    let mut n = 0;
                    loop {
                        if let Some(ack) = self.handle(msg).await {
                            self.drain_and_stop(rx).await;
                            let _ = ack.send(());
                            return;
                        }
                        n += 1;
                        match rx.try_recv() {
                            Ok(next) if n < MAX_BATCH => msg = next,
                            Ok(next) => { msg = next; self.flush(false).await; n = 0; }
                            Err(_) => break,
                        }
                    }
                    if self.policy == FsyncPolicy::Always || self.pending.len() >= FLUSH_THRESHOLD {
                        self.flush(false).await;
                    }
                }
                _ = tick.tick() => { self.flush(false).await; }
            }
        }
        // Every handle dropped: write what is left.
        self.flush(true).await;
    }

    /// Handles one message; returns the ack when it is a shutdown.
    async fn handle(&mut self, msg: Msg) -> Option<oneshot::Sender<()>> {
        match msg {
            Msg::Record(rec) => self.append(*rec),
            Msg::Flush(ack) => {
                let ok = self.flush(false).await;
                let _ = ack.send(ok);
            }
            Msg::Shutdown(ack) => return Some(ack),
        }
        None
    }

    async fn drain_and_stop(&mut self, mut rx: mpsc::Receiver<Msg>) {
        rx.close();
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Record(rec) => self.append(*rec),
                Msg::Flush(ack) => {
                    let ok = self.flush(false).await;
                    let _ = ack.send(ok);
                }
                Msg::Shutdown(ack) => {
                    let _ = ack.send(());
                }
            }
        }
        if !self.flush(true).await {
            tracing::error!(path = %self.name, bytes = self.pending.len(),
                "audit sink shut down with unwritten records");
        }
    }

    /// Chains and serializes one record into the pending buffer.
    fn append(&mut self, mut rec: AuditRecord) {
        rec.seq = self.next_seq;
        rec.prev = std::mem::take(&mut self.prev);
        cap_text(&mut rec.statement);
        cap_text(&mut rec.detail);
        match serde_json::to_vec(&rec) {
            Ok(line) => {
                self.prev = line_hash(&line);
                self.next_seq = self.next_seq.saturating_add(1);
                self.pending.extend_from_slice(&line);
                self.pending.push(b'\n');
            }
            Err(e) => {
                // Not reachable for this struct; keep the chain unchanged.
                self.prev = rec.prev;
                tracing::error!(path = %self.name, error = %e, "audit record not serializable");
            }
        }
    }

    /// Writes pending bytes (and fsyncs when due). Returns true when nothing
    /// is left pending and no error happened; updates the health flag.
    async fn flush(&mut self, final_flush: bool) -> bool {
        let sync_due = match self.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Never => false,
            FsyncPolicy::Interval(d) => final_flush || self.last_sync.elapsed() >= d,
        };
        let sync = sync_due && (self.unsynced || !self.pending.is_empty());
        if self.pending.is_empty() && !sync {
            return self.health.ok.load(Ordering::Acquire);
        }
        let Some(mut target) = self.target.take() else {
            self.set_failed("audit writer lost its file after an internal error");
            return false;
        };
        let mut buf = std::mem::take(&mut self.pending);
        let wrote_any = !buf.is_empty();
        self.health
            .busy_since
            .store(self.health.now_ms().saturating_add(1), Ordering::Release);
        let joined = tokio::task::spawn_blocking(move || {
            let res = write_out(&mut target, &mut buf, sync);
            (target, buf, res)
        })
        .await;
        self.health.busy_since.store(0, Ordering::Release);
        match joined {
            Ok((target, buf, res)) => {
                self.target = Some(target);
                self.pending = buf;
                match res {
                    Ok(()) => {
                        if sync {
                            self.unsynced = false;
                            self.last_sync = tokio::time::Instant::now();
                        } else if wrote_any {
                            self.unsynced = true;
                        }
                        if !self.health.ok.swap(true, Ordering::AcqRel) {
                            tracing::info!(path = %self.name, "audit sink recovered");
                        }
                        true
                    }
                    Err(e) => {
                        if wrote_any {
                            self.unsynced = true;
                        }
                        self.set_failed(&format!("audit write failed: {e}"));
                        false
                    }
                }
            }
            Err(e) => {
                self.set_failed(&format!("audit IO task failed: {e}"));
                false
            }
        }
    }

    fn set_failed(&self, why: &str) {
        if self.health.ok.swap(false, Ordering::AcqRel) {
            tracing::error!(path = %self.name, pending = self.pending.len(), "{why}; refusing audit records until a write succeeds");
        } else {
            tracing::debug!(path = %self.name, "{why} (still failing)");
        }
    }
}

/// Writes `buf` fully, removing what was written (so a retry continues
/// exactly where the failure stopped), then flushes and optionally syncs.
fn write_out<T: Target>(target: &mut T, buf: &mut Vec<u8>, sync: bool) -> io::Result<()> {
    let mut written = 0;
    let res = loop {
        if written == buf.len() {
            break Ok(());
        }
        match target.write(&buf[written..]) {
            Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    buf.drain(..written);
    res?;
    target.flush()?;
    if sync {
        target.sync()?;
    }
    Ok(())
}

/// Cuts a text field to [`MAX_TEXT_BYTES`] at a char boundary, noting it.
fn cap_text(field: &mut Option<String>) {
    if let Some(s) = field {
        if s.len() > MAX_TEXT_BYTES {
            let mut cut = MAX_TEXT_BYTES;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            let total = s.len();
            s.truncate(cut);
            s.push_str(&format!("…[truncated, {total} bytes]"));
        }
    }
}
