//! Continuing a connection that another server started: what a receiver of the engine's
//! HTTP/2 hand-off (`engine::Handoff`) needs to serve it with tokio.
//!
//! - [`Prefixed`]: a stream that yields bytes already read from it first (the engine read the
//!   HTTP/2 preface, and maybe more, before it knew the connection was not its own).
//! - [`ResumedTls`] (feature `tls`): a TLS stream over a tokio socket and a rustls
//!   `ServerConnection` whose handshake already ran elsewhere. tokio-rustls only starts
//!   sessions (its acceptor builds the `ServerConnection` itself); this continues one.
//!
//! ```text
//!   engine: TcpStream + ServerConnection + bytes read
//!      └─hand-off─▶ Prefixed::new(read, ResumedTls::new(TcpStream::from_std(..), session))
//!                     └─▶ hyper (duplex::upgrade::builder), which reads the preface first
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(feature = "tls")]
pub use tls::ResumedTls;

/// A stream that first yields `prefix`, bytes already read from it, then reads from it;
/// writes go straight through.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// use tokio::io::AsyncReadExt;
/// let mut io = duplex::resume::Prefixed::new(b"PRI * ".to_vec(), &b"HTTP/2.0"[..]);
/// let mut all = String::new();
/// io.read_to_string(&mut all).await?;
/// assert_eq!(all, "PRI * HTTP/2.0");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: impl Into<Bytes>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }

    /// The stream, and what of the prefix was not read yet.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::io::{self, Read, Write};
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};

    use rustls::ServerConnection;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// A server TLS stream continuing a session whose handshake ran elsewhere (the engine's
    /// loop): ciphertext through `io`, plaintext through the session, as tokio-rustls does
    /// for the sessions it starts itself.
    ///
    /// - Reading: the session's plaintext first, then ciphertext from `io` into the session.
    ///   The peer's `close_notify` is an end of stream (`Ok` with nothing read); an end of
    ///   TCP without it is an error (`UnexpectedEof`): the data may have been cut short.
    /// - Writing: plaintext into the session (whose own limit, 64 KiB of records by default,
    ///   bounds what waits), its records out to `io`; `Pending` only when the session is full
    ///   and the socket too. Records the session holds from before (a session ticket after
    ///   the handshake, say) go out first, and a read writes them as well, so a peer that
    ///   waits for them (TLS 1.2's last server flight) gets them.
    /// - Shutting down sends `close_notify`, then shuts `io`'s write side.
    ///
    /// ```no_run
    /// // What the engine hands off (`duplex::engine::HandedOff`, feature `engine`): the socket,
    /// // the plaintext it read, and the TLS session as the handshake left it.
    /// # async fn run(stream: std::net::TcpStream, read: Vec<u8>, session: rustls::ServerConnection) -> std::io::Result<()> {
    /// let tcp = tokio::net::TcpStream::from_std(stream)?;
    /// let io = duplex::resume::Prefixed::new(read, duplex::resume::ResumedTls::new(tcp, session));
    /// # drop(io); Ok(()) }
    /// ```
    #[derive(Debug)]
    pub struct ResumedTls<S> {
        io: S,
        session: ServerConnection,
        /// `io` reported an end of stream (and the session was told).
        eof: bool,
        /// `close_notify` was queued.
        shut: bool,
    }

    impl<S> ResumedTls<S> {
        /// Continues `session` over `io`.
        pub fn new(io: S, session: ServerConnection) -> ResumedTls<S> {
            ResumedTls {
                io,
                session,
                eof: false,
                shut: false,
            }
        }

        /// The session (ALPN protocol, SNI name, peer certificates...).
        pub fn session(&self) -> &ServerConnection {
            &self.session
        }

        /// The stream underneath.
        pub fn get_ref(&self) -> &S {
            &self.io
        }
    }

    /// `io` as std's blocking traits for rustls: `Pending` becomes `WouldBlock`.
    struct SyncIo<'a, 'b, S> {
        io: &'a mut S,
        cx: &'a mut Context<'b>,
    }

    impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut buf = ReadBuf::new(buf);
            match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
                Poll::Ready(Ok(())) => Ok(buf.filled().len()),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
                Poll::Ready(result) => result,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        }

        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
                Poll::Ready(result) => result,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            match Pin::new(&mut *self.io).poll_flush(self.cx) {
                Poll::Ready(result) => result,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> ResumedTls<S> {
        /// Writes the session's records until it has none (`Ready`) or the socket is full
        /// (`Pending`, with the socket's waker registered).
        fn poll_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            while self.session.wants_write() {
                let mut io = SyncIo {
                    io: &mut self.io,
                    cx,
                };
                match self.session.write_tls(&mut io) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        }

        /// Reads ciphertext into the session and decrypts it. `Ready(Ok(false))`: the socket
        /// ended.
        fn poll_cipher(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.session.read_tls(&mut io) {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(Ok(false));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = self.session.process_new_packets() {
                // The alert rustls queued for it, if the socket takes it now.
                let _ = self.poll_records(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            Poll::Ready(Ok(true))
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ResumedTls<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            loop {
                match this.session.reader().read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        // 0: close_notify, the end of the stream.
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // UnexpectedEof: TCP ended without close_notify.
                    Err(e) => return Poll::Ready(Err(e)),
                }
                if this.session.wants_write() {
                    // Pending is fine here: the socket wakes the task once writable.
                    if let Poll::Ready(Err(e)) = this.poll_records(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                if this.eof {
                    // Told the session already; its reader answered above. Cannot happen.
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                ready!(this.poll_cipher(cx))?;
            }
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ResumedTls<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut taken = 0;
            loop {
                // The session's records first: what waits there is bounded by its limit.
                match this.poll_records(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending if taken > 0 => return Poll::Ready(Ok(taken)),
                    Poll::Pending => return Poll::Pending,
                }
                if taken == buf.len() {
                    return Poll::Ready(Ok(taken));
                }
                let n = this.session.writer().write(&buf[taken..])?;
                if n == 0 {
                    // Nothing taken although every record is out: a session that cannot send
                    // data (closed).
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                taken += n;
            }
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            ready!(this.poll_records(cx))?;
            Pin::new(&mut this.io).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if !this.shut {
                this.shut = true;
                this.session.send_close_notify();
            }
            ready!(this.poll_records(cx))?;
            Pin::new(&mut this.io).poll_shutdown(cx)
        }
    }
}

#[cfg(test)]
mod tests;
