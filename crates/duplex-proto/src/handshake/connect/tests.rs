use http::{HeaderValue, StatusCode};

use super::*;
use crate::handshake::{DEFAULT_MAX_HANDSHAKE_SIZE, parse_response};

/// `ClientRequest::new` with the RFC 6455 sample nonce: its accept key is
/// `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=` (section 1.3).
fn handshake(protocols: &[&str]) -> ClientHandshake {
    let mut request = ClientRequest::new(
        "ws://example.com/".parse().expect("url"),
        *b"the sample nonce",
    );
    request.protocols = protocols.iter().map(|p| (*p).to_owned()).collect();
    ClientHandshake::new(request, Config::default())
}

fn response(extra: &str) -> Response<()> {
    let wire = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
    );
    parse_response(wire.as_bytes(), DEFAULT_MAX_HANDSHAKE_SIZE)
        .expect("valid head")
        .expect("complete")
        .0
}

#[test]
fn a_valid_101_opens_a_client_connection() {
    let connected = handshake(&["chat"])
        .finish(&response("Sec-WebSocket-Protocol: chat\r\n"))
        .expect("valid");
    assert_eq!(connected.protocol.as_deref(), Some("chat"));
    assert_eq!(connected.connection.role(), Role::Client);
    assert_eq!(connected.extensions, None);
}

#[test]
fn the_accept_key_is_checked() {
    let mut bad = response("");
    bad.headers_mut().insert(
        http::header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOp="),
    );
    assert_eq!(
        handshake(&[]).finish(&bad).expect_err("wrong key"),
        HandshakeError::AcceptMismatch
    );
    let mut missing = response("");
    missing
        .headers_mut()
        .remove(http::header::SEC_WEBSOCKET_ACCEPT);
    assert_eq!(
        handshake(&[]).finish(&missing).expect_err("no key"),
        HandshakeError::AcceptMismatch
    );
}

#[test]
fn the_subprotocol_must_be_one_offered() {
    assert_eq!(
        handshake(&["chat"])
            .finish(&response("Sec-WebSocket-Protocol: mqtt\r\n"))
            .expect_err("not offered"),
        HandshakeError::UnofferedProtocol("mqtt".into())
    );
}

#[test]
fn another_status_is_an_error() {
    let mut not_found = response("");
    *not_found.status_mut() = StatusCode::NOT_FOUND;
    assert_eq!(
        handshake(&[]).finish(&not_found).expect_err("404"),
        HandshakeError::UnexpectedStatus(StatusCode::NOT_FOUND)
    );
}

#[test]
fn the_extension_offer_belongs_to_the_handshake() {
    let mut request = ClientRequest::new("ws://example.com/".parse().expect("url"), [0; 16]);
    request.extensions = Some("permessage-deflate".into());
    let handshake = ClientHandshake::new(request, Config::default());
    assert_eq!(handshake.request().extensions, None);
    let wire = String::from_utf8(handshake.encode()).expect("ascii");
    assert!(!wire.contains("Extensions"));
}

#[test]
fn an_extension_without_an_offer_fails() {
    assert_eq!(
        handshake(&[])
            .finish(&response(
                "Sec-WebSocket-Extensions: permessage-deflate\r\n"
            ))
            .expect_err("not offered"),
        HandshakeError::UnofferedExtension("permessage-deflate".into())
    );
}

#[cfg(feature = "deflate")]
mod deflate {
    use super::*;
    use crate::extensions::deflate::DeflateConfig;

    fn offering(config: DeflateConfig) -> ClientHandshake {
        let mut handshake = handshake(&[]);
        handshake.offer_deflate(config).expect("valid");
        handshake
    }

    #[test]
    fn the_offer_is_sent_and_an_accepted_answer_configures_the_connection() {
        let handshake = offering(DeflateConfig::default());
        let wire = String::from_utf8(handshake.encode()).expect("ascii");
        assert!(wire.contains("Sec-WebSocket-Extensions: permessage-deflate"));
        let connected = handshake
            .finish(&response(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10\r\n",
            ))
            .expect("valid");
        let negotiated = connected.connection.deflate().expect("negotiated");
        assert_eq!(negotiated.client_max_window_bits, 10);
    }

    #[test]
    fn an_answer_the_offer_does_not_allow_fails_the_handshake() {
        for answer in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; unknown_param",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; x=\"unterminated",
        ] {
            let error = offering(DeflateConfig::default())
                .finish(&response(&format!(
                    "Sec-WebSocket-Extensions: {answer}\r\n"
                )))
                .expect_err(answer);
            assert_eq!(
                error,
                HandshakeError::InvalidResponseHeader("Sec-WebSocket-Extensions"),
                "{answer}"
            );
        }
    }

    #[test]
    fn a_declined_offer_opens_without_compression() {
        let connected = offering(DeflateConfig::default())
            .finish(&response(""))
            .expect("valid");
        assert!(connected.connection.deflate().is_none());
    }

    #[test]
    fn an_invalid_or_disabled_configuration_offers_nothing() {
        let mut handshake = handshake(&[]);
        let invalid = DeflateConfig {
            server_max_window_bits: 16,
            ..DeflateConfig::default()
        };
        assert!(handshake.offer_deflate(invalid).is_err());
        let disabled = DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        };
        handshake.offer_deflate(disabled).expect("valid");
        assert_eq!(handshake.request().extensions, None);
    }
}

