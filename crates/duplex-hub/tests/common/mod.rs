//! Helpers for the hub's integration tests: a hub on an ephemeral port of 127.0.0.1, a JSON
//! WebSocket client, a raw HTTP client; everything bounded in time.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use duplex::{ClientOptions, Event, MaybeTlsStream, Message, WebSocket};
use duplex_hub::{Hub, HubConfig, HubHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fails the test instead of hanging it.
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("test timed out")
}

/// A config for tests: ephemeral port, generous rate limits, no pings. The HTTP server is
/// hyper unless `DUPLEX_HUB_TEST_HTTP_SERVER=builtin` (the whole suite against the former
/// hand-written server); plain WebSockets run on event loops unless
/// `DUPLEX_HUB_TEST_EVENT_LOOPS` says how many (0: a task each).
pub fn config() -> HubConfig {
    let http_server = match std::env::var("DUPLEX_HUB_TEST_HTTP_SERVER").as_deref() {
        Ok("builtin") => duplex_hub::HttpServer::Builtin,
        _ => duplex_hub::HttpServer::Hyper,
    };
    // `DUPLEX_HUB_TEST_EVENT_LOOPS=0`: the whole suite with a task per connection.
    let event_loops = std::env::var("DUPLEX_HUB_TEST_EVENT_LOOPS")
        .ok()
        .map(|n| n.parse().expect("DUPLEX_HUB_TEST_EVENT_LOOPS is a number"));
    HubConfig {
        http_server,
        event_loops,
        listen: "127.0.0.1:0".parse().unwrap(),
        publish_rate: 100_000.0,
        publish_burst: 100_000,
        ping_interval: None,
        close_timeout: Duration::from_secs(2),
        // Each join/leave pushed at once, in the order of events: tests that count pushes
        // stay exact (tests/presence.rs covers the batching windows).
        presence_batch: Duration::ZERO,
        ..HubConfig::default()
    }
}

pub async fn hub(config: HubConfig) -> HubHandle {
    Hub::bind(config).await.expect("hub binds")
}

/// A WebSocket client speaking the hub's JSON protocol. Pushes that arrive while waiting for a
/// reply are kept, in order, for [`Client::push`].
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream>,
    pushes: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr, query: &str) -> Client {
        Client::connect_with(addr, query, ClientOptions::default())
            .await
            .expect("websocket connects")
    }

    pub async fn connect_with(
        addr: SocketAddr,
        query: &str,
        options: ClientOptions,
    ) -> Result<Client, duplex::Error> {
        let url = format!("ws://{addr}/ws{query}");
        let (ws, _) = duplex::connect_with(&url, options).await?;
        Ok(Client::from_ws(ws))
    }

    pub fn from_ws(ws: WebSocket<MaybeTlsStream>) -> Client {
        Client {
            ws,
            pushes: VecDeque::new(),
            next_id: 1,
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next message as the hub wrote it.
    pub async fn next_raw(&mut self) -> String {
        let message = tokio::time::timeout(Duration::from_secs(10), self.ws.recv())
            .await
            .expect("a message within 10 s")
            .expect("connection open")
            .expect("no error");
        String::from_utf8(message.as_bytes().to_vec()).expect("text")
    }

    /// The next message, parsed.
    pub async fn next(&mut self) -> Value {
        let message = tokio::time::timeout(Duration::from_secs(10), self.ws.recv())
            .await
            .expect("a message within 10 s")
            .expect("connection open")
            .expect("no error");
        serde_json::from_slice(message.as_bytes()).expect("JSON from the hub")
    }

    /// Sends `command` with a fresh id and returns the reply with that id.
    pub async fn call(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send_text(&command.to_string()).await;
        self.reply(json!(id)).await
    }

    /// Waits for the reply with `id`, keeping pushes.
    pub async fn reply(&mut self, id: Value) -> Value {
        loop {
            let message = self.next().await;
            if message.get("op").is_some() && message.get("id").is_none() {
                self.pushes.push_back(message);
            } else {
                assert_eq!(message["id"], id, "replies come in order: {message}");
                return message;
            }
        }
    }

    /// The next push (publication, presence, reset, gap).
    pub async fn push(&mut self) -> Value {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        let message = self.next().await;
        assert!(message.get("op").is_some(), "a push: {message}");
        message
    }

    /// The pushes that arrived while waiting for replies and were not read yet.
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.pushes.drain(..).collect()
    }

    /// The next publication push, skipping presence events.
    pub async fn publication(&mut self) -> Value {
        loop {
            let push = self.push().await;
            if push["op"] == "pub" {
                return push;
            }
        }
    }

    /// Asserts that nothing arrives for a moment.
    pub async fn assert_quiet(&mut self) {
        assert!(self.pushes.is_empty(), "unexpected push: {:?}", self.pushes);
        let next = tokio::time::timeout(Duration::from_millis(200), self.ws.recv()).await;
        assert!(next.is_err(), "unexpected message: {next:?}");
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self
            .call(json!({"op": "subscribe", "channel": channel}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        reply
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        let reply = self
            .call(json!({"op": "publish", "channel": channel, "data": data}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        reply
    }

    /// Reads until the server's Close frame; returns its code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), self.ws.recv_event())
                .await
                .expect("the close within 10 s");
            match event {
                Some(Ok(Event::Close(frame))) => {
                    // Keep polling so the reply goes out and the close handshake completes.
                    let rest = tokio::time::timeout(Duration::from_secs(5), async {
                        while self.ws.recv_event().await.is_some() {}
                    });
                    let _ = rest.await;
                    return frame.map_or((1005, String::new()), |f| {
                        (f.code.as_u16(), f.reason.to_string())
                    });
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    }
}

/// A plain HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One request on a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    tcp.write_all(&bytes).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .unwrap();
    parse_response(&response).0
}

/// Parses one response from the start of `bytes`; returns it and the bytes it took.
pub fn parse_response(bytes: &[u8]) -> (HttpResponse, usize) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut response = HttpResponse {
        status,
        head,
        body: Vec::new(),
    };
    let length: usize = response
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    response.body = bytes[end..end + length].to_vec();
    (response, end + length)
}

pub async fn publish_http(addr: SocketAddr, channel: &str, data: Value) -> Value {
    let body = json!({"channel": channel, "data": data}).to_string();
    let response = http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await;
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}
