//! The relay: every message both ways, with policy on the way in.
//!
//! Owns: the two directions of an established session. Client → upstream
//! classifies Query/Parse/Bind/Execute and decides; denied statements are
//! never sent (a harmless failing message takes their place, see
//! `tracker`). Upstream → client streams everything (DataRow and CopyData
//! are forwarded as they arrive, never buffered whole) and finishes
//! bookkeeping at each completion. Must never: re-encode forwarded bytes,
//! or write to a socket from two places.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::either::Either;

use super::admission::Admitted;
use super::inbound::Inbound;
use super::observe_hooks::Observer;
use super::outgoing::{Msg, Outgoing};
use super::race::race;
use super::signal::{SessionSignal, Stop};
use super::stream::{
    ClientReader, ClientStream, ClientWriter, UpstreamReader, UpstreamWriter, WritePart,
};
use super::tracker::{Action, Tracker};
use super::upstream::Upstream;
use crate::protocol::encode::{self, Severity};
use crate::protocol::frame::{self, FrameError};
use crate::protocol::sqlstate;
use crate::shared::{EnvRuntime, LiveSession, Runtime, Shared};

/// Why a session ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate or closed the connection.
    ClientClosed,
    /// The upstream closed the connection or failed.
    UpstreamLost(String),
    /// The proxy ended it (reload, token expiry, shutdown, idle timeout).
    Killed(String),
    /// The client broke the protocol.
    Protocol(String),
}

impl fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayEnd::ClientClosed => write!(f, "client closed the session"),
            RelayEnd::UpstreamLost(e) => write!(f, "upstream connection lost: {e}"),
            RelayEnd::Killed(r) => write!(f, "closed by the proxy: {r}"),
            RelayEnd::Protocol(e) => write!(f, "protocol violation: {e}"),
        }
    }
}

const READ_BUF: usize = 64 * 1024;
/// Kill reasons with this prefix are client protocol violations (08P01).
const PROTOCOL_PREFIX: &str = "protocol violation: ";
/// How long the writer side gets to deliver that FATAL to the client.
const FATAL_GRACE: Duration = Duration::from_secs(2);

