//! Many `duplex hub` processes behind Redis (issue 10): real processes (this build's `duplex`
//! binary), real `redis-server`s on free ports of 127.0.0.1, real failures (`kill -9` of a
//! node, of Redis, `CLIENT KILL TYPE pubsub`). Every process is stopped by its PID when its
//! guard drops (harness.rs). redis-server must be installed (scripts/install-redis.sh, which
//! scripts/test runs).
//!
//! Why here and not in crates/duplex-hub/tests: the tests run the `duplex` binary, and cargo
//! builds a package's binaries for its own integration tests and tells them where
//! (`CARGO_BIN_EXE_duplex`), so the binary under test is always this build's, with no separate
//! build step and no guessing at target directories.
//!
//! What every test checks in the end is exact delivery: each client holds, per channel and
//! epoch, exactly the publications the hub confirmed to their publishers (by offset and data),
//! each once, in order, from where it subscribed (or was told the stream was reset) to the
//! last one published.

mod client;
mod harness;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use client::{Client, Follower, Ledger, http, publish_http};
use harness::{Node, Redis};

/// Shared between publisher tasks and the checks at the end.
type SharedLedger = Arc<Mutex<Ledger>>;

fn channels(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Runs a blocking process operation (start, kill, restart) without stalling the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Redis shards and two nodes on them.
fn cluster(shards: usize, extra: &[&str]) -> (Vec<Redis>, Node, Node) {
    let redis: Vec<Redis> = (0..shards).map(|_| Redis::start()).collect();
    let refs: Vec<&Redis> = redis.iter().collect();
    let a = Node::start(&refs, extra);
    let b = Node::start(&refs, extra);
    (redis, a, b)
}

/// Publishes over HTTP and records the confirmation; panics on anything but 200.
async fn publish_ok(ledger: &SharedLedger, addr: SocketAddr, channel: &str, data: Value) {
    let (status, reply) = publish_http(addr, channel, &data)
        .await
        .unwrap_or_else(|e| panic!("publish to {channel} on {addr}: {e}"));
    assert_eq!(status, 200, "publish to {channel} on {addr}: {reply}");
    ledger.lock().unwrap().confirm(channel, &reply, data);
}

/// Pumps until the follower holds everything the ledger has (bounded), then verifies it.
async fn finish(follower: &mut Follower, ledger: &SharedLedger, within: Duration) {
    let deadline = Instant::now() + within;
    while !follower.caught_up(&ledger.lock().unwrap()) && Instant::now() < deadline {
        let ledger = ledger.clone();
        let result = follower
            .pump(deadline, move |f| f.caught_up(&ledger.lock().unwrap()))
            .await;
        if let Err(e) = result {
            panic!("{}: connection lost while catching up: {e}", follower.user);
        }
    }
    let ledger = ledger.lock().unwrap();
    let behind: Vec<String> = follower
        .streams
        .iter()
        .map(|(c, s)| {
            format!(
                "{c} at {}/{} (ledger {:?})",
                s.epoch,
                s.offset,
                ledger.last(c)
            )
        })
        .collect();
    assert!(
        follower.caught_up(&ledger),
        "{} did not catch up within {within:?}: {behind:?}",
        follower.user
    );
    if let Err(e) = follower.verify(&ledger) {
        panic!("{e}");
    }
}

/// The offsets a follower got for `channel`, in order.
fn offsets(follower: &Follower, channel: &str) -> Vec<u64> {
    follower.streams[channel]
        .got
        .iter()
        .map(|(_, o, _)| *o)
        .collect()
}

// ---- two nodes, one Redis (or two shards): order and exact offsets -------------------------

async fn order_and_offsets(shards: usize) {
    let (redis, a, b) = cluster(shards, &[]);
    let ledger = SharedLedger::default();
    let rooms = channels("room", 4);
    let mut sub = Follower::new("sub", &rooms);
    sub.attach(a.addr).await.expect("subscriber on A");
    for room in &rooms {
        assert_eq!(sub.streams[room].offset, 0, "a fresh channel starts at 0");
    }

    // Alternating WebSocket and HTTP publishes on B: each gets the next offset.
    let mut ws = Client::connect(b.addr, "pub")
        .await
        .expect("publisher on B");
    for i in 0..40u64 {
        let room = &rooms[0];
        let data = json!({"seq": i});
        let reply = if i % 2 == 0 {
            let reply = ws.publish(room, data.clone()).await.expect("ws publish");
            assert_eq!(reply["ok"], true, "{reply}");
            reply
        } else {
            let (status, reply) = publish_http(b.addr, room, &data).await.expect("http");
            assert_eq!(status, 200, "{reply}");
            reply
        };
        assert_eq!(
            reply["offset"],
            i + 1,
            "offsets from 1 without gaps: {reply}"
        );
        ledger.lock().unwrap().confirm(room, &reply, data);
    }

    // Concurrent publishers over both kinds on both channels: every offset once.
    let mut tasks = Vec::new();
    for (t, room) in rooms.iter().enumerate() {
        let (ledger, room) = (ledger.clone(), room.clone());
        let addr = if t % 2 == 0 { b.addr } else { a.addr };
        tasks.push(tokio::spawn(async move {
            let mut ws = Client::connect(addr, "pub").await.expect("publisher");
            for i in 0..60 {
                let data = json!({"t": t, "i": i});
                if i % 3 == 0 {
                    let reply = ws.publish(&room, data.clone()).await.expect("ws publish");
                    assert_eq!(reply["ok"], true, "{reply}");
                    ledger.lock().unwrap().confirm(&room, &reply, data);
                } else {
                    publish_ok(&ledger, addr, &room, data).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }
    finish(&mut sub, &ledger, Duration::from_secs(20)).await;
    assert_eq!(offsets(&sub, &rooms[0]), (1..=100).collect::<Vec<_>>());
    for room in &rooms[1..] {
        assert_eq!(offsets(&sub, room), (1..=60).collect::<Vec<_>>());
    }

    // Both nodes tell the same history, epoch and top.
    for node in [&a, &b] {
        let (status, history) = http(node.addr, "GET", "/api/history?channel=room0", None)
            .await
            .expect("history");
        assert_eq!(status, 200, "{history}");
        assert_eq!(history["offset"], 100);
        assert_eq!(history["epoch"], sub.streams["room0"].epoch.as_str());
        let data: Vec<&Value> = history["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| &p["data"])
            .collect();
        let ledger = ledger.lock().unwrap();
        let expected: Vec<&Value> = ledger.channels["room0"].values().collect();
        assert_eq!(data, expected, "history on {}", node.addr);
    }
    if shards > 1 {
        for r in &redis {
            assert!(r.dbsize() > 0, "channels spread over every shard");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_redis_keep_order_and_offsets() {
    order_and_offsets(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_keep_order_and_offsets() {
    order_and_offsets(2).await;
}

// ---- clients hopping between nodes with `since` --------------------------------------------

async fn hopping_clients(shards: usize) {
    const CHANNELS: usize = 10;
    const PER_CHANNEL: usize = 200;
    const CLIENTS: usize = 50;
    let (redis, a, b) = cluster(shards, &[]);
    let nodes = [a.addr, b.addr];
    let names = channels("hop", CHANNELS);
    let ledger = SharedLedger::default();
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));

    // Every follower subscribes before anything is published, then hops every 40..140 ms.
    let mut followers = Vec::new();
    for i in 0..CLIENTS {
        let follows: Vec<String> = [i, i + 3, i + 7]
            .iter()
            .map(|k| names[k % CHANNELS].clone())
            .collect();
        let mut follower = Follower::new(&format!("f{i}"), &follows);
        follower.attach(nodes[i % 2]).await.expect("first attach");
        followers.push(follower);
    }
    let mut tasks = Vec::new();
    for (i, mut follower) in followers.into_iter().enumerate() {
        let (ledger, publishing) = (ledger.clone(), publishing.clone());
        tasks.push(tokio::spawn(async move {
            let dwell = Duration::from_millis(40 + (i as u64 * 37) % 100);
            let mut hop = i;
            while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = follower.pump(Instant::now() + dwell, |_| false).await {
                    panic!("{}: connection lost: {e}", follower.user);
                }
                follower.drop_connection();
                hop += 1;
                let node = nodes[hop % 2];
                if let Err(e) = follower.attach(node).await {
                    panic!("{}: attach to {node}: {e}", follower.user);
                }
            }
            finish(&mut follower, &ledger, Duration::from_secs(30)).await;
            follower
        }));
    }

    // 2,000 publications: four publishers (two over HTTP, two over WebSocket), each on both
    // nodes in turn, over every channel.
    let started = Instant::now();
    let mut publishers = Vec::new();
    for t in 0..4usize {
        let (ledger, names) = (ledger.clone(), names.clone());
        publishers.push(tokio::spawn(async move {
            let mut ws = [
                Client::connect(nodes[0], "pub")
                    .await
                    .expect("ws publisher"),
                Client::connect(nodes[1], "pub")
                    .await
                    .expect("ws publisher"),
            ];
            for k in 0..CHANNELS * PER_CHANNEL / 4 {
                let channel = &names[(k * 4 + t) % CHANNELS];
                let data = json!({"t": t, "k": k});
                let node = (k + t) % 2;
                if t < 2 {
                    publish_ok(&ledger, nodes[node], channel, data).await;
                } else {
                    let reply = ws[node]
                        .publish(channel, data.clone())
                        .await
                        .expect("publish");
                    assert_eq!(reply["ok"], true, "{reply}");
                    ledger.lock().unwrap().confirm(channel, &reply, data);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let publish_secs = started.elapsed().as_secs_f64();
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);

    let mut connects = 0;
    for task in tasks {
        let follower = task.await.expect("follower");
        connects += follower.connects;
        for (channel, stream) in &follower.streams {
            assert_eq!(
                offsets(&follower, channel),
                (1..=PER_CHANNEL as u64).collect::<Vec<_>>(),
                "{}: {channel}",
                follower.user
            );
            assert!(
                stream.resets.is_empty(),
                "{}: no reset: {:?}",
                follower.user,
                stream.resets
            );
        }
        assert!(follower.connects >= 3, "{} hopped", follower.user);
    }
    println!(
        "{} publications in {publish_secs:.1} s; {CLIENTS} clients made {connects} connections",
        CHANNELS * PER_CHANNEL
    );
    if shards > 1 {
        for r in &redis {
            assert!(r.dbsize() > 0, "channels spread over every shard");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hopping_between_nodes_get_every_publication_once() {
    hopping_clients(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_clients_hopping_between_nodes_get_every_publication_once() {
    hopping_clients(2).await;
}

// ---- kill -9 of a node under load ------------------------------------------------------------

/// Presence entries of a node that died expire after this (the nodes refresh their clients'
/// entries well within it): short, so the test can wait for it.
const PRESENCE_TTL: Duration = Duration::from_secs(3);
const PRESENCE_FLAGS: &[&str] = &["--presence-ttl", "3", "--presence-refresh", "1"];

/// The clients of `channel` that the node at `addr` reports: (client id, user).
async fn presence(addr: SocketAddr, channel: &str) -> Vec<(String, String)> {
    let (status, body) = http(
        addr,
        "GET",
        &format!("/api/presence?channel={channel}"),
        None,
    )
    .await
    .expect("presence");
    assert_eq!(status, 200, "presence on {addr}: {body}");
    body["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| {
            (
                c["client"].as_str().unwrap_or_default().to_owned(),
                c["user"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A follower that, like duplex.js with a list of URLs, moves to the next node whenever its
/// connection is lost or cannot be made, until it holds everything published.
async fn follow_with_failover(
    mut follower: Follower,
    nodes: [SocketAddr; 2],
    mut at: usize,
    ledger: SharedLedger,
    publishing: Arc<std::sync::atomic::AtomicBool>,
) -> Follower {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = !publishing.load(std::sync::atomic::Ordering::Relaxed)
            && follower.caught_up(&ledger.lock().unwrap());
        if done {
            break;
        }
        if Instant::now() >= deadline {
            let ledger = ledger.lock().unwrap();
            let streams: Vec<String> = follower
                .streams
                .iter()
                .map(|(c, s)| {
                    format!(
                        "{c}: at {}/{} (ledger {:?}), resets {:?}, gaps {:?}, got {}",
                        s.epoch,
                        s.offset,
                        ledger.last(c),
                        s.resets,
                        s.gaps,
                        s.got.len()
                    )
                })
                .collect();
            panic!(
                "{} never caught up: {streams:?}; problems {:?}",
                follower.user,
                &follower.problems[..follower.problems.len().min(5)]
            );
        }
        if follower.client.is_none() {
            if follower.attach(nodes[at]).await.is_err() {
                at = (at + 1) % 2;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        let step = Instant::now() + Duration::from_millis(100);
        if follower.pump(step, |_| false).await.is_err() {
            at = (at + 1) % 2; // the node is gone: the next one
        }
    }
    if let Err(e) = follower.verify(&ledger.lock().unwrap()) {
        panic!("{e}");
    }
    follower
}

async fn node_killed(shards: usize) {
    const CLIENTS: usize = 20;
    const ON_A: usize = 12;
    const PUBLICATIONS: u64 = 1500;
    let (_redis, mut a, mut b) = cluster(shards, PRESENCE_FLAGS);
    let nodes = [a.addr, b.addr];
    let channel = "k".to_owned();
    let ledger = SharedLedger::default();
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut follower = Follower::new(&format!("u{i}"), std::slice::from_ref(&channel));
        let at = usize::from(i >= ON_A);
        follower.attach(nodes[at]).await.expect("first attach");
        tasks.push(tokio::spawn(follow_with_failover(
            follower,
            nodes,
            at,
            ledger.clone(),
            publishing.clone(),
        )));
    }
    // A subscriber on B that must not notice anything: it measures the longest silence.
    let mut watcher = Follower::new("watcher", std::slice::from_ref(&channel));
    watcher.attach(b.addr).await.expect("watcher on B");
    let watch = tokio::spawn(follow_with_failover(
        watcher,
        [b.addr, b.addr],
        0,
        ledger.clone(),
        publishing.clone(),
    ));

    // Everyone is in presence, as seen from B, A's clients included.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let clients = presence(b.addr, &channel).await;
        if clients.len() == CLIENTS + 1 || Instant::now() > deadline {
            break clients;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(before.len(), CLIENTS + 1, "B sees every client: {before:?}");
    let on_a: Vec<String> = before
        .iter()
        .filter(|(_, user)| {
            user.strip_prefix('u')
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < ON_A)
        })
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(on_a.len(), ON_A);

    // Publish to B every 2 ms; kill A a third of the way through.
    let mut slowest = Duration::ZERO;
    let mut killed_at = None;
    let mut expiry = None;
    for k in 0..PUBLICATIONS {
        if k == PUBLICATIONS / 3 {
            blocking(|| a.kill9());
            let now = Instant::now();
            killed_at = Some(now);
            // Watch B's presence from now on: when do A's clients leave it?
            let (addr, channel, on_a) = (b.addr, channel.clone(), on_a.clone());
            expiry = Some(tokio::spawn(async move {
                loop {
                    let clients = presence(addr, &channel).await;
                    if !clients.iter().any(|(id, _)| on_a.contains(id)) {
                        return Some(now.elapsed());
                    }
                    if now.elapsed() > PRESENCE_TTL + Duration::from_secs(10) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        let started = Instant::now();
        publish_ok(&ledger, b.addr, &channel, json!({"k": k})).await;
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let killed_at = killed_at.expect("A was killed");
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);

    // Kept (connected) until the presence checks below.
    let mut followers = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let follower = task.await.expect("follower");
        assert_eq!(
            offsets(&follower, &channel),
            (1..=PUBLICATIONS).collect::<Vec<_>>(),
            "{}",
            follower.user
        );
        let stream = &follower.streams[&channel];
        assert!(
            stream.resets.is_empty() && stream.gaps.is_empty(),
            "{}: recovered exactly",
            follower.user
        );
        if i < ON_A {
            assert!(follower.connects >= 2, "{} moved to B", follower.user);
        } else {
            assert_eq!(follower.connects, 1, "{} stayed on B", follower.user);
        }
        followers.push(follower);
    }
    let watcher = watch.await.expect("watcher");
    assert_eq!(watcher.connects, 1);
    assert!(
        watcher.longest_silence < Duration::from_secs(2) && slowest < Duration::from_secs(2),
        "B stalled: longest silence {:?}, slowest publish {slowest:?}",
        watcher.longest_silence
    );

    // A's old entries left presence by themselves within the TTL: A refreshed them last at
    // most a refresh period before the kill, and B reads presence without them once expired.
    let expired_after = expiry
        .expect("watching presence")
        .await
        .expect("presence watcher")
        .unwrap_or_else(|| {
            panic!(
                "A's clients still in presence {:?} after the kill",
                killed_at.elapsed()
            )
        });
    assert!(
        expired_after <= PRESENCE_TTL + Duration::from_secs(1),
        "A's clients left presence {expired_after:?} after the kill (TTL {PRESENCE_TTL:?})"
    );
    let after = presence(b.addr, &channel).await;
    // Every client that is connected now, is present, once (the moved ones with new ids).
    let mut users: Vec<&str> = after.iter().map(|(_, u)| u.as_str()).collect();
    users.sort_unstable();
    let mut expected: Vec<String> = (0..CLIENTS).map(|i| format!("u{i}")).collect();
    expected.push("watcher".into());
    expected.sort_unstable();
    assert_eq!(users, expected, "presence after the kill");
    assert!(b.alive() && b.healthz() == Some(200), "B is healthy");
    println!("A's presence entries gone {expired_after:?} after kill -9 (TTL {PRESENCE_TTL:?})");
    drop((followers, watcher));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_moves_its_clients_to_the_other_exactly() {
    node_killed(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_kill_9_of_a_node_moves_its_clients_to_the_other_exactly() {
    node_killed(2).await;
}

// ---- Redis restarts (no persistence) under load ----------------------------------------------

/// Every shard is killed and restarted empty (with two shards, the channel lives on one; the
/// nodes lose both connections all the same).
async fn redis_restart(shards: usize) {
    const CLIENTS: usize = 10;
    const BEFORE: u64 = 300;
    const AFTER: u64 = 300;
    let (mut redis, a, b) = cluster(shards, &[]);
    let nodes = [a.addr, b.addr];
    let channel = "r".to_owned();
    let ledger = SharedLedger::default();
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut follower = Follower::new(&format!("r{i}"), std::slice::from_ref(&channel));
        follower.attach(nodes[i % 2]).await.expect("attach");
        tasks.push(tokio::spawn(follow_with_failover(
            follower,
            nodes,
            i % 2,
            ledger.clone(),
            publishing.clone(),
        )));
    }
    let mut ws = Client::connect(b.addr, "pub")
        .await
        .expect("ws publisher on B");

    // One publisher, one request at a time: nothing is in flight when Redis dies, so every
    // publication is either confirmed or refused.
    for k in 0..BEFORE {
        publish_ok(&ledger, nodes[(k % 2) as usize], &channel, json!({"k": k})).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (old_epoch, old_top) = ledger.lock().unwrap().last(&channel).expect("published");
    assert_eq!(old_top, BEFORE);
    blocking(|| redis.iter_mut().for_each(Redis::kill));

    // While Redis is down: publishes fail fast and say why; the nodes answer.
    for attempt in 0..5 {
        let started = Instant::now();
        let (status, body) = publish_http(a.addr, &channel, &json!({"down": attempt}))
            .await
            .expect("A answers while Redis is down");
        assert_eq!(status, 503, "HTTP publish while Redis is down: {body}");
        let reply = ws
            .publish(&channel, json!({"down": attempt}))
            .await
            .expect("B answers while Redis is down");
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "broker_unavailable", "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "publishes fail fast: {:?}",
            started.elapsed()
        );
    }
    for node in [&a, &b] {
        assert_eq!(node.healthz(), Some(503), "/healthz while Redis is down");
    }

    // Redis is back, empty: publishes succeed again on each node once it reconnected (each
    // on its own backoff: until then 503), in a new epoch, from offset 1.
    blocking(|| redis.iter_mut().for_each(Redis::restart));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    let mut back = Vec::new();
    for node in nodes {
        let reply = loop {
            let data = json!({"k": format!("first after restart on {node}")});
            let (status, reply) = publish_http(node, &channel, &data)
                .await
                .expect("the node answers");
            if status == 200 {
                ledger.lock().unwrap().confirm(&channel, &reply, data);
                break reply;
            }
            assert_eq!(
                status, 503,
                "only broker_unavailable while reconnecting: {reply}"
            );
            refused += 1;
            assert!(
                Instant::now() < deadline,
                "{node}: no successful publish 30 s after Redis restarted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        back.push(reply);
    }
    let first = &back[0];
    assert_eq!(back[1]["offset"], 2, "{back:?}");
    assert_eq!(back[1]["epoch"], first["epoch"], "{back:?}");
    assert_ne!(
        first["epoch"],
        old_epoch.as_str(),
        "a new epoch after Redis lost the stream"
    );
    assert_eq!(
        first["offset"], 1,
        "offsets start again from 1 in the new epoch"
    );
    for k in 0..AFTER {
        publish_ok(
            &ledger,
            nodes[(k % 2) as usize],
            &channel,
            json!({"k": BEFORE + k}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    let new_epoch = first["epoch"].as_str().expect("epoch").to_owned();

    for task in tasks {
        let follower = task.await.expect("follower");
        let stream = &follower.streams[&channel];
        assert_eq!(
            follower.connects, 1,
            "{}: connections stay up",
            follower.user
        );
        let old: Vec<u64> = stream
            .got
            .iter()
            .filter(|(e, _, _)| *e == old_epoch)
            .map(|(_, o, _)| *o)
            .collect();
        assert_eq!(
            old,
            (1..=old_top).collect::<Vec<_>>(),
            "{}: everything before",
            follower.user
        );
        assert!(
            stream.resets.iter().any(|(e, _)| *e == new_epoch),
            "{}: told of the new epoch (reset push or recovered: false): {:?}",
            follower.user,
            stream.resets
        );
        let new: Vec<u64> = stream
            .got
            .iter()
            .filter(|(e, _, _)| *e == new_epoch)
            .map(|(_, o, _)| *o)
            .collect();
        assert_eq!(
            new.last(),
            Some(&(AFTER + 2)),
            "{}: goes on receiving",
            follower.user
        );
    }
    assert!(
        a.healthz() == Some(200) && b.healthz() == Some(200),
        "healthy again"
    );
    println!(
        "{refused} publishes refused with 503 after Redis came back, before the nodes reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_fails_publishes_clearly_then_resets_to_a_new_epoch() {
    redis_restart(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_restarted_fail_publishes_clearly_then_reset_to_a_new_epoch() {
    redis_restart(2).await;
}

// ---- pub/sub connections lost while the streams survive ---------------------------------------

async fn pubsub_loss(shards: usize) {
    const CLIENTS: usize = 10;
    const PER_PUBLISHER: u64 = 500;
    let (redis, a, b) = cluster(shards, &[]);
    let nodes = [a.addr, b.addr];
    let names = channels("ps", 6);
    let ledger = SharedLedger::default();
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut follower = Follower::new(&format!("p{i}"), &names);
        follower.attach(nodes[i % 2]).await.expect("attach");
        tasks.push(tokio::spawn(follow_with_failover(
            follower,
            nodes,
            i % 2,
            ledger.clone(),
            publishing.clone(),
        )));
    }
    let mut publishers = Vec::new();
    for (t, addr) in nodes.into_iter().enumerate() {
        let (ledger, names) = (ledger.clone(), names.clone());
        publishers.push(tokio::spawn(async move {
            for k in 0..PER_PUBLISHER {
                let channel = &names[(k as usize + t) % names.len()];
                publish_ok(&ledger, addr, channel, json!({"t": t, "k": k})).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // Cut every node's pub/sub connections, four times, while publications flow.
    let mut killed = 0u64;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for r in &redis {
            let reply = blocking(|| r.command(&["CLIENT", "KILL", "TYPE", "pubsub"]));
            killed += reply
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(killed >= 4, "pub/sub connections were cut ({killed})");
    for task in tasks {
        let follower = task.await.expect("follower");
        assert_eq!(
            follower.connects, 1,
            "{}: connections stay up",
            follower.user
        );
        for (channel, stream) in &follower.streams {
            assert!(
                stream.resets.is_empty() && stream.gaps.is_empty(),
                "{}: {channel}: the stream covered everything: resets {:?}, gaps {:?}",
                follower.user,
                stream.resets,
                stream.gaps
            );
            let top = ledger.lock().unwrap().last(channel).expect("published").1;
            assert_eq!(offsets(&follower, channel), (1..=top).collect::<Vec<_>>());
        }
    }
    if shards > 1 {
        for r in &redis {
            assert!(r.dbsize() > 0, "channels spread over every shard");
        }
    }
    println!("{killed} pub/sub connections killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_loss_is_filled_from_the_stream_exactly_once() {
    pubsub_loss(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_pubsub_loss_is_filled_from_the_stream_exactly_once() {
    pubsub_loss(2).await;
}
