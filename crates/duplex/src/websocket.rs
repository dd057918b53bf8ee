//! [`WebSocket`]: an open connection over any async byte stream, and its split halves.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use duplex_proto::{
    CloseCode, CloseFrame, Config, Connection, DataKind, Event, Message, Role, State,
};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::core::{Core, WebSocketOptions};
use crate::error::Error;

/// An open WebSocket connection over the stream `S`.
///
/// Receive with [`recv`](WebSocket::recv) (whole messages) or
/// [`recv_event`](WebSocket::recv_event) (also pings, pongs, the peer's Close and, with
/// [`Config::streaming_receive`], fragments); send with [`send`](WebSocket::send),
/// [`send_fragment`](WebSocket::send_fragment), [`ping`](WebSocket::ping); end with
/// [`close`](WebSocket::close). It is also a `Stream` of messages and a `Sink` of messages, and
/// [`split`](WebSocket::split)s into halves for two tasks.
///
/// Pings are answered by the protocol core and the answers are written from the receive path,
/// so keep receiving even if you only send.
///
/// ```no_run
/// # async fn run() -> Result<(), duplex::Error> {
/// use duplex::{CloseCode, Message};
/// let (mut ws, _response) = duplex::connect("ws://127.0.0.1:9001/chat").await?;
/// ws.send(Message::text("hello")).await?;
/// while let Some(message) = ws.recv().await {
///     println!("{:?}", message?);
/// }
/// ws.close(CloseCode::NORMAL, "bye").await?;
/// # Ok(()) }
/// ```
pub struct WebSocket<S> {
    core: Core<S>,
}

impl<S> fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}

