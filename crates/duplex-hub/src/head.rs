//! HTTP/1.1 request heads (RFC 9112), pure: bytes in, the parsed request and every decision
//! the server takes from its head out (keep the connection open? how long is the body, or
//! why can it not be read?). No I/O, so the server and the fuzz target
//! ([`crate::fuzzing::parse_http_head`]) run the same code.

use duplex_proto::handshake::{HandshakeError, parse_request};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode, Version};

/// Largest request head.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// A complete request head and what the server makes of it.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) request: Request<()>,
    /// Bytes of the head at the start of the buffer.
    pub(crate) len: usize,
    /// The client wants the connection kept open after the response (RFC 9112 section 9.3).
    pub(crate) keep_alive: bool,
    /// How long the body is, or why it cannot be read (ignored for `/ws`, which has none).
    pub(crate) body: Result<BodyFraming, FramingError>,
}

/// The body's framing: the server reads only `Content-Length` bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyFraming {
    /// Bytes of body after the head.
    pub(crate) length: usize,
    /// `Expect: 100-continue` (RFC 9110 section 10.1.1): the client waits for an interim
    /// response before sending the body.
    pub(crate) expects_continue: bool,
}

/// Why a request's body cannot be framed: answered, then the connection is closed (the
/// rest of the request cannot be told from the next one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// `Transfer-Encoding` (chunked): not supported.
    Chunked,
    /// A POST without `Content-Length`.
    LengthRequired,
    /// A `Content-Length` that is not a number.
    InvalidLength,
    /// More than one `Content-Length` (RFC 9112 section 6.3, item 5).
    TwoLengths,
    /// Over `max_message_size`.
    TooLarge { length: u64, max: usize },
}

impl FramingError {
    /// The response's status.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            FramingError::Chunked | FramingError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            FramingError::InvalidLength | FramingError::TwoLengths => StatusCode::BAD_REQUEST,
            FramingError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The response's message.
    pub(crate) fn message(self) -> String {
        match self {
            FramingError::Chunked => "chunked bodies are not supported: send Content-Length".into(),
            FramingError::LengthRequired => "POST needs a Content-Length".into(),
            FramingError::InvalidLength => "invalid Content-Length".into(),
            FramingError::TwoLengths => "more than one Content-Length".into(),
            FramingError::TooLarge { length, max } => {
                format!("body of {length} bytes is over the limit of {max} bytes")
            }
        }
    }
}

/// Parses the request head at the start of `buf` (at most [`MAX_HEAD`] bytes of it).
/// `Ok(None)`: incomplete, read more. `Err`: not a request the server can answer other than
/// with the error's response.
pub(crate) fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<Head>, HandshakeError> {
    let Some((request, len)) = parse_request(buf, MAX_HEAD)? else {
        return Ok(None);
    };
    Ok(Some(Head {
        keep_alive: wants_keep_alive(&request),
        body: body_framing(&request, max_body),
        request,
        len,
    }))
}

/// The headers' lines of `name`, found by walking the map: a request has a handful of lines,
/// and comparing standard names is cheaper than hashing one per lookup (each lookup below
/// was one on every request).
fn lines<'a>(
    request: &'a Request<()>,
    name: &'a http::HeaderName,
) -> impl Iterator<Item = &'a http::HeaderValue> + 'a {
    request
        .headers()
        .iter()
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v)
}

