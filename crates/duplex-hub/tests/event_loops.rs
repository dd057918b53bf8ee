//! Plain WebSocket connections on the hub's event loops (`--event-loops`, the default) and on a
//! task each (`--event-loops 0`): the same protocol either way, the loop's own timers (keepalive
//! ping, idle timeout) and commands pipelined in one write.

mod common;

use std::time::Duration;

use common::{Client, config, hub, publish_http, within};
use duplex_hub::HubConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A masked client frame (RFC 6455 section 5.2) of `opcode` carrying `payload` (< 126 bytes).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Upgrades a raw TCP connection to `/ws`; returns it after the 101 and whatever followed it.
async fn raw_upgrade(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    (tcp, buf[end..].to_vec())
}

/// Reads server frames (unmasked, payload < 126 bytes) until one of `opcode`; returns its
/// payload.
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, opcode: u8) -> Vec<u8> {
    loop {
        while buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1] & 0x7f) {
            let len = usize::from(buf[1] & 0x7f);
            assert!(len < 126, "short frames only");
            let frame: Vec<u8> = buf.drain(..2 + len).collect();
            if frame[0] & 0x0f == opcode {
                return frame[2..].to_vec();
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a frame of opcode {opcode}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn loops_and_tasks_speak_the_same_protocol() {
    for event_loops in [Some(2), Some(0)] {
        within(async {
            let hub = hub(HubConfig {
                event_loops,
                ..config()
            })
            .await;
            let addr = hub.local_addr();
            let mut alice = Client::connect(addr, "?user=alice").await;
            let mut bob = Client::connect(addr, "?user=bob").await;
            let reply = alice.subscribe("room").await;
            assert_eq!(reply["ok"], true, "{event_loops:?}: {reply}");
            bob.subscribe("room").await;
            // A publication over WebSocket and one over HTTP reach both subscribers, in order.
            bob.publish("room", json!({"n": 1})).await;
            publish_http(addr, "room", json!({"n": 2})).await;
            for client in [&mut alice, &mut bob] {
                assert_eq!(client.publication().await["data"], json!({"n": 1}));
                assert_eq!(client.publication().await["data"], json!({"n": 2}));
            }
            // A refusal, and the connection goes on.
            let refused = alice
                .call(json!({"op": "subscribe", "channel": "room"}))
                .await;
            assert_eq!(refused["error"]["code"], "already_subscribed", "{refused}");
            let reply = alice
                .call(json!({"op": "unsubscribe", "channel": "room"}))
                .await;
            assert_eq!(reply["ok"], true);
            publish_http(addr, "room", json!({"n": 3})).await;
            assert_eq!(bob.publication().await["data"], json!({"n": 3}));
            alice.assert_quiet().await;
            hub.shutdown();
            let (code, _) = alice.close_frame().await;
            assert_eq!(code, 1001, "{event_loops:?}: shutdown closes with 1001");
        })
        .await;
    }
}

#[tokio::test]
async fn commands_sent_in_one_write_are_answered_in_order() {
    within(async {
        let hub = hub(config()).await;
        let (mut tcp, mut buf) = raw_upgrade(hub.local_addr()).await;
        let mut burst = Vec::new();
        for id in 1..=40 {
            burst.extend(client_frame(
                0x1,
                format!(r#"{{"id":{id},"op":"ping"}}"#).as_bytes(),
            ));
        }
        tcp.write_all(&burst).await.unwrap();
        for id in 1..=40 {
            let reply = read_until(&mut tcp, &mut buf, 0x1).await;
            let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
            assert_eq!(reply["id"], id, "{reply}");
            assert_eq!(reply["ok"], true);
        }
    })
    .await;
}

#[tokio::test]
async fn the_loop_pings_a_silent_client_then_closes_it_with_1001() {
    within(async {
        let hub = hub(HubConfig {
            // Idle timeout: three intervals.
            ping_interval: Some(Duration::from_secs(1)),
            ..config()
        })
        .await;
        let (mut tcp, mut buf) = raw_upgrade(hub.local_addr()).await;
        let started = std::time::Instant::now();
        // The client never answers: a ping (the sweep's second), then the idle close.
        read_until(&mut tcp, &mut buf, 0x9).await;
        let close = read_until(&mut tcp, &mut buf, 0x8).await;
        assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1001);
        assert_eq!(&close[2..], b"idle timeout");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
            "closed after {waited:?}"
        );
        // Our Close answered: the hub closes the TCP connection.
        tcp.write_all(&client_frame(0x8, &close[..2]))
            .await
            .unwrap();
        let mut rest = [0u8; 64];
        loop {
            match tcp.read(&mut rest).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_close_timeout_without_pings() {
    within(async {
        let hub = hub(HubConfig {
            queue_bytes: 64 * 1024,
            max_message_size: 16 * 1024,
            history_size: 10,
            // No keepalive: only the close timeout (2 s in `config`) can end it.
            ping_interval: None,
            join_leave: false,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let subscribe = br#"{"id":1,"op":"subscribe","channel":"flood"}"#;
        tcp.write_all(&client_frame(0x1, subscribe)).await.unwrap();
        // Wait for the subscription to exist, then flood without reading: the outbox
        // overflows (1013), the Close cannot be written, and the close timeout ends it.
        let mut other = Client::connect(addr, "").await;
        loop {
            let stats = other
                .call(json!({"op": "presence", "channel": "flood"}))
                .await;
            if stats["clients"].as_array().is_some_and(|c| !c.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Until the kernel's buffers are full and the outbox overflows (bounded: 16 MiB).
        let data = "x".repeat(8 * 1024);
        for _ in 0..2048 {
            if hub.metrics().slow_consumer_disconnects() > 0 {
                break;
            }
            publish_http(addr, "flood", json!(data)).await;
        }
        assert_eq!(hub.metrics().slow_consumer_disconnects(), 1);
        let flooded = std::time::Instant::now();
        // Everything the hub wrote, then the end of the connection: read to EOF (or reset).
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if flooded.elapsed() < Duration::from_secs(3) {
                        // Keep not reading until past the close timeout.
                        tokio::time::sleep(Duration::from_secs(3) - flooded.elapsed()).await;
                    }
                }
            }
        }
        let ended = flooded.elapsed();
        assert!(ended < Duration::from_secs(15), "ended after {ended:?}");
        // The other client is unaffected.
        let reply = other.call(json!({"op": "ping"})).await;
        assert_eq!(reply["ok"], true);
    })
    .await;
}
