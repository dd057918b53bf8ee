//! Fan-out: the node's local subscribers per channel, and each connection's bounded outbox.
//!
//! ```text
//!  broker ──on_publication──▶ Fanout ──(encode once: PreparedMessage)──▶ Arc<Delivery>
//!                                 │ for each local subscriber: Outbox::push (no await)
//!                                 ▼
//!   Outbox (per connection): VecDeque<Arc<Delivery>> + byte count, bound = queue_bytes
//!                                 │ connection task drains it all at once,
//!                                 ▼ feeds every frame to the socket, flushes once
//!                             WebSocket
//! ```
//!
//! A publication is serialized and framed once; each subscriber's queue gets a clone of one
//! `Arc`, and each socket gets the same payload `Bytes`. Publishing never waits for a
//! socket: a queue that would grow past its bound marks its connection as a slow consumer
//! (closed with 1013 by its task) and drops what it held.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use duplex::{Message, PreparedMessage, Utf8Bytes};
use tokio::sync::OnceCell;

use crate::broker::{Broker, BrokerError, BrokerHandler, ClientInfo, Publication};
use crate::json;
use crate::metrics::Metrics;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent between statements; a panic elsewhere must not wedge
    // every publisher.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One push, encoded once and shared by every subscriber's queue.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The [`LocalChannel::id`] it was published on.
    pub(crate) channel: u64,
    /// The publication's offset; 0 for presence events (never filtered).
    pub(crate) offset: u64,
    /// The frame.
    pub(crate) prepared: PreparedMessage,
}

impl Delivery {
    fn cost(&self) -> usize {
        self.prepared.wire_len()
    }
}

/// Why a connection's outbox was closed: the connection task closes the WebSocket with the
/// matching code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// The queue overflowed (1013).
    SlowConsumer,
    /// The hub is shutting down (1001).
    Shutdown,
}

/// A connection's outbound queue, bounded in bytes.
///
/// Publishers push without waiting; the connection task is woken through one registered
/// waker (no per-wake-up registration in a waiter list), when the queue goes from empty to not
/// empty and when the outbox is closed.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    limit: usize,
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Arc<Delivery>>,
    /// Bytes in `queue`.
    queued: usize,
    /// Bytes taken by the connection task and not yet handed to the socket.
    taken: usize,
    closed: Option<Closing>,
    waker: Option<Waker>,
}

impl OutboxState {
    fn register(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }
}

