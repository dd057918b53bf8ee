//! `/sse`: the Server-Sent Events fallback, read as raw bytes off the socket: events and ids,
//! recovery with `Last-Event-ID` after a cut connection, refusals, heartbeats, limits, the
//! slow-consumer policy and shutdown.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, config, http, hub, publish_http, within};
use duplex_hub::HubConfig;
use duplex_hub::auth::sign_hs256;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One event (or comment) as it came off the wire.
#[derive(Debug, Clone, Default)]
struct Event {
    /// `event:`; `":"` for a comment block, `"retry"` for a `retry:`-only block.
    name: String,
    id: Option<String>,
    data: String,
    retry: Option<u64>,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// The state of a chunked body (RFC 9112 section 7.1) being read.
#[derive(Debug, Default)]
struct Chunked {
    /// Received, not yet decoded.
    wire: Vec<u8>,
    /// Data bytes left in the current chunk.
    left: usize,
    /// A CRLF is due (after a chunk's data, or the last chunk's empty trailers).
    crlf: bool,
    /// The last chunk (size 0) came.
    ended: bool,
}

/// A raw `/sse` client (HTTP/1.1): the body as the hub sends it, unframed until the
/// connection closes (builtin server) or chunked (hyper).
struct Sse {
    tcp: TcpStream,
    /// The body received and not yet parsed into events.
    buf: Vec<u8>,
    /// `Transfer-Encoding: chunked`: [`Sse::wire`] holds what is not yet de-chunked.
    chunked: Option<Chunked>,
    status: u16,
    head: String,
    /// The stream may end inside an event (a slow consumer's is abandoned mid-write; a browser
    /// drops the incomplete event).
    may_cut: bool,
}

impl Sse {
    async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open_on(
            TcpStream::connect(addr).await.unwrap(),
            addr,
            target,
            headers,
        )
        .await
    }

    async fn open_on(
        mut tcp: TcpStream,
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Sse {
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
                .await
                .expect("a response head within 10 s")
                .unwrap();
            assert!(
                n > 0,
                "closed before the head: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        buf.drain(..end);
        let mut sse = Sse {
            tcp,
            buf: Vec::new(),
            chunked: None,
            status,
            head,
            may_cut: false,
        };
        if sse
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            sse.chunked = Some(Chunked::default());
        }
        sse.received(&buf);
        sse
    }

    /// Body bytes off the wire: de-chunked into `buf` (partial chunks too: an event may be
    /// cut anywhere).
    fn received(&mut self, bytes: &[u8]) {
        let Some(chunked) = &mut self.chunked else {
            self.buf.extend_from_slice(bytes);
            return;
        };
        chunked.wire.extend_from_slice(bytes);
        loop {
            if chunked.left > 0 {
                let n = chunked.left.min(chunked.wire.len());
                if n == 0 {
                    return;
                }
                self.buf.extend(chunked.wire.drain(..n));
                chunked.left -= n;
                chunked.crlf = chunked.left == 0;
                continue;
            }
            if chunked.crlf {
                if chunked.wire.len() < 2 {
                    return;
                }
                assert_eq!(&chunked.wire[..2], b"\r\n", "a chunk's CRLF");
                chunked.wire.drain(..2);
                chunked.crlf = false;
                continue;
            }
            if chunked.ended {
                assert!(chunked.wire.is_empty(), "bytes after the last chunk");
                return;
            }
            let Some(line) = chunked.wire.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&chunked.wire[..line]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
            chunked.wire.drain(..line + 2);
            chunked.left = size;
            // The last chunk (size 0) is followed by the (empty) trailers' CRLF.
            chunked.ended = size == 0;
            chunked.crlf = size == 0;
        }
    }

    /// The body ended: the connection closed, or (chunked) the last chunk came.
    fn ended(&self) -> bool {
        self.chunked.as_ref().is_some_and(|c| c.ended && !c.crlf)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The rest of a refusal: the JSON error body.
    async fn body(mut self) -> String {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tcp.read_to_end(&mut rest)).await;
        self.buf.extend_from_slice(&rest);
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next block, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 2);
                let mut event = Event::default();
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "" => event.name = ":".into(),
                        "event" => event.name = value.into(),
                        "id" => event.id = Some(value.into()),
                        "data" => data.push(value),
                        "retry" => {
                            event.name = "retry".into();
                            event.retry = Some(value.parse().unwrap());
                        }
                        other => panic!("unknown field {other:?} in {block:?}"),
                    }
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let mut chunk = [0u8; 8192];
            let n = if self.ended() {
                0
            } else {
                tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
                    .await
                    .expect("an event within 10 s")
                    .unwrap_or(0)
            };
            if n == 0 {
                assert!(
                    self.may_cut || self.buf.is_empty(),
                    "a cut event: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            self.received(&chunk[..n]);
        }
    }

