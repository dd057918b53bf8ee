//! The driver loop shared by [`WebSocket`](crate::WebSocket) and its split halves: read into a
//! buffer, feed the [`Connection`], hand out events, write transmits vectored, run the timers.
//!
//! Everything is poll-based; the async methods of the public types are thin wrappers.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use duplex_proto::{
    CloseCode, CloseFrame, Config, Connection, Event, Message, Role, State, Timers, UsageError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::error::{Error, Timeout};

/// Runtime options of a connection: timers and buffer sizes. Shared by both roles; the protocol
/// limits live in [`duplex_proto::Config`]. The timers are run by the protocol core and mean
/// what [`duplex_proto::Timers`] says, in every runtime; these fields override the `Config`'s.
///
/// ```
/// use std::time::Duration;
/// let options = duplex::WebSocketOptions {
///     ping_interval: Some(Duration::from_secs(20)),
///     idle_timeout: Some(Duration::from_secs(60)),
///     ..Default::default()
/// };
/// assert_eq!(options.close_timeout, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketOptions {
    /// Send a ping when nothing was received for this long, and again every interval while
    /// the peer stays quiet (a peer that keeps sending is not pinged). Default: none.
    ///
    /// Timers run while the receive side is polled (`recv`, `recv_event`, the `Stream`, or the
    /// [`WebSocketReceiver`](crate::WebSocketReceiver) half), which a live connection always is.
    pub ping_interval: Option<Duration>,
    /// When nothing at all was received for this long, start the close handshake with Close
    /// 1001 "idle timeout" (pair it with `ping_interval` shorter than it, so a healthy peer's
    /// pongs count). If the peer does not answer within `close_timeout`, the connection ends
    /// with [`Timeout::Idle`]. Default: none.
    pub idle_timeout: Option<Duration>,
    /// How long the close handshake may take, from sending or receiving the first Close frame
    /// (or from a failure) until the transport is shut; after that the socket is abandoned.
    /// Default: 5 s.
    pub close_timeout: Duration,
    /// Bytes queued for writing above which the `Sink` (and `send`) waits for the socket before
    /// accepting more. Default: 128 KiB.
    pub write_buffer_size: usize,
    /// How much to read from the socket at once. Default: 64 KiB.
    pub read_chunk_size: usize,
}

impl Default for WebSocketOptions {
    fn default() -> Self {
        WebSocketOptions {
            ping_interval: None,
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            write_buffer_size: 128 * 1024,
            read_chunk_size: 64 * 1024,
        }
    }
}

thread_local! {
    /// Where every connection on this thread reads into. A connection keeps only what the core
    /// did not consume (rarely more than a partial header), so idle connections hold no buffer;
    /// single-frame messages point into this buffer without a copy, and it is reused once they
    /// are dropped.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    /// Where small frames are gathered for streams without vectored writes.
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many buffers one vectored write carries at most (two per frame: header and payload).
/// Small on purpose: the array is built on every write, and a longer queue just takes another
/// round of the loop.
const MAX_IO_SLICES: usize = 16;
/// For streams without vectored writes: small frames are copied together up to this size.
const GATHER_LIMIT: usize = 16 * 1024;

/// Waker slots of the two tasks that may write (the reader flushing pongs, the writer). The
/// socket keeps only the waker of the last task that polled it for writing, so while the halves
/// are split it gets a waker that wakes both, and neither can miss its wake-up.
#[derive(Default)]
struct WriteWakers {
    slots: Mutex<[Option<Waker>; 2]>,
}

impl Wake for WriteWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let taken = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            [slots[0].take(), slots[1].take()]
        };
        for waker in taken.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// Which side is writing: the receive path (flushing pongs and close replies) or the send path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Reader = 0,
    Writer = 1,
}

/// Where the receive side stands.
enum Rx {
    Open,
    /// A fatal error: flush what is queued if `flush` (the Close frame of a protocol error), shut
    /// the transport, then report `error`.
    Failing {
        /// Boxed: failing is rare, and the state lives in every connection.
        error: Box<Error>,
        flush: bool,
    },
    /// The error was reported, or the close handshake finished and the transport was shut.
    Done,
}

