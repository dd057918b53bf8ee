use super::*;
use crate::handshake::DEFAULT_MAX_HANDSHAKE_SIZE;
use http::HeaderValue;
use proptest::prelude::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The RFC 6455 section 1.2 example request, with `lines` replacing or adding headers.
fn request_with(first_line: &str, lines: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut headers: Vec<(String, String)> = vec![
        ("Host".into(), "server.example.com".into()),
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
        ("Sec-WebSocket-Key".into(), KEY.into()),
        ("Origin".into(), "http://example.com".into()),
        ("Sec-WebSocket-Protocol".into(), "chat, superchat".into()),
        ("Sec-WebSocket-Version".into(), "13".into()),
    ];
    for (name, value) in lines {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            headers.push(((*name).into(), (*value).into()));
        }
    }
    let mut out = format!("{first_line}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn good_request() -> Vec<u8> {
    request_with("GET /chat?room=1 HTTP/1.1", &[])
}

fn parse(wire: &[u8]) -> Result<Request<()>, HandshakeError> {
    match parse_request(wire, DEFAULT_MAX_HANDSHAKE_SIZE)? {
        Some((request, consumed)) => {
            assert_eq!(consumed, wire.len());
            Ok(request)
        }
        None => panic!("incomplete test request"),
    }
}

fn check(wire: &[u8]) -> Result<ClientOffer, HandshakeError> {
    validate_request(&parse(wire)?)
}

fn check_err(wire: &[u8]) -> HandshakeError {
    match check(wire) {
        Ok(offer) => panic!("accepted: {offer:?}"),
        Err(e) => e,
    }
}

fn assert_fails(wire: &[u8], expected: HandshakeError, status: u16) {
    let e = check_err(wire);
    assert_eq!(e, expected);
    assert_eq!(e.status().as_u16(), status);
    let response = e.response();
    let status_line = format!("HTTP/1.1 {status} ");
    assert!(response.starts_with(status_line.as_bytes()));
}

#[test]
fn rfc_example_request_is_accepted() {
    let request = parse(&good_request()).expect("parses");
    assert_eq!(request.method(), Method::GET);
    assert_eq!(request.uri().path(), "/chat");
    assert_eq!(request.uri().query(), Some("room=1"));
    assert_eq!(request.version(), Version::HTTP_11);
    assert_eq!(request.headers()["host"], "server.example.com");
    let offer = validate_request(&request).expect("valid");
    assert_eq!(
        offer,
        ClientOffer {
            key: KEY.into(),
            protocols: vec!["chat".into(), "superchat".into()],
            extensions: None,
            origin: Some("http://example.com".into()),
            extended_connect: false,
        }
    );
}

#[test]
fn rfc_example_response_is_produced() {
    let offer = check(&good_request()).expect("valid");
    let response = accept_response(&offer, Some("chat"), None, &HeaderMap::new());
    assert_eq!(
        String::from_utf8(response).expect("ascii"),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Protocol: chat\r\n\r\n"
    );
}

#[test]
fn header_names_are_case_insensitive() {
    let wire = b"GET / HTTP/1.1\r\nhost: a\r\nUPGRADE: WebSocket\r\nconnection: UPGRADE\r\n\
            sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\
            sEc-WeBsOcKeT-pRoToCoL: x\r\n\r\n";
    let offer = check(wire).expect("valid");
    assert_eq!(offer.protocols, ["x"]);
}

#[test]
fn connection_is_a_token_list() {
    let wire = request_with(
        "GET / HTTP/1.1",
        &[("Connection", Some("keep-alive, Upgrade"))],
    );
    assert!(check(&wire).is_ok());
    let wire = request_with("GET / HTTP/1.1", &[("Upgrade", Some("foo/2, WebSocket"))]);
    assert!(check(&wire).is_ok());
}

#[test]
fn multiple_protocol_headers_are_merged_and_trimmed() {
    let wire = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Protocol:  v2.chat ,v1.chat\r\nSec-WebSocket-Protocol: ,mqtt,\t\r\n\
            Sec-WebSocket-Protocol: v1.chat\r\n\r\n";
    let offer = check(wire).expect("valid");
    assert_eq!(offer.protocols, ["v2.chat", "v1.chat", "mqtt"]);
    assert_eq!(offer.select_protocol(&["mqtt", "v1.chat"]), Some("mqtt"));
}