    /// The next event that is not a comment, `retry:` or presence event.
    async fn next_event(&mut self) -> Event {
        loop {
            let event = self.next().await.expect("the stream is open");
            if !matches!(event.name.as_str(), ":" | "retry" | "presence") {
                return event;
            }
        }
    }

    /// Asserts that nothing but comments and presence arrives for a moment.
    async fn assert_quiet(&mut self) {
        let quiet = tokio::time::timeout(Duration::from_millis(300), self.next_event()).await;
        assert!(quiet.is_err(), "unexpected event: {quiet:?}");
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn events_carry_every_channels_position_in_their_ids() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        let mut sse = Sse::open(addr, "/sse?channel=a&channel=b%3Ax&user=ada", &[]).await;
        assert_eq!(sse.status, 200, "{}", sse.head);
        assert_eq!(sse.header("content-type"), Some("text/event-stream"));
        assert_eq!(sse.header("cache-control"), Some("no-store"));
        let retry = sse.next().await.unwrap();
        assert_eq!((retry.name.as_str(), retry.retry), ("retry", Some(2000)));

        let a = sse.next_event().await;
        assert_eq!(a.name, "subscribed");
        let reply = a.json();
        let epoch = reply["epoch"].as_str().unwrap().to_owned();
        assert_eq!(
            reply,
            json!({"op": "subscribed", "channel": "a", "epoch": epoch, "offset": 0})
        );
        // One process, one epoch: the second entry leaves it out; `:` in a name is escaped.
        assert_eq!(a.id.as_deref(), Some(&*format!("{epoch}:a:0,:b%3Ax:0")));
        let b = sse.next_event().await;
        assert_eq!(b.json()["channel"], "b:x");

        publish_http(addr, "a", json!({"n": 1})).await;
        let p = sse.next_event().await;
        assert_eq!(p.name, "pub");
        assert_eq!(
            p.json(),
            json!({"op": "pub", "channel": "a", "offset": 1, "data": {"n": 1}})
        );
        assert_eq!(p.id.as_deref(), Some(&*format!("{epoch}:a:1,:b%3Ax:0")));
        // Data with line breaks arrives as several data lines and reads back the same.
        let body = "{\"channel\":\"b:x\",\"data\":{\n  \"text\": \"two\"\n}}";
        let response = http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await;
        assert_eq!(response.status, 200);
        let p = sse.next_event().await;
        assert_eq!(p.json()["data"], json!({"text": "two"}));
        assert_eq!(p.id.as_deref(), Some(&*format!("{epoch}:a:1,:b%3Ax:1")));

        // Presence: a WebSocket client joins `a`; the event names it and moves no position.
        let mut ws = Client::connect(addr, "?user=bob").await;
        ws.subscribe("a").await;
        let join = loop {
            let event = sse.next().await.unwrap();
            if event.name == "presence" && event.json()["join"][0]["user"] == "bob" {
                break event;
            }
        };
        assert_eq!(join.id, None);
        // The SSE subscriber is in presence under its own name.
        let response = http(addr, "GET", "/api/presence?channel=a", &[], None).await;
        let users: Vec<Value> = response.json()["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["user"].clone())
            .collect();
        assert!(users.contains(&json!("ada")), "{users:?}");
        // The same push as the WebSocket subscriber's.
        ws.publish("a", json!("same")).await;
        let over_ws = ws.publication().await;
        let over_sse = sse.next_event().await;
        assert_eq!(over_sse.json(), over_ws);

        let metrics = http(addr, "GET", "/metrics", &[], None).await;
        let text = String::from_utf8(metrics.body).unwrap();
        assert!(
            text.contains("duplex_hub_connections_total{transport=\"sse\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("duplex_hub_connections_total{transport=\"h1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("duplex_hub_sse_streams 1\n"), "{text}");
    })
    .await;
}

/// Publishes `n` through the HTTP API.
async fn publish_n(addr: SocketAddr, channel: &str, range: std::ops::RangeInclusive<u64>) {
    for n in range {
        publish_http(addr, channel, json!(n)).await;
    }
}

#[tokio::test]
async fn a_cut_stream_resumes_from_last_event_id_exactly_once() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        let mut sse = Sse::open(addr, "/sse?channel=x&channel=y", &[]).await;
        sse.next_event().await;
        sse.next_event().await;
        publish_n(addr, "x", 1..=2).await;
        publish_n(addr, "y", 1..=1).await;
        let mut last_id = None;
        for _ in 0..3 {
            last_id = sse.next_event().await.id;
        }
        drop(sse);
        // The hub sees it go: its subscriptions, presence and stream count end.
        let mut waited = 0;
        while hub.metrics().subscriptions() > 0 || hub.metrics().sse_streams() > 0 {
            assert!(waited < 200, "the stream's subscriptions outlived it");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        let presence = http(addr, "GET", "/api/presence?channel=x", &[], None).await;
        assert_eq!(presence.json()["clients"], json!([]));
        // While it is away: x 3..=5, y 2.
        publish_n(addr, "x", 3..=5).await;
        publish_n(addr, "y", 2..=2).await;
        let last_id = last_id.unwrap();
        let mut sse = Sse::open(
            addr,
            "/sse?channel=x&channel=y",
            &[("Last-Event-ID", &last_id)],
        )
        .await;
        let x = sse.next_event().await.json();
        assert_eq!(
            (
                x["channel"].clone(),
                x["recovered"].clone(),
                x["count"].clone()
            ),
            (json!("x"), json!(true), json!(3))
        );
        let y = sse.next_event().await.json();
        assert_eq!(
            (y["recovered"].clone(), y["count"].clone()),
            (json!(true), json!(1))
        );
        let mut got = Vec::new();
        for _ in 0..4 {
            let event = sse.next_event().await;
            assert_eq!(event.name, "pub");
            let push = event.json();
            got.push((
                push["channel"].as_str().unwrap().to_owned(),
                push["data"].as_u64().unwrap(),
            ));
        }
        assert_eq!(
            got,
            [
                ("x".into(), 3),
                ("x".into(), 4),
                ("x".into(), 5),
                ("y".into(), 2)
            ]
        );
        publish_n(addr, "x", 6..=6).await;
        assert_eq!(
            sse.next_event().await.json()["data"],
            6,
            "live after the recovered ones"
        );
        sse.assert_quiet().await;
    })
    .await;
}

#[tokio::test]
async fn cuts_under_a_steady_publisher_lose_and_repeat_nothing() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        const TOTAL: u64 = 300;
        let publisher = tokio::spawn(async move {
            let mut ws = Client::connect(addr, "").await;
            for n in 1..=TOTAL {
                ws.publish("live", json!(n)).await;
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        let mut seen = Vec::new();
        let mut last_id: Option<String> = None;
        // Reconnect every 40 events, as a browser would after a cut, with the last id it saw.
        while seen.len() < TOTAL as usize {
            let headers: Vec<(&str, &str)> = last_id
                .iter()
                .map(|id| ("Last-Event-ID", id.as_str()))
                .collect();
            let mut sse = Sse::open(addr, "/sse?channel=live", &headers).await;
            let subscribed = sse.next_event().await;
            if last_id.is_some() {
                assert_eq!(subscribed.json()["recovered"], true, "{subscribed:?}");
            }
            last_id = subscribed.id;
            for _ in 0..40 {
                if seen.len() == TOTAL as usize {
                    break;
                }
                let event = sse.next_event().await;
                assert_eq!(event.name, "pub", "{event:?}");
                seen.push(event.json()["data"].as_u64().unwrap());
                last_id = event.id;
            }
        }
        publisher.await.unwrap();
        assert_eq!(
            seen,
            (1..=TOTAL).collect::<Vec<_>>(),
            "every publication once, in order"
        );
    })
    .await;
}

#[tokio::test]
async fn recovery_that_history_cannot_cover_says_so() {
    within(async {
        let hub = hub(HubConfig {
            history_size: 2,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut sse = Sse::open(addr, "/sse?channel=h", &[]).await;
        let id = sse.next_event().await.id.unwrap();
        drop(sse);
        publish_n(addr, "h", 1..=5).await;
        let mut sse = Sse::open(addr, "/sse?channel=h", &[("Last-Event-ID", &id)]).await;
        let subscribed = sse.next_event().await;
        let reply = subscribed.json();
        assert_eq!(reply["recovered"], false);
        assert_eq!(reply["offset"], 5);
        assert!(
            reply["reason"].as_str().unwrap().contains("history"),
            "{reply}"
        );
        // It continues from the stream's top: that is what its id says now.
        assert!(subscribed.id.unwrap().ends_with(":h:5"));
        publish_n(addr, "h", 6..=6).await;
        assert_eq!(sse.next_event().await.json()["offset"], 6);

        // The header is newer than the page's query parameter: it wins.
        let stale = format!("lastEventId={}", id.replace(':', "%3A"));
        let fresh = subscribed_id(addr).await;
        let mut sse = Sse::open(
            addr,
            &format!("/sse?channel=h&{stale}"),
            &[("Last-Event-ID", &fresh)],
        )
        .await;
        let reply = sse.next_event().await.json();
        assert_eq!(
            (reply["recovered"].clone(), reply["count"].clone()),
            (json!(true), json!(0)),
            "{reply}"
        );

        // Another epoch (a restarted hub), through the query parameter this time.
        let mut sse = Sse::open(
            addr,
            "/sse?channel=h&lastEventId=0123456789abcdef%3Ah%3A1",
            &[],
        )
        .await;
        let reply = sse.next_event().await.json();
        assert_eq!(reply["recovered"], false);
        assert!(
            reply["reason"].as_str().unwrap().contains("epoch"),
            "{reply}"
        );
    })
    .await;
}

/// The id of a fresh stream on `h`: its current position.
async fn subscribed_id(addr: SocketAddr) -> String {
    let mut sse = Sse::open(addr, "/sse?channel=h", &[]).await;
    sse.next_event().await.id.unwrap()
}

#[tokio::test]
async fn idle_streams_get_comment_heartbeats() {
    within(async {
        let hub = hub(HubConfig {
            sse_heartbeat: Some(Duration::from_millis(100)),
            sse_retry: Duration::from_millis(750),
            ..config()
        })
        .await;
        let mut sse = Sse::open(hub.local_addr(), "/sse?channel=quiet", &[]).await;
        assert_eq!(sse.next().await.unwrap().retry, Some(750));
        let mut comments = 0;
        while comments < 3 {
            let event = sse.next().await.unwrap();
            if event.name == ":" {
                comments += 1;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn tokens_and_grants_are_checked_as_for_websockets() {
    within(async {
        const SECRET: &str = "sse-secret";
        let hub = hub(HubConfig {
            token_secret: Some(SECRET.into()),
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let sse = Sse::open(addr, "/sse?channel=a", &[]).await;
        assert_eq!(sse.status, 401);
        assert_eq!(sse.header("www-authenticate"), Some("Bearer"));
        assert!(sse.body().await.contains("token"));
        let forged = sign_hs256(
            json!({"sub": "eve", "exp": now() + 60})
                .to_string()
                .as_bytes(),
            b"other",
        );
        let sse = Sse::open(addr, &format!("/sse?channel=a&token={forged}"), &[]).await;
        assert_eq!(sse.status, 401);
        assert!(sse.body().await.contains("signature"));
        let token = sign_hs256(
            json!({"sub": "ada", "exp": now() + 60, "channels": ["chat:*"]})
                .to_string()
                .as_bytes(),
            SECRET.as_bytes(),
        );
        let sse = Sse::open(
            addr,
            &format!("/sse?channel=chat:1&channel=admin&token={token}"),
            &[],
        )
        .await;
        assert_eq!(sse.status, 403);
        assert!(sse.body().await.contains("admin"));
        let bearer = format!("Bearer {token}");
        let mut sse = Sse::open(addr, "/sse?channel=chat:1", &[("Authorization", &bearer)]).await;
        assert_eq!(sse.status, 200);
        assert_eq!(sse.next_event().await.json()["channel"], "chat:1");
        let join = loop {
            let event = sse.next().await.unwrap();
            if event.name == "presence" {
                break event.json();
            }
        };
        assert_eq!(join["join"][0]["user"], "ada", "the token's sub");
        assert_eq!(hub.metrics().subscriptions(), 1);
    })
    .await;
}

#[tokio::test]
async fn limits_and_bad_requests_are_refused_before_anything_is_subscribed() {
    within(async {
        let hub = hub(HubConfig {
            max_subscriptions: 2,
            max_connections: 2,
            allowed_origins: vec!["https://app.example".into()],
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let status = |target: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
            let sse = Sse::open(addr, target, headers).await;
            (sse.status, sse.body().await)
        };
        let (s, body) = status("/sse?channel=a&channel=b&channel=c", &[]).await;
        assert_eq!(s, 429, "{body}");
        assert!(body.contains("at most 2"), "{body}");
        assert_eq!(status("/sse", &[]).await.0, 400);
        assert_eq!(status("/sse?channel=a&channel=a", &[]).await.0, 400);
        assert_eq!(status("/sse?channel=", &[]).await.0, 400);
        assert_eq!(status("/sse?channel=a", &[("Last-Event-ID", "nonsense")]).await.0, 400);
        assert_eq!(status("/sse?channel=a", &[("Origin", "https://evil.example")]).await.0, 403);
        let response = http(addr, "POST", "/sse?channel=a", &[], Some(b"")).await;
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET"));
        assert_eq!(hub.metrics().subscriptions(), 0, "nothing subscribed");

        // An allowed cross-origin page may read the stream.
        let first = Sse::open(addr, "/sse?channel=a", &[("Origin", "https://app.example")]).await;
        assert_eq!(first.header("access-control-allow-origin"), Some("https://app.example"));
        let _second = Sse::open(addr, "/sse?channel=a", &[]).await;
        let third = Sse::open(addr, "/sse?channel=a", &[]).await;
        assert_eq!(third.status, 503, "max_connections counts streams");
        assert_eq!(third.header("retry-after"), Some("5"));
        drop(first);
        // The slot frees once the hub sees the client go.
        let mut open = None;
        for _ in 0..100 {
            let sse = Sse::open(addr, "/sse?channel=a", &[]).await;
            if sse.status == 200 {
                open = Some(sse);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(open.is_some(), "a freed slot is reused");
    })
    .await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_closed_and_others_go_on() {
    within(async {
        let hub = hub(HubConfig {
            max_message_size: 8192,
            queue_bytes: 64 * 1024,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        // A small receive buffer, so the kernel holds little on the stalled client's behalf.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let mut stalled = Sse::open_on(tcp, addr, "/sse?channel=flood", &[]).await;
        assert_eq!(stalled.status, 200);
        let mut reader = Sse::open(addr, "/sse?channel=flood", &[]).await;
        reader.next_event().await;
        let mut ws = Client::connect(addr, "").await;
        let data = "x".repeat(4000);
        let mut read = 0;
        for n in 0..2000u64 {
            ws.publish("flood", json!({"n": n, "pad": data})).await;
            // The healthy reader keeps up.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, reader.next()).await {
                read += 1;
            }
            if hub.metrics().slow_consumer_disconnects() > 0 {
                break;
            }
        }
        assert_eq!(
            hub.metrics().slow_consumer_disconnects(),
            1,
            "the stalled stream overflowed"
        );
        stalled.may_cut = true;
        // It ends: events up to the cut, maybe a `close` event (1013), then the end.
        let mut close = None;
        while let Some(event) = stalled.next().await {
            if event.name == "close" {
                close = Some(event.json());
            }
        }
        if let Some(close) = close {
            assert_eq!(close["code"], 1013);
        }
        // The reader is still served.
        ws.publish("flood", json!("after")).await;
        loop {
            let event = reader.next_event().await;
            if event.json()["data"] == "after" {
                break;
            }
            read += 1;
        }
        assert!(read > 0);
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_close_event() {
    within(async {
        let hub = hub(config()).await;
        let mut sse = Sse::open(hub.local_addr(), "/sse?channel=s", &[]).await;
        sse.next_event().await;
        hub.shutdown();
        let close = sse.next_event().await;
        assert_eq!(close.name, "close");
        assert_eq!(close.json()["code"], 1001);
        assert_eq!(close.id, None);
        assert!(sse.next().await.is_none(), "then the end of the stream");
        tokio::time::timeout(Duration::from_secs(5), hub.wait())
            .await
            .expect("the hub stops with the stream");
    })
    .await;
}
