//! [`ProxyError`]: what went wrong on the way through a proxy, and who is to blame for it.

use std::fmt;
use std::io;

use http::StatusCode;

/// Why a connection through a proxy failed. Each variant says who is to blame: the caller
/// (a bad proxy URL or target), the proxy (it refused, or spoke something else than its
/// protocol), or the network on the way to it.
///
/// ```
/// use duplex::proxy::{ProxyError, SocksReply};
/// let e = ProxyError::Socks(SocksReply::CONNECTION_REFUSED);
/// assert_eq!(e.to_string(), "SOCKS5 proxy: connection refused (reply 5)");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// Caller: the proxy URL (from `ClientOptions` or an environment variable) is not one
    /// this client can use. `url` has its password blanked out.
    InvalidUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Caller: the target cannot be sent through this proxy (a SOCKS5 host name or
    /// credential longer than 255 bytes).
    InvalidTarget(&'static str),
    /// Network: the proxy could not be reached (not listening, unroutable...).
    Unreachable {
        /// `host:port` of the proxy.
        proxy: String,
        /// The error of the TCP connect.
        error: io::Error,
    },
    /// Network or proxy: the proxy did not connect and finish the tunnel within
    /// `ClientOptions::connect_timeout`.
    Timeout {
        /// `host:port` of the proxy.
        proxy: String,
    },
    /// Network: the connection to the proxy failed while the tunnel was being set up (an
    /// `UnexpectedEof` when the proxy closed it).
    Io(io::Error),
    /// Proxy: the HTTP proxy answered the CONNECT with a status other than 2xx, 407 and 401 (403
    /// for a target it does not allow, 502 or 500 when it could not reach the target...).
    Refused {
        /// The proxy's status.
        status: StatusCode,
        /// The reason phrase of its status line.
        reason: String,
    },
    /// Proxy (or caller's credentials): `407 Proxy Authentication Required`, the credentials
    /// of the proxy URL were missing or wrong. Some proxies (tinyproxy) answer wrong
    /// credentials with `401`: to a CONNECT only the proxy can answer, so it lands here too.
    AuthRequired {
        /// 407, or 401.
        status: StatusCode,
        /// The proxy's `Proxy-Authenticate` challenge, if any (`Basic realm="..."`).
        challenge: Option<String>,
    },
    /// Proxy (or caller's credentials): the SOCKS5 proxy accepts none of the offered
    /// authentication methods (no username/password given, or it wants another method).
    SocksNoAcceptableMethod,
    /// Proxy (or caller's credentials): the SOCKS5 proxy rejected the username and password
    /// (RFC 1929 status, non-zero).
    SocksAuthFailed {
        /// The status byte of the proxy's answer.
        status: u8,
    },
    /// Proxy: the SOCKS5 proxy refused the CONNECT (RFC 1928 section 6 reply code).
    Socks(SocksReply),
    /// Proxy: the answer is not the protocol (bad HTTP, wrong SOCKS version, bytes after the
    /// tunnel was established before anything was sent through it...).
    Malformed(&'static str),
    /// Proxy: the HTTP proxy's response head is larger than this client reads.
    ResponseTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Caller or network: the target host of a `socks5://` proxy (resolved by this client)
    /// could not be resolved.
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        error: io::Error,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::InvalidUrl { url, reason } => write!(f, "proxy URL {url:?}: {reason}"),
            ProxyError::InvalidTarget(why) => write!(f, "proxy target: {why}"),
            ProxyError::Unreachable { proxy, error } => {
                write!(f, "cannot reach the proxy {proxy}: {error}")
            }
            ProxyError::Timeout { proxy } => write!(f, "the proxy {proxy} timed out"),
            ProxyError::Io(e) => write!(f, "proxy connection: {e}"),
            ProxyError::Refused { status, reason } if reason.is_empty() => {
                write!(f, "the proxy refused the CONNECT with {status}")
            }
            ProxyError::Refused { status, reason } => {
                write!(
                    f,
                    "the proxy refused the CONNECT with {}: {reason}",
                    status.as_u16()
                )
            }
            ProxyError::AuthRequired {
                status,
                challenge: None,
            } => write!(f, "the proxy requires authentication ({})", status.as_u16()),
            ProxyError::AuthRequired {
                status,
                challenge: Some(challenge),
            } => write!(
                f,
                "the proxy requires authentication ({}, {challenge})",
                status.as_u16()
            ),
            ProxyError::SocksNoAcceptableMethod => {
                f.write_str("SOCKS5 proxy: no acceptable authentication method")
            }
            ProxyError::SocksAuthFailed { status } => {
                write!(
                    f,
                    "SOCKS5 proxy: username/password rejected (status {status})"
                )
            }
            ProxyError::Socks(reply) => write!(f, "SOCKS5 proxy: {reply}"),
            ProxyError::Malformed(what) => write!(f, "the proxy's answer is malformed: {what}"),
            ProxyError::ResponseTooLarge { limit } => {
                write!(f, "the proxy's response head exceeds {limit} bytes")
            }
            ProxyError::Resolve { host, error } => write!(f, "cannot resolve {host}: {error}"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Unreachable { error, .. } | ProxyError::Resolve { error, .. } => {
                Some(error)
            }
            ProxyError::Io(e) => Some(e),
            ProxyError::InvalidUrl { .. }
            | ProxyError::InvalidTarget(_)
            | ProxyError::Timeout { .. }
            | ProxyError::Refused { .. }
            | ProxyError::AuthRequired { .. }
            | ProxyError::SocksNoAcceptableMethod
            | ProxyError::SocksAuthFailed { .. }
            | ProxyError::Socks(_)
            | ProxyError::Malformed(_)
            | ProxyError::ResponseTooLarge { .. } => None,
        }
    }
}

impl From<io::Error> for ProxyError {
    fn from(e: io::Error) -> Self {
        ProxyError::Io(e)
    }
}

/// A SOCKS5 reply code (RFC 1928 section 6), an open newtype: codes outside the RFC's list
/// survive as they came.
///
/// ```
/// use duplex::proxy::SocksReply;
/// assert_eq!(SocksReply(4), SocksReply::HOST_UNREACHABLE);
/// assert_eq!(SocksReply(0x42).to_string(), "unassigned reply code (reply 66)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocksReply(pub u8);

impl SocksReply {
    /// 0: succeeded.
    pub const SUCCEEDED: SocksReply = SocksReply(0);
    /// 1: general SOCKS server failure.
    pub const GENERAL_FAILURE: SocksReply = SocksReply(1);
    /// 2: connection not allowed by ruleset.
    pub const NOT_ALLOWED: SocksReply = SocksReply(2);
    /// 3: network unreachable.
    pub const NETWORK_UNREACHABLE: SocksReply = SocksReply(3);
    /// 4: host unreachable.
    pub const HOST_UNREACHABLE: SocksReply = SocksReply(4);
    /// 5: connection refused (by the target).
    pub const CONNECTION_REFUSED: SocksReply = SocksReply(5);
    /// 6: TTL expired.
    pub const TTL_EXPIRED: SocksReply = SocksReply(6);
    /// 7: command not supported.
    pub const COMMAND_NOT_SUPPORTED: SocksReply = SocksReply(7);
    /// 8: address type not supported.
    pub const ADDRESS_TYPE_NOT_SUPPORTED: SocksReply = SocksReply(8);

    /// The RFC's description of the code.
    pub fn description(self) -> &'static str {
        match self.0 {
            0 => "succeeded",
            1 => "general SOCKS server failure",
            2 => "connection not allowed by ruleset",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            9..=u8::MAX => "unassigned reply code",
        }
    }
}

impl fmt::Display for SocksReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (reply {})", self.description(), self.0)
    }
}
