//! Tests of `http.rs`: the routing table, then the real listener over TCP.

use super::*;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct FakeState {
    ready: Mutex<Vec<(String, bool)>>,
}

impl AdminState for FakeState {
    fn metrics_text(&self) -> String {
        "# TYPE tierwarden_upstream_up gauge\ntierwarden_upstream_up{env=\"dev\"} 1\n# EOF\n".into()
    }
    fn readiness(&self) -> Vec<(String, bool)> {
        self.ready.lock().unwrap().clone()
    }
    fn production(&self) -> bool {
        true
    }
}

fn state(ready: &[(&str, bool)]) -> Arc<FakeState> {
    Arc::new(FakeState {
        ready: Mutex::new(ready.iter().map(|(e, b)| (e.to_string(), *b)).collect()),
    })
}

#[test]
fn routing_table() {
    let s = state(&[("dev", true)]);
    let code = |m: Method, p: &str| route(s.as_ref(), &m, p).status().as_u16();
    assert_eq!(code(Method::GET, "/metrics"), 200);
    assert_eq!(code(Method::HEAD, "/healthz"), 200);
    assert_eq!(code(Method::GET, "/readyz"), 200);
    assert_eq!(code(Method::POST, "/metrics"), 405);
    assert_eq!(code(Method::GET, "/"), 404);
    assert_eq!(code(Method::GET, "/debug/pprof"), 404);
    assert_eq!(code(Method::GET, "/metrics/"), 404);
    let r = route(s.as_ref(), &Method::GET, "/metrics");
    assert_eq!(
        r.headers().get(CONTENT_TYPE).unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, headers, body).
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// The admin listener on an ephemeral port: its address, its shutdown
/// token and its task.
async fn start_admin(
    st: Arc<FakeState>,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_admin(
        listener,
        st as Arc<dyn AdminState>,
        shutdown.clone(),
    ));
    (addr, shutdown, server)
}

/// Cancel the listener of `start_admin` and wait (10 s at most) for it to
/// return.
async fn stop_admin(shutdown: CancellationToken, server: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    crate::timers::timeout(Duration::from_secs(10), server)
        .await
        .expect("server did not stop")
        .unwrap();
}

#[tokio::test]
async fn serves_routes_over_tcp_and_stops_on_shutdown() {
    let st = state(&[("dev", true), ("prod", true)]);
    let (addr, shutdown, server) = start_admin(Arc::clone(&st)).await;

    let (code, head, body) = get(addr, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/openmetrics-text; version=1.0.0"));
    assert!(body.contains("tierwarden_upstream_up{env=\"dev\"} 1"));

    assert_eq!(get(addr, "GET", "/healthz").await.0, 200);
    assert_eq!(get(addr, "GET", "/healthz").await.2, "ok\n");
    assert_eq!(get(addr, "GET", "/readyz").await.0, 200);

    st.ready.lock().unwrap()[1].1 = false;
    let (code, _, body) = get(addr, "GET", "/readyz").await;
    assert_eq!(code, 503);
    assert_eq!(body, "not ready: upstream unreachable: prod\n");

    let (code, _, _) = get(addr, "GET", "/debug/vars").await;
    assert_eq!(code, 404);
    let (code, head, _) = get(addr, "DELETE", "/metrics").await;
    assert_eq!(code, 405);
    assert!(head.contains("allow: get, head"));

    stop_admin(shutdown, server).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn garbage_request_does_not_stop_the_listener() {
    let (addr, shutdown, server) = start_admin(state(&[])).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    assert!(raw.is_empty() || raw.starts_with(b"HTTP/1.1 400"));
    // No environments served: vacuously ready.
    assert_eq!(get(addr, "GET", "/readyz").await.0, 200);
    stop_admin(shutdown, server).await;
}

/// A client that never finishes its request headers is dropped after
/// `HEADER_READ_TIMEOUT`, on a runtime without a time driver (as under
/// `serve`): hyper's timer is `crate::timers::HyperTimer`.
#[test]
fn stalled_request_headers_time_out_on_a_runtime_without_timers() {
    let rt = crate::cli::session_runtime(1).expect("runtime");
    rt.block_on(async {
        let (addr, shutdown, server) = start_admin(state(&[])).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let sent = std::time::Instant::now();
        let closed = crate::timers::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(20),
            s.read_to_end(&mut raw),
        )
        .await;
        assert!(
            closed.is_ok(),
            "connection still open after the header timeout"
        );
        // Closed by the timeout, not at once (a timer armed on this
        // runtime would panic the connection task and drop it at once).
        assert!(
            sent.elapsed() >= HEADER_READ_TIMEOUT / 2,
            "closed after {:?}, before the header timeout",
            sent.elapsed()
        );
        assert!(
            raw.is_empty() || raw.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&raw)
        );
        stop_admin(shutdown, server).await;
    });
}
