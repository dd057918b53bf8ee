//! The in-memory broker: one process, history in a ring per channel, every ring under one
//! byte budget, channels capped in number and freed when nothing is left in them.
//!
//! What it may hold is bounded: see [`MemoryBroker`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::broker::{
    BoxFuture, Broker, BrokerError, BrokerHandler, ClientInfo, History, HistoryQuery, Publication,
    StreamPosition,
};
use crate::metrics::{Metrics, Reason};

/// See [`MemoryBroker::PER_PUBLICATION`].
const PER_PUBLICATION: usize = MemoryBroker::PER_PUBLICATION;

/// Slots of removed-channel generations (see [`MemoryBroker`]): 4 KiB.
const GENERATIONS: usize = 1024;

/// What a [`MemoryBroker`] may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Publications kept per channel (0: none).
    pub history_size: usize,
    /// How long a publication stays in history; `None`: until pushed out.
    pub history_ttl: Option<Duration>,
    /// Bytes all channels' history may hold together, data and
    /// [`PER_PUBLICATION`](MemoryBroker::PER_PUBLICATION) each [default: 256 MiB].
    pub history_bytes: usize,
    /// Most channels in memory at once [default: 100,000].
    pub max_channels: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            history_size: 100,
            history_ttl: None,
            history_bytes: 256 << 20,
            max_channels: 100_000,
        }
    }
}

/// The default broker: offsets, history and presence in this process's memory.
///
/// The epoch is random per broker (so per hub process): a client that recovers with the epoch
/// of a previous process is told it cannot (`recovered: false`). The publishing call hands
/// each publication to the node's handler under the channel's lock, right after storing it:
/// one at a time and in offset order with nothing to wait for (the handler only queues it for
/// the node's fan-out threads, see the [contract](crate::broker)). Presence events go the same
/// way, so they are ordered with the channel's publications. What it may hold is bounded by
/// [`MemoryLimits`] (issue 12: one anonymous client grew history by 113 MiB in 0.7 s, and
/// 50,000 subscribe+unsubscribe of new names left ~780 B each):
///
/// - History bytes: every stored publication is charged its data plus
///   [`PER_PUBLICATION`](MemoryBroker::PER_PUBLICATION) bytes of bookkeeping. Past
///   [`MemoryLimits::history_bytes`] the oldest publications of the whole broker (in store
///   order, whatever their channel) are dropped first; a channel's `earliest` moves past
///   them, so recovery says "cannot recover" instead of leaving a gap.
/// - Expiry: with a TTL, publications older than it go from the front of the same store
///   order on every publish and history read, so quiet channels give their memory back too.
/// - Channels: at most [`MemoryLimits::max_channels`]; creating one more (a publish to, or a
///   subscribe to, a new name) fails with [`BrokerError::Full`]. A channel nobody is
///   subscribed to, in nobody's presence and with no history is removed from memory.
///
/// A removed channel's offsets cannot go on from where they were (nothing remembers them),
/// so a channel that had publications comes back in a new epoch: a client holding the old
/// epoch is told it cannot recover, never handed offsets that mean something else now. The
/// epoch of a new channel is the broker's, unless a channel hashing to the same one of
/// 1,024 slots was removed with publications before: then the broker's epoch with
/// that slot's generation (`EPOCH-N`). Removing a channel that never had a publication
/// bumps nothing: it comes back in its slot's current generation, usually the epoch it had
/// (if another channel of its slot was removed with publications meanwhile, a client of the
/// old epoch is told it cannot recover although nothing was lost: a reload, never a wrong
/// recovery).
pub struct MemoryBroker {
    epoch: Arc<str>,
    limits: MemoryLimits,
    channels: Mutex<Channels>,
    /// Every publication in history, in store order (the budget's and the TTL's eviction
    /// order). May hold entries already gone from their ring (stale), compacted when they
    /// outnumber the live ones.
    order: Mutex<VecDeque<Stored>>,
    /// Bytes charged for what the rings hold.
    history_bytes: AtomicUsize,
    /// Publications the rings hold.
    live: AtomicUsize,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    metrics: Arc<Metrics>,
}

