//! One shard's pub/sub subscriptions: a dedicated connection shared by every channel of the
//! shard this node has local subscribers on, read by the shard's [`Reader`].
//!
//! Subscriptions are counted per channel ([`PubSubShard::subscribe`]/[`unsubscribe`]
//! (PubSubShard::unsubscribe)): Redis SUBSCRIBE for the first, UNSUBSCRIBE after the last.
//! After SUBSCRIBE is acknowledged the channel's position is read (the *baseline*): every
//! publication after it arrives on pub/sub; those up to it are in the history the node's
//! subscriber reads next, so the reader drops them. While the connection is down new
//! subscriptions fail fast with `Unavailable`; the reader reconnects and resubscribes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use ::redis::Client;
use tokio::sync::mpsc;

use crate::broker::{BrokerError, BrokerHandler, HistoryQuery, StreamPosition};
use crate::metrics::Metrics;

use super::Options;
use super::conn::Conn;
use super::keys;
use super::reader::Reader;
use super::stream;
use super::subconn::{self, Sink};

/// A shard's pub/sub side, shared by the broker's calls and the reader task.
pub(crate) struct PubSubShard {
    pub(super) url: Arc<str>,
    pub(super) client: Client,
    /// The shard's command connection: baselines and gap fills.
    pub(super) conn: Arc<Conn>,
    pub(super) options: Arc<Options>,
    pub(super) metrics: Arc<Metrics>,
    /// Serializes (un)subscriptions and resubscription after a reconnect, so SUBSCRIBE and
    /// UNSUBSCRIBE of a channel reach Redis in the order the counts changed.
    pub(super) ops: tokio::sync::Mutex<Subscriptions>,
    /// To the reader: which channels to track, and their baselines.
    events: mpsc::UnboundedSender<Event>,
    /// The pub/sub connection is up.
    pub(super) up: AtomicBool,
    next_generation: AtomicU64,
}

impl std::fmt::Debug for PubSubShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubShard")
            .field("url", &self.url)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

pub(super) struct Subscriptions {
    /// The current connection's sink; `None` while it is down.
    pub(super) sink: Option<Sink>,
    /// Local subscription count per channel, and the generation of its tracking.
    pub(super) counts: HashMap<String, (usize, u64)>,
}

/// What the broker's calls tell the reader. A generation tells one subscription of a channel
/// from the next one after an unsubscribe.
pub(super) enum Event {
    /// Deliver this channel from now on (sent before SUBSCRIBE goes out).
    Track { channel: String, generation: u64 },
    /// The channel's position right after SUBSCRIBE was acknowledged.
    Baseline {
        channel: String,
        generation: u64,
        position: StreamPosition,
    },
    /// Stop delivering this channel.
    Untrack { channel: String, generation: u64 },
}

impl PubSubShard {
    /// Opens the shard's pub/sub connection; the returned [`Reader`] must be run (spawned) to
    /// deliver anything.
    pub(crate) async fn connect(
        client: Client,
        url: Arc<str>,
        conn: Arc<Conn>,
        options: Arc<Options>,
        metrics: Arc<Metrics>,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<(Arc<PubSubShard>, Reader), BrokerError> {
        let (sink, source) = subconn::connect(&client, &url, options.timeout).await?;
        let (events, events_rx) = mpsc::unbounded_channel();
        let shard = Arc::new(PubSubShard {
            url,
            client,
            conn,
            options,
            metrics,
            ops: tokio::sync::Mutex::new(Subscriptions {
                sink: Some(sink),
                counts: HashMap::new(),
            }),
            events,
            up: AtomicBool::new(true),
            next_generation: AtomicU64::new(1),
        });
        let reader = Reader::new(shard.clone(), events_rx, source, handler);
        Ok((shard, reader))
    }

    /// Whether the pub/sub connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    fn send(&self, event: Event) {
        // The reader owns the receiver for as long as this shard lives (it holds an Arc);
        // after an abort at shutdown nothing needs the event any more.
        let _ = self.events.send(event);
    }

