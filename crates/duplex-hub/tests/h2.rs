//! The hub over HTTP/2 (RFC 8441) on its plain port (h2c by prior knowledge), next to
//! HTTP/1.1: several WebSockets on one connection, hub commands and fan-out across both
//! transports, the transport label of the metrics, graceful shutdown, a stalled stream cut off
//! as a slow consumer, the HTTP API over HTTP/2; and the HTTP/1.1 behaviours kept on hyper
//! (431, HEAD, Expect: 100-continue); `/sse` streams over HTTP/2, which leave when reset.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, config, http, hub, publish_http, within};
use duplex::{ClientOptions, Event, Http2Connection, Message, WebSocket};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Sends `command` with `id` and returns the reply with that id; pushes met on the way are
/// appended to `pushes`.
pub async fn call<S>(
    ws: &mut WebSocket<S>,
    id: u64,
    mut command: Value,
    pushes: &mut Vec<Value>,
) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    command["id"] = json!(id);
    ws.send(Message::text(command.to_string()))
        .await
        .expect("send");
    loop {
        let message = next(ws).await;
        if message["id"] == json!(id) {
            return message;
        }
        pushes.push(message);
    }
}

/// The next message, parsed.
pub async fn next<S>(ws: &mut WebSocket<S>) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let message = tokio::time::timeout(Duration::from_secs(10), ws.recv())
        .await
        .expect("a message within 10 s")
        .expect("connection open")
        .expect("no error");
    serde_json::from_slice(message.as_bytes()).expect("JSON from the hub")
}

/// The next publication push (skipping presence events), from `pushes` first.
pub async fn publication<S>(ws: &mut WebSocket<S>, pushes: &mut Vec<Value>) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while !pushes.is_empty() {
        let push = pushes.remove(0);
        if push["op"] == "pub" {
            return push;
        }
    }
    loop {
        let push = next(ws).await;
        if push["op"] == "pub" {
            return push;
        }
    }
}

/// The value of the metric line `name` (with its labels) in `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let body = String::from_utf8(http(addr, "GET", "/metrics", &[], None).await.body).unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in\n{body}"))
        .parse()
        .unwrap()
}

/// [`config`] on the hyper server (whatever `DUPLEX_HUB_TEST_HTTP_SERVER` says): HTTP/2 is
/// what these tests are about.
fn hyper() -> duplex_hub::HubConfig {
    duplex_hub::HubConfig {
        http_server: duplex_hub::HttpServer::Hyper,
        ..config()
    }
}

const H1: &str = "duplex_hub_connections_total{transport=\"h1\"}";
const H2: &str = "duplex_hub_connections_total{transport=\"h2\"}";

