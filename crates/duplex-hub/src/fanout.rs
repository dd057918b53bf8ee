//! Fan-out: the node's local subscribers per channel, and the node's fan-out threads.
//!
//! ```text
//!  broker ──on_publication──▶ Fanout: a Job to the channel's home thread (no waiting)
//!                                 │ (channel ─ stable hash ─▶ home thread: the channel's order holds)
//!                                 ▼
//!  home thread: encode once (PreparedMessage) ──▶ Arc<Delivery>
//!      │ a Share (the same Arc) to each other thread that holds subscribers of the channel
//!      │ (a queue push, no waiting), then its own share      │
//!      ▼                                                     ▼
//!  each thread, for each subscriber of its share of the channel: Outbox::deliver (no await)
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
//! threads are plain threads of the node (`fanout_threads` of them). Every event of a channel
//! goes to the channel's *home* thread, in the order the broker called the handler.
//!
//! **Every core writes a large fan-out.** A channel's subscribers are kept in *shards*, one per
//! fan-out thread. While the channel has fewer than [`SPREAD_FROM`] subscribers a new one joins
//! the home shard (a small channel costs one job per event, as before it was spread); from
//! there on, shard `connection id % threads`. The home thread encodes each event once, hands
//! the same `Arc<Delivery>` to every other thread whose shard of the channel is not empty, and
//! writes its own shard; the other threads write theirs in parallel. No thread waits for
//! another: a share is a push onto the thread's job queue. A subscription never changes shard,
//! and the home thread hands out shares in the broker's order, so each subscriber gets the
//! channel's pushes from one thread, in the broker's order (see [`Registry::deliver_share`]
//! for why recovery stays exact).
//!
//! **The queues are bounded in bytes** (`fanout_queue_bytes`). Each queued job is charged what
//! it holds ([`Job::cost`]: the job itself plus the channel name and the publication's data,
//! the presence window's entries, or, for a share, the wire length of the shared frame, once
//! per share even though the frame is one allocation). The charge is added when the job is
//! queued and taken off once it ran (the `fanout_queued_bytes` gauge). A publish is admitted
//! ([`Fanout::admit_publication`]) *before* the broker stores it: past the bound the publisher
//! gets `overloaded` (HTTP 503) and nothing was stored, so history, offsets and what
//! subscribers see stay one stream. Once stored, a publication is always fanned out (as are
//! resets and gaps): dropping one would leave a hole no subscriber could see. So the bound is
//! checked at the door: publications admitted at the same instant by different tasks, and
//! the shares an admitted publication of a large channel hands out, can take the queues past
//! it by at most a few publications (each at most `max_message_size` per fan-out thread).
//! Presence pushes are best effort: one that does not fit is dropped and counted.
//!
//! The one exception is a hub on a single-threaded runtime (`--threads 1`) without an explicit
//! `fanout_threads`: it promises one thread, so the handler fans out itself, on that thread
//! (one shard per channel, nothing handed over). There is nothing else it could run meanwhile,
//! and a process with a single thread is also the cheapest per delivery (glibc skips its
//! cancellation bookkeeping around every `writev` only while the process has one thread: ~45
//! user-space instructions per delivery).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::Release};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use duplex::{Message, PreparedMessage, Utf8Bytes};
use tokio::sync::OnceCell;

use crate::broker::{Broker, BrokerError, BrokerHandler, ClientInfo, Publication, StreamPosition};
use crate::json;
use crate::metrics::{Metrics, Reason};
use crate::outbox::{Delivery, Kind, Outbox, Tally};
use crate::presence_batch::{Batcher, PresenceBatch};
use crate::protocol::Refusal;

/// From this many subscribers of a channel on, new ones are spread over the fan-out threads
/// (by connection id); below it they join the channel's home shard. Handing a share to another
/// thread costs a queue push and, when that thread sleeps, a wake-up (a futex call on each
/// side): measured with two threads (docs/performance.md), ~1,300-1,600 more user-space
/// instructions per publication, with no gain in latency at 16 or 48 subscribers. For a few
/// subscribers one thread writing them all is cheaper; for many, the shares run in parallel
/// and the hand-over is noise (a delivery costs ~5,500 ns of CPU here, mostly the `writev`).
pub(crate) const SPREAD_FROM: usize = 64;

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

