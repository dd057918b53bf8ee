//! Fan-out: the node's local subscribers per channel, and the node's fan-out threads.
//!
//! ```text
//!  broker ──on_publication──▶ Fanout: a Job to the channel's fan-out thread (no waiting)
//!                                 │ (channel ─ stable hash ─▶ thread: the channel's order holds)
//!                                 ▼
//!  fan-out thread: encode once (PreparedMessage) ──▶ Arc<Delivery>
//!                                 │ for each local subscriber: Outbox::deliver (no await)
//!                                 ▼
//!   Outbox (per connection, see outbox.rs): nothing queued ahead? one non-blocking writev of
//!   the shared frame straight to the socket; otherwise (or on WouldBlock / a partial write)
//!   the bounded queue, drained by the connection task when the socket is writable
//! ```
//!
//! A publication is serialized and framed once; each socket gets the same payload `Bytes`.
//! Publishing never waits for a socket: a queue that would grow past its bound marks its
//! connection as a slow consumer (closed with 1013 by its task) and drops what it held.
//!
//! The handler methods only queue a [`Job`]: a fan-out to 10,000 sockets takes tens of
//! milliseconds, which must not run on a tokio worker nor under a broker's lock. The fan-out
//! threads are plain threads of the node (`fanout_threads` of them); every event of a channel
//! goes to the same one, in the order the broker called the handler, so a channel's pushes
//! keep the broker's order.
//!
//! The one exception is a hub on a single-threaded runtime (`--threads 1`) without an explicit
//! `fanout_threads`: it promises one thread, so the handler fans out itself, on that thread.
//! There is nothing else it could run meanwhile, and a process with a single thread is also
//! the cheapest per delivery (glibc skips its cancellation bookkeeping around every `writev`
//! only while the process has one thread: ~45 user-space instructions per delivery).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::Release};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use duplex::{Message, PreparedMessage, Utf8Bytes};
use tokio::sync::OnceCell;

use crate::broker::{Broker, BrokerError, BrokerHandler, ClientInfo, Publication, StreamPosition};
use crate::json;
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Kind, Outbox, Tally};
use crate::presence_batch::{Batcher, PresenceBatch};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent between statements; a panic elsewhere must not wedge
    // every publisher.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A subscriber of a [`LocalChannel`].
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub(crate) conn: u64,
    pub(crate) outbox: Arc<Outbox>,
    /// Takes the once-compressed frame (permessage-deflate with server_no_context_takeover).
    pub(crate) shared_deflate: bool,
    /// Set when this subscription ended ([`Fanout::unsubscribe`]). A fan-out still running on
    /// a snapshot taken before that must not deliver to it: [`Outbox::deliver`] checks it under
    /// the outbox lock. A later subscribe of the same connection is a new `Subscriber` with a
    /// flag of its own.
    pub(crate) left: Arc<AtomicBool>,
}

