//! The broker contract (see `duplex_hub::broker`), as checks that run against any broker.
//!
//! Each property is a `pub async fn` taking a [`Backend`]: something that makes nodes
//! (`Arc<dyn Broker>`, not started) on one backend. `tests/broker_contract.rs` runs them all
//! against [`MemoryBroker`](duplex_hub::MemoryBroker); another broker's test file includes this
//! module (`#[path = "broker_contract/mod.rs"] mod contract;`) and runs the same functions
//! with its own [`Backend`].
//!
//! Nodes must keep at least [`HISTORY`] publications per channel, without a TTL. Channel names
//! are unique per call, so the properties may share one backend (and run concurrently).
#![allow(
    dead_code,
    reason = "each broker's test file runs the properties its backend supports"
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use duplex_hub::{
    BoxFuture, Broker, BrokerHandler, ClientInfo, History, HistoryQuery, Publication,
    StreamPosition,
};
use tokio::sync::Notify;

/// Publications every node keeps per channel (at least).
pub const HISTORY: usize = 20;

/// How long a property waits for an event the broker owes it.
const PATIENCE: Duration = Duration::from_secs(10);

/// One broker backend, as the properties see it.
pub trait Backend: Send + Sync {
    /// A new node, not started, keeping [`HISTORY`] publications per channel. With
    /// [`Backend::many_nodes`], on the same backend as every node before it; otherwise (a
    /// single-node broker such as the memory broker) a new backend of its own.
    fn node(&self) -> BoxFuture<'_, Arc<dyn Broker>>;

    /// The backend forgets every stream (Redis restarted without persistence). A single-node
    /// broker has nothing to do: its next node is a new backend anyway.
    fn lose_streams(&self) -> BoxFuture<'_, ()>;

    /// `None` for a broker with a single node (nothing shared between nodes, nothing to
    /// expire): the properties about several nodes are skipped, and say so.
    fn many_nodes(&self) -> Option<&dyn ManyNodes>;
}

/// What a backend with many nodes offers besides [`Backend::node`].
pub trait ManyNodes: Send + Sync {
    /// Stops `node` as `kill -9` would: no leave, no presence refresh, no goodbye.
    fn kill(&self, node: Arc<dyn Broker>) -> BoxFuture<'_, ()>;

    /// How long a dead node's clients may stay in presence.
    fn presence_expiry(&self) -> Duration;
}

/// A channel name no other call uses.
pub fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{nanos:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What a node's handler was told, per channel, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Publication(u64, Bytes),
    Join(String),
    Leave(String),
    Reset(StreamPosition),
    Gap(u64, u64),
}

/// A handler that records every event and lets a property wait for some.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<BTreeMap<String, Vec<Event>>>,
    changed: Notify,
    /// Calls in progress, to check that a channel's publications come one at a time.
    busy: Mutex<BTreeMap<String, bool>>,
}

impl Recorder {
    fn record(&self, channel: &str, event: Event) {
        self.events
            .lock()
            .unwrap()
            .entry(channel.to_owned())
            .or_default()
            .push(event);
        self.changed.notify_waiters();
    }

    /// The events of `channel` so far.
    pub fn events(&self, channel: &str) -> Vec<Event> {
        self.events
            .lock()
            .unwrap()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (at most [`PATIENCE`]) until `done` holds for `channel`'s events; panics with
    /// `what` and the events otherwise.
    pub async fn wait_for(&self, channel: &str, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let changed = self.changed.notified();
            if done(&self.events(channel)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{channel}: {what} within {PATIENCE:?}; got {:?}",
                    self.events(channel)
                );
            }
            // Woken by the next event; the bound keeps a missed wake-up from hanging.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), changed).await;
        }
    }
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, channel: &str, publication: &Publication) {
        let overlapping = self
            .busy
            .lock()
            .unwrap()
            .insert(channel.to_owned(), true)
            .unwrap_or(false);
        assert!(!overlapping, "{channel}: two on_publication calls at once");
        std::thread::yield_now();
        self.record(
            channel,
            Event::Publication(publication.offset, publication.data.clone()),
        );
        self.busy.lock().unwrap().insert(channel.to_owned(), false);
    }

    fn on_join(&self, channel: &str, client: &ClientInfo) {
        self.record(channel, Event::Join(client.client.to_string()));
    }

    fn on_leave(&self, channel: &str, client: &ClientInfo) {
        self.record(channel, Event::Leave(client.client.to_string()));
    }

    fn on_reset(&self, channel: &str, position: &StreamPosition) {
        self.record(channel, Event::Reset(position.clone()));
    }

    fn on_gap(&self, channel: &str, first: u64, last: u64) {
        self.record(channel, Event::Gap(first, last));
    }
}

/// A new node, started with a new [`Recorder`].
pub async fn started(backend: &dyn Backend) -> (Arc<dyn Broker>, Arc<Recorder>) {
    let node = backend.node().await;
    let recorder = Arc::new(Recorder::default());
    tokio::time::timeout(PATIENCE, node.start(recorder.clone()))
        .await
        .expect("start within the patience")
        .expect("the node starts");
    assert!(node.is_available(), "a started node is available");
    (node, recorder)
}