#[tokio::test]
async fn several_websockets_share_one_h2c_connection_and_run_hub_commands() {
    within(async {
        let hub = hub(hyper()).await;
        let addr = hub.local_addr();
        let base = format!("ws://{addr}");
        let connection = Http2Connection::connect(&base, &ClientOptions::default())
            .await
            .expect("an HTTP/2 connection");
        assert!(
            connection.supports_websockets(),
            "the hub advertises SETTINGS_ENABLE_CONNECT_PROTOCOL"
        );
        let (mut a, response) = connection
            .websocket(&format!("{base}/ws?user=alice"), ClientOptions::default())
            .await
            .expect("first WebSocket");
        assert_eq!(response.status, 200, "RFC 8441 answers 200");
        assert!(
            response
                .extensions
                .as_deref()
                .is_some_and(|e| e.contains("permessage-deflate")),
            "deflate negotiated over HTTP/2 as over HTTP/1.1: {response:?}"
        );
        let (mut b, _) = connection
            .websocket(&format!("{base}/ws?user=bob"), ClientOptions::default())
            .await
            .expect("second WebSocket on the same connection");
        let (mut c, _) = connection
            .websocket(&format!("{base}/ws?user=carol"), ClientOptions::default())
            .await
            .expect("third WebSocket on the same connection");
        // And one over HTTP/1.1 on the same port.
        let mut h1 = Client::connect(addr, "?user=dave").await;

        let (mut pa, mut pb, mut pc) = (Vec::new(), Vec::new(), Vec::new());
        let reply = call(
            &mut a,
            1,
            json!({"op":"subscribe","channel":"room"}),
            &mut pa,
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let reply = call(
            &mut b,
            1,
            json!({"op":"subscribe","channel":"room"}),
            &mut pb,
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        h1.subscribe("room").await;

        // Published over HTTP/2, delivered to both transports.
        let reply = call(
            &mut c,
            1,
            json!({"op":"publish","channel":"room","data":{"n":1}}),
            &mut pc,
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(publication(&mut a, &mut pa).await["data"], json!({"n": 1}));
        assert_eq!(publication(&mut b, &mut pb).await["data"], json!({"n": 1}));
        assert_eq!(h1.publication().await["data"], json!({"n": 1}));

        // Published over HTTP/1.1 (WebSocket and API), delivered over HTTP/2, in order.
        h1.publish("room", json!({"n": 2})).await;
        publish_http(addr, "room", json!({"n": 3})).await;
        for n in [2, 3] {
            assert_eq!(publication(&mut a, &mut pa).await["data"], json!({"n": n}));
            assert_eq!(publication(&mut b, &mut pb).await["data"], json!({"n": n}));
        }

        // Presence sees the HTTP/2 clients by their user names.
        let reply = call(
            &mut c,
            2,
            json!({"op":"presence","channel":"room"}),
            &mut pc,
        )
        .await;
        let mut users: Vec<String> = reply["clients"]
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .iter()
            .map(|client| client["user"].as_str().unwrap().to_owned())
            .collect();
        users.sort();
        assert_eq!(users, ["alice", "bob", "dave"]);

        assert_eq!(metric(addr, H2).await, 3);
        assert_eq!(metric(addr, H1).await, 1);
        assert_eq!(hub.metrics().connections(), 4);

        // A WebSocket closing ends its stream only: the others keep working.
        a.close(duplex::CloseCode::NORMAL, "bye").await.unwrap();
        publish_http(addr, "room", json!({"n": 4})).await;
        assert_eq!(publication(&mut b, &mut pb).await["data"], json!({"n": 4}));
    })
    .await;
}

#[tokio::test]
async fn connect_auto_picks_http2_and_shutdown_closes_h2_websockets_with_1001() {
    within(async {
        let hub = hub(hyper()).await;
        let addr = hub.local_addr();
        let options = ClientOptions {
            http2: true,
            ..ClientOptions::default()
        };
        let (mut ws, response) = duplex::connect_auto(&format!("ws://{addr}/ws"), options)
            .await
            .expect("connects");
        assert!(ws.get_ref().is_http2(), "{response:?}");
        let mut pushes = Vec::new();
        let reply = call(
            &mut ws,
            1,
            json!({"op":"subscribe","channel":"s"}),
            &mut pushes,
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(metric(addr, H2).await, 1);

        hub.shutdown();
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.recv_event())
                .await
                .expect("the close within 10 s")
            {
                Some(Ok(Event::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("ended without a close frame: {other:?}"),
            }
        };
        assert_eq!(close.map(|f| f.code.as_u16()), Some(1001));
        // Keep polling so the reply goes out and the close handshake completes.
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            while ws.recv_event().await.is_some() {}
        });
        let _ = rest.await;
        assert!(
            hub.shutdown_within(Duration::from_secs(10)).await,
            "every connection ended"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_websocket_is_a_slow_consumer_and_its_neighbours_are_not() {
    within(async {
        let hub = hub(duplex_hub::HubConfig {
            queue_bytes: 256 * 1024,
            ..hyper()
        })
        .await;
        let addr = hub.local_addr();
        let base = format!("ws://{addr}");
        let options = || ClientOptions {
            deflate: None,
            ..ClientOptions::default()
        };
        let connection = Http2Connection::connect(&base, &options()).await.unwrap();
        let (mut slow, _) = connection
            .websocket(&format!("{base}/ws"), options())
            .await
            .unwrap();
        let (mut reader, _) = connection
            .websocket(&format!("{base}/ws"), options())
            .await
            .unwrap();
        let mut pushes = Vec::new();
        for ws in [&mut slow, &mut reader] {
            let reply = call(
                ws,
                1,
                json!({"op":"subscribe","channel":"flood"}),
                &mut pushes,
            )
            .await;
            assert_eq!(reply["ok"], true, "{reply}");
        }
        // `reader` reads everything as it comes, on the same HTTP/2 connection as `slow`,
        // which reads nothing: h2 flow control holds back `slow`'s stream only, its pushes
        // queue in the hub until the bound, and it is cut off with 1013.
        let reading = tokio::spawn(async move {
            let mut expected = 1;
            loop {
                let push = next(&mut reader).await;
                if push["op"] != "pub" {
                    continue;
                }
                assert_eq!(push["offset"], expected, "in order, no gap, no duplicate");
                if push["data"]["last"] == true {
                    return expected;
                }
                expected += 1;
            }
        });
        let mut publisher = Client::connect(addr, "").await;
        let payload = "x".repeat(8 * 1024);
        let mut published = 0u64;
        while hub.metrics().slow_consumer_disconnects() == 0 {
            // The stream window (1 MiB) and the connection's take about 130 of these first.
            assert!(
                published < 5_000,
                "the stalled HTTP/2 WebSocket was never cut off"
            );
            for _ in 0..16 {
                publisher
                    .publish("flood", json!({"pad": payload, "last": false}))
                    .await;
                published += 1;
            }
        }
        publisher
            .publish("flood", json!({"pad": "", "last": true}))
            .await;
        published += 1;
        assert_eq!(
            reading.await.unwrap(),
            published,
            "the neighbour got everything"
        );
        assert_eq!(hub.metrics().slow_consumer_disconnects(), 1);
        // The stalled one reads now: what was delivered, then Close 1013.
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), slow.recv_event())
                .await
                .expect("the close within 10 s")
            {
                Some(Ok(Event::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("ended without a close frame: {other:?}"),
            }
        };
        assert_eq!(close.map(|f| f.code.as_u16()), Some(1013));
    })
    .await;
}

/// One request over a fresh h2c connection: the status and the body.
async fn h2_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, body.is_none()).unwrap();
    if let Some(body) = body {
        send.send_data(bytes::Bytes::copy_from_slice(body), true)
            .unwrap();
    }
    let response = response.await.expect("a response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, out)
}

#[tokio::test]
async fn the_http_api_over_h2c_needs_no_content_length_and_keeps_the_body_limit() {
    within(async {
        let hub = hub(duplex_hub::HubConfig {
            max_message_size: 1024,
            queue_bytes: 64 * 1024,
            ..hyper()
        })
        .await;
        let addr = hub.local_addr();
        let (status, body) = h2_request(addr, "GET", "/healthz", None).await;
        assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        let (status, body) = h2_request(
            addr,
            "POST",
            "/api/publish",
            Some(br#"{"channel":"h","data":[1]}"#),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let reply: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply["offset"], 1);
        let (status, _) = h2_request(addr, "POST", "/api/publish", Some(&[b' '; 2000])).await;
        assert_eq!(status, 413);
        let (status, body) = h2_request(addr, "GET", "/api/history?channel=h", None).await;
        assert_eq!(status, 200);
        let history: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(history["publications"][0]["data"], json!([1]));
        let (status, _) = h2_request(addr, "GET", "/nope", None).await;
        assert_eq!(status, 404);
    })
    .await;
}

#[tokio::test]
async fn http1_on_hyper_431_for_big_heads_head_without_body_and_100_continue() {
    within(async {
        let hub = hub(hyper()).await;
        let addr = hub.local_addr();
        let big = "x".repeat(17 * 1024);
        assert_eq!(
            http(addr, "GET", "/healthz", &[("X-Big", &big)], None)
                .await
                .status,
            431
        );
        let names: Vec<String> = (0..70).map(|i| format!("X-H{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        assert_eq!(http(addr, "GET", "/healthz", &many, None).await.status, 431);

        // HEAD: the headers of the GET, no body.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.unwrap();
        let text = String::from_utf8(bytes).unwrap().to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("content-length: 2\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body: {text}");

        // Expect: 100-continue: the interim answer first, then the body is read.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = r#"{"channel":"e","data":1}"#;
        tcp.write_all(
            format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut interim = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut interim))
            .await
            .expect("100 Continue within 10 s")
            .unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        tcp.write_all(body.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.unwrap();
        let (publish, _) = common::parse_response(&bytes);
        assert_eq!(publish.status, 200);
        assert_eq!(publish.json()["offset"], 1);
    })
    .await;
}

/// An `/sse` stream read off an HTTP/2 stream: its events as `(event, data)`.
struct H2Sse {
    body: h2::RecvStream,
    buf: Vec<u8>,
}

impl H2Sse {
    /// Opens `/sse{query}` on `client`'s connection; asserts the stream's response head.
    async fn open(
        client: &mut h2::client::SendRequest<bytes::Bytes>,
        addr: SocketAddr,
        query: &str,
    ) -> H2Sse {
        let request = http::Request::builder()
            .uri(format!("http://{addr}/sse{query}"))
            .header("accept", "text/event-stream")
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("a response head within 10 s")
            .expect("a response");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        H2Sse {
            body: response.into_body(),
            buf: Vec::new(),
        }
    }

    /// The data of the next event named `name` (others are skipped).
    async fn next(&mut self, name: &str) -> Value {
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 2);
                let field = |f: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(f)?.strip_prefix(": "))
                };
                if field("event") == Some(name) {
                    return serde_json::from_str(field("data").expect("data")).unwrap();
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.data())
                .await
                .expect("an event within 10 s")
                .expect("the stream is open")
                .expect("no stream error");
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// Waits (bounded) until the hub counts `streams` open `/sse` streams and `subscriptions`.
async fn settle(hub: &duplex_hub::HubHandle, streams: i64, subscriptions: i64) {
    let mut waited = 0;
    while hub.metrics().sse_streams() != streams || hub.metrics().subscriptions() != subscriptions {
        assert!(
            waited < 500,
            "expected {streams} /sse streams and {subscriptions} subscriptions, have {} and {}",
            hub.metrics().sse_streams(),
            hub.metrics().subscriptions()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
}

#[tokio::test]
async fn sse_streams_over_h2c_share_a_connection_and_leave_when_reset_or_closed() {
    within(async {
        let hub = hub(hyper()).await;
        let addr = hub.local_addr();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
        let connection = tokio::spawn(connection);
        let mut one = H2Sse::open(&mut client, addr, "?channel=s").await;
        let mut two = H2Sse::open(&mut client, addr, "?channel=s&channel=t").await;
        assert_eq!(one.next("subscribed").await["channel"], "s");
        assert_eq!(two.next("subscribed").await["channel"], "s");
        assert_eq!(two.next("subscribed").await["channel"], "t");
        // SSE streams count as such, whatever HTTP version carries them.
        assert_eq!(
            metric(addr, "duplex_hub_connections_total{transport=\"sse\"}").await,
            2
        );
        assert_eq!(
            metric(addr, "duplex_hub_connections_total{transport=\"h2\"}").await,
            0
        );
        assert_eq!(
            metric(addr, "duplex_hub_connections_total{transport=\"h1\"}").await,
            0
        );
        settle(&hub, 2, 3).await;

        publish_http(addr, "s", json!("first")).await;
        for sse in [&mut one, &mut two] {
            let push = sse.next("pub").await;
            assert_eq!(
                (&push["channel"], &push["data"]),
                (&json!("s"), &json!("first"))
            );
        }

        // Dropping the response resets its HTTP/2 stream: the hub's stream leaves its
        // channel, its neighbour on the same connection goes on.
        drop(one);
        settle(&hub, 1, 2).await;
        publish_http(addr, "t", json!("second")).await;
        let push = two.next("pub").await;
        assert_eq!(
            (&push["channel"], &push["data"]),
            (&json!("t"), &json!("second"))
        );

        // The connection goes: so does the last stream.
        drop(two);
        drop(client);
        connection.abort();
        settle(&hub, 0, 0).await;
    })
    .await;
}
