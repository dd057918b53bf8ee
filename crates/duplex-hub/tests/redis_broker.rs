//! RedisBroker against real redis-servers (each test starts its own): offsets and history,
//! one round trip per publish, ordered delivery across nodes, gap fill after a pub/sub loss,
//! epoch reset after Redis lost the stream, presence across nodes and its expiry, sharding,
//! and failing fast while Redis is down.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duplex_hub::{Broker, BrokerError, ClientInfo, HistoryQuery, HubConfig, Metrics, RedisBroker};
use support::recorder::{Event, Recorder};
use support::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(15);

fn config() -> HubConfig {
    HubConfig {
        history_size: 100,
        presence_ttl: Duration::from_millis(1500),
        presence_refresh: Duration::from_millis(300),
        redis_timeout: Duration::from_secs(1),
        ..HubConfig::default()
    }
}

/// A node: a started broker on `servers`, recording what it is told.
struct Node {
    broker: Arc<RedisBroker>,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

async fn node_with(urls: &[String], config: &HubConfig) -> Node {
    let metrics = Arc::new(Metrics::default());
    let broker = Arc::new(RedisBroker::new(urls, config, metrics.clone()).expect("valid URLs"));
    let recorder = Recorder::new();
    broker
        .start(recorder.clone())
        .await
        .expect("redis reachable");
    Node {
        broker,
        recorder,
        metrics,
    }
}

async fn node(server: &RedisServer) -> Node {
    node_with(&[server.url()], &config()).await
}

fn data(i: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{i}}}"))
}

fn since(offset: u64, limit: usize) -> HistoryQuery {
    HistoryQuery {
        since: Some(offset),
        limit,
    }
}

fn newest(limit: usize) -> HistoryQuery {
    HistoryQuery { since: None, limit }
}

#[tokio::test]
async fn offsets_history_and_epochs() {
    let server = RedisServer::start();
    let config = HubConfig {
        history_size: 3,
        ..config()
    };
    let a = node_with(&[server.url()], &config).await;
    let empty = a.broker.history("fresh", newest(10)).await.unwrap();
    assert_eq!((empty.position.offset, empty.earliest), (0, 1));
    assert!(empty.publications.is_empty());
    // The epoch a subscriber is told before the first publication is the one that follows.
    let again = a.broker.history("fresh", newest(10)).await.unwrap();
    assert_eq!(again.position.epoch, empty.position.epoch);
    let first = a.broker.publish("fresh", data(1)).await.unwrap();
    assert_eq!(first.offset, 1);
    assert_eq!(first.epoch, empty.position.epoch);

    for i in 1..=10 {
        let position = a.broker.publish("a", data(i)).await.unwrap();
        assert_eq!(position.offset, i);
    }
    let offsets =
        |h: &duplex_hub::History| h.publications.iter().map(|p| p.offset).collect::<Vec<_>>();
    let all = a.broker.history("a", since(0, usize::MAX)).await.unwrap();
    assert_eq!((all.position.offset, all.earliest), (10, 8));
    assert_eq!(offsets(&all), [8, 9, 10]);
    assert_eq!(all.publications[0].data, data(8));
    assert_eq!(
        offsets(&a.broker.history("a", since(8, 10)).await.unwrap()),
        [9, 10]
    );
    assert_eq!(
        offsets(&a.broker.history("a", since(7, 1)).await.unwrap()),
        [8]
    );
    assert!(
        a.broker
            .history("a", since(10, 10))
            .await
            .unwrap()
            .publications
            .is_empty()
    );
    assert!(
        a.broker
            .history("a", since(99, 10))
            .await
            .unwrap()
            .publications
            .is_empty()
    );
    assert_eq!(
        offsets(&a.broker.history("a", newest(2)).await.unwrap()),
        [9, 10]
    );
    assert_eq!(
        offsets(&a.broker.history("a", newest(0)).await.unwrap()),
        Vec::<u64>::new()
    );
    // A second node sees the same stream.
    let b = node(&server).await;
    let seen = b.broker.history("a", newest(1)).await.unwrap();
    assert_eq!(seen.position, all.position);
}

