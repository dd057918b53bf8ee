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