fn data(i: u64) -> Bytes {
    Bytes::from(format!(r#"{{"i":{i}}}"#))
}

fn client(name: &str) -> ClientInfo {
    ClientInfo {
        client: unique(name).into(),
        user: format!("user of {name}").into(),
    }
}

async fn history(node: &dyn Broker, channel: &str, since: Option<u64>, limit: usize) -> History {
    node.history(channel, HistoryQuery { since, limit })
        .await
        .expect("history")
}

fn offsets(history: &History) -> Vec<u64> {
    history.publications.iter().map(|p| p.offset).collect()
}

/// Offsets start at 1 in every channel and go up by one per publication, in one epoch; a
/// channel never published to stands at 0 with nothing held.
pub async fn offsets_are_gap_free_from_one(backend: &dyn Backend) {
    let (node, _) = started(backend).await;
    let (a, b) = (unique("offsets-a"), unique("offsets-b"));
    let empty = history(&*node, &a, None, 10).await;
    assert_eq!(empty.position.offset, 0, "{empty:?}");
    assert_eq!(empty.earliest, 1, "{empty:?}");
    assert!(empty.publications.is_empty(), "{empty:?}");
    let mut epoch = None;
    for i in 1..=5 {
        let position = node.publish(&a, data(i)).await.expect("publish");
        assert_eq!(position.offset, i, "{a}");
        assert_eq!(
            epoch.get_or_insert_with(|| position.epoch.clone()),
            &position.epoch,
            "one epoch"
        );
    }
    let position = node.publish(&b, data(1)).await.expect("publish");
    assert_eq!(position.offset, 1, "every channel starts at 1");
    let read = history(&*node, &a, Some(0), usize::MAX).await;
    assert_eq!(read.position.offset, 5);
    assert_eq!(Some(&read.position.epoch), epoch.as_ref());
    assert_eq!(offsets(&read), [1, 2, 3, 4, 5]);
    assert_eq!(read.publications[2].data, data(3), "data as published");
}

/// `since` returns what follows an offset, `limit` caps it (without `since`: the newest),
/// `earliest` is the oldest offset held, and everything from it to the top is held.
pub async fn history_honours_since_limit_and_earliest(backend: &dyn Backend) {
    let (node, _) = started(backend).await;
    let channel = unique("history");
    let top = 3 * HISTORY as u64;
    for i in 1..=top {
        node.publish(&channel, data(i)).await.expect("publish");
    }
    let all = history(&*node, &channel, Some(0), usize::MAX).await;
    assert_eq!(all.position.offset, top);
    assert!(
        all.earliest >= 1 && all.earliest <= top - HISTORY as u64 + 1,
        "at least {HISTORY} kept: earliest {}",
        all.earliest
    );
    assert_eq!(
        offsets(&all),
        (all.earliest..=top).collect::<Vec<u64>>(),
        "everything from earliest to the top"
    );
    for p in &all.publications {
        assert_eq!(p.data, data(p.offset));
    }
    let since = top - 5;
    assert_eq!(
        offsets(&history(&*node, &channel, Some(since), usize::MAX).await),
        [since + 1, since + 2, since + 3, since + 4, since + 5]
    );
    assert_eq!(
        offsets(&history(&*node, &channel, Some(since), 2).await),
        [since + 1, since + 2],
        "limit with since: the oldest ones after since"
    );
    assert_eq!(
        offsets(&history(&*node, &channel, None, 3).await),
        [top - 2, top - 1, top],
        "limit without since: the newest"
    );
    assert!(
        history(&*node, &channel, Some(top), usize::MAX)
            .await
            .publications
            .is_empty()
    );
    let position_only = history(&*node, &channel, None, 0).await;
    assert!(position_only.publications.is_empty());
    assert_eq!(position_only.position.offset, top);
}

/// A stream the backend lost starts over in a new epoch, from offset 1.
pub async fn a_lost_stream_starts_a_new_epoch(backend: &dyn Backend) {
    let channel = unique("epoch");
    let before = {
        let (node, _) = started(backend).await;
        for i in 1..=3 {
            node.publish(&channel, data(i)).await.expect("publish");
        }
        history(&*node, &channel, None, 0).await.position
    };
    assert_eq!(before.offset, 3);
    backend.lose_streams().await;
    let (node, _) = started(backend).await;
    let position = node.publish(&channel, data(1)).await.expect("publish");
    assert_eq!(position.offset, 1, "offsets start over");
    assert_ne!(position.epoch, before.epoch, "in a new epoch");
    let read = history(&*node, &channel, Some(0), usize::MAX).await;
    assert_eq!(read.position, position);
    assert_eq!(offsets(&read), [1]);
}

/// Every publication reaches a subscribed node's handler once, in offset order per channel,
/// one call at a time, with the data history holds, even with publishers racing on several
/// tasks (and, with many nodes, on another node).
pub async fn publications_reach_the_handler_once_in_offset_order(backend: &dyn Backend) {
    let (subscriber, recorder) = started(backend).await;
    let publisher = match backend.many_nodes() {
        Some(_) => started(backend).await.0,
        None => subscriber.clone(),
    };
    let channels = [unique("order-a"), unique("order-b")];
    for channel in &channels {
        subscriber.subscribe(channel).await.expect("subscribe");
    }
    const TASKS: u64 = 4;
    const EACH: u64 = 50;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let publisher = publisher.clone();
        let channels = channels.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let channel = &channels[usize::from(i % 2 == 0)];
                publisher
                    .publish(channel, data(t * 1000 + i))
                    .await
                    .expect("publish");
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    let per_channel = TASKS * EACH / 2;
    for channel in &channels {
        recorder
            .wait_for(channel, "every publication", |events| {
                events.len() as u64 >= per_channel
            })
            .await;
        let read = history(&*subscriber, channel, Some(0), usize::MAX).await;
        let events = recorder.events(channel);
        let expected: Vec<Event> = read
            .publications
            .iter()
            .map(|p| Event::Publication(p.offset, p.data.clone()))
            .collect();
        assert_eq!(read.position.offset, per_channel);
        assert_eq!(
            events[events.len() - expected.len()..],
            expected[..],
            "{channel}: in offset order, as stored"
        );
        let offsets: Vec<u64> = events
            .iter()
            .map(|e| match e {
                Event::Publication(offset, _) => *offset,
                other => panic!("{channel}: only publications expected, got {other:?}"),
            })
            .collect();
        assert_eq!(
            offsets,
            (1..=per_channel).collect::<Vec<u64>>(),
            "{channel}"
        );
    }
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for channel in &channels {
        assert_eq!(
            recorder.events(channel).len() as u64,
            per_channel,
            "once each"
        );
    }
}

/// Presence lists who joined until they leave, and a subscribed node hears every join and
/// leave (with many nodes: the joins and leaves of another node).
pub async fn presence_follows_joins_and_leaves(backend: &dyn Backend) {
    let (watcher, recorder) = started(backend).await;
    let member_node = match backend.many_nodes() {
        Some(_) => started(backend).await.0,
        None => watcher.clone(),
    };
    let channel = unique("presence");
    watcher.subscribe(&channel).await.expect("subscribe");
    let (ada, bob) = (client("ada"), client("bob"));
    member_node.join(&channel, &ada).await.expect("join");
    member_node.join(&channel, &bob).await.expect("join");
    let mut present = watcher.presence(&channel).await.expect("presence");
    present.sort();
    let mut expected = vec![ada.clone(), bob.clone()];
    expected.sort();
    assert_eq!(present, expected);
    member_node.leave(&channel, &ada).await.expect("leave");
    assert_eq!(
        watcher.presence(&channel).await.expect("presence"),
        std::slice::from_ref(&bob)
    );
    let (a, b) = (ada.client.to_string(), bob.client.to_string());
    let wanted = [
        Event::Join(a.clone()),
        Event::Join(b.clone()),
        Event::Leave(a.clone()),
    ];
    recorder
        .wait_for(&channel, "two joins and a leave", |events| {
            wanted.iter().all(|w| events.contains(w))
        })
        .await;
    let events = recorder.events(&channel);
    let position = |e: &Event| events.iter().position(|x| x == e).expect("recorded");
    assert!(
        position(&Event::Join(a.clone())) < position(&Event::Leave(a)),
        "a join before its leave: {events:?}"
    );
    member_node.leave(&channel, &bob).await.expect("leave");
    assert!(
        watcher
            .presence(&channel)
            .await
            .expect("presence")
            .is_empty()
    );
    assert!(
        history(&*watcher, &channel, None, 0)
            .await
            .publications
            .is_empty(),
        "presence is not history"
    );
}

/// A node that dies without a word: its clients leave presence by themselves within the
/// backend's expiry. Skipped for a single-node broker (a dead node is a dead backend).
pub async fn a_dead_nodes_clients_leave_presence(backend: &dyn Backend) {
    let Some(many) = backend.many_nodes() else {
        eprintln!("a_dead_nodes_clients_leave_presence: skipped, the broker has a single node");
        return;
    };
    let (survivor, _) = started(backend).await;
    let (doomed, _) = started(backend).await;
    let channel = unique("expiry");
    let (ghost, alive) = (client("ghost"), client("alive"));
    doomed.join(&channel, &ghost).await.expect("join");
    survivor.join(&channel, &alive).await.expect("join");
    assert_eq!(
        survivor.presence(&channel).await.expect("presence").len(),
        2
    );
    many.kill(doomed).await;
    let deadline = Instant::now() + many.presence_expiry() + PATIENCE;
    loop {
        let present = survivor.presence(&channel).await.expect("presence");
        if present == [alive.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node's client is still present: {present:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The living node's clients stay (its refresh keeps them).
    tokio::time::sleep(many.presence_expiry()).await;
    assert_eq!(
        survivor.presence(&channel).await.expect("presence"),
        [alive]
    );
}
