//! Admin HTTP listener: `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! Owns the admin routes and the HTTP/1 connection handling (hyper 1,
//! hyper-util, tokio). It may use the [`AdminState`] trait the caller
//! implements and nothing else of the crate. It must never expose any other
//! route: there are no debug endpoints in any tier, everything else is 404
//! (405 for a known path with another method), so the SPEC's "debug endpoints
//! answer 404 in production" holds everywhere. It never reads request
//! bodies, bounds how long a client may take to send its headers and how many
//! admin connections run at once, and stops accepting on the shutdown token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::observe::metrics::METRICS_CONTENT_TYPE;

/// Admin connections served at once; further ones are closed at accept.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Time a client has to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time open admin connections get to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// What the admin listener needs from the process.
pub trait AdminState: Send + Sync {
    /// The exposition served on `/metrics` (e.g. `Metrics::encode`).
    fn metrics_text(&self) -> String;
    /// `(env, upstream reachable)` for every served environment.
    fn readiness(&self) -> Vec<(String, bool)>;
    /// Whether any served environment is production tier. Unused today (there
    /// are no debug endpoints at all); kept so a future debug route must
    /// consult it.
    fn production(&self) -> bool;
}

/// Serve the admin routes on `listener` until `shutdown` is cancelled, then
/// let open connections finish (at most [`SHUTDOWN_GRACE`]) and return.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<dyn AdminState>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin listener accept failed");
                crate::timers::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!("admin listener busy, connection dropped");
            continue;
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, state, shutdown).await;
        });
    }
    tracker.close();
    if crate::timers::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after shutdown grace");
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<dyn AdminState>,
    shutdown: CancellationToken,
) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let resp = route(state.as_ref(), req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = http1::Builder::new()
        .timer(crate::timers::HyperTimer::default())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match crate::timers::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

/// The routing table: pure, so it is tested without sockets.
pub fn route(state: &dyn AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics_text())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        _ => readyz(state),
    }
}

fn readyz(state: &dyn AdminState) -> Response<Full<Bytes>> {
    let down: Vec<String> = state
        .readiness()
        .into_iter()
        .filter(|(_, up)| !up)
        .map(|(env, _)| env)
        .collect();
    if down.is_empty() {
        text(StatusCode::OK, "ready\n".to_owned())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: upstream unreachable: {}\n", down.join(", ")),
        )
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