/// Run an established session until it ends; the upstream session comes
/// back when it is reusable (closed otherwise).
pub async fn run(
    mut client: ClientStream,
    mut up: Upstream,
    adm: &Admitted,
    env: &Arc<EnvRuntime>,
    rt: &Arc<Runtime>,
    shared: &Arc<Shared>,
) -> (RelayEnd, Option<Upstream>) {
    let signal = Arc::new(SessionSignal::default());
    let reason = Arc::new(Mutex::new(None));
    let live_key = (Arc::clone(&env.name), up.pid);
    shared.sessions.insert(
        live_key.clone(),
        LiveSession {
            identity: adm.login.identity.clone(),
            role: adm.login.role.clone(),
            stop: Arc::clone(&signal),
            reason: Arc::clone(&reason),
        },
    );
    // Shutdown drains the sessions it finds registered; one registered
    // after that sees the token.
    if shared.shutdown.is_cancelled() {
        signal.drain();
    }
    let tracker = Mutex::new(Tracker::new(
        adm.migrations_role || adm.login.level == crate::policy::Level::Migrate,
    ));
    let observer = Observer::new(adm, env, rt, shared, up.pid);
    let (mut cr, mut cw) = client.split_mut();
    let (mut ur, mut uw) = up.stream.split_mut();
    let mut ubuf = BytesMut::with_capacity(READ_BUF);
    let mut upass = 0usize;
    let mut inbound = Inbound::new(adm, env, rt, shared, &observer);
    inbound.set_kill(Arc::clone(&signal), Arc::clone(&reason));
    let expiry = adm.expires.map(|t| {
        let (signal, reason) = (Arc::clone(&signal), Arc::clone(&reason));
        let left = t
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        AbortOnDrop(tokio::spawn(async move {
            crate::timers::sleep(left).await;
            if let Ok(mut r) = reason.lock() {
                *r = Some("the access token of this session expired".into());
            }
            signal.kill();
        }))
    });
    let client_side = async {
        let end = client_to_upstream(&mut cr, &mut uw, &tracker, &mut inbound).await;
        if let RelayEnd::Protocol(why) = &end {
            // Tell the client why, as PostgreSQL does (FATAL 08P01): the
            // writer side owns the client socket, so hand it the reason.
            if let Ok(mut r) = reason.lock() {
                *r = Some(format!("{PROTOCOL_PREFIX}{why}"));
            }
            signal.kill();
            crate::timers::sleep(FATAL_GRACE).await;
        }
        end
    };
    let upstream_side = upstream_to_client(
        &mut ur, &mut cw, &mut ubuf, &mut upass, &tracker, &observer, &signal, &reason,
    );
    let end = race(std::pin::pin!(client_side), std::pin::pin!(upstream_side)).await;
    let end = match end {
        RelayEnd::Killed(why) if why.starts_with(PROTOCOL_PREFIX) => {
            RelayEnd::Protocol(why[PROTOCOL_PREFIX.len()..].to_string())
        }
        e => e,
    };
    drop(expiry);
    shared.sessions.remove(&live_key);
    // A clean, idle end leaves the upstream session reusable: every request
    // answered, not in a transaction, nothing half-read.
    let clean = matches!(end, RelayEnd::ClientClosed)
        && ubuf.is_empty()
        && upass == 0
        && tracker.lock().map(|t| t.at_rest()).unwrap_or(false);
    if !clean {
        if let Ok(mut t) = tracker.lock() {
            t.abandon();
        }
    }
    observer.drain(&tracker);
    if clean {
        return (end, Some(up));
    }
    super::pool::terminate(&mut up.stream).await;
    (end, None)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn client_to_upstream(
    cr: &mut ClientReader<'_>,
    uw: &mut UpstreamWriter<'_>,
    tracker: &Mutex<Tracker>,
    inbound: &mut Inbound<'_>,
) -> RelayEnd {
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = Outgoing::with_capacity(READ_BUF);
    let mut passthrough = 0usize;
    loop {
        match inbound.read(cr, &mut buf, tracker).await {
            Ok(0) => return RelayEnd::ClientClosed,
            Ok(_) => {}
            Err(e) => return e,
        }
        if inbound.gated() {
            inbound.refresh_gate(&buf).await;
        }
        let (pos, need, open) =
            match scan_client(&buf, &mut out, &mut passthrough, tracker, inbound) {
                Ok(s) => s,
                Err(e) => return e,
            };
        if !out.is_empty() {
            // flush: a TLS stream may hold encrypted records back otherwise
            let sent = write_flush(uw, out.pending(&buf)).await;
            out.clear();
            if let Err(e) = sent {
                return RelayEnd::UpstreamLost(e.to_string());
            }
        }
        if !open {
            return RelayEnd::ClientClosed;
        }
        consumed(&mut buf, pos, need);
    }
}

/// Forward the next part of a message that streams through (`passthrough`
/// bytes of it still to come) from `buf[pos..]`; how many bytes that was.
fn stream_rest(buf: &[u8], pos: usize, out: &mut Outgoing, passthrough: &mut usize) -> usize {
    let n = (*passthrough).min(buf.len() - pos);
    out.forward(buf, pos..pos + n);
    *passthrough -= n;
    n
}

/// Handle the complete (or streamable) client messages in `buf`, planning
/// in `out` what to send upstream: (bytes handled, size of a message that
/// has only begun, whether the client is still there). The tracker is
/// locked once for the batch; this never waits.
fn scan_client(
    buf: &[u8],
    out: &mut Outgoing,
    passthrough: &mut usize,
    tracker: &Mutex<Tracker>,
    inbound: &mut Inbound<'_>,
) -> Result<(usize, usize, bool), RelayEnd> {
    // Messages are looked at in place; `pos` is where the next starts.
    let mut pos = 0usize;
    let mut guard: Option<std::sync::MutexGuard<'_, Tracker>> = None;
    while pos < buf.len() {
        if *passthrough > 0 {
            pos += stream_rest(buf, pos, out, passthrough);
            continue;
        }
        let rest = buf.len() - pos;
        let Some((tag, total)) =
            frame::peek_header(&buf[pos..]).map_err(|e| RelayEnd::Protocol(e.to_string()))?
        else {
            break;
        };
        if tag == b'd' && total > rest {
            // Large CopyData: stream it.
            *passthrough = total - rest;
            out.forward(buf, pos..buf.len());
            return Ok((buf.len(), 0, true));
        }
        if total > rest {
            return Ok((pos, total, true));
        }
        let m = Msg::new(tag, buf, pos, pos + total);
        let t = guard.get_or_insert_with(|| lock(tracker));
        if !inbound.handle(&m, out, t)? {
            return Ok((pos, 0, false));
        }
        pos += total;
    }
    Ok((pos, 0, true))
}

/// Drop the first `pos` bytes of a read buffer; make room for a message of
/// `need` bytes that has only begun, or start over at the front of the
/// allocation when everything was consumed (a buffer reused from its
/// start stays in cache).
fn consumed(buf: &mut BytesMut, pos: usize, need: usize) {
    buf.advance(pos);
    if need > buf.len() {
        buf.reserve(need - buf.len());
    } else if buf.is_empty() {
        buf.reserve(READ_BUF);
    }
}

/// Write all of `b` and flush. On plain TCP the usual case — the socket
/// takes the whole batch at once — is one `send` without the write
/// future's machinery (cooperative budget, readiness poll); only a
/// partial write or a full socket buffer waits for writability.
async fn write_flush<T: tokio::io::AsyncWrite + Unpin>(
    w: &mut WritePart<'_, T>,
    b: &[u8],
) -> std::io::Result<()> {
    if let Either::Left(tcp) = w {
        if b.is_empty() {
            return Ok(());
        }
        // TCP has nothing to flush.
        return match tcp.try_write(b) {
            Ok(n) if n == b.len() => Ok(()),
            Ok(n) => tcp.write_all(&b[n..]).await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tcp.write_all(b).await,
            Err(e) => Err(e),
        };
    }
    w.write_all(b).await?;
    w.flush().await
}

/// Tags whose full frame the proxy reads (everything else streams through).
fn inspected(tag: u8) -> bool {
    matches!(
        tag,
        b'Z' | b'E' | b'C' | b'I' | b's' | b'1' | b'2' | b'3' | b'n' | b'T' | b'G'
    )
}

#[allow(clippy::too_many_arguments)]
async fn upstream_to_client(
    ur: &mut UpstreamReader<'_>,
    cw: &mut ClientWriter<'_>,
    buf: &mut BytesMut,
    passthrough: &mut usize,
    tracker: &Mutex<Tracker>,
    observer: &Observer<'_>,
    signal: &SessionSignal,
    reason: &Mutex<Option<String>>,
) -> RelayEnd {
    let mut out = Outgoing::with_capacity(READ_BUF);
    // Shutdown was asked while a transaction or request was open: end the
    // session at its next idle point instead.
    let mut stop_when_idle = false;
    loop {
        // Data first: a burst is relayed without looking at the stop
        // signal. Tokio's cooperative budget makes a socket read return
        // Pending after 128 ready operations in one poll, so under a
        // continuous stream a kill or shutdown is still seen within a budget.
        let n = tokio::select! {
            biased;
            r = ur.read_buf(buf) => r,
            stop = signal.stopped(stop_when_idle) => {
                if stop == Stop::Drain {
                    if at_rest(tracker) {
                        return shutting_down(cw).await;
                    }
                    stop_when_idle = true;
                    continue;
                }
                let why = reason.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| "session closed".into());
                let code = if why.starts_with(PROTOCOL_PREFIX) { sqlstate::PROTOCOL_VIOLATION } else { sqlstate::ADMIN_SHUTDOWN };
                let f = encode::error(Severity::Fatal, code, &format!("tierwarden: {why}"), None);
                let _ = write_flush(cw, &f).await;
                return RelayEnd::Killed(why);
            }
        };
        match n {
            Ok(0) | Err(_) => {
                let why = match n {
                    Err(e) => e.to_string(),
                    _ => "upstream closed the connection".into(),
                };
                let f = encode::error(
                    Severity::Fatal,
                    sqlstate::CONNECTION_FAILURE,
                    "tierwarden: the upstream database connection was lost",
                    Some("the session ended; reconnect to start a new one"),
                );
                let _ = write_flush(cw, &f).await;
                return RelayEnd::UpstreamLost(why);
            }
            Ok(_) => {}
        }
        let scan = match scan_backend(buf, &mut out, passthrough, tracker) {
            Ok(s) => s,
            Err(e) => return RelayEnd::UpstreamLost(e.to_string()),
        };
        if !out.is_empty() {
            let sent = write_flush(cw, out.pending(buf)).await;
            out.clear();
            if let Err(e) = sent {
                return RelayEnd::Protocol(format!("client write failed: {e}"));
            }
        }
        consumed(buf, scan.consumed, scan.need);
        if scan.pending {
            observer.drain(tracker);
            if stop_when_idle && at_rest(tracker) {
                return shutting_down(cw).await;
            }
        }
    }
}

