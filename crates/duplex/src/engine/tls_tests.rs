//! The engine over `wss://` on 127.0.0.1: a self-signed certificate made by rcgen, trusted by
//! duplex's own client (whole conversations) and by a bare rustls client (bytes a well-behaved
//! client never sends, and what the server does at the TLS level: ALPN, close_notify).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duplex_proto::{CloseCode, Message};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::{Engine, EngineHandle, EngineOptions, Handler, Socket, SocketId};
use crate::ClientOptions;
use crate::tls::ClientTls;

/// A certificate for 127.0.0.1, the server's configuration (advertising `h2` too, which the
/// engine must not keep) and a client configuration that trusts it.
fn certificate() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let server = crate::tls::server_config(vec![cert.clone()], key).unwrap();
    let mut server = rustls::ServerConfig::clone(&server);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = crate::tls::client_config_with_roots(roots).unwrap();
    (Arc::new(server), client)
}

/// Echoes; counts messages; records closes.
#[derive(Clone, Default)]
struct Echo {
    received: Arc<AtomicUsize>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
}

impl Handler for Echo {
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) {
        self.received.fetch_add(1, Ordering::Relaxed);
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
    client: Arc<ClientConfig>,
    echo: Echo,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(options: EngineOptions) -> Server {
        let (server_config, client) = certificate();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Engine::new(EngineOptions {
            tls: Some(server_config),
            ..options
        });
        let handle = engine.handle();
        let echo = Echo::default();
        let handler = echo.clone();
        let thread = std::thread::spawn(move || engine.run(listener, move || handler.clone()));
        Server {
            addr,
            handle,
            client,
            echo,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("wss://{}/", self.addr)
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            tls: ClientTls::Config(self.client.clone()),
            ..ClientOptions::default()
        }
    }

    /// Waits (bounded) until no connection is left.
    fn wait_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.handle.connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.handle.connections(), 0, "connections left open");
    }

    fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A bare rustls client that offers `h2` before `http/1.1`, after the TLS handshake and the