/// The node's subscribers of one channel, in one [`Shard`] per fan-out thread.
#[derive(Debug)]
pub(crate) struct LocalChannel {
    pub(crate) id: u64,
    /// The shard (and fan-out thread) that runs the channel's events: it encodes each once,
    /// hands the other shards their share, and holds the channel's first subscribers.
    home: usize,
    /// One per fan-out thread (one when the handler fans out inline).
    shards: Box<[Shard]>,
    /// Subscribers in all shards. Changed only under the registry's write lock.
    members: AtomicUsize,
    /// Of those, the ones taking the shared compressed frame. Changed only under the
    /// registry's write lock.
    shared_deflate: AtomicUsize,
    /// Set once the broker confirmed the node's subscription.
    broker_subscribed: OnceCell<()>,
    /// The stream's epoch as far as this node knows (the first subscriber's history read, then
    /// every reset), for the `gap` push.
    epoch: Mutex<Option<Arc<str>>>,
}

/// One fan-out thread's subscribers of a channel.
///
/// Two locks, so that joining and leaving never wait for a fan-out in progress:
/// - `subscribers`: the current list, an `Arc` copied on write. Held only to clone the `Arc`
///   (a fan-out's snapshot), to add or remove one entry (subscribe, unsubscribe; the list is
///   copied when a fan-out still holds the previous version), or to look at its length.
/// - `order`: held by a fan-out for its whole delivery loop over the shard, so that the
///   shard's pushes reach every subscriber in the same order even if two fan-outs of it
///   overlap (one thread runs a shard's jobs one at a time; the lock keeps that promise local
///   to this type, and keeps two overlapping inline fan-outs from interleaving).
///   Nothing else takes it.
#[derive(Debug, Default)]
struct Shard {
    subscribers: Mutex<Arc<Vec<Subscriber>>>,
    order: Mutex<()>,
}

impl Shard {
    fn is_empty(&self) -> bool {
        lock(&self.subscribers).is_empty()
    }
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
    /// Bytes the threads' queues may hold together ([`Job::cost`]); 0: no bound. Past it
    /// publishes are refused and presence pushes dropped (see the module docs).
    pub(crate) queue_bytes: usize,
}

/// One event for a fan-out thread.
#[derive(Debug)]
enum Job {
    Publication(Box<str>, Publication),
    /// A window's joins and leaves of the channel.
    Presence(Box<str>, PresenceBatch),
    Reset(Box<str>, StreamPosition),
    Gap(Box<str>, u64, u64),
    /// A push the channel's home thread encoded: for this thread's shard of the channel.
    Share(Arc<LocalChannel>, Arc<Delivery>),
    /// The [`Fanout`] is gone: the thread ends.
    Stop,
    /// The thread says it got here on the sender, then waits until the sender of the
    /// receiver is dropped ([`FanoutHold`]).
    Hold(mpsc::Sender<()>, mpsc::Receiver<()>),
    /// Answered once every job queued before it ran (tests).
    #[cfg(test)]
    Barrier(mpsc::Sender<()>),
}

impl Job {
    /// Whether it counts in the `fanout_queued` gauge (an event or a share of one, not a
    /// thread's stop or a test's barrier).
    fn counted(&self) -> bool {
        match self {
            Job::Publication(..)
            | Job::Presence(..)
            | Job::Reset(..)
            | Job::Gap(..)
            | Job::Share(..) => true,
            Job::Stop | Job::Hold(..) => false,
            #[cfg(test)]
            Job::Barrier(_) => false,
        }
    }

