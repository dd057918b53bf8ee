//! The engine against real sockets on 127.0.0.1: the tokio client for whole conversations, raw
//! bytes for what a well-behaved client never sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duplex_proto::{CloseCode, Message};
use http::StatusCode;

use super::{Engine, EngineHandle, EngineOptions, Handler, Socket, SocketId};
use crate::{Accept, ClientOffer, Reject};

type Closes = Arc<Mutex<Vec<(u16, String)>>>;

/// Echoes, counts messages, records closes; refuses paths starting with /private.
#[derive(Clone, Default)]
struct Echo {
    received: Arc<Mutex<usize>>,
    closes: Closes,
}

impl Handler for Echo {
    fn on_upgrade(
        &mut self,
        request: &http::Request<()>,
        _: &ClientOffer,
    ) -> Result<Accept, Reject> {
        if request.uri().path().starts_with("/private") {
            return Err(Reject::new(StatusCode::UNAUTHORIZED, "token required"));
        }
        Ok(Accept::default())
    }

    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) {
        *self.received.lock().unwrap() += 1;
        let _ = socket.send(message);
    }

    fn on_close(&mut self, _: SocketId, code: CloseCode, reason: &str) {
        self.closes
            .lock()
            .unwrap()
            .push((code.as_u16(), reason.to_owned()));
    }
}

struct Server {
    addr: SocketAddr,
    handle: EngineHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(options: EngineOptions, echo: Echo) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Engine::new(options);
        let handle = engine.handle();
        let thread = std::thread::spawn(move || engine.run(listener, move || echo.clone()));
        Server {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Shuts down and waits for `run` to return.
    fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap();
        }
        started.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn raw_connect(addr: SocketAddr, path: &str, version: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}

/// A masked client frame, FIN as given.
fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    masked_first(opcode | if fin { 0x80 } else { 0 }, payload)
}

