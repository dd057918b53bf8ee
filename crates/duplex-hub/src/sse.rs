//! `/sse`: Server-Sent Events, the fallback for clients that cannot open a WebSocket (a proxy
//! that strips `Upgrade`, a network that blocks it). One `text/event-stream` response
//! subscribes to the channels of its query and carries their pushes as events.
//!
//! ```text
//!  GET /sse?channel=a&channel=b   (token, origin, limits as for /ws; Last-Event-ID: where to resume)
//!   │ open: subscribe each channel (register, read history, filter), as a WebSocket session does
//!   ▼
//!  retry: 2000                    the browser's reconnection delay
//!  event: subscribed / id / data  one per channel: {"op":"subscribed",...,"recovered":...}
//!  event: pub / id / data         recovered publications, then live ones
//!  event: presence | reset | gap
//!  : heartbeat                    a comment when the stream was idle for a while
//!  event: close                   shutdown (1001) or slow consumer (1013), then the end
//! ```
//!
//! The subscriber is an ordinary fan-out [`Subscriber`]: its [`Outbox`] has no socket, so
//! every push is queued (the same bound, the same slow-consumer policy) and this module's task
//! encodes each queued [`Delivery`] as an event: the event's `data` is the push's JSON, exactly
//! as a WebSocket subscriber gets it (`delivery.prepared.message()`), so the fan-out encodes a
//! publication once for both transports and the WebSocket path does no work for SSE.
//!
//! **Event ids.** A browser keeps only the last id it saw and sends it as `Last-Event-ID` when
//! it reconnects by itself, so every id carries the position of *every* channel of the stream,
//! in the request's order: entries `epoch:channel:offset` joined by `,`, where `channel` is
//! percent-encoded (every byte but `A-Z a-z 0-9 - . _ ~`, so the id is ASCII and `:`/`,` only
//! separate) and `epoch` is left empty when it equals the entry before it (one hub process has
//! one epoch for all its channels): `3f2a9c0d1e4b5a67:chat:15,:news:3`. A reconnect resumes
//! every channel after its offset, exactly: the recovered publications, then live ones, each
//! once. Events that move no position (`presence`, `close`) carry no id: the browser keeps
//! the one before. `?lastEventId=` does the same for a client that opens a new stream itself
//! (the header wins: it is newer).
//!
//! The HTTP layer calls [`open`] (the decision: a [`Stream`] or a [`Refused`]), sends the
//! response head, and hands [`Stream::run`] any `AsyncWrite` for the body and a future that
//! ends when the client is gone.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{AUTHORIZATION, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::{Grants, verify_hs256};
use crate::broker::{ClientInfo, HistoryQuery};
use crate::fanout::Subscriber;
use crate::ids;
use crate::json;
use crate::metrics::Transport;
use crate::outbox::{Closing, Delivery, Kind, Outbox, OutboxEvent};
use crate::protocol::{ErrorCode, Refusal, check_channel, query_param, query_params};
use crate::state::HubState;

/// Headers of an accepted stream's `200` (plus [`Stream::allow_origin`], if any).
pub(crate) const HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-store"),
    // Reverse proxies (nginx) buffer responses unless told not to: events must flow as written.
    ("x-accel-buffering", "no"),
];

/// A refused `/sse` request: the status, a sentence for the body, extra headers.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refused {
    fn new(status: StatusCode, message: impl Into<String>) -> Refused {
        Refused {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: HeaderName, value: &'static str) -> Refused {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused::new(refusal.code.http_status(), refusal.message)
    }
}

/// One channel of a stream and where its client stands in it: what the event ids encode.
#[derive(Debug)]
struct Position {
    channel: String,
    /// The channel's `LocalChannel::id`: how its deliveries are recognised.
    local: u64,
    epoch: Arc<str>,
    offset: u64,
}

/// Positions read from a `Last-Event-ID`: channel → (epoch, offset).
type Resume = HashMap<String, (String, u64)>;

/// Keeps the hub's open-connection count (`max_connections` covers streams too) while a
/// stream lives.
#[derive(Debug)]
struct Slot(Arc<HubState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Relaxed);
    }
}