/// What the connection task should do next about its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxEvent {
    /// Something is queued: take it.
    Ready,
    /// Close the connection.
    Closed(Closing),
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            limit,
        }
    }

    /// Queues `delivery`; never waits. Over the bound, the outbox closes as a slow consumer and
    /// drops what it held.
    fn push(&self, delivery: &Arc<Delivery>, metrics: &Metrics) {
        let cost = delivery.cost();
        let mut state = lock(&self.state);
        if state.closed.is_some() {
            drop(state);
            metrics.dropped.fetch_add(1, Relaxed);
            return;
        }
        if state.queued + state.taken + cost > self.limit {
            state.closed = Some(Closing::SlowConsumer);
            let dropped = state.queue.len() + 1;
            // Free the memory now; the connection is closing.
            state.queue = VecDeque::new();
            state.queued = 0;
            let waker = state.waker.take();
            drop(state);
            metrics.dropped.fetch_add(dropped as u64, Relaxed);
            metrics.slow_consumers.fetch_add(1, Relaxed);
            if let Some(waker) = waker {
                waker.wake();
            }
            return;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(delivery.clone());
        state.queued += cost;
        if was_empty {
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Closes the outbox (first reason wins) and wakes the connection task.
    pub(crate) fn close(&self, why: Closing) {
        let mut state = lock(&self.state);
        state.closed.get_or_insert(why);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ready when something is queued or the outbox was closed; otherwise registers the task.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<OutboxEvent> {
        let mut state = lock(&self.state);
        if let Some(why) = state.closed {
            return Poll::Ready(OutboxEvent::Closed(why));
        }
        if !state.queue.is_empty() {
            return Poll::Ready(OutboxEvent::Ready);
        }
        state.register(cx.waker());
        Poll::Pending
    }

    /// Ready once the outbox was closed; otherwise registers the task.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<Closing> {
        let mut state = lock(&self.state);
        if let Some(why) = state.closed {
            return Poll::Ready(why);
        }
        state.register(cx.waker());
        Poll::Pending
    }

    /// Moves everything queued into `batch` (empty, keeping its capacity) and returns its cost,
    /// which stays counted against the bound until [`Outbox::release`].
    pub(crate) fn take(&self, batch: &mut VecDeque<Arc<Delivery>>) -> usize {
        debug_assert!(batch.is_empty());
        let mut state = lock(&self.state);
        std::mem::swap(&mut state.queue, batch);
        let taken = std::mem::take(&mut state.queued);
        state.taken += taken;
        taken
    }

    /// The taken bytes were handed to the socket.
    pub(crate) fn release(&self, bytes: usize) {
        let mut state = lock(&self.state);
        state.taken = state.taken.saturating_sub(bytes);
    }
}

/// A subscriber of a [`LocalChannel`].
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub(crate) conn: u64,
    pub(crate) outbox: Arc<Outbox>,
    /// Takes the once-compressed frame (permessage-deflate with server_no_context_takeover).
    pub(crate) shared_deflate: bool,
}

/// The node's subscribers of one channel.
#[derive(Debug)]
pub(crate) struct LocalChannel {
    pub(crate) id: u64,
    subscribers: Mutex<Subscribers>,
    /// Set once the broker confirmed the node's subscription.
    broker_subscribed: OnceCell<()>,
}

#[derive(Debug, Default)]
struct Subscribers {
    list: Vec<Subscriber>,
    shared_deflate: usize,
}

/// How publications are compressed for fan-out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FanoutOptions {
    /// zlib level for the shared compressed frame, when any subscriber can take it.
    pub(crate) deflate_level: Option<u32>,
    /// Push join/leave events.
    pub(crate) join_leave: bool,
}

/// The node's registry of local subscriptions and the [`BrokerHandler`] that fans out.
#[derive(Debug)]
pub(crate) struct Fanout {
    channels: RwLock<HashMap<Box<str>, Arc<LocalChannel>>>,
    next_id: AtomicU64,
    options: FanoutOptions,
    pub(crate) metrics: Arc<Metrics>,
}

impl Fanout {
    pub(crate) fn new(options: FanoutOptions, metrics: Arc<Metrics>) -> Fanout {
        Fanout {
            channels: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            options,
            metrics,
        }
    }

    fn get(&self, channel: &str) -> Option<Arc<LocalChannel>> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .cloned()
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
                .channels
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let local = channels.entry(channel.into()).or_insert_with(|| {
                Arc::new(LocalChannel {
                    id: self.next_id.fetch_add(1, Relaxed),
                    subscribers: Mutex::new(Subscribers::default()),
                    broker_subscribed: OnceCell::new(),
                })
            });
            let mut subs = lock(&local.subscribers);
            subs.shared_deflate += usize::from(subscriber.shared_deflate);
            subs.list.push(subscriber.clone());
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

    /// Removes connection `conn` from `channel`. Returns true when it was the channel's last
    /// local subscriber (the caller then unsubscribes the node from the broker).
    pub(crate) fn unsubscribe(&self, channel: &str, conn: u64) -> bool {
        let mut channels = self
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
        let removed = subs.list.swap_remove(i);
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
        let channels = self.channels.read().unwrap_or_else(PoisonError::into_inner);
        let mut counts: Vec<(String, usize)> = channels
            .iter()
            .map(|(name, local)| (name.to_string(), lock(&local.subscribers).list.len()))
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort();
        counts
    }

    /// Encodes one push for `channel` and queues it to every local subscriber.
    fn fan_out(&self, channel: &str, offset: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(local) = self.get(channel) else {
            return;
        };
        let subs = lock(&local.subscribers);
        if subs.list.is_empty() {
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
            Some(level) if subs.shared_deflate > 0 => PreparedMessage::with_deflate(message, level),
            _ => PreparedMessage::new(message),
        };
        let delivery = Arc::new(Delivery {
            channel: local.id,
            offset,
            prepared,
        });
        for subscriber in &subs.list {
            subscriber.outbox.push(&delivery, &self.metrics);
        }
        let n = subs.list.len();
        drop(subs);
        self.metrics.observe_fanout(start.elapsed(), n);
    }
}

