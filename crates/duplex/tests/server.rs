//! The server facing bad clients: refusals, malformed handshakes, protocol violations,
//! half-sent requests. Raw TCP on 127.0.0.1 plays the bad client.

mod common;

use std::time::Duration;

use common::{echo_server, listener, within, ws_url};
use duplex::duplex_proto::handshake::HandshakeError;
use duplex::{Accept, Error, Message, Reject, ServerOptions};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF; fails the test if the server neither answers nor closes.
async fn read_to_end(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .expect("read failed");
    out
}

const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test]
async fn callback_refusal_reaches_the_client_with_its_status() {
    within(async {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            duplex::accept_with(tcp, ServerOptions::default(), |request, offer| {
                assert_eq!(request.uri().path(), "/private");
                assert_eq!(request.uri().query(), Some("token=nope"));
                assert_eq!(offer.origin, None);
                if request.headers().get("authorization").is_none() {
                    return Err(Reject::new(StatusCode::UNAUTHORIZED, "token required"));
                }
                Ok(Accept::default())
            })
            .await
        });
        let err = duplex::connect(&ws_url(addr, "/private?token=nope"))
            .await
            .unwrap_err();
        match &err {
            Error::Rejected { status, reason } => {
                assert_eq!(*status, StatusCode::UNAUTHORIZED);
                assert_eq!(reason, "token required");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(err.http_status(), Some(StatusCode::UNAUTHORIZED));
        let server_err = server.await.unwrap().unwrap_err();
        assert!(matches!(
            server_err,
            Error::Handshake(HandshakeError::Refused { status, .. }) if status == 401
        ));
    })
    .await;
}

#[tokio::test]
async fn malformed_handshake_gets_400_with_a_reason_and_a_closed_socket() {
    within(async {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            duplex::accept(tcp).await
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"HELLO THERE \x01\x02\r\n\r\n")
            .await
            .unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        assert!(!body.trim().is_empty(), "no reason in {answer:?}");
        assert!(matches!(
            server.await.unwrap(),
            Err(Error::Handshake(e)) if e.status() == StatusCode::BAD_REQUEST
        ));

        // A valid HTTP request that is not an upgrade.
        let server_addr = echo_server(ServerOptions::default()).await;
        let mut tcp = TcpStream::connect(server_addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn wrong_version_gets_426_naming_version_13() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = UPGRADE.replace("Version: 13", "Version: 8");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("sec-websocket-version: 13\r\n"),
            "{answer}"
        );
    })
    .await;
}

#[tokio::test]
async fn oversized_request_gets_431() {
    within(async {
        let options = ServerOptions {
            max_handshake_size: 1024,
            ..ServerOptions::default()
        };
        let addr = echo_server(options).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = UPGRADE.replace(
            "Host: localhost\r\n",
            &format!("Host: localhost\r\nX-Filler: {}\r\n", "a".repeat(2000)),
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn unmasked_client_frame_gets_close_1002_then_eof_while_others_are_served() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;

        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101 "));

        // Meanwhile a well-behaved client is served.
        let (mut good, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();

        // An unmasked text frame from a client violates RFC 6455 section 5.1.
        tcp.write_all(b"\x81\x02hi").await.unwrap();
        let rest = read_to_end(&mut tcp).await;
        // A server Close frame (unmasked) whose payload starts with 1002.
        assert!(rest.len() >= 4, "{rest:?}");
        assert_eq!(rest[0], 0x88);
        assert_eq!(rest[1] & 0x80, 0, "server frames are not masked");
        assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 1002);
        assert_eq!(
            rest.len(),
            2 + usize::from(rest[1]),
            "nothing after the close"
        );

        good.send(Message::text("still served")).await.unwrap();
        assert_eq!(
            good.recv().await.unwrap().unwrap(),
            Message::text("still served")
        );
    })
    .await;
}

#[tokio::test]
async fn protocol_error_is_reported_to_the_server_application() {
    within(async {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = duplex::accept(tcp).await.unwrap();
            let err = ws.recv().await.unwrap().unwrap_err();
            assert!(ws.recv().await.is_none());
            err
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // The handshake and a bad frame (reserved opcode 0x3, masked) in one write.
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x83\x80\x00\x00\x00\x00");
        tcp.write_all(&bytes).await.unwrap();
        let answer = read_to_end(&mut tcp).await;
        assert!(answer.starts_with(b"HTTP/1.1 101 "));
        let err = server.await.unwrap();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        assert_eq!(err.close_code(), Some(duplex::CloseCode::PROTOCOL_ERROR));
    })
    .await;
}

#[tokio::test]
async fn handshake_timeout_closes_a_half_sent_request() {
    within(async {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let options = ServerOptions {
                handshake_timeout: Duration::from_millis(200),
                ..ServerOptions::default()
            };
            duplex::accept_with(tcp, options, |_, _| Ok(Accept::default())).await
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&UPGRADE.as_bytes()[..40]).await.unwrap();
        let started = tokio::time::Instant::now();
        let rest = read_to_end(&mut tcp).await;
        assert!(rest.is_empty(), "{rest:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            server.await.unwrap(),
            Err(Error::Timeout(duplex::Timeout::Handshake))
        ));
    })
    .await;
}

