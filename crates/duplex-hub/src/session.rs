//! One WebSocket connection: its commands, its subscriptions, and the task that finishes what
//! the fan-out could not write straight to the socket.
//!
//! Publishers write pushes to the socket themselves while nothing is queued ahead of them (see
//! `outbox.rs`); this task is woken only when a socket would block or took part of a frame. It
//! waits on two things at once: its outbox (something queued or partly written, or closed
//! because it overflowed or the hub is shutting down) and the next client message. A drained
//! outbox is fed to the socket frame by frame without flushing, then flushed once: many queued
//! pushes become one vectored write. While a command runs, direct writes are held and pushes
//! queue up, so a subscribe reply (with its recovered publications) always precedes the live
//! publications after it.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::Instant;

use duplex::{CloseCode, Message, State, WebSocket};

use crate::auth::Grants;
use crate::broker::{ClientInfo, HistoryQuery};
use crate::fanout::Subscriber;
use crate::ids;
use crate::json;
use crate::limit::Bucket;
use crate::metrics::{Reason, Transport};
use crate::outbox::{Closing, Delivery, Outbox, OutboxEvent, OutboxStream};
use crate::protocol::{Command, ErrorCode, Id, Publish, Refusal, Since};
use crate::state::HubState;

pub(crate) type Ws = WebSocket<OutboxStream>;

pub(crate) struct Session {
    conn: u64,
    info: ClientInfo,
    /// What the token allows; `None`: anything (no token secret). Boxed: most hubs run one
    /// way or the other, and inline the patterns would cost every connection 72 bytes.
    grants: Option<Box<Grants>>,
    outbox: Arc<Outbox>,
    /// Subscribed channels. Inserted before the node registration is awaited, so that a
    /// cancelled subscribe is still cleaned up.
    /// The value is the channel's `LocalChannel::id` once registered (0 before).
    subscriptions: Subscriptions,
    /// Publishes (rate and burst from the config, as for subscribes: not kept per
    /// connection).
    bucket: Bucket,
    /// Subscribes and unsubscribes (rate and burst from the config).
    subscribe_bucket: Bucket,
    hub: Arc<HubState>,
}

/// How the connection ends.
pub(crate) enum End {
    /// Close with this code and reason.
    Close(CloseCode, &'static str),
    /// The peer closed or the connection failed: nothing more to send.
    Gone,
}

const SLOW_CONSUMER: &str = "slow consumer: outbound queue full; reconnect and recover with since";

/// Runs the connection `ws`, whose stream writes through `outbox` (see [`OutboxStream::new`]
/// and [`OutboxStream::queued`]), accepted over `transport`. `guard` is dropped when it ends
/// (held here rather than by a wrapping future, which would store this one twice).
///
/// An async block rather than an `async fn`: an `async fn` moves each argument into a local
/// of its body, and the future then holds both (rustc does not overlap them), the `WebSocket`
/// twice. The block uses what it captured in place. Every idle connection is this future.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice (see above)"
)]
pub(crate) fn run(
    mut ws: Ws,
    outbox: Arc<Outbox>,
    hub: Arc<HubState>,
    grants: Grants,
    transport: Transport,
    guard: impl Send,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut session = Session::open(hub, outbox.clone(), grants, transport, true);
        let end = session.drive(&mut ws, &outbox).await;
        // Boxed: the end runs once, and its futures (leaving every channel, the close handshake)
        // would otherwise be part of every idle connection's task.
        Box::pin(session.finish(ws, end)).await;
        session.unregister();
        drop(guard);
    }
}

/// A connection's subscriptions: channel name and `LocalChannel::id`. A vector searched in
/// order rather than a map: most connections hold one or a few (a map's smallest table is
/// 148 bytes, this is 24 per entry), and `max_subscriptions` bounds the search.
#[derive(Default)]
struct Subscriptions(Vec<(Box<str>, u64)>);

impl Subscriptions {
    fn position(&self, channel: &str) -> Option<usize> {
        self.0.iter().position(|(name, _)| **name == *channel)
    }