struct Channels {
    map: HashMap<Arc<str>, Arc<Slot>>,
    /// Per hash slot: how many channels with publications were removed (the epoch suffix).
    generations: Box<[u32]>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("epoch", &self.epoch)
            .field("limits", &self.limits)
            .field("channels", &lock(&self.channels).map.len())
            .field("history_bytes", &self.history_bytes.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// One channel: its state behind one lock (held to assign an offset, store and hand the
/// publication to the handler; to read history; for presence), and its oldest offset held,
/// readable without the lock (to tell stale [`Stored`] entries).
struct Slot {
    /// The channel's name (shared with the map's key).
    name: Arc<str>,
    state: Mutex<Channel>,
    earliest: AtomicU64,
}

struct Channel {
    epoch: Arc<str>,
    top: u64,
    history: HistoryRing,
    /// Client id to user (a `ClientInfo` as value would hold the id twice: 16 bytes more
    /// for every connection in a channel).
    presence: BTreeMap<Arc<str>, Arc<str>>,
    /// Node subscriptions ([`Broker::subscribe`] minus [`Broker::unsubscribe`]).
    subscribed: usize,
    /// Removed from the map: whoever locked it after that looks the name up again.
    removed: bool,
}

impl Channel {
    fn unused(&self) -> bool {
        self.subscribed == 0 && self.presence.is_empty() && self.history.is_empty()
    }
}

/// A publication in the store order.
struct Stored {
    slot: Arc<Slot>,
    offset: u64,
    at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks in a way that leaves the data inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// FNV-1a, for the generation slot of a name.
fn slot_of(name: &str) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % GENERATIONS as u64) as usize
}

impl MemoryBroker {
    /// Bytes of bookkeeping charged per stored publication on top of its data: its ring entry
    /// (time, offset, `Bytes` handle: 56), its entry in the store order (32, twice that while
    /// stale entries wait for compaction), the data's allocation header (about 16).
    pub const PER_PUBLICATION: usize = 128;

    /// A broker keeping the last `history_size` publications per channel, each for at most
    /// `history_ttl`, under the default budgets of [`MemoryLimits`].
    pub fn new(history_size: usize, history_ttl: Option<Duration>) -> MemoryBroker {
        MemoryBroker::with_limits(MemoryLimits {
            history_size,
            history_ttl,
            ..MemoryLimits::default()
        })
    }