#[tokio::test]
async fn a_chosen_subprotocol_that_was_not_offered_is_a_500() {
    within(async {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            duplex::accept_with(tcp, ServerOptions::default(), |_, _| {
                Ok(Accept::with_protocol("never-offered"))
            })
            .await
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp).await).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("which was not offered"), "{answer}");
        let server_err = server.await.unwrap().unwrap_err();
        assert!(matches!(
            server_err,
            Error::Handshake(HandshakeError::ProtocolNotOffered(ref p)) if p == "never-offered"
        ));
    })
    .await;
}

#[tokio::test]
async fn a_malformed_extension_offer_is_accepted_without_compression() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = UPGRADE.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate; x=\"open\r\n\r\n",
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(!head.contains("Extensions"), "{head}");
    })
    .await;
}

#[tokio::test]
async fn a_refusal_lingers_then_the_server_gives_up_within_the_handshake_bounds() {
    use duplex::duplex_proto::handshake::{REFUSAL_DRAIN_LIMIT, REFUSAL_LINGER};
    let (listener, addr) = listener().await;
    let serve = || async {
        let (tcp, _) = listener.accept().await.unwrap();
        let started = tokio::time::Instant::now();
        let result = duplex::accept_with(tcp, ServerOptions::default(), |_, _| {
            Err(Reject::new(StatusCode::FORBIDDEN, "no"))
        })
        .await;
        assert!(matches!(
            result,
            Err(Error::Handshake(HandshakeError::Refused { status, .. })) if status == 403
        ));
        started.elapsed()
    };

    // A client that reads the answer and then neither sends nor closes: the server lingers
    // for REFUSAL_LINGER, then gives up.
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    quiet.write_all(UPGRADE.as_bytes()).await.unwrap();
    let lingered = within(serve()).await;
    let answer = String::from_utf8(read_to_end(&mut quiet).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(lingered >= REFUSAL_LINGER, "{lingered:?}");
    assert!(lingered < REFUSAL_LINGER * 2, "{lingered:?}");

    // A client that keeps sending: the server stops reading after REFUSAL_DRAIN_LIMIT bytes,
    // well before the linger is over.
    let mut noisy = TcpStream::connect(addr).await.unwrap();
    noisy.write_all(UPGRADE.as_bytes()).await.unwrap();
    let flood = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < 64 * REFUSAL_DRAIN_LIMIT && noisy.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let drained = within(serve()).await;
    assert!(drained < REFUSAL_LINGER, "{drained:?}");
    let sent = within(flood).await.unwrap();
    assert!(
        sent < 64 * REFUSAL_DRAIN_LIMIT,
        "the server never stopped reading"
    );
}