/// The state behind a [`WebSocket`](crate::WebSocket).
pub(crate) struct Core<S> {
    stream: S,
    conn: Connection,
    /// Bytes read but not consumed by the connection: the handshake's leftovers, a partial frame
    /// header, the start of a control frame. Empty (and unallocated) most of the time: reads go
    /// to a per-thread scratch buffer, so an idle connection holds no read buffer.
    read_buf: BytesMut,
    /// Bytes in `read_buf` not yet fed to the connection (the handshake's leftovers).
    unfed: bool,
    read_eof: bool,
    /// Written bytes that may sit in a buffer of the stream (TLS) until `poll_flush`.
    needs_flush: bool,
    options: WebSocketOptions,
    protocol: Option<Box<str>>,
    rx: Rx,
    shut_down: bool,
    /// The peer's Close frame, once it arrived.
    /// Boxed, like the rest of what a connection needs only at its end.
    peer_close: Option<Box<Option<CloseFrame>>>,
    /// Armed at the core's `poll_timeout()`: the one timer of the connection.
    timer: Option<Pin<Box<Sleep>>>,
    /// The core started the close for the idle timeout (reported if it goes unanswered).
    idle_closed: bool,
    /// Set once split: the waker handed to the socket for writes.
    shared_write_waker: Option<Box<(Arc<WriteWakers>, Waker)>>,
    /// The receive side's waker, to wake it when the send side starts the close (arming a timer
    /// only the receive side polls).
    reader_waker: Option<Waker>,
}

impl<S> fmt::Debug for Core<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("role", &self.conn.role())
            .field("state", &self.conn.state())
            .field("protocol", &self.protocol)
            .field("queued_bytes", &self.conn.pending_transmit_bytes())
            .finish_non_exhaustive()
    }
}

impl<S> Core<S> {
    pub(crate) fn new(
        stream: S,
        role: Role,
        config: Config,
        options: WebSocketOptions,
        leftover: BytesMut,
        protocol: Option<String>,
    ) -> Self {
        Self::with_connection(
            stream,
            Connection::new(role, config),
            options,
            leftover,
            protocol,
        )
    }

    /// Drives `conn`, configured by a handshake (`duplex_proto::handshake`), with the timers of
    /// `options`.
    pub(crate) fn with_connection(
        stream: S,
        mut conn: Connection,
        options: WebSocketOptions,
        leftover: BytesMut,
        protocol: Option<String>,
    ) -> Self {
        conn.set_timers(&Timers {
            ping_interval: options.ping_interval,
            idle_timeout: options.idle_timeout,
            close_timeout: options.close_timeout,
        });
        // Starts the core's clock.
        conn.handle_timeout(Instant::now().into_std());
        Core {
            stream,
            conn,
            unfed: !leftover.is_empty(),
            // The handshake's buffer: keep it only if it holds WebSocket bytes.
            read_buf: if leftover.is_empty() {
                BytesMut::new()
            } else {
                leftover
            },
            read_eof: false,
            needs_flush: false,
            options,
            protocol: protocol.map(String::into_boxed_str),
            rx: Rx::Open,
            shut_down: false,
            peer_close: None,
            timer: None,
            idle_closed: false,
            shared_write_waker: None,
            reader_waker: None,
        }
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn stream(&self) -> &S {
        &self.stream
    }

    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub(crate) fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub(crate) fn options(&self) -> &WebSocketOptions {
        &self.options
    }

    pub(crate) fn peer_close(&self) -> Option<&CloseFrame> {
        self.peer_close.as_deref().and_then(Option::as_ref)
    }

    /// Prepares for use from two tasks.
    pub(crate) fn set_split(&mut self) {
        if self.shared_write_waker.is_none() {
            let wakers = Arc::new(WriteWakers::default());
            let waker = Waker::from(wakers.clone());
            self.shared_write_waker = Some(Box::new((wakers, waker)));
        }
    }

    /// Records a fatal error (the first one wins). Unless it is the core's own (a violation,
    /// whose Close is queued), the transport is of no more use: the core is told so, which
    /// also starts its close timeout, bounding the teardown.
    fn fail(&mut self, error: Error, flush: bool) {
        if matches!(self.rx, Rx::Open) {
            tracing::debug!(%error, "websocket failed");
            if !flush {
                self.conn.recv_eof();
            }
            self.rx = Rx::Failing {
                error: Box::new(error),
                flush,
            };
        }
    }

    /// Runs the core's timers: arms the one `Sleep` at `poll_timeout()` and, when it fires,
    /// steps the core. Returns true if it stepped (the loop should look again: a ping or a
    /// Close may be queued, the transport may have to close); registers the waker otherwise.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.conn.poll_timeout() else {
            return false;
        };
        let deadline = Instant::from_std(deadline);
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self.timer.insert(Box::pin(sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let was_open = self.conn.state() == State::Open;
        self.conn.handle_timeout(Instant::now().into_std());
        // Stepping starts a close only for the idle timeout.
        self.idle_closed |= was_open && self.conn.state() != State::Open;
        true
    }

    /// Whether the core's close timeout ran out; runs the timer (and registers the waker)
    /// otherwise.
    fn poll_close_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while !self.conn.close_timed_out() {
            if !self.poll_timer(cx) {
                return false;
            }
        }
        true
    }

