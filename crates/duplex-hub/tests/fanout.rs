//! A big channel under a continuous publish load: subscribes and unsubscribes do not wait for
//! the fan-out in progress (one `writev` per subscriber), and racing with it keeps every
//! guarantee: nothing of a channel after its unsubscribe reply, and a subscribe with `since`
//! gets every publication once, in order.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, config, hub, within};
use duplex_hub::{Compression, HubConfig, HubHandle};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const CHANNEL: &str = "big";

/// The tests of this file run one at a time: each may take the whole open-file budget.
static ONE_BIG_CHANNEL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn plain() -> duplex::ClientOptions {
    duplex::ClientOptions {
        deflate: None,
        ..Default::default()
    }
}

/// A hub with `crowd` connections subscribed to [`CHANNEL`] (they never read: the kernel's
/// buffers take the few publications of a test) and a publisher publishing to it back to back
/// until `stop`. The publisher is subscribed too, after the crowd: it waits for its own copy of
/// each publication, delivered last by the hub's fan-out thread, so the publish times are the
/// fan-out times (and the publisher never runs ahead of the fan-out).
struct BigChannel {
    hub: HubHandle,
    _crowd: Vec<Client>,
    stop: Arc<AtomicBool>,
    publish_times: Arc<Mutex<Vec<Duration>>>,
    publisher: JoinHandle<()>,
}

