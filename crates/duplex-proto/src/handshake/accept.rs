//! The server's decision on a valid upgrade request, split into decide and encode (after
//! quinn-proto and rustls): every server runtime (a tokio task, an event loop, a hub, a
//! hyper service over HTTP/1.1 or HTTP/2) asks the same questions here and only does the I/O
//! itself.
//!
//! 1. [`validate_request`](super::validate_request) turns the parsed request into a
//!    [`ClientOffer`]; its error converts into a [`Refused`] (`?` works).
//! 2. The application looks at the request and the offer and answers with
//!    `Result<`[`Accept`]`, `[`Reject`]`>`.
//! 3. [`ServerHandshake::decide`] checks that choice (a chosen subprotocol must have been
//!    offered), negotiates permessage-deflate (RFC 7692 section 5.1: the first acceptable offer
//!    wins; a malformed offer declines compression, not the connection) and returns either an
//!    [`Upgrade`] (what to answer, the subprotocol, a configured [`Connection`]) or a
//!    [`Refused`] (the [`HandshakeError`] with its status, and the application's headers).
//! 4. [`Upgrade::encode_http11`] / [`Refused::encode_http11`] turn the decision into the bytes
//!    of an HTTP/1.1 response. [`Upgrade::response`] gives the same decision as an
//!    [`http::Response`] for servers that write their own heads.
//!
//! The bytes the client sent after its request head are not this module's business: the
//! caller keeps `buf[consumed..]` from [`parse_request`](super::parse_request) and feeds them
//! to the [`Connection`] before anything it reads later.
//!
//! After a refusal the server writes the response, shuts its write side and lingers: it reads
//! and discards what the client still sends for at most [`REFUSAL_LINGER`] and
//! [`REFUSAL_DRAIN_LIMIT`] bytes, whichever comes first, or until the client closes. Closing a
//! socket with unread bytes in its receive buffer makes the kernel send a reset, and a reset
//! can destroy the response before the client read it; draining for a moment lets the answer
//! arrive, and the bounds keep a client that does not stop sending from holding the server.

use std::time::Duration;

use http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Response, StatusCode};

use super::server::{
    ClientOffer, SWITCHING_OWN_HEADERS, encode_switching, reject_response, written_extensions,
    written_protocol,
};
use super::{AcceptKey, HandshakeError};
use crate::{Config, Connection, Role, SharedConfig};

/// How long a server keeps reading after it wrote a refusal and shut its write side, so that
/// closing does not reset the connection before the client read the answer (see
/// [lingering after a refusal](super#lingering-after-a-refusal)). Every runtime of this
/// workspace uses it.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most bytes a server reads and discards while lingering after a refusal: past it the socket
/// is closed even if the client is still sending.
pub const REFUSAL_DRAIN_LIMIT: usize = 1 << 20;

/// The application accepts the upgrade.
///
/// ```
/// let accept = duplex_proto::handshake::Accept::with_protocol("chat.v2");
/// assert_eq!(accept.protocol.as_deref(), Some("chat.v2"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Accept {
    /// The subprotocol chosen, which must be one the client offered
    /// ([`ClientOffer::select_protocol`] picks one), or `None`.
    pub protocol: Option<String>,
    /// Extra headers for the 101 response (cookies...). Those the handshake writes itself
    /// (`Upgrade`, `Connection`, `Sec-WebSocket-*`) and `Content-Length` /
    /// `Transfer-Encoding` are ignored.
    pub headers: HeaderMap,
}

impl Accept {
    /// Accepts with the subprotocol `protocol`.
    pub fn with_protocol(protocol: impl Into<String>) -> Self {
        Accept {
            protocol: Some(protocol.into()),
            headers: HeaderMap::new(),
        }
    }
}

