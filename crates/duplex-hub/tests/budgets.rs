//! The hub's budgets and rate limits (issue 12): for each, the refusal, its count in
//! `duplex_hub_refusals_total`, and that another client is unaffected; and the issue's
//! regression cases (history grown by one anonymous client, channels never freed, `+30`).
//! Everything on loopback; clients "from another address" bind 127.0.0.2 (all of 127/8 is
//! loopback on Linux), with `rate_limit_loopback` on so that the per-address limits apply.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{Client, config, http, hub, parse_response, within};
use duplex_hub::{HttpServer, HubConfig, HubHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A TCP connection to `addr` from `local` (any port).
async fn connect_from(local: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(local), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads one response head (and what follows of it so far) from `tcp`.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn status(head: &str) -> u16 {
    head[9..12].parse().unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A WebSocket upgrade request from `local`; returns the connection and the response head.
async fn upgrade_from(local: Ipv4Addr, addr: SocketAddr) -> (TcpStream, String) {
    let mut tcp = connect_from(local, addr).await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (tcp, head)
}

/// `POST /api/publish` from `local` on a connection of its own; returns the response.
async fn publish_from(
    local: Ipv4Addr,
    addr: SocketAddr,
    channel: &str,
    auth: Option<&str>,
) -> common::HttpResponse {
    let mut tcp = connect_from(local, addr).await;
    let body = json!({"channel": channel, "data": 1}).to_string();
    let auth = auth.map_or(String::new(), |key| {
        format!("Authorization: Bearer {key}\r\n")
    });
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut bytes))
        .await
        .expect("a response within 10 s")
        .unwrap();
    parse_response(&bytes).0
}

async fn metrics_text(hub: &HubHandle) -> String {
    String::from_utf8(
        http(hub.local_addr(), "GET", "/metrics", &[], None)
            .await
            .body,
    )
    .unwrap()
}

fn refusals(hub: &HubHandle, reason: &str) -> u64 {
    hub.metrics().refusals(reason).expect("a known reason")
}

fn both_servers() -> [HttpServer; 2] {
    [HttpServer::Hyper, HttpServer::Builtin]
}

#[tokio::test]
async fn content_length_is_digits_only_on_both_servers() {
    within(async {
        for server in both_servers() {
            let hub = hub(HubConfig {
                http_server: server,
                ..config()
            })
            .await;
            let addr = hub.local_addr();
            for value in [
                "+30",
                "-30",
                "3 0",
                "0x1e",
                "30a",
                "1e1",
                "99999999999999999999999",
            ] {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                let request = format!(
                    "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n\
                     {{\"channel\":\"smuggled\",\"data\":1}}"
                );
                tcp.write_all(request.as_bytes()).await.unwrap();
                let mut bytes = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut bytes))
                    .await
                    .expect("answered and closed within 10 s");
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    text.starts_with("HTTP/1.1 400"),
                    "{server:?} {value:?}: {text}"
                );
            }
            // Nothing was published by any of them, and a proper request still works.
            let history = http(addr, "GET", "/api/history?channel=smuggled", &[], None).await;
            assert_eq!(history.json()["offset"], 0, "{server:?}");
            let body = br#"{"channel":"ok","data":1}"#;
            let fine = http(addr, "POST", "/api/publish", &[], Some(body)).await;
            assert_eq!(fine.status, 200, "{server:?}");
        }
    })
    .await;
}

