//! A WebSocket's byte stream over one HTTP/2 stream, and the client stream of either HTTP
//! version.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::MaybeTlsStream;

/// One HTTP/2 stream as a byte stream (RFC 8441 section 5: after the `200`, the DATA frames
/// of the CONNECT stream carry the WebSocket's bytes), with HTTP/2 flow control applied both
/// ways: a write waits for send window, and received bytes are given back to the peer's window
/// only once read, so a WebSocket that stops reading holds back its own stream, not the
/// connection.
#[derive(Debug)]
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not read yet (their window is released as they are read).
    buf: Bytes,
    /// END_STREAM was sent.
    shut: bool,
}

impl H2Stream {
    pub(super) fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Stream {
        H2Stream {
            send,
            recv,
            buf: Bytes::new(),
            shut: false,
        }
    }
}

/// h2's error as an I/O error: the transport's own error if it was one.
pub(super) fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // The peer ended its side: end of stream.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.buf = data,
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        // A peer that cancels after the close handshake ends the stream.
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(()),
                        _ => Err(io_error(e)),
                    });
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        // Only fails once the stream is gone, which the next read reports.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            if let Poll::Ready(reset) = this.send.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("stream reset by the peer: {reason}"),
                    ),
                    Err(e) => io_error(e),
                }));
            }
            // Asks for window for the whole buffer; sends what is granted now.
            this.send.reserve_capacity(buf.len());
            let granted = this.send.capacity();
            if granted > 0 {
                let n = granted.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes queued frames out as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            // END_STREAM: the TCP FIN of a WebSocket over HTTP/2 (RFC 8441 section 6). A
            // stream the peer already reset has nothing left to end.
            let _ = this.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// The stream of a client WebSocket opened by [`connect_auto`](crate::connect_auto): a
/// connection of its own over HTTP/1.1, or one stream of an HTTP/2 connection (RFC 8441).
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientStream {
    /// HTTP/1.1 upgrade: the whole TCP (or TLS) connection.
    Http1(MaybeTlsStream),
    /// HTTP/2 extended CONNECT: one stream of a shared connection.
    Http2(H2Stream),
}

impl ClientStream {
    /// Whether the WebSocket runs over HTTP/2.
    pub fn is_http2(&self) -> bool {
        match self {
            ClientStream::Http1(_) => false,
            ClientStream::Http2(_) => true,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Http1(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Http2(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Http1(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Http2(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Http1(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Http2(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Http1(s) => s.is_write_vectored(),
            ClientStream::Http2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Http1(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Http2(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Http1(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Http2(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