/// The application refuses the upgrade: answered with `status` and `reason` as a text body.
///
/// ```
/// use http::{StatusCode, HeaderValue, header::WWW_AUTHENTICATE};
/// let reject = duplex_proto::handshake::Reject::new(StatusCode::UNAUTHORIZED, "token required")
///     .header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
/// assert_eq!(reject.status, 401);
/// ```
#[derive(Debug, Clone)]
pub struct Reject {
    /// The HTTP status (4xx or 5xx).
    pub status: StatusCode,
    /// A short sentence, sent as the body.
    pub reason: String,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`...). A list rather than a
    /// `HeaderMap` to keep the `Err` side of the application's result small.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reject {
    /// A refusal with `status` and `reason`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Reject {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// What a server accepts: the [`Config`] of the connections it opens and the permessage-deflate
/// parameters it agrees to. Borrowed, so a runtime builds one per request from its own
/// settings at no cost.
///
/// ```
/// use duplex_proto::handshake::{
///     parse_request, validate_request, Accept, ClientRequest, Refused, ServerHandshake,
/// };
/// use duplex_proto::{Config, Role};
///
/// # fn main() -> Result<(), Refused> {
/// let mut request = ClientRequest::new("ws://example.com/chat".parse().unwrap(), [7; 16]);
/// request.protocols.push("chat".into());
/// let wire = request.encode();
///
/// let (head, consumed) = parse_request(&wire, 16 * 1024)?.expect("complete");
/// let offer = validate_request(&head)?;
/// // The application decides (here: any request for /chat, with the "chat" subprotocol).
/// let choice = Ok(Accept {
///     protocol: offer.select_protocol(&["chat"]).map(str::to_owned),
///     ..Accept::default()
/// });
/// let config = Config::default();
/// let upgrade = ServerHandshake::new(&config).decide(&offer, choice)?;
/// let answer = upgrade.encode_http11();
/// assert!(answer.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
/// assert_eq!(upgrade.protocol.as_deref(), Some("chat"));
/// assert_eq!(upgrade.connection.role(), Role::Server);
/// // wire[consumed..] (empty here) is the first bytes for upgrade.connection.recv.
/// assert_eq!(consumed, wire.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ServerHandshake<'a> {
    config: Settings<'a>,
    #[cfg(feature = "deflate")]
    deflate: Option<&'a crate::extensions::deflate::DeflateConfig>,
}

/// Where a [`ServerHandshake`]'s connections get their settings.
#[derive(Debug, Clone, Copy)]
enum Settings<'a> {
    /// A copy each.
    Own(&'a Config),
    /// One shared pointer.
    Shared(&'a SharedConfig),
}

impl<'a> ServerHandshake<'a> {
    /// Opens connections with `config` and accepts no extension.
    pub fn new(config: &'a Config) -> Self {
        ServerHandshake {
            config: Settings::Own(config),
            #[cfg(feature = "deflate")]
            deflate: None,
        }
    }

    /// Opens connections that share `config` (see [`SharedConfig`]): for a server that makes
    /// many, each keeps one pointer to the settings instead of a copy.
    pub fn shared(config: &'a SharedConfig) -> Self {
        ServerHandshake {
            config: Settings::Shared(config),
            #[cfg(feature = "deflate")]
            deflate: None,
        }
    }

    /// Agrees to permessage-deflate (RFC 7692) within `deflate` when a client offers it;
    /// `None` declines it. Check the configuration once with
    /// [`DeflateConfig::validate`](crate::extensions::deflate::DeflateConfig::validate) when
    /// the server starts: an invalid one declines every offer.
    #[cfg(feature = "deflate")]
    pub fn deflate(
        mut self,
        deflate: Option<&'a crate::extensions::deflate::DeflateConfig>,
    ) -> Self {
        self.deflate = deflate;
        self
    }

    /// Decides the handshake for `offer` given the application's `choice`.
    ///
    /// - `Err(reject)`: [`Refused`] with [`HandshakeError::Refused`] (the reject's status and
    ///   reason) and the reject's headers.
    /// - `Ok(accept)` with a subprotocol the client did not offer: [`Refused`] with
    ///   [`HandshakeError::ProtocolNotOffered`] (500).
    /// - Otherwise an [`Upgrade`]: the subprotocol, permessage-deflate if the client offered
    ///   an acceptable one (the first acceptable offer wins, RFC 7692 section 5.1; a malformed
    ///   `Sec-WebSocket-Extensions` declines compression, not the connection), and a server
    ///   [`Connection`] already configured with both.
    pub fn decide(
        &self,
        offer: &ClientOffer,
        choice: Result<Accept, Reject>,
    ) -> Result<Upgrade, Refused> {
        let Accept { protocol, headers } = choice?;
        if let Some(protocol) = protocol.as_ref().filter(|p| !offer.protocols.contains(p)) {
            return Err(HandshakeError::ProtocolNotOffered(protocol.clone()).into());
        }
        Ok(self.upgrade(offer, protocol, headers))
    }

    fn upgrade(
        &self,
        offer: &ClientOffer,
        protocol: Option<String>,
        headers: HeaderMap,
    ) -> Upgrade {
        #[cfg_attr(
            not(feature = "deflate"),
            allow(unused_mut, reason = "only deflate configures it after it is built")
        )]
        let mut connection = match self.config {
            Settings::Own(config) => Connection::new(Role::Server, config.clone()),
            Settings::Shared(shared) => Connection::with_shared(Role::Server, shared),
        };
        let extensions = self.accept_deflate(offer, &mut connection);
        Upgrade {
            // An extended CONNECT has no key and its answer no Sec-WebSocket-Accept (RFC 8441
            // section 5).
            accept: (!offer.extended_connect).then(|| AcceptKey::new(offer.key.as_bytes())),
            protocol,
            extensions,
            headers,
            connection,
        }
    }

    /// The `Sec-WebSocket-Extensions` answer, with deflate turned on in `connection`, if the
    /// client offered an acceptable permessage-deflate.
    #[cfg(feature = "deflate")]
    fn accept_deflate(&self, offer: &ClientOffer, connection: &mut Connection) -> Option<String> {
        use crate::extensions::{deflate, parse};
        let (config, header) = (self.deflate?, offer.extensions.as_deref()?);
        // A malformed header declines compression; the connection goes on without it.
        let offers = parse(header).ok()?;
        // Err: an invalid configuration, which declines every offer (see `deflate`).
        let (negotiated, answer) = deflate::server_negotiate(&offers, config).ok()??;
        connection.set_deflate(negotiated);
        Some(answer)
    }

    #[cfg(not(feature = "deflate"))]
    fn accept_deflate(&self, _offer: &ClientOffer, _connection: &mut Connection) -> Option<String> {
        None
    }
}