    /// Counts one more local subscription of `channel`; the first one subscribes in Redis and
    /// reads the baseline. Resolves once the channel's publications will reach the handler.
    ///
    /// Cancel-safe: the work runs on a task of its own (a caller giving up half-way must not
    /// leave Redis, the counts and the reader disagreeing), and a subscription whose caller
    /// gave up is counted down again once it completes.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: &str) -> Result<(), BrokerError> {
        let (shard, name) = (self.clone(), channel.to_owned());
        let mut pending = UndoIfAbandoned {
            shard: self.clone(),
            channel: channel.to_owned(),
            task: Some(tokio::spawn(
                async move { shard.subscribe_now(&name).await },
            )),
        };
        let result = match pending.task.as_mut() {
            Some(task) => task.await,
            None => return Err(BrokerError::Failed("redis subscribe: no task".to_owned())),
        };
        pending.task = None;
        result.unwrap_or_else(|e| Err(BrokerError::Failed(format!("redis subscribe task: {e}"))))
    }

    /// Counts one local subscription of `channel` less; after the last one, UNSUBSCRIBE. On a
    /// task of its own, as [`subscribe`](PubSubShard::subscribe).
    pub(crate) async fn unsubscribe(self: &Arc<Self>, channel: &str) -> Result<(), BrokerError> {
        let (shard, channel) = (self.clone(), channel.to_owned());
        tokio::spawn(async move { shard.unsubscribe_now(&channel).await })
            .await
            .unwrap_or_else(|e| Err(BrokerError::Failed(format!("redis unsubscribe task: {e}"))))
    }

    async fn subscribe_now(&self, channel: &str) -> Result<(), BrokerError> {
        let mut subs = self.ops.lock().await;
        if let Some((count, _)) = subs.counts.get_mut(channel) {
            *count += 1;
            return Ok(());
        }
        let Some(sink) = subs.sink.clone() else {
            return Err(BrokerError::Unavailable(format!(
                "redis {}: pub/sub connection down (reconnecting)",
                self.url
            )));
        };
        let generation = self.next_generation.fetch_add(1, Relaxed);
        self.send(Event::Track {
            channel: channel.to_owned(),
            generation,
        });
        let untrack = || {
            self.send(Event::Untrack {
                channel: channel.to_owned(),
                generation,
            })
        };
        let pubsub = keys::pubsub(channel);
        let subscribe = sink.subscribe(std::slice::from_ref(&pubsub));
        match tokio::time::timeout(self.options.timeout, subscribe).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                untrack();
                return Err(e);
            }
            Err(_) => {
                untrack();
                return Err(BrokerError::Unavailable(format!(
                    "redis {}: SUBSCRIBE not acknowledged within {:?}",
                    self.url, self.options.timeout
                )));
            }
        }
        let query = HistoryQuery {
            since: None,
            limit: 0,
        };
        let baseline = match stream::history(&self.conn, &self.options, channel, query).await {
            Ok(history) => history.position,
            Err(e) => {
                untrack();
                let unsubscribe = sink.unsubscribe(std::slice::from_ref(&pubsub));
                let _ = tokio::time::timeout(self.options.timeout, unsubscribe).await;
                return Err(e);
            }
        };
        self.send(Event::Baseline {
            channel: channel.to_owned(),
            generation,
            position: baseline,
        });
        subs.counts.insert(channel.to_owned(), (1, generation));
        Ok(())
    }

    async fn unsubscribe_now(&self, channel: &str) -> Result<(), BrokerError> {
        let mut subs = self.ops.lock().await;
        let Some((count, generation)) = subs.counts.get_mut(channel) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        let generation = *generation;
        subs.counts.remove(channel);
        self.send(Event::Untrack {
            channel: channel.to_owned(),
            generation,
        });
        if let Some(sink) = subs.sink.clone() {
            // Should it fail, the connection is going away, and the reconnect subscribes to
            // the counted channels only; until then the reader ignores the channel.
            let pubsub = [keys::pubsub(channel)];
            let unsubscribe = sink.unsubscribe(&pubsub);
            if let Ok(Err(e)) = tokio::time::timeout(self.options.timeout, unsubscribe).await {
                tracing::debug!("redis {}: UNSUBSCRIBE {channel}: {e}", self.url);
            }
        }
        Ok(())
    }
}

/// A subscription in progress whose caller may give up: if it is dropped before the
/// subscription task finished, the subscription is counted down again once it succeeds.
struct UndoIfAbandoned {
    shard: Arc<PubSubShard>,
    channel: String,
    task: Option<tokio::task::JoinHandle<Result<(), BrokerError>>>,
}

impl Drop for UndoIfAbandoned {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        // No runtime any more: nothing runs the broker either.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shard, channel) = (self.shard.clone(), std::mem::take(&mut self.channel));
        runtime.spawn(async move {
            if let Ok(Ok(())) = task.await {
                let _ = shard.unsubscribe_now(&channel).await;
            }
        });
    }
}