    /// A broker holding at most what `limits` allow.
    pub fn with_limits(limits: MemoryLimits) -> MemoryBroker {
        MemoryBroker {
            epoch: crate::ids::epoch().into(),
            limits,
            channels: Mutex::new(Channels {
                map: HashMap::new(),
                generations: vec![0; GENERATIONS].into_boxed_slice(),
            }),
            order: Mutex::new(VecDeque::new()),
            history_bytes: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            handler: OnceLock::new(),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Counts into `metrics` (the hub's) instead of a private set: channels, history bytes,
    /// refusals.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> MemoryBroker {
        self.metrics = metrics;
        self
    }

    /// This broker's epoch (that of its channels, until one is removed with publications: see
    /// [`MemoryBroker`]).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Channels in memory.
    pub fn channel_count(&self) -> usize {
        lock(&self.channels).map.len()
    }

    /// Bytes charged for the history held now (data plus
    /// [`PER_PUBLICATION`](MemoryBroker::PER_PUBLICATION) each).
    pub fn history_bytes(&self) -> usize {
        self.history_bytes.load(Relaxed)
    }

    fn epoch_for(&self, generation: u32) -> Arc<str> {
        if generation == 0 {
            self.epoch.clone()
        } else {
            format!("{}-{generation}", self.epoch).into()
        }
    }

    /// The slot of `name`, created if `create` (and the cap allows it).
    fn slot(&self, name: &str, create: bool) -> Result<Option<Arc<Slot>>, BrokerError> {
        let mut channels = lock(&self.channels);
        if let Some(slot) = channels.map.get(name) {
            return Ok(Some(slot.clone()));
        }
        if !create {
            return Ok(None);
        }
        if channels.map.len() >= self.limits.max_channels {
            self.metrics.refused(Reason::ChannelLimit);
            return Err(BrokerError::Full(format!(
                "too many channels (limit {}); try again later",
                self.limits.max_channels
            )));
        }
        let epoch = self.epoch_for(channels.generations[slot_of(name)]);
        let name: Arc<str> = name.into();
        let slot = Arc::new(Slot {
            name: name.clone(),
            state: Mutex::new(Channel {
                epoch,
                top: 0,
                history: HistoryRing::new(self.limits.history_size, self.limits.history_ttl),
                presence: BTreeMap::new(),
                subscribed: 0,
                removed: false,
            }),
            earliest: AtomicU64::new(1),
        });
        channels.map.insert(name, slot.clone());
        self.metrics.channels.fetch_add(1, Relaxed);
        Ok(Some(slot))
    }

    /// Runs `f` on channel `name` under its lock (created first if `create`): `Ok(None)` if
    /// it does not exist and `create` is false. Then removes the channel if `f` left it
    /// unused.
    fn with_channel<R>(
        &self,
        name: &str,
        create: bool,
        mut f: impl FnMut(&mut Channel, &Arc<Slot>) -> R,
    ) -> Result<Option<R>, BrokerError> {
        loop {
            let Some(slot) = self.slot(name, create)? else {
                return Ok(None);
            };
            let mut channel = lock(&slot.state);
            if channel.removed {
                // Removed between the lookup and the lock: look again.
                continue;
            }
            let result = f(&mut channel, &slot);
            let unused = channel.unused();
            drop(channel);
            if unused {
                self.remove_if_unused(&slot);
            }
            return Ok(Some(result));
        }
    }

    /// Removes `slot`'s channel from memory if it still is in the map and unused (map lock,
    /// then channel lock: the order every path takes them in).
    fn remove_if_unused(&self, slot: &Arc<Slot>) {
        let name = &*slot.name;
        let mut channels = lock(&self.channels);
        if !channels.map.get(name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        let mut channel = lock(&slot.state);
        if !channel.unused() {
            return;
        }
        channel.removed = true;
        if channel.top > 0 {
            // Its offsets restart: a new epoch for whoever comes back (see `MemoryBroker`).
            let generation = &mut channels.generations[slot_of(name)];
            *generation = generation.wrapping_add(1).max(1);
        }
        drop(channel);
        channels.map.remove(name);
        self.metrics.channels.fetch_sub(1, Relaxed);
        // Give the table's memory back once it is mostly empty.
        let capacity = channels.map.capacity();
        if capacity > 1024 && channels.map.len() < capacity / 4 {
            channels.map.shrink_to(capacity / 2);
        }
    }

    /// Accounts for what a ring dropped.
    fn dropped(&self, removed: Removed) {
        if removed.entries > 0 {
            self.history_bytes.fetch_sub(removed.bytes, Relaxed);
            self.live.fetch_sub(removed.entries, Relaxed);
            self.metrics
                .history_bytes
                .fetch_sub(removed.bytes as i64, Relaxed);
        }
    }

    fn publish_now(&self, channel: &str, data: Bytes) -> Result<StreamPosition, BrokerError> {
        let now = Instant::now();
        let stored = self.with_channel(channel, true, |locked, slot| {
            locked.top += 1;
            let publication = Publication {
                offset: locked.top,
                data: data.clone(),
            };
            // Stored in history before the handler hears of it: a subscriber the fan-out does
            // not reach (it registered after the fan-out took its snapshot) reads it in
            // history. Still under the lock: the next offset's publisher waits here, so the
            // handler sees the channel's publications one at a time and in offset order.
            let charge = charge(&publication);
            let (kept, removed) = locked.history.push(now, publication.clone());
            if kept {
                self.history_bytes.fetch_add(charge, Relaxed);
                self.live.fetch_add(1, Relaxed);
                self.metrics.history_bytes.fetch_add(charge as i64, Relaxed);
            }
            self.dropped(removed);
            slot.earliest
                .store(locked.history.earliest(locked.top), Relaxed);
            if let Some(handler) = self.handler.get() {
                handler.on_publication(channel, &publication);
            }
            (
                locked.epoch.clone(),
                publication.offset,
                kept.then(|| slot.clone()),
            )
        })?;
        let (epoch, offset, kept) =
            stored.ok_or_else(|| BrokerError::Failed(format!("channel {channel:?} vanished")))?;
        // One lock of the store order for the new entry and the budget's check.
        self.enforce(
            now,
            kept.map(|slot| Stored {
                slot,
                offset,
                at: now,
            }),
        );
        Ok(StreamPosition { epoch, offset })
    }

    /// Appends `stored` (a publication just stored) to the store order, then drops the oldest
    /// publications of the broker while history is over its byte budget, and those past the
    /// TTL; compacts the store order when stale entries outnumber live ones.
    fn enforce(&self, now: Instant, mut stored: Option<Stored>) {
        loop {
            let victim = {
                let mut order = lock(&self.order);
                if let Some(stored) = stored.take() {
                    order.push_back(stored);
                }
                let live = self.live.load(Relaxed);
                if order.len() > 2 * live + 64 {
                    order.retain(|s| s.offset >= s.slot.earliest.load(Relaxed));
                }
                let over = self.history_bytes.load(Relaxed) > self.limits.history_bytes;
                let Some(front) = order.front() else { return };
                let stale = front.offset < front.slot.earliest.load(Relaxed);
                let expired = self
                    .limits
                    .history_ttl
                    .is_some_and(|ttl| now.saturating_duration_since(front.at) >= ttl);
                if !(over || stale || expired) {
                    return;
                }
                let Some(front) = order.pop_front() else {
                    return;
                };
                if stale {
                    continue;
                }
                (front, over && !expired)
            };
            let (victim, by_budget) = victim;
            let mut channel = lock(&victim.slot.state);
            let removed = channel.history.evict_through(victim.offset);
            let evicted = removed.entries;
            self.dropped(removed);
            victim
                .slot
                .earliest
                .store(channel.history.earliest(channel.top), Relaxed);
            let unused = channel.unused() && !channel.removed;
            drop(channel);
            if by_budget && evicted > 0 {
                self.metrics
                    .refused_n(Reason::HistoryBudget, evicted as u64);
            }
            if unused {
                self.remove_if_unused(&victim.slot);
            }
        }
    }

    fn history_now(&self, channel: &str, query: HistoryQuery) -> History {
        let now = Instant::now();
        self.enforce(now, None);
        let read = self.with_channel(channel, false, |state, slot| {
            let removed = state.history.prune(now);
            self.dropped(removed);
            slot.earliest
                .store(state.history.earliest(state.top), Relaxed);
            History {
                position: StreamPosition {
                    epoch: state.epoch.clone(),
                    offset: state.top,
                },
                earliest: state.history.earliest(state.top),
                publications: state.history.query(query),
            }
        });
        match read {
            Ok(Some(history)) => history,
            // Not in memory: never published, or removed (then its next epoch).
            Ok(None) | Err(_) => {
                let generation = lock(&self.channels).generations[slot_of(channel)];
                History {
                    position: StreamPosition {
                        epoch: self.epoch_for(generation),
                        offset: 0,
                    },
                    earliest: 1,
                    publications: Vec::new(),
                }
            }
        }
    }

    // Presence events are handed to the handler under the channel lock too: ordered with the
    // channel's publications, and a connection's join before its leave.

    fn join_now(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError> {
        self.with_channel(channel, true, |locked, _| {
            locked
                .presence
                .insert(client.client.clone(), client.user.clone());
            if let Some(handler) = self.handler.get() {
                handler.on_join(channel, client);
            }
        })?;
        Ok(())
    }

    fn leave_now(&self, channel: &str, client: &ClientInfo) {
        let _ = self.with_channel(channel, false, |locked, _| {
            if locked.presence.remove(&client.client).is_some() {
                if let Some(handler) = self.handler.get() {
                    handler.on_leave(channel, client);
                }
            }
        });
    }

    fn presence_now(&self, channel: &str) -> Vec<ClientInfo> {
        self.with_channel(channel, false, |locked, _| {
            locked
                .presence
                .iter()
                .map(|(client, user)| ClientInfo {
                    client: client.clone(),
                    user: user.clone(),
                })
                .collect()
        })
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    fn subscribe_now(&self, channel: &str) -> Result<(), BrokerError> {
        self.with_channel(channel, true, |locked, _| locked.subscribed += 1)?;
        Ok(())
    }

    fn unsubscribe_now(&self, channel: &str) {
        let _ = self.with_channel(channel, false, |locked, _| {
            locked.subscribed = locked.subscribed.saturating_sub(1);
        });
    }
}

/// What a stored publication is charged against the history budget.
fn charge(publication: &Publication) -> usize {
    publication.data.len() + PER_PUBLICATION
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
        Box::pin(std::future::ready(self.publish_now(channel, data)))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.history_now(channel, query))))
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        // Every publication already reaches the handler; the count keeps the channel (its
        // epoch and offsets) in memory while the node has subscribers. Counted at the call,
        // not when polled: the memory broker's futures are ready at once.
        Box::pin(std::future::ready(self.subscribe_now(channel)))
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.unsubscribe_now(channel);
        Box::pin(std::future::ready(Ok(())))
    }

    fn join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(self.join_now(channel, client)))
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

/// Publications a ring dropped, and the bytes they were charged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) entries: usize,
    pub(crate) bytes: usize,
}

impl Removed {
    fn add(&mut self, publication: &Publication) {
        self.entries += 1;
        self.bytes += charge(publication);
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

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the next publication (its offset follows the last one's). Says whether it was
    /// kept (not with capacity 0) and what it pushed out.
    pub(crate) fn push(&mut self, now: Instant, publication: Publication) -> (bool, Removed) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|(_, last)| last.offset + 1 == publication.offset)
        );
        if self.capacity == 0 {
            return (false, Removed::default());
        }
        let mut removed = self.prune(now);
        if self.entries.len() == self.capacity {
            if let Some((_, p)) = self.entries.pop_front() {
                removed.add(&p);
            }
        }
        self.entries.push_back((now, publication));
        (true, removed)
    }