impl<S> WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps a stream whose opening handshake is already done (for example by an HTTP server's
    /// upgrade). `leftover` holds bytes read past the handshake: they are the start of the
    /// WebSocket stream and are processed before anything is read.
    ///
    /// ```
    /// use duplex::{WebSocket, WebSocketOptions};
    /// use duplex_proto::{Config, Role};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (a, _b) = tokio::io::duplex(1024);
    /// let ws = WebSocket::from_raw(a, Role::Server, Config::default(), WebSocketOptions::default(),
    ///     bytes::BytesMut::new(), None);
    /// assert_eq!(ws.role(), Role::Server);
    /// # }
    /// ```
    pub fn from_raw(
        stream: S,
        role: Role,
        config: Config,
        options: WebSocketOptions,
        leftover: BytesMut,
        protocol: Option<String>,
    ) -> Self {
        WebSocket {
            core: Core::new(stream, role, config, options, leftover, protocol),
        }
    }

    /// Wraps a stream whose opening handshake is done, with the [`Connection`] that handshake
    /// configured ([`Upgrade::connection`](duplex_proto::handshake::Upgrade) on a server,
    /// [`Connected::connection`](duplex_proto::handshake::Connected) on a client: subprotocol
    /// and permessage-deflate already agreed). `leftover` holds bytes read past the handshake.
    ///
    /// ```
    /// use duplex::{WebSocket, WebSocketOptions};
    /// use duplex_proto::{Config, Connection, Role};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (a, _b) = tokio::io::duplex(1024);
    /// let conn = Connection::new(Role::Server, Config::default());
    /// let ws = WebSocket::from_connection(a, conn, WebSocketOptions::default(),
    ///     bytes::BytesMut::new(), Some("chat".into()));
    /// assert_eq!(ws.protocol(), Some("chat"));
    /// # }
    /// ```
    pub fn from_connection(
        stream: S,
        connection: Connection,
        options: WebSocketOptions,
        leftover: BytesMut,
        protocol: Option<String>,
    ) -> Self {
        WebSocket {
            core: Core::with_connection(stream, connection, options, leftover, protocol),
        }
    }

    /// Turns on permessage-deflate (RFC 7692) with parameters negotiated by a handshake done
    /// elsewhere (see [`duplex_proto::extensions::deflate`]). [`connect_with`](crate::connect_with)
    /// and [`accept_with`](crate::accept_with) do this themselves.
    #[cfg(feature = "deflate")]
    pub fn with_deflate(
        mut self,
        negotiated: duplex_proto::extensions::deflate::Negotiated,
    ) -> Self {
        self.core.set_deflate(negotiated);
        self
    }

    /// The next message. `None` once the connection is closed (after the close handshake, or
    /// after an error was returned). Pings, pongs and the peer's Close are handled and skipped.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.core.poll_message(cx)).await
    }

    /// The next event: messages, pings (already answered), pongs, the peer's Close frame, and
    /// [`Event::Fragment`]s with [`Config::streaming_receive`]. `None` once closed.
    pub async fn recv_event(&mut self) -> Option<Result<Event, Error>> {
        poll_fn(|cx| self.core.poll_event(cx)).await
    }

    /// Sends a message and flushes it.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        self.core.start_send(message)?;
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Queues a message without flushing it: it goes out with the next flush, or as soon as
    /// the receive side is polled (`recv`, `recv_event`), in one vectored write with whatever
    /// else is queued. Waits only while more than `write_buffer_size` bytes are queued. An echo
    /// loop that feeds and then receives sends every reply of a read in one system call.
    pub async fn feed(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        self.core.start_send(message)
    }

    /// [`WebSocket::feed`] for a [`PreparedMessage`](duplex_proto::PreparedMessage).
    pub async fn feed_prepared(
        &mut self,
        prepared: &duplex_proto::PreparedMessage,
    ) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        self.core.start_send_prepared(prepared)
    }

    /// Bytes queued for writing and not yet written to the stream.
    pub fn queued_bytes(&self) -> usize {
        self.core.queued_bytes()
    }

    /// Frees what the connection holds for traffic that has passed: its event and transmit
    /// queues when empty, the read buffer when nothing waits in it. A server holding many
    /// mostly idle connections calls it when one goes quiet (after answering a command, say):
    /// the next message allocates them again. Keepalive round trips do it by themselves.
    pub fn shrink_to_fit(&mut self) {
        self.core.shrink_to_fit();
    }

    /// Sends a message framed once for many connections (fan-out): see
    /// [`PreparedMessage`](duplex_proto::PreparedMessage). The frame's bytes are shared, not
    /// copied, on every server connection that can take them as they are.
    pub async fn send_prepared(
        &mut self,
        prepared: &duplex_proto::PreparedMessage,
    ) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        self.core.start_send_prepared(prepared)?;
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Sends one piece of a fragmented message (RFC 6455 section 5.4): the first call starts a
    /// message of `kind`, the next ones continue it, `fin` ends it. Control frames and pongs may
    /// interleave; other messages may not until `fin`.
    pub async fn send_fragment(
        &mut self,
        kind: DataKind,
        data: impl Into<Bytes>,
        fin: bool,
    ) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        self.core.start_send_fragment(kind, data.into(), fin)?;
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Sends a ping (payload at most 125 bytes). The pong arrives as [`Event::Pong`].
    pub async fn ping(&mut self, payload: impl Into<Bytes>) -> Result<(), Error> {
        self.core.start_ping(payload.into())?;
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Sends an unsolicited pong (a one-way heartbeat; pings are answered automatically).
    pub async fn pong(&mut self, payload: impl Into<Bytes>) -> Result<(), Error> {
        self.core.start_pong(payload.into())?;
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Writes everything queued (after `Sink::start_send` / `feed`).
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Closes the connection: sends a Close frame with `code` and `reason` (cut to 123 bytes),
    /// waits for the peer's (data received meanwhile is discarded), and shuts the transport.
    /// Bounded by [`WebSocketOptions::close_timeout`]. Returns the peer's Close frame, if it
    /// sent a non-empty one.
    ///
    /// Calling it after the peer started the close just completes the handshake.
    pub async fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> Result<Option<CloseFrame>, Error> {
        self.core.start_close(code, reason)?;
        poll_fn(|cx| self.core.poll_closed(cx)).await?;
        Ok(self.core.peer_close().cloned())
    }

    /// Starts the close handshake without waiting: the Close frame goes out and the handshake
    /// completes as the receive side is polled (the `Stream` ends once it is over), or drive it
    /// with [`WebSocket::poll_closed`]. For hand-written futures; async code uses
    /// [`WebSocket::close`]. A no-op if the handshake already started.
    pub fn start_close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.core.start_close(code, reason)
    }

    /// Drives the connection to its end after [`WebSocket::start_close`], discarding data.
    pub fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.core.poll_closed(cx)
    }

    /// Splits into a sending and a receiving half, usable from different tasks.
    ///
    /// The halves share the connection behind a lock held only for the duration of a poll
    /// (never across an `.await`), so the receiving half can queue and flush pongs and close
    /// replies while the sending half is idle, and vice versa.
    pub fn split(mut self) -> (WebSocketSender<S>, WebSocketReceiver<S>) {
        self.core.set_split();
        let shared = Arc::new(Mutex::new(self.core));
        (
            WebSocketSender {
                shared: shared.clone(),
            },
            WebSocketReceiver { shared },
        )
    }
}

