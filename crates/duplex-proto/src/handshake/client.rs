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
    fn offered_protocols(&self) -> impl Iterator<Item = &str> {
        self.protocols
            .iter()
            .map(String::as_str)
            .filter(|p| is_token(p))
    }

    /// The extension offer actually sent.
    fn offered_extensions(&self) -> Option<&str> {
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
mod tests {
    use super::*;
    use crate::handshake::server::{accept_response, parse_request, validate_request};
    use crate::handshake::{DEFAULT_MAX_HANDSHAKE_SIZE, reject_response};
    use http::HeaderValue;
    use proptest::prelude::*;

    const NONCE: [u8; 16] = *b"the sample nonce";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn request(url: &str) -> ClientRequest {
        ClientRequest::new(url.parse().expect("valid url"), NONCE)
    }

    fn response(wire: &[u8]) -> Response<()> {
        match parse_response(wire, DEFAULT_MAX_HANDSHAKE_SIZE) {
            Ok(Some((response, consumed))) => {
                assert_eq!(consumed, wire.len());
                response
            }
            other => panic!("{other:?}"),
        }
    }

    /// A 101 for the sample nonce, with `lines` added.
    fn switching(lines: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{lines}\r\n"
        )
        .into_bytes()
    }

    fn validate(req: &ClientRequest, wire: &[u8]) -> Result<Accepted, HandshakeError> {
        validate_response(req, &response(wire))
    }

    fn assert_fails(req: &ClientRequest, wire: &[u8], expected: HandshakeError) {
        let e = validate(req, wire).expect_err("must fail");
        assert_eq!(e, expected);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn key_is_base64_of_the_bytes() {
        assert_eq!(request("ws://a/").key(), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn encode_minimal_request() {
        assert_eq!(
            String::from_utf8(request("ws://example.com").encode()).expect("ascii"),
            "GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
    }

    #[test]
    fn encode_host_header_port_rules() {
        let host_line = |url: &str| {
            let text = String::from_utf8(request(url).encode()).expect("ascii");
            text.lines()
                .find_map(|l| l.strip_prefix("Host: ").map(str::to_owned))
                .expect("host line")
        };
        assert_eq!(host_line("wss://a.example:443/x"), "a.example");
        assert_eq!(host_line("wss://a.example:80/x"), "a.example:80");
        assert_eq!(host_line("ws://[::1]:9001/x"), "[::1]:9001");
        assert_eq!(host_line("ws://[::1]/x"), "[::1]");
    }

    #[test]
    fn encode_offers_extensions_and_extra_headers() {
        let mut req = request("wss://a.example/feed?since=3");
        req.protocols = vec!["v2".into(), "bad token".into(), "v1".into()];
        req.extensions = Some("permessage-deflate; client_max_window_bits".into());
        req.headers
            .insert("authorization", HeaderValue::from_static("Bearer x"));
        req.headers
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let text = String::from_utf8(req.encode()).expect("ascii");
        assert_eq!(
            text,
            "GET /feed?since=3 HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v2, v1\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
             authorization: Bearer x\r\n\r\n"
        );
    }

    #[test]
    fn encode_host_override_and_hostile_fields() {
        let mut req = request("ws://10.0.0.1:8080/");
        req.headers
            .insert(HOST, HeaderValue::from_static("virtual.example"));
        req.url.resource = "/a b\r\nX-Evil: 1".into();
        req.extensions = Some("x\r\nX-Evil: 2".into());
        let text = String::from_utf8(req.encode()).expect("ascii");
        assert!(text.starts_with("GET /a%20b%0D%0AX-Evil:%201 HTTP/1.1\r\n"));
        assert!(text.contains("\r\nhost: virtual.example\r\n"));
        assert!(!text.contains("Host: 10.0.0.1"));
        assert!(!text.contains("\r\nX-Evil"));
        assert_eq!(text.matches("\r\n\r\n").count(), 1);
    }

    #[test]
    fn round_trip_through_the_server() {
        let mut req = request("ws://127.0.0.1:9001/chat?room=7");
        req.protocols = vec!["v2.chat".into(), "v1.chat".into()];
        req.extensions = Some("permessage-deflate; client_max_window_bits, x-foo".into());
        req.headers
            .insert("origin", HeaderValue::from_static("http://127.0.0.1:9001"));

        let mut wire = req.encode();
        let head_len = wire.len();
        wire.extend_from_slice(b"\x81\x80....");
        let (server_req, consumed) = parse_request(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)
            .expect("valid")
            .expect("complete");
        assert_eq!(consumed, head_len);
        assert_eq!(server_req.uri().path(), "/chat");
        assert_eq!(server_req.uri().query(), Some("room=7"));
        assert_eq!(server_req.headers()[HOST], "127.0.0.1:9001");
        let offer = validate_request(&server_req).expect("valid upgrade");
        assert_eq!(offer.key, req.key());
        assert_eq!(offer.protocols, ["v2.chat", "v1.chat"]);
        assert_eq!(offer.origin.as_deref(), Some("http://127.0.0.1:9001"));
        assert_eq!(offer.extensions, req.extensions);

        let protocol = offer.select_protocol(&["v1.chat", "v2.chat"]);
        let mut wire = accept_response(
            &offer,
            protocol,
            Some("permessage-deflate; client_max_window_bits=15"),
            &HeaderMap::new(),
        );
        let head_len = wire.len();
        wire.extend_from_slice(b"\x81\x02hi");
        let (resp, consumed) = parse_response(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)
            .expect("valid")
            .expect("complete");
        assert_eq!(consumed, head_len);
        let accepted = validate_response(&req, &resp).expect("valid 101");
        assert_eq!(
            accepted,
            Accepted {
                protocol: Some("v1.chat".into()),
                extensions: Some("permessage-deflate; client_max_window_bits=15".into()),
            }
        );
    }

    #[test]
    fn server_refusal_is_unexpected_status() {
        let req = request("ws://a/");
        let wire = reject_response(StatusCode::NOT_FOUND, "no such room", &HeaderMap::new());
        let (resp, consumed) = parse_response(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)
            .expect("valid")
            .expect("complete");
        assert_eq!(&wire[consumed..], b"no such room");
        let e = validate_response(&req, &resp).expect_err("refused");
        assert_eq!(e, HandshakeError::UnexpectedStatus(StatusCode::NOT_FOUND));
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn missing_upgrade_in_response_fails() {
        let wire = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        );
        assert_fails(
            &request("ws://a/"),
            wire.as_bytes(),
            HandshakeError::InvalidResponseHeader("Upgrade"),
        );
    }

    #[test]
    fn connection_without_upgrade_in_response_fails() {
        let wire = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        );
        assert_fails(
            &request("ws://a/"),
            wire.as_bytes(),
            HandshakeError::InvalidResponseHeader("Connection"),
        );
    }

    #[test]
    fn response_token_lists_are_case_insensitive() {
        let wire = format!(
            "HTTP/1.1 101 OK\r\nupgrade: WEBSOCKET\r\nCONNECTION: keep-alive, upgrade\r\n\
             sec-websocket-accept: {ACCEPT}\r\n\r\n"
        );
        assert!(validate(&request("ws://a/"), wire.as_bytes()).is_ok());
    }

    #[test]
    fn wrong_or_missing_accept_fails() {
        let req = request("ws://a/");
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
        assert_fails(&req, wrong, HandshakeError::AcceptMismatch);
        let missing =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_fails(&req, missing, HandshakeError::AcceptMismatch);
        let twice = switching(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n"));
        assert_fails(&req, &twice, HandshakeError::AcceptMismatch);
    }

    #[test]
    fn unoffered_protocol_fails() {
        let mut req = request("ws://a/");
        assert_fails(
            &req,
            &switching("Sec-WebSocket-Protocol: chat\r\n"),
            HandshakeError::UnofferedProtocol("chat".into()),
        );
        req.protocols = vec!["chat".into()];
        assert_fails(
            &req,
            &switching("Sec-WebSocket-Protocol: Chat\r\n"),
            HandshakeError::UnofferedProtocol("Chat".into()),
        );
        let accepted =
            validate(&req, &switching("Sec-WebSocket-Protocol: chat\r\n")).expect("offered");
        assert_eq!(accepted.protocol.as_deref(), Some("chat"));
    }

    #[test]
    fn more_than_one_protocol_fails() {
        let mut req = request("ws://a/");
        req.protocols = vec!["a".into(), "b".into()];
        assert_fails(
            &req,
            &switching("Sec-WebSocket-Protocol: a, b\r\n"),
            HandshakeError::MultipleProtocols,
        );
        assert_fails(
            &req,
            &switching("Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: a\r\n"),
            HandshakeError::MultipleProtocols,
        );
    }

    #[test]
    fn unoffered_extension_fails() {
        let mut req = request("ws://a/");
        assert_fails(
            &req,
            &switching("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
            HandshakeError::UnofferedExtension("permessage-deflate".into()),
        );
        req.extensions = Some("permessage-deflate; client_max_window_bits".into());
        assert_fails(
            &req,
            &switching("Sec-WebSocket-Extensions: permessage-deflate, x-other; a=1\r\n"),
            HandshakeError::UnofferedExtension("x-other".into()),
        );
        let accepted = validate(
            &req,
            &switching(
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\
                 Sec-WebSocket-Extensions: PerMessage-Deflate; x=\"a,b\"\r\n",
            ),
        )
        .expect("offered");
        assert_eq!(
            accepted.extensions.as_deref(),
            Some("permessage-deflate; server_no_context_takeover, PerMessage-Deflate; x=\"a,b\"")
        );
    }

    #[test]
    fn extension_names_follow_quotes() {
        assert_eq!(
            extension_names(" a ; x=1 ,b;y=\"p,q\\\",r\", ,c"),
            ["a", "b", "c"]
        );
        assert_eq!(extension_names(""), Vec::<&str>::new());
    }

    #[test]
    fn non_utf8_in_response_does_not_panic() {
        let mut req = request("ws://a/");
        req.protocols = vec!["chat".into()];
        let mut wire = switching("");
        wire.truncate(wire.len() - 2);
        wire.extend_from_slice(b"Sec-WebSocket-Protocol: \xff\r\n\r\n");
        assert_fails(
            &req,
            &wire,
            HandshakeError::InvalidResponseHeader("Sec-WebSocket-Protocol"),
        );
        let mut wire = switching("");
        wire.truncate(wire.len() - 2);
        wire.extend_from_slice(b"Sec-WebSocket-Extensions: \xff\r\n\r\n");
        assert_fails(
            &req,
            &wire,
            HandshakeError::InvalidResponseHeader("Sec-WebSocket-Extensions"),
        );
    }

    #[test]
    fn response_limits() {
        let wire = switching(&format!("X-Big: {}\r\n", "a".repeat(100)));
        let e = parse_response(&wire, 64).expect_err("too large");
        assert_eq!(e, HandshakeError::ResponseTooLarge { max: 64 });
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(matches!(parse_response(&wire[..64], 64), Ok(None)));

        let mut many = String::from("HTTP/1.1 101 Switching Protocols\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(
            parse_response(many.as_bytes(), DEFAULT_MAX_HANDSHAKE_SIZE),
            Err(HandshakeError::MalformedResponse(_))
        ));
    }

    #[test]
    fn malformed_response_fails() {
        for wire in [
            &b"HTTP/1.1 10 Short\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"SMTP 220 hello\r\n\r\n",
            b"HTTP/1.1 101 OK\r\nBad Header: 1\r\n\r\n",
        ] {
            let e = parse_response(wire, DEFAULT_MAX_HANDSHAKE_SIZE).expect_err("malformed");
            assert!(matches!(e, HandshakeError::MalformedResponse(_)), "{e:?}");
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        }
    }

    proptest! {
        /// A response head cut into any two pieces parses as `Ok(None)` then the same head.
        #[test]
        fn chunked_response_parse(cut in 0usize..200, trailing in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut wire = switching("Sec-WebSocket-Protocol: chat\r\n");
            let head_len = wire.len();
            wire.extend_from_slice(&trailing);
            let cut = cut.min(wire.len());
            match parse_response(&wire[..cut], DEFAULT_MAX_HANDSHAKE_SIZE) {
                Ok(None) => prop_assert!(cut < head_len),
                Ok(Some((_, used))) => prop_assert_eq!(used, head_len),
                Err(e) => prop_assert!(false, "{:?}", e),
            }
            let (resp, used) = parse_response(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)
                .expect("valid").expect("complete");
            prop_assert_eq!(used, head_len);
            let mut req = request("ws://a/");
            req.protocols = vec!["chat".into()];
            let accepted = validate_response(&req, &resp).expect("valid");
            prop_assert_eq!(accepted.protocol.as_deref(), Some("chat"));
        }

        /// Arbitrary bytes never panic the response parser or validator.
        #[test]
        fn arbitrary_response_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let req = request("ws://a/");
            if let Ok(Some((resp, _))) = parse_response(&bytes, 256) {
                let _ = validate_response(&req, &resp);
            }
        }

        /// Whatever the caller puts in the public fields, the request is one well-formed head
        /// that the server side parses.
        #[test]
        fn encoded_request_always_parses(
            resource in ".{0,24}",
            protocols in proptest::collection::vec(".{0,8}", 0..4),
            extensions in proptest::option::of(".{0,24}"),
        ) {
            let mut req = request("ws://a/");
            req.url.resource = resource;
            req.protocols = protocols;
            req.extensions = extensions;
            let wire = req.encode();
            let (head, used) = parse_request(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)
                .expect("well-formed").expect("complete");
            prop_assert_eq!(used, wire.len());
            prop_assert!(validate_request(&head).is_ok());
        }
    }
}