    /// Whether sending is still possible as far as the transport goes.
    fn check_writable(&self) -> Result<(), Error> {
        match self.rx {
            Rx::Open => Ok(()),
            Rx::Failing { .. } | Rx::Done => Err(Error::ConnectionClosed),
        }
    }

    // ---- receive path ------------------------------------------------------------------------

    /// The next event: reads, feeds the connection, flushes what it queued (pongs, close
    /// replies), runs the timers and shuts the transport when the connection is over.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, Error>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let polled = self.poll_event_inner(cx);
        if polled.is_pending() {
            match &mut self.reader_waker {
                Some(waker) => waker.clone_from(cx.waker()),
                None => self.reader_waker = Some(cx.waker().clone()),
            }
        }
        polled
    }

    fn poll_event_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, Error>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            if let Some(event) = self.conn.poll_event() {
                if let Event::Close(frame) = &event {
                    self.peer_close = Some(Box::new(frame.clone()));
                }
                // A pong or a close reply may have been queued: send it now, even if the
                // application only ever reads.
                if let Poll::Ready(Err(e)) = self.poll_write_out(cx, Side::Reader) {
                    self.fail(Error::Io(e), false);
                }
                if let Event::Pong(_) = &event {
                    // The answer to a keepalive ping: the connection is otherwise quiet, so the
                    // queues its round trip allocated go now rather than stay for its life (the
                    // engine does the same).
                    self.conn.shrink_to_fit();
                }
                return Poll::Ready(Some(Ok(event)));
            }

            // A violation, found by `recv` or carried out by `poll_event` once the events
            // before it were drained: its Close frame is queued.
            if let (Rx::Open, Some(e)) = (&self.rx, self.conn.protocol_error()) {
                let error = Error::Protocol(e.clone());
                self.fail(error, true);
            }

            match self.rx {
                Rx::Open => {}
                Rx::Failing { flush, .. } => {
                    ready!(self.poll_teardown(cx, flush));
                    let Rx::Failing { error, .. } = std::mem::replace(&mut self.rx, Rx::Done)
                    else {
                        unreachable!("checked above")
                    };
                    return Poll::Ready(Some(Err(*error)));
                }
                Rx::Done => return Poll::Ready(None),
            }

            if let Poll::Ready(Err(e)) = self.poll_write_out(cx, Side::Reader) {
                self.fail(Error::Io(e), false);
                continue;
            }

            // The core says when the transport goes (RFC 6455 section 7.1.1): a server once
            // the close handshake is over and its frames are out, a client once the server
            // closed first, either after the close timeout.
            if self.conn.should_close_transport() {
                if self.conn.close_timed_out() && !self.conn.is_closed() {
                    // Our Close was never answered.
                    let timeout = if self.idle_closed {
                        Timeout::Idle
                    } else {
                        Timeout::Close
                    };
                    self.fail(Error::Timeout(timeout), false);
                    continue;
                }
                ready!(self.poll_teardown(cx, true));
                self.rx = Rx::Done;
                return Poll::Ready(None);
            }

            if self.poll_timer(cx) {
                continue;
            }

            if self.unfed {
                self.unfed = false;
                self.feed();
                continue;
            }
            if self.read_eof {
                // Only reached while our last frames are still being written: wait for that.
                return Poll::Pending;
            }

            let chunk = self.options.read_chunk_size.max(1024);
            let read = SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                scratch.clear();
                // Reclaims the whole allocation when no message still points into it.
                scratch.reserve(chunk);
                let read = {
                    let mut fut = pin!(self.stream.read_buf(&mut *scratch));
                    fut.as_mut().poll(cx)
                };
                if let Poll::Ready(Ok(n)) = read {
                    if n > 0 {
                        if self.read_buf.is_empty() {
                            self.feed_from(&mut scratch);
                            if !scratch.is_empty() {
                                // A partial header or control frame: the only bytes kept.
                                self.read_buf.extend_from_slice(&scratch);
                            }
                        } else {
                            self.read_buf.extend_from_slice(&scratch);
                            self.feed();
                        }
                        scratch.clear();
                    }
                }
                read
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => self.fail(Error::Io(e), false),
                Poll::Ready(Ok(0)) => {
                    self.read_eof = true;
                    let closed = self.conn.is_closed();
                    self.conn.recv_eof();
                    if !closed {
                        self.fail(Error::eof("connection closed without a close frame"), false);
                    }
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Feeds `read_buf` (leftovers) to the connection, and lets go of its memory once empty.
    fn feed(&mut self) {
        let mut buf = std::mem::take(&mut self.read_buf);
        self.feed_from(&mut buf);
        if !buf.is_empty() {
            self.read_buf = buf;
        }
    }

    /// Feeds received bytes to the connection; what it leaves stays in `buf`.
    fn feed_from(&mut self, buf: &mut BytesMut) {
        // A violation is reported from `protocol_error` once the events before it are drained
        // (`poll_event_inner`): the core queued its Close frame either way.
        let _ = self.conn.recv(buf);
    }

    /// Turns on permessage-deflate with what the handshake negotiated.
    #[cfg(feature = "deflate")]
    pub(crate) fn set_deflate(
        &mut self,
        negotiated: duplex_proto::extensions::deflate::Negotiated,
    ) {
        self.conn.set_deflate(negotiated);
    }

    /// Flushes (if `flush`) and shuts the transport, giving up at the close deadline.
    fn poll_teardown(&mut self, cx: &mut Context<'_>, flush: bool) -> Poll<()>
    where
        S: AsyncWrite + Unpin,
    {
        if self.shut_down {
            return Poll::Ready(());
        }
        if flush {
            match self.poll_write_out(cx, Side::Reader) {
                Poll::Ready(_) => {}
                Poll::Pending if self.poll_close_expired(cx) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
        let shutdown = {
            let mut wcx =
                Context::from_waker(write_waker(&self.shared_write_waker, cx, Side::Reader));
            Pin::new(&mut self.stream).poll_shutdown(&mut wcx)
        };
        match shutdown {
            Poll::Ready(_) => {}
            Poll::Pending if self.poll_close_expired(cx) => {}
            Poll::Pending => return Poll::Pending,
        }
        self.shut_down = true;
        Poll::Ready(())
    }

    /// The next whole message, skipping control events (the core already answered pings).
    pub(crate) fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            return Poll::Ready(match ready!(self.poll_event(cx)) {
                Some(Ok(Event::Message(message))) => Some(Ok(message)),
                Some(Ok(Event::Fragment { .. })) => Some(Err(Error::StreamingReceive)),
                Some(Ok(Event::Ping(_) | Event::Pong(_) | Event::Close(_))) => continue,
                Some(Err(e)) => Some(Err(e)),
                None => None,
            });
        }
    }

    /// Drives the connection to its end, discarding data, after a close was started.
    pub(crate) fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            match ready!(self.poll_event(cx)) {
                Some(Ok(_)) => continue,
                // The peer dropped the connection instead of answering: closed all the same.
                Some(Err(Error::Io(e)))
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        && self.conn.state() != State::Open =>
                {
                    continue;
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }

    // ---- send path ---------------------------------------------------------------------------

    /// Sink readiness: accepts more once the queued bytes are under `write_buffer_size`.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>
    where
        S: AsyncWrite + Unpin,
    {
        self.check_writable()?;
        if self.conn.pending_transmit_bytes() >= self.options.write_buffer_size {
            ready!(self.poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.conn.pending_transmit_bytes()
    }

    /// Frees the connection's event and transmit queues if they are empty (see
    /// [`duplex_proto::Connection::shrink_to_fit`]) and the read buffer if nothing is in it.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.conn.shrink_to_fit();
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
    }

    pub(crate) fn start_send(&mut self, message: Message) -> Result<(), Error> {
        self.check_writable()?;
        self.conn.send(message)?;
        Ok(())
    }

    pub(crate) fn start_send_prepared(
        &mut self,
        prepared: &duplex_proto::PreparedMessage,
    ) -> Result<(), Error> {
        self.check_writable()?;
        self.conn.send_prepared(prepared)?;
        Ok(())
    }

    pub(crate) fn start_send_fragment(
        &mut self,
        kind: duplex_proto::DataKind,
        data: Bytes,
        fin: bool,
    ) -> Result<(), Error> {
        self.check_writable()?;
        self.conn.send_fragment(kind, data, fin)?;
        Ok(())
    }

    pub(crate) fn start_ping(&mut self, payload: Bytes) -> Result<(), Error> {
        self.check_writable()?;
        self.conn.ping(payload)?;
        Ok(())
    }

    pub(crate) fn start_pong(&mut self, payload: Bytes) -> Result<(), Error> {
        self.check_writable()?;
        self.conn.pong(payload)?;
        Ok(())
    }

    /// Queues our Close frame (a no-op if the close handshake already started) and arms the
    /// close timer.
    pub(crate) fn start_close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        match self.conn.close(code, reason) {
            Ok(()) => {
                // The receive side runs the timer: make sure it sees the core's new deadline.
                // Only on the transition, so polling a close repeatedly does not spin.
                if let Some(waker) = self.reader_waker.take() {
                    waker.wake();
                }
                Ok(())
            }
            // Already closing (or closed): nothing to start.
            Err(duplex_proto::Error::Usage(UsageError::Closed)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes everything queued and flushes the stream.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>
    where
        S: AsyncWrite + Unpin,
    {
        match ready!(self.poll_write_out(cx, Side::Writer)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                // The receive side reports the failure too (io::Error is not Clone).
                self.fail(Error::Io(io::Error::new(e.kind(), e.to_string())), false);
                Poll::Ready(Err(Error::Io(e)))
            }
        }
    }

    /// Writes every queued frame, several per syscall, then flushes the stream.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, side: Side) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + Unpin,
    {
        loop {
            if !self.conn.has_pending_transmit() {
                if self.needs_flush {
                    let mut wcx =
                        Context::from_waker(write_waker(&self.shared_write_waker, cx, side));
                    ready!(Pin::new(&mut self.stream).poll_flush(&mut wcx))?;
                    self.needs_flush = false;
                }
                return Poll::Ready(Ok(()));
            }
            let written = ready!(self.poll_write_some(cx, side))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.needs_flush = true;
            self.conn.advance_transmit(written);
        }
    }

    /// One write of as much of the queue as the stream takes: a vectored write of up to
    /// [`MAX_IO_SLICES`] slices straight from the connection's frames, or, for streams without
    /// vectored writes, small frames gathered in a per-thread buffer.
    fn poll_write_some(&mut self, cx: &mut Context<'_>, side: Side) -> Poll<io::Result<usize>>
    where
        S: AsyncWrite + Unpin,
    {
        let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
        let count = self.conn.fill_io_slices(&mut slices);
        let slices = &slices[..count];
        let mut wcx = Context::from_waker(write_waker(&self.shared_write_waker, cx, side));
        if count == 1 {
            return Pin::new(&mut self.stream).poll_write(&mut wcx, &slices[0]);
        }
        if !self.stream.is_write_vectored() && slices[0].len() < GATHER_LIMIT {
            // No vectored writes (the default would write one slice per call): copy small
            // frames together instead; the progress accounting is the same.
            return GATHER.with(|cell| {
                let mut gather = cell.borrow_mut();
                gather.clear();
                for slice in slices {
                    let room = GATHER_LIMIT.saturating_sub(gather.len());
                    if room == 0 {
                        break;
                    }
                    gather.extend_from_slice(&slice[..slice.len().min(room)]);
                }
                Pin::new(&mut self.stream).poll_write(&mut wcx, &gather)
            });
        }
        Pin::new(&mut self.stream).poll_write_vectored(&mut wcx, slices)
    }
}

/// The waker to hand the socket for a write by `side`: the task's own, or once split the shared
/// one, after recording the task's in its slot.
fn write_waker<'a>(
    shared: &'a Option<Box<(Arc<WriteWakers>, Waker)>>,
    cx: &'a Context<'_>,
    side: Side,
) -> &'a Waker {
    match shared.as_deref() {
        None => cx.waker(),
        Some((wakers, waker)) => {
            let mut slots = wakers.slots.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut slots[side as usize] {
                Some(slot) => slot.clone_from(cx.waker()),
                slot @ None => *slot = Some(cx.waker().clone()),
            }
            waker
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::ReadBuf;

    /// A stream that records writes, takes at most `max` bytes per call, and never has
    /// anything to read.
    struct Recorder {
        written: Vec<u8>,
        calls: usize,
        max: usize,
        vectored: bool,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.max);
            this.written.extend_from_slice(&buf[..n]);
            this.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                return self.poll_write(cx, first);
            }
            let this = self.get_mut();
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(this.max - n);
                this.written.extend_from_slice(&buf[..take]);
                n += take;
                if n == this.max {
                    break;
                }
            }
            this.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn core(max: usize, vectored: bool) -> Core<Recorder> {
        let recorder = Recorder {
            written: Vec::new(),
            calls: 0,
            max,
            vectored,
        };
        Core::new(
            recorder,
            Role::Client,
            Config::default(),
            WebSocketOptions::default(),
            BytesMut::new(),
            None,
        )
    }

    fn messages() -> Vec<Message> {
        (0..10)
            .map(|i| Message::binary(vec![i as u8; 10 + 50 * i]))
            .collect()
    }

    /// Sends `messages()` through `core`, flushes, and decodes what was written.
    fn send_and_decode(core: &mut Core<Recorder>) -> Vec<Message> {
        for message in messages() {
            core.start_send(message).unwrap();
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(core.poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(core.conn.pending_transmit_bytes(), 0);
        assert!(!core.conn.has_pending_transmit());

        let mut server = Connection::new(Role::Server, Config::default());
        let mut wire = BytesMut::from(&core.stream.written[..]);
        server.recv(&mut wire).unwrap();
        std::iter::from_fn(|| server.poll_event())
            .map(|event| match event {
                Event::Message(message) => message,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn several_frames_go_out_in_one_vectored_write() {
        let mut core = core(usize::MAX, true);
        assert_eq!(send_and_decode(&mut core), messages());
        // 10 frames are 20 slices: two writes of at most MAX_IO_SLICES, not 10 or 20.
        assert_eq!(
            core.stream.calls,
            (2 * messages().len()).div_ceil(MAX_IO_SLICES)
        );
    }

    #[test]
    fn partial_vectored_writes_resume_at_the_right_byte() {
        for max in [1, 2, 7, 13, 100] {
            let mut core = core(max, true);
            assert_eq!(send_and_decode(&mut core), messages(), "max {max}");
        }
    }

    #[test]
    fn non_vectored_streams_get_small_frames_gathered() {
        let mut core = core(usize::MAX, false);
        assert_eq!(send_and_decode(&mut core), messages());
        // 2.6 KB of frames in two gathered writes (of at most MAX_IO_SLICES parts) rather
        // than 20 small ones.
        assert_eq!(
            core.stream.calls,
            (2 * messages().len()).div_ceil(MAX_IO_SLICES)
        );
        for max in [1, 5, 64] {
            let mut core = self::core(max, false);
            assert_eq!(send_and_decode(&mut core), messages(), "max {max}");
        }
    }
}