impl<S> WebSocket<S> {
    /// Our role.
    pub fn role(&self) -> Role {
        self.core.connection().role()
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.core.connection().state()
    }

    /// The subprotocol agreed on in the opening handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.core.protocol()
    }

    /// The peer's Close frame, once received.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.core.peer_close()
    }

    /// The runtime options.
    pub fn options(&self) -> &WebSocketOptions {
        self.core.options()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        self.core.stream()
    }

    /// The underlying stream, mutably. Reading or writing it directly corrupts the connection.
    pub fn get_mut(&mut self) -> &mut S {
        self.core.stream_mut()
    }
}

impl<S> Stream for WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().core.poll_message(cx)
    }
}

impl<S> Sink<Message> for WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().core.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.get_mut().core.start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().core.poll_flush(cx)
    }

    /// Closes with 1000 (normal) and drives the close handshake to its end, like
    /// [`WebSocket::close`].
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let core = &mut self.get_mut().core;
        core.start_close(CloseCode::NORMAL, "")?;
        core.poll_closed(cx)
    }
}

type Shared<S> = Arc<Mutex<Core<S>>>;

fn lock<S>(shared: &Shared<S>) -> MutexGuard<'_, Core<S>> {
    // A panic while holding the lock leaves the state as consistent as between two polls.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sending half of a [`WebSocket`] (see [`WebSocket::split`]). A `Sink` of messages.
pub struct WebSocketSender<S> {
    shared: Shared<S>,
}

/// The receiving half of a [`WebSocket`] (see [`WebSocket::split`]). A `Stream` of messages.
///
/// Keep polling it: it answers pings, runs the keepalive and close timers, and ends the
/// connection when the close handshake completes.
pub struct WebSocketReceiver<S> {
    shared: Shared<S>,
}

impl<S> fmt::Debug for WebSocketSender<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WebSocketSender")
            .field(&*lock(&self.shared))
            .finish()
    }
}

impl<S> fmt::Debug for WebSocketReceiver<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WebSocketReceiver")
            .field(&*lock(&self.shared))
            .finish()
    }
}

/// [`WebSocketSender::reunite`] was given halves of two different connections.
pub struct ReuniteError<S>(pub WebSocketSender<S>, pub WebSocketReceiver<S>);

impl<S> fmt::Debug for ReuniteError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReuniteError(..)")
    }
}

impl<S> fmt::Display for ReuniteError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the halves belong to different WebSockets")
    }
}

impl<S> std::error::Error for ReuniteError<S> {}