pub(crate) fn wants_keep_alive(request: &Request<()>) -> bool {
    let connection = lines(request, &CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .fold((false, false), |(close, keep), token| {
            (
                close || token.eq_ignore_ascii_case("close"),
                keep || token.eq_ignore_ascii_case("keep-alive"),
            )
        });
    match request.version() {
        Version::HTTP_10 => connection.1 && !connection.0,
        _ => !connection.0,
    }
}

pub(crate) fn body_framing(
    request: &Request<()>,
    max_body: usize,
) -> Result<BodyFraming, FramingError> {
    if lines(request, &TRANSFER_ENCODING).next().is_some() {
        return Err(FramingError::Chunked);
    }
    let mut lengths = lines(request, &CONTENT_LENGTH);
    let length = match (lengths.next(), lengths.next()) {
        (None, _) if request.method() == Method::POST => {
            return Err(FramingError::LengthRequired);
        }
        (None, _) => 0,
        (Some(value), None) => digits(value.as_bytes()).ok_or(FramingError::InvalidLength)?,
        (Some(_), Some(_)) => return Err(FramingError::TwoLengths),
    };
    if length > max_body as u64 {
        return Err(FramingError::TooLarge {
            length,
            max: max_body,
        });
    }
    let expects_continue = lines(request, &EXPECT)
        .next()
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(BodyFraming {
        length: length as usize,
        expects_continue,
    })
}

/// A `Content-Length` value: decimal digits only (RFC 9110 section 8.6: `1*DIGIT`), without
/// sign, inner space, radix prefix or overflow. `str::parse` would take `+30`, and a proxy in
/// front that reads the header differently could then be fed a smuggled request. Whitespace
/// around the value is not part of it (RFC 9110 section 5.5): httparse strips it.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), 100)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn keep_alive_rules() {
        let mut r = Request::get("/").body(()).unwrap();
        assert!(wants_keep_alive(&r));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        assert!(!wants_keep_alive(&r));
        let mut r = Request::get("/").body(()).unwrap();
        *r.version_mut() = Version::HTTP_10;
        assert!(!wants_keep_alive(&r));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(wants_keep_alive(&r));
        assert!(!head("GET / HTTP/1.1\r\nConnection: x, CLOSE\r\n\r\n").keep_alive);
    }

    #[test]
    fn heads_are_parsed_when_complete() {
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 100)
                .unwrap()
                .is_none()
        );
        let text = "POST /api/publish HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let parsed = head(text);
        assert_eq!(parsed.len, text.len() - 7);
        assert_eq!(parsed.request.uri().path(), "/api/publish");
        assert!(parsed.keep_alive);
        assert_eq!(
            parsed.body,
            Ok(BodyFraming {
                length: 7,
                expects_continue: false
            })
        );
        assert!(parse_head(b"\x00\x01 nonsense\r\n\r\n", 100).is_err());
    }

    #[test]
    fn bodies_are_framed_by_one_content_length_within_the_limit() {
        let cases = [
            ("GET / HTTP/1.1\r\n\r\n", Ok(0), false),
            (
                "POST / HTTP/1.1\r\nContent-Length: 100\r\nExpect: 100-Continue\r\n\r\n",
                Ok(100),
                true,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                Err(FramingError::Chunked),
                false,
            ),
            (
                "POST / HTTP/1.1\r\n\r\n",
                Err(FramingError::LengthRequired),
                false,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                Err(FramingError::InvalidLength),
                false,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Err(FramingError::TwoLengths),
                false,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
                Err(FramingError::TooLarge {
                    length: 101,
                    max: 100,
                }),
                false,
            ),
        ];
        for (text, length, expects_continue) in cases {
            let expected = length.map(|length| BodyFraming {
                length,
                expects_continue,
            });
            assert_eq!(head(text).body, expected, "{text:?}");
        }
        // Digits only: no sign, no inner space, no radix, no overflow, nothing empty.
        for value in [
            "+30",
            "-0",
            "3 0",
            "0x1e",
            "1e2",
            "30,30",
            "\u{b}30",
            "\u{c}30",
            "99999999999999999999",
            "18446744073709551616",
        ] {
            let text = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            match parse_head(text.as_bytes(), 100) {
                Ok(Some(parsed)) => {
                    assert_eq!(parsed.body, Err(FramingError::InvalidLength), "{value:?}")
                }
                // httparse refusing the head outright is a refusal too (400).
                Ok(None) => panic!("{value:?}: incomplete"),
                Err(_) => {}
            }
        }
        assert_eq!(digits(b"030"), Some(30));
        assert_eq!(digits(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(digits(b""), None);
        let statuses = [
            (FramingError::Chunked, 411),
            (FramingError::LengthRequired, 411),
            (FramingError::InvalidLength, 400),
            (FramingError::TwoLengths, 400),
            (FramingError::TooLarge { length: 9, max: 1 }, 413),
        ];
        for (error, status) in statuses {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert!(!error.message().is_empty());
        }
    }
}
