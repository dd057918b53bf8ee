//! The fan-out queues' bound (`fanout_queue_bytes`, issue 12): with the fan-out threads held
//! still (`HubHandle::hold_fanout`), publications wait in their queues; once those hold the
//! bound, a publish is refused (`overloaded` over WebSocket, 503 with `Retry-After: 1` over
//! HTTP), counted, and not stored; presence pushes are dropped and counted. Once the threads
//! run again the queues drain and every publisher is served again, the stream without holes.
//! Everything on loopback, every wait bounded.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::{Client, config, http, hub, within};
use duplex_hub::{HubConfig, HubHandle};
use serde_json::{Value, json};

/// Small enough that a handful of publications fill it.
const BOUND: usize = 4096;

/// Two fan-out threads (the bound applies to queues; a hub with none fans out inline) and a
/// bound of [`BOUND`] bytes; messages up to 1 KiB (the bound must hold two of the largest).
fn bounded() -> HubConfig {
    HubConfig {
        fanout_threads: 2,
        fanout_queue_bytes: BOUND,
        max_message_size: 1024,
        ..config()
    }
}

/// A publication's data: a JSON string of about 500 bytes, numbered.
fn data(n: u64) -> Value {
    json!(format!("{n:04}{}", "x".repeat(496)))
}

/// Waits (bounded) until the fan-out queues are empty again.
async fn drained(hub: &HubHandle) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = hub.metrics();
        if metrics.fanout_queued() == 0 && metrics.fanout_queued_bytes() == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the fan-out queues did not drain within 10 s: {} jobs, {} bytes",
            metrics.fanout_queued(),
            metrics.fanout_queued_bytes()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes numbered publications to `channel` from `publisher` until the hub refuses one;
/// returns how many it accepted (their offsets `after + 1..=after + n`) and the refusal.
/// Checks the queues never hold more than the bound meanwhile.
async fn fill(hub: &HubHandle, publisher: &mut Client, channel: &str, after: u64) -> (u64, Value) {
    for n in 1..=100 {
        let reply = publisher
            .call(json!({"op": "publish", "channel": channel, "data": data(n)}))
            .await;
        if reply["ok"] == false {
            return (n - 1, reply);
        }
        assert_eq!(reply["offset"], after + n, "{reply}");
        let queued = hub.metrics().fanout_queued_bytes();
        assert!(
            queued > 0 && queued as usize <= BOUND,
            "publication {n} admitted: {queued} bytes queued, bound {BOUND}"
        );
    }
    panic!("100 publications of 500 bytes queued under a bound of {BOUND} bytes");
}

/// Reads `subscriber`'s pushes until the publication of `channel` at `offset`, skipping
/// presence pushes; returns the offsets of the publications of `channel` read.
async fn publications_until(subscriber: &mut Client, channel: &str, offset: u64) -> Vec<u64> {
    let mut offsets = Vec::new();
    loop {
        let push = subscriber.publication().await;
        if push["channel"] != channel {
            continue;
        }
        let got = push["offset"].as_u64().expect("an offset");
        offsets.push(got);
        if got >= offset {
            return offsets;
        }
    }
}

