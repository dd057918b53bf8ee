//! Client side of the opening handshake (RFC 6455 section 4.1).
//!
//! 1. Parse the [`WsUrl`], build a [`ClientRequest`] with 16 random bytes from the caller's RNG,
//!    set its subprotocols, extension offer and extra headers, and write
//!    [`encode`](ClientRequest::encode).
//! 2. [`parse_response`] the bytes read so far until it returns a response head (`Ok(None)`:
//!    read more). Bytes past the consumed count are the server's first frames.
//! 3. [`validate_response`] it against the request into [`Accepted`]: the subprotocol and the
//!    extensions the server agreed to.

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderMap, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use http::{Response, StatusCode};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub use super::url::WsUrl;
use super::{
    HandshakeError, MAX_HEADERS, accept_key, describe, has_token, http1_version, is_header_value,
    is_token, list_elements, put_extra_headers, put_header, to_header_map, trim_ows,
};

/// A client's upgrade request (RFC 6455 section 4.1). Set the public fields, then
/// [`encode`](Self::encode).
///
/// ```
/// use duplex_proto::handshake::{ClientRequest, WsUrl};
/// let url: WsUrl = "ws://example.com:8080/chat".parse()?;
/// let mut request = ClientRequest::new(url, *b"the sample nonce");
/// request.protocols = vec!["chat".into(), "superchat".into()];
/// request.headers.insert("origin", http::HeaderValue::from_static("http://example.com"));
/// assert_eq!(request.key(), "dGhlIHNhbXBsZSBub25jZQ==");
/// assert_eq!(
///     request.encode(),
///     b"GET /chat HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\n\
///       Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
///       Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
///       origin: http://example.com\r\n\r\n"
/// );
/// # Ok::<(), duplex_proto::handshake::HandshakeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// Where to connect and the resource to ask for.
    pub url: WsUrl,
    /// Subprotocols to offer, most preferred first. Entries that are not tokens (section 4.1)
    /// are not sent.
    pub protocols: Vec<String>,
    /// The `Sec-WebSocket-Extensions` offer (see the `extensions` module), if any. Not sent if
    /// empty or if it contains control characters.
    pub extensions: Option<String>,
    /// Extra headers (`Origin`, `Authorization`, `Cookie`...). A `Host` here replaces the one
    /// derived from the URL. `Upgrade`, `Connection`, the `Sec-WebSocket-*` headers and
    /// `Content-Length` / `Transfer-Encoding` are set by [`encode`](Self::encode) or not at all;
    /// those names here are ignored.
    pub headers: HeaderMap,
    key: String,
}

impl ClientRequest {
    /// A request for `url` with `Sec-WebSocket-Key` = base64(`key_bytes`). The 16 bytes must be
    /// random for each connection (section 4.1); they come from the caller, as this crate has no
    /// RNG of its own.
    pub fn new(url: WsUrl, key_bytes: [u8; 16]) -> ClientRequest {
        ClientRequest {
            url,
            protocols: Vec::new(),
            extensions: None,
            headers: HeaderMap::new(),
            key: STANDARD.encode(key_bytes),
        }
    }

