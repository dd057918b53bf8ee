//! [`Prefixed`] and [`ResumedTls`] on 127.0.0.1: the server's TLS handshake runs on a blocking
//! std socket, as the engine's loop would run it, then the session continues over tokio; the
//! peer is tokio-rustls, a client that knows nothing of the hand-over.

use super::*;

#[tokio::test]
async fn prefixed_replays_the_prefix_then_reads_and_writes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, mut b) = tokio::io::duplex(64);
    let mut io = Prefixed::new(&b"abc"[..], a);
    b.write_all(b"def").await.unwrap();
    let mut got = [0; 6];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcdef");
    io.write_all(b"back").await.unwrap();
    let mut back = [0; 4];
    b.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
    let (rest, _) = io.into_parts();
    assert!(rest.is_empty());
}

#[cfg(feature = "tls")]
mod tls {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    use super::super::ResumedTls;

    const WAIT: Duration = Duration::from_secs(10);

    /// A listener and a client connected to it: the server side as a `ResumedTls` whose
    /// handshake ran blocking (std socket, `complete_io`), the client side tokio-rustls.
    async fn pair() -> (ResumedTls<TcpStream>, TlsStream<TcpStream>) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let server_config = crate::tls::server_config(vec![cert.clone()], key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = crate::tls::client_config_with_roots(roots).unwrap();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = tokio::task::spawn_blocking(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(WAIT)).unwrap();
            let mut session = rustls::ServerConnection::new(server_config).unwrap();
            while session.is_handshaking() {
                session.complete_io(&mut tcp).unwrap();
            }
            tcp.set_nonblocking(true).unwrap();
            (tcp, session)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let client = tokio_rustls::TlsConnector::from(Arc::clone(&client_config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (tcp, session) = server.await.unwrap();
        let server = ResumedTls::new(TcpStream::from_std(tcp).unwrap(), session);
        (server, client)
    }

    async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(WAIT, future)
            .await
            .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
    }

    #[tokio::test]
    async fn echoes_through_a_resumed_session() {
        let (mut server, mut client) = pair().await;
        let echo = tokio::spawn(async move {
            let mut buf = [0; 1024];
            loop {
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    // The client's close_notify: answer with ours.
                    server.shutdown().await.unwrap();
                    return;
                }
                server.write_all(&buf[..n]).await.unwrap();
                server.flush().await.unwrap();
            }
        });
        for i in 0..50 {
            let line = format!("message {i}");
            client.write_all(line.as_bytes()).await.unwrap();
            let mut back = vec![0; line.len()];
            bounded("echo", client.read_exact(&mut back)).await.unwrap();
            assert_eq!(back, line.as_bytes());
        }
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        bounded("end", client.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
        bounded("server", echo).await.unwrap();
    }

    #[tokio::test]
    async fn large_writes_arrive_whole_and_end_with_close_notify() {
        let (mut server, mut client) = pair().await;
        // 8 MiB, more than the socket and rustls' buffers hold: writes wait for the reader.
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&data).await.unwrap();
            server.shutdown().await.unwrap();
            server
        });
        let mut got = Vec::new();
        // read_to_end succeeds only on a clean end: tokio-rustls reports a TCP end without
        // close_notify as UnexpectedEof.
        bounded("read", client.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes differ");
        bounded("writer", writer).await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_ends_tcp_without_close_notify_is_an_error_not_an_end() {
        let (mut server, client) = pair().await;
        let (mut tcp, _) = client.into_inner();
        // FIN without close_notify (dropping the socket could reset it instead: the server's
        // session tickets may be unread).
        tcp.shutdown().await.unwrap();
        let mut buf = [0; 16];
        let error = bounded("read", server.read(&mut buf)).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
        drop(tcp);
    }

    #[tokio::test]
    async fn a_peer_reset_is_an_error() {
        let (mut server, client) = pair().await;
        let (tcp, _) = client.into_inner();
        // SO_LINGER 0: closing sends RST.
        #[allow(
            deprecated,
            reason = "deprecated for blocking the thread at drop, which a zero linger does not"
        )]
        tcp.set_linger(Some(Duration::ZERO)).unwrap();
        drop(tcp);
        let mut buf = [0; 16];
        let error = bounded("read", server.read(&mut buf)).await.unwrap_err();
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "{error:?}"
        );
        // Writing to a reset connection fails too, rather than hanging.
        let data = vec![7; 1 << 20];
        let written = bounded("write", async {
            server.write_all(&data).await?;
            server.flush().await
        })
        .await;
        assert!(written.is_err(), "a write to a reset peer succeeded");
    }

    #[tokio::test]
    async fn garbage_from_the_peer_is_an_invalid_data_error() {
        let (mut server, client) = pair().await;
        let (mut tcp, _) = client.into_inner();
        tcp.write_all(b"\x17\x03\x03\x00\x05hello").await.unwrap();
        let mut buf = [0; 16];
        let error = bounded("read", server.read(&mut buf)).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
    }
}
