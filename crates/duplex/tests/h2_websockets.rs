//! WebSockets over HTTP/2 (RFC 8441) between duplex's client (`connect_auto`,
//! `Http2Connection`) and a hyper server using duplex's upgrade API: echo, fragmentation,
//! ping/pong, close codes both ways, permessage-deflate, many WebSockets on one TCP
//! connection, per-stream flow control, refusals, and the fall back to HTTP/1.1.
#![cfg(all(feature = "hyper", feature = "http2", feature = "deflate"))]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{echo_server, listener, within};
use duplex::upgrade::{UpgradedWebSocket, WebSocketUpgrade, refusal};
use duplex::{
    ClientOptions, CloseCode, DataKind, Error, Event, Http2Connection, Message, Reject,
    ServerOptions,
};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

/// A hyper server with duplex's upgrade API on 127.0.0.1, counting the TCP connections it
/// accepted.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Lets `/stalled` WebSockets start reading.
    release: Arc<Notify>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// Starts the server; `connect_protocol` false leaves `SETTINGS_ENABLE_CONNECT_PROTOCOL` out
/// (a plain hyper-util auto builder), so RFC 8441 clients must fall back to HTTP/1.1.
async fn start(connect_protocol: bool) -> Server {
    let (listener, addr) = listener().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let server = Server {
        addr,
        accepted: accepted.clone(),
        release: release.clone(),
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tcp.set_nodelay(true).expect("nodelay");
            let release = release.clone();
            tokio::spawn(async move {
                let builder = if connect_protocol {
                    duplex::upgrade::builder()
                } else {
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                };
                let service = service_fn(move |request| handle(request, release.clone()));
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    server
}

/// `/echo` echoes (fragments as fragments), `/close` closes with 4000 at once, `/stalled`
/// reads nothing until released; other paths are refused with 404 through `decide`.
async fn handle(
    mut request: Request<Incoming>,
    release: Arc<Notify>,
) -> Result<Response<String>, Infallible> {
    let path = request.uri().path().to_owned();
    let upgrade = match WebSocketUpgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade,
        Err(refused) => return Ok(refusal(&refused)),
    };
    Ok(match path.as_str() {
        "/echo" => upgrade.protocols(["echo"]).on_upgrade(echo_events),
        "/close" => upgrade.on_upgrade(|mut ws| async move {
            let _ = ws.close(CloseCode(4000), "bye").await;
        }),
        "/stalled" => upgrade.on_upgrade(move |mut ws| async move {
            release.notified().await;
            while let Some(Ok(_)) = ws.recv().await {}
        }),
        _ => match upgrade.decide(Err(Reject::new(StatusCode::NOT_FOUND, "no such endpoint"))) {
            Ok((response, _)) => response.map(|()| String::new()),
            Err(refused) => refusal(&refused),
        },
    })
}

async fn echo_events(mut ws: UpgradedWebSocket) {
    while let Some(Ok(event)) = ws.recv_event().await {
        let sent = match event {
            Event::Message(message) => ws.send(message).await,
            Event::Fragment {
                kind, data, fin, ..
            } => ws.send_fragment(kind, data, fin).await,
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

fn http2() -> ClientOptions {
    ClientOptions {
        http2: true,
        protocols: vec!["echo".into()],
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn echo_over_http2_with_subprotocol_and_deflate() {
    let server = start(true).await;
    let (mut ws, response) = within(duplex::connect_auto(&server.url("/echo"), http2()))
        .await
        .expect("connect");
    assert!(ws.get_ref().is_http2(), "RFC 8441 was not used");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.protocol.as_deref(), Some("echo"));
    assert_eq!(ws.protocol(), Some("echo"));
    assert!(
        response
            .extensions
            .as_deref()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "deflate not agreed: {:?}",
        response.extensions
    );
    // Compressible and incompressible, small and larger than a frame and the stream window.
    let big = Message::binary(vec![7u8; 3 << 20]);
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for message in [
        Message::text("hello over h2"),
        Message::binary(noise),
        big,
        Message::text(""),
    ] {
        within(ws.send(message.clone())).await.expect("send");
        let echoed = within(ws.recv()).await.expect("open").expect("echo");
        assert_eq!(echoed, message);
    }
    let close = within(ws.close(CloseCode(4001), "done"))
        .await
        .expect("close");
    assert_eq!(close.map(|c| c.code), Some(CloseCode(4001)));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn fragments_and_control_frames_interleave() {
    let server = start(true).await;
    let (mut ws, _) = within(duplex::connect_auto(&server.url("/echo"), http2()))
        .await
        .expect("connect");
    assert!(ws.get_ref().is_http2());
    within(ws.send_fragment(DataKind::Text, "frag", false))
        .await
        .expect("first");
    within(ws.ping("mid-message")).await.expect("ping");
    within(ws.send_fragment(DataKind::Text, "men", false))
        .await
        .expect("second");
    within(ws.send_fragment(DataKind::Text, "ted ✓", true))
        .await
        .expect("last");
    let mut pong = None;
    let mut message = None;
    while pong.is_none() || message.is_none() {
        match within(ws.recv_event()).await.expect("open").expect("event") {
            Event::Pong(payload) => pong = Some(payload),
            Event::Message(m) => message = Some(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"mid-message"[..]));
    assert_eq!(message, Some(Message::text("fragmented ✓")));
}

#[tokio::test]
async fn the_server_closes_with_its_code() {
    let server = start(true).await;
    let (mut ws, _) = within(duplex::connect_auto(&server.url("/close"), http2()))
        .await
        .expect("connect");
    assert!(ws.get_ref().is_http2());
    match within(ws.recv_event())
        .await
        .expect("an event")
        .expect("ok")
    {
        Event::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode(4000));
            assert_eq!(frame.reason, "bye");
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
    assert!(within(ws.recv()).await.is_none());
}

#[tokio::test]
async fn many_websockets_share_one_connection() {
    let server = start(true).await;
    let connection = within(Http2Connection::connect(
        &server.url("/"),
        &ClientOptions::default(),
    ))
    .await
    .expect("h2 connection");
    assert!(connection.supports_websockets());
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let (ws, response) = within(connection.websocket(&server.url("/echo"), http2()))
            .await
            .expect("websocket");
        assert_eq!(response.status, StatusCode::OK);
        sockets.push(ws);
    }
    // Every socket talks at once; each gets its own answers back.
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                for round in 0..20 {
                    let message = Message::text(format!("socket {i} round {round}"));
                    ws.send(message.clone()).await.expect("send");
                    let echoed = ws.recv().await.expect("open").expect("echo");
                    assert_eq!(echoed, message);
                }
                ws.close(CloseCode::NORMAL, "").await.expect("close");
            })
        })
        .collect();
    for task in tasks {
        within(task).await.expect("socket task");
    }
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "the WebSockets did not share one TCP connection"
    );
}

#[tokio::test]
async fn a_stalled_websocket_holds_back_only_its_own_stream() {
    let server = start(true).await;
    let connection = within(Http2Connection::connect(
        &server.url("/"),
        &ClientOptions::default(),
    ))
    .await
    .expect("h2 connection");
    let options = || ClientOptions {
        deflate: None,
        ..http2()
    };
    let (mut stalled, _) = within(connection.websocket(&server.url("/stalled"), options()))
        .await
        .expect("stalled");
    // More than the server's stream window: the send can only finish once the server reads.
    let flood = tokio::spawn(async move {
        stalled
            .send(Message::binary(vec![1u8; 4 << 20]))
            .await
            .map(|()| stalled)
    });
    let (mut echo, _) = within(connection.websocket(&server.url("/echo"), options()))
        .await
        .expect("echo");
    for round in 0..10 {
        let message = Message::binary(vec![round; 100_000]);
        within(echo.send(message.clone())).await.expect("send");
        assert_eq!(
            within(echo.recv()).await.expect("open").expect("echo"),
            message
        );
    }
    assert!(
        !flood.is_finished(),
        "4 MiB went through a stream whose reader never read: no flow control"
    );
    server.release.notify_one();
    let stalled = within(flood)
        .await
        .expect("task")
        .expect("the send completes once read");
    drop(stalled);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn falls_back_to_http1_without_the_setting() {
    let server = start(false).await;
    let connection = within(Http2Connection::connect(
        &server.url("/"),
        &ClientOptions::default(),
    ))
    .await
    .expect("the server speaks HTTP/2");
    assert!(!connection.supports_websockets());
    let refused = within(connection.websocket(&server.url("/echo"), http2())).await;
    assert!(matches!(refused, Err(Error::Io(_))), "{refused:?}");

    let (mut ws, response) = within(duplex::connect_auto(&server.url("/echo"), http2()))
        .await
        .expect("connect");
    assert!(!ws.get_ref().is_http2());
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
    within(ws.send(Message::text("over h1")))
        .await
        .expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("open").expect("echo"),
        Message::text("over h1")
    );
}

#[tokio::test]
async fn falls_back_to_http1_when_the_server_has_no_http2() {
    // duplex's own HTTP/1.1-only server answers the h2c preface with 400 and closes.
    let addr = echo_server(ServerOptions::default()).await;
    let (mut ws, response) = within(duplex::connect_auto(&format!("ws://{addr}/"), http2()))
        .await
        .expect("connect");
    assert!(!ws.get_ref().is_http2());
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
    within(ws.send(Message::text("fallback")))
        .await
        .expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("open").expect("echo"),
        Message::text("fallback")
    );
}

#[tokio::test]
async fn without_the_option_http1_is_used() {
    let server = start(true).await;
    let options = ClientOptions {
        http2: false,
        ..http2()
    };
    let (ws, response) = within(duplex::connect_auto(&server.url("/echo"), options))
        .await
        .expect("connect");
    assert!(!ws.get_ref().is_http2());
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
}

#[tokio::test]
async fn refusals_over_http2_carry_their_status() {
    let server = start(true).await;
    let connection = within(Http2Connection::connect(
        &server.url("/"),
        &ClientOptions::default(),
    ))
    .await
    .expect("h2 connection");
    match within(connection.websocket(&server.url("/nowhere"), http2())).await {
        Err(Error::Rejected { status, reason }) => {
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(reason, "no such endpoint");
        }
        other => panic!("expected 404, got {other:?}"),
    }

    // Requests duplex's client would not send, through h2 directly.
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let (send_request, connection) = within(h2::client::handshake(tcp)).await.expect("h2");
    tokio::spawn(connection);
    let status = |protocol: &'static str, version: &'static str| {
        let mut send_request = send_request.clone();
        async move {
            let mut request = http::Request::builder()
                .method("CONNECT")
                // hyper does not check the authority against its own address.
                .uri("http://localhost/echo")
                .header("sec-websocket-version", version)
                .body(())
                .expect("request");
            request
                .extensions_mut()
                .insert(h2::ext::Protocol::from_static(protocol));
            std::future::poll_fn(|cx| send_request.poll_ready(cx))
                .await
                .expect("ready");
            let (response, _stream) = send_request.send_request(request, false).expect("sent");
            response.await.expect("response").status()
        }
    };
    assert_eq!(
        within(status("connect-udp", "13")).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        within(status("websocket", "8")).await,
        StatusCode::UPGRADE_REQUIRED
    );
    assert_eq!(within(status("websocket", "13")).await, StatusCode::OK);
}

#[tokio::test]
async fn falls_back_to_http1_when_the_h2c_preface_goes_unanswered() {
    // A server that says nothing to the HTTP/2 preface (it holds the connection) and speaks
    // HTTP/1.1 on others: the client gives HTTP/2 its handshake_timeout, then upgrades on a
    // new connection.
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 3];
                if tcp.peek(&mut first).await.is_ok() && &first == b"PRI" {
                    let mut tcp = tcp;
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink).await;
                    return;
                }
                let Ok(mut ws) = duplex::accept(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.recv().await {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let options = ClientOptions {
        handshake_timeout: std::time::Duration::from_millis(300),
        ..http2()
    };
    let (mut ws, response) = within(duplex::connect_auto(&format!("ws://{addr}/"), options))
        .await
        .expect("connect");
    assert!(!ws.get_ref().is_http2());
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
    within(ws.send(Message::text("after the timeout")))
        .await
        .expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("open").expect("echo"),
        Message::text("after the timeout")
    );
}