    fn contains(&self, channel: &str) -> bool {
        self.position(channel).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds `channel` or updates its id.
    fn insert(&mut self, channel: &str, id: u64) {
        if let Some(i) = self.position(channel) {
            self.0[i].1 = id;
            return;
        }
        if self.0.capacity() == 0 {
            // The first subscription gets room for itself only (not the 4 a push reserves).
            self.0.reserve_exact(1);
        }
        self.0.push((channel.into(), id));
    }

    /// Removes `channel`, returning its id.
    fn remove(&mut self, channel: &str) -> Option<u64> {
        let i = self.position(channel)?;
        Some(self.0.swap_remove(i).1)
    }

    fn names(&self) -> Vec<Box<str>> {
        self.0.iter().map(|(name, _)| name.clone()).collect()
    }
}

/// The receive side's waker: notes that the socket (or a timer of the receive path) fired, then
/// wakes the connection task.
struct ReceiveWake {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl ReceiveWake {
    fn set_task(&self, waker: &Waker) {
        let mut task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *task {
            Some(current) if current.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }
}

impl std::task::Wake for ReceiveWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, std::sync::atomic::Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// What woke the connection task: any of these may be set at once.
struct Wake {
    closing: Option<Closing>,
    drain: bool,
    message: Option<Option<Result<Message, duplex::Error>>>,
}

impl From<Closing> for End {
    fn from(why: Closing) -> End {
        match why {
            Closing::SlowConsumer => End::Close(CloseCode::TRY_AGAIN_LATER, SLOW_CONSUMER),
            Closing::Shutdown => End::Close(CloseCode::GOING_AWAY, "server shutting down"),
        }
    }
}

impl Session {
    /// A new connection's session, counted; `register`: made reachable by the shutdown (an
    /// outbox of a hub already shutting down is closed at once). A connection of an event
    /// loop is not registered: its loop closes it.
    pub(crate) fn open(
        hub: Arc<HubState>,
        outbox: Arc<Outbox>,
        grants: Grants,
        transport: Transport,
        register: bool,
    ) -> Session {
        hub.metrics.connections.fetch_add(1, Relaxed);
        hub.metrics.accepted(transport);
        let conn = hub.next_conn.fetch_add(1, Relaxed);
        if register && !hub.register_session(conn, &outbox) {
            outbox.close(Closing::Shutdown);
        }
        let now = Instant::now();
        Session {
            conn,
            info: ClientInfo {
                client: ids::client_id(),
                user: grants.user.as_str().into(),
            },
            grants: (grants.subscribe.is_some() || grants.publish.is_some())
                .then(|| Box::new(grants)),
            outbox,
            subscriptions: Subscriptions::default(),
            bucket: Bucket::full(hub.config.publish_burst, now),
            subscribe_bucket: Bucket::full(hub.config.subscribe_burst, now),
            hub,
        }
    }

    /// The connection is gone (its channels left): the hub forgets it.
    pub(crate) fn unregister(&self) {
        self.hub.unregister_session(self.conn);
        self.hub.metrics.connections.fetch_sub(1, Relaxed);
    }

    fn may_subscribe(&self, channel: &str) -> bool {
        self.grants
            .as_ref()
            .is_none_or(|g| g.may_subscribe(channel))
    }

    /// The client's id, for logs.
    pub(crate) fn client(&self) -> &str {
        &self.info.client
    }

