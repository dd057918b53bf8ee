//! A connection's outbound path, shared by the fan-out and the connection's task: the socket's
//! write half, the bounded queue, and the rules for who may write when.
//!
//! ```text
//!  publisher (fan-out, no .await)                  connection task
//!   │ Outbox::deliver, under the state lock         │ WebSocket<OutboxStream>: replies, pongs,
//!   │  nothing ahead (not held, queue empty,        │ the Close frame, drained deliveries;
//!   │  no partial frame, open)? ──▶ try_writev ─┐   │ every write goes through the same lock,
//!   │  else, or WouldBlock ──▶ queue + wake     │   │ finishes a partial frame first and
//!   │  partial write ──▶ rest kept + wake       ▼   ▼ holds direct writes
//!   └───────────────────────────────────────▶ socket (OwnedWriteHalf)
//! ```
//!
//! In the common case a delivery is one non-blocking `writev` by the publisher: no task wake-up,
//! no scheduling, no poll (the uWebSockets model). Only when the socket would block, or took part
//! of the frame, do the rest and every later delivery go to the queue (bounded in bytes: the
//! queue, the frame being finished and what the task took all count), and the task finishes
//! them when the socket is writable.
//!
//! Direct writes are **held** while the task's `WebSocket` has bytes of its own in flight (set by
//! every write through [`OutboxStream`]), while it drains the queue, and while it handles a
//! command: a subscribe reply (with the publications it recovered) must precede the live ones
//! after it, and live copies of what it carried are dropped by the channel's [`Filter`] (applied
//! to direct writes and to the drained queue alike, always in delivery order). The task lifts the
//! hold ([`Outbox::resume`]) only when its `WebSocket` has nothing queued, the close handshake has
//! not started, and the queue is empty; after the Close frame nothing is written directly.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Acquire};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use duplex::PreparedMessage;
use duplex_proto::Role;
use duplex_proto::Transmit;
use duplex_proto::extensions::deflate::Negotiated;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent between statements; a panic elsewhere must not wedge
    // every publisher.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

/// What the connection task should do next about its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxEvent {
    /// Something is queued, or a frame was written in part: drain.
    Ready,
    /// Close the connection.
    Closed(Closing),
}

/// One push, encoded once and shared by every subscriber's queue.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The [`LocalChannel::id`](crate::fanout::LocalChannel::id) it was published on.
    pub(crate) channel: u64,
    /// What it is, for the channel's [`Filter`].
    pub(crate) kind: Kind,
    /// The frame.
    pub(crate) prepared: PreparedMessage,
}

/// What a [`Delivery`] is, as far as the channel's live [`Filter`] is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The publication at this offset: dropped at or below the filter's mark.
    Publication(u64),
    /// A `presence` push (a window's joins and leaves): never filtered.
    Presence,
    /// The stream restarted in `epoch`, continuing after `offset` (a `reset` push): dropped
    /// when the subscribe reply was already in that epoch at or past `offset`; otherwise the
    /// filter moves there.
    Reset { epoch: Arc<str>, offset: u64 },
    /// Publications up to `last` are lost (a `gap` push): dropped when the subscribe reply
    /// already reached `last`; otherwise the filter moves there.
    Gap { last: u64 },
}

impl Delivery {
    /// What it counts against an outbox's bound.
    pub(crate) fn cost(&self) -> usize {
        self.prepared.wire_len()
    }
}

/// Live publications of a channel at or below `upto` are dropped: the subscribe reply carried
/// them (or the client subscribed after them). `epoch` is the stream's epoch the reply was in
/// (a `reset` to it from before the reply is stale).
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) channel: u64,
    pub(crate) epoch: Arc<str>,
    pub(crate) upto: u64,
}

/// What one fan-out did, added to the metrics once per publication.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Frames written straight to sockets, and their bytes.
    pub(crate) written: u64,
    pub(crate) written_bytes: u64,
    /// Deliveries dropped (closed or overflowing outboxes).
    pub(crate) dropped: u64,
    /// Outboxes that overflowed.
    pub(crate) slow_consumers: u64,
}

/// A connection's outbound path: see the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    limit: usize,
    /// The socket; `None` queues everything: an SSE subscriber (its task encodes each queued
    /// push as an event of its own, see `sse.rs`) and unit tests.
    tcp: Option<Socket>,
    /// The event loop that holds the connection (`ws_loop.rs`), woken instead of a task.
    inbox: Option<Arc<dyn LoopWaker>>,
    /// The connection's permessage-deflate parameters: which prepared frame is valid for it.
    deflate: Option<Negotiated>,
}