#[test]
fn multiple_extension_headers_are_joined() {
    let wire = request_with(
        "GET / HTTP/1.1",
        &[
            (
                "Sec-WebSocket-Extensions",
                Some("permessage-deflate; client_max_window_bits"),
            ),
            ("X-Other", Some("1")),
        ],
    );
    // A second Sec-WebSocket-Extensions header after the first.
    let mut text = String::from_utf8(wire).expect("ascii");
    text.insert_str(
        text.len() - 2,
        "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
    );
    let offer = check(text.as_bytes()).expect("valid");
    assert_eq!(
        offer.extensions.as_deref(),
        Some("permessage-deflate; client_max_window_bits, x-webkit-deflate-frame")
    );
}

#[test]
fn non_get_is_405_with_allow() {
    let wire = request_with("POST /chat HTTP/1.1", &[]);
    assert_fails(&wire, HandshakeError::MethodNotAllowed(Method::POST), 405);
    let response = String::from_utf8(check_err(&wire).response()).expect("ascii");
    assert!(response.contains("\r\nAllow: GET\r\n"));
}

#[test]
fn http_1_0_is_400() {
    let wire = request_with("GET /chat HTTP/1.0", &[]);
    assert_fails(
        &wire,
        HandshakeError::UnsupportedHttpVersion(Version::HTTP_10),
        400,
    );
}

#[test]
fn missing_host_is_400() {
    let wire = request_with("GET / HTTP/1.1", &[("Host", None)]);
    assert_fails(&wire, HandshakeError::MissingHeader("Host"), 400);
}

#[test]
fn repeated_or_empty_host_is_400() {
    let mut text = String::from_utf8(good_request()).expect("ascii");
    text.insert_str(text.len() - 2, "Host: other.example\r\n");
    assert_fails(text.as_bytes(), HandshakeError::InvalidHeader("Host"), 400);
    let wire = request_with("GET / HTTP/1.1", &[("Host", Some(""))]);
    assert_fails(&wire, HandshakeError::InvalidHeader("Host"), 400);
}

#[test]
fn missing_upgrade_is_400() {
    let wire = request_with("GET / HTTP/1.1", &[("Upgrade", None)]);
    assert_fails(&wire, HandshakeError::MissingHeader("Upgrade"), 400);
}

#[test]
fn upgrade_to_something_else_is_400() {
    let wire = request_with("GET / HTTP/1.1", &[("Upgrade", Some("h2c"))]);
    assert_fails(&wire, HandshakeError::InvalidHeader("Upgrade"), 400);
}

#[test]
fn missing_connection_is_400() {
    let wire = request_with("GET / HTTP/1.1", &[("Connection", None)]);
    assert_fails(&wire, HandshakeError::MissingHeader("Connection"), 400);
}

#[test]
fn connection_without_upgrade_is_400() {
    let wire = request_with("GET / HTTP/1.1", &[("Connection", Some("keep-alive"))]);
    assert_fails(&wire, HandshakeError::InvalidHeader("Connection"), 400);
}

#[test]
fn missing_key_is_400() {
    let wire = request_with("GET / HTTP/1.1", &[("Sec-WebSocket-Key", None)]);
    assert_fails(
        &wire,
        HandshakeError::MissingHeader("Sec-WebSocket-Key"),
        400,
    );
}