impl Subscriber {
    pub(crate) fn new(conn: u64, outbox: Arc<Outbox>, shared_deflate: bool) -> Subscriber {
        Subscriber {
            conn,
            outbox,
            shared_deflate,
            left: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The node's subscribers of one channel.
///
/// Two locks, so that joining and leaving never wait for a fan-out in progress:
/// - `subscribers`: the current subscriber set, an `Arc` copied on write. Held only to clone
///   the `Arc` (fan-out), to add or remove one entry (subscribe, unsubscribe; the list is
///   copied when a fan-out still holds the previous version), or to count.
/// - `order`: held by a fan-out for its whole delivery loop, so that the channel's pushes
///   reach every subscriber in the same order even if two fan-outs of the channel overlap
///   (one fan-out thread per channel runs them one at a time; the lock keeps that promise
///   local to this type). Nothing else takes it.
#[derive(Debug)]
pub(crate) struct LocalChannel {
    pub(crate) id: u64,
    subscribers: Mutex<Subscribers>,
    order: Mutex<()>,
    /// Set once the broker confirmed the node's subscription.
    broker_subscribed: OnceCell<()>,
    /// The stream's epoch as far as this node knows (the first subscriber's history read, then
    /// every reset), for the `gap` push.
    epoch: Mutex<Option<Arc<str>>>,
}

#[derive(Debug, Default)]
struct Subscribers {
    list: Arc<Vec<Subscriber>>,
    shared_deflate: usize,
}

/// How publications are compressed for fan-out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FanoutOptions {
    /// zlib level for the shared compressed frame, when any subscriber can take it.
    pub(crate) deflate_level: Option<u32>,
    /// Push join/leave events.
    pub(crate) join_leave: bool,
    /// Join/leave events of a channel wait this long and go out as one `presence` push
    /// (zero: each at once, still as a `presence` push). See `presence_batch.rs`.
    pub(crate) presence_batch: Duration,
    /// A channel with more local subscribers than this gets no presence pushes (0: no
    /// limit); presence queries work whatever the size.
    pub(crate) join_leave_max_subscribers: usize,
    /// Fan-out threads; 0: none, the handler fans out on the caller's thread (a hub on a
    /// single-threaded runtime, see the module docs).
    pub(crate) threads: usize,
}

/// One event for a fan-out thread.
#[derive(Debug)]
enum Job {
    Publication(Box<str>, Publication),
    /// A window's joins and leaves of the channel.
    Presence(Box<str>, PresenceBatch),
    Reset(Box<str>, StreamPosition),
    Gap(Box<str>, u64, u64),
    /// Answered once every job queued before it ran (tests).
    #[cfg(test)]
    Barrier(mpsc::Sender<()>),
}

impl Job {
    /// Whether it counts in the `fanout_queued` gauge (an event, not a test's barrier).
    fn counted(&self) -> bool {
        match self {
            Job::Publication(..) | Job::Presence(..) | Job::Reset(..) | Job::Gap(..) => true,
            #[cfg(test)]
            Job::Barrier(_) => false,
        }
    }
}

/// The node's registry of local subscriptions, shared with the fan-out threads.
#[derive(Debug)]
struct Registry {
    channels: RwLock<HashMap<Box<str>, Arc<LocalChannel>>>,
    next_id: AtomicU64,
    options: FanoutOptions,
    metrics: Arc<Metrics>,
}

/// The node's registry of local subscriptions and the [`BrokerHandler`] that fans out (on the
/// node's fan-out threads, which end when this is dropped, or inline without any).
#[derive(Debug)]
pub(crate) struct Fanout {
    registry: Arc<Registry>,
    /// One queue per fan-out thread; empty: fan out inline.
    threads: Vec<mpsc::Sender<Job>>,
    /// Join/leave events wait here for their window, then come back through [`Fanout::send`].
    presence: Batcher,
    pub(crate) metrics: Arc<Metrics>,
}

/// A stable hash of a channel name (FNV-1a): the same channel always goes to the same thread.
fn channel_hash(channel: &str) -> u64 {
    channel.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Fanout {
    /// A fan-out with `options.threads` threads (none: inline) and, on a tokio runtime, the
    /// task that flushes presence windows (it holds the fan-out weakly: hence the `Arc`).
    /// Fails only if the operating system refuses a thread.
    pub(crate) fn new(
        options: FanoutOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Fanout>> {
        let registry = Arc::new(Registry {
            channels: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            options,
            metrics: metrics.clone(),
        });
        let mut threads = Vec::new();
        for i in 0..options.threads {
            let (tx, rx) = mpsc::channel::<Job>();
            let registry = registry.clone();
            std::thread::Builder::new()
                .name(format!("duplex-fanout-{i}"))
                .spawn(move || {
                    // Ends when the Fanout (every sender) is gone.
                    while let Ok(job) = rx.recv() {
                        let counted = job.counted();
                        registry.run(job);
                        if counted {
                            registry.metrics.fanout_queued.fetch_sub(1, Relaxed);
                        }
                    }
                })?;
            threads.push(tx);
        }
        Ok(Arc::new_cyclic(|fanout: &std::sync::Weak<Fanout>| {
            let fanout = fanout.clone();
            let presence = Batcher::new(options.presence_batch, move |channel, batch| {
                let Some(fanout) = fanout.upgrade() else {
                    return false;
                };
                fanout.send(&channel, || Job::Presence(channel.clone(), batch));
                true
            });
            Fanout {
                registry,
                threads,
                presence,
                metrics,
            }
        }))
    }

    /// Queues the job `make` builds for `channel`'s fan-out thread, if the channel has local
    /// subscribers. Skipping the others is safe: a subscriber registering after this check
    /// reads history after the broker stored what this event is about.
    fn send(&self, channel: &str, make: impl FnOnce() -> Job) {
        if self.registry.get(channel).is_none() {
            return;
        }
        let job = make();
        if self.threads.is_empty() {
            // A single-threaded hub: this thread is the fan-out thread.
            self.registry.run(job);
            return;
        }
        // `threads` is not empty, and the index is below its length.
        let i = (channel_hash(channel) % self.threads.len() as u64) as usize;
        // Counted before the send: the thread may run the job (and count it down) at once.
        self.metrics.fanout_queued.fetch_add(1, Relaxed);
        if self.threads[i].send(job).is_err() {
            self.metrics.fanout_queued.fetch_sub(1, Relaxed);
            // Only if the thread panicked: its channels get no more pushes.
            tracing::error!("fan-out thread {i} is gone; dropping an event of {channel:?}");
        }
    }

    /// Waits until every job queued so far ran.
    #[cfg(test)]
    pub(crate) fn barrier(&self) {
        let (tx, rx) = mpsc::channel();
        for thread in &self.threads {
            let _ = thread.send(Job::Barrier(tx.clone()));
        }
        drop(tx);
        for _ in &self.threads {
            let _ = rx.recv();
        }
    }

    /// Adds `subscriber` to `channel` and makes sure the broker delivers the channel to this
    /// node (`subscribe` is awaited by the first subscriber; later ones wait for it too).
    /// From the return on, every publication the broker delivers reaches the subscriber's
    /// outbox.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        subscriber: Subscriber,
        broker: &dyn Broker,
    ) -> Result<Arc<LocalChannel>, BrokerError> {
        let local = {
            let mut channels = self
                .registry
                .channels
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let local = channels.entry(channel.into()).or_insert_with(|| {
                Arc::new(LocalChannel {
                    id: self.registry.next_id.fetch_add(1, Relaxed),
                    subscribers: Mutex::new(Subscribers::default()),
                    order: Mutex::new(()),
                    broker_subscribed: OnceCell::new(),
                    epoch: Mutex::new(None),
                })
            });
            let mut subs = lock(&local.subscribers);
            subs.shared_deflate += usize::from(subscriber.shared_deflate);
            // Copies the list if a fan-out is still delivering the previous version.
            Arc::make_mut(&mut subs.list).push(subscriber.clone());
            local.clone()
        };
        let confirmed = local
            .broker_subscribed
            .get_or_try_init(|| broker.subscribe(channel))
            .await;
        if let Err(e) = confirmed {
            self.unsubscribe(channel, subscriber.conn);
            return Err(e);
        }
        self.metrics.subscriptions.fetch_add(1, Relaxed);
        Ok(local)
    }

    /// A subscriber of `local` read the channel's history in `epoch`: the node's idea of the
    /// epoch, for `gap` pushes, unless it already has one (a reset is newer than any read).
    pub(crate) fn note_epoch(&self, local: &LocalChannel, epoch: &Arc<str>) {
        lock(&local.epoch).get_or_insert_with(|| epoch.clone());
    }

    /// Removes connection `conn` from `channel` and marks its subscription as left, so that a
    /// fan-out already running on an older snapshot of the subscribers skips it from the
    /// caller's next [`Outbox::forget_channel`] on (see there). Returns true when it was the
    /// channel's last local subscriber (the caller then unsubscribes the node from the broker).
    pub(crate) fn unsubscribe(&self, channel: &str, conn: u64) -> bool {
        let mut channels = self
            .registry
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(local) = channels.get(channel) else {
            return false;
        };
        let mut subs = lock(&local.subscribers);
        let Some(i) = subs.list.iter().position(|s| s.conn == conn) else {
            return false;
        };
        let removed = Arc::make_mut(&mut subs.list).swap_remove(i);
        removed.left.store(true, Release);
        subs.shared_deflate -= usize::from(removed.shared_deflate);
        if local.broker_subscribed.initialized() {
            self.metrics.subscriptions.fetch_sub(1, Relaxed);
        }
        let last = subs.list.is_empty();
        drop(subs);
        if last {
            channels.remove(channel);
        }
        last
    }

    /// Local channels with their subscriber counts, sorted by name.
    pub(crate) fn channel_counts(&self) -> Vec<(String, usize)> {
        let channels = self
            .registry
            .channels
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut counts: Vec<(String, usize)> = channels
            .iter()
            .map(|(name, local)| (name.to_string(), lock(&local.subscribers).list.len()))
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort();
        counts
    }
}

impl Registry {
    fn get(&self, channel: &str) -> Option<Arc<LocalChannel>> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .cloned()
    }

    /// Runs one job on a fan-out thread.
    fn run(&self, job: Job) {
        match job {
            Job::Publication(channel, publication) => {
                self.fan_out(&channel, Kind::Publication(publication.offset), |out| {
                    json::push_publication(out, &channel, &publication)
                });
            }
            Job::Presence(channel, batch) => {
                let max = self.options.join_leave_max_subscribers;
                let count = self
                    .get(&channel)
                    .map_or(0, |local| lock(&local.subscribers).list.len());
                // A large channel gets no join/leave pushes (each would go to every one of
                // its subscribers); presence queries still answer.
                if max == 0 || count <= max {
                    self.fan_out(&channel, Kind::Presence, |out| {
                        json::push_presence(out, &channel, &batch)
                    });
                }
            }
            Job::Reset(channel, position) => {
                if let Some(local) = self.get(&channel) {
                    *lock(&local.epoch) = Some(position.epoch.clone());
                }
                let kind = Kind::Reset {
                    epoch: position.epoch.clone(),
                    offset: position.offset,
                };
                self.fan_out(&channel, kind, |out| {
                    json::push_reset(out, &channel, &position)
                });
            }
            Job::Gap(channel, first, last) => {
                let epoch = self
                    .get(&channel)
                    .and_then(|local| lock(&local.epoch).clone());
                self.fan_out(&channel, Kind::Gap { last }, |out| {
                    json::push_gap(out, &channel, epoch.as_deref(), first, last)
                });
            }
            #[cfg(test)]
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }

    /// Encodes one push for `channel` and queues it to every local subscriber.
    fn fan_out(&self, channel: &str, kind: Kind, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(local) = self.get(channel) else {
            return;
        };
        // The channel's fan-outs one at a time, each to every subscriber: all of them see the
        // channel's pushes in the same order. Subscribes and unsubscribes do not take this
        // lock, only `subscribers` for a moment.
        let order = lock(&local.order);
        // The snapshot: who gets this push. Taken after the publication reached history (the
        // broker stores before it calls `on_publication`, which queued this job) and in the
        // broker's offset order (one thread per channel, jobs in the order queued), so for a
        // subscribe (register, then read history, then filter offsets <= the top read):
        // - registered after this snapshot: it read history after this publication was stored,
        //   so the publication is in what it read (offset <= top), not a gap;
        // - registered before (it is in the snapshot): delivered live; if its history read came
        //   after the store too, the live copy has offset <= top and the filter drops it (not a
        //   duplicate), else it is past top, the first live one after the reply.
        // Every later publication is stored, then snapshotted, after this one, so a subscriber
        // in this snapshot is in all later ones until it unsubscribes. An unsubscribe during
        // the loop below is honoured through the subscriber's `left` flag.
        let (subs, shared_deflate) = {
            let subs = lock(&local.subscribers);
            (subs.list.clone(), subs.shared_deflate)
        };
        if subs.is_empty() {
            return;
        }
        let start = Instant::now();
        let mut text = Vec::with_capacity(128);
        encode(&mut text);
        let Ok(text) = Utf8Bytes::try_from(text) else {
            // serde_json writes UTF-8 only; nothing to send if that ever broke.
            return;
        };
        let message = Message::text(text);
        let prepared = match self.options.deflate_level {
            Some(level) if shared_deflate > 0 => PreparedMessage::with_deflate(message, level),
            _ => PreparedMessage::new(message),
        };
        let delivery = Arc::new(Delivery {
            channel: local.id,
            kind,
            prepared,
        });
        // Each delivery is one non-blocking write or one queue push.
        let mut tally = Tally::default();
        for subscriber in subs.iter() {
            subscriber
                .outbox
                .deliver(&delivery, &subscriber.left, &mut tally);
        }
        let n = subs.len();
        drop(order);
        // The last holder of an old snapshot frees it here, outside both locks.
        drop(subs);
        let metrics = &self.metrics;
        metrics.observe_fanout(start.elapsed(), n);
        if tally.written > 0 {
            metrics.messages_out.fetch_add(tally.written, Relaxed);
            metrics.bytes_out.fetch_add(tally.written_bytes, Relaxed);
        }
        if tally.dropped > 0 {
            metrics.dropped.fetch_add(tally.dropped, Relaxed);
            metrics
                .slow_consumers
                .fetch_add(tally.slow_consumers, Relaxed);
        }
    }
}

impl Fanout {
    /// A join (`true`) or leave: into the channel's presence window, or pushed at once
    /// without batching. Channels without local subscribers keep no window.
    fn presence_event(&self, channel: &str, client: &ClientInfo, join: bool) {
        if !self.registry.options.join_leave || self.registry.get(channel).is_none() {
            return;
        }
        if let Some(batch) = self.presence.add(channel, client, join) {
            self.send(channel, || Job::Presence(channel.into(), batch));
        }
    }
}

/// Every method only queues a job for the channel's fan-out thread (presence events after
/// their window).
impl BrokerHandler for Fanout {
    fn on_publication(&self, channel: &str, publication: &Publication) {
        self.send(channel, || {
            Job::Publication(channel.into(), publication.clone())
        });
    }

    fn on_join(&self, channel: &str, client: &ClientInfo) {
        self.presence_event(channel, client, true);
    }

    fn on_leave(&self, channel: &str, client: &ClientInfo) {
        self.presence_event(channel, client, false);
    }

    fn on_reset(&self, channel: &str, position: &StreamPosition) {
        self.send(channel, || Job::Reset(channel.into(), position.clone()));
    }

    fn on_gap(&self, channel: &str, first: u64, last: u64) {
        self.send(channel, || Job::Gap(channel.into(), first, last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::VecDeque;

    fn fanout(threads: usize) -> Arc<Fanout> {
        fanout_with(threads, 1000)
    }

    /// Presence windows of an hour: tests flush them with [`Fanout::flush_presence`].
    fn fanout_with(threads: usize, join_leave_max_subscribers: usize) -> Arc<Fanout> {
        Fanout::new(
            FanoutOptions {
                deflate_level: None,
                join_leave: true,
                presence_batch: Duration::from_secs(3600),
                join_leave_max_subscribers,
                threads,
            },
            Arc::new(Metrics::default()),
        )
        .expect("threads")
    }

    impl Fanout {
        /// Flushes every presence window now, and waits until the pushes are queued.
        fn flush_presence(&self) {
            for (channel, batch) in self.presence.take_now() {
                self.send(&channel, || Job::Presence(channel.clone(), batch));
            }
            self.barrier();
        }
    }

    fn client(id: &str) -> ClientInfo {
        ClientInfo {
            client: id.into(),
            user: "u".into(),
        }
    }

    fn publication(offset: u64, data: &'static [u8]) -> Publication {
        Publication {
            offset,
            data: Bytes::from_static(data),
        }
    }

    /// `n` outboxes (no sockets: everything queues) subscribed to `channel`.
    async fn subscribers(fanout: &Fanout, channel: &str, n: usize) -> Vec<Arc<Outbox>> {
        let broker = crate::memory::MemoryBroker::new(0, None);
        let mut outboxes = Vec::new();
        for conn in 0..n {
            let outbox = Arc::new(Outbox::new(1 << 20, None, None));
            let subscriber = Subscriber::new(conn as u64, outbox.clone(), false);
            fanout
                .subscribe(channel, subscriber, &broker)
                .await
                .unwrap();
            outboxes.push(outbox);
        }
        outboxes
    }

    /// The texts queued in `outbox`.
    fn texts(outbox: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        let taken = outbox.take(&mut batch);
        outbox.release(taken);
        batch
            .iter()
            .map(|d| String::from_utf8(d.prepared.message().as_bytes().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn one_encoding_is_shared_by_every_subscriber() {
        let fanout = fanout(2);
        let outboxes = subscribers(&fanout, "chat", 3).await;
        fanout.on_publication("chat", &publication(1, br#"{"t":"hi"}"#));
        fanout.on_publication("other", &publication(1, b"1"));
        fanout.barrier();
        let mut batches = Vec::new();
        for outbox in &outboxes {
            let mut batch = VecDeque::new();
            assert!(outbox.take(&mut batch) > 0);
            batches.push(batch);
        }
        let first = &batches[0][0];
        assert_eq!(
            first.prepared.message().as_bytes(),
            br#"{"op":"pub","channel":"chat","offset":1,"data":{"t":"hi"}}"#
        );
        for batch in &batches {
            assert_eq!(batch.len(), 1);
            assert!(
                Arc::ptr_eq(first, &batch[0]),
                "the same encoding, not a copy"
            );
        }
        assert_eq!(fanout.metrics.deliveries.load(Relaxed), 3);
        assert_eq!(
            fanout.metrics.fanout_queued.load(Relaxed),
            0,
            "counted down"
        );
    }

    #[tokio::test]
    async fn each_channel_keeps_its_order_across_threads() {
        for threads in [3, 0] {
            each_channel_keeps_its_order(fanout(threads)).await;
        }
    }

    async fn each_channel_keeps_its_order(fanout: Arc<Fanout>) {
        let channels: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        let mut outboxes = Vec::new();
        for channel in &channels {
            outboxes.push(subscribers(&fanout, channel, 1).await.remove(0));
        }
        for offset in 1..=200 {
            for channel in &channels {
                fanout.on_publication(channel, &publication(offset, b"0"));
            }
        }
        fanout.barrier();
        for (channel, outbox) in channels.iter().zip(&outboxes) {
            let expected: Vec<String> = (1..=200)
                .map(|o| format!(r#"{{"op":"pub","channel":"{channel}","offset":{o},"data":0}}"#))
                .collect();
            assert_eq!(texts(outbox), expected);
        }
    }

    #[tokio::test]
    async fn reset_and_gap_reach_subscribers_as_pushes_and_move_their_filters() {
        let fanout = fanout(1);
        let outboxes = subscribers(&fanout, "room", 2).await;
        let local = fanout.registry.get("room").unwrap();
        fanout.note_epoch(&local, &Arc::from("e1"));
        // The first subscriber's reply covered up to 5 in e1, the second's up to 2.
        outboxes[0].set_filter(local.id, "e1".into(), 5);
        outboxes[1].set_filter(local.id, "e1".into(), 2);
        fanout.on_gap("room", 3, 4);
        fanout.on_publication("room", &publication(5, b"5"));
        fanout.on_publication("room", &publication(6, b"6"));
        let e2 = StreamPosition {
            epoch: "e2".into(),
            offset: 10,
        };
        fanout.on_reset("room", &e2);
        fanout.on_gap("room", 11, 12);
        fanout.on_publication("room", &publication(13, b"13"));
        fanout.barrier();
        let gap = r#"{"op":"gap","channel":"room","epoch":"e1","first":3,"last":4}"#;
        let reset = r#"{"op":"reset","channel":"room","epoch":"e2","offset":10}"#;
        let gap2 = r#"{"op":"gap","channel":"room","epoch":"e2","first":11,"last":12}"#;
        let publication =
            |o: u64| format!(r#"{{"op":"pub","channel":"room","offset":{o},"data":{o}}}"#);
        // The first one's reply covered the gap and 5.
        assert_eq!(
            texts(&outboxes[0]),
            [publication(6), reset.into(), gap2.into(), publication(13)]
        );
        assert_eq!(
            texts(&outboxes[1]),
            [
                gap.into(),
                publication(5),
                publication(6),
                reset.into(),
                gap2.into(),
                publication(13)
            ]
        );
    }

    #[tokio::test]
    async fn a_presence_window_is_one_push_shared_by_every_subscriber() {
        let fanout = fanout(2);
        let outboxes = subscribers(&fanout, "room", 3).await;
        for id in ["a", "b", "c"] {
            fanout.on_join("room", &client(id));
        }
        fanout.on_leave("room", &client("c"));
        fanout.on_leave("room", &client("z"));
        // No local subscriber: no window kept for it.
        fanout.on_join("elsewhere", &client("a"));
        fanout.barrier();
        assert!(
            texts(&outboxes[0]).is_empty(),
            "nothing before the window ends"
        );
        fanout.flush_presence();
        let mut batches = Vec::new();
        for outbox in &outboxes {
            let mut batch = VecDeque::new();
            let taken = outbox.take(&mut batch);
            outbox.release(taken);
            assert_eq!(batch.len(), 1, "one push for the whole window");
            batches.push(batch);
        }
        assert_eq!(
            batches[0][0].prepared.message().as_bytes(),
            br#"{"op":"presence","channel":"room","join":[{"client":"a","user":"u"},{"client":"b","user":"u"}],"leave":[{"client":"z","user":"u"}]}"#
        );
        for batch in &batches {
            assert!(Arc::ptr_eq(&batches[0][0], &batch[0]), "encoded once");
        }
        assert!(
            fanout.presence.take_now().is_empty(),
            "the window was emptied"
        );
    }

    #[tokio::test]
    async fn channels_above_the_limit_get_no_presence_pushes() {
        for threads in [1, 0] {
            let fanout = fanout_with(threads, 2);
            let outboxes = subscribers(&fanout, "small", 2).await;
            let big = subscribers(&fanout, "big", 3).await;
            fanout.on_join("small", &client("a"));
            fanout.on_join("big", &client("a"));
            fanout.flush_presence();
            assert_eq!(texts(&outboxes[0]).len(), 1, "2 subscribers: at the limit");
            assert!(texts(&big[0]).is_empty(), "3 subscribers: above the limit");
            // Publications are not affected.
            fanout.on_publication("big", &publication(1, b"1"));
            fanout.barrier();
            assert_eq!(texts(&big[0]).len(), 1);
            // Back at the limit, the pushes resume.
            fanout.unsubscribe("big", 0);
            fanout.on_leave("big", &client("a"));
            fanout.flush_presence();
            let got = texts(&big[1]);
            assert_eq!(got.len(), 2, "the publication, then presence: {got:?}");
            assert!(
                got[1].starts_with(r#"{"op":"presence""#),
                "2 subscribers again"
            );
        }
    }

    #[test]
    fn channels_hash_the_same_way_everywhere() {
        // Pinned: a change would move channels between threads (harmless) but also shows the
        // hash is not seeded per process.
        assert_eq!(channel_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(channel_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
