//! The engine's HTTP/2 hand-off on 127.0.0.1: what the receiver gets (the socket, still open
//! and out of the engine's hands; the bytes read; the TLS session), and that without a
//! hand-off nothing changes (the preface is a bad request, ALPN stays `http/1.1`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use duplex_proto::Message;

use super::{Engine, EngineHandle, EngineOptions, HTTP2_PREFACE, HandedOff, Handler, Handoff};

const WAIT: Duration = Duration::from_secs(10);

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, socket: &mut super::Socket<'_>, message: Message) {
        let _ = socket.send(message);
    }
}

struct Server {
    addr: SocketAddr,
    handle: EngineHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// An engine on a free port; with `handoff`, its connections arrive on the receiver.
    fn start(mut options: EngineOptions, handoff: bool) -> (Server, mpsc::Receiver<HandedOff>) {
        let (tx, rx) = mpsc::channel();
        if handoff {
            let tx = std::sync::Mutex::new(tx);
            options.http2_handoff = Some(Handoff::new(move |handed| {
                let _ = tx.lock().unwrap().send(handed);
            }));
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Engine::new(options);
        let handle = engine.handle();
        let thread = std::thread::spawn(move || engine.run(listener, || Echo));
        let server = Server {
            addr,
            handle,
            thread: Some(thread),
        };
        (server, rx)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The engine's count drops to 0 (bounded).
fn wait_no_connections(handle: &EngineHandle) {
    let deadline = Instant::now() + WAIT;
    while handle.connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        handle.connections(),
        0,
        "the engine still counts the connection"
    );
}

#[test]
fn an_h2c_preface_in_pieces_is_handed_off_with_what_followed_and_the_socket_stays_open() {
    let (server, handed) = Server::start(EngineOptions::default(), true);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    // A piece that could still be the preface: the engine waits for more.
    client.write_all(&HTTP2_PREFACE[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    client.write_all(&HTTP2_PREFACE[5..]).unwrap();
    client.write_all(b"\0\0\0\x04\0\0\0\0\0").unwrap();
    let connection = handed.recv_timeout(WAIT).expect("no hand-off");
    let mut expected = HTTP2_PREFACE.to_vec();
    expected.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
    // The two writes may arrive as one read or as two: the engine keeps everything so far.
    let mut read = connection.read;
    let mut stream = connection.stream;
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    while read.len() < expected.len() {
        let mut buf = [0; 64];
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the handed-off socket ended");
        read.extend_from_slice(&buf[..n]);
    }
    assert_eq!(read, expected);
    #[cfg(feature = "tls")]
    assert!(connection.tls.is_none());
    assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap());
    wait_no_connections(&server.handle);
    // The socket is the receiver's now: it talks, and the engine does not close it.
    stream.write_all(b"from the receiver").unwrap();
    let mut answer = [0; 17];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"from the receiver");
}

#[test]
fn without_a_hand_off_the_preface_is_a_bad_request_and_http11_still_works_beside_one() {
    let (server, _) = Server::start(EngineOptions::default(), false);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(HTTP2_PREFACE).unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");

    // With a hand-off, an HTTP/1.1 request starting like the preface ("P...") is still HTTP/1.1.
    let (server, handed) = Server::start(EngineOptions::default(), true);
    let mut client = TcpStream::connect(server.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 405"), "{answer:?}");
    assert!(
        handed.try_recv().is_err(),
        "an HTTP/1.1 request was handed off"
    );
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, StreamOwned};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::resume::{Prefixed, ResumedTls};

    fn certificate() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let server = crate::tls::server_config(vec![cert.clone()], key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = ClientConfig::clone(&crate::tls::client_config_with_roots(roots).unwrap());
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (server, Arc::new(client))
    }

    fn tls_client(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
    ) -> StreamOwned<ClientConnection, TcpStream> {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = ClientConnection::new(config.clone(), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        StreamOwned::new(conn, tcp)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alpn_h2_hands_off_the_session_which_continues_over_tokio() {
        let (server_config, client_config) = certificate();
        let options = EngineOptions {
            tls: Some(server_config),
            ..EngineOptions::default()
        };
        let (server, handed) = Server::start(options, true);
        let addr = server.addr;
        let client = tokio::task::spawn_blocking(move || {
            let mut tls = tls_client(addr, &client_config);
            tls.write_all(HTTP2_PREFACE).unwrap();
            tls.flush().unwrap();
            let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
            // What the receiver writes through the resumed session, then its close_notify.
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).unwrap();
            (alpn, answer)
        });
        let connection = tokio::task::spawn_blocking(move || handed.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("no hand-off");
        let session = connection.tls.expect("the TLS session");
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        assert!(!session.is_handshaking());
        wait_no_connections(&server.handle);

        let tcp = tokio::net::TcpStream::from_std(connection.stream).unwrap();
        let mut io = Prefixed::new(connection.read, ResumedTls::new(tcp, session));
        let mut preface = vec![0; HTTP2_PREFACE.len()];
        tokio::time::timeout(WAIT, io.read_exact(&mut preface))
            .await
            .expect("the preface")
            .unwrap();
        assert_eq!(preface, HTTP2_PREFACE);
        io.write_all(b"served elsewhere").await.unwrap();
        io.shutdown().await.unwrap();
        let (alpn, answer) = tokio::time::timeout(WAIT, client)
            .await
            .expect("the client")
            .unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(answer, b"served elsewhere");
    }

    #[test]
    fn without_a_hand_off_alpn_h2_is_not_chosen() {
        let (server_config, client_config) = certificate();
        let mut offered = rustls::ServerConfig::clone(&server_config);
        offered.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let options = EngineOptions {
            tls: Some(Arc::new(offered)),
            ..EngineOptions::default()
        };
        let (server, _) = Server::start(options, false);
        let mut tls = tls_client(server.addr, &client_config);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut byte = [0; 1];
        tls.read_exact(&mut byte).unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
}
