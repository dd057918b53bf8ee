//! Hubs with `broker = redis://...` (BrokerConfig::Redis through `Hub::bind`): two nodes on
//! one Redis share channels; `/healthz` and publishes say 503 while Redis cannot be reached,
//! and the node comes back by itself.

mod common;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Client, http, publish_http, within};
use duplex_hub::{BrokerConfig, HubConfig, HubHandle};
use serde_json::json;
use support::redis::{RedisServer, free_port};

fn redis_config(url: String) -> HubConfig {
    HubConfig {
        broker: BrokerConfig::Redis { shards: vec![url] },
        redis_timeout: Duration::from_secs(1),
        ..common::config()
    }
}

async fn healthz(addr: SocketAddr) -> u16 {
    http(addr, "GET", "/healthz", &[], None).await.status
}

/// Waits (at most 20 s) until `/healthz` answers `status`.
async fn wait_health(addr: SocketAddr, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(addr).await != status {
        assert!(
            Instant::now() < deadline,
            "/healthz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node(url: String) -> HubHandle {
    let hub = common::hub(redis_config(url)).await;
    wait_health(hub.local_addr(), 200).await;
    hub
}

#[tokio::test]
async fn two_nodes_share_channels_through_redis() {
    let server = RedisServer::start();
    let (a, b) = (node(server.url()).await, node(server.url()).await);
    within(async {
        let mut subscriber = Client::connect(a.local_addr(), "?user=sub").await;
        let reply = subscriber.subscribe("chat").await;
        assert_eq!(reply["offset"], 0);
        let mut publisher = Client::connect(b.local_addr(), "?user=pub").await;
        let first = publisher.publish("chat", json!({"n": 1})).await;
        assert_eq!(first["offset"], 1);
        assert_eq!(first["epoch"], reply["epoch"], "one epoch on both nodes");
        let second = publish_http(b.local_addr(), "chat", json!({"n": 2})).await;
        assert_eq!(second["offset"], 2);
        for n in 1..=2 {
            let push = subscriber.publication().await;
            assert_eq!(push["offset"], n, "{push}");
            assert_eq!(push["data"], json!({ "n": n }));
        }
        // Recovery on the other node: what A's subscriber saw, B's history has.
        let mut hopper = Client::connect(b.local_addr(), "?user=hop").await;
        let recovered = hopper
            .call(json!({"op": "subscribe", "channel": "chat",
                "since": {"epoch": reply["epoch"], "offset": 1}}))
            .await;
        assert_eq!(recovered["recovered"], true, "{recovered}");
        assert_eq!(recovered["publications"][0]["offset"], 2, "{recovered}");
        let metrics = http(b.local_addr(), "GET", "/metrics", &[], None).await;
        let text = String::from_utf8(metrics.body).unwrap();
        assert!(
            !text.contains("duplex_hub_broker_round_trip_seconds_count 0\n"),
            "the node's broker round trips are on its /metrics"
        );
    })
    .await;
}

#[tokio::test]
async fn a_node_waits_for_redis_and_fails_fast_while_it_is_gone() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let hub = common::hub(redis_config(url)).await;
    let addr = hub.local_addr();
    assert_eq!(healthz(addr).await, 503, "no Redis yet");
    let body = json!({"channel": "c", "data": 1}).to_string();
    let refused = http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    let mut server = RedisServer::start_on(port);
    wait_health(addr, 200).await;
    assert_eq!(publish_http(addr, "c", json!(1)).await["offset"], 1);
    // Redis goes away during the run: publishes fail at once, /healthz says so.
    server.stop();
    let started = Instant::now();
    let refused = http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    wait_health(addr, 503).await;
    // Back (empty): the node reconnects by itself, and the channel starts a new epoch.
    server.restart();
    wait_health(addr, 200).await;
    assert_eq!(publish_http(addr, "c", json!(2)).await["offset"], 1);
}
