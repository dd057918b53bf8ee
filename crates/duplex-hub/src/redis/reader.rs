//! The reader of one shard's pub/sub connection: hands each channel's publications to the node
//! in offset order, one at a time (all hand-offs happen on this task: that is the order).
//!
//! Per channel it keeps the epoch and the last offset it handed on. A publication in another
//! epoch is a reset ([`BrokerHandler::on_reset`]); a jump in offsets is filled from the stream
//! (XRANGE, by the history script) before the publication after it is handed on; what the
//! stream no longer holds is a gap ([`BrokerHandler::on_gap`]). When the connection is lost
//! (or a keepalive PING goes unanswered) it reconnects with backoff, subscribes to every
//! counted channel again, and catches each one up from its stream the same way.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Timeout;

use crate::broker::{BrokerHandler, HistoryQuery, Publication, StreamPosition};

use super::conn::backoff;
use super::frame::{self, Frame};
use super::keys;
use super::pubsub::{Event, PubSubShard};
use super::stream;
use super::subconn::{self, Message, Source};

/// The task that reads a shard's pub/sub connection and hands events to the node.
pub(crate) struct Reader {
    shard: Arc<PubSubShard>,
    events: mpsc::UnboundedReceiver<Event>,
    /// `None` while the connection is down.
    stream: Option<Source>,
    channels: HashMap<String, Tracked>,
    handler: Arc<dyn BrokerHandler>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("shard", &self.shard)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

/// A channel the reader delivers.
struct Tracked {
    generation: u64,
    /// Epoch and last offset handed on; `None` until the baseline arrives.
    at: Option<(Arc<str>, u64)>,
    /// Publications that arrived before the baseline, in order.
    pending: Vec<(Arc<str>, u64, Bytes)>,
    /// The epoch the channel left at its last reset: a message of it still in flight is
    /// stale (epochs are random: a stream never returns to one).
    left: Option<Arc<str>>,
    /// The connection was lost before the baseline arrived: catch up from it.
    catch_up: bool,
}

/// Where the answer to a keepalive PING arrives.
type Pong = oneshot::Receiver<Result<(), String>>;

/// How often the reader PINGs its pub/sub connection: a Redis that vanished without closing
/// the socket (a network partition) is noticed within this plus the timeout.
const KEEPALIVE: Duration = Duration::from_secs(5);

impl Reader {
    pub(super) fn new(
        shard: Arc<PubSubShard>,
        events: mpsc::UnboundedReceiver<Event>,
        stream: Source,
        handler: Arc<dyn BrokerHandler>,
    ) -> Reader {
        Reader {
            shard,
            events,
            stream: Some(stream),
            channels: HashMap::new(),
            handler,
        }
    }