/// `INFO commandstats` calls of `command` (0 if never called).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.command(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn a_publish_is_one_round_trip_and_scripts_reload_after_a_flush() {
    let server = RedisServer::start();
    let a = node(&server).await;
    server.command(&["CONFIG", "RESETSTAT"]);
    for i in 1..=50 {
        a.broker.publish("rt", data(i)).await.unwrap();
    }
    assert_eq!(calls(&server, "evalsha"), 50, "one EVALSHA per publish");
    assert_eq!(calls(&server, "eval"), 0);
    assert_eq!(calls(&server, "script|load"), 0, "loaded at start");
    // Redis forgot the scripts (as after a restart): NOSCRIPT, SCRIPT LOAD, EVALSHA again.
    server.command(&["SCRIPT", "FLUSH"]);
    let position = a.broker.publish("rt", data(51)).await.unwrap();
    assert_eq!(position.offset, 51);
    assert_eq!(calls(&server, "script|load"), 1);
    a.broker.publish("rt", data(52)).await.unwrap();
    assert_eq!(calls(&server, "script|load"), 1, "loaded once");
    assert!(
        a.metrics
            .render()
            .contains("duplex_hub_broker_round_trip_seconds_count")
    );
}

#[tokio::test]
async fn concurrent_publishers_on_another_node_arrive_in_offset_order() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = Arc::new(node(&server).await);
    a.broker.subscribe("c").await.unwrap();
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    b.broker.publish("c", data(i)).await.unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    a.recorder
        .wait_until("200 publications", WAIT, |e| e.len() >= 200)
        .await;
    assert_eq!(a.recorder.offsets("c"), (1..=200).collect::<Vec<u64>>());
    // The publisher's node is not subscribed: it hears nothing.
    assert!(b.recorder.events().is_empty());
    // After the last local unsubscribe, nothing more arrives.
    a.broker.unsubscribe("c").await.unwrap();
    b.broker.publish("c", data(0)).await.unwrap();
    a.broker.subscribe("d").await.unwrap();
    b.broker.publish("d", data(0)).await.unwrap();
    a.recorder
        .wait_until("the publication on d", WAIT, |e| e.len() > 200)
        .await;
    assert_eq!(
        a.recorder.events()[200],
        Event::Publication("d".into(), 1, "{\"n\":0}".into())
    );
}

#[tokio::test]
async fn subscriptions_are_counted() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    a.broker.subscribe("c").await.unwrap();
    a.broker.subscribe("c").await.unwrap();
    a.broker.unsubscribe("c").await.unwrap();
    b.broker.publish("c", data(1)).await.unwrap();
    a.recorder
        .wait_until("offset 1", WAIT, |e| e.len() == 1)
        .await;
    assert_eq!(
        server.command(&["PUBSUB", "NUMSUB", "duplex:{c}"]),
        "[duplex:{c},1]"
    );
    a.broker.unsubscribe("c").await.unwrap();
    assert_eq!(
        server.command(&["PUBSUB", "NUMSUB", "duplex:{c}"]),
        "[duplex:{c},0]"
    );
}

#[tokio::test]
async fn pubsub_loss_is_filled_from_the_stream_exactly_once() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    a.broker.subscribe("c").await.unwrap();
    for i in 1..=5 {
        b.broker.publish("c", data(i)).await.unwrap();
    }
    a.recorder
        .wait_until("5 publications", WAIT, |e| e.len() == 5)
        .await;
    // Only pub/sub connections: the stream survives, the node missed what follows.
    let killed = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, "1", "one pub/sub connection (node a)");
    for i in 6..=25 {
        b.broker.publish("c", data(i)).await.unwrap();
    }
    a.recorder
        .wait_until("25 publications", WAIT, |e| e.len() >= 25)
        .await;
    // Later ones keep coming live, after the filled ones.
    for i in 26..=30 {
        b.broker.publish("c", data(i)).await.unwrap();
    }
    a.recorder
        .wait_until("30 publications", WAIT, |e| e.len() >= 30)
        .await;
    assert_eq!(a.recorder.offsets("c"), (1..=30).collect::<Vec<u64>>());
    assert_eq!(a.recorder.events().len(), 30, "no reset, no gap");
    assert!(a.metrics.broker_reconnects() >= 1);
    assert_eq!(
        a.metrics.broker_gaps_filled(),
        20,
        "6..=25 came from the stream"
    );
    assert_eq!(a.metrics.broker_gaps_lost(), 0);
    assert!(a.broker.is_available());
}