/// An accepted stream, subscribed to its channels: [`Stream::run`] writes it.
#[derive(Debug)]
pub(crate) struct Stream {
    hub: Arc<HubState>,
    conn: u64,
    info: ClientInfo,
    outbox: Arc<Outbox>,
    /// Subscribed channels in the request's order (a channel is added once registered).
    positions: Vec<Position>,
    /// The first events: `retry:`, one `subscribed` per channel, recovered publications.
    first: Vec<u8>,
    allow_origin: Option<HeaderValue>,
    /// Counted in the `sse_streams` gauge ([`Stream::run`] started).
    counted: bool,
    /// [`Stream::leave_all`] finished.
    left: bool,
    _slot: Slot,
}

/// Checks the request, then subscribes to its channels, recovering from its
/// `Last-Event-ID`: the stream to run, or why not (nothing is left subscribed then).
pub(crate) async fn open(hub: &Arc<HubState>, request: &Request<()>) -> Result<Stream, Refused> {
    if request.method() != Method::GET {
        return Err(Refused::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on /sse; use GET", request.method()),
        )
        .header(http::header::ALLOW, "GET"));
    }
    let checked = check(hub, request);
    let (allow_origin, grants, channels, resume) = match checked {
        Ok(checked) => checked,
        Err(refused) => {
            hub.metrics.connections_refused.fetch_add(1, Relaxed);
            return Err(refused);
        }
    };
    let open = hub.websockets.fetch_add(1, Relaxed);
    let slot = Slot(hub.clone());
    if open >= hub.config.max_connections {
        hub.metrics.connections_refused.fetch_add(1, Relaxed);
        return Err(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many connections (limit {}); try again later",
                hub.config.max_connections
            ),
        )
        .header(http::header::RETRY_AFTER, "5"));
    }
    let conn = hub.next_conn.fetch_add(1, Relaxed);
    let outbox = Arc::new(Outbox::new(hub.config.queue_bytes, None, None));
    let mut stream = Stream {
        hub: hub.clone(),
        conn,
        info: ClientInfo {
            client: ids::client_id(),
            user: grants.user.as_str().into(),
        },
        outbox,
        positions: Vec::with_capacity(channels.len()),
        first: Vec::new(),
        allow_origin,
        counted: false,
        left: false,
        _slot: slot,
    };
    if let Err(refusal) = stream.subscribe_all(&channels, &resume).await {
        stream.leave_all().await;
        return Err(refusal.into());
    }
    Ok(stream)
}

type Checked = (Option<HeaderValue>, Grants, Vec<String>, Resume);

/// Origin, token, channels and grants, `Last-Event-ID`: everything decided before any work.
fn check(hub: &HubState, request: &Request<()>) -> Result<Checked, Refused> {
    let allow_origin = allow_origin(hub, request.headers())?;
    let grants = authorize(hub, request)?;
    let mut channels: Vec<String> = Vec::new();
    for channel in query_params(request, "channel") {
        let channel = channel.ok_or_else(|| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "channel is not valid percent-encoded UTF-8",
            )
        })?;
        check_channel(&channel).map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
        if channels.contains(&channel) {
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                format!("channel {channel:?} is listed twice"),
            ));
        }
        if !grants.may_subscribe(&channel) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {channel:?}"),
            )
            .into());
        }
        channels.push(channel);
    }
    if channels.is_empty() {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "name at least one channel: /sse?channel=C",
        ));
    }
    let max = hub.config.max_subscriptions;
    if channels.len() > max {
        return Err(Refusal::new(
            ErrorCode::LimitExceeded,
            format!("at most {max} subscriptions per connection"),
        )
        .into());
    }
    // The header is what the browser saw last; the query what the page knew when it opened.
    let last_id = match request.headers().get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "Last-Event-ID is not ASCII"))?
                .to_owned(),
        ),
        None => query_param(request, "lastEventId"),
    };
    let resume = match last_id.as_deref().map(str::trim) {
        None | Some("") => Resume::new(),
        Some(id) => parse_id(id).map_err(|e| {
            Refused::new(StatusCode::BAD_REQUEST, format!("bad Last-Event-ID: {e}"))
        })?,
    };
    Ok((allow_origin, grants, channels, resume))
}

