//! The timers' one meaning (`duplex_proto::Timers`), in the tokio server (`accept_with`): a
//! raw TCP client plays the peer, so what is on the wire and when is what is checked. The
//! engine has the same tests in `src/engine/tests.rs`.

mod common;

use std::time::Duration;

use common::{echo_server, within};
use duplex::{ServerOptions, WebSocketOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

async fn upgraded(options: WebSocketOptions) -> TcpStream {
    let addr = echo_server(ServerOptions {
        websocket: options,
        ..ServerOptions::default()
    })
    .await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    tcp
}

/// A masked client frame (FIN set) with a fixed key.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [1u8, 2, 3, 4];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The next server frame (unmasked, short): its first byte and payload.
async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let first = tcp.read_u8().await.unwrap();
    let len = tcp.read_u8().await.unwrap();
    assert!(len < 126, "short frames only");
    let mut payload = vec![0; usize::from(len)];
    tcp.read_exact(&mut payload).await.unwrap();
    (first, payload)
}

async fn assert_eof(tcp: &mut TcpStream) {
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
}

#[tokio::test]
async fn an_idle_peer_gets_1001_then_eof_within_the_close_timeout() {
    within(async {
        let mut tcp = upgraded(WebSocketOptions {
            idle_timeout: Some(Duration::from_millis(400)),
            close_timeout: Duration::from_millis(500),
            ..WebSocketOptions::default()
        })
        .await;
        let started = Instant::now();
        let (first, payload) = read_frame(&mut tcp).await;
        let closed_after = started.elapsed();
        assert_eq!(first, 0x88);
        assert_eq!(&payload[..2], &1001u16.to_be_bytes());
        assert_eq!(&payload[2..], b"idle timeout");
        // 400 ms of silence, checked every 100 ms.
        assert!(
            closed_after >= Duration::from_millis(350) && closed_after < Duration::from_millis(900),
            "{closed_after:?}"
        );
        // Never answered: the transport goes when the close timeout runs out.
        assert_eof(&mut tcp).await;
        let eof_after = started.elapsed() - closed_after;
        assert!(
            eof_after >= Duration::from_millis(450) && eof_after < Duration::from_millis(1200),
            "{eof_after:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_idle_peer_that_answers_the_close_is_let_go_at_once() {
    within(async {
        let mut tcp = upgraded(WebSocketOptions {
            idle_timeout: Some(Duration::from_millis(300)),
            close_timeout: Duration::from_secs(5),
            ..WebSocketOptions::default()
        })
        .await;
        let (first, _) = read_frame(&mut tcp).await;
        assert_eq!(first, 0x88);
        let answered = Instant::now();
        tcp.write_all(&masked(0x8, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        // The server closes TCP first (RFC 6455 section 7.1.1), not at the close timeout.
        assert_eof(&mut tcp).await;
        assert!(answered.elapsed() < Duration::from_secs(1));
    })
    .await;
}

#[tokio::test]
async fn keepalive_pings_only_a_quiet_peer() {
    within(async {
        let mut tcp = upgraded(WebSocketOptions {
            ping_interval: Some(Duration::from_millis(300)),
            ..WebSocketOptions::default()
        })
        .await;
        // A peer that sends every 60 ms for 1.5 s is never pinged.
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(1500) {
            tcp.write_all(&masked(0x1, b"busy")).await.unwrap();
            let (first, payload) = read_frame(&mut tcp).await;
            assert_eq!(
                (first, &payload[..]),
                (0x81, &b"busy"[..]),
                "pinged while busy"
            );
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        // Quiet from here: a ping after the interval (checks every 75 ms), then one per
        // interval while the quiet lasts.
        let quiet = Instant::now();
        let (first, _) = read_frame(&mut tcp).await;
        assert_eq!(first, 0x89);
        let after = quiet.elapsed();
        assert!(
            after >= Duration::from_millis(250) && after < Duration::from_millis(700),
            "{after:?}"
        );
        let (first, _) = read_frame(&mut tcp).await;
        assert_eq!(first, 0x89);
        let again = quiet.elapsed() - after;
        assert!(
            again >= Duration::from_millis(250) && again < Duration::from_millis(500),
            "{again:?}"
        );
    })
    .await;
}

/// Not a timer, but the same kind of decision moved into the core: what ends a connection
/// behind other messages of the same read is carried out once they are answered, so the echo
/// goes out before the Close (Autobahn 3.2, 5.15) without the runtime feeding again.
#[tokio::test]
async fn messages_before_a_violation_are_echoed_before_the_close() {
    within(async {
        let mut tcp = upgraded(WebSocketOptions::default()).await;
        let mut bytes = masked(0x1, b"first");
        let mut bad = masked(0x1, b"bad");
        bad[0] |= 0x20; // RSV2: no extension defines it
        bytes.extend_from_slice(&bad);
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(read_frame(&mut tcp).await, (0x81, b"first".to_vec()));
        let (first, payload) = read_frame(&mut tcp).await;
        assert_eq!((first, &payload[..2]), (0x88, &1002u16.to_be_bytes()[..]));
        assert_eof(&mut tcp).await;
    })
    .await;
}