/// upgrade: the stream and the response head.
fn raw_wss(server: &Server) -> (Tls, String) {
    let mut config = ClientConfig::clone(&server.client);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(
        b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (tls, String::from_utf8(head).unwrap())
}

/// A masked client frame (payload under 126 bytes).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// One unmasked server frame (payload under 126 bytes).
fn read_frame(tls: &mut Tls) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tls.read_exact(&mut head).unwrap();
    assert!(head[1] < 126, "a short unmasked frame: {head:?}");
    let mut payload = vec![0u8; usize::from(head[1])];
    tls.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

/// How long until the server ends the connection (end of stream or reset), at most 10 s.
fn time_until_dropped(tcp: &mut TcpStream) -> Duration {
    let started = Instant::now();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = [0u8; 4096];
    // Whatever the server answers (an alert) is read and discarded.
    while let Ok(1..) = tcp.read(&mut sink) {}
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_over_wss_with_and_without_compression() {
    let mut server = Server::start(EngineOptions::default());
    for deflate in [true, false] {
        let mut options = server.client_options();
        if !deflate {
            options.deflate = None;
        }
        let (mut ws, response) = crate::connect_with(&server.url(), options).await.unwrap();
        assert!(ws.get_ref().is_tls());
        assert_eq!(
            response.headers.contains_key("sec-websocket-extensions"),
            deflate
        );
        // 3 MiB: far past rustls' 64 KiB of records, so the writes go out in many rounds.
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
    tokio::task::block_in_place(|| server.wait_empty());
    assert_eq!(
        *server.echo.closes.lock().unwrap(),
        vec![(4000, "bye".to_owned()), (4000, "bye".to_owned())]
    );
    server.stop();
}

#[test]
fn alpn_is_http11_fragments_are_reassembled_and_the_close_ends_with_close_notify() {
    let server = Server::start(EngineOptions::default());
    let (mut tls, head) = raw_wss(&server);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The client offered h2 first, and so did the server's configuration.
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut wire = masked(0x01, b"hel");
    wire.extend(masked(0x89, b"ping!"));
    wire.extend(masked(0x80, b"lo"));
    // Byte by byte, one TLS record each: every frame boundary falls in every record place.
    for byte in wire {
        tls.write_all(&[byte]).unwrap();
        tls.flush().unwrap();
    }
    assert_eq!(read_frame(&mut tls), (0x8a, b"ping!".to_vec()));
    assert_eq!(read_frame(&mut tls), (0x81, b"hello".to_vec()));
    tls.write_all(&masked(0x88, &[0x03, 0xe8])).unwrap();
    assert_eq!(read_frame(&mut tls), (0x88, vec![0x03, 0xe8]));
    // rustls reports a clean end (0) only after close_notify; a bare TCP close is an error.
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
    server.wait_empty();
    assert_eq!(server.echo.received.load(Ordering::Relaxed), 1);
    assert_eq!(
        *server.echo.closes.lock().unwrap(),
        vec![(1000, String::new())]
    );
}

#[test]
fn a_peer_that_stalls_in_the_tls_handshake_is_dropped_at_the_handshake_deadline() {
    let server = Server::start(EngineOptions {
        handshake_timeout: Duration::from_secs(1),
        ..EngineOptions::default()
    });
    // Half a ClientHello, then nothing.
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut client = ClientConnection::new(server.client.clone(), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    // And a peer that completes the TLS handshake but sends no request.
    let conn = ClientConnection::new(
        server.client.clone(),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut quiet = StreamOwned::new(conn, TcpStream::connect(server.addr).unwrap());
    while quiet.conn.is_handshaking() {
        quiet.conn.complete_io(&mut quiet.sock).unwrap();
    }
    let waited = time_until_dropped(&mut stalled);
    // The deadline is swept once a second: 1 s, rounded up to the next sweep.
    assert!(
        waited > Duration::from_millis(500) && waited < Duration::from_secs(4),
        "dropped after {waited:?}"
    );
    let waited = time_until_dropped(&mut quiet.sock);
    assert!(waited < Duration::from_secs(4), "dropped after {waited:?}");
    server.wait_empty();
    assert!(server.echo.closes.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_client_hello_closes_only_that_connection() {
    let server = Server::start(EngineOptions {
        handshake_timeout: Duration::from_secs(30),
        ..EngineOptions::default()
    });
    let (mut ws, _) = crate::connect_with(&server.url(), server.client_options())
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("before"));
    let addr = server.addr;
    let waits = tokio::task::spawn_blocking(move || {
        let garbage: [&[u8]; 3] = [
            // A plain ws:// client at a wss:// port.
            b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\r\n",
            // A handshake record with a nonsense body.
            &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0u8; 64],
        ];
        garbage
            .iter()
            .map(|bytes| {
                let mut tcp = TcpStream::connect(addr).unwrap();
                tcp.write_all(bytes).unwrap();
                time_until_dropped(&mut tcp)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for waited in waits {
        // At once, not at the (30 s) handshake deadline.
        assert!(waited < Duration::from_secs(2), "dropped after {waited:?}");
    }
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("after"));
    assert_eq!(server.handle.connections(), 1);
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    tokio::task::block_in_place(|| server.wait_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_wss_connections_at_once_on_two_loops() {
    let mut server = Server::start(EngineOptions {
        threads: 2,
        ..EngineOptions::default()
    });
    let clients: Vec<_> = (0..64)
        .map(|n| {
            let (url, options) = (server.url(), server.client_options());
            tokio::spawn(async move {
                let (mut ws, _) = crate::connect_with(&url, options).await.unwrap();
                for i in 0..20 {
                    let message = Message::text(format!("{n}:{i}:{}", "x".repeat(i * 100)));
                    ws.send(message.clone()).await.unwrap();
                    assert_eq!(ws.recv().await.unwrap().unwrap(), message);
                }
                ws.close(CloseCode::NORMAL, "").await.unwrap();
            })
        })
        .collect();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("a client did not finish within 30 s")
            .unwrap();
    }
    tokio::task::block_in_place(|| server.wait_empty());
    assert_eq!(server.echo.received.load(Ordering::Relaxed), 64 * 20);
    assert_eq!(server.echo.closes.lock().unwrap().len(), 64);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_that_does_not_read_is_not_read_either_and_loses_nothing() {
    let server = Server::start(EngineOptions {
        max_backpressure: 256 * 1024,
        ..EngineOptions::default()
    });
    let mut options = server.client_options();
    options.deflate = None;
    let (ws, _) = crate::connect_with(&server.url(), options).await.unwrap();
    let (mut sender, mut receiver) = ws.split();
    // More than the kernel buffers both ways hold, plus rustls' and the core's.
    const COUNT: usize = 400;
    const SIZE: usize = 64 * 1024;
    let payload = |i: usize| {
        let mut payload = vec![(i % 251) as u8; SIZE];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        payload
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let progress = sent.clone();
    let writer = tokio::spawn(async move {
        for i in 0..COUNT {
            sender.send(Message::binary(payload(i))).await.unwrap();
            progress.fetch_add(1, Ordering::Relaxed);
        }
        sender
    });
    // Wait until the writer is stuck: every buffer between the two is full.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last || now == COUNT || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let (sent_now, received) = (
        sent.load(Ordering::Relaxed),
        server.echo.received.load(Ordering::Relaxed),
    );
    assert!(
        sent_now < COUNT && received < COUNT,
        "the server read {received} of {sent_now} messages from a client that reads nothing"
    );
    for i in 0..COUNT {
        let message = receiver.recv().await.unwrap().unwrap();
        assert!(message.as_bytes() == &payload(i)[..], "echo {i} differs");
    }
    let sender = writer.await.unwrap();
    assert_eq!(server.echo.received.load(Ordering::Relaxed), COUNT);
    let mut ws = sender.reunite(receiver).unwrap();
    ws.close(CloseCode::NORMAL, "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_wss_connections_with_1001() {
    let mut server = Server::start(EngineOptions::default());
    let (mut ws, _) = crate::connect_with(&server.url(), server.client_options())
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("hi"));
    let handle = server.handle.clone();
    let stopping = tokio::task::spawn_blocking(move || {
        handle.shutdown();
    });
    // Our client answers the Close by itself; the stream then ends.
    assert!(ws.recv().await.is_none());
    assert_eq!(ws.peer_close().unwrap().code, CloseCode::GOING_AWAY);
    stopping.await.unwrap();
    tokio::task::block_in_place(|| server.stop());
}