    /// The `Sec-WebSocket-Key` sent (24 base64 characters).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The request head: `GET <resource> HTTP/1.1`, `Host` (with the port only when it is not
    /// the default), `Upgrade: websocket`, `Connection: Upgrade`, `Sec-WebSocket-Key`,
    /// `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` when
    /// there is something to offer, then the extra [`headers`](Self::headers).
    ///
    /// The fields are public, so every value is checked on the way out: nothing written can
    /// split the request (bytes a request target cannot hold are percent-encoded, values with
    /// control characters are left out).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"GET ");
        let mut resource = String::with_capacity(self.url.resource.len());
        super::url::percent_encode_into(&mut resource, &self.url.resource);
        if !resource.starts_with('/') {
            resource.insert(0, '/');
        }
        out.extend_from_slice(resource.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.headers.contains_key(HOST) {
            let host = self.url.host_header();
            if is_header_value(&host) {
                put_header(&mut out, "Host", host.as_bytes());
            }
        }
        put_header(&mut out, "Upgrade", b"websocket");
        put_header(&mut out, "Connection", b"Upgrade");
        put_header(&mut out, "Sec-WebSocket-Key", self.key.as_bytes());
        put_header(&mut out, "Sec-WebSocket-Version", b"13");
        let protocols: Vec<&str> = self.offered_protocols().collect();
        if !protocols.is_empty() {
            put_header(
                &mut out,
                "Sec-WebSocket-Protocol",
                protocols.join(", ").as_bytes(),
            );
        }
        if let Some(extensions) = self.offered_extensions() {
            put_header(&mut out, "Sec-WebSocket-Extensions", extensions.as_bytes());
        }
        put_extra_headers(
            &mut out,
            &self.headers,
            &[
                UPGRADE,
                CONNECTION,
                SEC_WEBSOCKET_KEY,
                SEC_WEBSOCKET_VERSION,
                SEC_WEBSOCKET_PROTOCOL,
                SEC_WEBSOCKET_EXTENSIONS,
                CONTENT_LENGTH,
                TRANSFER_ENCODING,
            ],
        );
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The subprotocols actually sent.
    pub(super) fn offered_protocols(&self) -> impl Iterator<Item = &str> {
        self.protocols
            .iter()
            .map(String::as_str)
            .filter(|p| is_token(p))
    }

    /// The extension offer actually sent.
    pub(super) fn offered_extensions(&self) -> Option<&str> {
        self.extensions
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty() && is_header_value(e))
    }
}

/// Parses an HTTP/1.x response head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, and `Ok(Some((response, consumed)))` once
/// the blank line ending it has arrived; `buf[consumed..]` is what the server sent after the
/// head (its first frames, or the body of a refusal, which is not read). A head that does not
/// end within `max_size` bytes fails with [`HandshakeError::ResponseTooLarge`] as soon as `buf`
/// is longer; a malformed head, or one with more than [`MAX_HEADERS`] headers, with
/// [`HandshakeError::MalformedResponse`].
///
/// ```
/// use duplex_proto::handshake::{parse_response, DEFAULT_MAX_HANDSHAKE_SIZE};
/// let wire = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!";
/// let (response, consumed) = parse_response(wire, DEFAULT_MAX_HANDSHAKE_SIZE)?.expect("complete");
/// assert_eq!(response.status(), 404);
/// assert_eq!(&wire[consumed..], b"no!");
/// # Ok::<(), duplex_proto::handshake::HandshakeError>(())
/// ```
pub fn parse_response(
    buf: &[u8],
    max_size: usize,
) -> Result<Option<(Response<()>, usize)>, HandshakeError> {
    let window = &buf[..buf.len().min(max_size)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let consumed = match parsed.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if buf.len() > max_size => {
            return Err(HandshakeError::ResponseTooLarge { max: max_size });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::MalformedResponse(describe(e))),
    };
    let (Some(code), Some(minor)) = (parsed.code, parsed.version) else {
        return Err(HandshakeError::MalformedResponse("incomplete status line"));
    };
    let status = StatusCode::from_u16(code)
        .map_err(|_| HandshakeError::MalformedResponse("invalid response status"))?;
    let headers = to_header_map(parsed.headers).map_err(HandshakeError::MalformedResponse)?;

    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = http1_version(minor);
    *response.headers_mut() = headers;
    Ok(Some((response, consumed)))
}

/// What the server agreed to in its 101.
///
/// `#[non_exhaustive]`: an HTTP/2 answer (RFC 8441) may add to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Accepted {
    /// The subprotocol the server selected, one of [`ClientRequest::protocols`].
    pub protocol: Option<String>,
    /// Every `Sec-WebSocket-Extensions` header joined with `", "`, unparsed (every extension
    /// name in it was offered); hand it to the `extensions` module.
    pub extensions: Option<String>,
}