/// RFC 8441: the extended CONNECT request, its validation, the 200 answer and the client's
/// check, end to end through the one decide path.
mod extended_connect {
    use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, UPGRADE};
    use http::{Method, Version};

    use super::*;
    use crate::handshake::{
        Accept, HandshakeError, Reject, ServerHandshake, validate_extended_connect,
    };

    fn h2_response(status: u16, extra: &[(&str, &str)]) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).expect("status");
        for (name, value) in extra {
            response.headers_mut().append(
                http::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        response
    }

    #[test]
    fn the_request_has_no_key_and_no_connection_headers() {
        let mut client = handshake(&["chat", "not a token"]);
        let mut request = client.request().clone();
        request
            .headers
            .insert(HOST, HeaderValue::from_static("other.example:8443"));
        request
            .headers
            .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        request
            .headers
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        request
            .headers
            .insert("x-token", HeaderValue::from_static("abc"));
        client = ClientHandshake::new(request, Config::default());
        let connect = client.extended_connect_request();
        assert_eq!(connect.method(), Method::CONNECT);
        assert_eq!(connect.version(), Version::HTTP_2);
        assert_eq!(connect.uri(), "http://other.example:8443/");
        for name in [HOST, CONNECTION, UPGRADE, SEC_WEBSOCKET_KEY] {
            assert!(connect.headers().get(&name).is_none(), "{name}");
        }
        assert_eq!(connect.headers()["sec-websocket-protocol"], "chat");
        assert_eq!(connect.headers()["x-token"], "abc");
    }

    #[test]
    fn server_refusals_have_their_statuses() {
        let connect = handshake(&[]).extended_connect_request();
        let status = |result: Result<_, HandshakeError>| result.expect_err("refused").status();
        assert_eq!(status(validate_extended_connect(&connect, None)), 400);
        assert_eq!(
            status(validate_extended_connect(&connect, Some("connect-udp"))),
            400
        );
        let mut get = connect.clone();
        *get.method_mut() = Method::GET;
        assert_eq!(
            status(validate_extended_connect(&get, Some("websocket"))),
            405
        );
        let mut h1 = connect.clone();
        *h1.version_mut() = Version::HTTP_11;
        assert_eq!(
            status(validate_extended_connect(&h1, Some("websocket"))),
            400
        );
        let mut v8 = connect.clone();
        v8.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(
            status(validate_extended_connect(&v8, Some("websocket"))),
            426
        );
        let mut no_authority = connect.clone();
        *no_authority.uri_mut() = "/".parse().expect("uri");
        assert_eq!(
            status(validate_extended_connect(&no_authority, Some("WebSocket"))),
            400
        );
        assert!(validate_extended_connect(&connect, Some("WebSocket")).is_ok());
    }

    #[test]
    fn accepted_with_200_and_no_accept_key() {
        let client = handshake(&["chat"]);
        let offer =
            validate_extended_connect(&client.extended_connect_request(), Some("websocket"))
                .expect("valid");
        assert!(offer.extended_connect);
        let config = Config::default();
        let upgrade = ServerHandshake::new(&config)
            .decide(&offer, Ok(Accept::with_protocol("chat")))
            .expect("accepted");
        assert!(upgrade.is_extended_connect());
        assert_eq!(upgrade.status(), 200);
        assert_eq!(upgrade.accept_key(), "");
        let response = upgrade.response();
        for name in ["upgrade", "connection", "sec-websocket-accept"] {
            assert!(response.headers().get(name).is_none(), "{name}");
        }
        let connected = client.finish_extended_connect(&response).expect("valid");
        assert_eq!(connected.protocol.as_deref(), Some("chat"));
        assert_eq!(connected.connection.role(), crate::Role::Client);

        let refused = ServerHandshake::new(&config)
            .decide(&offer, Err(Reject::new(StatusCode::FORBIDDEN, "no")))
            .expect_err("refused");
        assert_eq!(refused.response().status(), 403);
        assert_eq!(refused.response().body(), "no");
    }

    #[test]
    fn the_client_checks_status_and_agreement() {
        let client = handshake(&["chat"]);
        assert_eq!(
            client.finish_extended_connect(&h2_response(404, &[])).err(),
            Some(HandshakeError::UnexpectedStatus(StatusCode::NOT_FOUND))
        );
        assert_eq!(
            client
                .finish_extended_connect(&h2_response(101, &[]))
                .err()
                .map(|e| e.status()),
            Some(StatusCode::BAD_GATEWAY)
        );
        assert!(matches!(
            client.finish_extended_connect(&h2_response(200, &[("sec-websocket-protocol", "mqtt")])),
            Err(HandshakeError::UnofferedProtocol(p)) if p == "mqtt"
        ));
        assert!(matches!(
            client.finish_extended_connect(&h2_response(
                200,
                &[("sec-websocket-extensions", "x-foo")]
            )),
            Err(HandshakeError::UnofferedExtension(_))
        ));
        let connected = client
            .finish_extended_connect(&h2_response(200, &[]))
            .expect("ok");
        assert_eq!(connected.protocol, None);
    }

    #[cfg(feature = "deflate")]
    #[test]
    fn deflate_is_negotiated_over_extended_connect() {
        use crate::extensions::deflate::DeflateConfig;
        let mut client = handshake(&[]);
        client
            .offer_deflate(DeflateConfig::default())
            .expect("valid");
        let offer =
            validate_extended_connect(&client.extended_connect_request(), Some("websocket"))
                .expect("valid");
        let (config, deflate) = (Config::default(), DeflateConfig::default());
        let upgrade = ServerHandshake::new(&config)
            .deflate(Some(&deflate))
            .decide(&offer, Ok(Accept::default()))
            .expect("accepted");
        assert!(upgrade.connection.deflate().is_some());
        let connected = client
            .finish_extended_connect(&upgrade.response())
            .expect("valid");
        assert_eq!(connected.connection.deflate(), upgrade.connection.deflate());
    }
}