    /// The bytes it is charged in the queues' bound (`fanout_queued_bytes`): the job itself
    /// and what it holds on the heap; a share is charged its frame's wire length (the frame
    /// is shared, but while the share waits it keeps the frame alive). Zero for the jobs that
    /// are not [`counted`](Job::counted).
    fn cost(&self) -> usize {
        let held = match self {
            Job::Publication(channel, publication) => channel.len() + publication.data.len(),
            Job::Presence(channel, batch) => {
                channel.len()
                    + batch
                        .joins
                        .iter()
                        .chain(&batch.leaves)
                        .map(|c| size_of::<ClientInfo>() + c.client.len() + c.user.len())
                        .sum::<usize>()
            }
            Job::Reset(channel, position) => channel.len() + position.epoch.len(),
            Job::Gap(channel, ..) => channel.len(),
            // The payload and the longest frame head (RFC 6455 section 5.2).
            Job::Share(_, delivery) => delivery.prepared.message().as_bytes().len() + 14,
            Job::Stop | Job::Hold(..) => return 0,
            #[cfg(test)]
            Job::Barrier(_) => return 0,
        };
        size_of::<Job>() + held
    }
}

/// What [`Job::cost`] charges a publication of `data_len` bytes to `channel` (for the
/// admission check, before the job exists).
fn publication_cost(channel: &str, data_len: usize) -> usize {
    size_of::<Job>() + channel.len() + data_len
}

/// Holds every fan-out thread still (each waits at a [`Job::Hold`] in its queue, behind what
/// was queued before) until dropped: what is queued meanwhile stays queued, and counted.
/// For tests of the queues' bound (`HubHandle::hold_fanout`); nothing in the hub makes one.
/// Made once every thread waits: what was queued before ran and was counted down, so the
/// `fanout_queued_bytes` gauge changes only by what is queued from then on.
#[derive(Debug)]
pub struct FanoutHold {
    /// Dropping them ends every thread's wait.
    _release: Vec<mpsc::Sender<()>>,
}

/// The node's registry of local subscriptions, shared with the fan-out threads.
#[derive(Debug)]
struct Registry {
    channels: RwLock<HashMap<Box<str>, Arc<LocalChannel>>>,
    next_id: AtomicU64,
    options: FanoutOptions,
    metrics: Arc<Metrics>,
    /// One queue per fan-out thread, thread `i` writing shard `i`; empty: fan out inline.
    threads: Vec<mpsc::Sender<Job>>,
    /// Set when the [`Fanout`] is dropped: a thread that is gone is no error then.
    stopping: AtomicBool,
}