/// Checks the server's answer to `req` (RFC 6455 section 4.1, "the client MUST validate the
/// server's response"):
///
/// - status 101, else [`HandshakeError::UnexpectedStatus`] with the status (a redirect, 401,
///   ...);
/// - `Upgrade` listing `websocket` and `Connection` listing `Upgrade` (case-insensitive token
///   lists), else [`HandshakeError::InvalidResponseHeader`];
/// - exactly one `Sec-WebSocket-Accept` equal to [`accept_key`] of the request's key, else
///   [`HandshakeError::AcceptMismatch`];
/// - at most one subprotocol ([`HandshakeError::MultipleProtocols`]), one the request offered
///   ([`HandshakeError::UnofferedProtocol`]);
/// - every extension name in `Sec-WebSocket-Extensions` offered by the request
///   ([`HandshakeError::UnofferedExtension`]). Only the names are checked here (the part of
///   each comma-separated element before `;`); the parameters belong to the `extensions`
///   module.
///
/// ```
/// use duplex_proto::handshake::{parse_response, validate_response, ClientRequest, WsUrl};
/// let request = ClientRequest::new("ws://example.com/".parse()?, *b"the sample nonce");
/// let wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
///     Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
/// let (response, _) = parse_response(wire, 4096)?.expect("complete");
/// let accepted = validate_response(&request, &response)?;
/// assert_eq!(accepted.protocol, None);
/// # Ok::<(), duplex_proto::handshake::HandshakeError>(())
/// ```
pub fn validate_response(
    req: &ClientRequest,
    resp: &Response<()>,
) -> Result<Accepted, HandshakeError> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(HandshakeError::UnexpectedStatus(resp.status()));
    }
    let headers = resp.headers();
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::InvalidResponseHeader("Upgrade"));
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::InvalidResponseHeader("Connection"));
    }

    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(accept), None)
            if trim_ows(accept.as_bytes()) == accept_key(req.key.as_bytes()).as_bytes() => {}
        _ => return Err(HandshakeError::AcceptMismatch),
    }
    agreement(req, headers)
}

/// The subprotocol and extensions a server's answer agrees to, checked against what `req`
/// offered (section 4.1): the same for a `101` and for an HTTP/2 `200` (RFC 8441 section 5).
pub(super) fn agreement(
    req: &ClientRequest,
    headers: &HeaderMap,
) -> Result<Accepted, HandshakeError> {
    let mut protocols = list_elements(headers, &SEC_WEBSOCKET_PROTOCOL);
    let protocol = match (protocols.next(), protocols.next()) {
        (None, _) => None,
        (Some(protocol), None) => {
            let protocol = std::str::from_utf8(protocol)
                .map_err(|_| HandshakeError::InvalidResponseHeader("Sec-WebSocket-Protocol"))?;
            if !req.offered_protocols().any(|offered| offered == protocol) {
                return Err(HandshakeError::UnofferedProtocol(protocol.to_owned()));
            }
            Some(protocol.to_owned())
        }
        (Some(_), Some(_)) => return Err(HandshakeError::MultipleProtocols),
    };

    let mut values = Vec::new();
    for value in headers.get_all(SEC_WEBSOCKET_EXTENSIONS) {
        let value = value
            .to_str()
            .map_err(|_| HandshakeError::InvalidResponseHeader("Sec-WebSocket-Extensions"))?
            .trim();
        if !value.is_empty() {
            values.push(value);
        }
    }
    let extensions = (!values.is_empty()).then(|| values.join(", "));
    if let Some(extensions) = &extensions {
        let offered: Vec<&str> = req
            .offered_extensions()
            .map(extension_names)
            .unwrap_or_default();
        for name in extension_names(extensions) {
            if !offered.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                return Err(HandshakeError::UnofferedExtension(name.to_owned()));
            }
        }
    }

    Ok(Accepted {
        protocol,
        extensions,
    })
}

/// The extension names of a `Sec-WebSocket-Extensions` value: each comma-separated element up
/// to its first `;`, trimmed, empty ones skipped. Commas inside quoted parameter values
/// (`x; p="a,b"`) do not split. Just enough grammar to check names (section 9.1); the
/// `extensions` module parses the rest.
fn extension_names(value: &str) -> Vec<&str> {
    let mut elements = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                elements.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(&value[start..]);
    elements
        .into_iter()
        .map(|element| element.split(';').next().unwrap_or("").trim())
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests;
