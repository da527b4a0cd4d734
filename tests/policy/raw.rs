//! A minimal raw PostgreSQL protocol client for the policy tests: startup
//! and SCRAM-SHA-256 over plaintext TCP (built from `postgres-protocol`'s
//! client pieces), then hand-written frontend messages so tests can send
//! exactly what drivers never do (FunctionCall, pipelined extended messages
//! without a Sync between them, an embedded NUL in a Query) and see every
//! backend message, including the ReadyForQuery status byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Bytes,
}

impl Msg {
    /// Fields of an ErrorResponse/NoticeResponse by their one-byte code.
    pub fn fields(&self) -> HashMap<u8, String> {
        let mut out = HashMap::new();
        let mut b = &self.body[..];
        while let Some((&code, rest)) = b.split_first() {
            if code == 0 {
                break;
            }
            let end = rest.iter().position(|c| *c == 0).unwrap_or(rest.len());
            out.insert(code, String::from_utf8_lossy(&rest[..end]).into_owned());
            b = rest.get(end + 1..).unwrap_or(&[]);
        }
        out
    }
    /// SQLSTATE of an ErrorResponse.
    pub fn code(&self) -> String {
        self.fields().remove(&b'C').unwrap_or_default()
    }
    /// Whether this is a tierwarden policy denial.
    pub fn is_denial(&self) -> bool {
        let f = self.fields();
        self.tag == b'E'
            && f.get(&b'C').map(String::as_str) == Some("42501")
            && f.get(&b'M')
                .is_some_and(|m| m.starts_with("tierwarden: denied"))
    }
    /// CommandComplete tag text.
    pub fn text(&self) -> String {
        let end = self
            .body
            .iter()
            .position(|c| *c == 0)
            .unwrap_or(self.body.len());
        String::from_utf8_lossy(&self.body[..end]).into_owned()
    }
}

/// A logged-in raw session.
pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

impl Raw {
    /// Connect and authenticate (plaintext, SCRAM-SHA-256) as `user`.
    pub async fn connect(addr: SocketAddr, user: &str, password: &str, db: &str) -> Raw {
        let s = TcpStream::connect(addr).await.expect("tcp connect");
        let mut r = Raw {
            s,
            buf: BytesMut::new(),
            out: BytesMut::new(),
        };
        frontend::startup_message([("user", user), ("database", db)], &mut r.out).expect("startup");
        r.flush().await;
        let mut scram = None;
        loop {
            let m = r.recv().await;
            match m.tag {
                b'R' => {
                    let mut b = m.body.clone();
                    let kind = b.get_i32();
                    match kind {
                        0 => {}
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut r.out,
                            )
                            .expect("sasl initial");
                            scram = Some(s);
                            r.flush().await;
                        }
                        11 => {
                            let s = scram.as_mut().expect("scram started");
                            s.update(&b).expect("server-first");
                            frontend::sasl_response(s.message(), &mut r.out).expect("sasl");
                            r.flush().await;
                        }
                        12 => {
                            let s = scram.as_mut().expect("scram started");
                            s.finish(&b).expect("server signature verifies");
                        }
                        other => panic!("unexpected authentication request {other}"),
                    }
                }
                b'E' => panic!("login failed: {:?}", m.fields()),
                b'Z' => return r,
                _ => {}
            }
        }
    }

    async fn flush(&mut self) {
        let out = self.out.split();
        self.s.write_all(&out).await.expect("write");
    }

    /// Queue raw frame bytes (sent by [`Raw::send`]).
    pub fn push(&mut self, frame: &[u8]) -> &mut Self {
        self.out.extend_from_slice(frame);
        self
    }

    /// Queue Parse, Bind and Execute of `sql` on the unnamed statement and
    /// portal.
    pub fn push_unnamed(&mut self, sql: &str) -> &mut Self {
        self.push(&parse("", sql))
            .push(&bind("", ""))
            .push(&execute(""))
    }

    /// Send everything queued.
    pub async fn send(&mut self) {
        self.flush().await;
    }

    /// The next backend message (10 s safety net).
    pub async fn recv(&mut self) -> Msg {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let mut f = self.buf.split_to(total);
                    let tag = f[0];
                    f.advance(5);
                    return Msg {
                        tag,
                        body: f.freeze(),
                    };
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
                .expect("backend answered within 10 s")
                .expect("read");
            assert!(n > 0, "connection closed by the proxy");
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        for _ in 0..10_000 {
            let m = self.recv().await;
            let done = m.tag == b'Z';
            v.push(m);
            if done {
                return v;
            }
        }
        panic!("no ReadyForQuery after 10000 messages")
    }

    /// Send a simple Query and collect the answer up to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Vec<Msg> {
        frontend::query(sql, &mut self.out).expect("query");
        self.flush().await;
        self.until_ready().await
    }
}

/// Tags of a response, e.g. `"12CE Z:E"`-style checks use [`tags`].
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The status byte of the final ReadyForQuery.
pub fn status(msgs: &[Msg]) -> char {
    let z = msgs.last().expect("messages");
    assert_eq!(z.tag, b'Z');
    z.body[0] as char
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 5);
    b.push(tag);
    b.put_i32(body.len() as i32 + 4);
    b.extend_from_slice(body);
    b
}

/// Parse (no parameter types).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.put_i16(0);
    frame(b'P', &b)
}

/// Parse with raw (possibly non-UTF-8 / reserved) name bytes.
pub fn parse_raw_name(name: &[u8], sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name);
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.put_i16(0);
    frame(b'P', &b)
}

/// Bind with no parameters, text results.
pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    b.put_i16(0);
    b.put_i16(0);
    b.put_i16(0);
    frame(b'B', &b)
}

/// Execute all rows of a portal.
pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    b.put_i32(0);
    frame(b'E', &b)
}

/// Sync.
pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

/// A Query whose body is given verbatim (it may hold an embedded NUL).
pub fn query_bytes(text: &[u8]) -> Vec<u8> {
    let mut b = text.to_vec();
    b.push(0);
    frame(b'Q', &b)
}

/// FunctionCall of a function by OID, no arguments, text result.
pub fn function_call(oid: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u32(oid);
    b.put_i16(0);
    b.put_i16(0);
    b.put_i16(0);
    frame(b'F', &b)
}