#[tokio::test]
async fn a_pubsub_loss_beyond_history_is_a_gap() {
    let server = RedisServer::start();
    let config = HubConfig {
        history_size: 5,
        ..config()
    };
    let a = node_with(&[server.url()], &config).await;
    let b = node_with(&[server.url()], &config).await;
    a.broker.subscribe("c").await.unwrap();
    b.broker.publish("c", data(1)).await.unwrap();
    a.recorder
        .wait_until("offset 1", WAIT, |e| e.len() == 1)
        .await;
    server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // MAXLEN ~ keeps more than 5 entries; the history window is exact: 16..=20.
    for i in 2..=20 {
        b.broker.publish("c", data(i)).await.unwrap();
    }
    a.recorder
        .wait_until("offset 20", WAIT, |e| a_has(e, 20))
        .await;
    let events = a.recorder.events();
    assert_eq!(events[1], Event::Gap("c".into(), 2, 15), "{events:?}");
    assert_eq!(a.recorder.offsets("c"), [1, 16, 17, 18, 19, 20]);
    assert_eq!(a.metrics.broker_gaps_lost(), 14);
}

fn a_has(events: &[Event], offset: u64) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Publication(_, o, _) if *o == offset))
}

#[tokio::test]
async fn a_lost_stream_starts_a_new_epoch_and_subscribers_are_reset() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    a.broker.subscribe("c").await.unwrap();
    let old = b.broker.publish("c", data(1)).await.unwrap();
    b.broker.publish("c", data(2)).await.unwrap();
    a.recorder
        .wait_until("2 publications", WAIT, |e| e.len() == 2)
        .await;
    // Redis lost everything (a restart without persistence, as far as keys go).
    server.command(&["FLUSHALL"]);
    let new = b.broker.publish("c", data(3)).await.unwrap();
    assert_eq!(new.offset, 1, "offsets restart");
    assert_ne!(new.epoch, old.epoch, "in a new epoch");
    a.recorder
        .wait_until("the reset", WAIT, |e| e.len() == 4)
        .await;
    let events = a.recorder.events();
    assert_eq!(
        events[2],
        Event::Reset("c".into(), new.epoch.to_string(), 0)
    );
    assert_eq!(
        events[3],
        Event::Publication("c".into(), 1, "{\"n\":3}".into())
    );
    let history = a.broker.history("c", since(0, 10)).await.unwrap();
    assert_eq!(history.position, new);
}

#[tokio::test]
async fn presence_spans_nodes_and_a_dead_nodes_clients_expire() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    b.broker.subscribe("room").await.unwrap();
    let ada = ClientInfo {
        client: "ada-1".into(),
        user: "ada".into(),
    };
    let bob = ClientInfo {
        client: "bob-1".into(),
        user: "bob".into(),
    };
    a.broker.join("room", &ada).await.unwrap();
    b.broker.join("room", &bob).await.unwrap();
    assert_eq!(
        b.broker.presence("room").await.unwrap(),
        [ada.clone(), bob.clone()]
    );
    b.recorder
        .wait_until("both joins", WAIT, |e| e.len() == 2)
        .await;
    assert_eq!(
        b.recorder.events()[0],
        Event::Join("room".into(), "ada-1".into())
    );
    // Refreshed by its node, ada stays past the TTL (1.5 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        b.broker.presence("room").await.unwrap(),
        [ada.clone(), bob.clone()]
    );
    // Node a dies: nothing refreshes ada any more; b's refresh drops her and announces it.
    let died = Instant::now();
    drop(a);
    b.recorder
        .wait_until("ada's leave", WAIT, |e| {
            e.contains(&Event::Leave("room".into(), "ada-1".into()))
        })
        .await;
    let after = died.elapsed();
    assert!(
        after <= Duration::from_millis(1500 + 300 + 1000),
        "left after {after:?}"
    );
    assert_eq!(
        b.broker.presence("room").await.unwrap(),
        std::slice::from_ref(&bob)
    );
    // A leave by the node itself is announced once.
    b.broker.leave("room", &bob).await.unwrap();
    b.broker.leave("room", &bob).await.unwrap();
    b.recorder
        .wait_until("bob's leave", WAIT, |e| {
            e.contains(&Event::Leave("room".into(), "bob-1".into()))
        })
        .await;
    assert!(b.broker.presence("room").await.unwrap().is_empty());
    let leaves = b
        .recorder
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Leave(..)))
        .count();
    assert_eq!(leaves, 2);
}

