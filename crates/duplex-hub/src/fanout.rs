//! Fan-out: the node's local subscribers per channel.
//!
//! ```text
//!  broker ──on_publication──▶ Fanout ──(encode once: PreparedMessage)──▶ Arc<Delivery>
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use duplex::{Message, PreparedMessage, Utf8Bytes};
use tokio::sync::OnceCell;

use crate::broker::{Broker, BrokerError, BrokerHandler, ClientInfo, Publication, StreamPosition};
use crate::json;
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox, Tally};

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
///   (the broker calls `on_publication` one at a time per channel, but presence events come
///   from other tasks). Nothing else takes it.
#[derive(Debug)]
pub(crate) struct LocalChannel {
    pub(crate) id: u64,
    subscribers: Mutex<Subscribers>,
    order: Mutex<()>,
    /// Set once the broker confirmed the node's subscription.
    broker_subscribed: OnceCell<()>,
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
                    order: Mutex::new(()),
                    broker_subscribed: OnceCell::new(),
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

    /// Removes connection `conn` from `channel` and marks its subscription as left, so that a
    /// fan-out already running on an older snapshot of the subscribers skips it from the
    /// caller's next [`Outbox::forget_channel`] on (see there). Returns true when it was the
    /// channel's last local subscriber (the caller then unsubscribes the node from the broker).
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
        // The channel's fan-outs one at a time, each to every subscriber: all of them see the
        // channel's pushes in the same order. Subscribes and unsubscribes do not take this
        // lock, only `subscribers` for a moment.
        let order = lock(&local.order);
        // The snapshot: who gets this push. Taken after the publication reached history (the
        // broker stores before it calls `on_publication`) and in the broker's offset order, so
        // for a subscribe (register, then read history, then filter offsets <= the top read):
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
            offset,
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

    fn on_reset(&self, channel: &str, position: &StreamPosition) {
        self.fan_out(channel, 0, |out| json::push_reset(out, channel, position));
    }

    fn on_gap(&self, channel: &str, first: u64, last: u64) {
        self.fan_out(channel, 0, |out| {
            json::push_gap(out, channel, None, first, last)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::VecDeque;

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
        let outboxes: Vec<Arc<Outbox>> = (0..3)
            .map(|_| Arc::new(Outbox::new(1 << 20, None, None)))
            .collect();
        for (conn, outbox) in outboxes.iter().enumerate() {
            let subscriber = Subscriber::new(conn as u64, outbox.clone(), false);
            fanout
                .subscribe(
                    "chat",
                    subscriber,
                    &crate::memory::MemoryBroker::new(0, None),
                )
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
}