impl BrokerHandler for Fanout {
    fn on_publication(&self, channel: &str, publication: &Publication) {
        self.fan_out(channel, publication.offset, |out| {
            json::push_publication(out, channel, publication)
        });
    }

    fn on_join(&self, channel: &str, client: &ClientInfo) {
        if self.options.join_leave {
            self.fan_out(channel, 0, |out| {
                json::push_presence(out, "join", channel, client)
            });
        }
    }

    fn on_leave(&self, channel: &str, client: &ClientInfo) {
        if self.options.join_leave {
            self.fan_out(channel, 0, |out| {
                json::push_presence(out, "leave", channel, client)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn fanout() -> Fanout {
        Fanout::new(
            FanoutOptions {
                deflate_level: None,
                join_leave: true,
            },
            Arc::new(Metrics::default()),
        )
    }

    fn publication(offset: u64, data: &'static [u8]) -> Publication {
        Publication {
            offset,
            data: Bytes::from_static(data),
        }
    }

    #[tokio::test]
    async fn one_encoding_is_shared_by_every_subscriber() {
        let fanout = fanout();
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        for (conn, outbox) in outboxes.iter().enumerate() {
            let subscriber = Subscriber {
                conn: conn as u64,
                outbox: outbox.clone(),
                shared_deflate: false,
            };
            fanout
                .subscribe("chat", subscriber, &crate::MemoryBroker::new(0, None))
                .await
                .unwrap();
        }
        fanout.on_publication("chat", &publication(1, br#"{"t":"hi"}"#));
        fanout.on_publication("other", &publication(1, b"1"));
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
    }

    #[test]
    fn overflow_drops_and_signals_once() {
        let metrics = Metrics::default();
        let outbox = Outbox::new(100);
        let delivery = Arc::new(Delivery {
            channel: 1,
            offset: 1,
            prepared: PreparedMessage::new(Message::text("x".repeat(40))),
        });
        outbox.push(&delivery, &metrics);
        outbox.push(&delivery, &metrics);
        assert_eq!(metrics.slow_consumers.load(Relaxed), 0);
        outbox.push(&delivery, &metrics);
        assert_eq!(metrics.slow_consumers.load(Relaxed), 1);
        assert_eq!(metrics.dropped.load(Relaxed), 3);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            outbox.poll_event(&mut cx),
            Poll::Ready(OutboxEvent::Closed(Closing::SlowConsumer))
        );
        outbox.close(Closing::Shutdown);
        assert_eq!(
            outbox.poll_closed(&mut cx),
            Poll::Ready(Closing::SlowConsumer)
        );
        outbox.push(&delivery, &metrics);
        assert_eq!(metrics.slow_consumers.load(Relaxed), 1);
        assert_eq!(metrics.dropped.load(Relaxed), 4);
    }

    #[test]
    fn taken_bytes_count_until_released() {
        let metrics = Metrics::default();
        let outbox = Outbox::new(100);
        let delivery = Arc::new(Delivery {
            channel: 1,
            offset: 1,
            prepared: PreparedMessage::new(Message::text("x".repeat(40))),
        });
        outbox.push(&delivery, &metrics);
        let mut batch = VecDeque::new();
        let taken = outbox.take(&mut batch);
        assert_eq!(taken, 42);
        outbox.push(&delivery, &metrics);
        outbox.push(&delivery, &metrics);
        assert_eq!(metrics.slow_consumers.load(Relaxed), 1, "still counted");
        let outbox = Outbox::new(100);
        outbox.push(&delivery, &metrics);
        batch.clear();
        let taken = outbox.take(&mut batch);
        outbox.release(taken);
        outbox.push(&delivery, &metrics);
        outbox.push(&delivery, &metrics);
        assert_eq!(metrics.slow_consumers.load(Relaxed), 1, "released");
    }
}