#[tokio::test]
async fn channels_are_sharded_by_the_pinned_hash_and_nodes_agree() {
    let one = RedisServer::start();
    let two = RedisServer::start();
    let urls = [one.url(), two.url()];
    let a = node_with(&urls, &config()).await;
    let b = node_with(&urls, &config()).await;
    let servers = [&one, &two];
    let mut per_shard = [0; 2];
    for i in 0..40 {
        let channel = format!("ch{i}");
        let shard = a.broker.shard_of(&channel);
        assert_eq!(b.broker.shard_of(&channel), shard, "nodes agree");
        per_shard[shard] += 1;
        a.broker.subscribe(&channel).await.unwrap();
        b.broker.publish(&channel, data(i)).await.unwrap();
        let meta = format!("duplex:{{{channel}}}:m");
        assert_eq!(
            servers[shard].command(&["EXISTS", &meta]),
            "1",
            "{channel} on shard {shard}"
        );
        assert_eq!(
            servers[1 - shard].command(&["EXISTS", &meta]),
            "0",
            "{channel} not on {}",
            1 - shard
        );
    }
    assert!(per_shard.iter().all(|&n| n >= 8), "spread: {per_shard:?}");
    a.recorder
        .wait_until("40 publications", WAIT, |e| e.len() == 40)
        .await;
    for i in 0..40 {
        assert_eq!(a.recorder.offsets(&format!("ch{i}")), [1]);
    }
    // Each shard holds one pub/sub connection per node (a's): 20-odd channels on each.
    for server in servers {
        let channels = server.command(&["PUBSUB", "CHANNELS", "duplex:*"]);
        assert!(channels.len() > 2, "{channels}");
    }
}

#[tokio::test]
async fn start_fails_while_redis_is_unreachable_and_succeeds_later() {
    let port = support::redis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let broker = RedisBroker::new(&[url], &config(), Arc::new(Metrics::default())).unwrap();
    let recorder = Recorder::new();
    let started = Instant::now();
    let err = broker.start(recorder.clone()).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    assert!(!broker.is_available());
    let before = broker.publish("c", data(1)).await.unwrap_err();
    assert!(matches!(before, BrokerError::Unavailable(_)), "{before:?}");
    let _server = RedisServer::start_on(port);
    broker.start(recorder).await.expect("the retry succeeds");
    assert!(broker.is_available());
    assert_eq!(broker.publish("c", data(1)).await.unwrap().offset, 1);
}

#[tokio::test]
async fn while_redis_is_down_commands_fail_fast_and_the_node_comes_back() {
    let mut server = RedisServer::start();
    let a = node(&server).await;
    a.broker.subscribe("c").await.unwrap();
    let before = a.broker.publish("c", data(1)).await.unwrap();
    a.recorder
        .wait_until("offset 1", WAIT, |e| e.len() == 1)
        .await;
    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let err = a.broker.publish("c", data(2)).await.unwrap_err();
        assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(!a.broker.is_available());
    assert!(a.metrics.broker_errors() >= 3);
    // Redis comes back empty (no persistence): the node reconnects on its own.
    server.restart();
    let deadline = Instant::now() + WAIT;
    while !a.broker.is_available() {
        assert!(Instant::now() < deadline, "the node did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = a.broker.publish("c", data(3)).await.unwrap();
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, before.epoch);
    a.recorder
        .wait_until("the reset and offset 1 of the new epoch", WAIT, |e| {
            e.last() == Some(&Event::Publication("c".into(), 1, "{\"n\":3}".into()))
        })
        .await;
    let events = a.recorder.events();
    assert!(
        events.contains(&Event::Reset("c".into(), after.epoch.to_string(), 0)),
        "{events:?}"
    );
    assert!(
        a.metrics.broker_reconnects() >= 2,
        "command and pub/sub connections"
    );
}

#[tokio::test]
async fn a_node_puts_its_clients_back_when_redis_lost_presence() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let ada = ClientInfo {
        client: "ada-1".into(),
        user: "ada".into(),
    };
    a.broker.join("room", &ada).await.unwrap();
    server.command(&["FLUSHALL"]);
    assert!(a.broker.presence("room").await.unwrap().is_empty());
    // The next refresh round (every 300 ms here) restores it.
    let deadline = Instant::now() + WAIT;
    while a.broker.presence("room").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "ada never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.broker.presence("room").await.unwrap(),
        std::slice::from_ref(&ada)
    );
    // A client that left is not brought back by later rounds.
    a.broker.leave("room", &ada).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(a.broker.presence("room").await.unwrap().is_empty());
}