impl<S> WebSocketSender<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Sends a message and flushes it.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| lock(&self.shared).poll_ready(cx)).await?;
        lock(&self.shared).start_send(message)?;
        poll_fn(|cx| lock(&self.shared).poll_flush(cx)).await
    }

    /// Queues a message without flushing; see [`WebSocket::feed`].
    pub async fn feed(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| lock(&self.shared).poll_ready(cx)).await?;
        lock(&self.shared).start_send(message)
    }

    /// Queues a prepared message without flushing; see [`WebSocket::feed_prepared`].
    pub async fn feed_prepared(
        &mut self,
        prepared: &duplex_proto::PreparedMessage,
    ) -> Result<(), Error> {
        poll_fn(|cx| lock(&self.shared).poll_ready(cx)).await?;
        lock(&self.shared).start_send_prepared(prepared)
    }

    /// Bytes queued for writing and not yet written to the stream.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.shared).queued_bytes()
    }

    /// Sends a message framed once for many connections; see [`WebSocket::send_prepared`].
    pub async fn send_prepared(
        &mut self,
        prepared: &duplex_proto::PreparedMessage,
    ) -> Result<(), Error> {
        poll_fn(|cx| lock(&self.shared).poll_ready(cx)).await?;
        lock(&self.shared).start_send_prepared(prepared)?;
        poll_fn(|cx| lock(&self.shared).poll_flush(cx)).await
    }

    /// Sends one piece of a fragmented message; see [`WebSocket::send_fragment`].
    pub async fn send_fragment(
        &mut self,
        kind: DataKind,
        data: impl Into<Bytes>,
        fin: bool,
    ) -> Result<(), Error> {
        poll_fn(|cx| lock(&self.shared).poll_ready(cx)).await?;
        lock(&self.shared).start_send_fragment(kind, data.into(), fin)?;
        poll_fn(|cx| lock(&self.shared).poll_flush(cx)).await
    }

    /// Sends a ping; the pong arrives on the receiving half as [`Event::Pong`].
    pub async fn ping(&mut self, payload: impl Into<Bytes>) -> Result<(), Error> {
        lock(&self.shared).start_ping(payload.into())?;
        poll_fn(|cx| lock(&self.shared).poll_flush(cx)).await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| lock(&self.shared).poll_flush(cx)).await
    }

    /// Sends a Close frame and flushes it. The receiving half then sees the peer's Close and
    /// ends; it enforces [`WebSocketOptions::close_timeout`], so keep polling it.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        lock(&self.shared).start_close(code, reason)?;
        poll_fn(|cx| lock(&self.shared).poll_flush(cx)).await
    }

    /// Puts the halves back together.
    pub fn reunite(self, receiver: WebSocketReceiver<S>) -> Result<WebSocket<S>, ReuniteError<S>> {
        if !Arc::ptr_eq(&self.shared, &receiver.shared) {
            return Err(ReuniteError(self, receiver));
        }
        drop(receiver);
        let mutex = Arc::into_inner(self.shared).expect("both halves were given");
        let core = mutex.into_inner().unwrap_or_else(PoisonError::into_inner);
        Ok(WebSocket { core })
    }
}

impl<S> WebSocketReceiver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The next message; see [`WebSocket::recv`].
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| lock(&self.shared).poll_message(cx)).await
    }

    /// The next event; see [`WebSocket::recv_event`].
    pub async fn recv_event(&mut self) -> Option<Result<Event, Error>> {
        poll_fn(|cx| lock(&self.shared).poll_event(cx)).await
    }

    /// The peer's Close frame, once received.
    pub fn peer_close(&self) -> Option<CloseFrame> {
        lock(&self.shared).peer_close().cloned()
    }
}

impl<S> Stream for WebSocketReceiver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        lock(&self.shared).poll_message(cx)
    }
}

impl<S> Sink<Message> for WebSocketSender<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        lock(&self.shared).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        lock(&self.shared).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        lock(&self.shared).poll_flush(cx)
    }

    /// Sends a Close frame with 1000 (normal) and flushes it; the receiving half completes the
    /// close handshake.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut core = lock(&self.shared);
        core.start_close(CloseCode::NORMAL, "")?;
        ready!(core.poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }
}
