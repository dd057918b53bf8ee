//! Server side of the opening handshake (RFC 6455 section 4.2).
//!
//! 1. [`parse_request`] the bytes read so far until it returns a request head (`Ok(None)`:
//!    read more). Bytes past the consumed count are the client's first frames.
//! 2. [`validate_request`] it as a WebSocket upgrade (section 4.2.1) into a [`ClientOffer`].
//! 3. The application looks at the path and query ([`http::Request::uri`]), headers (cookies,
//!    authorization), [`ClientOffer::origin`], the offered subprotocols and extensions, and
//!    either writes [`accept_response`] (section 4.2.2) or a refusal:
//!    [`HandshakeError::response`] for a failed check, [`HandshakeError::OriginNotAllowed`] (403)
//!    or [`HandshakeError::Refused`] for its own decisions, or [`reject_response`] directly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName, ORIGIN,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Request, StatusCode, Uri, Version};

use super::{
    AcceptKey, HandshakeError, MAX_HEADERS, describe, has_token, http1_version, is_header_value,
    is_token, list_elements, put_extra_headers, put_header, to_header_map, trim_ows,
};

/// Parses an HTTP/1.x request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, and `Ok(Some((request, consumed)))` once
/// the blank line ending it has arrived; `buf[consumed..]` is what the client sent after the
/// head. Only the first `max_size` bytes are ever looked at: a head that does not end within
/// them fails with [`HandshakeError::RequestTooLarge`] (431) as soon as `buf` is longer than
/// `max_size`; more than [`MAX_HEADERS`] header lines fail with
/// [`HandshakeError::TooManyHeaders`] (431); a malformed head with
/// [`HandshakeError::MalformedRequest`] (400). Header values need not be UTF-8.
///
/// ```
/// use duplex_proto::handshake::{parse_request, DEFAULT_MAX_HANDSHAKE_SIZE};
/// let wire = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\n\r\n\x81\x00";
/// assert!(parse_request(&wire[..20], DEFAULT_MAX_HANDSHAKE_SIZE)?.is_none());
/// let (request, consumed) = parse_request(wire, DEFAULT_MAX_HANDSHAKE_SIZE)?.expect("complete");
/// assert_eq!(request.uri().path(), "/chat");
/// assert_eq!(request.uri().query(), Some("room=1"));
/// assert_eq!(&wire[consumed..], b"\x81\x00");
/// # Ok::<(), duplex_proto::handshake::HandshakeError>(())
/// ```
pub fn parse_request(
    buf: &[u8],
    max_size: usize,
) -> Result<Option<(Request<()>, usize)>, HandshakeError> {
    let window = &buf[..buf.len().min(max_size)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let consumed = match parsed.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if buf.len() > max_size => {
            return Err(HandshakeError::RequestTooLarge { max: max_size });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders { max: MAX_HEADERS });
        }
        Err(e) => return Err(HandshakeError::MalformedRequest(describe(e))),
    };
    // httparse fills all three once the head is complete; no unwrap on peer data all the same.
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HandshakeError::MalformedRequest("incomplete request line"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HandshakeError::MalformedRequest("invalid method"))?;
    let uri = target
        .parse::<Uri>()
        .map_err(|_| HandshakeError::MalformedRequest("invalid request target"))?;
    let headers = to_header_map(parsed.headers).map_err(HandshakeError::MalformedRequest)?;

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http1_version(minor);
    *request.headers_mut() = headers;
    Ok(Some((request, consumed)))
}

/// What a valid upgrade request offers; the application decides what to accept.
///
/// Path, query and the other headers are on the [`http::Request`] it came from.
///
/// Two kinds of request make an offer: an HTTP/1.1 `GET` with `Upgrade: websocket`
/// ([`validate_request`]), and an HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441,
/// [`validate_extended_connect`]), which carries no `Sec-WebSocket-Key` and is accepted with
/// `200` rather than `101`. [`extended_connect`](Self::extended_connect) says which.
///
/// `#[non_exhaustive]`: outside this crate, build one with [`ClientOffer::new`] (or
/// [`ClientOffer::without_key`]) and set the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOffer {
    /// `Sec-WebSocket-Key`, as sent (base64 of 16 bytes); empty for an extended CONNECT, which
    /// has no key (RFC 8441 section 5).
    pub key: String,
    /// The subprotocols offered, in the client's order of preference: every
    /// `Sec-WebSocket-Protocol` header, comma lists split, trimmed, duplicates dropped.
    pub protocols: Vec<String>,
    /// Every `Sec-WebSocket-Extensions` header joined with `", "`, unparsed (see the
    /// `extensions` module); `None` if there were none.
    pub extensions: Option<String>,
    /// `Origin`, if sent (browsers always send it; section 10.2).
    pub origin: Option<String>,
    /// Whether the offer came as an HTTP/2 extended CONNECT (RFC 8441 section 4): then it is
    /// accepted with `200` and no `Sec-WebSocket-Accept`, and the stream carries the frames.
    pub extended_connect: bool,
}

