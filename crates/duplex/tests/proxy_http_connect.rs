//! HTTP CONNECT through a real tinyproxy: `ws://` and `wss://`, with and without Basic
//! credentials, and the failures a user meets (407, a target the proxy cannot reach, no
//! proxy listening, a proxy that never answers).
#![cfg(feature = "tls")]

mod proxy_support;

use std::time::Duration;

use duplex::proxy::{ProxyChoice, ProxyError};
use duplex::{ClientOptions, Error};
use proxy_support::{dead_port, echo_once, echo_server, tinyproxy, within, wss_echo_server};

fn via(proxy: &str) -> ClientOptions {
    ClientOptions {
        proxy: ProxyChoice::Use(proxy.parse().unwrap()),
        ..ClientOptions::default()
    }
}

fn proxy_error(e: Error) -> ProxyError {
    match e {
        Error::Proxy(e) => e,
        other => panic!("expected a proxy error, got {other:?}"),
    }
}

#[tokio::test]
async fn ws_and_wss_through_connect_without_auth() {
    let proxy = tinyproxy(None);
    within(async {
        let ws = echo_server(None).await;
        let url = format!("http://{}", proxy.addr);
        let peer = echo_once(&format!("ws://{ws}/plain"), via(&url))
            .await
            .unwrap();
        assert_eq!(peer, proxy.addr, "the TCP stream goes to the proxy");

        // TLS to the origin, inside the tunnel; the proxy resolves `localhost`.
        let (wss, tls, _) = wss_echo_server().await;
        let mut options = via(&url);
        options.tls = tls;
        let target = format!("wss://localhost:{}/secure", wss.port());
        let peer = echo_once(&target, options).await.unwrap();
        assert_eq!(peer, proxy.addr);
    })
    .await;
}

#[tokio::test]
async fn basic_auth_from_the_url_userinfo() {
    let proxy = tinyproxy(Some(("alice", "s3cret")));
    within(async {
        let ws = echo_server(None).await;
        let (wss, tls, _) = wss_echo_server().await;

        let good = format!("http://alice:s3cret@{}", proxy.addr);
        let peer = echo_once(&format!("ws://{ws}/"), via(&good)).await.unwrap();
        assert_eq!(peer, proxy.addr);
        let mut options = via(&good);
        options.tls = tls.clone();
        let peer = echo_once(&format!("wss://127.0.0.1:{}/", wss.port()), options)
            .await
            .unwrap();
        assert_eq!(peer, proxy.addr);

        // No credentials: 407 with the proxy's challenge.
        let none = format!("http://{}", proxy.addr);
        let e = proxy_error(
            echo_once(&format!("ws://{ws}/"), via(&none))
                .await
                .unwrap_err(),
        );
        match &e {
            ProxyError::AuthRequired { status, challenge } => {
                assert_eq!(*status, 407);
                let challenge = challenge.as_deref().unwrap_or_default();
                assert!(challenge.starts_with("Basic"), "{challenge:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("407"), "{e}");

        // Wrong password, over wss: tinyproxy says 401 here, still an authentication failure.
        let wrong = format!("http://alice:nope@{}", proxy.addr);
        let mut options = via(&wrong);
        options.tls = tls;
        let e = proxy_error(
            echo_once(&format!("wss://127.0.0.1:{}/", wss.port()), options)
                .await
                .unwrap_err(),
        );
        match e {
            ProxyError::AuthRequired { status, .. } => assert!(status == 401 || status == 407),
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_target_the_proxy_cannot_reach_is_refused_with_its_status() {
    let proxy = tinyproxy(None);
    within(async {
        let url = format!("ws://127.0.0.1:{}/", dead_port());
        let e = proxy_error(
            echo_once(&url, via(&format!("http://{}", proxy.addr)))
                .await
                .unwrap_err(),
        );
        match e {
            // tinyproxy answers "500 Unable to connect".
            ProxyError::Refused { status, reason } => {
                assert!(status.is_server_error(), "{status}");
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}\n{}", proxy.log()),
        }
    })
    .await;
}

#[tokio::test]
async fn a_proxy_that_is_not_listening_is_unreachable() {
    within(async {
        let port = dead_port();
        let e = proxy_error(
            echo_once(
                "ws://127.0.0.1:1/",
                via(&format!("http://127.0.0.1:{port}")),
            )
            .await
            .unwrap_err(),
        );
        match e {
            ProxyError::Unreachable { proxy, error } => {
                assert_eq!(proxy, format!("127.0.0.1:{port}"));
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_proxy_that_never_answers_times_out() {
    within(async {
        // Accepts, reads the CONNECT, says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = tcp.readable().await;
            let _ = tcp.try_read(&mut buf);
            // Held open until the test ends.
            std::future::pending::<()>().await;
            drop(tcp);
        });
        let mut options = via(&format!("http://{addr}"));
        options.connect_timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let e = proxy_error(echo_once("ws://127.0.0.1:1/", options).await.unwrap_err());
        assert!(matches!(e, ProxyError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        silent.abort();
    })
    .await;
}
