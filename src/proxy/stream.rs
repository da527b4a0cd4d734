//! A byte stream that is either plain TCP or TLS.
//!
//! Owns: the enum that lets the session treat both the same way. Must
//! never: interpret the bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// Client-side stream (the proxy is the TLS server).
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;
/// Upstream-side stream (the proxy is the TLS client).
pub type UpstreamStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// Plain TCP, or TLS over TCP.
pub enum MaybeTls<T> {
    /// No encryption.
    Plain(TcpStream),
    /// TLS (boxed: the TLS state is large).
    Tls(Box<T>),
}

impl<T> MaybeTls<T> {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading side of a borrowed [`MaybeTls`]: plain TCP halves share the
/// socket without a lock; TLS halves share the TLS state through tokio's
/// split.
pub type ReadPart<'a, T> = Either<tokio::net::tcp::ReadHalf<'a>, tokio::io::ReadHalf<&'a mut T>>;

/// The writing side of a borrowed [`MaybeTls`].
pub type WritePart<'a, T> = Either<tokio::net::tcp::WriteHalf<'a>, tokio::io::WriteHalf<&'a mut T>>;

/// Client-side halves.
pub type ClientReader<'a> = ReadPart<'a, tokio_rustls::server::TlsStream<TcpStream>>;
/// Client-side halves.
pub type ClientWriter<'a> = WritePart<'a, tokio_rustls::server::TlsStream<TcpStream>>;
/// Upstream-side halves.
pub type UpstreamReader<'a> = ReadPart<'a, tokio_rustls::client::TlsStream<TcpStream>>;
/// Upstream-side halves.
pub type UpstreamWriter<'a> = WritePart<'a, tokio_rustls::client::TlsStream<TcpStream>>;

impl<T: AsyncRead + AsyncWrite + Unpin> MaybeTls<T> {
    /// Borrow the stream as a reading and a writing half, usable at once
    /// from two places of one task.
    pub fn split_mut(&mut self) -> (ReadPart<'_, T>, WritePart<'_, T>) {
        match self {
            MaybeTls::Plain(s) => {
                let (r, w) = s.split();
                (Either::Left(r), Either::Left(w))
            }
            MaybeTls::Tls(s) => {
                let (r, w) = tokio::io::split(s.as_mut());
                (Either::Right(r), Either::Right(w))
            }
        }
    }
}
