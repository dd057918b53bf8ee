//! The in-memory broker: one process, history in a ring per channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::broker::{
    BoxFuture, Broker, BrokerError, BrokerHandler, ClientInfo, History, HistoryQuery, Publication,
    StreamPosition,
};

/// The default broker: offsets, history and presence in this process's memory.
///
/// The epoch is random per broker (so per hub process): a client that recovers with the epoch
/// of a previous process is told it cannot (`recovered: false`). The publishing call hands
/// each publication to the node's handler under the channel's lock, right after storing it:
/// one at a time and in offset order with nothing to wait for (the handler only queues it for
/// the node's fan-out threads, see the [contract](crate::broker)). Presence events go the same
/// way, so they are ordered with the channel's publications. A channel's state (offset
/// counter, history, presence) stays in memory once the channel was published or joined to.
pub struct MemoryBroker {
    epoch: Arc<str>,
    history_size: usize,
    history_ttl: Option<Duration>,
    channels: Mutex<HashMap<Box<str>, Arc<Mutex<Channel>>>>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("epoch", &self.epoch)
            .field("history_size", &self.history_size)
            .field("history_ttl", &self.history_ttl)
            .field("channels", &lock(&self.channels).len())
            .finish_non_exhaustive()
    }
}

/// One channel, behind one lock: held to assign an offset, store and hand the publication to
/// the handler; to read history; for presence.
struct Channel {
    top: u64,
    history: HistoryRing,
    presence: BTreeMap<Arc<str>, ClientInfo>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks in a way that leaves the data inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBroker {
    /// A broker keeping the last `history_size` publications per channel, each for at most
    /// `history_ttl`.
    pub fn new(history_size: usize, history_ttl: Option<Duration>) -> MemoryBroker {
        MemoryBroker {
            epoch: crate::ids::epoch().into(),
            history_size,
            history_ttl,
            channels: Mutex::new(HashMap::new()),
            handler: OnceLock::new(),
        }
    }

    /// This broker's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn channel(&self, name: &str, create: bool) -> Option<Arc<Mutex<Channel>>> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(name) {
            return Some(channel.clone());
        }
        if !create {
            return None;
        }
        let channel = Arc::new(Mutex::new(Channel {
            top: 0,
            history: HistoryRing::new(self.history_size, self.history_ttl),
            presence: BTreeMap::new(),
        }));
        channels.insert(name.into(), channel.clone());
        Some(channel)
    }

    fn position(&self, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset,
        }
    }

    fn publish_now(&self, channel: &str, data: Bytes) -> StreamPosition {
        let state = self.channel(channel, true).expect("created");
        let mut locked = lock(&state);
        locked.top += 1;
        let publication = Publication {
            offset: locked.top,
            data,
        };
        // Stored in history before the handler hears of it: a subscriber the fan-out does not
        // reach (it registered after the fan-out took its snapshot) reads it in history. Still
        // under the lock: the next offset's publisher waits here, so the handler sees the
        // channel's publications one at a time and in offset order.
        locked.history.push(Instant::now(), publication.clone());
        if let Some(handler) = self.handler.get() {
            handler.on_publication(channel, &publication);
        }
        drop(locked);
        self.position(publication.offset)
    }

    fn history_now(&self, channel: &str, query: HistoryQuery) -> History {
        let Some(state) = self.channel(channel, false) else {
            return History {
                position: self.position(0),
                earliest: 1,
                publications: Vec::new(),
            };
        };
        let mut state = lock(&state);
        state.history.prune(Instant::now());
        History {
            position: self.position(state.top),
            earliest: state.history.earliest(state.top),
            publications: state.history.query(query),
        }
    }

    // Presence events are handed to the handler under the channel lock too: ordered with the
    // channel's publications, and a connection's join before its leave.

    fn join_now(&self, channel: &str, client: &ClientInfo) {
        let state = self.channel(channel, true).expect("created");
        let mut locked = lock(&state);
        locked
            .presence
            .insert(client.client.clone(), client.clone());
        if let Some(handler) = self.handler.get() {
            handler.on_join(channel, client);
        }
    }

    fn leave_now(&self, channel: &str, client: &ClientInfo) {
        let Some(state) = self.channel(channel, false) else {
            return;
        };
        let mut locked = lock(&state);
        if locked.presence.remove(&client.client).is_some() {
            if let Some(handler) = self.handler.get() {
                handler.on_leave(channel, client);
            }
        }
    }

    fn presence_now(&self, channel: &str) -> Vec<ClientInfo> {
        self.channel(channel, false)
            .map(|state| lock(&state).presence.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Broker for MemoryBroker {
    fn start(&self, handler: Arc<dyn BrokerHandler>) -> BoxFuture<'_, Result<(), BrokerError>> {
        // Nothing to connect to: ready at once.
        if self.handler.set(handler).is_err() {
            tracing::warn!("MemoryBroker::start called twice; keeping the first handler");
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.publish_now(channel, data))))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.history_now(channel, query))))
    }

    fn subscribe<'a>(&'a self, _channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        // Every publication already reaches the handler.
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(&'a self, _channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.join_now(channel, client);
        Box::pin(std::future::ready(Ok(())))
    }

    fn leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.leave_now(channel, client);
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ClientInfo>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.presence_now(channel))))
    }
}

