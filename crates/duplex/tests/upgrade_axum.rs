//! The axum example's router, served by `axum::serve`, passes an echo test with duplex's
//! client over HTTP/1.1 and over HTTP/2 (RFC 8441), and refuses bad requests with their
//! statuses.
#![cfg(all(feature = "hyper", feature = "deflate"))]

mod common;

#[path = "../examples/axum_echo.rs"]
#[allow(
    dead_code,
    reason = "the example's main is not run here, only its router"
)]
mod axum_echo;

use std::net::SocketAddr;
use std::time::Duration;

use common::{listener, within};
use duplex::{ClientOptions, CloseCode, Error, Message};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn serve_example() -> SocketAddr {
    let (listener, addr) = listener().await;
    let listener = axum::serve::ListenerExt::tap_io(listener, axum_echo::no_delay);
    tokio::spawn(async move { axum::serve(listener, axum_echo::router()).await });
    addr
}

fn options() -> ClientOptions {
    ClientOptions {
        protocols: vec!["other".into(), "echo".into()],
        ..ClientOptions::default()
    }
}

async fn echo_round_trips<S>(ws: &mut duplex::WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for message in [
        Message::text("hello axum"),
        Message::binary(vec![42u8; 300_000]),
        Message::text("✓".repeat(10_000)),
    ] {
        within(ws.send(message.clone())).await.expect("send");
        assert_eq!(
            within(ws.recv()).await.expect("open").expect("echo"),
            message
        );
    }
    let close = within(ws.close(CloseCode::NORMAL, "bye"))
        .await
        .expect("close");
    assert_eq!(close.map(|c| c.code), Some(CloseCode::NORMAL));
}

#[tokio::test]
async fn the_axum_example_echoes_over_http1() {
    let addr = serve_example().await;
    let (mut ws, response) = within(duplex::connect_with(
        &format!("ws://{addr}/echo"),
        options(),
    ))
    .await
    .expect("connect");
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.protocol.as_deref(), Some("echo"));
    assert!(
        response
            .extensions
            .as_deref()
            .is_some_and(|e| e.starts_with("permessage-deflate"))
    );
    echo_round_trips(&mut ws).await;
}

#[cfg(feature = "http2")]
#[tokio::test]
async fn the_axum_example_echoes_over_http2() {
    let addr = serve_example().await;
    let options = ClientOptions {
        http2: true,
        ..options()
    };
    let (mut ws, response) = within(duplex::connect_auto(&format!("ws://{addr}/echo"), options))
        .await
        .expect("connect");
    assert!(ws.get_ref().is_http2(), "axum::serve should allow RFC 8441");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.protocol.as_deref(), Some("echo"));
    echo_round_trips(&mut ws).await;
}

#[tokio::test]
async fn the_axum_example_refuses_what_is_not_a_websocket() {
    let addr = serve_example().await;
    // Not routed: axum's own 404, which the client reports with its status.
    let refused = within(duplex::connect(&format!("ws://{addr}/nowhere"))).await;
    assert!(
        matches!(refused, Err(Error::Rejected { status, .. }) if status == StatusCode::NOT_FOUND),
        "{refused:?}"
    );
    // A plain GET on the route: duplex refuses it with 400.
    let head = raw_request(addr, "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    // Version 8: 426 with the version duplex speaks.
    let head = raw_request(
        addr,
        "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
}

/// Writes `request` and reads the response head (the server keeps the connection open, so
/// read up to the blank line, bounded).
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