fn assert_eof(tcp: &mut TcpStream) {
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_binary_and_large_messages_with_and_without_compression() {
    let mut server = Server::start(EngineOptions::default(), Echo::default());
    for deflate in [true, false] {
        let mut options = crate::ClientOptions::default();
        if !deflate {
            options.deflate = None;
        }
        let (mut ws, response) = crate::connect_with(&server.url(), options).await.unwrap();
        assert_eq!(
            response.headers.contains_key("sec-websocket-extensions"),
            deflate
        );
        let large: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        let messages = [
            Message::text("hello"),
            Message::text("h\u{e9}llo \u{1f30d}"),
            Message::binary(Bytes::from_static(&[0, 1, 2, 255])),
            Message::binary(large),
            Message::text(""),
        ];
        for message in &messages {
            ws.send(message.clone()).await.unwrap();
        }
        for message in &messages {
            assert_eq!(&ws.recv().await.unwrap().unwrap(), message);
        }
        ws.close(CloseCode(4000), "bye").await.unwrap();
    }
    // The peer's code reaches on_close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.handle.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.handle.connections(), 0);
    assert!(server.stop() < Duration::from_secs(2));
}

#[test]
fn fragments_with_a_ping_in_between_are_reassembled_and_the_pong_comes_first() {
    let echo = Echo::default();
    let server = Server::start(EngineOptions::default(), echo.clone());
    let (mut tcp, head) = raw_connect(server.addr, "/", "13");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut wire = masked(0x1, false, b"hel");
    wire.extend(masked(0x9, true, b"ping!"));
    wire.extend(masked(0x0, true, b"lo"));
    // Byte by byte: every frame boundary falls in every possible place.
    for byte in wire {
        tcp.write_all(&[byte]).unwrap();
    }
    assert_eq!(read_frame(&mut tcp), (0x8a, b"ping!".to_vec()));
    assert_eq!(read_frame(&mut tcp), (0x81, b"hello".to_vec()));
    tcp.write_all(&masked(0x8, true, &[0x03, 0xe8])).unwrap();
    assert_eq!(read_frame(&mut tcp), (0x88, vec![0x03, 0xe8]));
    assert_eof(&mut tcp);
    assert_eq!(*echo.received.lock().unwrap(), 1);
    assert_eq!(*echo.closes.lock().unwrap(), vec![(1000, String::new())]);
}

#[test]
fn protocol_violations_get_their_close_code_then_a_closed_socket() {
    let echo = Echo::default();
    let server = Server::start(EngineOptions::default(), echo.clone());
    // An unmasked client frame: 1002.
    let (mut tcp, _) = raw_connect(server.addr, "/", "13");
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(read_frame(&mut tcp).0, 0x88);
    assert_eof(&mut tcp);
    // Invalid UTF-8 in a text frame: 1007, and the message is not delivered.
    let (mut tcp, _) = raw_connect(server.addr, "/", "13");
    tcp.write_all(&masked(0x1, true, &[b'a', 0xff])).unwrap();
    let (first, payload) = read_frame(&mut tcp);
    assert_eq!((first, &payload[..2]), (0x88, &[0x03, 0xef][..]));
    assert_eof(&mut tcp);
    // A message past the limit: 1009.
    let mut options = EngineOptions::default();
    options.config.max_message_size = 10;
    let small = Server::start(options, echo.clone());
    let (mut tcp, _) = raw_connect(small.addr, "/", "13");
    tcp.write_all(&masked(0x2, true, &[0u8; 11])).unwrap();
    let (first, payload) = read_frame(&mut tcp);
    assert_eq!((first, &payload[..2]), (0x88, &[0x03, 0xf1][..]));
    assert_eof(&mut tcp);
    assert_eq!(*echo.received.lock().unwrap(), 0);
    let codes: Vec<u16> = echo.closes.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(codes, [1002, 1007, 1009]);
}

#[test]
fn bad_handshakes_get_the_right_status_and_a_reason() {
    let server = Server::start(EngineOptions::default(), Echo::default());
    let (_, head) = raw_connect(server.addr, "/", "8");
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    let (_, head) = raw_connect(server.addr, "/private/room", "13");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.to_lowercase().contains("upgrade"), "{response}");
    // A head larger than the limit: 431.
    let options = EngineOptions {
        max_handshake_size: 256,
        ..Default::default()
    };
    let small = Server::start(options, Echo::default());
    let mut tcp = TcpStream::connect(small.addr).unwrap();
    let filler = "a".repeat(300);
    let _ = write!(tcp, "GET / HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n");
    let mut response = String::new();
    let _ = tcp.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_with_1001_and_returns() {
    let mut server = Server::start(EngineOptions::default(), Echo::default());
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(crate::connect(&server.url()).await.unwrap().0);
    }
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    for ws in &mut clients {
        match ws.recv_event().await {
            Some(Ok(crate::Event::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::GOING_AWAY)
            }
            other => panic!("expected a 1001 close, got {other:?}"),
        }
    }
    drop(clients);
    assert!(stopping.await.unwrap() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_clients_wait_until_a_slot_frees() {
    let options = EngineOptions {
        max_connections: 1,
        ..Default::default()
    };
    let server = Server::start(options, Echo::default());
    let (mut first, _) = crate::connect(&server.url()).await.unwrap();
    let url = server.url();
    let mut second = tokio::spawn(async move { crate::connect(&url).await.map(|c| c.0) });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "the second connection was served past the cap"
    );
    first.close(CloseCode::NORMAL, "").await.unwrap();
    let mut second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second connection is served once the first closed")
        .unwrap()
        .unwrap();
    second.send(Message::text("now")).await.unwrap();
    assert_eq!(second.recv().await.unwrap().unwrap(), Message::text("now"));
}

#[test]
fn a_client_that_does_not_read_is_not_read_either_and_loses_nothing() {
    let echo = Echo::default();
    let options = EngineOptions {
        max_backpressure: 256 * 1024,
        ..Default::default()
    };
    let server = Server::start(options, echo.clone());
    let (tcp, head) = raw_connect(server.addr, "/", "13");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // More than the kernel buffers both ways hold (several MiB each on loopback).
    const COUNT: usize = 1000;
    const SIZE: usize = 64 * 1024;
    let payload = |i: usize| {
        let mut payload = vec![(i % 251) as u8; SIZE];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        payload
    };
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = sent.clone();
    let mut writing = tcp.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..COUNT {
            writing.write_all(&masked_any(0x2, &payload(i))).unwrap();
            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Wait until the writer is stuck: every buffer between the two is full.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        if now == last || now == COUNT || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let (sent_now, received) = (
        sent.load(std::sync::atomic::Ordering::Relaxed),
        *echo.received.lock().unwrap(),
    );
    assert!(
        sent_now < COUNT && received < COUNT,
        "the server read {received} of {sent_now} messages from a client that reads nothing"
    );
    let mut reading = tcp;
    for i in 0..COUNT {
        let (first, bytes) = read_frame(&mut reading);
        assert_eq!(first, 0x82);
        assert!(bytes == payload(i), "echo {i} differs");
    }
    writer.join().unwrap();
    assert_eq!(*echo.received.lock().unwrap(), COUNT);
}

/// A masked client frame of any length (FIN set).
fn masked_any(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_first(0x80 | opcode, payload)
}

/// A masked client frame of any length with this first byte (FIN, RSV, opcode).
fn masked_first(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x01, 0xc3, 0x7e];
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Reads one server frame of any length (checking it is not masked).
fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut len = [0u8; 2];
            tcp.read_exact(&mut len).unwrap();
            usize::from(u16::from_be_bytes(len))
        }
        127 => {
            let mut len = [0u8; 8];
            tcp.read_exact(&mut len).unwrap();
            u64::from_be_bytes(len) as usize
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_with_1001_and_pinged_before() {
    let options = EngineOptions {
        idle_timeout: Some(Duration::from_secs(2)),
        ping_interval: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let server = Server::start(options, Echo::default());
    let (mut ws, _) = crate::connect(&server.url()).await.unwrap();
    let started = Instant::now();
    // Our client answers pings by itself, and the pongs count as traffic: stay open while
    // reading. After the first ping, stop reading the socket to go quiet (once), then read
    // again: pings came (one per quiet second), then 1001.
    let mut pinged = false;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(6), ws.recv_event()).await {
            Ok(Some(Ok(crate::Event::Ping(_)))) if !pinged => {
                pinged = true;
                // Silence from here: no more pongs.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Ok(Some(Ok(crate::Event::Ping(_)))) => {}
            Ok(Some(Ok(crate::Event::Close(frame)))) => break frame,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pinged);
    assert_eq!(close.map(|f| f.code), Some(CloseCode::GOING_AWAY));
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// Large binary frames are read into buffers of their own; every way they can arrive must still
/// give the same messages: in pieces, fragmented, between small and text frames, with a ping
/// inside a fragmented message.
#[test]
fn large_frames_arriving_every_way_are_echoed_intact() {
    let echo = Echo::default();
    let server = Server::start(EngineOptions::default(), echo.clone());
    let (mut tcp, head) = raw_connect(server.addr, "/", "13");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let bytes = |n: usize, seed: usize| -> Vec<u8> {
        (0..n).map(|i| ((i * 31 + seed) % 256) as u8).collect()
    };
    let big_a = bytes(20_000, 1);
    let big_b = bytes(100_000, 2);
    let big_c = bytes(70_000, 3);
    let text: String = "é".repeat(30_000);
    // 1. a large frame in three pieces with pauses; 2. the same size again (read on the
    // guess); 3. a small one (the guess is wrong); 4. a fragmented binary message of two
    // large frames with a ping between; 5. large text (not held: checked as it arrives).
    let wire_a = masked_any(0x2, &big_a);
    for piece in wire_a.chunks(7_000) {
        tcp.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    tcp.write_all(&masked_any(0x2, &big_a)).unwrap();
    tcp.write_all(&masked_any(0x2, b"small")).unwrap();
    tcp.write_all(&masked_first(0x02, &big_b[..60_000]))
        .unwrap();
    tcp.write_all(&masked_first(0x89, b"mid")).unwrap();
    tcp.write_all(&masked_first(0x80, &big_b[60_000..]))
        .unwrap();
    tcp.write_all(&masked_any(0x2, &big_c)).unwrap();
    tcp.write_all(&masked_any(0x1, text.as_bytes())).unwrap();
    let expected: [(u8, &[u8]); 7] = [
        (0x82, &big_a),
        (0x82, &big_a),
        (0x82, b"small"),
        (0x8a, b"mid"),
        (0x82, &big_b),
        (0x82, &big_c),
        (0x81, text.as_bytes()),
    ];
    for (i, (first, payload)) in expected.into_iter().enumerate() {
        let (got_first, got) = read_frame(&mut tcp);
        assert_eq!(got_first, first, "frame {i}");
        assert!(
            got == payload,
            "frame {i}: {} bytes, expected {}",
            got.len(),
            payload.len()
        );
    }
    assert_eq!(*echo.received.lock().unwrap(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_loops_share_the_listener_and_all_stop_on_shutdown() {
    let echo = Echo::default();
    let options = EngineOptions {
        threads: 3,
        ..Default::default()
    };
    let mut server = Server::start(options, echo.clone());
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(crate::connect(&server.url()).await.unwrap().0);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("client {i}"))).await.unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::text(format!("client {i}"))
        );
    }
    assert_eq!(server.handle.connections(), 30);
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    for ws in &mut clients {
        assert!(matches!(
            ws.recv_event().await,
            Some(Ok(crate::Event::Close(Some(frame)))) if frame.code == CloseCode::GOING_AWAY
        ));
    }
    drop(clients);
    assert!(stopping.await.unwrap() < Duration::from_secs(3));
    assert_eq!(echo.closes.lock().unwrap().len(), 30);
}

/// Garbage from many peers at once (random bytes before and after the handshake, frames cut
/// anywhere, abrupt disconnects) while well-behaved clients talk: the good ones get every echo,
/// nothing panics, and every connection is gone once the peers are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_many_peers_disturbs_no_one_else_and_leaks_nothing() {
    let echo = Echo::default();
    let options = EngineOptions {
        close_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let mut server = Server::start(options, echo.clone());
    let addr = server.addr;
    let chaos: Vec<_> = (0..60u64)
        .map(|seed| {
            std::thread::spawn(move || {
                // xorshift: every peer its own reproducible garbage.
                let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                let mut tcp = if seed % 3 == 0 {
                    // Garbage instead of a request.
                    TcpStream::connect(addr).unwrap()
                } else {
                    let (tcp, head) = raw_connect(addr, "/", "13");
                    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                    tcp
                };
                tcp.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                for _ in 0..(next() % 20) {
                    let mut bytes: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
                    if next() % 2 == 0 {
                        // Something frame-shaped: a plausible header, then noise.
                        let opcode = [0x1, 0x2, 0x0, 0x8, 0x9, 0xa, 0x3][(next() % 7) as usize];
                        let mut frame =
                            masked(opcode, next() % 2 == 0, &bytes[..bytes.len().min(100)]);
                        frame.truncate(1 + (next() as usize % frame.len()));
                        bytes = frame;
                    }
                    if tcp.write_all(&bytes).is_err() {
                        break;
                    }
                }
                if next() % 2 == 0 {
                    let mut sink = [0u8; 4096];
                    while matches!(tcp.read(&mut sink), Ok(n) if n > 0) {}
                }
            })
        })
        .collect();
    let mut good = Vec::new();
    for i in 0..10 {
        let url = server.url();
        good.push(tokio::spawn(async move {
            let (mut ws, _) = crate::connect(&url).await.unwrap();
            for j in 0..50 {
                let message = Message::text(format!("{i}:{j}"));
                ws.send(message.clone()).await.unwrap();
                assert_eq!(ws.recv().await.unwrap().unwrap(), message);
            }
            ws.close(CloseCode::NORMAL, "").await.unwrap();
        }));
    }
    for client in good {
        client.await.unwrap();
    }
    for peer in chaos {
        peer.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.handle.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.handle.connections(), 0, "connections left behind");
    assert!(server.stop() < Duration::from_secs(2));
}

/// The timers' one meaning (duplex_proto::Timers), in the engine: a silent peer gets Close
/// 1001 "idle timeout" after the idle timeout, then, never answering, an end of stream once
/// the close timeout ran out (to within the sweep's second each).
#[test]
fn an_idle_peer_gets_1001_then_eof_within_the_close_timeout() {
    let options = EngineOptions {
        idle_timeout: Some(Duration::from_secs(2)),
        close_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let echo = Echo::default();
    let server = Server::start(options, echo.clone());
    let (mut tcp, head) = raw_connect(server.addr, "/", "13");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let started = Instant::now();
    let (first, payload) = read_frame(&mut tcp);
    let closed_after = started.elapsed();
    assert_eq!(first, 0x88);
    assert_eq!(&payload[..2], &1001u16.to_be_bytes());
    assert_eq!(&payload[2..], b"idle timeout");
    // Idle for 2 s, give or take the quarter-interval check and the sweep's second.
    assert!(
        closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_millis(4000),
        "{closed_after:?}"
    );
    assert_eof(&mut tcp);
    let eof_after = started.elapsed() - closed_after;
    assert!(
        eof_after >= Duration::from_millis(900) && eof_after < Duration::from_millis(2600),
        "{eof_after:?}"
    );
    assert_eq!(echo.closes.lock().unwrap().len(), 1, "on_close once");
}

/// A peer that answers the idle Close gets its end of stream at once: the server closes TCP
/// first (RFC 6455 section 7.1.1) without waiting for the close timeout.
#[test]
fn an_idle_peer_that_answers_the_close_is_let_go_at_once() {
    let options = EngineOptions {
        idle_timeout: Some(Duration::from_secs(1)),
        close_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let server = Server::start(options, Echo::default());
    let (mut tcp, _) = raw_connect(server.addr, "/", "13");
    let (first, _) = read_frame(&mut tcp);
    assert_eq!(first, 0x88);
    let answered = Instant::now();
    tcp.write_all(&masked_any(0x8, &1001u16.to_be_bytes()))
        .unwrap();
    assert_eof(&mut tcp);
    assert!(answered.elapsed() < Duration::from_secs(2));
}

/// Keepalive pings go only to a quiet peer: one that keeps sending is never pinged; once it
/// stops, a ping comes after the interval (to within the sweep's second).
#[test]
fn keepalive_pings_only_a_quiet_peer() {
    let options = EngineOptions {
        ping_interval: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let server = Server::start(options, Echo::default());
    let (mut tcp, _) = raw_connect(server.addr, "/", "13");
    let busy = Instant::now();
    while busy.elapsed() < Duration::from_millis(3500) {
        tcp.write_all(&masked_any(0x1, b"busy")).unwrap();
        let (first, payload) = read_frame(&mut tcp);
        assert_eq!(
            (first, &payload[..]),
            (0x81, &b"busy"[..]),
            "pinged while busy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let quiet = Instant::now();
    let (first, _) = read_frame(&mut tcp);
    assert_eq!(first, 0x89);
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(700) && after < Duration::from_millis(2600),
        "{after:?}"
    );
}

/// What ends a connection behind other messages in the same read is carried out by the core
/// once they are answered: the echo goes out before the Close (Autobahn 3.2, 5.15), with no
/// second `recv` from the loop.
#[test]
fn messages_before_a_violation_or_a_close_are_echoed_first() {
    let echo = Echo::default();
    let server = Server::start(EngineOptions::default(), echo.clone());
    // A message, then a frame with RSV2 set (no extension defines it): 1002 after the echo.
    let (mut tcp, _) = raw_connect(server.addr, "/", "13");
    let mut bytes = masked(0x1, true, b"first");
    bytes.extend_from_slice(&masked_first(0xa1, b"bad"));
    tcp.write_all(&bytes).unwrap();
    assert_eq!(read_frame(&mut tcp), (0x81, b"first".to_vec()));
    let (first, payload) = read_frame(&mut tcp);
    assert_eq!((first, &payload[..2]), (0x88, &1002u16.to_be_bytes()[..]));
    assert_eof(&mut tcp);
    // A message, then the peer's Close: the echo, then the Close reply.
    let (mut tcp, _) = raw_connect(server.addr, "/", "13");
    let mut bytes = masked(0x1, true, b"last");
    bytes.extend_from_slice(&masked(0x8, true, &1000u16.to_be_bytes()));
    tcp.write_all(&bytes).unwrap();
    assert_eq!(read_frame(&mut tcp), (0x81, b"last".to_vec()));
    assert_eq!(read_frame(&mut tcp), (0x88, 1000u16.to_be_bytes().to_vec()));
    assert_eof(&mut tcp);
    let codes: Vec<u16> = echo.closes.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(codes, [1002, 1000]);
}

/// Writes one byte every 50 ms until the write fails (the server dropped the socket and
/// answered with a reset); returns how long that took.
fn time_until_dropped(tcp: &mut TcpStream) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if tcp.write_all(b"x").is_err() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server kept a refused connection for 10 s");
}

#[test]
fn a_refusal_lingers_for_the_handshake_modules_bound() {
    use duplex_proto::handshake::REFUSAL_LINGER;
    // A close timeout far from the linger, to tell the two apart.
    let options = EngineOptions {
        close_timeout: Duration::from_secs(8),
        ..Default::default()
    };
    let server = Server::start(options, Echo::default());
    let (mut tcp, head) = raw_connect(server.addr, "/private", "13");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"token required", "the body, then the server's FIN");
    // The socket stays open on our side: the server drops it once the linger is over (the
    // sweep runs once a second, so at most a second and a bit later).
    let lingered = time_until_dropped(&mut tcp);
    assert!(
        lingered >= REFUSAL_LINGER - Duration::from_millis(100),
        "{lingered:?}"
    );
    assert!(lingered < REFUSAL_LINGER * 3, "{lingered:?}");
}

#[test]
fn a_refused_client_that_keeps_sending_is_dropped_after_the_drain_limit() {
    use duplex_proto::handshake::{REFUSAL_DRAIN_LIMIT, REFUSAL_LINGER};
    let server = Server::start(EngineOptions::default(), Echo::default());
    let (mut tcp, head) = raw_connect(server.addr, "/private", "13");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while tcp.write_all(&chunk).is_ok() {
        sent += chunk.len();
        assert!(sent < 64 * REFUSAL_DRAIN_LIMIT, "never dropped");
    }
    assert!(
        sent >= REFUSAL_DRAIN_LIMIT / 2,
        "dropped after {sent} bytes"
    );
    // Well before the linger's time bound: it was the byte bound.
    assert!(
        started.elapsed() < REFUSAL_LINGER,
        "{:?}",
        started.elapsed()
    );
}