#[derive(Debug, Default)]
struct OutboxState {
    /// A `Vec` (pushed at the back, taken whole): 8 bytes less than a `VecDeque` in every
    /// connection.
    queue: Vec<Arc<Delivery>>,
    /// Bytes in `queue`.
    queued: usize,
    /// Bytes taken by the connection task and not yet handed to the socket.
    taken: usize,
    /// The rest of a frame a publisher wrote in part: it goes out before anything else.
    /// Boxed: rare, and inline it would cost every connection 48 bytes.
    partial: Option<Box<Partial>>,
    /// Direct writes wait: the task's WebSocket has bytes in flight, or the task is draining
    /// or handling a command, or the connection is closing.
    held: bool,
    closed: Option<Closing>,
    filters: Vec<Filter>,
    waker: Option<Waker>,
    /// A connection of an event loop: its token there (0 until the loop took it), and whether
    /// a wake-up is already posted and not yet looked at ([`Outbox::event`]).
    token: u64,
    notified: bool,
}

/// Where the outbox of a connection of an event loop posts its wake-ups (`ws_loop.rs`).
pub(crate) trait LoopWaker: Send + Sync + std::fmt::Debug {
    /// The connection of `token` has something to do (see [`Outbox::event`]).
    fn wake(&self, token: u64);
}

/// The socket an outbox writes to.
#[derive(Debug)]
pub(crate) enum Socket {
    /// The write half of a connection run by its own task.
    Task(OwnedWriteHalf),
    /// A connection of an event loop (`ws_loop.rs`), which reads it; the socket closes when
    /// the outbox goes (the fan-out may hold it a moment after the loop let go).
    Loop(std::net::TcpStream),
}

impl Socket {
    /// Writes what the socket takes now, without waiting.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Task(tcp) => tcp.try_write_vectored(bufs),
            Socket::Loop(tcp) => io::Write::write_vectored(&mut &*tcp, bufs),
        }
    }
}

#[derive(Debug)]
struct Partial {
    frame: Transmit,
    written: usize,
}

impl Partial {
    fn rest(&self) -> usize {
        self.frame.len() - self.written
    }
}

impl OutboxState {
    fn register(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }

    /// Wakes the connection's task, or posts to its event loop (once until the loop looks).
    fn wake(&mut self, inbox: Option<&Arc<dyn LoopWaker>>) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        } else if let Some(inbox) = inbox {
            if self.token != 0 && !self.notified {
                self.notified = true;
                inbox.wake(self.token);
            }
        }
    }

    /// Whether `delivery` is a live copy of what a subscribe reply carried, or a `reset` or
    /// `gap` the reply already covered. Called in delivery order (on direct writes and on the
    /// drained queue), so a filter goes once the first publication past its range passes, and
    /// a reset or gap moves it to where the stream continues. Without a filter (the first
    /// publication after the reply passed) everything is news to the subscriber.
    fn filtered(&mut self, delivery: &Delivery) -> bool {
        if matches!(delivery.kind, Kind::Presence) {
            return false;
        }
        let Some(i) = self
            .filters
            .iter()
            .position(|f| f.channel == delivery.channel)
        else {
            return false;
        };
        let filter = &mut self.filters[i];
        match &delivery.kind {
            Kind::Publication(offset) => {
                if *offset <= filter.upto {
                    return true;
                }
                // Past the recovered range: later publications only go up.
                self.filters.swap_remove(i);
                false
            }
            Kind::Presence => false,
            Kind::Reset { epoch, offset } => {
                if filter.epoch == *epoch && filter.upto >= *offset {
                    // The reply was read from the new stream, at or past the reset point.
                    return true;
                }
                filter.epoch = epoch.clone();
                filter.upto = *offset;
                false
            }
            Kind::Gap { last } => {
                if filter.upto >= *last {
                    // The reply reached past the lost range (and said so if it could not
                    // recover it).
                    return true;
                }
                filter.upto = *last;
                false
            }
        }
    }
}

/// Writes as much of `frame` from byte `from` as the socket takes now.
fn try_write_frame(tcp: &Socket, frame: &Transmit, from: usize) -> io::Result<usize> {
    let head = frame.head();
    let (a, b) = if from < head.len() {
        (&head[from..], &frame.payload()[..])
    } else {
        (&frame.payload()[from - head.len()..], &[][..])
    };
    let n = tcp.try_write_vectored(&[IoSlice::new(a), IoSlice::new(b)])?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(n)
}

