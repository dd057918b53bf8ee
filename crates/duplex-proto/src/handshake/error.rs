//! Handshake failures, each with the HTTP status a server answers it with.

use std::fmt;

use http::{HeaderMap, Method, StatusCode, Version};

/// Every way an opening handshake fails (RFC 6455 section 4).
///
/// The variants fall in three groups, by who is to blame:
/// - the client's request (server side): 400, 405, 426 or 431;
/// - the application's decision (server side): [`OriginNotAllowed`](Self::OriginNotAllowed)
///   (403), [`Refused`](Self::Refused) (any status) and
///   [`ProtocolNotOffered`](Self::ProtocolNotOffered) (500);
/// - the server's response or the caller's URL (client side): [`status`](Self::status) is
///   `502 Bad Gateway` for a bad response (what a proxy in front of this client would answer)
///   and `400 Bad Request` for a bad URL. A client never sends these; the status is there so a
///   gateway can pass the failure on.
///
/// A server answers any of them with [`response`](Self::response):
///
/// ```
/// use duplex_proto::handshake::HandshakeError;
/// let refusal = HandshakeError::OriginNotAllowed(Some("https://evil.example".into()));
/// assert_eq!(refusal.status(), http::StatusCode::FORBIDDEN);
/// assert!(refusal.response().starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    // ---- the client's request (server side)
    /// The head is not a valid HTTP/1.x request (bad request line, header syntax, request
    /// target). 400.
    MalformedRequest(&'static str),
    /// The request head is larger than the `max_size` given to
    /// [`parse_request`](super::parse_request). 431.
    RequestTooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// The request has more than [`MAX_HEADERS`](super::MAX_HEADERS) header lines. 431.
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// The method is not `GET` (section 4.1). 405, with `Allow: GET`.
    MethodNotAllowed(Method),
    /// HTTP/1.0: the handshake needs HTTP/1.1 or later (section 4.1). 400.
    UnsupportedHttpVersion(Version),
    /// A required header is absent: `Host`, `Upgrade`, `Connection`, `Sec-WebSocket-Key`,
    /// `Sec-WebSocket-Version`. 400.
    MissingHeader(&'static str),
    /// A header is present but wrong: `Upgrade` without `websocket`, `Connection` without
    /// `Upgrade`, a key that is not base64 of 16 bytes, a repeated `Host` or key, a
    /// subprotocol that is not a token, a value that is not UTF-8 where text is needed. 400.
    InvalidHeader(&'static str),
    /// `Sec-WebSocket-Version` is not 13 (section 4.2.2). 426, with `Sec-WebSocket-Version: 13`.
    /// Carries the version(s) the client asked for.
    UnsupportedVersion(String),

    // ---- the application's decision (server side)
    /// The application does not accept this `Origin` (section 4.2.2, 10.2). 403.
    OriginNotAllowed(Option<String>),
    /// The application refused the handshake (authentication, rate limit, unknown path...).
    /// Answered with `status`, and `reason` as the body.
    Refused {
        /// The status to answer with.
        status: StatusCode,
        /// A short sentence for the body.
        reason: String,
    },
    /// The application accepted with a subprotocol the client did not offer (section 4.2.2:
    /// the server selects one of the client's values). The server's mistake, not the
    /// client's: 500, and the connection is not opened, since the client would fail it anyway
    /// (section 4.1).
    ProtocolNotOffered(String),

    // ---- the caller's URL or the server's response (client side)
    /// The URL is not a usable `ws://` / `wss://` URL. 400.
    InvalidUrl(UrlError),
    /// The head is not a valid HTTP/1.x response. 502.
    MalformedResponse(&'static str),
    /// The response head is larger than the `max_size` given to
    /// [`parse_response`](super::parse_response). 502.
    ResponseTooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// The server answered something other than `101 Switching Protocols` (or, to an HTTP/2
    /// extended CONNECT, a `2xx`): a redirect, 401, 404... The body is not read; the caller still has the response head. 502.
    UnexpectedStatus(StatusCode),
    /// `Upgrade` without `websocket`, `Connection` without `Upgrade`, or a
    /// `Sec-WebSocket-Protocol` that is not UTF-8, in the response (section 4.2.2). 502.
    InvalidResponseHeader(&'static str),
    /// `Sec-WebSocket-Accept` is missing or does not match the key (section 4.1). 502.
    AcceptMismatch,
    /// The server selected more than one subprotocol (section 4.2.2: at most one). 502.
    MultipleProtocols,
    /// The server selected a subprotocol the client did not offer (section 4.1). 502.
    UnofferedProtocol(String),
    /// The server accepted an extension the client did not offer (section 4.1). 502.
    UnofferedExtension(String),
}

impl HandshakeError {
    /// The HTTP status a server answers with, or for client-side errors the status a gateway
    /// would pass on (400 for a bad URL, 502 for a bad response).
    pub fn status(&self) -> StatusCode {
        // Exhaustive on purpose: a new variant must choose its status here.
        match self {
            HandshakeError::MalformedRequest(_)
            | HandshakeError::UnsupportedHttpVersion(_)
            | HandshakeError::MissingHeader(_)
            | HandshakeError::InvalidHeader(_) => StatusCode::BAD_REQUEST,
            HandshakeError::RequestTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HandshakeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HandshakeError::UnsupportedVersion(_) => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            HandshakeError::Refused { status, .. } => *status,
            HandshakeError::ProtocolNotOffered(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HandshakeError::InvalidUrl(_) => StatusCode::BAD_REQUEST,
            HandshakeError::MalformedResponse(_)
            | HandshakeError::ResponseTooLarge { .. }
            | HandshakeError::UnexpectedStatus(_)
            | HandshakeError::InvalidResponseHeader(_)
            | HandshakeError::AcceptMismatch
            | HandshakeError::MultipleProtocols
            | HandshakeError::UnofferedProtocol(_)
            | HandshakeError::UnofferedExtension(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short human sentence: the body of [`response`](Self::response). For
    /// [`Refused`](Self::Refused) the application's reason as given; otherwise the
    /// [`Display`](fmt::Display) text.
    pub fn reason(&self) -> String {
        match self {
            HandshakeError::Refused { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    /// The complete refusal to write back: [`reject_response`](super::reject_response) with
    /// [`status`](Self::status) and [`reason`](Self::reason) (so 426 carries
    /// `Sec-WebSocket-Version: 13` and 405 carries `Allow: GET`).
    pub fn response(&self) -> Vec<u8> {
        super::reject_response(self.status(), &self.reason(), &HeaderMap::new())
    }
}

/// At most `max` characters of peer-supplied text, for messages that echo it.
struct Short<'a>(&'a str);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 32;
        match self.0.char_indices().nth(MAX) {
            Some((end, _)) => write!(f, "{:?}...", &self.0[..end]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::MalformedRequest(what) => write!(f, "malformed HTTP request: {what}"),
            HandshakeError::RequestTooLarge { max } => {
                write!(f, "request head exceeds {max} bytes")
            }
            HandshakeError::TooManyHeaders { max } => {
                write!(f, "request has more than {max} headers")
            }
            HandshakeError::MethodNotAllowed(method) => write!(
                f,
                "method {} not allowed, a WebSocket handshake uses GET",
                Short(method.as_str())
            ),
            HandshakeError::UnsupportedHttpVersion(version) => write!(
                f,
                "{version:?} not supported, a WebSocket handshake needs HTTP/1.1 or later"
            ),
            HandshakeError::MissingHeader(name) => write!(f, "missing {name} header"),
            HandshakeError::InvalidHeader(name) => write!(f, "invalid {name} header"),
            HandshakeError::UnsupportedVersion(version) => write!(
                f,
                "unsupported WebSocket version {}, this server speaks 13",
                Short(version)
            ),
            HandshakeError::OriginNotAllowed(_) => f.write_str("origin not allowed"),
            HandshakeError::Refused { status, reason } => {
                write!(f, "refused by the application ({status}): {reason}")
            }
            HandshakeError::ProtocolNotOffered(protocol) => write!(
                f,
                "the server chose subprotocol {}, which was not offered",
                Short(protocol)
            ),
            HandshakeError::InvalidUrl(e) => write!(f, "invalid WebSocket URL: {e}"),
            HandshakeError::MalformedResponse(what) => {
                write!(f, "malformed HTTP response: {what}")
            }
            HandshakeError::ResponseTooLarge { max } => {
                write!(f, "response head exceeds {max} bytes")
            }
            HandshakeError::UnexpectedStatus(status) => {
                write!(
                    f,
                    "server answered {status} instead of accepting the upgrade (101, or 2xx over HTTP/2)"
                )
            }
            HandshakeError::InvalidResponseHeader(name) => {
                write!(f, "missing or invalid {name} header in the response")
            }
            HandshakeError::AcceptMismatch => {
                f.write_str("Sec-WebSocket-Accept is missing or does not match the key")
            }
            HandshakeError::MultipleProtocols => {
                f.write_str("server selected more than one subprotocol")
            }
            HandshakeError::UnofferedProtocol(p) => {
                write!(
                    f,
                    "server selected subprotocol {} that was not offered",
                    Short(p)
                )
            }
            HandshakeError::UnofferedExtension(e) => {
                write!(
                    f,
                    "server accepted extension {} that was not offered",
                    Short(e)
                )
            }
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandshakeError::InvalidUrl(e) => Some(e),
            _ => None,
        }
    }
}

impl From<UrlError> for HandshakeError {
    fn from(e: UrlError) -> Self {
        HandshakeError::InvalidUrl(e)
    }
}

/// Why a string is not a WebSocket URL (RFC 6455 section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// No `scheme://`.
    MissingScheme,
    /// A scheme other than `ws`, `wss`, `http`, `https`.
    UnsupportedScheme(String),
    /// No host between `//` and the port or path.
    MissingHost,
    /// A host with characters a host name cannot have, or a bad IPv6 literal.
    InvalidHost,
    /// A port that is not a number in 1..=65535.
    InvalidPort,
    /// A `#fragment`: meaningless in a WebSocket URL and forbidden (section 3; escape `#` as
    /// `%23`).
    Fragment,
    /// `user:password@`: not part of the ws-URI grammar (section 3); send credentials in a
    /// header.
    Userinfo,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::MissingScheme => f.write_str("missing scheme (ws:// or wss://)"),
            UrlError::UnsupportedScheme(s) => {
                write!(f, "unsupported scheme {}, expected ws or wss", Short(s))
            }
            UrlError::MissingHost => f.write_str("missing host"),
            UrlError::InvalidHost => f.write_str("invalid host"),
            UrlError::InvalidPort => f.write_str("invalid port"),
            UrlError::Fragment => f.write_str("fragments (#...) are not allowed"),
            UrlError::Userinfo => f.write_str("user information (user@host) is not allowed"),
        }
    }
}

impl std::error::Error for UrlError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_uses_the_application_status_and_reason() {
        let e = HandshakeError::Refused {
            status: StatusCode::UNAUTHORIZED,
            reason: "token expired".into(),
        };
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.reason(), "token expired");
        let response = e.response();
        let text = String::from_utf8(response).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(text.ends_with("\r\n\r\ntoken expired"));
    }

    #[test]
    fn origin_not_allowed_is_403_and_does_not_echo_the_origin() {
        let e = HandshakeError::OriginNotAllowed(Some("https://evil.example".into()));
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let text = String::from_utf8(e.response()).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(!text.contains("evil"));
    }

    #[test]
    fn client_side_errors_map_to_502_or_400() {
        assert_eq!(
            HandshakeError::AcceptMismatch.status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            HandshakeError::UnexpectedStatus(StatusCode::NOT_FOUND).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            HandshakeError::InvalidUrl(UrlError::MissingHost).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn long_peer_text_is_shortened_in_messages() {
        let e = HandshakeError::UnsupportedVersion("9".repeat(1000));
        assert!(e.to_string().len() < 100);
        let e = HandshakeError::UnofferedProtocol("é".repeat(40));
        assert!(e.to_string().contains("..."));
    }

    #[test]
    fn errors_are_std_errors() {
        let e: Box<dyn std::error::Error> = Box::new(HandshakeError::from(UrlError::Fragment));
        assert!(e.source().is_some());
        assert!(e.to_string().contains("fragment"));
    }
}
