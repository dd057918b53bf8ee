//! HTTP CONNECT tunnels (RFC 9110 section 9.3.6): the request, with `Proxy-Authorization:
//! Basic` (RFC 7617) when the proxy URL has credentials, and the reading of the proxy's
//! answer. Encoding and parsing are pure; [`tunnel`] is the small async driver around them.

use std::io;

use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::ProxyError;
use super::url::{Credentials, host_port};

/// The largest response head read from the proxy; a proxy that sends more is broken or
/// hostile, and nothing is buffered past it.
pub(crate) const MAX_REPLY_HEAD: usize = 8 * 1024;

/// Headers read from the proxy's answer, at most.
const MAX_HEADERS: usize = 32;

/// The CONNECT request for `host:port`.
pub(crate) fn encode_request(host: &str, port: u16, credentials: Option<&Credentials>) -> Vec<u8> {
    let target = host_port(host, port);
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(c) = credentials {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        out.extend_from_slice(b"Proxy-Authorization: Basic ");
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads the proxy's answer from `buf`: `Ok(Some(n))` when a 2xx head of `n` bytes is
/// complete (the tunnel is open), `Ok(None)` when more bytes are needed, the refusal
/// otherwise. Interim 1xx answers are skipped.
pub(crate) fn parse_reply(buf: &[u8]) -> Result<Option<usize>, ProxyError> {
    let mut offset = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let consumed = match response.parse(&buf[offset..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_REPLY_HEAD => {
                return Err(ProxyError::ResponseTooLarge {
                    limit: MAX_REPLY_HEAD,
                });
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProxyError::Malformed(
                    "too many headers in the CONNECT answer",
                ));
            }
            Err(_) => return Err(ProxyError::Malformed("the CONNECT answer is not HTTP/1.x")),
        };
        if offset + consumed > MAX_REPLY_HEAD {
            return Err(ProxyError::ResponseTooLarge {
                limit: MAX_REPLY_HEAD,
            });
        }
        let code = response.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| ProxyError::Malformed("invalid status code"))?;
        if status.is_informational() {
            offset += consumed;
            continue;
        }
        if status.is_success() {
            return Ok(Some(offset + consumed));
        }
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED || status == StatusCode::UNAUTHORIZED
        {
            let challenge = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("proxy-authenticate"))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned());
            return Err(ProxyError::AuthRequired { status, challenge });
        }
        return Err(ProxyError::Refused {
            status,
            reason: response.reason.unwrap_or("").trim().to_owned(),
        });
    }
}

/// Opens a tunnel to `host:port` through the HTTP proxy at the other end of `stream`.
/// Reads no byte past the proxy's answer: what follows belongs to the tunnel, and since a
/// WebSocket or TLS client speaks first, a proxy that sends more is broken.
pub(crate) async fn tunnel<S>(
    stream: &mut S,
    host: &str,
    port: u16,
    credentials: Option<&Credentials>,
) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(&encode_request(host, port, credentials))
        .await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(consumed) = parse_reply(&buf)? {
            if consumed != buf.len() {
                return Err(ProxyError::Malformed(
                    "the proxy sent data through the tunnel before the client did",
                ));
            }
            return Ok(());
        }
        // One byte past the limit is enough to tell that the head is too large.
        let room = MAX_REPLY_HEAD + 1 - buf.len();
        buf.reserve(room.min(4096));
        if stream.read_buf(&mut (&mut buf).limit(room)).await? == 0 {
            return Err(ProxyError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection before answering the CONNECT",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn request_bytes() {
        assert_eq!(
            encode_request("example.com", 443, None),
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        );
        // RFC 7617 section 2's example: Aladdin / open sesame.
        assert_eq!(
            String::from_utf8(encode_request(
                "::1",
                8080,
                Some(&creds("Aladdin", "open sesame"))
            ))
            .unwrap(),
            "CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n\
             Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
        );
    }

    #[test]
    fn established_under_any_split() {
        let answer =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 Connection established\r\nVia: p\r\n\r\n";
        for cut in 0..answer.len() {
            assert_eq!(parse_reply(&answer[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse_reply(answer).unwrap(), Some(answer.len()));
    }

    #[test]
    fn refusals_carry_the_status() {
        let e = parse_reply(
            b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\n\r\n",
        );
        match e {
            Err(ProxyError::AuthRequired { status, challenge }) => {
                assert_eq!(status, 407);
                assert_eq!(challenge.as_deref(), Some("Basic realm=\"t\""));
            }
            other => panic!("{other:?}"),
        }
        match parse_reply(b"HTTP/1.0 401 Unauthorized\r\n\r\n") {
            Err(ProxyError::AuthRequired { status, challenge }) => {
                assert_eq!((status.as_u16(), challenge), (401, None));
            }
            other => panic!("{other:?}"),
        }
        match parse_reply(b"HTTP/1.1 403 Forbidden\r\n\r\n") {
            Err(ProxyError::Refused { status, reason }) => {
                assert_eq!((status.as_u16(), reason.as_str()), (403, "Forbidden"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_reply(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[test]
    fn heads_over_the_limit_are_refused_before_buffering_more() {
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.resize(MAX_REPLY_HEAD + 1, b'y');
        // Partial (no end of head yet) but already over the limit.
        assert!(matches!(
            parse_reply(&head),
            Err(ProxyError::ResponseTooLarge {
                limit: MAX_REPLY_HEAD
            })
        ));
        head.truncate(MAX_REPLY_HEAD);
        assert_eq!(parse_reply(&head).unwrap(), None);
        let few = b"HTTP/1.1 200 OK\r\nX: y\r\n";
        assert_eq!(parse_reply(few).unwrap(), None);
    }

    #[tokio::test]
    async fn tunnel_rejects_bytes_after_the_answer_and_eof() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            let n = proxy.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"CONNECT h:1 HTTP/1.1\r\n"));
            proxy
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nunexpected")
                .await
                .unwrap();
            proxy
        });
        let e = tunnel(&mut client, "h", 1, None).await.unwrap_err();
        assert!(matches!(e, ProxyError::Malformed(_)), "{e:?}");
        drop(server.await.unwrap());

        let (mut client, proxy) = tokio::io::duplex(1024);
        drop(proxy);
        let e = tunnel(&mut client, "h", 1, None).await.unwrap_err();
        assert!(matches!(e, ProxyError::Io(_)), "{e:?}");
    }
}