impl Outbox {
    /// An outbox bounded at `limit` bytes writing to `tcp` (if any) for a connection with
    /// permessage-deflate parameters `deflate`.
    pub(crate) fn new(
        limit: usize,
        tcp: Option<OwnedWriteHalf>,
        deflate: Option<Negotiated>,
    ) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            limit,
            tcp: tcp.map(Socket::Task),
            inbox: None,
            deflate,
        }
    }

    /// The outbox of a connection of an event loop: it owns `tcp` (non-blocking) and wakes the
    /// loop through `inbox` once the loop gave it its token ([`Outbox::set_token`]).
    pub(crate) fn for_loop(
        tcp: std::net::TcpStream,
        limit: usize,
        deflate: Option<Negotiated>,
        inbox: Arc<dyn LoopWaker>,
    ) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            limit,
            tcp: Some(Socket::Loop(tcp)),
            inbox: Some(inbox),
            deflate,
        }
    }

    /// Whether the connection takes the frame compressed once for every subscriber (its
    /// permessage-deflate parameters allow sharing: server_no_context_takeover).
    pub(crate) fn takes_shared_deflate(&self) -> bool {
        self.deflate.is_some_and(|n| {
            n.accepts_prepared(
                Role::Server,
                duplex_proto::extensions::deflate::MAX_WINDOW_BITS,
            )
        })
    }

    /// The socket of a connection of an event loop.
    pub(crate) fn loop_socket(&self) -> Option<&std::net::TcpStream> {
        match &self.tcp {
            Some(Socket::Loop(tcp)) => Some(tcp),
            _ => None,
        }
    }

    /// The loop's token for this connection: wake-ups are posted with it from now on.
    pub(crate) fn set_token(&self, token: u64) {
        let mut state = lock(&self.state);
        state.token = token;
        state.notified = false;
    }

    /// The event loop's [`Outbox::poll_event`]: what to do now, if anything. Later wake-ups
    /// are posted again.
    pub(crate) fn event(&self) -> Option<OutboxEvent> {
        let mut state = lock(&self.state);
        state.notified = false;
        if let Some(why) = state.closed {
            return Some(OutboxEvent::Closed(why));
        }
        if !state.queue.is_empty() || state.partial.is_some() {
            return Some(OutboxEvent::Ready);
        }
        None
    }

    /// The event loop writes the connection's own frames (`bufs`, from its `Connection`):
    /// holds direct writes and finishes a delivery written in part first. `Ok(0)` with no
    /// `bufs`: the partial delivery is out.
    pub(crate) fn write_own(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tcp) = &self.tcp else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut state = lock(&self.state);
        state.held = true;
        finish_partial(tcp, &mut state)?;
        if bufs.is_empty() {
            return Ok(0);
        }
        match tcp.try_write_vectored(bufs)? {
            0 => Err(io::ErrorKind::WriteZero.into()),
            n => Ok(n),
        }
    }

    /// Sends `delivery`: straight to the socket when nothing is ahead of it, else queued (the
    /// task is woken). Never waits. Over the bound, the outbox closes as a slow consumer and
    /// drops what it held. Nothing is sent once `left` is set: the subscription it was fanned
    /// out for has ended (see [`Outbox::forget_channel`]).
    pub(crate) fn deliver(&self, delivery: &Arc<Delivery>, left: &AtomicBool, tally: &mut Tally) {
        let mut state = lock(&self.state);
        if state.closed.is_some() {
            tally.dropped += 1;
            return;
        }
        if left.load(Acquire) {
            // A fan-out on a snapshot from before the unsubscribe: not for this connection.
            return;
        }
        if !state.held && state.queue.is_empty() && state.partial.is_none() && state.taken == 0 {
            if let (Some(tcp), Some(frame)) = (
                &self.tcp,
                delivery
                    .prepared
                    .frame_for(Role::Server, self.deflate.as_ref()),
            ) {
                if !state.filters.is_empty() && state.filtered(delivery) {
                    return;
                }
                // Would block, or failed (the task meets the error when it writes): queue.
                if let Ok(n) = try_write_frame(tcp, frame, 0) {
                    tally.written += 1;
                    tally.written_bytes += frame.len() as u64;
                    if n < frame.len() {
                        // The rest first, by the task, once the socket is writable.
                        state.partial = Some(Box::new(Partial {
                            frame: frame.clone(),
                            written: n,
                        }));
                        state.wake(self.inbox.as_ref());
                    }
                    return;
                }
            }
        }
        let cost = delivery.cost();
        let partial = state.partial.as_ref().map_or(0, |p| p.rest());
        if state.queued + state.taken + partial + cost > self.limit {
            state.closed = Some(Closing::SlowConsumer);
            tally.dropped += state.queue.len() as u64 + 1;
            tally.slow_consumers += 1;
            // Free the memory now; the connection is closing (a partial frame is still
            // finished first: the Close frame must not land inside it).
            state.queue = Vec::new();
            state.queued = 0;
            state.wake(self.inbox.as_ref());
            return;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push(delivery.clone());
        state.queued += cost;
        if was_empty {
            state.wake(self.inbox.as_ref());
        }
    }

    /// Closes the outbox (first reason wins) and wakes the connection task.
    pub(crate) fn close(&self, why: Closing) {
        let mut state = lock(&self.state);
        state.closed.get_or_insert(why);
        state.held = true;
        state.wake(self.inbox.as_ref());
    }

    /// Ready when something is queued or partly written, or the outbox was closed; otherwise
    /// registers the task.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<OutboxEvent> {
        let mut state = lock(&self.state);
        if let Some(why) = state.closed {
            return Poll::Ready(OutboxEvent::Closed(why));
        }
        if !state.queue.is_empty() || state.partial.is_some() {
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

    /// Holds direct writes until [`Outbox::resume`]: the task is about to write itself.
    pub(crate) fn hold(&self) {
        lock(&self.state).held = true;
    }

    /// Lets publishers write directly again, unless something is queued or partly written (the
    /// task drains it first, then calls this again) or the outbox is closed. The caller
    /// guarantees that its WebSocket has nothing queued and is open.
    pub(crate) fn resume(&self) {
        let mut state = lock(&self.state);
        if state.queue.is_empty()
            && state.partial.is_none()
            && state.taken == 0
            && state.closed.is_none()
        {
            state.held = false;
        }
    }

    /// Live publications of `channel` up to `upto` are dropped from now on (until one past it
    /// passes); the subscribe reply was in `epoch`.
    pub(crate) fn set_filter(&self, channel: u64, epoch: Arc<str>, upto: u64) {
        let mut state = lock(&self.state);
        state.filters.retain(|f| f.channel != channel);
        if state.filters.capacity() == 0 {
            // Most connections subscribe to one channel: room for one filter (32 bytes), not
            // the four a push reserves. It stays until a publication passes it.
            state.filters.reserve_exact(1);
        }
        state.filters.push(Filter {
            channel,
            epoch,
            upto,
        });
    }

    /// Drops the queued pushes of `channel` and its filter (the connection left it). Called
    /// after the subscription's `left` flag was set ([`crate::fanout::Fanout::unsubscribe`]):
    /// a delivery that took this lock before has been queued (dropped here; while a command
    /// runs nothing is written directly) and one that takes it after sees the flag (the lock
    /// orders the two), so nothing of the channel reaches the socket after the unsubscribe
    /// reply, even from a fan-out still running on an older snapshot of the subscribers.
    pub(crate) fn forget_channel(&self, channel: u64) {
        let mut state = lock(&self.state);
        let mut freed = 0;
        state.queue.retain(|delivery| {
            let keep = delivery.channel != channel;
            if !keep {
                freed += delivery.cost();
            }
            keep
        });
        state.queued -= freed;
        state.filters.retain(|f| f.channel != channel);
    }

    /// Moves everything queued that passes the filters into `batch` (empty, keeping its
    /// capacity) and returns the cost taken, which stays counted against the bound until
    /// [`Outbox::release`]. Holds direct writes: the batch goes out through the task's
    /// WebSocket.
    pub(crate) fn take(&self, batch: &mut Vec<Arc<Delivery>>) -> usize {
        debug_assert!(batch.is_empty());
        let mut state = lock(&self.state);
        state.held = true;
        std::mem::swap(&mut state.queue, batch);
        if !state.filters.is_empty() {
            batch.retain(|delivery| !state.filtered(delivery));
        }
        let taken = std::mem::take(&mut state.queued);
        state.taken += taken;
        taken
    }

    /// The taken bytes were handed to the socket.
    pub(crate) fn release(&self, bytes: usize) {
        let mut state = lock(&self.state);
        state.taken = state.taken.saturating_sub(bytes);
    }

    /// Finishes a frame a publisher wrote in part.
    pub(crate) fn poll_write_partial(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tcp) = &self.tcp else {
            return Poll::Ready(Ok(()));
        };
        let Socket::Task(write) = tcp else {
            return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
        };
        loop {
            let mut state = lock(&self.state);
            match finish_partial(tcp, &mut state) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(state);
                    ready!(write.as_ref().poll_write_ready(cx))?;
                }
                done => return Poll::Ready(done),
            }
        }
    }
}

