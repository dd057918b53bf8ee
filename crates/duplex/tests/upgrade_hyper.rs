//! The plain hyper example (`duplex::upgrade::builder`, a `service_fn`) passes an echo test
//! over HTTP/1.1, and its refusals carry the statuses of RFC 6455 section 4.2.1: bad version
//! 426, missing key 400, wrong method 405.
#![cfg(all(feature = "hyper", feature = "deflate"))]

mod common;

#[path = "../examples/hyper_echo.rs"]
#[allow(
    dead_code,
    reason = "the example's main is not run here, only its server"
)]
mod hyper_echo;

use std::net::SocketAddr;
use std::time::Duration;

use common::{listener, within};
use duplex::{ClientOptions, CloseCode, Message};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn serve_example() -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(hyper_echo::serve(listener));
    addr
}

#[tokio::test]
async fn the_hyper_example_echoes_over_http1() {
    let addr = serve_example().await;
    let options = ClientOptions {
        protocols: vec!["echo".into()],
        ..ClientOptions::default()
    };
    let (mut ws, response) = within(duplex::connect_with(&format!("ws://{addr}/echo"), options))
        .await
        .expect("connect");
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.protocol.as_deref(), Some("echo"));
    assert!(response.extensions.is_some(), "deflate not agreed");
    for i in 0..50u32 {
        let message = Message::binary(i.to_be_bytes().repeat(i as usize * 100));
        within(ws.send(message.clone())).await.expect("send");
        assert_eq!(
            within(ws.recv()).await.expect("open").expect("echo"),
            message
        );
    }
    within(ws.ping("are you there")).await.expect("ping");
    match within(ws.recv_event()).await.expect("open").expect("event") {
        duplex::Event::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }
    let close = within(ws.close(CloseCode(4321), "done"))
        .await
        .expect("close");
    assert_eq!(close.map(|c| c.code), Some(CloseCode(4321)));
}

#[tokio::test]
async fn without_deflate_or_subprotocol() {
    let addr = serve_example().await;
    let options = ClientOptions {
        deflate: None,
        ..ClientOptions::default()
    };
    let (mut ws, response) = within(duplex::connect_with(&format!("ws://{addr}/echo"), options))
        .await
        .expect("connect");
    assert_eq!(response.protocol, None);
    assert_eq!(response.extensions, None);
    within(ws.send(Message::text("plain"))).await.expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("open").expect("echo"),
        Message::text("plain")
    );
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn refusals_carry_their_status() {
    let addr = serve_example().await;
    let cases = [
        (
            format!(
                "GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 {KEY}Sec-WebSocket-Version: 8\r\n\r\n"
            ),
            426,
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
                .to_owned(),
            400,
        ),
        (
            format!(
                "POST /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 {KEY}Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
            ),
            405,
        ),
        ("GET /echo HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(), 400),
    ];
    for (request, status) in cases {
        let head = raw_request(addr, &request).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?} got {head}"
        );
        let lower = head.to_ascii_lowercase();
        match status {
            426 => assert!(lower.contains("sec-websocket-version: 13"), "{head}"),
            405 => assert!(lower.contains("allow: get"), "{head}"),
            _ => {}
        }
    }
}

/// Writes `request` and reads the response head, bounded.
async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.expect("read") == 0 {
                break;
            }
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("no response head");
    String::from_utf8_lossy(&head).into_owned()
}
