//! The proxy variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, lower case
//! too) as the default `ClientOptions` read them from the real process environment.
//!
//! Setting variables in a test process would race every other test of it (and
//! `std::env::set_var` is unsafe), so each case runs this binary again as a child process
//! with the variables set, running only the ignored `env_child` test, which connects with
//! the default options and checks the outcome it is told to expect. The selection logic
//! itself is unit-tested through `from_env_with` in `src/proxy/mod.rs`.
#![cfg(feature = "tls")]

mod proxy_support;

use std::net::SocketAddr;
use std::process::Command;

use duplex::proxy::ProxyError;
use duplex::{ClientOptions, Error};
use proxy_support::{
    TempDir, danted, dead_port, echo_once, echo_server, tinyproxy, within, write_file,
    wss_echo_server,
};

const VARIABLES: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// What the child should see.
enum Expect {
    /// Connected, the TCP stream to this address (the proxy's, or the server's if direct).
    Peer(SocketAddr),
    /// The proxy the variables name is not listening.
    Unreachable,
    /// The variable holds a URL the client refuses.
    InvalidUrl,
}

/// Runs `env_child` in a child process with exactly `vars` among the proxy variables.
async fn case(name: &str, vars: &[(&str, String)], url: &str, ca: &str, expect: Expect) {
    let expect = match expect {
        Expect::Peer(addr) => format!("peer {addr}"),
        Expect::Unreachable => "unreachable".to_owned(),
        Expect::InvalidUrl => "invalid".to_owned(),
    };
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["env_child", "--exact", "--ignored", "--nocapture"]);
    for var in VARIABLES {
        command.env_remove(var);
    }
    command
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .env("DUPLEX_PROXY_TEST_URL", url)
        .env("DUPLEX_PROXY_TEST_CA", ca)
        .env("DUPLEX_PROXY_TEST_EXPECT", &expect);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("test env_child ... ok"),
        "case {name:?} ({vars:?}, {url}, expecting {expect}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_variables_choose_the_proxy() {
    let http = tinyproxy(None);
    let socks = danted();
    let dir = TempDir::new("env");
    within(async {
        let ws = echo_server(None).await;
        let (wss, _, pem) = wss_echo_server().await;
        let ca = write_file(&dir.path("ca.pem"), &pem);
        let dead = format!("http://127.0.0.1:{}", dead_port());
        let tinyproxy = format!("http://{}", http.addr);
        let dante = format!("socks5h://{}", socks.addr);
        let ws_url = format!("ws://{ws}/");
        let wss_url = format!("wss://localhost:{}/", wss.port());
        let v = |k: &'static str, v: &str| (k, v.to_owned());

        case(
            "HTTP_PROXY for ws",
            &[v("HTTP_PROXY", &tinyproxy)],
            &ws_url,
            &ca,
            Expect::Peer(http.addr),
        )
        .await;
        case(
            "lower case wins",
            &[v("http_proxy", &tinyproxy), v("HTTP_PROXY", &dead)],
            &ws_url,
            &ca,
            Expect::Peer(http.addr),
        )
        .await;
        case(
            "a dead proxy is an error",
            &[v("HTTP_PROXY", &dead)],
            &ws_url,
            &ca,
            Expect::Unreachable,
        )
        .await;
        case(
            "NO_PROXY by address",
            &[
                v("HTTP_PROXY", &dead),
                v("NO_PROXY", "example.com, 127.0.0.1"),
            ],
            &ws_url,
            &ca,
            Expect::Peer(ws),
        )
        .await;
        case(
            "no_proxy by name and port",
            &[
                v("http_proxy", &dead),
                v("no_proxy", &format!(".localhost:{}", ws.port())),
            ],
            &format!("ws://localhost:{}/", ws.port()),
            &ca,
            Expect::Peer(ws),
        )
        .await;
        case(
            "NO_PROXY with another port does not match",
            &[v("HTTP_PROXY", &dead), v("NO_PROXY", "127.0.0.1:1")],
            &ws_url,
            &ca,
            Expect::Unreachable,
        )
        .await;
        case(
            "HTTPS_PROXY for wss",
            &[v("HTTPS_PROXY", &tinyproxy), v("HTTP_PROXY", &dead)],
            &wss_url,
            &ca,
            Expect::Peer(http.addr),
        )
        .await;
        case(
            "ws ignores HTTPS_PROXY",
            &[v("HTTPS_PROXY", &dead)],
            &ws_url,
            &ca,
            Expect::Peer(ws),
        )
        .await;
        case(
            "ALL_PROXY, SOCKS5",
            &[v("ALL_PROXY", &dante)],
            &ws_url,
            &ca,
            Expect::Peer(socks.addr),
        )
        .await;
        case(
            "wss through ALL_PROXY",
            &[v("all_proxy", &dante), v("HTTP_PROXY", &dead)],
            &wss_url,
            &ca,
            Expect::Peer(socks.addr),
        )
        .await;
        case(
            "NO_PROXY=*",
            &[v("HTTPS_PROXY", &dead), v("NO_PROXY", "*")],
            &wss_url,
            &ca,
            Expect::Peer(wss),
        )
        .await;
        case(
            "a bad URL is an error",
            &[v("HTTP_PROXY", "https://proxy.example")],
            &ws_url,
            &ca,
            Expect::InvalidUrl,
        )
        .await;
    })
    .await;
}

/// One case, run by [`case`] in a child process; ignored in a normal run.
#[tokio::test]
#[ignore = "run by the_variables_choose_the_proxy in a child process with the variables set"]
async fn env_child() {
    let var = |name| std::env::var(name).unwrap_or_else(|_| panic!("{name} unset"));
    let url = var("DUPLEX_PROXY_TEST_URL");
    let expect = var("DUPLEX_PROXY_TEST_EXPECT");
    let roots = duplex::tls::client_config_trusting_pem(var("DUPLEX_PROXY_TEST_CA")).unwrap();
    let options = ClientOptions {
        tls: duplex::tls::ClientTls::Config(roots),
        ..ClientOptions::default()
    };
    let outcome = within(echo_once(&url, options)).await;
    match (expect.split_once(' '), outcome) {
        (Some(("peer", addr)), Ok(peer)) => assert_eq!(peer.to_string(), addr),
        (None, Err(Error::Proxy(ProxyError::Unreachable { .. }))) if expect == "unreachable" => {}
        (None, Err(Error::Proxy(ProxyError::InvalidUrl { .. }))) if expect == "invalid" => {}
        (_, outcome) => panic!("expected {expect}, got {outcome:?}"),
    }
}