/// Writes the rest of the partial frame, if any, as far as the socket takes it now: `Ok` once
/// nothing is left.
fn finish_partial(tcp: &Socket, state: &mut OutboxState) -> io::Result<()> {
    while let Some(partial) = &mut state.partial {
        partial.written += try_write_frame(tcp, &partial.frame, partial.written)?;
        if partial.rest() == 0 {
            state.partial = None;
        }
    }
    Ok(())
}

/// The stream under the connection task's `WebSocket`: reads from the socket's read half,
/// writes through the outbox, so that its frames and the publishers' direct writes never
/// interleave inside a frame (see the module docs). Every write holds direct writes until the
/// task resumes them.
///
/// A WebSocket that is not a whole plain TCP connection (a stream of an HTTP/2 connection, or
/// one under TLS) has no socket a publisher could write to: its outbox has no write half, so
/// every delivery takes the queued path and the task writes it through the stream
/// ([`OutboxStream::queued`]). The session code is the same for both.
#[derive(Debug)]
pub(crate) struct OutboxStream {
    io: Io,
    outbox: Arc<Outbox>,
}

/// Any byte stream a WebSocket can run over (an upgraded HTTP/2 stream, a TLS connection).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

enum Io {
    /// The read half of a plain TCP connection; the write half is the outbox's.
    Tcp(OwnedReadHalf),
    /// A stream the outbox cannot write to directly: reads and writes go through it.
    Queued(Box<dyn Stream>),
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Io::Tcp(read) => read.fmt(f),
            Io::Queued(_) => f.write_str("Queued"),
        }
    }
}