/// The node's registry of local subscriptions and the [`BrokerHandler`] that fans out (on the
/// node's fan-out threads, which end when this is dropped, or inline without any).
#[derive(Debug)]
pub(crate) struct Fanout {
    registry: Arc<Registry>,
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
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..options.threads).map(|_| mpsc::channel::<Job>()).unzip();
        let registry = Arc::new(Registry {
            channels: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            options,
            metrics: metrics.clone(),
            threads: senders,
            stopping: AtomicBool::new(false),
        });
        let fanout = Arc::new_cyclic(|fanout: &std::sync::Weak<Fanout>| {
            let fanout = fanout.clone();
            let presence = Batcher::new(options.presence_batch, move |channel, batch| {
                let Some(fanout) = fanout.upgrade() else {
                    return false;
                };
                fanout.send_presence(&channel, batch);
                true
            });
            Fanout {
                registry,
                presence,
                metrics,
            }
        });
        for (i, rx) in receivers.into_iter().enumerate() {
            let registry = fanout.registry.clone();
            // On an error the threads started so far get their Stop from `fanout`'s drop.
            std::thread::Builder::new()
                .name(format!("duplex-fanout-{i}"))
                .spawn(move || {
                    // Every thread holds the registry, and with it every queue's sender: the
                    // Fanout's drop ends them with a Stop.
                    while let Ok(job) = rx.recv() {
                        if matches!(job, Job::Stop) {
                            break;
                        }
                        let counted = job.counted();
                        let cost = job.cost();
                        registry.run(i, job);
                        if counted {
                            registry.metrics.fanout_queued.fetch_sub(1, Relaxed);
                            registry
                                .metrics
                                .fanout_queued_bytes
                                .fetch_sub(cost as i64, Relaxed);
                        }
                    }
                })?;
        }
        Ok(fanout)
    }

    /// Queues the job `make` builds for `channel`'s home thread, if the channel has local
    /// subscribers. Skipping the others is safe: a subscriber registering after this check
    /// reads history after the broker stored what this event is about.
    fn send(&self, channel: &str, make: impl FnOnce() -> Job) {
        let Some(local) = self.registry.get(channel) else {
            return;
        };
        let job = make();
        if self.registry.threads.is_empty() {
            // A single-threaded hub: this thread is the fan-out thread.
            self.registry.run(0, job);
            return;
        }
        self.registry.hand_over(local.home, job, channel);
    }

    /// Whether a publication of `data_len` bytes to `channel` fits in the fan-out queues'
    /// bound now; if not, counts the refusal (`fanout_queue`) and returns it (`overloaded`).
    /// Called before the broker stores the publication, so a refused one leaves no trace.
    /// Every publish of the node is checked, whatever its channel: when the fan-out threads
    /// fall behind, publishers are asked to slow down.
    pub(crate) fn admit_publication(&self, channel: &str, data_len: usize) -> Result<(), Refusal> {
        let limit = self.registry.options.queue_bytes;
        if self.registry.fits(publication_cost(channel, data_len)) {
            return Ok(());
        }
        self.metrics.refused(Reason::FanoutQueue);
        Err(Refusal::overloaded(limit))
    }

    /// Holds every fan-out thread until the returned guard is dropped (see [`FanoutHold`]);
    /// returns once every thread waits (blocking the caller until the jobs queued before ran).
    pub(crate) fn hold(&self) -> FanoutHold {
        let (reached_tx, reached) = mpsc::channel();
        let mut release = Vec::new();
        for thread in &self.registry.threads {
            let (tx, rx) = mpsc::channel();
            // A thread that is gone holds nothing anyway (and drops its `reached_tx`).
            let _ = thread.send(Job::Hold(reached_tx.clone(), rx));
            release.push(tx);
        }
        drop(reached_tx);
        // One message per thread that got there; ends early only if a thread is gone.
        for _ in &self.registry.threads {
            if reached.recv().is_err() {
                break;
            }
        }
        FanoutHold { _release: release }
    }

    /// Queues a presence push for `channel`, unless the fan-out queues are full: presence
    /// pushes are best effort, so one that does not fit is dropped (and counted as
    /// `fanout_queue_presence`), never waited for.
    fn send_presence(&self, channel: &str, batch: PresenceBatch) {
        let job = Job::Presence(channel.into(), batch);
        if !self.registry.fits(job.cost()) {
            self.metrics.refused(Reason::FanoutQueuePresence);
            return;
        }
        self.send(channel, || job);
    }

    /// Waits until every job queued so far ran, and the shares they handed out.
    #[cfg(test)]
    pub(crate) fn barrier(&self) {
        // Twice: after the first round every home thread has handed out the shares of what was
        // queued before it; after the second every thread has written them.
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel();
            for thread in &self.registry.threads {
                let _ = thread.send(Job::Barrier(tx.clone()));
            }
            drop(tx);
            for _ in &self.registry.threads {
                let _ = rx.recv();
            }
        }
    }

    /// Adds `subscriber` to `channel` and makes sure the broker delivers the channel to this
    /// node (`subscribe` is awaited by the first subscriber; later ones wait for it too).
    /// From the return on, every publication the broker delivers reaches the subscriber's
    /// outbox, always from the same fan-out thread (its shard, see the module docs).
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
            let shards = self.registry.shards();
            let local = channels.entry(channel.into()).or_insert_with(|| {
                Arc::new(LocalChannel {
                    id: self.registry.next_id.fetch_add(1, Relaxed),
                    home: shard_of(channel_hash(channel), shards),
                    shards: (0..shards).map(|_| Shard::default()).collect(),
                    members: AtomicUsize::new(0),
                    shared_deflate: AtomicUsize::new(0),
                    broker_subscribed: OnceCell::new(),
                    epoch: Mutex::new(None),
                })
            });
            // Under the write lock: the counts and the shard lists change together.
            let members = local.members.load(Relaxed);
            let shard = if members < SPREAD_FROM {
                local.home
            } else {
                shard_of(subscriber.conn, shards)
            };
            local.members.store(members + 1, Relaxed);
            if subscriber.shared_deflate {
                local.shared_deflate.fetch_add(1, Relaxed);
            }
            // Copies the list if a fan-out is still delivering the previous version.
            Arc::make_mut(&mut lock(&local.shards[shard].subscribers)).push(subscriber.clone());
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
        // A subscriber joined the home shard or its connection's (see `subscribe`).
        let candidates = [local.home, shard_of(conn, local.shards.len())];
        let removed = candidates.iter().find_map(|&shard| {
            let mut subs = lock(&local.shards[shard].subscribers);
            let i = subs.iter().position(|s| s.conn == conn)?;
            Some(Arc::make_mut(&mut subs).swap_remove(i))
        });
        let Some(removed) = removed else {
            return false;
        };
        removed.left.store(true, Release);
        if removed.shared_deflate {
            local.shared_deflate.fetch_sub(1, Relaxed);
        }
        if local.broker_subscribed.initialized() {
            self.metrics.subscriptions.fetch_sub(1, Relaxed);
        }
        let last = local.members.fetch_sub(1, Relaxed) == 1;
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
            .map(|(name, local)| (name.to_string(), local.members.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort();
        counts
    }
}

