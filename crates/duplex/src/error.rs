//! The runtime's error type: who is to blame (the peer, the caller, the network) and what timed
//! out.

use std::fmt;
use std::io;

use duplex_proto::config::ConfigError;
use duplex_proto::handshake::HandshakeError;
use duplex_proto::{CloseCode, ProtocolError, UsageError};

/// Which timer expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// The TCP connect (client, `ClientOptions::connect_timeout`).
    Connect,
    /// The TLS and HTTP opening handshake (`handshake_timeout` of either side).
    Handshake,
    /// Nothing was received for `WebSocketOptions::idle_timeout`.
    Idle,
    /// The close handshake did not finish within `WebSocketOptions::close_timeout`.
    Close,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Timeout::Connect => "connect",
            Timeout::Handshake => "opening handshake",
            Timeout::Idle => "idle",
            Timeout::Close => "close handshake",
        })
    }
}

/// Everything that can go wrong with a WebSocket connection.
///
/// ```
/// use duplex::{Error, Timeout};
/// let e = Error::Timeout(Timeout::Idle);
/// assert_eq!(e.to_string(), "idle timeout");
/// assert_eq!(e.close_code(), None);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed (includes an EOF without a close frame: `UnexpectedEof`, the
    /// "1006 abnormal closure" of RFC 6455 section 7.1.5).
    Io(io::Error),
    /// The peer broke the protocol. The Close frame with [`ProtocolError::close_code`] was sent
    /// (best effort) and the transport shut down.
    Protocol(ProtocolError),
    /// The opening handshake failed. On the server side the matching HTTP error response was
    /// written before the socket was closed.
    Handshake(HandshakeError),
    /// The server's `accept_with` callback refused the request (server side), or the server
    /// answered the upgrade with a non-101 status (client side).
    Rejected {
        /// The HTTP status of the refusal.
        status: http::StatusCode,
        /// The reason: the callback's, or the body of the server's response (client side,
        /// possibly empty).
        reason: String,
    },
    /// The caller asked for something the protocol does not allow; nothing was sent.
    Usage(UsageError),
    /// An invalid [`duplex_proto::Config`].
    Config(ConfigError),
    /// Receiving whole messages (`recv`, `Stream`) on a connection configured with
    /// [`duplex_proto::Config::streaming_receive`]: use `recv_event` instead.
    StreamingReceive,
    /// TLS configuration or handshake failure.
    #[cfg(feature = "tls")]
    Tls(crate::tls::TlsError),
    /// The proxy could not be used: see [`ProxyError`](crate::proxy::ProxyError) for who is
    /// to blame (client side).
    Proxy(crate::proxy::ProxyError),
    /// A timer expired.
    Timeout(Timeout),
    /// The connection is closing or closed (our Close was sent, the close handshake finished,
    /// or it failed earlier): nothing more can be sent.
    ConnectionClosed,
}

impl Error {
    /// The close code sent to the peer because of this error, if any: the protocol error's
    /// code (RFC 6455 section 7.4.1).
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(e) => Some(e.close_code()),
            _ => None,
        }
    }

    /// The HTTP status of a refused handshake: the server's answer ([`Error::Rejected`]) or
    /// the status a server-side [`Error::Handshake`] was answered with.
    pub fn http_status(&self) -> Option<http::StatusCode> {
        match self {
            Error::Rejected { status, .. } => Some(*status),
            Error::Handshake(e) => Some(e.status()),
            _ => None,
        }
    }

    /// An `UnexpectedEof` I/O error: the transport closed without a close frame.
    pub(crate) fn eof(what: &'static str) -> Error {
        Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, what))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Protocol(e) => write!(f, "protocol error ({}): {e}", e.close_code()),
            Error::Handshake(e) => write!(f, "handshake failed: {e}"),
            Error::Rejected { status, reason } if reason.is_empty() => {
                write!(f, "handshake rejected with {status}")
            }
            Error::Rejected { status, reason } => {
                write!(f, "handshake rejected with {status}: {reason}")
            }
            Error::Usage(e) => write!(f, "usage error: {e}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::StreamingReceive => f.write_str(
                "whole-message receive on a streaming_receive connection (use recv_event)",
            ),
            #[cfg(feature = "tls")]
            Error::Tls(e) => write!(f, "TLS error: {e}"),
            Error::Proxy(e) => write!(f, "proxy: {e}"),
            Error::Timeout(which) => write!(f, "{which} timeout"),
            Error::ConnectionClosed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Protocol(e) => Some(e),
            Error::Handshake(e) => Some(e),
            Error::Usage(e) => Some(e),
            Error::Config(e) => Some(e),
            #[cfg(feature = "tls")]
            Error::Tls(e) => Some(e),
            Error::Proxy(e) => Some(e),
            Error::Rejected { .. }
            | Error::StreamingReceive
            | Error::Timeout(_)
            | Error::ConnectionClosed => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<crate::proxy::ProxyError> for Error {
    fn from(e: crate::proxy::ProxyError) -> Self {
        Error::Proxy(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Self {
        Error::Usage(e)
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::Handshake(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<duplex_proto::Error> for Error {
    fn from(e: duplex_proto::Error) -> Self {
        match e {
            duplex_proto::Error::Protocol(e) => Error::Protocol(e),
            // One error for "closed" whichever layer noticed first.
            duplex_proto::Error::Usage(UsageError::Closed) => Error::ConnectionClosed,
            duplex_proto::Error::Usage(e) => Error::Usage(e),
        }
    }
}