/// Issue 12: one anonymous client publishing big messages to many channels grew history by
/// 113 MiB. Now history stays within `history_bytes`, whatever the channels.
#[tokio::test]
async fn one_client_cannot_grow_history_past_the_byte_budget() {
    within(async {
        const BUDGET: usize = 1 << 20;
        let hub = hub(HubConfig {
            history_bytes: BUDGET,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        // Another client, subscribed to a channel of its own: unaffected, gets every one.
        let mut watcher = Client::connect(addr, "").await;
        watcher.subscribe("watched").await;
        let mut flooder = Client::connect(addr, "").await;
        let rss_before = rss_bytes();
        let first = flooder.publish("flood-0", json!("x".repeat(60_000))).await;
        let epoch = first["epoch"].as_str().unwrap().to_owned();
        let big = "x".repeat(60_000);
        for i in 0..200 {
            flooder.publish(&format!("flood-{i}"), json!(big)).await;
            assert!(
                hub.metrics().history_bytes() <= BUDGET as i64,
                "history at {} bytes after {i} publications",
                hub.metrics().history_bytes()
            );
            if i % 50 == 0 {
                watcher.publish("watched", json!(i)).await;
            }
        }
        let held = hub.metrics().history_bytes();
        eprintln!(
            "12 MB published to 200 channels: history holds {held} bytes (budget {BUDGET}), \
             the process grew by {} KiB",
            rss_bytes().saturating_sub(rss_before) / 1024
        );
        // 200 x 60 KB were published: 12 MB. The budget holds about 17 of them.
        assert!(
            held > (BUDGET / 2) as i64 && held <= BUDGET as i64,
            "{held}"
        );
        assert!(refusals(&hub, "history_budget") >= 180, "evictions counted");
        // Channels whose history went (and nobody subscribed) were freed too.
        assert!(
            hub.metrics().channels() <= 20,
            "{} channels",
            hub.metrics().channels()
        );
        let text = metrics_text(&hub).await;
        assert!(
            text.contains("duplex_hub_refusals_total{reason=\"history_budget\"}"),
            "{text}"
        );
        assert!(
            text.contains(&format!("duplex_hub_history_bytes {held}\n")),
            "{text}"
        );
        // Recovery stays truthful: since the first publication of flood-0 cannot be recovered.
        let mut late = Client::connect(addr, "").await;
        let reply = late
            .call(json!({"op": "subscribe", "channel": "flood-0",
                         "since": {"epoch": epoch, "offset": 0}}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["recovered"], false, "{reply}");
        // The watcher got its own publications, in order, nothing missing.
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(watcher.publication().await["data"].clone());
        }
        assert_eq!(seen, [json!(0), json!(50), json!(100), json!(150)]);
    })
    .await;
}

#[tokio::test]
async fn the_channel_cap_refuses_new_channels_and_nothing_else() {
    within(async {
        let hub = hub(HubConfig {
            max_channels: 3,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut a = Client::connect(addr, "").await;
        for channel in ["c1", "c2", "c3"] {
            a.subscribe(channel).await;
        }
        let reply = a.call(json!({"op": "subscribe", "channel": "c4"})).await;
        assert_eq!(reply["error"]["code"], "channel_limit", "{reply}");
        let body = br#"{"channel":"c5","data":1}"#;
        let refused = http(addr, "POST", "/api/publish", &[], Some(body)).await;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.header("retry-after"), Some("5"));
        assert!(
            refused.json()["error"]
                .as_str()
                .unwrap()
                .contains("too many channels")
        );
        assert_eq!(refusals(&hub, "channel_limit"), 2);
        // Other clients, on channels that exist, are unaffected.
        let mut b = Client::connect(addr, "").await;
        b.subscribe("c1").await;
        b.publish("c2", json!("fine")).await;
        assert_eq!(a.publication().await["data"], "fine");
        // A freed channel makes room.
        let reply = a.call(json!({"op": "unsubscribe", "channel": "c3"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        a.subscribe("c4").await;
        assert!(
            metrics_text(&hub)
                .await
                .contains("duplex_hub_refusals_total{reason=\"channel_limit\"} 2\n")
        );
    })
    .await;
}

#[tokio::test]
async fn subscribes_are_rate_limited_per_connection() {
    within(async {
        let hub = hub(HubConfig {
            subscribe_rate: 0.5,
            subscribe_burst: 3,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut a = Client::connect(addr, "").await;
        a.subscribe("s1").await;
        a.subscribe("s2").await;
        let reply = a.call(json!({"op": "unsubscribe", "channel": "s2"})).await;
        assert_eq!(reply["ok"], true, "unsubscribes count too: {reply}");
        let reply = a.call(json!({"op": "subscribe", "channel": "s3"})).await;
        assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("retry in")
        );
        let reply = a.call(json!({"op": "unsubscribe", "channel": "s1"})).await;
        assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
        assert_eq!(refusals(&hub, "subscribe_rate"), 2);
        // The connection stays open and keeps its subscription; another connection has a
        // bucket of its own.
        let mut b = Client::connect(addr, "").await;
        b.subscribe("s1").await;
        b.publish("s1", json!("still here")).await;
        assert_eq!(a.publication().await["data"], "still here");
        let pong = a.call(json!({"op": "ping"})).await;
        assert_eq!(pong["ok"], true);
    })
    .await;
}

#[tokio::test]
async fn http_publishes_are_rate_limited_per_address_or_api_key() {
    within(async {
        let hub = hub(HubConfig {
            http_publish_rate: 0.5,
            http_publish_burst: 2,
            rate_limit_loopback: true,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        for _ in 0..2 {
            assert_eq!(
                publish_from(Ipv4Addr::LOCALHOST, addr, "h", None)
                    .await
                    .status,
                200
            );
        }
        let refused = publish_from(Ipv4Addr::LOCALHOST, addr, "h", None).await;
        assert_eq!(refused.status, 429, "{refused:?}");
        let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        assert_eq!(refusals(&hub, "http_publish_rate"), 1);
        // Another address is unaffected, and so are WebSocket publishes.
        assert_eq!(publish_from(OTHER, addr, "h", None).await.status, 200);
        let mut ws = Client::connect(addr, "").await;
        ws.publish("h", json!(1)).await;
        // Reads are not publishes.
        let history = http(addr, "GET", "/api/history?channel=h", &[], None).await;
        assert_eq!(history.json()["offset"], 4);

        // With an API key the bucket is the key's, whatever the address.
        let keyed = hub_with(HubConfig {
            api_key: Some("k".into()),
            http_publish_rate: 0.5,
            http_publish_burst: 1,
            ..config()
        })
        .await;
        let addr = keyed.local_addr();
        assert_eq!(publish_from(OTHER, addr, "h", Some("k")).await.status, 200);
        let refused = publish_from(Ipv4Addr::LOCALHOST, addr, "h", Some("k")).await;
        assert_eq!(refused.status, 429, "{refused:?}");
        // A wrong key is refused before the limiter sees it.
        assert_eq!(publish_from(OTHER, addr, "h", Some("no")).await.status, 401);

        // By default loopback clients (a local reverse proxy) are not limited per address.
        let open = hub_with(HubConfig {
            http_publish_rate: 0.5,
            http_publish_burst: 1,
            ..config()
        })
        .await;
        for _ in 0..5 {
            let fine = publish_from(Ipv4Addr::LOCALHOST, open.local_addr(), "h", None).await;
            assert_eq!(fine.status, 200);
        }
    })
    .await;
}

async fn hub_with(config: HubConfig) -> HubHandle {
    hub(config).await
}

#[tokio::test]
async fn new_connections_are_rate_limited_per_address_before_the_upgrade() {
    within(async {
        for server in both_servers() {
            let hub = hub(HubConfig {
                http_server: server,
                connection_rate: 0.5,
                connection_burst: 2,
                rate_limit_loopback: true,
                ..config()
            })
            .await;
            let addr = hub.local_addr();
            let mut open = Vec::new();
            for _ in 0..2 {
                let (tcp, head) = upgrade_from(Ipv4Addr::LOCALHOST, addr).await;
                assert_eq!(status(&head), 101, "{server:?}: {head}");
                open.push(tcp);
            }
            let (_, head) = upgrade_from(Ipv4Addr::LOCALHOST, addr).await;
            assert_eq!(status(&head), 429, "{server:?}: {head}");
            assert!(header(&head, "retry-after").is_some(), "{head}");
            assert_eq!(refusals(&hub, "connection_rate"), 1, "{server:?}");
            // An /sse stream is a new connection too.
            let mut sse = connect_from(Ipv4Addr::LOCALHOST, addr).await;
            sse.write_all(b"GET /sse?channel=x HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let head = read_head(&mut sse).await;
            assert_eq!(status(&head), 429, "{server:?}: {head}");
            assert!(header(&head, "retry-after").is_some(), "{head}");
            assert_eq!(refusals(&hub, "connection_rate"), 2, "{server:?}");
            // Another address connects; the open connections stay.
            let (tcp, head) = upgrade_from(OTHER, addr).await;
            assert_eq!(status(&head), 101, "{server:?}: {head}");
            open.push(tcp);
            let text = metrics_text(&hub).await;
            assert!(
                text.contains("duplex_hub_refusals_total{reason=\"connection_rate\"} 2\n"),
                "{text}"
            );
            // The sessions start once the 101 is out: wait for all three.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while hub.metrics().connections() != 3 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{server:?}: {} connections, not 3",
                    hub.metrics().connections()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
}

/// A client frame: FIN as given, text or continuation, masked with a zero key.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Reads server frames until a Close; returns its code.
async fn close_code(tcp: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Server frames are unmasked; look for a Close frame at the start of what is left.
        while buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            let (head, len) = match len {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => break,
                127 => panic!("no frame this large expected"),
                n => (2, n),
            };
            if buf.len() < head + len {
                break;
            }
            if buf[0] & 0x0f == 8 {
                return u16::from_be_bytes([buf[head], buf[head + 1]]);
            }
            buf.drain(..head + len);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("a close within 10 s")
            .unwrap();
        assert!(n > 0, "closed without a Close frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn partly_received_messages_share_one_budget() {
    within(async {
        const MAX: usize = 64 * 1024;
        let hub = hub(HubConfig {
            message_budget: MAX,
            compression: duplex_hub::Compression::Off,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        // A holds a 60 KB message in progress (44 KB charged past the uncharged 16 KiB).
        let (mut a, head) = upgrade_from(Ipv4Addr::LOCALHOST, addr).await;
        assert_eq!(status(&head), 101);
        let prefix = br#"{"id":7,"op":"ping","pad":""#;
        let mut first = prefix.to_vec();
        first.extend(std::iter::repeat_n(b'x', 60_000));
        a.write_all(&frame(false, 1, &first)).await.unwrap();
        // Wait until the hub holds it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hub.metrics().message_budget_held() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "A's fragment never charged"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // B's 60 KB does not fit next to it: B is closed with 1013 (try again later).
        let (mut b, head) = upgrade_from(Ipv4Addr::LOCALHOST, addr).await;
        assert_eq!(status(&head), 101);
        b.write_all(&frame(false, 1, &first)).await.unwrap();
        assert_eq!(close_code(&mut b).await, 1013);
        assert_eq!(refusals(&hub, "message_budget"), 1);
        assert!(
            metrics_text(&hub)
                .await
                .contains("duplex_hub_refusals_total{reason=\"message_budget\"} 1\n")
        );
        // A is unaffected: its message completes and is answered.
        a.write_all(&frame(true, 0, br#""}"#)).await.unwrap();
        let mut reply = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), a.read(&mut reply))
            .await
            .expect("A's reply within 10 s")
            .unwrap();
        let text = String::from_utf8_lossy(&reply[2..n]);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(value, json!({"id": 7, "ok": true}));
        assert_eq!(hub.metrics().message_budget_held(), 0, "refunded");
    })
    .await;
}

/// The issue's flood at scale, as a measurement of the process (run with `--ignored`; a few
/// seconds in release, about a minute in a debug build): 120 MB of publications to 2,000
/// channels against a 32 MiB history budget. The resident set grows by the budget plus what
/// the allocator keeps around, not by what was published.
#[tokio::test]
#[ignore = "a measurement: cargo test -p duplex-hub --test budgets -- --ignored --nocapture"]
async fn history_flood_resident_set() {
    const BUDGET: usize = 32 << 20;
    let hub = hub(HubConfig {
        history_bytes: BUDGET,
        ..config()
    })
    .await;
    let mut flooder = Client::connect(hub.local_addr(), "").await;
    let big = json!("x".repeat(60_000));
    // Warm up the connection and allocator before the baseline.
    flooder.publish("warm", big.clone()).await;
    let before = rss_bytes();
    for i in 0..2_000 {
        flooder.publish(&format!("flood-{i}"), big.clone()).await;
    }
    let grown = rss_bytes().saturating_sub(before);
    let held = hub.metrics().history_bytes();
    eprintln!(
        "published 2,000 x 60 KB (120 MB): history holds {held} bytes (budget {BUDGET}), \
         {} channels, the process grew by {} KiB",
        hub.metrics().channels(),
        grown / 1024
    );
    assert!(held <= BUDGET as i64);
    assert!(grown < (BUDGET as u64) * 2, "grew by {grown} bytes");
}

/// This process's resident set (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