impl BigChannel {
    async fn start(crowd: usize) -> BigChannel {
        let hub = hub(HubConfig {
            join_leave: false,
            compression: Compression::Off,
            history_size: 100_000,
            max_connections: crowd + 10,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut clients = Vec::with_capacity(crowd);
        for _ in 0..crowd {
            let mut client = Client::connect_with(addr, "", plain()).await.unwrap();
            client.subscribe(CHANNEL).await;
            clients.push(client);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let publish_times = Arc::new(Mutex::new(Vec::new()));
        let mut publisher = Client::connect_with(addr, "", plain()).await.unwrap();
        publisher.subscribe(CHANNEL).await;
        let publisher = tokio::spawn({
            let stop = stop.clone();
            let publish_times = publish_times.clone();
            async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let reply = publisher.publish(CHANNEL, json!({ "i": i })).await;
                    let published = reply["offset"].as_u64().expect("an offset");
                    while offset(&publisher.publication().await) < published {}
                    publish_times.lock().unwrap().push(start.elapsed());
                    i += 1;
                }
            }
        });
        let big = BigChannel {
            hub,
            _crowd: clients,
            stop,
            publish_times,
            publisher,
        };
        // Under way.
        while big.publish_times.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        big
    }

    /// The median publish (fan-out) time so far.
    /// One more connection to the hub, subscribed to nothing.
    async fn client(&self) -> Client {
        Client::connect_with(self.hub.local_addr(), "", plain())
            .await
            .unwrap()
    }

    fn fan_out_time(&self) -> Duration {
        median(&self.publish_times.lock().unwrap())
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.publisher.await.unwrap();
        self.hub.shutdown();
    }
}

/// `wanted` subscribers, or as many as this process may open sockets for (each takes two:
/// the client's and the hub's; the tests of this file take turns). The soft limit on open
/// files is first lifted to the hard one: many systems start processes at 1024.
fn crowd(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let allowed = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
    wanted.min(allowed.saturating_sub(300) / 2)
}

fn median(times: &[Duration]) -> Duration {
    let mut times = times.to_vec();
    times.sort();
    times[times.len() / 2]
}

fn offset(push: &Value) -> u64 {
    push["offset"].as_u64().unwrap_or_else(|| panic!("{push}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_does_not_wait_for_the_fan_out_in_progress() {
    let _one_at_a_time = ONE_BIG_CHANNEL.lock().await;
    within(async {
        let subscribers = crowd(2000);
        // Fewer, and a fan-out is too quick to tell waiting from not waiting.
        assert!(
            subscribers >= 1000,
            "this test needs about 2,300 open files; the process may open {}",
            2 * subscribers + 300
        );
        let big = BigChannel::start(subscribers).await;
        let mut client = big.client().await;
        let mut subscribes = Vec::new();
        let mut unsubscribes = Vec::new();
        for _ in 0..15 {
            let start = Instant::now();
            client.subscribe(CHANNEL).await;
            subscribes.push(start.elapsed());
            // The next fan-out is under way by now, most of the time.
            tokio::time::sleep(Duration::from_millis(7)).await;
            let start = Instant::now();
            let reply = client
                .call(json!({"op": "unsubscribe", "channel": CHANNEL}))
                .await;
            assert_eq!(reply["ok"], true, "{reply}");
            unsubscribes.push(start.elapsed());
            client.take_pushes();
            // Land at another point of the next fan-out.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let fan_out = big.fan_out_time();
        let (subscribe, unsubscribe) = (median(&subscribes), median(&unsubscribes));
        eprintln!(
            "fan-out to 2,000 (median publish): {fan_out:?}; subscribe: {subscribe:?}, \
             unsubscribe: {unsubscribe:?} (medians)"
        );
        // Waiting behind a fan-out in progress costs half of one on average (more when the
        // publisher takes the lock again first).
        assert!(
            subscribe * 4 < fan_out,
            "a subscribe ({subscribe:?}) waits for the fan-out ({fan_out:?})"
        );
        assert!(
            unsubscribe * 4 < fan_out,
            "an unsubscribe ({unsubscribe:?}) waits for the fan-out ({fan_out:?})"
        );
        big.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_channel_follows_its_unsubscribe_reply_during_a_fan_out() {
    let _one_at_a_time = ONE_BIG_CHANNEL.lock().await;
    within(async {
        let big = BigChannel::start(crowd(1000)).await;
        let mut client = big.client().await;
        for round in 0..20 {
            // Subscribed last: the end of the subscriber list, delivered to last, so the
            // unsubscribe tends to land while a fan-out that includes it is still running.
            client.subscribe(CHANNEL).await;
            client.publication().await;
            let reply = client
                .call(json!({"op": "unsubscribe", "channel": CHANNEL}))
                .await;
            assert_eq!(reply["ok"], true, "{reply}");
            client.take_pushes();
            // Long enough for any fan-out running at the reply to finish.
            let quiet = (big.fan_out_time() * 3).max(Duration::from_millis(30));
            if let Ok(message) = tokio::time::timeout(quiet, client.ws.recv()).await {
                panic!("round {round}: a message after the unsubscribe reply: {message:?}");
            }
        }
        big.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_with_since_during_a_fan_out_gets_every_publication_once() {
    let _one_at_a_time = ONE_BIG_CHANNEL.lock().await;
    within(async {
        let big = BigChannel::start(crowd(1000)).await;
        let mut client = big.client().await;
        let reply = client.subscribe(CHANNEL).await;
        let epoch = reply["epoch"].clone();
        let mut last = offset(&client.publication().await);
        for round in 0..20 {
            let reply = client
                .call(json!({"op": "unsubscribe", "channel": CHANNEL}))
                .await;
            assert_eq!(reply["ok"], true, "{reply}");
            for push in client.take_pushes() {
                assert_eq!(offset(&push), last + 1, "round {round}: {push}");
                last += 1;
            }
            // Resubscribe at various points of a fan-out, a few publications later.
            tokio::time::sleep(Duration::from_millis(1 + round % 7)).await;
            let reply = client
                .call(json!({
                    "op": "subscribe",
                    "channel": CHANNEL,
                    "since": {"epoch": epoch, "offset": last},
                }))
                .await;
            assert_eq!(reply["recovered"], true, "round {round}: {reply}");
            assert!(
                client.take_pushes().is_empty(),
                "round {round}: pushes before the subscribe reply"
            );
            for publication in reply["publications"].as_array().unwrap() {
                assert_eq!(offset(publication), last + 1, "round {round}: {reply}");
                last += 1;
            }
            assert_eq!(reply["offset"], last, "round {round}: {reply}");
            // Live from the reply's offset on: no gap, no duplicate.
            for _ in 0..3 {
                let push = client.publication().await;
                assert_eq!(push["channel"], CHANNEL);
                assert_eq!(offset(&push), last + 1, "round {round}: {push}");
                last += 1;
            }
        }
        big.stop().await;
    })
    .await;
}