#[tokio::test]
async fn a_publish_past_the_bound_is_refused_not_stored_and_served_again_once_drained() {
    within(async {
        let hub = hub(bounded()).await;
        let addr = hub.local_addr();
        let mut subscriber = Client::connect(addr, "").await;
        subscriber.subscribe("busy").await;
        let mut other = Client::connect(addr, "").await;
        other.subscribe("calm").await;
        let mut publisher = Client::connect(addr, "").await;

        let hold = hub.hold_fanout().expect("the hub's fan-out");
        let (accepted, refusal) = fill(&hub, &mut publisher, "busy", 0).await;
        assert!(accepted >= 2, "{accepted} accepted under {BOUND} bytes");
        assert_eq!(refusal["error"]["code"], "overloaded", "{refusal}");
        let message = refusal["error"]["message"].as_str().unwrap();
        assert!(message.contains("fanout_queue_bytes"), "{message}");
        assert_eq!(hub.metrics().refusals("fanout_queue"), Some(1));

        // The same over HTTP, whatever the channel: the node's fan-out is behind.
        for channel in ["busy", "calm"] {
            let body = json!({"channel": channel, "data": data(0)}).to_string();
            let response = http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await;
            assert_eq!(
                response.status,
                503,
                "{channel}: {:?}, queued {} bytes",
                String::from_utf8_lossy(&response.body),
                hub.metrics().fanout_queued_bytes()
            );
            assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
            let error = response.json()["error"].as_str().unwrap().to_owned();
            assert!(error.contains("overloaded"), "{error}");
        }
        // And another connection's publish over WebSocket; the connections stay open.
        let reply = other
            .call(json!({"op": "publish", "channel": "calm", "data": data(0)}))
            .await;
        assert_eq!(reply["error"]["code"], "overloaded", "{reply}");
        assert_eq!(hub.metrics().refusals("fanout_queue"), Some(4));
        assert_eq!(hub.metrics().publishes(), accepted, "refused: not counted");

        drop(hold);
        // Every accepted publication reaches the subscriber, in order, and nothing else of
        // the channel: the refused ones were never stored.
        let offsets = publications_until(&mut subscriber, "busy", accepted).await;
        assert_eq!(offsets, (1..=accepted).collect::<Vec<_>>());
        drained(&hub).await;

        // Served again: the other client on its channel, the publisher on the same one,
        // whose next publication takes the next offset (no hole where the refusals were).
        let reply = other.publish("calm", json!(2)).await;
        assert_eq!(reply["offset"], 1, "{reply}");
        assert_eq!(other.publication().await["data"], 2);
        let reply = publisher.publish("busy", data(accepted + 1)).await;
        assert_eq!(reply["offset"], accepted + 1, "{reply}");
        let push = subscriber.publication().await;
        assert_eq!(
            (push["offset"].as_u64(), &push["data"]),
            (Some(accepted + 1), &data(accepted + 1))
        );
        let body = json!({"channel": "busy", "data": 3}).to_string();
        let response = http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.json()["offset"], accepted + 2);
        // History holds exactly the accepted publications.
        let history = http(addr, "GET", "/api/history?channel=busy", &[], None).await;
        assert_eq!(history.status, 200, "{history:?}");
        let history = history.json();
        let offsets: Vec<u64> = history["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("publications: {history}"))
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, (1..=accepted + 2).collect::<Vec<_>>());
        assert_eq!(hub.metrics().refusals("fanout_queue"), Some(4), "no more");
        // /metrics shows the refusals and the gauge.
        let text = String::from_utf8(http(addr, "GET", "/metrics", &[], None).await.body).unwrap();
        assert!(
            text.contains("duplex_hub_refusals_total{reason=\"fanout_queue\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("duplex_hub_fanout_queued_bytes "), "{text}");
    })
    .await;
}

#[tokio::test]
async fn presence_pushes_past_the_bound_are_dropped_and_counted() {
    within(async {
        let hub = hub(bounded()).await;
        let addr = hub.local_addr();
        let mut watcher = Client::connect(addr, "").await;
        watcher.subscribe("room").await;
        let mut publisher = Client::connect(addr, "").await;
        // What the watcher's own subscribe pushed is out before the threads are held.
        let marker = publisher.publish("room", json!("marker")).await;
        let marker = marker["offset"].as_u64().unwrap();
        publications_until(&mut watcher, "room", marker).await;
        watcher.take_pushes();

        let hold = hub.hold_fanout().expect("the hub's fan-out");
        let (accepted, refusal) = fill(&hub, &mut publisher, "room", marker).await;
        assert_eq!(refusal["error"]["code"], "overloaded", "{refusal}");
        // A join while the queues are full: the subscribe succeeds, its push is dropped.
        let mut joiner = Client::connect(addr, "").await;
        joiner.subscribe("room").await;
        assert_eq!(hub.metrics().refusals("fanout_queue_presence"), Some(1));
        drop(hold);

        let last = marker + accepted;
        let offsets = publications_until(&mut watcher, "room", last).await;
        assert_eq!(offsets, (marker + 1..=last).collect::<Vec<_>>());
        assert!(
            watcher.take_pushes().iter().all(|p| p["op"] == "pub"),
            "no presence push for the dropped join"
        );
        drained(&hub).await;
        // With room again, presence pushes flow: the joiner's leave reaches the watcher.
        drop(joiner);
        let push = watcher.push().await;
        assert_eq!(push["op"], "presence", "{push}");
        assert_eq!(push["leave"].as_array().map(Vec::len), Some(1), "{push}");
        assert!(
            push["join"].as_array().is_none_or(Vec::is_empty),
            "the dropped join is not sent late: {push}"
        );
        assert_eq!(hub.metrics().refusals("fanout_queue_presence"), Some(1));
    })
    .await;
}

#[tokio::test]
async fn without_a_bound_nothing_is_refused() {
    within(async {
        let hub = hub(HubConfig {
            fanout_queue_bytes: 0,
            ..bounded()
        })
        .await;
        let addr = hub.local_addr();
        let mut subscriber = Client::connect(addr, "").await;
        subscriber.subscribe("busy").await;
        let mut publisher = Client::connect(addr, "").await;
        let hold = hub.hold_fanout().expect("the hub's fan-out");
        // Four times what the bound above allowed.
        let n = 4 * BOUND as u64 / 500;
        for i in 1..=n {
            publisher.publish("busy", data(i)).await;
        }
        assert!(hub.metrics().fanout_queued_bytes() as usize > BOUND);
        drop(hold);
        let offsets = publications_until(&mut subscriber, "busy", n).await;
        assert_eq!(offsets, (1..=n).collect::<Vec<_>>());
        assert_eq!(hub.metrics().refusals("fanout_queue"), Some(0));
        drained(&hub).await;
    })
    .await;
}

/// Publishers flooding a channel of `subscribers` reading subscribers, without holding the
/// threads: returns (publishes accepted, refused, the peak of `fanout_queued_bytes` sampled
/// every millisecond until the last reply).
async fn flood(queue_bytes: usize, subscribers: usize) -> (u64, u64, i64) {
    let hub = hub(HubConfig {
        fanout_queue_bytes: queue_bytes,
        ..bounded()
    })
    .await;
    let addr = hub.local_addr();
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let mut client = Client::connect(addr, "").await;
        client.subscribe("flood").await;
        readers.push(tokio::spawn(async move {
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(5), client.ws.recv()).await
            {}
        }));
    }
    let peak = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hub = Arc::new(hub);
    let sampler = {
        let (peak, stop, hub) = (peak.clone(), stop.clone(), hub.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let queued = hub.metrics().fanout_queued_bytes();
                peak.fetch_max(queued, Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut publishers = Vec::new();
    for p in 0..4u64 {
        publishers.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, "").await;
            let n = 500;
            for i in 0..n {
                let command =
                    json!({"id": i, "op": "publish", "channel": "flood", "data": data(p * n + i)});
                client.send_text(&command.to_string()).await;
            }
            let (mut ok, mut refused) = (0, 0);
            for i in 0..n {
                let reply = client.reply(json!(i)).await;
                match reply["error"]["code"].as_str() {
                    None => ok += 1,
                    Some("overloaded") => refused += 1,
                    Some(other) => panic!("{other}: {reply}"),
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for publisher in publishers {
        let (o, r) = publisher.await.unwrap();
        ok += o;
        refused += r;
    }
    // The peak is reached by the time the last reply came (the queues only drain after).
    stop.store(true, Relaxed);
    sampler.await.unwrap();
    for reader in readers {
        reader.abort();
    }
    (ok, refused, peak.load(Relaxed))
}

/// A measurement, not a check of exact numbers (run with `--ignored --nocapture`): four
/// publishers pipelining 500 publications each to a channel of 300 subscribers, with and
/// without a bound of 64 KiB; the peak of the queues stays near the bound with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures"]
async fn a_flood_without_holding_stays_near_the_bound() {
    let bound = 64 << 10;
    let (ok, refused, peak) = flood(0, 300).await;
    println!("no bound: {ok} accepted, {refused} refused, peak {peak} bytes queued");
    let (ok, refused, peak) = flood(bound, 300).await;
    println!("bound {bound}: {ok} accepted, {refused} refused, peak {peak} bytes queued");
    // Over the bound only by publications admitted at the same instant and their shares.
    assert!(peak as usize <= bound + 16 * 1024, "peak {peak}");
}