impl ClientOffer {
    /// An offer with `Sec-WebSocket-Key` `key` and nothing else: no subprotocols, no
    /// extensions, no `Origin`. For tests and for servers that parse requests themselves;
    /// [`validate_request`] builds it from a request.
    ///
    /// ```
    /// # use duplex_proto::handshake::ClientOffer;
    /// let mut offer = ClientOffer::new("dGhlIHNhbXBsZSBub25jZQ==");
    /// offer.protocols.push("chat".into());
    /// assert_eq!(offer.origin, None);
    /// ```
    pub fn new(key: impl Into<String>) -> ClientOffer {
        ClientOffer {
            key: key.into(),
            protocols: Vec::new(),
            extensions: None,
            origin: None,
            extended_connect: false,
        }
    }

    /// An extended CONNECT offer (RFC 8441) with nothing else: no key, no subprotocols, no
    /// extensions, no `Origin`. [`validate_extended_connect`] builds it from a request.
    ///
    /// ```
    /// # use duplex_proto::handshake::ClientOffer;
    /// let offer = ClientOffer::without_key();
    /// assert!(offer.extended_connect && offer.key.is_empty());
    /// ```
    pub fn without_key() -> ClientOffer {
        ClientOffer {
            extended_connect: true,
            ..ClientOffer::new(String::new())
        }
    }

    /// The first of the server's `supported` subprotocols (in the server's order of preference)
    /// that the client offered.
    ///
    /// ```
    /// # use duplex_proto::handshake::ClientOffer;
    /// let mut offer = ClientOffer::new("dGhlIHNhbXBsZSBub25jZQ==");
    /// offer.protocols = vec!["v1.chat".into(), "v2.chat".into()];
    /// assert_eq!(offer.select_protocol(&["v2.chat", "v1.chat"]), Some("v2.chat"));
    /// assert_eq!(offer.select_protocol(&["mqtt"]), None);
    /// ```
    pub fn select_protocol<'a>(&self, supported: &[&'a str]) -> Option<&'a str> {
        supported
            .iter()
            .copied()
            .find(|s| self.protocols.iter().any(|p| p == s))
    }
}

/// Validates a request head as a WebSocket upgrade (RFC 6455 section 4.2.1), checking in order:
///
/// - method `GET`, else [`HandshakeError::MethodNotAllowed`] (405);
/// - HTTP/1.1 or later, else [`HandshakeError::UnsupportedHttpVersion`] (400);
/// - exactly one non-empty `Host`;
/// - `Upgrade` listing `websocket` and `Connection` listing `Upgrade`, both as case-insensitive
///   comma-separated token lists (`Connection: keep-alive, Upgrade` is fine);
/// - `Sec-WebSocket-Version: 13`, else [`HandshakeError::UnsupportedVersion`] (426);
/// - exactly one `Sec-WebSocket-Key` that is base64 of 16 bytes;
/// - subprotocols that are tokens (section 4.1), UTF-8 `Sec-WebSocket-Extensions` and `Origin`.
///
/// Other failures are [`HandshakeError::MissingHeader`] or [`HandshakeError::InvalidHeader`]
/// (400).
///
/// ```
/// use duplex_proto::handshake::{parse_request, validate_request, DEFAULT_MAX_HANDSHAKE_SIZE};
/// let wire = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
///     Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
///     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n";
/// let (request, _) = parse_request(wire, DEFAULT_MAX_HANDSHAKE_SIZE)?.expect("complete");
/// let offer = validate_request(&request)?;
/// assert_eq!(offer.protocols, ["chat", "superchat"]);
/// # Ok::<(), duplex_proto::handshake::HandshakeError>(())
/// ```
pub fn validate_request<B>(req: &Request<B>) -> Result<ClientOffer, HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::MethodNotAllowed(req.method().clone()));
    }
    if req.version() < Version::HTTP_11 {
        return Err(HandshakeError::UnsupportedHttpVersion(req.version()));
    }
    let headers = req.headers();

    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => return Err(HandshakeError::MissingHeader("Host")),
        (Some(host), None) if !trim_ows(host.as_bytes()).is_empty() => {}
        _ => return Err(HandshakeError::InvalidHeader("Host")),
    }

    require_token(headers, &UPGRADE, "Upgrade", "websocket")?;
    require_token(headers, &CONNECTION, "Connection", "upgrade")?;

    require_version_13(headers)?;
    let key = validate_key(headers)?;
    offer_headers(headers, key, false)
}