    async fn drive(&mut self, ws: &mut Ws, outbox: &Outbox) -> End {
        // The drained deliveries, reused from one drain to the next (not in `Session`: a
        // connection of an event loop has its loop's).
        let mut batch = Vec::new();
        // The receive side is polled with a waker of its own that notes it fired: a wake-up by
        // the outbox alone (every delivery) then skips the socket, whose readiness check and
        // read attempt cost as much as the delivery itself.
        let receive = Arc::new(ReceiveWake {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let receive_waker = Waker::from(receive.clone());
        loop {
            // Both sources are looked at on every wake-up, so a flood of pushes cannot starve
            // the client's commands (nor the pings and timers that run on the receive path).
            let wake = poll_fn(|cx| {
                let (closing, drain) = match outbox.poll_event(cx) {
                    Poll::Ready(OutboxEvent::Closed(why)) => (Some(why), false),
                    Poll::Ready(OutboxEvent::Ready) => (None, true),
                    Poll::Pending => (None, false),
                };
                let message = if receive
                    .fired
                    .swap(false, std::sync::atomic::Ordering::AcqRel)
                {
                    receive.set_task(cx.waker());
                    let mut rcx = std::task::Context::from_waker(&receive_waker);
                    let polled = pin!(ws.recv()).poll(&mut rcx);
                    match polled {
                        Poll::Ready(message) => {
                            // More may be buffered from the same read: look again next time.
                            receive
                                .fired
                                .store(true, std::sync::atomic::Ordering::Release);
                            Some(message)
                        }
                        Poll::Pending => {
                            // The receive side may have written (a pong): once that is out,
                            // publishers may write directly again.
                            if ws.queued_bytes() == 0 && ws.state() == State::Open {
                                outbox.resume();
                            }
                            None
                        }
                    }
                } else {
                    None
                };
                if closing.is_none() && !drain && message.is_none() {
                    return Poll::Pending;
                }
                Poll::Ready(Wake {
                    closing,
                    drain,
                    message,
                })
            })
            .await;
            if let Some(why) = wake.closing {
                return why.into();
            }
            // Drain before handling the message: what was queued before a command must not
            // come after its reply (a resubscribe's recovered publications would be followed
            // by stale copies from the previous subscription).
            if wake.drain {
                // Boxed: a drain runs only when a socket would block (or for a stream the
                // fan-out cannot write to directly), and its futures would otherwise be part of
                // every idle connection's task.
                let mut step = Box::pin(self.write_outbox(ws, &mut batch));
                if let Err(end) = until_closed(outbox, step.as_mut()).await {
                    return end;
                }
            }
            if let Some(message) = wake.message {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::debug!(client = %self.info.client, "connection ended: {e}");
                        return End::Gone;
                    }
                    None => return End::Gone,
                };
                // Pushes queue up until the reply is out (and are drained, filtered, next).
                outbox.hold();
                // Boxed: commands are rare next to deliveries, and the futures of a subscribe
                // (broker, history, presence) would otherwise be part of every idle
                // connection's task.
                let mut step = Box::pin(self.handle(ws, message));
                if let Err(end) = until_closed(outbox, step.as_mut()).await {
                    return end;
                }
            }
            // Everything this task wrote is out and nothing is queued: publishers write
            // directly again (a no-op while something is queued: drained next round), and
            // the connection gives back the queues the command or the drain grew: most
            // connections go quiet for a long time after either.
            if ws.queued_bytes() == 0 && ws.state() == State::Open {
                outbox.resume();
                ws.shrink_to_fit();
                if batch.is_empty() && batch.capacity() > 0 {
                    batch = Vec::new();
                }
            }
        }
    }

    /// Finishes a partly written frame, then sends everything queued, one flush for the lot.
    async fn write_outbox(
        &mut self,
        ws: &mut Ws,
        batch: &mut Vec<Arc<Delivery>>,
    ) -> Result<(), duplex::Error> {
        poll_fn(|cx| self.outbox.poll_write_partial(cx))
            .await
            .map_err(duplex::Error::Io)?;
        // Filtered (live copies of what a subscribe reply carried are dropped).
        let taken = self.outbox.take(batch);
        let (mut messages, mut bytes) = (0u64, 0u64);
        for delivery in batch.drain(..) {
            // The frame prepared once for every subscriber (head and payload, compressed when
            // this connection's parameters allow sharing), queued without a flush: one write
            // for the whole batch.
            ws.feed_prepared(&delivery.prepared).await?;
            messages += 1;
            bytes += delivery.prepared.wire_len() as u64;
        }
        self.outbox.release(taken);
        ws.flush().await?;
        let metrics = &self.hub.metrics;
        metrics.messages_out.fetch_add(messages, Relaxed);
        metrics.bytes_out.fetch_add(bytes, Relaxed);
        Ok(())
    }

    async fn handle(&mut self, ws: &mut Ws, message: Message) -> Result<(), duplex::Error> {
        match self.reply(message).await {
            Some(text) => ws.send(Message::text(text)).await,
            None => Ok(()),
        }
    }

    /// Runs the command `message` carries and returns the reply to send (counted in the
    /// metrics).
    pub(crate) async fn reply(&mut self, message: Message) -> Option<String> {
        let metrics = self.hub.metrics.clone();
        metrics.messages_in.fetch_add(1, Relaxed);
        metrics.bytes_in.fetch_add(message.len() as u64, Relaxed);
        let reply = match &message {
            Message::Text(text) => self.command(text.as_bytes()).await,
            Message::Binary(_) => Err(Id::default().refuse(&Refusal::binary_message())),
        };
        let reply = reply.unwrap_or_else(|e| {
            metrics.command_errors.fetch_add(1, Relaxed);
            e
        });
        metrics.messages_out.fetch_add(1, Relaxed);
        metrics.bytes_out.fetch_add(reply.len() as u64, Relaxed);
        String::from_utf8(reply).ok()
    }