#[test]
fn key_of_wrong_length_is_400() {
    // base64 of 15 and of 17 bytes.
    for key in ["AAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAA="] {
        let wire = request_with("GET / HTTP/1.1", &[("Sec-WebSocket-Key", Some(key))]);
        assert_fails(
            &wire,
            HandshakeError::InvalidHeader("Sec-WebSocket-Key"),
            400,
        );
    }
    let wire = request_with(
        "GET / HTTP/1.1",
        &[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAA"))],
    );
    assert_fails(
        &wire,
        HandshakeError::InvalidHeader("Sec-WebSocket-Key"),
        400,
    );
}

#[test]
fn key_that_is_not_base64_is_400() {
    let wire = request_with(
        "GET / HTTP/1.1",
        &[("Sec-WebSocket-Key", Some("not*base64*at*all*here!!"))],
    );
    assert_fails(
        &wire,
        HandshakeError::InvalidHeader("Sec-WebSocket-Key"),
        400,
    );
}

#[test]
fn repeated_key_is_400() {
    let mut text = String::from_utf8(good_request()).expect("ascii");
    text.insert_str(text.len() - 2, &format!("Sec-WebSocket-Key: {KEY}\r\n"));
    assert_fails(
        text.as_bytes(),
        HandshakeError::InvalidHeader("Sec-WebSocket-Key"),
        400,
    );
}

#[test]
fn other_version_is_426_with_version_header() {
    let wire = request_with("GET / HTTP/1.1", &[("Sec-WebSocket-Version", Some("8"))]);
    assert_fails(&wire, HandshakeError::UnsupportedVersion("8".into()), 426);
    let response = String::from_utf8(check_err(&wire).response()).expect("ascii");
    assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"));
}

#[test]
fn missing_version_is_400() {
    let wire = request_with("GET / HTTP/1.1", &[("Sec-WebSocket-Version", None)]);
    assert_fails(
        &wire,
        HandshakeError::MissingHeader("Sec-WebSocket-Version"),
        400,
    );
}

#[test]
fn invalid_protocol_token_is_400() {
    let wire = request_with(
        "GET / HTTP/1.1",
        &[("Sec-WebSocket-Protocol", Some("chat, a b"))],
    );
    assert_fails(
        &wire,
        HandshakeError::InvalidHeader("Sec-WebSocket-Protocol"),
        400,
    );
}

#[test]
fn oversized_head_is_431() {
    let mut wire = good_request();
    let padding = format!(
        "X-Padding: {}\r\n\r\n",
        "a".repeat(DEFAULT_MAX_HANDSHAKE_SIZE)
    );
    wire.truncate(wire.len() - 2);
    wire.extend_from_slice(padding.as_bytes());
    let e = parse_request(&wire, DEFAULT_MAX_HANDSHAKE_SIZE).expect_err("too large");
    assert_eq!(
        e,
        HandshakeError::RequestTooLarge {
            max: DEFAULT_MAX_HANDSHAKE_SIZE
        }
    );
    assert_eq!(e.status().as_u16(), 431);
    // Up to the limit it is only incomplete.
    assert!(matches!(
        parse_request(
            &wire[..DEFAULT_MAX_HANDSHAKE_SIZE],
            DEFAULT_MAX_HANDSHAKE_SIZE
        ),
        Ok(None)
    ));
    // A complete head longer than the limit is too large as well.
    let small = good_request();
    let e = parse_request(&small, 40).expect_err("too large");
    assert_eq!(e, HandshakeError::RequestTooLarge { max: 40 });
}

#[test]
fn too_many_headers_is_431() {
    let mut text = String::from_utf8(good_request()).expect("ascii");
    text.truncate(text.len() - 2);
    for i in 0..MAX_HEADERS {
        text.push_str(&format!("X-{i}: {i}\r\n"));
    }
    text.push_str("\r\n");
    let e = parse_request(text.as_bytes(), DEFAULT_MAX_HANDSHAKE_SIZE).expect_err("too many");
    assert_eq!(e, HandshakeError::TooManyHeaders { max: MAX_HEADERS });
    assert_eq!(e.status().as_u16(), 431);
}

#[test]
fn malformed_request_line_is_400() {
    for wire in [
        &b"GET\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / FOO\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    ] {
        let e = parse_request(wire, DEFAULT_MAX_HANDSHAKE_SIZE).expect_err("malformed");
        assert!(
            matches!(e, HandshakeError::MalformedRequest(_)),
            "{wire:?}: {e:?}"
        );
        assert_eq!(e.status().as_u16(), 400);
    }
}

#[test]
fn non_utf8_header_values_do_not_panic() {
    let mut wire = good_request();
    wire.truncate(wire.len() - 2);
    wire.extend_from_slice(b"X-Binary: \xff\xfe\x80\r\n\r\n");
    assert!(check(&wire).is_ok(), "unrelated non-UTF-8 header is fine");

    for name in [
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
        "Origin",
    ] {
        let mut wire = request_with("GET / HTTP/1.1", &[(name, None)]);
        wire.truncate(wire.len() - 2);
        wire.extend_from_slice(format!("{name}: ").as_bytes());
        wire.extend_from_slice(b"\xc3\x28\xff\r\n\r\n");
        let e = check_err(&wire);
        assert_eq!(e, HandshakeError::InvalidHeader(name));
        let _ = e.response();
    }
    // Host is only required, not interpreted: an opaque value is the application's business.
    for name in [
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
    ] {
        let mut wire = request_with("GET / HTTP/1.1", &[(name, None)]);
        wire.truncate(wire.len() - 2);
        wire.extend_from_slice(format!("{name}: ").as_bytes());
        wire.extend_from_slice(b"\xff\r\n\r\n");
        let e = check_err(&wire);
        assert_eq!(e.status().as_u16() / 100, 4, "{name}: {e:?}");
        let _ = e.response();
    }
}

#[test]
fn every_two_way_split_parses_the_same() {
    let mut wire = good_request();
    let head_len = wire.len();
    wire.extend_from_slice(b"\x81\x85leftover");
    let (whole, consumed) = parse_request(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)
        .expect("valid")
        .expect("complete");
    assert_eq!(consumed, head_len);
    for split in 0..head_len {
        assert!(
            matches!(
                parse_request(&wire[..split], DEFAULT_MAX_HANDSHAKE_SIZE),
                Ok(None)
            ),
            "split at {split}"
        );
    }
    for end in head_len..=wire.len() {
        let (request, used) = parse_request(&wire[..end], DEFAULT_MAX_HANDSHAKE_SIZE)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, head_len);
        assert_eq!(request.uri(), whole.uri());
        assert_eq!(request.headers(), whole.headers());
    }
}