/// The session's tracker, even if a panic elsewhere poisoned its lock.
fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the session is between transactions with nothing in flight
/// (a poisoned tracker counts as at rest: nothing more can be learned).
fn at_rest(tracker: &Mutex<Tracker>) -> bool {
    tracker.lock().map(|t| t.at_rest()).unwrap_or(true)
}

/// Tell the client the proxy is shutting down and end the session.
async fn shutting_down(cw: &mut ClientWriter<'_>) -> RelayEnd {
    let f = encode::error(
        Severity::Fatal,
        sqlstate::ADMIN_SHUTDOWN,
        "tierwarden: the proxy is shutting down",
        None,
    );
    let _ = write_flush(cw, &f).await;
    RelayEnd::Killed("shutdown".into())
}

/// What one scan of the upstream read buffer did.
#[derive(Debug)]
pub struct Scan {
    /// Bytes handled (to drop from the buffer once `out` is written).
    pub consumed: usize,
    /// Size of the message that has only begun at `consumed` (0: none).
    pub need: usize,
    /// Whether bookkeeping is pending (a completion, error or ready).
    pub pending: bool,
}

/// Plan what to send for the complete/streamable backend messages in
/// `buf`, applying the tracker's actions; `buf` itself is left as it is
/// until the caller has written `out`.
pub fn scan_backend(
    buf: &[u8],
    out: &mut Outgoing,
    passthrough: &mut usize,
    tracker: &Mutex<Tracker>,
) -> Result<Scan, FrameError> {
    let mut guard: Option<std::sync::MutexGuard<'_, Tracker>> = None;
    // One clock read per batch: its messages arrived together.
    let mut now: Option<Instant> = None;
    let (mut pos, mut need, mut pending) = (0usize, 0usize, false);
    while pos < buf.len() {
        if *passthrough > 0 {
            pos += stream_rest(buf, pos, out, passthrough);
            continue;
        }
        let rest = buf.len() - pos;
        let Some((tag, total)) = frame::peek_header(&buf[pos..])? else {
            break;
        };
        if !inspected(tag) {
            let n = total.min(rest);
            out.forward(buf, pos..pos + n);
            *passthrough = total - n;
            pos += n;
            continue;
        }
        if total > rest {
            need = total;
            break;
        }
        let m = Msg::new(tag, buf, pos, pos + total);
        let t = guard.get_or_insert_with(|| lock(tracker));
        match t.on_backend(tag, m.body(), *now.get_or_insert_with(Instant::now)) {
            Action::Forward => out.forward_msg(&m),
            Action::Replace(b) => out.replace(&m, &b),
        }
        pending |= matches!(tag, b'C' | b'E' | b'Z' | b'I' | b's');
        pos += total;
    }
    Ok(Scan {
        consumed: pos,
        need,
        pending,
    })
}

/// Frame bytes for a denied statement in the simple protocol: the upstream
/// answers it with a syntax error, which the tracker replaces.
pub fn injected_query() -> Bytes {
    encode::query("tierwarden: denied")
}

/// Frame bytes for a denied statement in the extended protocol: a Bind to
/// a statement name no client may use, which fails without side effects.
pub fn injected_bind() -> Bytes {
    let mut body = Vec::new();
    body.push(0u8); // unnamed portal
    body.extend_from_slice(RESERVED_NAME);
    body.push(0);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no params, no result formats
    let mut b = BytesMut::new();
    b.extend_from_slice(b"B");
    b.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&body);
    b.freeze()
}

/// Statement name prefix reserved for the proxy; clients may not use it.
pub const RESERVED_NAME: &[u8] = b"\x01tierwarden_denied";