/// The fan-out threads end once they have run what was queued before.
impl Drop for Fanout {
    fn drop(&mut self) {
        self.registry.stopping.store(true, Relaxed);
        for thread in &self.registry.threads {
            let _ = thread.send(Job::Stop);
        }
    }
}

/// The shard `key` (a channel's hash, a connection id) maps to among `shards` (at least one).
fn shard_of(key: u64, shards: usize) -> usize {
    // The remainder is below `shards`, a usize.
    (key % shards.max(1) as u64) as usize
}

impl Registry {
    fn get(&self, channel: &str) -> Option<Arc<LocalChannel>> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .cloned()
    }

    /// Shards per channel: one per fan-out thread, one when fanning out inline.
    fn shards(&self) -> usize {
        self.threads.len().max(1)
    }

    /// Whether `cost` more bytes fit in the fan-out queues' bound now (always, fanning out
    /// inline: nothing waits in a queue then).
    fn fits(&self, cost: usize) -> bool {
        let limit = self.options.queue_bytes;
        if limit == 0 || self.threads.is_empty() {
            return true;
        }
        let queued = usize::try_from(self.metrics.fanout_queued_bytes.load(Relaxed)).unwrap_or(0);
        queued.saturating_add(cost) <= limit
    }

    /// Queues `job` for fan-out thread `i` (never waits).
    fn hand_over(&self, i: usize, job: Job, channel: &str) {
        // Counted before the send: the thread may run the job (and count it down) at once.
        let cost = job.cost() as i64;
        self.metrics.fanout_queued.fetch_add(1, Relaxed);
        self.metrics.fanout_queued_bytes.fetch_add(cost, Relaxed);
        if self.threads[i].send(job).is_err() {
            self.metrics.fanout_queued.fetch_sub(1, Relaxed);
            self.metrics.fanout_queued_bytes.fetch_sub(cost, Relaxed);
            // Only if the thread panicked (or the hub is stopping): its shards get no more
            // pushes.
            if !self.stopping.load(Relaxed) {
                tracing::error!("fan-out thread {i} is gone; dropping an event of {channel:?}");
            }
        }
    }

    /// Runs one job on fan-out thread `thread` (0 inline): an event on the channel's home
    /// thread, a share on the thread of its shard.
    fn run(&self, thread: usize, job: Job) {
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
                    .map_or(0, |local| local.members.load(Relaxed));
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
            Job::Share(local, delivery) => {
                self.deliver_share(&local, thread, &delivery, Instant::now());
            }
            // The thread loop ends on it before running it.
            Job::Stop => {}
            Job::Hold(reached, release) => {
                let _ = reached.send(());
                // Returns (with an error) once the hold's sender is dropped.
                let _ = release.recv();
            }
            #[cfg(test)]
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }

    /// On `channel`'s home thread: encodes one push, hands it to every other shard of the
    /// channel that has subscribers, and delivers it to the home shard's.
    fn fan_out(&self, channel: &str, kind: Kind, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(local) = self.get(channel) else {
            return;
        };
        if local.members.load(Relaxed) == 0 {
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
            Some(level) if local.shared_deflate.load(Relaxed) > 0 => {
                PreparedMessage::with_deflate(message, level)
            }
            _ => PreparedMessage::new(message),
        };
        let delivery = Arc::new(Delivery {
            channel: local.id,
            kind,
            prepared,
        });
        // The other shards first, so that their threads write while this one writes its own.
        // Handed out in the order of the channel's events (this thread runs them in order), so
        // each thread's queue holds the channel's shares in the broker's order.
        for (i, shard) in local.shards.iter().enumerate() {
            if i != local.home && !shard.is_empty() {
                self.hand_over(i, Job::Share(local.clone(), delivery.clone()), channel);
            }
        }
        self.deliver_share(&local, local.home, &delivery, start);
    }

    /// Writes or queues `delivery` to every subscriber in shard `i` of `local`.
    fn deliver_share(
        &self,
        local: &LocalChannel,
        i: usize,
        delivery: &Arc<Delivery>,
        start: Instant,
    ) {
        let shard = &local.shards[i];
        // The shard's fan-outs one at a time, each to every subscriber: all of them see the
        // channel's pushes in the same order. Subscribes and unsubscribes do not take this
        // lock, only `subscribers` for a moment.
        let order = lock(&shard.order);
        // The snapshot: who in this shard gets this push. Taken after the publication reached
        // history (the broker stores before it calls `on_publication`), and the home thread
        // looked at this shard (to hand it the push, or not) after that too. A subscriber's
        // shard gets the channel's pushes in the broker's offset order (one home thread hands
        // them out in the order queued; one thread writes a shard, in the order handed), so
        // for a subscribe (register, then read history, then filter offsets <= the top read):
        // - registered after the home thread looked at its shard, or after this snapshot: it
        //   read history after this publication was stored, so the publication is in what it
        //   read (offset <= top), not a gap;
        // - registered before (it is in the snapshot): delivered live; if its history read came
        //   after the store too, the live copy has offset <= top and the filter drops it (not a
        //   duplicate), else it is past top, the first live one after the reply.
        // Every later publication is stored, then looked at by the home thread, after this
        // subscriber registered: its shard is not empty, so it gets the share, and the
        // snapshot includes the subscriber until it unsubscribes. An unsubscribe during the
        // loop below is honoured through the subscriber's `left` flag.
        let subs = lock(&shard.subscribers).clone();
        if subs.is_empty() {
            return;
        }
        // Each delivery is one non-blocking write or one queue push.
        let mut tally = Tally::default();
        for subscriber in subs.iter() {
            subscriber
                .outbox
                .deliver(delivery, &subscriber.left, &mut tally);
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
            self.send_presence(channel, batch);
        }
    }
}