#[test]
fn accept_response_writes_extensions_and_extra_headers() {
    let offer = check(&good_request()).expect("valid");
    let mut extra = HeaderMap::new();
    extra.insert("set-cookie", HeaderValue::from_static("id=1"));
    // Ignored: the handshake's own headers cannot be overridden.
    extra.insert(CONNECTION, HeaderValue::from_static("close"));
    extra.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    let response = accept_response(
        &offer,
        None,
        Some("permessage-deflate; server_no_context_takeover"),
        &extra,
    );
    assert_eq!(
        String::from_utf8(response).expect("ascii"),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\
             set-cookie: id=1\r\n\r\n"
    );
}

#[test]
fn accept_response_never_writes_injected_lines() {
    let offer = check(&good_request()).expect("valid");
    let response = accept_response(
        &offer,
        Some("chat\r\nX-Evil: 1"),
        Some("x\r\nX-Evil: 2"),
        &HeaderMap::new(),
    );
    let text = String::from_utf8(response).expect("ascii");
    assert!(!text.contains("Evil"));
    assert!(text.ends_with("\r\n\r\n"));
}

#[test]
fn reject_response_has_body_and_length() {
    let mut extra = HeaderMap::new();
    extra.insert("retry-after", HeaderValue::from_static("30"));
    extra.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    let response = reject_response(StatusCode::SERVICE_UNAVAILABLE, "busy: é", &extra);
    assert_eq!(
        String::from_utf8(response).expect("utf-8"),
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 30\r\n\
             Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\
             Content-Length: 8\r\n\r\nbusy: é"
    );
    // A status without a canonical reason still has a well-formed status line.
    let response = reject_response(StatusCode::from_u16(499).expect("valid"), "", &extra);
    assert!(response.starts_with(b"HTTP/1.1 499 \r\n"));
}

