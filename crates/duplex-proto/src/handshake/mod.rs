//! The opening handshake (RFC 6455 section 4), both roles, sans-IO.
//!
//! Over HTTP/1.1 the client sends a `GET` with `Upgrade: websocket` and a
//! random `Sec-WebSocket-Key`, the server answers `101 Switching Protocols` with
//! `Sec-WebSocket-Accept` = base64(SHA-1(key ++ [`GUID`])) (section 1.3). Everything here is bytes
//! in, bytes out: the caller reads from its socket into a buffer, asks the parser whether a whole
//! head is there yet (`Ok(None)` = read more), and writes the bytes it gets back. Bytes after the
//! head (the first frames) are left to the caller, who gets the number of bytes consumed.
//!
//! Every runtime takes the same path, split into decide and encode (after quinn-proto and
//! rustls), so the rules live here once:
//!
//! - Server: [`parse_request`], [`validate_request`] into a [`ClientOffer`] the application
//!   looks at (path, query, Origin, subprotocols, extensions) and answers with
//!   `Result<`[`Accept`]`, `[`Reject`]`>`; [`ServerHandshake::decide`] turns that into an
//!   [`Upgrade`] (the answer and a configured [`Connection`](crate::Connection)) or a
//!   [`Refused`] (a [`HandshakeError`] and its status); `encode_http11` on either gives the
//!   bytes. After a refusal the server lingers within [`REFUSAL_LINGER`] and
//!   [`REFUSAL_DRAIN_LIMIT`].
//! - Client: a [`ClientHandshake`] around a [`ClientRequest`] ([`WsUrl`], key, subprotocols,
//!   a permessage-deflate offer) gives the request bytes; [`parse_response`] the answer, and
//!   [`ClientHandshake::finish`] checks it into [`Connected`] (a configured connection).
//! - HTTP/2 (RFC 8441): a server validates an extended CONNECT with
//!   [`validate_extended_connect`] (its offer has no key and
//!   [`ClientOffer::extended_connect`] set) and decides it with the same
//!   [`ServerHandshake::decide`], whose [`Upgrade::response`] is then `200` without
//!   `Sec-WebSocket-Accept`; a client sends [`ClientHandshake::extended_connect_request`] and
//!   checks the answer with [`ClientHandshake::finish_extended_connect`]. The HTTP/2 framing
//!   (and the `:protocol` pseudo-header) is the HTTP/2 library's.
//! - The building blocks stay public for servers that write their own heads:
//!   [`accept_response`], [`reject_response`], [`HandshakeError::response`],
//!   [`validate_response`] into [`Accepted`].
//!
//! # Lingering after a refusal
//!
//! A server that refuses writes the response ([`Refused::encode_http11`]), shuts its write
//! side, and then reads and discards what the client still sends, for at most
//! [`REFUSAL_LINGER`] and [`REFUSAL_DRAIN_LIMIT`] bytes, whichever comes first, or until the
//! client closes. Why: closing a socket with unread bytes in its receive buffer makes the
//! kernel send a reset, and a reset can destroy the response before the client read it
//! (RFC 9112 section 9.6); draining for a moment lets the answer arrive, and the bounds keep a
//! client that never stops sending from holding the server. The I/O is each runtime's; the
//! bounds are these.
//!
//! # Limits
//!
//! Limits are checked before anything is allocated: a head larger than `max_size`
//! ([`DEFAULT_MAX_HANDSHAKE_SIZE`]) or with more than [`MAX_HEADERS`] header lines fails with
//! `431 Request Header Fields Too Large` (RFC 6585 section 5) rather than a generic 400, so a
//! client that sends too many cookies learns why.
//!
//! ```
//! use duplex_proto::handshake::{
//!     parse_request, parse_response, validate_request, Accept, ClientHandshake, ClientRequest,
//!     Reject, ServerHandshake, DEFAULT_MAX_HANDSHAKE_SIZE,
//! };
//! use duplex_proto::{Config, Message};
//!
//! // Client: build the request (the 16 key bytes come from the caller's RNG).
//! let mut request = ClientRequest::new("ws://example.com/chat".parse()?, [7; 16]);
//! request.protocols.push("chat".into());
//! let client = ClientHandshake::new(request, Config::default());
//! let wire = client.encode();
//!
//! // Server: parse, validate, let the application choose, decide, encode.
//! let (head, used) = parse_request(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)?.expect("complete");
//! assert_eq!(used, wire.len()); // wire[used..] would be the client's first frames
//! let offer = validate_request(&head)?;
//! let choice = match head.uri().path() {
//!     "/chat" => Ok(Accept { protocol: offer.select_protocol(&["chat"]).map(Into::into), ..Accept::default() }),
//!     _ => Err(Reject::new(http::StatusCode::NOT_FOUND, "no such endpoint")),
//! };
//! let config = Config::default();
//! let upgrade = ServerHandshake::new(&config).decide(&offer, choice)?;
//! let answer = upgrade.encode_http11();
//! let mut server = upgrade.connection;
//!
//! // Client: check the 101; both sides now hold a configured connection.
//! let (response, _) = parse_response(&answer, DEFAULT_MAX_HANDSHAKE_SIZE)?.expect("complete");
//! let connected = client.finish(&response)?;
//! assert_eq!(connected.protocol.as_deref(), Some("chat"));
//! let mut client = connected.connection;
//! client.send(Message::text("hi"))?;
//! let mut bytes = bytes::BytesMut::new();
//! while let Some(transmit) = client.poll_transmit() {
//!     bytes.extend_from_slice(transmit.head());
//!     bytes.extend_from_slice(transmit.payload());
//! }
//! server.recv(&mut bytes)?;
//! assert!(matches!(server.poll_event(), Some(duplex_proto::Event::Message(m)) if m == Message::text("hi")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha1::{Digest, Sha1};