impl OutboxStream {
    /// Splits `tcp`: the write half goes to a new outbox bounded at `limit` bytes.
    pub(crate) fn new(
        tcp: TcpStream,
        limit: usize,
        deflate: Option<Negotiated>,
    ) -> (OutboxStream, Arc<Outbox>) {
        let (read, write) = tcp.into_split();
        let outbox = Arc::new(Outbox::new(limit, Some(write), deflate));
        (
            OutboxStream {
                io: Io::Tcp(read),
                outbox: outbox.clone(),
            },
            outbox,
        )
    }

    /// `stream` with a new outbox bounded at `limit` bytes that queues every delivery: the
    /// connection task writes them through `stream` (no direct writes).
    pub(crate) fn queued(
        stream: impl Stream,
        limit: usize,
        deflate: Option<Negotiated>,
    ) -> (OutboxStream, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(limit, None, deflate));
        (
            OutboxStream {
                io: Io::Queued(Box::new(stream)),
                outbox: outbox.clone(),
            },
            outbox,
        )
    }
}

impl AsyncRead for OutboxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            Io::Queued(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OutboxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outbox = &*this.outbox;
        let Some(Socket::Task(tcp)) = &outbox.tcp else {
            return match &mut this.io {
                Io::Queued(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
                Io::Tcp(_) => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            };
        };
        loop {
            let mut state = lock(&outbox.state);
            state.held = true;
            let socket = outbox.tcp.as_ref().expect("matched above");
            let written =
                finish_partial(socket, &mut state).and_then(|()| tcp.try_write_vectored(bufs));
            drop(state);
            match written {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(tcp.as_ref().poll_write_ready(cx))?;
                }
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(_) => true,
            Io::Queued(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(_) => Poll::Ready(Ok(())),
            Io::Queued(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    /// On TCP a no-op: the write half is shared with the publishers and shut (FIN) when the
    /// outbox is dropped, at the end of the connection's task. A queued stream is shut itself
    /// (the end of an HTTP/2 stream, TLS close_notify).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(_) => Poll::Ready(Ok(())),
            Io::Queued(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duplex::{Message, PreparedMessage};

    /// A delivery of 42 bytes on the wire (a 40-byte text message).
    fn forty_bytes() -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: 1,
            kind: Kind::Publication(1),
            prepared: PreparedMessage::new(Message::text("x".repeat(40))),
        })
    }

    fn delivery(kind: Kind) -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: 1,
            kind,
            prepared: PreparedMessage::new(Message::text("x")),
        })
    }

    /// Delivers each of `kinds` (queued: no socket) and returns those that pass the filter.
    fn passing(outbox: &Outbox, kinds: &[Kind]) -> Vec<Kind> {
        let mut tally = Tally::default();
        for kind in kinds {
            outbox.deliver(&delivery(kind.clone()), &AtomicBool::new(false), &mut tally);
        }
        let mut batch = Vec::new();
        let taken = outbox.take(&mut batch);
        outbox.release(taken);
        batch.iter().map(|d| d.kind.clone()).collect()
    }

    #[test]
    fn a_reset_moves_the_filter_to_the_new_epoch_unless_the_reply_was_there() {
        let reset = |epoch: &str, offset| Kind::Reset {
            epoch: epoch.into(),
            offset,
        };
        // The reply was in e1 up to 5: the reset to e2 is news, and moves the filter to e2/3.
        let outbox = Outbox::new(1 << 20, None, None);
        outbox.set_filter(1, "e1".into(), 5);
        let kinds = [
            Kind::Publication(5),
            reset("e2", 3),
            Kind::Publication(3),
            Kind::Publication(4),
        ];
        assert_eq!(
            passing(&outbox, &kinds),
            [reset("e2", 3), Kind::Publication(4)]
        );
        // The reply was read from e2 at 7: a reset to e2/3 queued before it is stale, and
        // 4..=7 came with the reply.
        let outbox = Outbox::new(1 << 20, None, None);
        outbox.set_filter(1, "e2".into(), 7);
        let kinds = [reset("e2", 3), Kind::Publication(7), Kind::Publication(8)];
        assert_eq!(passing(&outbox, &kinds), [Kind::Publication(8)]);
        // The reply was in e2 but before the reset point: it missed 2..=3, so it is told.
        let outbox = Outbox::new(1 << 20, None, None);
        outbox.set_filter(1, "e2".into(), 1);
        assert_eq!(
            passing(&outbox, &[reset("e2", 3), Kind::Publication(4)]),
            [reset("e2", 3), Kind::Publication(4)]
        );
    }

    #[test]
    fn a_gap_the_reply_covered_is_dropped_and_others_move_the_filter() {
        let outbox = Outbox::new(1 << 20, None, None);
        outbox.set_filter(1, "e".into(), 9);
        let kinds = [
            Kind::Gap { last: 6 },
            Kind::Publication(9),
            Kind::Gap { last: 12 },
            Kind::Publication(13),
            Kind::Presence,
        ];
        assert_eq!(
            passing(&outbox, &kinds),
            [
                Kind::Gap { last: 12 },
                Kind::Publication(13),
                Kind::Presence
            ]
        );
        // The reply stopped at 3, inside the lost range: the gap is news; the filter moves to
        // its end (nothing at or below it comes live any more).
        let outbox = Outbox::new(1 << 20, None, None);
        outbox.set_filter(1, "e".into(), 3);
        let kinds = [Kind::Gap { last: 6 }, Kind::Publication(7)];
        assert_eq!(passing(&outbox, &kinds), kinds);
    }

    #[test]
    fn overflow_drops_and_signals_once() {
        let mut tally = Tally::default();
        let outbox = Outbox::new(100, None, None);
        let delivery = forty_bytes();
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        assert_eq!(tally.slow_consumers, 0);
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        assert_eq!(tally.slow_consumers, 1);
        assert_eq!(tally.dropped, 3);
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
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        assert_eq!(tally.slow_consumers, 1);
        assert_eq!(tally.dropped, 4);
    }

    #[test]
    fn taken_bytes_count_until_released() {
        let mut tally = Tally::default();
        let outbox = Outbox::new(100, None, None);
        let delivery = forty_bytes();
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        let mut batch = Vec::new();
        let taken = outbox.take(&mut batch);
        assert_eq!(taken, 42);
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        assert_eq!(tally.slow_consumers, 1, "still counted");
        let outbox = Outbox::new(100, None, None);
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        batch.clear();
        let taken = outbox.take(&mut batch);
        outbox.release(taken);
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        outbox.deliver(&delivery, &AtomicBool::new(false), &mut tally);
        assert_eq!(tally.slow_consumers, 1, "released");
    }
}