/// The last `capacity` publications of a channel, each kept at most `ttl`. Offsets in the ring
/// are consecutive (pushed in order, dropped from the front), so lookups are indexing.
#[derive(Debug)]
pub(crate) struct HistoryRing {
    capacity: usize,
    ttl: Option<Duration>,
    entries: VecDeque<(Instant, Publication)>,
}

impl HistoryRing {
    pub(crate) fn new(capacity: usize, ttl: Option<Duration>) -> HistoryRing {
        HistoryRing {
            capacity,
            ttl,
            entries: VecDeque::new(),
        }
    }

    /// Appends the next publication (its offset follows the last one's).
    pub(crate) fn push(&mut self, now: Instant, publication: Publication) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|(_, last)| last.offset + 1 == publication.offset)
        );
        if self.capacity == 0 {
            return;
        }
        self.prune(now);
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((now, publication));
    }

    /// Drops publications older than the TTL.
    pub(crate) fn prune(&mut self, now: Instant) {
        let Some(ttl) = self.ttl else { return };
        while self
            .entries
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= ttl)
        {
            self.entries.pop_front();
        }
    }

    /// The oldest offset held, or `top + 1` if none is.
    pub(crate) fn earliest(&self, top: u64) -> u64 {
        self.entries.front().map_or(top + 1, |(_, p)| p.offset)
    }

    pub(crate) fn query(&self, query: HistoryQuery) -> Vec<Publication> {
        let Some((_, first)) = self.entries.front() else {
            return Vec::new();
        };
        let start = match query.since {
            Some(since) => usize::try_from((since + 1).saturating_sub(first.offset))
                .unwrap_or(usize::MAX)
                .min(self.entries.len()),
            None => self.entries.len().saturating_sub(query.limit),
        };
        self.entries
            .range(start..)
            .take(query.limit)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64) -> Publication {
        Publication {
            offset,
            data: Bytes::from(offset.to_string()),
        }
    }

    fn offsets(v: &[Publication]) -> Vec<u64> {
        v.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn ring_keeps_the_last_n() {
        let now = Instant::now();
        let mut ring = HistoryRing::new(3, None);
        assert_eq!(ring.earliest(0), 1);
        for offset in 1..=10 {
            ring.push(now, publication(offset));
        }
        assert_eq!(ring.earliest(10), 8);
        let all = |since| HistoryQuery {
            since,
            limit: usize::MAX,
        };
        assert_eq!(offsets(&ring.query(all(Some(0)))), [8, 9, 10]);
        assert_eq!(offsets(&ring.query(all(Some(8)))), [9, 10]);
        assert_eq!(offsets(&ring.query(all(Some(10)))), Vec::<u64>::new());
        assert_eq!(offsets(&ring.query(all(Some(99)))), Vec::<u64>::new());
        assert_eq!(offsets(&ring.query(all(None))), [8, 9, 10]);
        let newest = HistoryQuery {
            since: None,
            limit: 2,
        };
        assert_eq!(offsets(&ring.query(newest)), [9, 10]);
        let first = HistoryQuery {
            since: Some(7),
            limit: 1,
        };
        assert_eq!(offsets(&ring.query(first)), [8]);
    }

    #[test]
    fn ring_expires_by_ttl() {
        let t0 = Instant::now();
        let mut ring = HistoryRing::new(10, Some(Duration::from_secs(5)));
        ring.push(t0, publication(1));
        ring.push(t0 + Duration::from_secs(3), publication(2));
        ring.prune(t0 + Duration::from_secs(4));
        assert_eq!(ring.earliest(2), 1);
        ring.prune(t0 + Duration::from_secs(6));
        assert_eq!(ring.earliest(2), 2);
        ring.prune(t0 + Duration::from_secs(9));
        assert_eq!(ring.earliest(2), 3);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut ring = HistoryRing::new(0, None);
        ring.push(Instant::now(), publication(1));
        assert_eq!(ring.earliest(1), 2);
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl BrokerHandler for Recorder {
        fn on_publication(&self, channel: &str, p: &Publication) {
            lock(&self.0).push(format!("pub {channel} {}", p.offset));
        }
        fn on_join(&self, channel: &str, c: &ClientInfo) {
            lock(&self.0).push(format!("join {channel} {}", c.client));
        }
        fn on_leave(&self, channel: &str, c: &ClientInfo) {
            lock(&self.0).push(format!("leave {channel} {}", c.client));
        }
        fn on_reset(&self, channel: &str, p: &StreamPosition) {
            lock(&self.0).push(format!("reset {channel} {}", p.offset));
        }
        fn on_gap(&self, channel: &str, first: u64, last: u64) {
            lock(&self.0).push(format!("gap {channel} {first} {last}"));
        }
    }

    #[tokio::test]
    async fn broker_assigns_offsets_and_notifies() {
        let broker = MemoryBroker::new(2, None);
        let recorder = Arc::new(Recorder::default());
        broker.start(recorder.clone()).await.unwrap();
        let empty = broker
            .history(
                "a",
                HistoryQuery {
                    since: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(empty.position.offset, 0);
        assert_eq!(empty.position.epoch.as_ref(), broker.epoch());
        for _ in 0..3 {
            broker.publish("a", Bytes::from_static(b"1")).await.unwrap();
        }
        let position = broker.publish("b", Bytes::from_static(b"2")).await.unwrap();
        assert_eq!(position.offset, 1);
        let history = broker
            .history(
                "a",
                HistoryQuery {
                    since: Some(0),
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(history.position.offset, 3);
        assert_eq!(history.earliest, 2);
        assert_eq!(offsets(&history.publications), [2, 3]);
        let client = ClientInfo {
            client: "c1".into(),
            user: "ada".into(),
        };
        broker.join("a", &client).await.unwrap();
        assert_eq!(
            broker.presence("a").await.unwrap(),
            std::slice::from_ref(&client)
        );
        broker.leave("a", &client).await.unwrap();
        broker.leave("a", &client).await.unwrap();
        assert!(broker.presence("a").await.unwrap().is_empty());
        assert_eq!(
            *lock(&recorder.0),
            [
                "pub a 1",
                "pub a 2",
                "pub a 3",
                "pub b 1",
                "join a c1",
                "leave a c1"
            ]
        );
    }

    /// Records publications, checking that they come one at a time.
    #[derive(Default)]
    struct OneAtATime {
        busy: std::sync::atomic::AtomicBool,
        offsets: Mutex<Vec<u64>>,
    }

    impl BrokerHandler for OneAtATime {
        fn on_publication(&self, _: &str, p: &Publication) {
            use std::sync::atomic::Ordering::SeqCst;
            assert!(!self.busy.swap(true, SeqCst), "one delivery at a time");
            // Widens the window in which an overlapping call would be seen.
            std::thread::yield_now();
            lock(&self.offsets).push(p.offset);
            self.busy.store(false, SeqCst);
        }
        fn on_join(&self, _: &str, _: &ClientInfo) {}
        fn on_leave(&self, _: &str, _: &ClientInfo) {}
        fn on_reset(&self, _: &str, _: &StreamPosition) {}
        fn on_gap(&self, _: &str, _: u64, _: u64) {}
    }

    #[test]
    fn concurrent_publishers_are_delivered_one_at_a_time_in_offset_order() {
        use std::future::Future as _;
        let broker = Arc::new(MemoryBroker::new(1000, None));
        let handler = Arc::new(OneAtATime::default());
        let started = broker.start(handler.clone());
        // Ready at once: no runtime needed to poll it.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            std::pin::pin!(started).poll(&mut cx),
            std::task::Poll::Ready(Ok(()))
        ));
        let publishers: Vec<_> = (0..4)
            .map(|_| {
                let broker = broker.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        broker.publish_now("a", Bytes::from_static(b"1"));
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        assert_eq!(*lock(&handler.offsets), (1..=1000).collect::<Vec<u64>>());
    }

    #[test]
    fn epochs_differ_between_brokers() {
        assert_ne!(
            MemoryBroker::new(1, None).epoch(),
            MemoryBroker::new(1, None).epoch()
        );
    }
}