/// Validates an HTTP/2 (or later) extended CONNECT as a WebSocket request (RFC 8441 sections 4
/// and 5), checking in order:
///
/// - method `CONNECT`, else [`HandshakeError::MethodNotAllowed`] (405);
/// - HTTP/2 or later, else [`HandshakeError::UnsupportedHttpVersion`] (400);
/// - `:protocol` present ([`HandshakeError::MissingHeader`]`(":protocol")`, 400) and
///   `websocket`, compared case-insensitively ([`HandshakeError::InvalidHeader`], 400);
///   `protocol` is that pseudo-header, which HTTP libraries keep outside the header map
///   (`hyper::ext::Protocol`, `h2::ext::Protocol`);
/// - an `:authority` (the request URI's authority);
/// - `Sec-WebSocket-Version: 13`, else [`HandshakeError::UnsupportedVersion`] (426);
/// - subprotocols, extensions and `Origin` as in [`validate_request`].
///
/// No `Sec-WebSocket-Key` is needed (one sent is ignored), and `Upgrade` / `Connection` are
/// connection-specific headers that HTTP/2 forbids, so they are not looked at. The offer has
/// [`extended_connect`](ClientOffer::extended_connect) set, so the
/// [`Upgrade`](super::Upgrade) decided on it answers `200`.
///
/// ```
/// use duplex_proto::handshake::validate_extended_connect;
/// let request = http::Request::builder()
///     .method("CONNECT")
///     .version(http::Version::HTTP_2)
///     .uri("https://example.com/chat")
///     .header("sec-websocket-version", "13")
///     .header("sec-websocket-protocol", "chat")
///     .body(())?;
/// let offer = validate_extended_connect(&request, Some("websocket"))?;
/// assert!(offer.extended_connect);
/// assert_eq!(offer.protocols, ["chat"]);
/// assert!(validate_extended_connect(&request, Some("webtransport")).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn validate_extended_connect<B>(
    req: &Request<B>,
    protocol: Option<&str>,
) -> Result<ClientOffer, HandshakeError> {
    if req.method() != Method::CONNECT {
        return Err(HandshakeError::MethodNotAllowed(req.method().clone()));
    }
    if req.version() < Version::HTTP_2 {
        return Err(HandshakeError::UnsupportedHttpVersion(req.version()));
    }
    match protocol {
        None => return Err(HandshakeError::MissingHeader(":protocol")),
        Some(p) if p.trim().eq_ignore_ascii_case("websocket") => {}
        Some(_) => return Err(HandshakeError::InvalidHeader(":protocol")),
    }
    if req.uri().authority().is_none() {
        return Err(HandshakeError::MissingHeader(":authority"));
    }
    let headers = req.headers();
    require_version_13(headers)?;
    offer_headers(headers, String::new(), true)
}

/// `Sec-WebSocket-Version` must be exactly `13` (section 4.2.2).
fn require_version_13(headers: &HeaderMap) -> Result<(), HandshakeError> {
    let versions: Vec<&[u8]> = headers
        .get_all(SEC_WEBSOCKET_VERSION)
        .iter()
        .map(|v| trim_ows(v.as_bytes()))
        .collect();
    match versions.as_slice() {
        [] => Err(HandshakeError::MissingHeader("Sec-WebSocket-Version")),
        [b"13"] => Ok(()),
        other => {
            let offered = other
                .iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>()
                .join(", ");
            Err(HandshakeError::UnsupportedVersion(offered))
        }
    }
}

