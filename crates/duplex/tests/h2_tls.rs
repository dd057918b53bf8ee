//! `wss://` over HTTP/2: the client offers ALPN `h2` and `http/1.1`; a server that picks `h2`
//! (and advertises extended CONNECT) gets the WebSocket as an RFC 8441 stream, a server that
//! picks `http/1.1` gets an HTTP/1.1 upgrade on that same TLS connection. This is the setup a
//! browser needs for RFC 8441.
#![cfg(all(feature = "hyper", feature = "http2", feature = "tls"))]

mod common;

#[path = "../examples/hyper_echo.rs"]
#[allow(
    dead_code,
    reason = "the example's main is not run here, only its handler"
)]
mod hyper_echo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{listener, within};
use duplex::tls::{self, ClientTls};
use duplex::{ClientOptions, Message};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS server for 127.0.0.1 with a fresh self-signed certificate, offering `alpn`, serving
/// the hyper example's handler; returns its address, the certificate and the accept count.
async fn tls_server(alpn: &[&[u8]]) -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let der = certified.cert.der().to_vec();
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = tls::server_config(vec![CertificateDer::from(der.clone())], key).unwrap();
    let mut config = (*config).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tls::TlsAcceptor::from(Arc::new(config));
    let (listener, addr) = listener().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tcp.set_nodelay(true).expect("nodelay");
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls::accept(&acceptor, tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let _ = duplex::upgrade::builder()
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        service_fn(hyper_echo::handle),
                    )
                    .await;
            });
        }
    });
    (addr, der, accepted)
}

fn options(cert: Vec<u8>) -> ClientOptions {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.into()).unwrap();
    ClientOptions {
        tls: ClientTls::Config(tls::client_config_with_roots(roots).unwrap()),
        http2: true,
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn wss_over_http2_by_alpn() {
    let (addr, cert, accepted) = tls_server(&[b"h2", b"http/1.1"]).await;
    let (mut ws, response) = within(duplex::connect_auto(
        &format!("wss://{addr}/echo"),
        options(cert),
    ))
    .await
    .expect("connect");
    assert!(ws.get_ref().is_http2(), "ALPN h2 was not used");
    assert_eq!(response.status, 200);
    within(ws.send(Message::text("secure h2")))
        .await
        .expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("open").expect("echo"),
        Message::text("secure h2")
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wss_falls_back_on_the_same_connection_when_alpn_picks_http1() {
    let (addr, cert, accepted) = tls_server(&[b"http/1.1"]).await;
    let (mut ws, response) = within(duplex::connect_auto(
        &format!("wss://{addr}/echo"),
        options(cert),
    ))
    .await
    .expect("connect");
    assert!(!ws.get_ref().is_http2());
    assert_eq!(response.status, 101);
    within(ws.send(Message::text("secure h1")))
        .await
        .expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("open").expect("echo"),
        Message::text("secure h1")
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the TLS connection ALPN chose http/1.1 on should have been used"
    );
}

#[tokio::test]
async fn a_certificate_problem_is_returned_not_retried_over_http1() {
    let (addr, _cert, accepted) = tls_server(&[b"h2", b"http/1.1"]).await;
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let result = within(duplex::connect_auto(
        &format!("wss://{addr}/echo"),
        options(other.cert.der().to_vec()),
    ))
    .await;
    assert!(
        matches!(result, Err(duplex::Error::Tls(_))),
        "expected a TLS error, got {result:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no second attempt");
}
