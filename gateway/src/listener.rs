//! The HTTP listener: TCP connections whose writes are watched for the answers hyper's HTTP/1
//! parser sends by itself, so that those are problem+json like every other error.
//!
//! When a request cannot be parsed (a request line or header hyper cannot read, more than 100
//! headers or a head over ~400 KiB, a URI over 64 KiB) hyper answers 400, 431 or 414 with an
//! empty body and closes the connection, without ever calling the application. Hyper has no
//! hook for that answer, so [`ProblemIo`] recognises it on its way out (a head with one of those
//! statuses, `content-length: 0`, no `content-type` and nothing after it: every answer of the
//! application carries a content type, see `observe` in `lib.rs`) and sends a problem document
//! in its place (`request_invalid`, `headers_too_large`, `uri_too_long`). It also counts it
//! (`paycore_gateway_http_requests_total{route="unparsed"}`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Accepts TCP connections as [`ProblemIo`]s.
#[derive(Debug)]
pub struct ProblemListener {
    pub tcp: TcpListener,
    pub metrics: Arc<Metrics>,
}

/// The client's address, as a handler sees it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, ProblemListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, ProblemListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::serve::Listener for ProblemListener {
    type Io = ProblemIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ProblemIo, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = ProblemIo {
                        inner: stream,
                        metrics: self.metrics.clone(),
                        rewrite: Rewrite::Watching,
                    };
                    return (io, addr);
                }
                // Out of file descriptors and the like: wait a little, as axum's own does.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[derive(Debug)]
enum Rewrite {
    /// Passing writes through, looking at each for hyper's own error answer.
    Watching,
    /// Sending `bytes` instead of hyper's answer of `replaced` bytes.
    Replacing {
        bytes: Vec<u8>,
        written: usize,
        replaced: usize,
    },
    /// The problem is sent; hyper only closes now (anything more is dropped).
    Replaced,
}

/// A TCP stream whose parser-level error answers become problem documents.
#[derive(Debug)]
pub struct ProblemIo {
    inner: TcpStream,
    metrics: Arc<Metrics>,
    rewrite: Rewrite,
}

/// The status of hyper's automatic answer if `buf` is one (see the module's documentation).
fn automatic_answer(buf: &[u8]) -> Option<StatusCode> {
    let status = match buf.get(..13)? {
        b"HTTP/1.1 400 " => StatusCode::BAD_REQUEST,
        b"HTTP/1.1 414 " => StatusCode::URI_TOO_LONG,
        b"HTTP/1.1 431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let bare = head.contains("\r\ncontent-length: 0") && !head.contains("\r\ncontent-type:");
    bare.then_some(status)
}

/// The problem document answer for a parser-level refusal.
fn problem_answer(status: StatusCode) -> Vec<u8> {
    let (code, detail) = match status {
        StatusCode::URI_TOO_LONG => ("uri_too_long", "the request URI is too long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            "the request has too many headers or they are too large",
        ),
        _ => (
            "request_invalid",
            "the request is not valid HTTP/1.1 (request line or a header)",
        ),
    };
    let body = ApiError::new(status, code, detail).body().to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

impl AsyncRead for ProblemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProblemIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            match &mut this.rewrite {
                Rewrite::Watching => {
                    let Some(status) = automatic_answer(buf) else {
                        return Pin::new(&mut this.inner).poll_write(cx, buf);
                    };
                    this.metrics.request("-", "unparsed", status.as_u16(), 0.0);
                    this.rewrite = Rewrite::Replacing {
                        bytes: problem_answer(status),
                        written: 0,
                        replaced: buf.len(),
                    };
                }
                Rewrite::Replacing {
                    bytes,
                    written,
                    replaced,
                } => {
                    while *written < bytes.len() {
                        match Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]) {
                            Poll::Ready(Ok(0)) => {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                            }
                            Poll::Ready(Ok(n)) => *written += n,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    let replaced = *replaced;
                    this.rewrite = Rewrite::Replaced;
                    return Poll::Ready(Ok(replaced));
                }
                Rewrite::Replaced => return Poll::Ready(Ok(buf.len())),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// Not vectored: hyper then writes each answer's head in one buffer, which
    /// [`automatic_answer`] can look at whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_answers_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                     date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(
            automatic_answer(bare),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
                     content-length: 0\r\n\r\n";
        assert_eq!(automatic_answer(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        assert_eq!(automatic_answer(with_body), None);
        assert_eq!(
            automatic_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        let answer = String::from_utf8(problem_answer(StatusCode::URI_TOO_LONG)).expect("utf-8");
        assert!(
            answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\"code\":\"uri_too_long\""), "{answer}");
    }
}