/// The offer's subprotocols, extensions and `Origin`: the same for both kinds of request.
fn offer_headers(
    headers: &HeaderMap,
    key: String,
    extended_connect: bool,
) -> Result<ClientOffer, HandshakeError> {
    let protocols = offered_protocols(headers)?;

    let mut extensions = Vec::new();
    for value in headers.get_all(SEC_WEBSOCKET_EXTENSIONS) {
        let value = value
            .to_str()
            .map_err(|_| HandshakeError::InvalidHeader("Sec-WebSocket-Extensions"))?
            .trim();
        if !value.is_empty() {
            extensions.push(value);
        }
    }
    let extensions = (!extensions.is_empty()).then(|| extensions.join(", "));

    let mut origins = headers.get_all(ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => None,
        (Some(origin), None) => Some(
            origin
                .to_str()
                .map_err(|_| HandshakeError::InvalidHeader("Origin"))?
                .trim()
                .to_owned(),
        ),
        _ => return Err(HandshakeError::InvalidHeader("Origin")),
    };

    Ok(ClientOffer {
        key,
        protocols,
        extensions,
        origin,
        extended_connect,
    })
}

/// `name` must be present (else [`HandshakeError::MissingHeader`]) and list `token` (else
/// [`HandshakeError::InvalidHeader`]).
fn require_token(
    headers: &HeaderMap,
    name: &HeaderName,
    display: &'static str,
    token: &str,
) -> Result<(), HandshakeError> {
    if !headers.contains_key(name) {
        return Err(HandshakeError::MissingHeader(display));
    }
    if !has_token(headers, name, token) {
        return Err(HandshakeError::InvalidHeader(display));
    }
    Ok(())
}

/// Exactly one `Sec-WebSocket-Key`, base64 (with padding) of exactly 16 bytes (section 4.1).
fn validate_key(headers: &HeaderMap) -> Result<String, HandshakeError> {
    const NAME: &str = "Sec-WebSocket-Key";
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => return Err(HandshakeError::MissingHeader(NAME)),
        (Some(key), None) => trim_ows(key.as_bytes()),
        _ => return Err(HandshakeError::InvalidHeader(NAME)),
    };
    // 16 bytes are always 24 base64 characters; checking first bounds the decode.
    let decoded_len = if key.len() == 24 {
        STANDARD.decode(key).map(|bytes| bytes.len()).ok()
    } else {
        None
    };
    if decoded_len != Some(16) {
        return Err(HandshakeError::InvalidHeader(NAME));
    }
    // Valid base64 is ASCII.
    std::str::from_utf8(key)
        .map(str::to_owned)
        .map_err(|_| HandshakeError::InvalidHeader(NAME))
}

/// Every `Sec-WebSocket-Protocol` element, in order, without duplicates; each must be a token.
fn offered_protocols(headers: &HeaderMap) -> Result<Vec<String>, HandshakeError> {
    let mut protocols: Vec<String> = Vec::new();
    for element in list_elements(headers, &SEC_WEBSOCKET_PROTOCOL) {
        let protocol = std::str::from_utf8(element)
            .ok()
            .filter(|p| is_token(p))
            .ok_or(HandshakeError::InvalidHeader("Sec-WebSocket-Protocol"))?;
        if !protocols.iter().any(|p| p == protocol) {
            protocols.push(protocol.to_owned());
        }
    }
    Ok(protocols)
}

/// The `101 Switching Protocols` that accepts `offer` (RFC 6455 section 4.2.2).
///
/// `protocol` should be one of `offer.protocols` (see [`ClientOffer::select_protocol`]) and
/// `extensions` the already negotiated `Sec-WebSocket-Extensions` value. `extra` headers
/// (cookies, server name) follow, except those this function writes itself (`Upgrade`,
/// `Connection`, `Sec-WebSocket-Accept`, `-Protocol`, `-Extensions`) and `Content-Length` /
/// `Transfer-Encoding`, which a 101 must not carry; those names in `extra` are ignored.
///
/// A `protocol` that is not a token, or `extensions` containing control characters, are left
/// out rather than written, so a bad value can never split the response.
///
/// ```
/// use duplex_proto::handshake::{accept_response, ClientOffer};
/// let mut offer = ClientOffer::new("dGhlIHNhbXBsZSBub25jZQ==");
/// offer.protocols.push("chat".into());
/// let response = accept_response(&offer, Some("chat"), None, &http::HeaderMap::new());
/// assert_eq!(
///     response,
///     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
///       Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
/// );
/// ```
pub fn accept_response(
    offer: &ClientOffer,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra: &HeaderMap,
) -> Vec<u8> {
    let accept = AcceptKey::new(offer.key.as_bytes());
    encode_switching(accept.as_str(), protocol, extensions, extra)
}

