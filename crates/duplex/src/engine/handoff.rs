//! Handing HTTP/2 connections off: the engine speaks HTTP/1.1 upgrades only, so a connection
//! that turns out to be HTTP/2 leaves the loop for a server that speaks it (hyper, through
//! [`crate::upgrade`]), on the same port.
//!
//! Which connections: with [`EngineOptions::http2_handoff`](super::EngineOptions::http2_handoff)
//! set, a plain connection whose first bytes are the HTTP/2 connection preface (h2c by prior
//! knowledge, RFC 9113 section 3.3), and a TLS connection whose handshake chose `h2` by ALPN
//! (the engine then advertises `h2` and `http/1.1`, `http/1.1` only otherwise). The loop
//! deregisters the socket and calls the hand-off with it, what it already read, and for TLS
//! the rustls session as the handshake left it; it never looks at the connection again.
//!
//! The receiving side, in crate `duplex`: [`crate::resume::Prefixed`] replays the bytes read,
//! and (feature `tls`) [`crate::resume::ResumedTls`] continues the TLS session over a tokio
//! socket, where tokio-rustls could only start a new one.

use std::fmt;
use std::net::TcpStream;
use std::sync::Arc;

/// The HTTP/2 connection preface (RFC 9113 section 3.4): what an h2c client by prior
/// knowledge sends first, and what a client that chose `h2` by ALPN sends first under TLS.
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 connection the engine handed off; see [`Handoff`].
#[derive(Debug)]
#[non_exhaustive]
pub struct HandedOff {
    /// The socket, still non-blocking; no longer registered with the engine's poll. For a
    /// tokio server: `tokio::net::TcpStream::from_std(stream)` inside the runtime.
    pub stream: TcpStream,
    /// What the engine already read from the connection (plaintext, for TLS): the preface
    /// and whatever came behind it. The server must see these bytes first
    /// ([`crate::resume::Prefixed`]).
    pub read: Vec<u8>,
    /// The TLS session (feature `tls`), its handshake complete, `h2` chosen by ALPN; records
    /// it still has to write (a TLS 1.3 session ticket, say) go out with the next write.
    /// `None` for plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<rustls::ServerConnection>,
}

/// What the engine calls with each HTTP/2 connection it hands off, on its loop's thread.
///
/// It must not block: the loop serves every other connection of its thread meanwhile. Send
/// the connection to where it is served (a channel, or `tokio::runtime::Handle::spawn`). The
/// connection no longer counts towards [`EngineOptions::max_connections`](super::EngineOptions::max_connections),
/// and [`EngineHandle::shutdown`](super::EngineHandle::shutdown) does not reach it: the
/// receiver owns it.
///
/// ```no_run
/// use duplex::engine::{EngineOptions, Handoff};
/// let runtime = tokio::runtime::Runtime::new()?;
/// let spawner = runtime.handle().clone();
/// let options = EngineOptions {
///     http2_handoff: Some(Handoff::new(move |connection| {
///         // Spawning does not block; the task serves the connection with hyper.
///         spawner.spawn(async move {
///             let Ok(tcp) = tokio::net::TcpStream::from_std(connection.stream) else { return };
///             let io = duplex::resume::Prefixed::new(connection.read, tcp);
///             # drop(io);
///             // duplex::upgrade::builder().serve_connection_with_upgrades(TokioIo::new(io), service)
///         });
///     })),
///     ..Default::default()
/// };
/// # drop(options);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Handoff(Arc<dyn Fn(HandedOff) + Send + Sync>);

impl Handoff {
    /// A hand-off that calls `receive` with each connection.
    pub fn new(receive: impl Fn(HandedOff) + Send + Sync + 'static) -> Handoff {
        Handoff(Arc::new(receive))
    }

    pub(super) fn call(&self, connection: HandedOff) {
        (self.0)(connection);
    }
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handoff(..)")
    }
}

/// How far `data`, the first bytes of a connection, matches the preface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Preface {
    /// It starts with the whole preface.
    Full,
    /// It is a proper prefix of the preface: wait for more.
    Partial,
    /// Not HTTP/2.
    No,
}

/// Compares the first bytes of a connection with the preface.
pub(super) fn preface(data: &[u8]) -> Preface {
    if data.starts_with(HTTP2_PREFACE) {
        Preface::Full
    } else if HTTP2_PREFACE.starts_with(data) {
        Preface::Partial
    } else {
        Preface::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_recognised_whole_in_part_and_not_in_http11() {
        assert_eq!(preface(HTTP2_PREFACE), Preface::Full);
        assert_eq!(
            preface(&[HTTP2_PREFACE, b"\0\0\x12\x04"].concat()),
            Preface::Full
        );
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n"), Preface::Partial);
        assert_eq!(preface(b"P"), Preface::Partial);
        assert_eq!(preface(b"POST / HTTP/1.1\r\n"), Preface::No);
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Preface::No);
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Preface::No);
    }
}
