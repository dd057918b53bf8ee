//! The hub's `/ws` upgrade through duplex-proto's handshake path: the hub's own refusals keep
//! their statuses and headers, request errors get the protocol's, and permessage-deflate is
//! negotiated (or declined for a malformed offer) by the shared rules.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, config, http, hub, within};
use duplex_hub::HubConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: (&str, &str) = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");

fn upgrade_headers(version: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        KEY,
        ("Sec-WebSocket-Version", version),
    ]
}

/// Sends an upgrade request with `extensions` offered and returns the response head.
async fn upgrade_head(addr: SocketAddr, extensions: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {}: {}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {extensions}\r\n\r\n",
        KEY.0, KEY.1
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert_eq!(n, 1, "closed before the end of the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn refusals_keep_their_status_headers_and_reason() {
    within(async {
        let hub = hub(HubConfig {
            token_secret: Some("secret".into()),
            ..config()
        })
        .await;
        let addr = hub.local_addr();

        let response = http(addr, "GET", "/ws", &upgrade_headers("13"), None).await;
        assert_eq!(response.status, 401);
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert!(String::from_utf8_lossy(&response.body).contains("token"));

        let response = http(addr, "GET", "/ws", &upgrade_headers("8"), None).await;
        assert_eq!(response.status, 426);
        assert_eq!(response.header("sec-websocket-version"), Some("13"));

        let response = http(addr, "POST", "/ws", &upgrade_headers("13"), Some(b"")).await;
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET"));
    })
    .await;
}

#[tokio::test]
async fn the_connection_cap_answers_503_with_retry_after() {
    within(async {
        let hub = hub(HubConfig {
            max_connections: 1,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let _first = Client::connect(addr, "").await;
        let response = http(addr, "GET", "/ws", &upgrade_headers("13"), None).await;
        assert_eq!(response.status, 503);
        assert_eq!(response.header("retry-after"), Some("5"));
    })
    .await;
}

#[tokio::test]
async fn deflate_is_negotiated_and_a_malformed_offer_only_declines_it() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        // Header names are case-insensitive (RFC 9110 section 5.1): hyper writes them in
        // lower case.
        let head = upgrade_head(addr, "permessage-deflate; client_max_window_bits")
            .await
            .to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101 "), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
            "{head}"
        );
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate"),
            "{head}"
        );

        let head = upgrade_head(addr, "permessage-deflate; x=\"unterminated")
            .await
            .to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101 "), "{head}");
        assert!(!head.contains("extensions"), "{head}");
    })
    .await;
}