    /// Runs one command; `Ok` and `Err` are both the reply to send.
    async fn command(&mut self, bytes: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let (id, command) = Command::parse(bytes).map_err(|(id, refusal)| id.refuse(&refusal))?;
        if matches!(
            command,
            Command::Subscribe { .. } | Command::Unsubscribe { .. }
        ) {
            self.take_subscribe_token()
                .map_err(|refusal| id.refuse(&refusal))?;
        }
        let reply = match command {
            Command::Subscribe { channel, since } => self.subscribe(&id, &channel, since).await,
            Command::Unsubscribe { channel } => self.unsubscribe(&id, &channel).await,
            Command::Publish(publish) => self.publish(&id, publish).await,
            Command::Presence { channel } => self.presence(&id, &channel).await,
            Command::Ping => {
                let mut out = id.ok();
                out.push(b'}');
                Ok(out)
            }
        };
        reply.map_err(|refusal| id.refuse(&refusal))
    }

    /// The per-connection subscribe/unsubscribe rate (each joins or leaves presence and may
    /// make the broker create or free a channel: issue 12's churn case).
    fn take_subscribe_token(&mut self) -> Result<(), Refusal> {
        let config = &self.hub.config;
        if config.subscribe_rate <= 0.0 {
            return Ok(());
        }
        let rate = (config.subscribe_rate, config.subscribe_burst);
        let Err(wait) = self.subscribe_bucket.take(rate.0, rate.1, Instant::now()) else {
            return Ok(());
        };
        self.hub.metrics.refused(Reason::SubscribeRate);
        Err(Refusal::new(
            ErrorCode::RateLimited,
            format!(
                "subscribe rate limit: {} subscribes and unsubscribes per second, bursts of {}; \
                 retry in {} ms",
                config.subscribe_rate,
                config.subscribe_burst,
                wait.as_millis().max(1)
            ),
        ))
    }

