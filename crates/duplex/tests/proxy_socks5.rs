//! SOCKS5 through a real dante (`danted`, no authentication) and, for username/password
//! (RFC 1929), through the small server of `proxy_support` (dante's username method checks
//! system accounts, which a test should not create): `ws://` and `wss://`, `socks5://` (the
//! client resolves) against `socks5h://` (the proxy resolves), and the failures.
#![cfg(feature = "tls")]

mod proxy_support;

use duplex::proxy::{ProxyChoice, ProxyError, SocksReply};
use duplex::{ClientOptions, Error};
use proxy_support::{
    Requested, Socks5Server, danted, dead_port, echo_once, echo_server, within, wss_echo_server,
};

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
async fn ws_and_wss_through_dante() {
    let proxy = danted();
    within(async {
        let ws = echo_server(None).await;
        let (wss, tls, _) = wss_echo_server().await;
        for scheme in ["socks5", "socks5h"] {
            let url = format!("{scheme}://{}", proxy.addr);
            let peer = echo_once(&format!("ws://{ws}/"), via(&url))
                .await
                .unwrap_or_else(|e| panic!("{scheme} ws: {e}\n{}", proxy.log()));
            assert_eq!(peer, proxy.addr, "the TCP stream goes to the proxy");

            // A host name: resolved here (socks5) or by dante (socks5h); TLS to the origin
            // inside the tunnel, checked against `localhost`.
            let mut options = via(&url);
            options.tls = tls.clone();
            let target = format!("wss://localhost:{}/", wss.port());
            let peer = echo_once(&target, options)
                .await
                .unwrap_or_else(|e| panic!("{scheme} wss: {e}\n{}", proxy.log()));
            assert_eq!(peer, proxy.addr);
        }
    })
    .await;
}

#[tokio::test]
async fn dante_reports_a_refused_target_with_its_reply_code() {
    let proxy = danted();
    within(async {
        let url = format!("ws://127.0.0.1:{}/", dead_port());
        let e = proxy_error(
            echo_once(&url, via(&format!("socks5://{}", proxy.addr)))
                .await
                .unwrap_err(),
        );
        match e {
            ProxyError::Socks(reply) => {
                assert_eq!(reply, SocksReply::CONNECTION_REFUSED, "{}", proxy.log());
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn username_and_password() {
    within(async {
        let server = Socks5Server::start("bob", "pa:ss@word").await;
        let ws = echo_server(None).await;
        let (wss, tls, _) = wss_echo_server().await;

        // Percent-encoded in the URL, sent decoded.
        let good = format!("socks5://bob:pa%3Ass%40word@{}", server.addr);
        let peer = echo_once(&format!("ws://{ws}/"), via(&good)).await.unwrap();
        assert_eq!(peer, server.addr);
        let mut options = via(&good);
        options.tls = tls.clone();
        echo_once(&format!("wss://localhost:{}/", wss.port()), options)
            .await
            .unwrap();
        let mut options = via(&good.replace("socks5://", "socks5h://"));
        options.tls = tls.clone();
        echo_once(&format!("wss://localhost:{}/", wss.port()), options)
            .await
            .unwrap();
        // socks5:// sent the addresses it resolved (127.0.0.1 last if `localhost` is also
        // ::1 here, which the server cannot reach), socks5h:// the name.
        let requests = server.requests.lock().unwrap().clone();
        let n = requests.len();
        assert!(n >= 3, "{requests:?}");
        assert_eq!(requests[0], Requested::Ip(ws));
        assert_eq!(
            requests[n - 2],
            Requested::Ip(([127, 0, 0, 1], wss.port()).into())
        );
        assert!(
            requests[1..n - 1]
                .iter()
                .all(|r| matches!(r, Requested::Ip(a) if a.port() == wss.port())),
            "{requests:?}"
        );
        assert_eq!(
            requests[n - 1],
            Requested::Domain("localhost".into(), wss.port())
        );

        let wrong = format!("socks5h://bob:wrong@{}", server.addr);
        let e = proxy_error(
            echo_once(&format!("ws://{ws}/"), via(&wrong))
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(e, ProxyError::SocksAuthFailed { status: 1 }),
            "{e:?}"
        );

        let missing = format!("socks5h://{}", server.addr);
        let e = proxy_error(
            echo_once(&format!("ws://{ws}/"), via(&missing))
                .await
                .unwrap_err(),
        );
        assert!(matches!(e, ProxyError::SocksNoAcceptableMethod), "{e:?}");
        // Neither failed attempt got as far as a CONNECT.
        assert_eq!(server.requests.lock().unwrap().len(), n);
    })
    .await;
}

#[tokio::test]
async fn a_socks_proxy_that_is_not_listening_is_unreachable() {
    within(async {
        let port = dead_port();
        let e = proxy_error(
            echo_once(
                "ws://127.0.0.1:1/",
                via(&format!("socks5h://127.0.0.1:{port}")),
            )
            .await
            .unwrap_err(),
        );
        assert!(
            matches!(&e, ProxyError::Unreachable { error, .. }
                if error.kind() == std::io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn socks5_resolution_failures_are_reported_as_such() {
    within(async {
        let server = Socks5Server::start("u", "p").await;
        // `.invalid` never resolves (RFC 6761); socks5:// resolves before talking SOCKS.
        let e = proxy_error(
            echo_once(
                "ws://no-such-host.invalid/",
                via(&format!("socks5://u:p@{}", server.addr)),
            )
            .await
            .unwrap_err(),
        );
        assert!(matches!(e, ProxyError::Resolve { .. }), "{e:?}");
        assert!(server.requests.lock().unwrap().is_empty());
    })
    .await;
}
