//! `wss://` against a server with a self-signed certificate (made by rcgen, loaded from PEM
//! files), trusted through a custom root store.
#![cfg(feature = "tls")]

mod common;

use std::time::Duration;

use common::{listener, within};
use duplex::tls::{self, ClientTls};
use duplex::{ClientOptions, CloseCode, Error, Message};

/// Writes a fresh self-signed certificate for 127.0.0.1 to PEM files; returns their paths and
/// the certificate.
fn self_signed(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("duplex-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, certified.cert.der().to_vec())
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate_and_custom_root() {
    within(async {
        let (cert_path, key_path, cert_der) = self_signed("ok");
        let acceptor = tls::acceptor_from_pem(&cert_path, &key_path).unwrap();
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = tls::accept(&acceptor, tcp, Duration::from_secs(5)).await
                    else {
                        return;
                    };
                    assert!(stream.is_tls());
                    let mut ws = duplex::accept(stream).await.unwrap();
                    while let Some(Ok(message)) = ws.recv().await {
                        ws.send(message).await.unwrap();
                    }
                });
            }
        });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der.into()).unwrap();
        let options = ClientOptions {
            tls: ClientTls::Config(tls::client_config_with_roots(roots).unwrap()),
            ..ClientOptions::default()
        };
        let url = format!("wss://{addr}/secure");
        let (mut ws, _) = duplex::connect_with(&url, options).await.unwrap();
        assert!(ws.get_ref().is_tls());
        ws.send(Message::text("over tls")).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("over tls"));
        let big = vec![7u8; 300_000];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap().as_bytes(), &big[..]);
        ws.close(CloseCode::NORMAL, "").await.unwrap();

        // The default (Mozilla) roots do not trust it.
        let err = duplex::connect(&url).await.unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err:?}");

        std::fs::remove_dir_all(cert_path.parent().unwrap()).unwrap();
        let _ = key_path;
    })
    .await;
}

#[test]
fn pem_loading_errors_name_the_file() {
    let missing = tls::acceptor_from_pem("/nonexistent/cert.pem", "/nonexistent/key.pem");
    let Err(err) = missing else {
        panic!("loaded a missing file")
    };
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}