/// An accepted upgrade (RFC 6455 section 4.2.2): what to answer, and the connection that
/// starts once the answer is written.
///
/// Take the fields by destructuring: `let Upgrade { connection, protocol, .. } = upgrade;`.
/// For an offer made by an HTTP/2 extended CONNECT
/// ([`ClientOffer::extended_connect`]) the answer is `200` with no `Sec-WebSocket-Accept`,
/// `Upgrade` or `Connection` (RFC 8441 section 5); [`response`](Self::response) gives it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Upgrade {
    /// The subprotocol agreed on, one the client offered.
    pub protocol: Option<String>,
    /// The server side of the connection, with permessage-deflate turned on if it was agreed.
    pub connection: Connection,
    /// `None` for an extended CONNECT.
    accept: Option<AcceptKey>,
    extensions: Option<String>,
    headers: HeaderMap,
}

impl Upgrade {
    /// `101 Switching Protocols`, or `200 OK` for an extended CONNECT (RFC 8441 section 5).
    pub fn status(&self) -> StatusCode {
        match self.accept {
            Some(_) => StatusCode::SWITCHING_PROTOCOLS,
            None => StatusCode::OK,
        }
    }

    /// Whether this accepts an HTTP/2 extended CONNECT (RFC 8441) rather than an HTTP/1.1
    /// upgrade.
    pub fn is_extended_connect(&self) -> bool {
        self.accept.is_none()
    }

    /// The `Sec-WebSocket-Accept` value (RFC 6455 section 1.3); empty for an extended CONNECT,
    /// which has none.
    pub fn accept_key(&self) -> &str {
        self.accept.as_ref().map_or("", AcceptKey::as_str)
    }

    /// The `Sec-WebSocket-Extensions` answer, if an extension was agreed on.
    pub fn extensions(&self) -> Option<&str> {
        self.extensions.as_deref()
    }

