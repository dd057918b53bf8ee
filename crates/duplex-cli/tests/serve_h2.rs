//! `duplex serve` over HTTP/2 (RFC 8441) and HTTP/1.1 on one port, on both runtimes, plain
//! (h2c by prior knowledge) and under TLS (ALPN `h2`): the real binary, driven by duplex's
//! own HTTP/2 client. Every process is started here, on 127.0.0.1, and ended by its PID.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use duplex::proxy::ProxyChoice;
use duplex::tls::ClientTls;
use duplex::{ClientOptions, CloseCode, Event, Http2Connection, Message};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_duplex");
const WAIT: Duration = Duration::from_secs(10);

/// A self-signed certificate for 127.0.0.1 in a directory of its own, removed when dropped.
struct Certificate {
    dir: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl Certificate {
    fn new(name: &str) -> Certificate {
        let dir = std::env::temp_dir().join(format!("duplex-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
        Certificate {
            der: certified.cert.der().clone(),
            dir,
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `duplex serve --echo` on a free port, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    tls: bool,
}

impl Server {
    /// `runtime`: `engine` or `tokio`; `cert`: serve wss:// with it.
    fn start(runtime: &str, cert: Option<&Certificate>) -> Server {
        let mut command = Command::new(BIN);
        command.args(["serve", "--echo", "--runtime", runtime, "--threads", "2"]);
        if let Some(cert) = cert {
            command.args([
                "--tls-cert",
                &cert.path("cert.pem"),
                "--tls-key",
                &cert.path("key.pem"),
            ]);
        }
        let (child, addr) = support::spawn_listening(command);
        Server {
            child,
            addr,
            tls: cert.is_some(),
        }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Sends SIGTERM (by PID) and waits for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client options: no proxy from the environment, and under TLS trust in `cert` only.
fn options(cert: Option<&Certificate>) -> ClientOptions {
    let mut options = ClientOptions {
        proxy: ProxyChoice::Direct,
        ..ClientOptions::default()
    };
    if let Some(cert) = cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        options.tls = ClientTls::Config(duplex::tls::client_config_with_roots(roots).unwrap());
    }
    options
}

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// Sends `text` and expects it back.
async fn echoes<S>(ws: &mut duplex::WebSocket<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let back = bounded("echo", ws.recv()).await.unwrap().unwrap();
    assert_eq!(back, Message::text(text));
}

/// On `server`: three WebSockets on one HTTP/2 connection, echoing at once (a large binary
/// message included, more than one stream window of h2's default); then an HTTP/1.1
/// WebSocket on the same port; then `connect_auto` picking HTTP/2 by itself.
async fn h2_and_h1_on_one_port(server: &Server, cert: Option<&Certificate>) {
    // Under TLS, `Http2Connection::connect` fails unless ALPN chose h2: success proves it.
    let connection = bounded(
        "HTTP/2 connection",
        Http2Connection::connect(&server.url("/"), &options(cert)),
    )
    .await
    .unwrap();
    assert!(
        connection.supports_websockets(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    let mut sockets = Vec::new();
    for path in ["/a", "/b", "/c"] {
        let (ws, response) = bounded(
            "extended CONNECT",
            connection.websocket(&server.url(path), options(cert)),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200, "RFC 8441 answers 200, not 101");
        assert!(response.extensions.is_some(), "permessage-deflate over h2");
        sockets.push(ws);
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let runs = sockets.iter_mut().enumerate().map(|(i, ws)| {
        let big = big.clone();
        async move {
            for round in 0..20 {
                echoes(ws, &format!("socket {i} round {round}")).await;
            }
            ws.send(Message::binary(big.clone())).await.unwrap();
            let back = bounded("large echo", ws.recv()).await.unwrap().unwrap();
            assert_eq!(back.as_bytes(), &big[..]);
        }
    });
    futures_util::future::join_all(runs).await;
    for mut ws in sockets {
        bounded("close", ws.close(CloseCode::NORMAL, ""))
            .await
            .unwrap();
    }

    // HTTP/1.1 on the same port.
    let (mut ws, response) = bounded(
        "HTTP/1.1 upgrade",
        duplex::connect_with(&server.url("/h1"), options(cert)),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 101);
    echoes(&mut ws, "over HTTP/1.1").await;
    bounded("close", ws.close(CloseCode::NORMAL, ""))
        .await
        .unwrap();

    // connect_auto takes HTTP/2 when asked.
    let auto = ClientOptions {
        http2: true,
        ..options(cert)
    };
    let (mut ws, _) = bounded(
        "connect_auto",
        duplex::connect_auto(&server.url("/auto"), auto),
    )
    .await
    .unwrap();
    assert!(ws.get_ref().is_http2());
    echoes(&mut ws, "auto").await;
    bounded("close", ws.close(CloseCode::NORMAL, ""))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_serves_h2c_and_http11_on_one_port() {
    let server = Server::start("engine", None);
    h2_and_h1_on_one_port(&server, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_runtime_serves_h2c_and_http11_on_one_port() {
    let server = Server::start("tokio", None);
    h2_and_h1_on_one_port(&server, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_serves_h2_by_alpn_and_http11_under_tls() {
    let cert = Certificate::new("serve-h2-engine");
    let server = Server::start("engine", Some(&cert));
    h2_and_h1_on_one_port(&server, Some(&cert)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_runtime_serves_h2_by_alpn_and_http11_under_tls() {
    let cert = Certificate::new("serve-h2-tokio");
    let server = Server::start("tokio", Some(&cert));
    h2_and_h1_on_one_port(&server, Some(&cert)).await;
}

/// Reads until a Close arrives; its code.
async fn close_code<S>(ws: &mut duplex::WebSocket<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match bounded("close", ws.recv_event()).await {
            Some(Ok(Event::Close(frame))) => return frame.map(|f| f.code.as_u16()),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_http2_websockets_with_1001_on_both_runtimes() {
    for runtime in ["engine", "tokio"] {
        let mut server = Server::start(runtime, None);
        let connection = bounded(
            "HTTP/2 connection",
            Http2Connection::connect(&server.url("/"), &options(None)),
        )
        .await
        .unwrap();
        let (mut h2, _) = connection
            .websocket(&server.url("/"), options(None))
            .await
            .unwrap();
        echoes(&mut h2, "ready").await;
        let (mut h1, _) = duplex::connect_with(&server.url("/"), options(None))
            .await
            .unwrap();
        echoes(&mut h1, "ready").await;
        let status = tokio::task::spawn_blocking(move || {
            let status = server.terminate();
            (server, status)
        });
        assert_eq!(close_code(&mut h2).await, Some(1001), "{runtime}: h2");
        assert_eq!(close_code(&mut h1).await, Some(1001), "{runtime}: h1");
        let (_server, status) = bounded("exit", status).await.unwrap();
        assert!(status.success(), "{runtime}: exit status {status}");
    }
}

#[test]
fn connect_http2_talks_rfc_8441_to_serve_and_over_tls_too() {
    let server = Server::start("engine", None);
    let (status, stdout, stderr) =
        support::run_connect(&["--http2", &server.url("/")], "one\ntwo\n");
    assert!(status.success(), "stderr: {stderr}");
    assert_eq!(stdout, "one\ntwo\n");
    assert!(stderr.contains("over HTTP/2"), "stderr: {stderr}");

    let cert = Certificate::new("connect-h2");
    let server = Server::start("engine", Some(&cert));
    let ca = cert.path("cert.pem");
    let (status, stdout, stderr) =
        support::run_connect(&["--http2", "--ca-cert", &ca, &server.url("/")], "secure\n");
    assert!(status.success(), "stderr: {stderr}");
    assert_eq!(stdout, "secure\n");
    assert!(stderr.contains("over HTTP/2"), "stderr: {stderr}");
    // Without --http2: HTTP/1.1, as before.
    let (status, stdout, stderr) =
        support::run_connect(&["--ca-cert", &ca, &server.url("/")], "plain\n");
    assert!(status.success(), "stderr: {stderr}");
    assert_eq!(stdout, "plain\n");
    assert!(!stderr.contains("over HTTP/2"), "stderr: {stderr}");
}

#[test]
fn the_tokio_runtime_bounds_the_request_head_and_answers_a_plain_get_with_its_page() {
    use std::io::{Read, Write};
    let server = Server::start("tokio", None);
    let exchange = |request: &[u8]| {
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    // Over the 16 KiB a request head may have (the engine's bound too).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = exchange(big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let answer = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("text/html"), "{answer}");
    assert!(answer.contains("duplex echo server"), "{answer}");
}