    async fn subscribe(
        &mut self,
        id: &Id,
        channel: &str,
        since: Option<Since>,
    ) -> Result<Vec<u8>, Refusal> {
        if !self.may_subscribe(channel) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {channel:?}"),
            ));
        }
        if self.subscriptions.contains(channel) {
            return Err(Refusal::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel:?}"),
            ));
        }
        let max = self.hub.config.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!("at most {max} subscriptions per connection"),
            ));
        }

        self.subscriptions.insert(channel, 0);
        let hub = self.hub.clone();
        let shared_deflate = self.outbox.takes_shared_deflate();
        let subscriber = Subscriber::new(self.conn, self.outbox.clone(), shared_deflate);
        // 1. Register: from here on every publication the broker delivers is queued for us.
        let broker = match hub.broker() {
            Ok(broker) => broker,
            Err(e) => {
                self.subscriptions.remove(channel);
                return Err(Refusal::broker(&e));
            }
        };
        let local = match hub.fanout.subscribe(channel, subscriber, broker).await {
            Ok(local) => {
                self.subscriptions.insert(channel, local.id);
                local
            }
            Err(e) => {
                self.subscriptions.remove(channel);
                return Err(Refusal::broker(&e));
            }
        };
        // 2. Read history: everything up to its top offset comes from here, the rest live.
        let query = HistoryQuery {
            since: since.as_ref().map(|since| since.offset),
            limit: if since.is_some() { usize::MAX } else { 0 },
        };
        let history = match hub.broker.history(channel, query).await {
            Ok(history) => history,
            Err(e) => {
                self.leave(channel).await;
                return Err(Refusal::broker(&e));
            }
        };
        let top = history.position.offset;
        // 3. Live copies of what the reply covers are dropped (queued ones when the outbox is
        //    drained after the reply, later ones as they are written), and so are `reset` and
        //    `gap` pushes the reply already covered.
        hub.fanout.note_epoch(&local, &history.position.epoch);
        self.outbox
            .set_filter(local.id, history.position.epoch.clone(), top);
        if let Err(e) = hub.broker.join(channel, &self.info).await {
            tracing::warn!("presence join on {channel}: {e}");
        }

        let mut out = id.ok();
        out.extend_from_slice(br#","epoch":"#);
        json::string(&mut out, &history.position.epoch);
        out.extend_from_slice(br#","offset":"#);
        json::number(&mut out, top);
        if let Some(Since {
            epoch,
            offset: since,
        }) = since
        {
            let refusal = if epoch != *history.position.epoch {
                Some("epoch changed: the stream was reset (hub restarted?)".to_owned())
            } else if since > top {
                Some(format!("offset {since} is ahead of the stream (at {top})"))
            } else if history.earliest > since + 1 {
                Some(format!(
                    "history no longer reaches back to offset {} (oldest kept: {})",
                    since + 1,
                    history.earliest
                ))
            } else {
                None
            };
            out.extend_from_slice(br#","recovered":"#);
            match refusal {
                None => {
                    out.extend_from_slice(b"true");
                    out.extend_from_slice(br#","publications":"#);
                    json::publications(&mut out, &history.publications);
                }
                Some(reason) => {
                    out.extend_from_slice(br#"false,"reason":"#);
                    json::string(&mut out, &reason);
                    out.extend_from_slice(br#","publications":[]"#);
                }
            }
        }
        out.push(b'}');
        Ok(out)
    }

    /// Leaves `channel`: the node registration, the broker subscription if it was the node's
    /// last subscriber, presence. Pushes of the channel still queued are dropped: nothing of
    /// it follows the unsubscribe reply.
    async fn leave(&mut self, channel: &str) {
        let id = self.subscriptions.remove(channel);
        let hub = self.hub.clone();
        let last = hub.fanout.unsubscribe(channel, self.conn);
        if let Some(id) = id.filter(|&id| id != 0) {
            self.outbox.forget_channel(id);
        }
        if last {
            if let Err(e) = hub.broker.unsubscribe(channel).await {
                tracing::warn!("broker unsubscribe from {channel}: {e}");
            }
        }
        if let Err(e) = hub.broker.leave(channel, &self.info).await {
            tracing::warn!("presence leave on {channel}: {e}");
        }
    }

    async fn unsubscribe(&mut self, id: &Id, channel: &str) -> Result<Vec<u8>, Refusal> {
        if !self.subscriptions.contains(channel) {
            return Err(Refusal::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel:?}"),
            ));
        }
        self.leave(channel).await;
        let mut out = id.ok();
        out.push(b'}');
        Ok(out)
    }

    async fn publish(&mut self, id: &Id, publish: Publish) -> Result<Vec<u8>, Refusal> {
        let Publish { channel, data } = publish;
        if !self.grants.as_ref().is_none_or(|g| g.may_publish(&channel)) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("not allowed to publish to {channel:?}"),
            ));
        }
        let (rate, burst) = (self.hub.config.publish_rate, self.hub.config.publish_burst);
        if let Err(wait) = self.bucket.take(rate, burst, Instant::now()) {
            let config = &self.hub.config;
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "publish rate limit: {} per second, bursts of {}; retry in {} ms",
                    config.publish_rate,
                    config.publish_burst,
                    wait.as_millis().max(1)
                ),
            ));
        }
        // Before the broker stores it: a refused publication leaves no trace.
        self.hub.fanout.admit_publication(&channel, data.len())?;
        let position = async { self.hub.broker()?.publish(&channel, data).await }
            .await
            .map_err(|e| Refusal::broker(&e))?;
        self.hub.metrics.publishes.fetch_add(1, Relaxed);
        let mut out = id.ok();
        out.extend_from_slice(br#","offset":"#);
        json::number(&mut out, position.offset);
        out.extend_from_slice(br#","epoch":"#);
        json::string(&mut out, &position.epoch);
        out.push(b'}');
        Ok(out)
    }

    async fn presence(&mut self, id: &Id, channel: &str) -> Result<Vec<u8>, Refusal> {
        if !self.may_subscribe(channel) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("not allowed to see presence of {channel:?}"),
            ));
        }
        let clients = async { self.hub.broker()?.presence(channel).await }
            .await
            .map_err(|e| Refusal::broker(&e))?;
        let mut out = id.ok();
        out.extend_from_slice(br#","clients":"#);
        json::clients(&mut out, &clients);
        out.push(b'}');
        Ok(out)
    }

    /// The connection ends: leaves every channel, then closes with the code of `end` (if
    /// any).
    async fn finish(&mut self, mut ws: Ws, end: End) {
        // Whatever is written from here on (the Close frame) is the last.
        self.outbox.hold();
        self.leave_all().await;
        if let End::Close(code, reason) = end {
            tracing::debug!(client = %self.info.client, code = code.as_u16(), reason, "closing");
            // Bounded by the close timeout.
            let _ = ws.close(code, reason).await;
        }
    }

    /// Leaves every channel (the connection ended).
    pub(crate) async fn leave_all(&mut self) {
        for channel in self.subscriptions.names() {
            self.leave(&channel).await;
        }
    }
}

/// Runs a step that may wait for a slow socket, unless the outbox is closed meanwhile (a
/// stuck client must not hold its task, nor the shutdown, hostage).
async fn until_closed(
    outbox: &Outbox,
    mut step: Pin<&mut impl Future<Output = Result<(), duplex::Error>>>,
) -> Result<(), End> {
    poll_fn(|cx| {
        if let Poll::Ready(why) = outbox.poll_closed(cx) {
            return Poll::Ready(Err(why.into()));
        }
        step.as_mut().poll(cx).map(|result| {
            result.map_err(|e| {
                tracing::debug!("write failed: {e}");
                End::Gone
            })
        })
    })
    .await
}
