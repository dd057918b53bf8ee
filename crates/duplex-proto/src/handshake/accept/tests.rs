use http::header::{RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE};

use super::*;
use crate::handshake::{DEFAULT_MAX_HANDSHAKE_SIZE, parse_response};

/// The RFC 6455 section 1.2/1.3 sample key.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn offer(protocols: &[&str], extensions: Option<&str>) -> ClientOffer {
    let mut offer = ClientOffer::new(KEY);
    offer.protocols = protocols.iter().map(|p| (*p).to_owned()).collect();
    offer.extensions = extensions.map(str::to_owned);
    offer
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("a head is ASCII")
}

#[test]
fn accept_key_is_the_rfc_6455_section_1_3_value() {
    let config = Config::default();
    let upgrade = ServerHandshake::new(&config)
        .decide(&offer(&[], None), Ok(Accept::default()))
        .expect("accepted");
    assert_eq!(upgrade.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(
        upgrade.encode_http11(),
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    assert_eq!(upgrade.connection.role(), Role::Server);
}

#[test]
fn encode_matches_accept_response_and_the_http_parts() {
    let config = Config::default();
    let mut headers = HeaderMap::new();
    headers.insert(SET_COOKIE, HeaderValue::from_static("a=1"));
    // Written by the handshake itself: ignored here.
    headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("forged"));
    let offer = offer(&["chat"], None);
    let upgrade = ServerHandshake::new(&config)
        .decide(
            &offer,
            Ok(Accept {
                protocol: Some("chat".into()),
                headers: headers.clone(),
            }),
        )
        .expect("accepted");
    let bytes = upgrade.encode_http11();
    assert_eq!(
        bytes,
        super::super::accept_response(&offer, Some("chat"), None, &headers)
    );
    assert!(!text(&bytes).contains("forged"));

    let response = upgrade.response();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let h = response.headers();
    assert_eq!(h[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(h.get_all(SEC_WEBSOCKET_ACCEPT).iter().count(), 1);
    assert_eq!(h[SEC_WEBSOCKET_PROTOCOL], "chat");
    assert_eq!(h[SET_COOKIE], "a=1");
    assert_eq!(h[UPGRADE], "websocket");
    assert!(!h.contains_key(SEC_WEBSOCKET_EXTENSIONS));
}

#[test]
fn a_subprotocol_that_was_not_offered_is_a_500_refusal() {
    let config = Config::default();
    let refused = ServerHandshake::new(&config)
        .decide(&offer(&["chat"], None), Ok(Accept::with_protocol("mqtt")))
        .expect_err("not offered");
    assert_eq!(
        refused.error,
        HandshakeError::ProtocolNotOffered("mqtt".into())
    );
    assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = refused.encode_http11();
    let text = text(&bytes);
    assert!(text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    assert!(text.contains("Connection: close\r\n"));
    assert!(text.ends_with("the server chose subprotocol \"mqtt\", which was not offered"));
    // The chosen one is accepted.
    let upgrade = ServerHandshake::new(&config)
        .decide(&offer(&["chat"], None), Ok(Accept::with_protocol("chat")))
        .expect("offered");
    assert_eq!(upgrade.protocol.as_deref(), Some("chat"));
}

#[test]
fn a_reject_is_answered_with_its_status_headers_and_body() {
    let config = Config::default();
    let reject = Reject::new(StatusCode::UNAUTHORIZED, "token expired")
        .header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
        .header(RETRY_AFTER, HeaderValue::from_static("5"));
    let refused = ServerHandshake::new(&config)
        .decide(&offer(&[], None), Err(reject))
        .expect_err("rejected");
    assert_eq!(
        refused.error,
        HandshakeError::Refused {
            status: StatusCode::UNAUTHORIZED,
            reason: "token expired".into()
        }
    );
    assert_eq!(refused.status(), 401);
    let bytes = refused.encode_http11();
    let (response, consumed) = parse_response(&bytes, DEFAULT_MAX_HANDSHAKE_SIZE)
        .expect("valid head")
        .expect("complete");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    assert_eq!(response.headers()[RETRY_AFTER], "5");
    assert_eq!(response.headers()["content-length"], "13");
    assert_eq!(&bytes[consumed..], b"token expired");
    assert_eq!(
        refused.clone().into_error().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn a_request_error_is_refused_through_the_same_place() {
    let refused = Refused::from(HandshakeError::UnsupportedVersion("8".into()));
    assert_eq!(refused.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(refused.encode_http11(), refused.error.response());
    assert!(text(&refused.encode_http11()).contains("Sec-WebSocket-Version: 13\r\n"));
}

#[cfg(feature = "deflate")]
mod deflate {
    use bytes::BytesMut;

    use super::*;
    use crate::extensions::deflate::DeflateConfig;
    use crate::handshake::{
        ClientHandshake, ClientRequest, Connected, parse_request, validate_request,
    };
    use crate::{Event, Message};

    /// Moves everything `from` queued into a buffer, as a socket would.
    fn wire(from: &mut Connection) -> BytesMut {
        let mut out = BytesMut::new();
        while let Some(transmit) = from.poll_transmit() {
            out.extend_from_slice(transmit.head());
            out.extend_from_slice(transmit.payload());
        }
        out
    }

    fn receive(to: &mut Connection, mut bytes: BytesMut) -> Vec<Event> {
        to.recv(&mut bytes).expect("valid frames");
        assert!(bytes.is_empty(), "every byte consumed");
        std::iter::from_fn(|| to.poll_event()).collect()
    }

    #[test]
    fn a_compressed_message_round_trips_between_the_two_handshakes() {
        let deflate = DeflateConfig::default();
        let mut request = ClientRequest::new("ws://example.com/".parse().expect("url"), [3; 16]);
        request.protocols = vec!["chat".into()];
        let mut client = ClientHandshake::new(request, Config::default());
        client.offer_deflate(deflate.clone()).expect("valid");
        let wire_request = client.encode();

        let (head, consumed) = parse_request(&wire_request, DEFAULT_MAX_HANDSHAKE_SIZE)
            .expect("valid")
            .expect("complete");
        assert_eq!(consumed, wire_request.len());
        let offer = validate_request(&head).expect("valid");
        let config = Config::default();
        let upgrade = ServerHandshake::new(&config)
            .deflate(Some(&deflate))
            .decide(&offer, Ok(Accept::with_protocol("chat")))
            .expect("accepted");
        assert_eq!(upgrade.extensions(), Some("permessage-deflate"));
        let answer = upgrade.encode_http11();
        let Upgrade {
            connection: mut server,
            ..
        } = upgrade;
        assert!(server.deflate().is_some());

        let (response, _) = parse_response(&answer, DEFAULT_MAX_HANDSHAKE_SIZE)
            .expect("valid")
            .expect("complete");
        let Connected {
            connection: mut client,
            protocol,
            ..
        } = client.finish(&response).expect("valid 101");
        assert_eq!(protocol.as_deref(), Some("chat"));
        assert_eq!(client.deflate(), server.deflate());

        let message = Message::text("compress me ".repeat(100));
        client.send(message.clone()).expect("open");
        let bytes = wire(&mut client);
        assert_eq!(bytes[0] & 0x40, 0x40, "RSV1: the message is compressed");
        assert!(bytes.len() < 200, "{} bytes on the wire", bytes.len());
        assert_eq!(
            receive(&mut server, bytes),
            [Event::Message(message.clone())]
        );

        server.send(message.clone()).expect("open");
        let bytes = wire(&mut server);
        assert_eq!(bytes[0] & 0x40, 0x40);
        assert_eq!(receive(&mut client, bytes), [Event::Message(message)]);
    }

    #[test]
    fn a_malformed_extension_header_declines_compression_only() {
        let config = Config::default();
        let deflate = DeflateConfig::default();
        for header in [
            "permessage-deflate; x=\"unterminated",
            ";;;",
            "permessage-deflate,,==",
        ] {
            let upgrade = ServerHandshake::new(&config)
                .deflate(Some(&deflate))
                .decide(&offer(&[], Some(header)), Ok(Accept::default()))
                .unwrap_or_else(|e| panic!("{header:?} refused the connection: {e}"));
            assert_eq!(upgrade.extensions(), None, "{header:?}");
            assert!(upgrade.connection.deflate().is_none());
            assert!(!text(&upgrade.encode_http11()).contains("Extensions"));
        }
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        let config = Config::default();
        let deflate = DeflateConfig::default();
        let upgrade = ServerHandshake::new(&config)
            .deflate(Some(&deflate))
            .decide(
                &offer(
                    &[],
                    Some(
                        "permessage-deflate; server_max_window_bits=7, \
                         permessage-deflate; server_max_window_bits=10, permessage-deflate",
                    ),
                ),
                Ok(Accept::default()),
            )
            .expect("accepted");
        assert_eq!(
            upgrade.extensions(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
        let negotiated = upgrade.connection.deflate().expect("negotiated");
        assert_eq!(negotiated.server_max_window_bits, 10);
    }

    #[test]
    fn no_deflate_setting_declines_the_offer() {
        let config = Config::default();
        let upgrade = ServerHandshake::new(&config)
            .deflate(None)
            .decide(
                &offer(&[], Some("permessage-deflate")),
                Ok(Accept::default()),
            )
            .expect("accepted");
        assert_eq!(upgrade.extensions(), None);
        assert!(upgrade.connection.deflate().is_none());
        let disabled = DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        };
        let upgrade = ServerHandshake::new(&config)
            .deflate(Some(&disabled))
            .decide(
                &offer(&[], Some("permessage-deflate")),
                Ok(Accept::default()),
            )
            .expect("accepted");
        assert!(upgrade.connection.deflate().is_none());
    }
}
