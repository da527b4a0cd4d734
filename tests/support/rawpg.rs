//! A minimal raw PostgreSQL protocol client over a plain `TcpStream`, for
//! tests that must misbehave on purpose (stop reading, vanish mid-COPY,
//! send malformed or oversized messages, forge cancel requests): startup,
//! SCRAM-SHA-256 (postgres-protocol's client, no channel binding), simple
//! Query, and helpers to read one message at a time. Plaintext only, so
//! use it against non-production environments.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Protocol 3.0.
pub const V3: u32 = 196_608;
/// Safety net for every read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One backend message: type byte and body.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Type byte.
    pub tag: u8,
    /// Body after the length.
    pub body: Vec<u8>,
}

impl Msg {
    /// SQLSTATE of an ErrorResponse/NoticeResponse ("" otherwise).
    pub fn code(&self) -> String {
        self.field(b'C')
    }
    /// Message text of an ErrorResponse/NoticeResponse.
    pub fn message(&self) -> String {
        self.field(b'M')
    }
    fn field(&self, which: u8) -> String {
        if self.tag != b'E' && self.tag != b'N' {
            return String::new();
        }
        for part in self.body.split(|b| *b == 0) {
            if part.first() == Some(&which) {
                return String::from_utf8_lossy(&part[1..]).into_owned();
            }
        }
        String::new()
    }
}

/// A raw connection.
pub struct RawPg {
    /// The socket (tests may write anything to it).
    pub stream: TcpStream,
    buf: BytesMut,
    /// BackendKeyData the proxy handed out: (pid, secret).
    pub key: (i32, i32),
}

/// A startup packet for protocol `version` with `params`.
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A CancelRequest packet.
pub fn cancel_packet(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = 16i32.to_be_bytes().to_vec();
    out.extend_from_slice(&80_877_102i32.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

/// A regular message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message for `sql` (any bytes; NUL appended).
pub fn query_msg(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    message(b'Q', &body)
}

impl RawPg {
    /// Open a TCP connection without sending anything.
    pub async fn tcp(addr: SocketAddr) -> RawPg {
        RawPg {
            stream: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
            key: (0, 0),
        }
    }

    /// Connect and log in (startup + SCRAM-SHA-256); Err carries the
    /// server's error message.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<RawPg, Msg> {
        let mut c = RawPg::tcp(addr).await;
        let packet = startup_packet(V3, &[("user", user), ("database", database)]);
        c.send(&packet).await;
        c.authenticate(password).await?;
        Ok(c)
    }

    /// Answer the authentication requests until ReadyForQuery.
    pub async fn authenticate(&mut self, password: &str) -> Result<(), Msg> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = self.recv().await.expect("server answers during login");
            match m.tag {
                b'R' => {
                    let code = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                    match code {
                        0 => {}
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut body = SCRAM_SHA_256.as_bytes().to_vec();
                            body.push(0);
                            body.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            body.extend_from_slice(s.message());
                            self.send(&message(b'p', &body)).await;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASL started");
                            s.update(&m.body[4..]).expect("server-first");
                            let msg = message(b'p', s.message());
                            self.send(&msg).await;
                        }
                        12 => {
                            let mut s = scram.take().expect("SASL started");
                            s.finish(&m.body[4..]).expect("server signature verifies");
                        }
                        3 => {
                            let mut body = password.as_bytes().to_vec();
                            body.push(0);
                            self.send(&message(b'p', &body)).await;
                        }
                        other => panic!("unsupported authentication request {other}"),
                    }
                }
                b'K' => {
                    let b = &m.body;
                    self.key = (
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    );
                }
                b'E' => return Err(m),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Write raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Write raw bytes; Err when the proxy already closed the socket.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Read one message; None when the connection closed (or reset).
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Some(Msg { tag, body });
                }
            }
            let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server answered within the safety timeout");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Read one raw byte (SSLRequest/GSSENCRequest answers).
    pub async fn recv_byte(&mut self) -> Option<u8> {
        if !self.buf.is_empty() {
            return Some(self.buf.split_to(1)[0]);
        }
        let mut one = [0u8; 1];
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut one)).await {
            Ok(Ok(1)) => Some(one[0]),
            _ => None,
        }
    }

    /// Messages until ReadyForQuery (included) or the end of the connection.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await {
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Send a simple query and collect its answer.
    pub async fn query(&mut self, sql: &[u8]) -> Vec<Msg> {
        self.send(&query_msg(sql)).await;
        self.until_ready().await
    }

    /// First column of the first DataRow of a simple query, as text.
    pub async fn scalar(&mut self, sql: &str) -> Option<String> {
        let msgs = self.query(sql.as_bytes()).await;
        let row = msgs.iter().find(|m| m.tag == b'D')?;
        let b = &row.body;
        let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
        if len < 0 {
            return None;
        }
        Some(String::from_utf8_lossy(&b[6..6 + len as usize]).into_owned())
    }

    /// Whether the proxy closed the connection (reads until EOF, bounded);
    /// returns the messages seen before the end.
    pub async fn closed(&mut self) -> (bool, Vec<Msg>) {
        let mut seen = Vec::new();
        for _ in 0..1000 {
            match self.recv().await {
                Some(m) => seen.push(m),
                None => return (true, seen),
            }
        }
        (false, seen)
    }
}

/// The first ErrorResponse among `msgs`.
pub fn first_error(msgs: &[Msg]) -> Option<&Msg> {
    msgs.iter().find(|m| m.tag == b'E')
}