    /// Drops publications older than the TTL.
    pub(crate) fn prune(&mut self, now: Instant) -> Removed {
        let mut removed = Removed::default();
        let Some(ttl) = self.ttl else { return removed };
        while self
            .entries
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= ttl)
        {
            if let Some((_, p)) = self.entries.pop_front() {
                removed.add(&p);
            }
        }
        removed
    }

    /// Drops publications up to `offset` (the budget or the TTL took them).
    pub(crate) fn evict_through(&mut self, offset: u64) -> Removed {
        let mut removed = Removed::default();
        while self
            .entries
            .front()
            .is_some_and(|(_, p)| p.offset <= offset)
        {
            if let Some((_, p)) = self.entries.pop_front() {
                removed.add(&p);
            }
        }
        if self.entries.is_empty() && self.entries.capacity() > 16 {
            // An emptied ring of a quiet channel gives its buffer back.
            self.entries = VecDeque::new();
        }
        removed
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
        assert!(!ring.push(Instant::now(), publication(1)).0);
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
                        broker.publish_now("a", Bytes::from_static(b"1")).unwrap();
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        assert_eq!(*lock(&handler.offsets), (1..=1000).collect::<Vec<u64>>());
    }

    fn limits(history_size: usize, history_bytes: usize, max_channels: usize) -> MemoryLimits {
        MemoryLimits {
            history_size,
            history_ttl: None,
            history_bytes,
            max_channels,
        }
    }

    fn read(broker: &MemoryBroker, channel: &str, since: u64) -> History {
        broker.history_now(
            channel,
            HistoryQuery {
                since: Some(since),
                limit: usize::MAX,
            },
        )
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_publications_of_all_channels_first() {
        let each = 1000 + PER_PUBLICATION;
        let broker = MemoryBroker::with_limits(limits(100, 10 * each, 1000));
        let data = Bytes::from(vec![b'x'; 1000]);
        // a: 1..=6, then b: 1..=6: twelve publications, room for ten.
        for channel in ["a", "b"] {
            for _ in 0..6 {
                broker.publish_now(channel, data.clone()).unwrap();
            }
        }
        assert_eq!(broker.history_bytes(), 10 * each);
        assert_eq!(broker.metrics.history_bytes(), (10 * each) as i64);
        assert_eq!(broker.metrics.refusals("history_budget"), Some(2));
        // The two oldest (a's first two) went; b lost nothing.
        let a = read(&broker, "a", 0);
        assert_eq!(
            (a.earliest, offsets(&a.publications)),
            (3, vec![3, 4, 5, 6])
        );
        assert_eq!(read(&broker, "b", 0).earliest, 1);
        // Another publication to b evicts a's oldest, not b's.
        broker.publish_now("b", data.clone()).unwrap();
        assert_eq!(read(&broker, "a", 0).earliest, 4);
        assert_eq!(read(&broker, "b", 0).earliest, 1);
        assert!(broker.history_bytes() <= 10 * each);
        // Many channels: the total stays within the budget, and the store order does not grow
        // without bound with entries the rings already dropped.
        for i in 0..500 {
            broker.publish_now(&format!("c{i}"), data.clone()).unwrap();
        }
        assert!(broker.history_bytes() <= 10 * each);
        assert!(lock(&broker.order).len() <= 2 * broker.live.load(Relaxed) + 64);
        // Channels whose history went entirely (and nobody is subscribed) were freed.
        assert_eq!(
            broker.channel_count(),
            10,
            "one publication each left in ten channels"
        );
    }

    #[test]
    fn ring_capacity_evictions_keep_the_accounting_and_the_order_bounded() {
        let broker = MemoryBroker::with_limits(limits(3, 1 << 20, 10));
        for _ in 0..1000 {
            broker
                .publish_now("a", Bytes::from_static(b"12345"))
                .unwrap();
        }
        assert_eq!(broker.history_bytes(), 3 * (5 + PER_PUBLICATION));
        assert_eq!(broker.live.load(Relaxed), 3);
        assert!(lock(&broker.order).len() <= 2 * 3 + 64 + 1);
    }

    #[test]
    fn expiry_frees_quiet_channels_through_the_store_order() {
        let broker = MemoryBroker::with_limits(MemoryLimits {
            history_ttl: Some(Duration::from_secs(5)),
            ..limits(10, 1 << 20, 10)
        });
        let t0 = Instant::now();
        broker
            .publish_now("quiet", Bytes::from_static(b"1"))
            .unwrap();
        assert_eq!(broker.channel_count(), 1);
        broker.enforce(t0 + Duration::from_secs(10), None);
        assert_eq!(broker.channel_count(), 0, "expired and unused: freed");
        assert_eq!(broker.history_bytes(), 0);
    }

    #[test]
    fn unused_channels_are_freed_and_come_back_truthfully() {
        let broker = MemoryBroker::with_limits(limits(10, 1 << 20, 2));
        let client = ClientInfo {
            client: "c1".into(),
            user: "u".into(),
        };
        // Subscribe + join, leave + unsubscribe of many new names: nothing stays.
        for i in 0..5000 {
            let name = format!("n{i}");
            broker.subscribe_now(&name).unwrap();
            broker.join_now(&name, &client).unwrap();
            assert_eq!(broker.channel_count(), 1);
            broker.leave_now(&name, &client);
            broker.unsubscribe_now(&name);
        }
        assert_eq!(broker.channel_count(), 0);
        assert_eq!(broker.metrics.channels(), 0);
        // Node subscriptions are counted: calls for one channel may overlap (a subscriber
        // arriving while the last one leaves).
        broker.subscribe_now("o").unwrap();
        broker.subscribe_now("o").unwrap();
        broker.unsubscribe_now("o");
        assert_eq!(broker.channel_count(), 1, "one subscription left");
        broker.unsubscribe_now("o");
        broker.unsubscribe_now("o");
        assert_eq!(broker.channel_count(), 0);
        assert!(lock(&broker.channels).map.capacity() <= 1024 * 4);
        // A channel without publications comes back as it was: same epoch, offsets from 1.
        broker.subscribe_now("x").unwrap();
        assert_eq!(
            read(&broker, "x", 0).position.epoch.as_ref(),
            broker.epoch()
        );
        broker.unsubscribe_now("x");
        // One with publications comes back in a new epoch, so `since` the old one cannot
        // recover (its offsets restart).
        broker.subscribe_now("y").unwrap();
        let first = broker.publish_now("y", Bytes::from_static(b"1")).unwrap();
        assert_eq!(first.epoch.as_ref(), broker.epoch());
        let full = MemoryBroker::with_limits(limits(0, 1 << 20, 2));
        full.subscribe_now("y").unwrap();
        let kept = full.publish_now("y", Bytes::from_static(b"1")).unwrap();
        full.unsubscribe_now("y");
        assert_eq!(
            full.channel_count(),
            0,
            "no history (size 0), no subscription: freed"
        );
        let again = full.publish_now("y", Bytes::from_static(b"1")).unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, kept.epoch, "offsets restarted: a new epoch");
        let before = read(&full, "y", 0).position.epoch;
        assert_eq!(
            before,
            full.epoch_for(lock(&full.channels).generations[slot_of("y")])
        );
    }

    #[test]
    fn the_channel_cap_refuses_new_channels_only() {
        let broker = MemoryBroker::with_limits(limits(10, 1 << 20, 2));
        broker.publish_now("a", Bytes::from_static(b"1")).unwrap();
        broker.subscribe_now("b").unwrap();
        let refused = broker.publish_now("c", Bytes::from_static(b"1"));
        assert!(matches!(refused, Err(BrokerError::Full(_))), "{refused:?}");
        assert!(matches!(
            broker.subscribe_now("c"),
            Err(BrokerError::Full(_))
        ));
        assert_eq!(broker.metrics.refusals("channel_limit"), Some(2));
        // Existing channels work; history and presence of others do not create any.
        broker.publish_now("a", Bytes::from_static(b"2")).unwrap();
        broker.publish_now("b", Bytes::from_static(b"2")).unwrap();
        assert_eq!(read(&broker, "c", 0).position.offset, 0);
        assert!(broker.presence_now("c").is_empty());
        // Freeing one makes room.
        broker.unsubscribe_now("b");
        assert_eq!(broker.channel_count(), 2, "b keeps its history");
        let empty = MemoryBroker::with_limits(limits(10, 1 << 20, 1));
        empty.subscribe_now("b").unwrap();
        empty.unsubscribe_now("b");
        empty.subscribe_now("c").unwrap();
    }

    #[test]
    fn concurrent_publishers_keep_the_accounting_exact_under_the_budget() {
        let each = 100 + PER_PUBLICATION;
        let broker = Arc::new(MemoryBroker::with_limits(limits(50, 40 * each, 1000)));
        let publishers: Vec<_> = (0..4)
            .map(|t| {
                let broker = broker.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let channel = format!("t{t}-{}", i % 8);
                        broker
                            .publish_now(&channel, Bytes::from(vec![b'x'; 100]))
                            .unwrap();
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        // What the rings hold is exactly what is charged, and within the budget.
        let (mut entries, mut bytes) = (0, 0);
        for slot in lock(&broker.channels).map.values() {
            let channel = lock(&slot.state);
            let held = channel.history.query(HistoryQuery {
                since: Some(0),
                limit: usize::MAX,
            });
            // Consecutive up to the top: eviction only ever takes the oldest.
            if let Some(last) = held.last() {
                assert_eq!(last.offset, channel.top);
                assert_eq!(held[0].offset + held.len() as u64 - 1, channel.top);
            }
            assert_eq!(
                slot.earliest.load(Relaxed),
                channel.history.earliest(channel.top)
            );
            entries += held.len();
            bytes += held.iter().map(charge).sum::<usize>();
        }
        assert_eq!(broker.live.load(Relaxed), entries);
        assert_eq!(broker.history_bytes(), bytes);
        assert!(bytes <= 40 * each, "{bytes}");
        assert_eq!(broker.metrics.history_bytes(), bytes as i64);
    }

    #[test]
    fn epochs_differ_between_brokers() {
        assert_ne!(
            MemoryBroker::new(1, None).epoch(),
            MemoryBroker::new(1, None).epoch()
        );
    }
}