/// Every method only queues a job for the channel's home fan-out thread (presence events
/// after their window).
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

    fn fanout(threads: usize) -> Arc<Fanout> {
        fanout_with(threads, 1000)
    }

    /// Presence windows of an hour: tests flush them with [`Fanout::flush_presence`].
    fn fanout_with(threads: usize, join_leave_max_subscribers: usize) -> Arc<Fanout> {
        bounded(threads, join_leave_max_subscribers, 0)
    }

    /// [`fanout_with`] with a bound of `queue_bytes` on the queues.
    fn bounded(
        threads: usize,
        join_leave_max_subscribers: usize,
        queue_bytes: usize,
    ) -> Arc<Fanout> {
        Fanout::new(
            FanoutOptions {
                deflate_level: None,
                join_leave: true,
                presence_batch: Duration::from_secs(3600),
                join_leave_max_subscribers,
                threads,
                queue_bytes,
            },
            Arc::new(Metrics::default()),
        )
        .expect("threads")
    }

    impl Fanout {
        /// Flushes every presence window now, and waits until the pushes are queued.
        fn flush_presence(&self) {
            self.flush_presence_queued();
            self.barrier();
        }

        /// Flushes every presence window now, into the queues (or dropped).
        fn flush_presence_queued(&self) {
            for (channel, batch) in self.presence.take_now() {
                self.send_presence(&channel, batch);
            }
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
        let mut batch = Vec::new();
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
            let mut batch = Vec::new();
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

    /// The outbox's publications' offsets, checking each delivery is the `Arc` in `first`
    /// at the same position (one encoding per publication, shared by every subscriber).
    fn offsets(outbox: &Outbox, first: &mut Vec<Arc<Delivery>>) -> Vec<u64> {
        let mut batch = Vec::new();
        let taken = outbox.take(&mut batch);
        outbox.release(taken);
        for (i, delivery) in batch.iter().enumerate() {
            match first.get(i) {
                Some(seen) => assert!(Arc::ptr_eq(seen, delivery), "one encoding, not a copy"),
                None => first.push(delivery.clone()),
            }
        }
        batch
            .iter()
            .map(|d| match d.kind {
                Kind::Publication(offset) => offset,
                ref other => panic!("not a publication: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_large_channel_is_spread_over_every_thread_each_in_order() {
        let fanout = fanout(3);
        let n = SPREAD_FROM + 300;
        let outboxes = subscribers(&fanout, "big", n).await;
        let local = fanout.registry.get("big").unwrap();
        let sizes: Vec<usize> = local
            .shards
            .iter()
            .map(|s| lock(&s.subscribers).len())
            .collect();
        // The first SPREAD_FROM at home, the rest by connection id: 100 more in each.
        let mut expected = vec![100; 3];
        expected[local.home] += SPREAD_FROM;
        assert_eq!(sizes, expected);
        for offset in 1..=100 {
            fanout.on_publication("big", &publication(offset, b"0"));
        }
        fanout.barrier();
        let mut first = Vec::new();
        for outbox in &outboxes {
            assert_eq!(offsets(outbox, &mut first), (1..=100).collect::<Vec<_>>());
        }
        assert_eq!(fanout.metrics.deliveries.load(Relaxed), 100 * n as u64);
        assert_eq!(
            fanout.metrics.fanout_queued.load(Relaxed),
            0,
            "shares counted down"
        );
    }

    #[tokio::test]
    async fn an_unsubscribe_leaves_whichever_shard_holds_it() {
        let fanout = fanout(2);
        let n = SPREAD_FROM + 100;
        let outboxes = subscribers(&fanout, "big", n).await;
        // One at home (among the first), one spread to each shard.
        let gone = [3, SPREAD_FROM as u64 + 10, SPREAD_FROM as u64 + 11];
        for conn in gone {
            assert!(!fanout.unsubscribe("big", conn));
            assert!(!fanout.unsubscribe("big", conn), "already gone");
        }
        assert_eq!(fanout.channel_counts(), [("big".to_owned(), n - 3)]);
        fanout.on_publication("big", &publication(1, b"1"));
        fanout.barrier();
        let mut first = Vec::new();
        for (conn, outbox) in outboxes.iter().enumerate() {
            let expected = if gone.contains(&(conn as u64)) {
                vec![]
            } else {
                vec![1]
            };
            assert_eq!(offsets(outbox, &mut first), expected, "connection {conn}");
        }
        for conn in 0..n as u64 {
            let last = fanout.unsubscribe("big", conn);
            assert_eq!(last, conn == n as u64 - 1, "connection {conn}");
        }
        assert!(
            fanout.registry.get("big").is_none(),
            "freed with its last subscriber"
        );
    }

    #[test]
    fn fan_out_threads_end_with_the_fanout() {
        let fanout = fanout(2);
        let registry = Arc::downgrade(&fanout.registry);
        drop(fanout);
        // Each thread holds the registry until it ran its Stop.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while registry.strong_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "fan-out threads still running after 10 s"
            );
            std::thread::yield_now();
        }
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
            let mut batch = Vec::new();
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

    #[tokio::test]
    async fn the_queues_bound_refuses_publishes_and_drops_presence_until_they_drain() {
        let cost = publication_cost("room", 100);
        let fanout = bounded(2, 1000, 3 * cost);
        let outboxes = subscribers(&fanout, "room", 2).await;
        let data: &'static [u8] = &[b'1'; 100];
        fanout.barrier();
        let hold = fanout.hold();
        for offset in 1..=3 {
            assert!(fanout.admit_publication("room", data.len()).is_ok());
            fanout.on_publication("room", &publication(offset, data));
        }
        let queued = fanout.metrics.fanout_queued_bytes.load(Relaxed);
        assert_eq!(queued, 3 * cost as i64, "charged what Job::cost says");
        let refusal = fanout.admit_publication("room", data.len()).unwrap_err();
        assert_eq!(refusal.code, crate::protocol::ErrorCode::Overloaded);
        assert_eq!(fanout.metrics.refusals("fanout_queue"), Some(1));
        // Any channel: the node's queues are full.
        assert!(fanout.admit_publication("elsewhere", 1).is_err());
        // A presence push does not fit either: dropped, counted, not queued.
        fanout.on_join("room", &client("a"));
        fanout.flush_presence_queued();
        assert_eq!(fanout.metrics.refusals("fanout_queue_presence"), Some(1));
        assert_eq!(fanout.metrics.fanout_queued.load(Relaxed), 3);
        drop(hold);
        fanout.barrier();
        assert_eq!(
            fanout.metrics.fanout_queued_bytes.load(Relaxed),
            0,
            "counted down"
        );
        assert_eq!(fanout.metrics.fanout_queued.load(Relaxed), 0);
        for outbox in &outboxes {
            let got = texts(outbox);
            assert_eq!(got.len(), 3, "the publications, no presence push: {got:?}");
        }
        assert!(
            fanout.admit_publication("room", data.len()).is_ok(),
            "room again"
        );
    }

    #[tokio::test]
    async fn each_job_is_charged_what_it_holds() {
        let fanout = fanout(1);
        let _outboxes = subscribers(&fanout, "big", 1).await;
        let local = fanout.registry.get("big").unwrap();
        let job = size_of::<Job>();
        let publication = Job::Publication("big".into(), publication(1, b"12345"));
        assert_eq!(publication.cost(), job + 3 + 5);
        assert_eq!(
            publication.cost(),
            publication_cost("big", 5),
            "admission charges the same"
        );
        // A share: the frame's payload and the longest frame head, for each share queued.
        let text = r#"{"op":"pub","channel":"big","offset":1,"data":12345}"#;
        let delivery = Arc::new(Delivery {
            channel: local.id,
            kind: Kind::Publication(1),
            prepared: PreparedMessage::new(Message::text(text)),
        });
        assert_eq!(Job::Share(local, delivery).cost(), job + text.len() + 14);
        let mut batch = PresenceBatch::default();
        batch.joins.push(client("ab"));
        let presence = Job::Presence("big".into(), batch);
        assert_eq!(presence.cost(), job + 3 + size_of::<ClientInfo>() + 2 + 1);
        let (tx, rx) = mpsc::channel();
        assert_eq!(Job::Hold(tx, rx).cost(), 0, "not an event");
        assert_eq!(Job::Stop.cost(), 0);
    }

    #[tokio::test]
    async fn inline_fan_out_has_no_queue_to_bound() {
        let fanout = bounded(0, 1000, 1);
        let _outboxes = subscribers(&fanout, "room", 1).await;
        assert!(fanout.admit_publication("room", 1000).is_ok());
        assert_eq!(fanout.metrics.refusals("fanout_queue"), Some(0));
    }

    #[test]
    fn channels_hash_the_same_way_everywhere() {
        // Pinned: a change would move channels between threads (harmless) but also shows the
        // hash is not seeded per process.
        assert_eq!(channel_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(channel_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