/// The headers of a 101 that [`accept_response`] and [`Upgrade`](super::Upgrade) write
/// besides the application's: those names in the application's headers are ignored, and so
/// are `Content-Length` / `Transfer-Encoding`, which a 101 must not carry.
pub(super) const SWITCHING_OWN_HEADERS: [HeaderName; 7] = [
    UPGRADE,
    CONNECTION,
    SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_EXTENSIONS,
    CONTENT_LENGTH,
    TRANSFER_ENCODING,
];

/// The subprotocol as written: left out unless it is a token.
pub(super) fn written_protocol(protocol: Option<&str>) -> Option<&str> {
    protocol.filter(|p| is_token(p))
}

/// The extensions value as written: trimmed, left out if empty or if it has control characters.
pub(super) fn written_extensions(extensions: Option<&str>) -> Option<&str> {
    extensions
        .map(str::trim)
        .filter(|e| !e.is_empty() && is_header_value(e))
}

/// The HTTP/1.1 bytes of a `101 Switching Protocols` (section 4.2.2).
pub(super) fn encode_switching(
    accept: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra: &HeaderMap,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    put_header(&mut out, "Upgrade", b"websocket");
    put_header(&mut out, "Connection", b"Upgrade");
    put_header(&mut out, "Sec-WebSocket-Accept", accept.as_bytes());
    if let Some(protocol) = written_protocol(protocol) {
        put_header(&mut out, "Sec-WebSocket-Protocol", protocol.as_bytes());
    }
    if let Some(extensions) = written_extensions(extensions) {
        put_header(&mut out, "Sec-WebSocket-Extensions", extensions.as_bytes());
    }
    put_extra_headers(&mut out, extra, &SWITCHING_OWN_HEADERS);
    out.extend_from_slice(b"\r\n");
    out
}

/// A refusal: `status` with `reason` as a `text/plain; charset=utf-8` body, `Content-Length`,
/// and `Connection: close` (the caller closes the connection after writing it).
///
/// 426 adds `Sec-WebSocket-Version: 13` (section 4.2.2) and 405 adds `Allow: GET`, unless
/// `extra` carries them. `extra` headers (e.g. `WWW-Authenticate`, `Retry-After`) come first and
/// may replace `Content-Type`; `Content-Length`, `Transfer-Encoding` and `Connection` in `extra`
/// are ignored.
///
/// ```
/// use duplex_proto::handshake::reject_response;
/// use http::{HeaderMap, StatusCode};
/// let response = reject_response(StatusCode::UPGRADE_REQUIRED, "use version 13", &HeaderMap::new());
/// assert_eq!(
///     response,
///     b"HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain; charset=utf-8\r\n\
///       Sec-WebSocket-Version: 13\r\nConnection: close\r\nContent-Length: 14\r\n\r\n\
///       use version 13"
/// );
/// ```
pub fn reject_response(status: StatusCode, reason: &str, extra: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + reason.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_extra_headers(
        &mut out,
        extra,
        &[CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION],
    );
    if !extra.contains_key(CONTENT_TYPE) {
        put_header(&mut out, "Content-Type", b"text/plain; charset=utf-8");
    }
    if status == StatusCode::UPGRADE_REQUIRED && !extra.contains_key(SEC_WEBSOCKET_VERSION) {
        put_header(&mut out, "Sec-WebSocket-Version", b"13");
    }
    if status == StatusCode::METHOD_NOT_ALLOWED && !extra.contains_key(ALLOW) {
        put_header(&mut out, "Allow", b"GET");
    }
    put_header(&mut out, "Connection", b"close");
    put_header(
        &mut out,
        "Content-Length",
        reason.len().to_string().as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reason.as_bytes());
    out
}

#[cfg(test)]
mod tests;