#[tokio::test]
async fn history_expires_by_ttl_on_the_servers_clock() {
    let server = RedisServer::start();
    let config = HubConfig {
        history_ttl: Some(Duration::from_secs(2)),
        ..config()
    };
    let a = node_with(&[server.url()], &config).await;
    a.broker.publish("t", data(1)).await.unwrap();
    a.broker.publish("t", data(2)).await.unwrap();
    // Waiting is the point here: entries older than the TTL leave history.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.broker.publish("t", data(3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let read = a.broker.history("t", since(0, 10)).await.unwrap();
    assert_eq!(read.position.offset, 3, "the offset counter lives on");
    assert_eq!(read.earliest, 3, "1 and 2 are 2.4 s old: expired");
    assert_eq!(read.publications.len(), 1);
    assert_eq!(read.publications[0].offset, 3);
    // The keys themselves expire with the TTL (PEXPIRE at each publish).
    let ttl: i64 = server.command(&["PTTL", "duplex:{t}:s"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 2000, "{ttl}");
}

#[tokio::test]
async fn a_jump_in_offsets_is_filled_from_the_stream_before_what_follows() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    a.broker.subscribe("j").await.unwrap();
    b.broker.publish("j", data(1)).await.unwrap();
    a.recorder
        .wait_until("offset 1", WAIT, |e| e.len() == 1)
        .await;
    // Publications 2 and 3 reach the stream but their pub/sub messages are lost (as a
    // publisher's would be if its PUBLISH never reached this node).
    for offset in ["2", "3"] {
        server.command(&["HINCRBY", "duplex:{j}:m", "o", "1"]);
        let id = format!("{offset}-0");
        let body = format!("{{\"n\":{offset}}}");
        server.command(&[
            "XADD",
            "duplex:{j}:s",
            &id,
            "d",
            &body,
            "t",
            "9999999999999",
        ]);
    }
    b.broker.publish("j", data(4)).await.unwrap();
    a.recorder
        .wait_until("offset 4", WAIT, |e| a_has(e, 4))
        .await;
    let events = a.recorder.events();
    let expected: Vec<Event> = (1..=4)
        .map(|n| Event::Publication("j".into(), n, format!("{{\"n\":{n}}}")))
        .collect();
    assert_eq!(events, expected);
    assert_eq!(a.metrics.broker_gaps_filled(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_publications_flow_hands_on_a_contiguous_sequence() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = Arc::new(node(&server).await);
    let publisher = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 1..=400 {
                b.broker.publish("flow", data(i)).await.unwrap();
            }
        })
    };
    // Subscribe somewhere in the middle of the flow.
    while b
        .broker
        .history("flow", newest(0))
        .await
        .unwrap()
        .position
        .offset
        < 50
    {
        tokio::task::yield_now().await;
    }
    a.broker.subscribe("flow").await.unwrap();
    let baseline = a
        .broker
        .history("flow", newest(0))
        .await
        .unwrap()
        .position
        .offset;
    publisher.await.unwrap();
    a.recorder
        .wait_until("offset 400", WAIT, |e| a_has(e, 400))
        .await;
    let offsets = a.recorder.offsets("flow");
    let first = offsets[0];
    assert!(
        first <= baseline + 1,
        "nothing after the subscriber's history read is missing: {first} vs {baseline}"
    );
    assert_eq!(
        offsets,
        (first..=400).collect::<Vec<u64>>(),
        "contiguous, once each"
    );
    assert_eq!(a.recorder.events().len(), offsets.len(), "no reset, no gap");
}

