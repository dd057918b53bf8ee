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
    let accepted = validate(&req, &switching("Sec-WebSocket-Protocol: chat\r\n")).expect("offered");
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