#[test]
fn origin_refusal_is_403() {
    let offer = check(&good_request()).expect("valid");
    let e = HandshakeError::OriginNotAllowed(offer.origin);
    assert_eq!(e.status(), StatusCode::FORBIDDEN);
    assert!(e.response().starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
}

proptest! {
    /// A head cut into any chunks parses the same as in one piece, and is `Ok(None)` until
    /// its last byte.
    #[test]
    fn chunked_parse_matches_whole(
        cuts in proptest::collection::vec(0usize..400, 0..12),
        extra in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,40}"), 0..8),
        trailing in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let lines: Vec<(String, String)> = extra
            .into_iter()
            .map(|(name, value)| (format!("x-{name}"), value.trim().to_owned()))
            .collect();
        let borrowed: Vec<(&str, Option<&str>)> =
            lines.iter().map(|(n, v)| (n.as_str(), Some(v.as_str()))).collect();
        let mut wire = request_with("GET /p?q=1 HTTP/1.1", &borrowed);
        let head_len = wire.len();
        wire.extend_from_slice(&trailing);
        let (whole, used) = parse_request(&wire, DEFAULT_MAX_HANDSHAKE_SIZE)
            .expect("valid").expect("complete");
        prop_assert_eq!(used, head_len);
        let whole_offer = validate_request(&whole).expect("valid");

        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut parsed = None;
        for end in cuts {
            match parse_request(&wire[..end], DEFAULT_MAX_HANDSHAKE_SIZE) {
                Ok(None) => prop_assert!(end < head_len),
                Ok(Some((request, used))) => {
                    prop_assert!(end >= head_len);
                    prop_assert_eq!(used, head_len);
                    parsed = Some(request);
                    break;
                }
                Err(e) => prop_assert!(false, "error at {}: {:?}", end, e),
            }
        }
        let request = parsed.expect("the last cut is the whole buffer");
        prop_assert_eq!(request.uri(), whole.uri());
        prop_assert_eq!(request.headers(), whole.headers());
        prop_assert_eq!(validate_request(&request).expect("valid"), whole_offer);
    }

    /// Arbitrary bytes never panic, and every error has a writable response.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        match parse_request(&bytes, 256) {
            Ok(Some((request, used))) => {
                prop_assert!(used <= 256);
                if let Err(e) = validate_request(&request) {
                    let _ = e.response();
                }
            }
            Ok(None) => prop_assert!(bytes.len() <= 256),
            Err(e) => { let _ = e.response(); }
        }
    }

    /// A valid head with arbitrary header noise never panics either.
    #[test]
    fn noisy_headers_never_panic(value in proptest::collection::vec(any::<u8>(), 0..64)) {
        for name in ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key",
                     "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
                     "Sec-WebSocket-Extensions", "Origin"] {
            let mut wire = request_with("GET / HTTP/1.1", &[(name, None)]);
            wire.truncate(wire.len() - 2);
            wire.extend_from_slice(name.as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(&value);
            wire.extend_from_slice(b"\r\n\r\n");
            if let Ok(Some((request, _))) = parse_request(&wire, DEFAULT_MAX_HANDSHAKE_SIZE) {
                if let Err(e) = validate_request(&request) {
                    let _ = e.response();
                }
            }
        }
    }
}

proptest! {
    /// RFC 8441: whatever the peer puts in an extended CONNECT's headers and `:protocol`,
    /// validation answers (no panic) with an offer or a refusal of the client's statuses, and
    /// an offer only for `:protocol = websocket` and version 13.
    #[test]
    fn extended_connect_validation_never_panics(
        protocol in proptest::option::of(prop_oneof![
            Just("websocket".to_owned()),
            Just("WebSocket".to_owned()),
            "[ -~]{0,12}",
        ]),
        headers in proptest::collection::vec(
            (
                prop_oneof![
                    Just("sec-websocket-version"),
                    Just("sec-websocket-protocol"),
                    Just("sec-websocket-extensions"),
                    Just("sec-websocket-key"),
                    Just("origin"),
                    Just("x-other"),
                ],
                proptest::collection::vec(any::<u8>(), 0..24),
            ),
            0..8,
        ),
    ) {
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.version_mut() = Version::HTTP_2;
        *request.uri_mut() = "https://example.com/ws".parse().expect("uri");
        for (name, value) in &headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                request.headers_mut().append(*name, value);
            }
        }
        match validate_extended_connect(&request, protocol.as_deref()) {
            Ok(offer) => {
                prop_assert!(offer.extended_connect);
                prop_assert!(offer.key.is_empty());
                prop_assert!(protocol.is_some_and(|p| p.eq_ignore_ascii_case("websocket")));
                prop_assert_eq!(&request.headers()["sec-websocket-version"], "13");
            }
            Err(error) => prop_assert!(
                [400, 426].contains(&error.status().as_u16()),
                "{error:?} answered {}",
                error.status()
            ),
        }
    }
}