#[tokio::test]
async fn a_hung_redis_is_noticed_commands_do_not_hang_and_the_node_recovers() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    a.broker.subscribe("h").await.unwrap();
    b.broker.publish("h", data(1)).await.unwrap();
    a.recorder
        .wait_until("offset 1", WAIT, |e| e.len() == 1)
        .await;
    // Frozen: sockets stay open, nothing answers (a partition, a hung host).
    server.pause();
    let started = Instant::now();
    let err = b.broker.publish("h", data(2)).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1800),
        "bounded by the 1 s timeout: {took:?}"
    );
    // a's pub/sub keepalive (every 5 s, 1 s timeout) notices without any command of a's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.broker.is_available() {
        assert!(Instant::now() < deadline, "a never noticed the hung Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.resume();
    for node in [&a, &b] {
        let deadline = Instant::now() + WAIT;
        loop {
            // b's command connection is replaced on its next command (the failed publish
            // marked it down); a's pub/sub reconnects on its own.
            let _ = node.broker.history("h", newest(0)).await;
            if node.broker.is_available() {
                break;
            }
            assert!(Instant::now() < deadline, "a node did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let position = b.broker.publish("h", data(3)).await.unwrap();
    a.recorder
        .wait_until("the publication after the hang", WAIT, |e| {
            a_has(e, position.offset)
        })
        .await;
    let offsets = a.recorder.offsets("h");
    assert_eq!(
        offsets,
        (1..=position.offset).collect::<Vec<u64>>(),
        "nothing lost or doubled"
    );
}

#[tokio::test]
async fn after_a_reset_late_messages_of_the_old_epoch_are_dropped() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    a.broker.subscribe("s").await.unwrap();
    let old = b.broker.publish("s", data(1)).await.unwrap();
    a.recorder
        .wait_until("offset 1", WAIT, |e| e.len() == 1)
        .await;
    // Frames as the publish script writes them: a new epoch, then a straggler of the old one,
    // then the new epoch's next publication.
    for frame in [
        "pfeedfeedfeedfeed:1:{\"n\":10}".to_owned(),
        format!("p{}:2:{{\"n\":2}}", old.epoch),
        "pfeedfeedfeedfeed:2:{\"n\":11}".to_owned(),
    ] {
        assert_eq!(server.command(&["PUBLISH", "duplex:{s}", &frame]), "1");
    }
    a.recorder
        .wait_until("offset 2 of the new epoch", WAIT, |e| e.len() == 4)
        .await;
    assert_eq!(
        a.recorder.events()[1..],
        [
            Event::Reset("s".into(), "feedfeedfeedfeed".into(), 0),
            Event::Publication("s".into(), 1, "{\"n\":10}".into()),
            Event::Publication("s".into(), 2, "{\"n\":11}".into()),
        ]
    );
}

#[tokio::test]
async fn an_abandoned_subscribe_is_undone() {
    let server = RedisServer::start();
    let a = node(&server).await;
    // The caller gives up after the first poll; the subscription completes on its own, then
    // is undone.
    let mut abandoned = a.broker.subscribe("gone");
    let first =
        std::future::poll_fn(|cx| std::task::Poll::Ready(abandoned.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    drop(abandoned);
    let deadline = Instant::now() + WAIT;
    loop {
        let subscribed = server.command(&["PUBSUB", "NUMSUB", "duplex:{gone}"]);
        // Either never subscribed yet or subscribed and undone: wait for a settled 0 after
        // the subscription was made (the baseline read created the meta).
        if subscribed == "[duplex:{gone},0]"
            && server.command(&["EXISTS", "duplex:{gone}:m"]) == "1"
        {
            break;
        }
        assert!(Instant::now() < deadline, "still {subscribed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Counted right: one real subscription, one unsubscribe, and Redis agrees.
    a.broker.subscribe("gone").await.unwrap();
    assert_eq!(
        server.command(&["PUBSUB", "NUMSUB", "duplex:{gone}"]),
        "[duplex:{gone},1]"
    );
    a.broker.unsubscribe("gone").await.unwrap();
    assert_eq!(
        server.command(&["PUBSUB", "NUMSUB", "duplex:{gone}"]),
        "[duplex:{gone},0]"
    );
}