    /// The application's extra headers ([`Accept::headers`]).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The response as an [`http::Response`], for a server that writes its own heads (hyper):
    /// status 101 and the same headers [`encode_http11`](Self::encode_http11) writes, or for an
    /// extended CONNECT status 200 with only `Sec-WebSocket-Protocol` /
    /// `Sec-WebSocket-Extensions` and the application's headers (RFC 8441 section 5: HTTP/2
    /// has no `Upgrade` or `Connection`).
    pub fn response(&self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        if self.accept.is_some() {
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        let own = [
            (
                SEC_WEBSOCKET_ACCEPT,
                self.accept.as_ref().map(AcceptKey::as_str),
            ),
            (
                SEC_WEBSOCKET_PROTOCOL,
                written_protocol(self.protocol.as_deref()),
            ),
            (
                SEC_WEBSOCKET_EXTENSIONS,
                written_extensions(self.extensions()),
            ),
        ];
        for (name, value) in own {
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
        for (name, value) in &self.headers {
            if !SWITCHING_OWN_HEADERS.contains(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        response
    }

    /// The HTTP/1.1 bytes of the answer (what [`accept_response`](super::accept_response)
    /// writes): write them, then hand the connection the bytes that follow. Only for an
    /// HTTP/1.1 upgrade: an extended CONNECT is answered through the HTTP/2 library with
    /// [`response`](Self::response).
    pub fn encode_http11(&self) -> Vec<u8> {
        encode_switching(
            self.accept_key(),
            self.protocol.as_deref(),
            self.extensions(),
            &self.headers,
        )
    }
}

/// A refused upgrade: the [`HandshakeError`] for the caller (its [`status`](Self::status) is
/// the answer's) and the headers to answer with. Every refusal goes through here: a request
/// [`validate_request`](super::validate_request) turned down (`From<HandshakeError>`), the
/// application's [`Reject`] (`From<Reject>`), and a decision
/// [`ServerHandshake::decide`] rejected.
///
/// ```
/// use duplex_proto::handshake::{Refused, Reject};
/// use http::{header::RETRY_AFTER, HeaderValue, StatusCode};
/// let refused = Refused::from(
///     Reject::new(StatusCode::SERVICE_UNAVAILABLE, "full")
///         .header(RETRY_AFTER, HeaderValue::from_static("5")),
/// );
/// assert_eq!(refused.status(), 503);
/// let bytes = refused.encode_http11();
/// assert!(bytes.starts_with(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\n"));
/// assert!(bytes.ends_with(b"\r\n\r\nfull"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// Why, with the status ([`HandshakeError::status`]) and the body
    /// ([`HandshakeError::reason`]).
    pub error: HandshakeError,
    /// Extra response headers ([`Reject::headers`]); empty for the handshake's own refusals.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refused {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        self.error.status()
    }

    /// The error, for the caller.
    pub fn into_error(self) -> HandshakeError {
        self.error
    }

    /// The answer as an [`http::Response`] with the reason as its body, for a server that
    /// writes its own heads (hyper): the status, the extra headers, `Content-Type:
    /// text/plain; charset=utf-8`, and as in [`reject_response`](super::reject_response)
    /// `Sec-WebSocket-Version: 13` with 426 and `Allow: GET` with 405 (unless the extra headers
    /// set them). No `Connection: close` or `Content-Length`: the HTTP library writes those
    /// that its version has.
    ///
    /// ```
    /// use duplex_proto::handshake::{HandshakeError, Refused};
    /// let refused = Refused::from(HandshakeError::UnsupportedVersion("8".into()));
    /// let response = refused.response();
    /// assert_eq!(response.status(), 426);
    /// assert_eq!(response.headers()["sec-websocket-version"], "13");
    /// assert!(response.body().contains("13"));
    /// ```
    pub fn response(&self) -> Response<String> {
        let mut response = Response::new(self.error.reason());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            if ![CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION].contains(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        if self.status() == StatusCode::UPGRADE_REQUIRED
            && !headers.contains_key(SEC_WEBSOCKET_VERSION)
        {
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        if self.status() == StatusCode::METHOD_NOT_ALLOWED && !headers.contains_key(ALLOW) {
            headers.insert(ALLOW, HeaderValue::from_static("GET"));
        }
        response
    }

    /// The HTTP/1.1 bytes of the answer: [`reject_response`](super::reject_response) with the
    /// error's status and reason and the extra headers. The server closes the connection
    /// after writing it, [lingering](super#lingering-after-a-refusal) for a moment.
    pub fn encode_http11(&self) -> Vec<u8> {
        let headers: HeaderMap = self.headers.iter().cloned().collect();
        reject_response(self.status(), &self.error.reason(), &headers)
    }
}

impl From<HandshakeError> for Refused {
    fn from(error: HandshakeError) -> Self {
        Refused {
            error,
            headers: Vec::new(),
        }
    }
}

impl From<Reject> for Refused {
    fn from(reject: Reject) -> Self {
        Refused {
            error: HandshakeError::Refused {
                status: reject.status,
                reason: reject.reason,
            },
            headers: reject.headers,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests;