/// With `allowed_origins`, a request whose `Origin` is not listed gets 403; one without an
/// `Origin` is let in (a browser sends none on a same-origin `EventSource`). The origin to
/// echo in `Access-Control-Allow-Origin`, so allowed pages elsewhere may read the stream.
fn allow_origin(hub: &HubState, headers: &HeaderMap) -> Result<Option<HeaderValue>, Refused> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(None);
    };
    let allowed = &hub.config.allowed_origins;
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return Ok(Some(origin.clone()));
    }
    Err(Refused::new(
        StatusCode::FORBIDDEN,
        format!(
            "origin {} is not allowed",
            String::from_utf8_lossy(origin.as_bytes())
        ),
    ))
}

/// The token, as for `/ws`: `?token=` or `Authorization: Bearer`; without a secret, `?user=`.
fn authorize(hub: &HubState, request: &Request<()>) -> Result<Grants, Refused> {
    let Some(secret) = &hub.config.token_secret else {
        let user = query_param(request, "user")
            .filter(|u| !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control))
            .unwrap_or_else(|| "anonymous".to_owned());
        return Ok(Grants::anonymous(user));
    };
    let unauthorized = |reason: String| {
        Refused::new(StatusCode::UNAUTHORIZED, reason)
            .header(http::header::WWW_AUTHENTICATE, "Bearer")
    };
    let token = query_param(request, "token")
        .or_else(|| bearer(request.headers()))
        .ok_or_else(|| unauthorized("a token is required: /sse?token=<JWT>&channel=C".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    verify_hs256(&token, secret.as_bytes(), now).map_err(|e| unauthorized(e.to_string()))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// How a stream ends.
enum End {
    /// The outbox was closed (shutdown, slow consumer): say so in a `close` event, if the
    /// stream is between events.
    Closed(Closing),
    /// Closed while an event was half written: no more events (one would land inside it).
    Abandoned,
    /// The client left, or a write failed.
    Gone,
}

impl Stream {
    /// The origin to allow in `Access-Control-Allow-Origin` (a cross-origin request from an
    /// allowed origin).
    pub(crate) fn allow_origin(&self) -> Option<&HeaderValue> {
        self.allow_origin.as_ref()
    }

    /// Subscribes every channel (as a WebSocket subscribe does: register, read history, set
    /// the filter that drops live copies of what history gave, join presence), then encodes
    /// the first events.
    async fn subscribe_all(&mut self, channels: &[String], resume: &Resume) -> Result<(), Refusal> {
        let hub = self.hub.clone();
        if !hub.register_session(self.conn, &self.outbox) {
            self.outbox.close(Closing::Shutdown);
        }
        let mut replies = Vec::with_capacity(channels.len());
        for channel in channels {
            let broker = hub.broker().map_err(|e| Refusal::broker(&e))?;
            let subscriber = Subscriber::new(self.conn, self.outbox.clone(), false);
            let local = hub
                .fanout
                .subscribe(channel, subscriber, broker)
                .await
                .map_err(|e| Refusal::broker(&e))?;
            self.positions.push(Position {
                channel: channel.clone(),
                local: local.id,
                epoch: "".into(),
                offset: 0,
            });
            let since = resume.get(channel);
            let query = HistoryQuery {
                since: since.map(|(_, offset)| *offset),
                limit: if since.is_some() { usize::MAX } else { 0 },
            };
            let history = broker
                .history(channel, query)
                .await
                .map_err(|e| Refusal::broker(&e))?;
            let top = history.position.offset;
            hub.fanout.note_epoch(&local, &history.position.epoch);
            self.outbox
                .set_filter(local.id, history.position.epoch.clone(), top);
            if let Err(e) = broker.join(channel, &self.info).await {
                tracing::warn!("presence join on {channel}: {e}");
            }
            let position = self.positions.last_mut().expect("pushed above");
            position.epoch = history.position.epoch.clone();
            position.offset = top;
            let recovery = since.map(|(epoch, since)| {
                let failure = if **epoch != *history.position.epoch {
                    Some("epoch changed: the stream was reset (hub restarted?)".to_owned())
                } else if *since > top {
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
                if failure.is_none() {
                    // Resumed where the client was; the recovered publications move it on.
                    position.offset = *since;
                }
                failure
            });
            replies.push((recovery, history.publications, top));
        }
        let retry = hub.config.sse_retry.as_millis();
        self.first = format!("retry: {retry}\n\n").into_bytes();
        let mut data = Vec::new();
        for (i, (recovery, _, top)) in replies.iter().enumerate() {
            data.clear();
            data.extend_from_slice(br#"{"op":"subscribed","channel":"#);
            json::string(&mut data, &self.positions[i].channel);
            data.extend_from_slice(br#","epoch":"#);
            json::string(&mut data, &self.positions[i].epoch);
            data.extend_from_slice(br#","offset":"#);
            json::number(&mut data, *top);
            match recovery {
                None => {}
                Some(None) => {
                    data.extend_from_slice(br#","recovered":true,"count":"#);
                    json::number(&mut data, replies[i].1.len() as u64);
                }
                Some(Some(reason)) => {
                    data.extend_from_slice(br#","recovered":false,"reason":"#);
                    json::string(&mut data, reason);
                }
            }
            data.push(b'}');
            write_event(&mut self.first, "subscribed", Some(&self.positions), &data);
        }
        for (i, (recovery, publications, _)) in replies.iter().enumerate() {
            if !matches!(recovery, Some(None)) {
                continue;
            }
            for publication in publications {
                data.clear();
                json::push_publication(&mut data, &self.positions[i].channel, publication);
                self.positions[i].offset = publication.offset;
                write_event(&mut self.first, "pub", Some(&self.positions), &data);
            }
        }
        Ok(())
    }

    /// Appends `delivery` as an event, moving its channel's position.
    fn encode(&mut self, delivery: &Delivery, out: &mut Vec<u8>) {
        let Some(position) = self
            .positions
            .iter_mut()
            .find(|p| p.local == delivery.channel)
        else {
            return;
        };
        let (name, with_id) = match &delivery.kind {
            Kind::Publication(offset) => {
                position.offset = *offset;
                ("pub", true)
            }
            Kind::Presence => ("presence", false),
            Kind::Reset { epoch, offset } => {
                position.epoch = epoch.clone();
                position.offset = *offset;
                ("reset", true)
            }
            Kind::Gap { last } => {
                position.offset = position.offset.max(*last);
                ("gap", true)
            }
        };
        let id = with_id.then_some(&self.positions[..]);
        write_event(out, name, id, delivery.prepared.message().as_bytes());
    }

    /// Writes the stream to `out` until the client is gone (`gone` resolves, or a write
    /// fails), the hub shuts down, or the client falls too far behind; then leaves its
    /// channels. The response head must be written already.
    pub(crate) async fn run<W: AsyncWrite + Unpin>(
        mut self,
        mut out: W,
        gone: impl Future<Output = ()>,
    ) {
        let metrics = self.hub.metrics.clone();
        metrics.sse_streams.fetch_add(1, Relaxed);
        metrics.accepted(Transport::Sse);
        self.counted = true;
        let mut gone = pin!(gone);
        let first = std::mem::take(&mut self.first);
        let end = match self.write(&mut out, &first, gone.as_mut()).await {
            Ok(()) => self.pump(&mut out, gone.as_mut()).await,
            Err(end) => end,
        };
        let outbox = self.outbox.clone();
        let finish = async {
            if let End::Closed(why) = end {
                let (code, reason) = match why {
                    Closing::SlowConsumer => (
                        1013,
                        "slow consumer: outbound queue full; reconnect to recover",
                    ),
                    Closing::Shutdown => (1001, "server shutting down"),
                };
                let mut data = Vec::with_capacity(96);
                data.extend_from_slice(br#"{"code":"#);
                json::number(&mut data, code);
                data.extend_from_slice(br#","reason":"#);
                json::string(&mut data, reason);
                data.push(b'}');
                let mut text = Vec::with_capacity(128);
                write_event(&mut text, "close", None, &data);
                let _ = out.write_all(&text).await;
            }
            let _ = out.shutdown().await;
        };
        // A client that reads nothing must not hold the task, nor the hub's shutdown.
        let _ = tokio::time::timeout(self.hub.config.close_timeout, finish).await;
        drop(outbox);
        self.leave_all().await;
    }

    /// The stream's loop: queued pushes become events, idle time heartbeats.
    async fn pump<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut W,
        mut gone: Pin<&mut impl Future<Output = ()>>,
    ) -> End {
        enum Wake {
            Outbox(OutboxEvent),
            Heartbeat,
            Gone,
        }
        let interval = self.hub.config.sse_heartbeat;
        let mut heartbeat = interval.map(|every| Box::pin(tokio::time::sleep(every)));
        let mut batch: Vec<Arc<Delivery>> = Vec::new();
        let mut text = Vec::new();
        loop {
            let wake = poll_fn(|cx| {
                if let Poll::Ready(event) = self.outbox.poll_event(cx) {
                    return Poll::Ready(Wake::Outbox(event));
                }
                if gone.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Gone);
                }
                if let Some(sleep) = &mut heartbeat {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Heartbeat);
                    }
                }
                Poll::Pending
            })
            .await;
            text.clear();
            let (mut taken, mut events) = (0, 0);
            match wake {
                Wake::Outbox(OutboxEvent::Closed(why)) => return End::Closed(why),
                Wake::Gone => return End::Gone,
                Wake::Heartbeat => text.extend_from_slice(b": heartbeat\n\n"),
                Wake::Outbox(OutboxEvent::Ready) => {
                    // Filtered: live copies of what the first events recovered are dropped.
                    taken = self.outbox.take(&mut batch);
                    events = batch.len() as u64;
                    for delivery in batch.drain(..) {
                        self.encode(&delivery, &mut text);
                    }
                }
            }
            if let Err(end) = self.write(out, &text, gone.as_mut()).await {
                return end;
            }
            self.outbox.release(taken);
            let metrics = &self.hub.metrics;
            if events > 0 {
                metrics.messages_out.fetch_add(events, Relaxed);
                metrics.bytes_out.fetch_add(text.len() as u64, Relaxed);
            }
            if let (Some(sleep), Some(every)) = (&mut heartbeat, interval) {
                sleep.as_mut().reset(tokio::time::Instant::now() + every);
            }
        }
    }

    /// Writes `bytes` (and flushes), unless the outbox is closed meanwhile (a client that
    /// stopped reading must not hold the task) or the client is gone.
    async fn write<W: AsyncWrite + Unpin>(
        &self,
        out: &mut W,
        bytes: &[u8],
        mut gone: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), End> {
        let mut write = pin!(async {
            out.write_all(bytes).await?;
            out.flush().await
        });
        let mut started = false;
        poll_fn(|cx| {
            if let Poll::Ready(why) = self.outbox.poll_closed(cx) {
                return Poll::Ready(Err(if started {
                    End::Abandoned
                } else {
                    End::Closed(why)
                }));
            }
            if gone.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(End::Gone));
            }
            started = true;
            write.as_mut().poll(cx).map_err(|_| End::Gone)
        })
        .await
    }

    /// Leaves every subscribed channel: the node registration (and the broker's, if it was
    /// the node's last subscriber), presence, the hub's registry of sessions.
    async fn leave_all(&mut self) {
        let hub = self.hub.clone();
        // One at a time: if this future is dropped midway, Drop leaves the rest.
        while let Some(position) = self.positions.pop() {
            let channel = &position.channel;
            let last = hub.fanout.unsubscribe(channel, self.conn);
            self.outbox.forget_channel(position.local);
            if last {
                if let Err(e) = hub.broker.unsubscribe(channel).await {
                    tracing::warn!("broker unsubscribe from {channel}: {e}");
                }
            }
            if let Err(e) = hub.broker.leave(channel, &self.info).await {
                tracing::warn!("presence leave on {channel}: {e}");
            }
        }
        hub.unregister_session(self.conn);
        self.left = true;
    }
}

/// A stream dropped before it finished (its future cancelled: an HTTP layer may drop it when
/// the client goes, or it was never run) still leaves its channels: the node's registrations
/// at once, the broker's (unsubscribe, presence) on a task.
impl Drop for Stream {
    fn drop(&mut self) {
        if self.counted {
            self.hub.metrics.sse_streams.fetch_sub(1, Relaxed);
        }
        if self.left {
            return;
        }
        let hub = self.hub.clone();
        let mut broker_work = Vec::new();
        for position in std::mem::take(&mut self.positions) {
            let last = hub.fanout.unsubscribe(&position.channel, self.conn);
            self.outbox.forget_channel(position.local);
            broker_work.push((position.channel, last));
        }
        hub.unregister_session(self.conn);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let info = self.info.clone();
        runtime.spawn(async move {
            for (channel, last) in broker_work {
                if last {
                    if let Err(e) = hub.broker.unsubscribe(&channel).await {
                        tracing::warn!("broker unsubscribe from {channel}: {e}");
                    }
                }
                if let Err(e) = hub.broker.leave(&channel, &info).await {
                    tracing::warn!("presence leave on {channel}: {e}");
                }
            }
        });
    }
}

/// Appends one event: `event:`, the id of every position (if given), and `data` split at
/// line breaks (one `data:` line each; the browser joins them with `\n`: JSON stays the same
/// JSON, as a raw line break can only be whitespace in it).
fn write_event(out: &mut Vec<u8>, name: &str, id: Option<&[Position]>, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    if let Some(positions) = id {
        out.extend_from_slice(b"\nid: ");
        encode_id(positions, out);
    }
    out.extend_from_slice(b"\ndata: ");
    let mut rest = data;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\ndata: ");
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
}

/// Bytes a channel name keeps in an id; every other byte is `%XX`.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_encode(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        if unreserved(b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

/// `epoch:channel:offset` per position, joined by `,`; an epoch equal to the one before is
/// left empty (see the module docs).
fn encode_id(positions: &[Position], out: &mut Vec<u8>) {
    let mut previous: Option<&str> = None;
    for (i, position) in positions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if previous != Some(&*position.epoch) {
            percent_encode(out, &position.epoch);
        }
        previous = Some(&position.epoch);
        out.push(b':');
        percent_encode(out, &position.channel);
        out.push(b':');
        json::number(out, position.offset);
    }
}

/// Reads an id [`encode_id`] wrote.
fn parse_id(id: &str) -> Result<Resume, &'static str> {
    let mut resume = Resume::new();
    let mut previous: Option<String> = None;
    for entry in id.split(',') {
        let mut parts = entry.split(':');
        let (Some(epoch), Some(channel), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected epoch:channel:offset entries joined by ','");
        };
        let epoch = if epoch.is_empty() {
            previous.clone().ok_or("the first entry names no epoch")?
        } else {
            percent_decode(epoch)?
        };
        let channel = percent_decode(channel)?;
        let offset = offset.parse().map_err(|_| "an offset is not a number")?;
        previous = Some(epoch.clone());
        resume.insert(channel, (epoch, offset));
    }
    Ok(resume)
}

fn percent_decode(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("a cut %-escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "a bad %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a channel is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(channel: &str, epoch: &str, offset: u64) -> Position {
        Position {
            channel: channel.into(),
            local: 0,
            epoch: epoch.into(),
            offset,
        }
    }

    #[test]
    fn ids_carry_every_channel_and_read_back() {
        let positions = [
            position("chat", "3f2a", 15),
            position("room:1, b", "3f2a", 3),
            position("é", "77", 0),
        ];
        let mut id = Vec::new();
        encode_id(&positions, &mut id);
        let id = String::from_utf8(id).unwrap();
        assert_eq!(id, "3f2a:chat:15,:room%3A1%2C%20b:3,77:%C3%A9:0");
        let resume = parse_id(&id).unwrap();
        assert_eq!(resume.len(), 3);
        assert_eq!(resume["chat"], ("3f2a".to_owned(), 15));
        assert_eq!(resume["room:1, b"], ("3f2a".to_owned(), 3));
        assert_eq!(resume["é"], ("77".to_owned(), 0));
        for bad in [
            ":chat:1",
            "e:chat",
            "e:chat:x",
            "e:chat:1:2",
            "e:%zz:1",
            "e:%C3:1",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_is_split_at_line_breaks_and_ids_are_optional() {
        let positions = [position("c", "e", 4)];
        let mut out = Vec::new();
        write_event(
            &mut out,
            "pub",
            Some(&positions),
            b"{\"a\":\r\n1,\n\"b\":\r2}",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: pub\nid: e:c:4\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        let mut out = Vec::new();
        write_event(&mut out, "join", None, b"{}");
        assert_eq!(out, b"event: join\ndata: {}\n\n");
    }
}