    /// Runs until the task is aborted (when the broker is dropped).
    pub(crate) async fn run(mut self) {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The keepalive PING in flight: its PONG comes in on the connection this task reads,
        // so it is awaited beside the messages, never instead of them.
        let mut pong: Option<Pin<Box<Timeout<Pong>>>> = None;
        loop {
            let Some(stream) = self.stream.as_mut() else {
                pong = None;
                self.reconnect().await;
                continue;
            };
            tokio::select! {
                // Events first: a Track sent before SUBSCRIBE went out is seen before any
                // message of that channel.
                biased;
                event = self.events.recv() => match event {
                    Some(event) => self.event(event).await,
                    None => return,
                },
                message = stream.next() => match message {
                    Some(message) => self.message(&message).await,
                    None => self.lost().await,
                },
                answered = async {
                    match pong.as_mut() {
                        Some(pong) => pong.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if pong.is_some() => {
                    pong = None;
                    if !matches!(answered, Ok(Ok(Ok(())))) {
                        self.lost().await;
                    }
                },
                _ = keepalive.tick(), if pong.is_none() => {
                    // Busy with a (un)subscription: skip this round rather than wait for it.
                    let sink = self.shard.ops.try_lock().ok().and_then(|subs| subs.sink.clone());
                    if let Some(sink) = sink {
                        match sink.ping().await {
                            Ok(answer) => {
                                let timeout = self.shard.options.timeout;
                                pong = Some(Box::pin(tokio::time::timeout(timeout, answer)));
                            }
                            Err(_) => self.lost().await,
                        }
                    }
                }
            }
        }
    }

    async fn lost(&mut self) {
        tracing::warn!(
            "redis {}: pub/sub connection lost; reconnecting",
            self.shard.url
        );
        self.stream = None;
        self.shard.up.store(false, Relaxed);
        self.shard.ops.lock().await.sink = None;
    }

    /// Reconnects (with backoff), subscribes to every counted channel, and catches each one
    /// up from its stream.
    async fn reconnect(&mut self) {
        let shard = self.shard.clone();
        let mut attempt = 0;
        let mut early = Vec::new();
        loop {
            early.clear();
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
            let mut subs = shard.ops.lock().await;
            let connecting = subconn::connect(&shard.client, &shard.url, shard.options.timeout);
            let (sink, mut source) = match connecting.await {
                Ok(connection) => connection,
                Err(e) => {
                    if attempt == 1 || attempt % 20 == 0 {
                        tracing::warn!("{e}; retrying");
                    }
                    continue;
                }
            };
            let channels: Vec<String> = subs.counts.keys().map(|c| keys::pubsub(c)).collect();
            if !channels.is_empty() {
                // The confirmations arrive on `source`: read it meanwhile, keeping the
                // messages that come in between for after the catch-up.
                let subscribe = async {
                    let subscribe = sink.subscribe(&channels);
                    tokio::pin!(subscribe);
                    loop {
                        tokio::select! {
                            biased;
                            done = &mut subscribe => return done,
                            message = source.next() => match message {
                                Some(message) => early.push(message),
                                None => {
                                    return Err(crate::broker::BrokerError::Unavailable(
                                        "connection closed while resubscribing".to_owned(),
                                    ));
                                }
                            },
                        }
                    }
                };
                match tokio::time::timeout(shard.options.timeout, subscribe).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!("redis {}: resubscribing: {e}; retrying", shard.url);
                        continue;
                    }
                    Err(_) => {
                        tracing::warn!("redis {}: resubscribing timed out; retrying", shard.url);
                        continue;
                    }
                }
            }
            subs.sink = Some(sink);
            drop(subs);
            self.stream = Some(source);
            shard.up.store(true, Relaxed);
            shard.metrics.broker_reconnects.fetch_add(1, Relaxed);
            tracing::info!(
                "redis {}: pub/sub reconnected, {} channels resubscribed",
                shard.url,
                channels.len()
            );
            break;
        }
        // The table as the counts left it, then every channel caught up. If Redis restarted,
        // the command connection learns it from its next command: make that a PING, so the
        // catch-up reads go over a fresh connection.
        while let Ok(event) = self.events.try_recv() {
            self.event(event).await;
        }
        let conn = &self.shard.conn;
        if conn.query(&::redis::cmd("PING")).await.is_err() {
            conn.wait_up(shard.options.timeout * 3).await;
        }
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let Some(tracked) = self.channels.get_mut(&name) else {
                continue;
            };
            match tracked.at.clone() {
                Some((epoch, last)) => self.catch_up(&name, epoch, last, None).await,
                None => tracked.catch_up = true,
            }
        }
        for message in early {
            self.message(&message).await;
        }
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Track {
                channel,
                generation,
            } => {
                let tracked = Tracked {
                    generation,
                    at: None,
                    pending: Vec::new(),
                    left: None,
                    catch_up: false,
                };
                self.channels.insert(channel, tracked);
            }
            Event::Untrack {
                channel,
                generation,
            } => {
                if self
                    .channels
                    .get(&channel)
                    .is_some_and(|t| t.generation == generation)
                {
                    self.channels.remove(&channel);
                }
            }
            Event::Baseline {
                channel,
                generation,
                position,
            } => {
                let Some(tracked) = self.channels.get_mut(&channel) else {
                    return;
                };
                if tracked.generation != generation {
                    return;
                }
                tracked.at = Some((position.epoch.clone(), position.offset));
                let pending = std::mem::take(&mut tracked.pending);
                if std::mem::take(&mut tracked.catch_up) {
                    self.catch_up(&channel, position.epoch, position.offset, None)
                        .await;
                }
                for (epoch, offset, data) in pending {
                    self.publication(&channel, epoch, offset, data).await;
                }
            }
        }
    }

    async fn message(&mut self, message: &Message) {
        let Ok(name) = std::str::from_utf8(&message.channel) else {
            return; // not one of ours: ours are UTF-8
        };
        let Some(channel) = keys::channel_of_pubsub(name) else {
            return;
        };
        let Some(tracked) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(frame) = frame::decode(&message.payload) else {
            tracing::warn!("redis {}: unreadable message on {channel}", self.shard.url);
            return;
        };
        match frame {
            Frame::Publication {
                epoch,
                offset,
                data,
            } => {
                let data = message.payload.slice_ref(data);
                // The common case, with the one map lookup above and no allocation: the next
                // publication in the epoch this node holds (what `publication` would hand on
                // after its checks).
                let left = tracked.left.as_deref();
                if let Some((current, last)) = &mut tracked.at
                    && **current == *epoch
                    && offset.checked_sub(1) == Some(*last)
                    && left != Some(epoch)
                {
                    *last = offset;
                    self.handler
                        .on_publication(channel, &Publication { offset, data });
                    return;
                }
                if tracked.at.is_none() {
                    tracked.pending.push((epoch.into(), offset, data));
                    return;
                }
                let channel = channel.to_owned();
                self.publication(&channel, epoch.into(), offset, data).await;
            }
            Frame::Join(client) => self.handler.on_join(channel, &client),
            Frame::Leave(client) => self.handler.on_leave(channel, &client),
        }
    }

    /// One publication from pub/sub, for a channel with a baseline.
    async fn publication(&mut self, channel: &str, epoch: Arc<str>, offset: u64, data: Bytes) {
        let Some((current, last)) = self.channels.get(channel).and_then(|t| t.at.clone()) else {
            return;
        };
        let left = self.channels.get(channel).and_then(|t| t.left.clone());
        if left.is_some_and(|left| left == epoch) {
            return; // sent before the reset this node already handed on
        }
        if epoch != current {
            // The stream restarted: what came before this publication in the new epoch is
            // the subscribers' to reload (the reset push says so).
            let position = StreamPosition {
                epoch: epoch.clone(),
                offset: offset.saturating_sub(1),
            };
            self.reset(channel, position);
        } else if offset <= last {
            return; // covered by the subscribers' history read, or already filled
        } else if offset > last + 1 {
            self.catch_up(channel, epoch.clone(), last, Some(offset - 1))
                .await;
            let still = |t: &Tracked| t.at.as_ref().is_some_and(|(e, _)| *e == epoch);
            if !self.channels.get(channel).is_some_and(still) {
                return; // the channel was reset meanwhile, or untracked
            }
        }
        self.handler
            .on_publication(channel, &Publication { offset, data });
        if let Some(tracked) = self.channels.get_mut(channel) {
            tracked.at = Some((epoch, offset));
        }
    }

    /// Hands on what `channel` published after `last` in `epoch`, up to `upto` (`None`: up to
    /// the stream's top), read from the stream; what it no longer holds is a gap. A stream in
    /// another epoch is a reset to its top.
    async fn catch_up(&mut self, channel: &str, epoch: Arc<str>, last: u64, upto: Option<u64>) {
        let options = &self.shard.options;
        let want = upto.map_or(options.history_size, |upto| {
            usize::try_from(upto - last).unwrap_or(usize::MAX)
        });
        let query = HistoryQuery {
            since: Some(last),
            limit: want,
        };
        let history = match stream::history(&self.shard.conn, options, channel, query).await {
            Ok(history) => history,
            Err(e) => {
                tracing::warn!(
                    "redis {}: cannot fill {channel} after {last}: {e}",
                    self.shard.url
                );
                // With a publication after the hole at hand, the hole is lost; without one,
                // the next publication's jump retries the fill.
                if let Some(upto) = upto {
                    self.gap(channel, last + 1, upto);
                }
                return;
            }
        };
        if history.position.epoch != epoch {
            let position = history.position;
            tracing::info!(
                "redis {}: {channel} restarted in epoch {}",
                self.shard.url,
                position.epoch
            );
            self.reset(channel, position);
            return;
        }
        let upto = upto.unwrap_or(history.position.offset);
        let mut next = last + 1;
        for publication in history.publications {
            if publication.offset < next || publication.offset > upto {
                continue;
            }
            if publication.offset > next {
                self.gap(channel, next, publication.offset - 1);
            }
            self.handler.on_publication(channel, &publication);
            self.shard.metrics.broker_gaps_filled.fetch_add(1, Relaxed);
            next = publication.offset + 1;
        }
        if next <= upto {
            self.gap(channel, next, upto);
        }
        if let Some(tracked) = self.channels.get_mut(channel) {
            tracked.at = Some((epoch, upto.max(last)));
        }
    }

    /// The channel continues at `position`, in a new epoch.
    fn reset(&mut self, channel: &str, position: StreamPosition) {
        self.handler.on_reset(channel, &position);
        if let Some(tracked) = self.channels.get_mut(channel) {
            tracked.left = tracked.at.take().map(|(epoch, _)| epoch);
            tracked.at = Some((position.epoch, position.offset));
        }
    }

    fn gap(&self, channel: &str, first: u64, last: u64) {
        tracing::warn!(
            "redis {}: {channel} publications {first}..={last} are lost for this node",
            self.shard.url
        );
        self.shard
            .metrics
            .broker_gaps_lost
            .fetch_add(last - first + 1, Relaxed);
        self.handler.on_gap(channel, first, last);
    }
}