mod accept;
pub mod client;
mod connect;
mod error;
pub mod server;
mod url;

pub use accept::{
    Accept, REFUSAL_DRAIN_LIMIT, REFUSAL_LINGER, Refused, Reject, ServerHandshake, Upgrade,
};
pub use client::{Accepted, ClientRequest, parse_response, validate_response};
pub use connect::{ClientHandshake, Connected};
pub use error::{HandshakeError, UrlError};
pub use server::{
    ClientOffer, accept_response, parse_request, reject_response, validate_extended_connect,
    validate_request,
};
pub use url::WsUrl;

/// The GUID appended to the key before hashing (RFC 6455 section 1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Default limit on the size of a request or response head, in bytes.
pub const DEFAULT_MAX_HANDSHAKE_SIZE: usize = 16 * 1024;

/// Most header lines a head may carry; one more fails with
/// [`HandshakeError::TooManyHeaders`] (431). The parser works in a fixed array of this size on the
/// stack, so the limit costs no allocation.
pub const MAX_HEADERS: usize = 64;

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 section 1.3 and 4.2.2):
/// base64(SHA-1(key ++ [`GUID`])).
///
/// ```
/// use duplex_proto::handshake::accept_key;
/// assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    AcceptKey::new(key).as_str().to_owned()
}

/// A `Sec-WebSocket-Accept` value held inline: base64 of a 20-byte SHA-1 digest is always 28
/// characters, so the accept path needs no allocation for it.
#[derive(Clone, Copy)]
struct AcceptKey([u8; 28]);

impl AcceptKey {
    /// base64(SHA-1(key ++ [`GUID`])) (RFC 6455 section 1.3).
    fn new(key: &[u8]) -> AcceptKey {
        let mut sha1 = Sha1::new();
        sha1.update(key);
        sha1.update(GUID.as_bytes());
        let mut out = [0u8; 28];
        // 20 bytes encode to exactly 28 characters, so the slice always fits.
        let written = STANDARD
            .encode_slice(sha1.finalize(), &mut out)
            .unwrap_or_default();
        debug_assert_eq!(written, out.len());
        AcceptKey(out)
    }

    fn as_str(&self) -> &str {
        // base64 output is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for AcceptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Optional whitespace around list elements and header values (RFC 9110 section 5.6.3).
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The non-empty elements of every `name` header, read as comma-separated lists (RFC 9110
/// section 5.6.1), trimmed. Works on bytes, so non-UTF-8 values are harmless.
fn list_elements<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

/// Whether a `name` header lists `token`, compared case-insensitively (`Connection: keep-alive,
/// Upgrade` lists `upgrade`).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_elements(headers, name).any(|element| element.eq_ignore_ascii_case(token.as_bytes()))
}

/// A token (RFC 9110 section 5.6.2): what a subprotocol name must be (RFC 6455 section 4.1).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be written as a header value we produce: visible ASCII, space and tab
/// only. No CR or LF, so it cannot split the head; no obs-text, so the peer can read it as text
/// ([`HeaderValue::to_str`]).
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Converts httparse's borrowed headers into an owned [`HeaderMap`].
fn to_header_map(headers: &[httparse::Header<'_>]) -> Result<HeaderMap, &'static str> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for header in headers {
        let name =
            HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_bytes(header.value).map_err(|_| "invalid header value")?;
        map.append(name, value);
    }
    Ok(map)
}

/// httparse's own wording for its errors (its `Display`), without exposing its type.
fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid new line",
        httparse::Error::Status => "invalid response status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// httparse's minor version (it only parses HTTP/1.x) as an [`http::Version`].
fn http1_version(minor: u8) -> http::Version {
    if minor == 0 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    }
}

/// Appends `name: value\r\n`.
fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends every header of `extra` except those named in `skip`. [`HeaderValue`] cannot hold CR
/// or LF, so this cannot split the head.
fn put_extra_headers(out: &mut Vec<u8>, extra: &HeaderMap, skip: &[HeaderName]) {
    for (name, value) in extra {
        if !skip.contains(name) {
            put_header(out, name.as_str(), value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONNECTION;

    #[test]
    fn accept_key_rfc_6455_section_1_3_vector() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn token_lists_are_case_insensitive_and_comma_separated() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static("keep-alive, UpGrAdE"));
        assert!(has_token(&headers, &CONNECTION, "upgrade"));
        assert!(has_token(&headers, &CONNECTION, "Keep-Alive"));
        assert!(!has_token(&headers, &CONNECTION, "close"));

        let mut split = HeaderMap::new();
        split.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        split.append(CONNECTION, HeaderValue::from_static(" ,\tUpgrade ,"));
        assert!(has_token(&split, &CONNECTION, "upgrade"));
        // A substring is not a token.
        let mut partial = HeaderMap::new();
        partial.append(CONNECTION, HeaderValue::from_static("upgrade-ish"));
        assert!(!has_token(&partial, &CONNECTION, "upgrade"));
    }

    #[test]
    fn token_lists_tolerate_non_utf8() {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_bytes(b"\xff\xfe, upgrade").expect("obs-text is allowed");
        headers.append(CONNECTION, value);
        assert!(has_token(&headers, &CONNECTION, "upgrade"));
    }

    #[test]
    fn trim_ows_handles_edges() {
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b" a b\t"), b"a b");
    }

    #[test]
    fn tokens_and_header_values() {
        assert!(is_token("chat.v2"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a,b"));
        assert!(is_header_value("permessage-deflate; x=\"a b\""));
        assert!(!is_header_value("a\r\nInjected: yes"));
    }
}
