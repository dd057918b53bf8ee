//! The hub with `--tls-cert`/`--tls-key`: wss:// over HTTP/1.1 and over HTTP/2 (ALPN `h2`) on
//! one port, HTTPS for the API and `/sse`, and the certificate reloaded on SIGHUP while connections
//! stay.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, hub, within};
use duplex::tls::ClientTls;
use duplex::{ClientOptions, Message, WebSocket};
use duplex_hub::{HubConfig, TlsFiles};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A certificate and key in PEM files of a directory removed on drop.
struct CertFiles {
    dir: PathBuf,
    files: TlsFiles,
}

impl CertFiles {
    fn new(tag: &str) -> CertFiles {
        let dir = std::env::temp_dir().join(format!("duplex-hub-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        CertFiles { dir, files }
    }

    /// Writes a new self-signed certificate for 127.0.0.1 (replacing the files); returns it.
    fn generate(&self) -> CertificateDer<'static> {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(&self.files.cert, certified.cert.pem()).unwrap();
        std::fs::write(&self.files.key, certified.signing_key.serialize_pem()).unwrap();
        certified.cert.der().clone()
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn trusting(cert: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    duplex::tls::client_config_with_roots(roots).unwrap()
}

fn options(cert: &CertificateDer<'static>, http2: bool) -> ClientOptions {
    ClientOptions {
        tls: ClientTls::Config(trusting(cert)),
        http2,
        ..ClientOptions::default()
    }
}

async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> Value {
    let message = tokio::time::timeout(Duration::from_secs(10), ws.recv())
        .await
        .expect("a message within 10 s")
        .expect("connection open")
        .expect("no error");
    serde_json::from_slice(message.as_bytes()).expect("JSON from the hub")
}

/// Sends `command` with `id`; returns its reply (pushes before it are skipped).
async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    id: u64,
    mut command: Value,
) -> Value {
    command["id"] = json!(id);
    ws.send(Message::text(command.to_string())).await.unwrap();
    loop {
        let message = next(ws).await;
        if message["id"] == json!(id) {
            return message;
        }
    }
}

async fn publication<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> Value {
    loop {
        let push = next(ws).await;
        if push["op"] == "pub" {
            return push;
        }
    }
}

/// One HTTPS request with ALPN `http/1.1` (`Connection: close`): the response, as text.
async fn https(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
    request: &str,
) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(trusting(cert));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // The hub ends TLS without close_notify after `Connection: close` at worst: keep what came.
    let _ = tls.read_to_end(&mut bytes).await;
    String::from_utf8(bytes).unwrap()
}

fn tls_config(files: &CertFiles) -> HubConfig {
    HubConfig {
        tls: Some(files.files.clone()),
        http_server: duplex_hub::HttpServer::Hyper,
        ..config()
    }
}

#[tokio::test]
async fn wss_over_http1_and_http2_on_one_port_and_https_for_the_api() {
    within(async {
        let files = CertFiles::new("both");
        let cert = files.generate();
        let hub = hub(tls_config(&files)).await;
        let addr = hub.local_addr();
        let url = format!("wss://127.0.0.1:{}/ws", addr.port());

        let (mut h1, _) = duplex::connect_auto(&url, options(&cert, false))
            .await
            .expect("wss over HTTP/1.1");
        assert!(!h1.get_ref().is_http2());
        let (mut h2a, response) = duplex::connect_auto(&url, options(&cert, true))
            .await
            .expect("wss over HTTP/2");
        assert!(h2a.get_ref().is_http2(), "ALPN chose h2: {response:?}");
        assert_eq!(response.status, 200);
        let connection = duplex::Http2Connection::connect(&url, &options(&cert, true))
            .await
            .expect("an HTTP/2 connection over TLS");
        assert!(connection.supports_websockets());
        let (mut h2b, _) = connection.websocket(&url, options(&cert, true)).await.unwrap();
        let (mut h2c, _) = connection.websocket(&url, options(&cert, true)).await.unwrap();

        let reply = call(&mut h2a, 1, json!({"op":"subscribe","channel":"t"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        let reply = call(&mut h2b, 1, json!({"op":"subscribe","channel":"t"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        let reply = call(&mut h1, 1, json!({"op":"subscribe","channel":"t"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        let reply = call(&mut h2c, 1, json!({"op":"publish","channel":"t","data":"x"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(publication(&mut h1).await["data"], "x");
        assert_eq!(publication(&mut h2a).await["data"], "x");
        assert_eq!(publication(&mut h2b).await["data"], "x");

        let body = r#"{"channel":"t","data":"y"}"#;
        let response = https(
            addr,
            &cert,
            &format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(publication(&mut h1).await["data"], "y");
        assert_eq!(publication(&mut h2b).await["data"], "y");

        let metrics = https(addr, &cert, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(
            metrics.contains("duplex_hub_connections_total{transport=\"h1\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("duplex_hub_connections_total{transport=\"h2\"} 3\n"),
            "{metrics}"
        );

        // Plain HTTP on the TLS port is not served.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut bytes))
            .await
            .expect("closed within 10 s");
        assert!(!bytes.starts_with(b"HTTP/1.1 200"), "{bytes:?}");
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_stay() {
    within(async {
        let files = CertFiles::new("reload");
        let old = files.generate();
        let hub = hub(tls_config(&files)).await;
        let addr = hub.local_addr();
        let url = format!("wss://127.0.0.1:{}/ws", addr.port());

        let (mut h1, _) = duplex::connect_auto(&url, options(&old, false))
            .await
            .unwrap();
        let (mut h2, _) = duplex::connect_auto(&url, options(&old, true))
            .await
            .unwrap();
        assert!(h2.get_ref().is_http2());
        let reply = call(&mut h1, 1, json!({"op":"subscribe","channel":"r"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        let reply = call(&mut h2, 1, json!({"op":"subscribe","channel":"r"})).await;
        assert_eq!(reply["ok"], true, "{reply}");

        let new = files.generate();
        assert!(
            duplex::connect_auto(&url, options(&new, false))
                .await
                .is_err(),
            "the new certificate is not presented before the reload"
        );
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
            .expect("SIGHUP to this process");
        // The reload runs on the hub's task: wait (bounded) until a handshake shows it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut fresh, _) = loop {
            match duplex::connect_auto(&url, options(&new, true)).await {
                Ok(connected) => break connected,
                Err(e) => {
                    assert!(Instant::now() < deadline, "never reloaded: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert!(
            duplex::connect_auto(&url, options(&old, false))
                .await
                .is_err(),
            "the old certificate is no longer presented"
        );

        // Connections opened before the reload keep working, both ways.
        let reply = call(
            &mut fresh,
            1,
            json!({"op":"publish","channel":"r","data":1}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(publication(&mut h1).await["data"], 1);
        assert_eq!(publication(&mut h2).await["data"], 1);
        let reply = call(&mut h1, 2, json!({"op":"publish","channel":"r","data":2})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(publication(&mut h2).await["data"], 2);

        // A reload that fails keeps the current certificate.
        std::fs::write(&files.files.key, "not a key").unwrap();
        assert!(hub.reload_tls().is_err());
        assert!(
            duplex::connect_auto(&url, options(&new, false))
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn sse_over_https_streams_and_leaves_when_the_client_goes() {
    within(async {
        let files = CertFiles::new("sse");
        let cert = files.generate();
        let hub = hub(tls_config(&files)).await;
        let addr = hub.local_addr();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(trusting(&cert));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        tls.write_all(b"GET /sse?channel=e HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        // Reads until `needle` has arrived (the body is chunked: events are matched whole).
        let mut seen = Vec::new();
        let mut until = async |needle: &str, seen: &mut Vec<u8>| {
            while !String::from_utf8_lossy(seen).contains(needle) {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
                    .await
                    .unwrap_or_else(|_| panic!("{needle} within 10 s: {}", String::from_utf8_lossy(seen)))
                    .unwrap();
                assert!(n > 0, "closed before {needle}: {}", String::from_utf8_lossy(seen));
                seen.extend_from_slice(&chunk[..n]);
            }
        };
        until("event: subscribed\n", &mut seen).await;
        let head = String::from_utf8_lossy(&seen).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream\r\n"), "{head}");
        let body = r#"{"channel":"e","data":"over tls"}"#;
        let response = https(
            addr,
            &cert,
            &format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        until(r#""data":"over tls""#, &mut seen).await;
        let metrics = https(addr, &cert, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(
            metrics.contains("duplex_hub_connections_total{transport=\"sse\"} 1\n")
                && metrics.contains("duplex_hub_connections_total{transport=\"h1\"} 0\n"),
            "{metrics}"
        );
        drop(tls);
        let mut waited = 0;
        while hub.metrics().sse_streams() > 0 || hub.metrics().subscriptions() > 0 {
            assert!(waited < 500, "the stream outlived its TLS connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
    })
    .await;
}
