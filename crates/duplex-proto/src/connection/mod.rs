//! The WebSocket connection state machine (RFC 6455 sections 5, 6 and 7), sans-IO.
//!
//! # Call protocol
//!
//! A [`Connection`] never touches a socket. The runtime around it:
//!
//! 1. **feeds** received bytes with [`Connection::recv`],
//! 2. **drains** what they produced with [`Connection::poll_event`], then reports a failure
//!    from [`Connection::protocol_error`] (the peer's violation; its Close is already queued),
//! 3. **commands** with [`Connection::send`], [`Connection::send_fragment`], [`Connection::ping`],
//!    [`Connection::pong`] and [`Connection::close`],
//! 4. **drains** the frames to write with [`Connection::poll_transmit`], and
//! 5. **runs the timers**: calls [`Connection::handle_timeout`] with the current time once when
//!    the connection opens (that starts the core's clock), then whenever the deadline from
//!    [`Connection::poll_timeout`] has passed (ask again after every call: feeding, commands
//!    and timeouts move it), and
//! 6. **closes the transport** when [`Connection::should_close_transport`] says so, after
//!    telling the core about the peer's end of stream with [`Connection::recv_eof`].
//!
//! The core reads no clock and has no randomness of its own but the operating system's, for a
//! client's masking keys (section 5.3). What it decides, it decides for every runtime:
//!
//! - A protocol violation by the peer fails the connection in one step: `recv` returns the
//!   error and the Close frame with the matching code is already queued (section 7.1.7), so
//!   every runtime gets the close codes right without knowing them.
//! - Whatever ends the connection (a violation, the peer's Close) while events are still
//!   waiting is held back until they are drained: [`Connection::poll_event`] carries it out
//!   when the queue runs empty, so what the application sends in answer to the messages that
//!   came first goes out before the Close frame. No runtime has to feed again.
//! - Timers ([`Timers`](crate::config::Timers) in [`Config::timers`]): a keepalive ping when
//!   nothing was received for `ping_interval`; Close 1001 "idle timeout" when nothing was
//!   received for `idle_timeout`; and `close_timeout` after a Close was sent or received (or
//!   the failure), the transport must be closed whether the peer answered or not.
//! - Who closes TCP first (section 7.1.1): a server as soon as the close handshake is over and
//!   its frames are written; a client waits for the server to do it (its end of stream), or for
//!   the close timeout.
//!
//! ```
//! use bytes::BytesMut;
//! use duplex_proto::{Connection, Event, Message, Role, Config};
//!
//! let mut client = Connection::new(Role::Client, Config::default());
//! let mut server = Connection::new(Role::Server, Config::default());
//!
//! client.send(Message::text("hello")).unwrap();
//! let mut wire = BytesMut::new();
//! while let Some(tx) = client.poll_transmit() {
//!     wire.extend_from_slice(tx.head());
//!     wire.extend_from_slice(tx.payload());
//! }
//! server.recv(&mut wire).unwrap();
//! assert_eq!(server.poll_event(), Some(Event::Message(Message::text("hello"))));
//! ```

mod mask_keys;
mod prepared;
mod recv;
mod settings;
#[cfg(test)]
mod tests;
mod timer;

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame, truncate_reason};
use crate::config::Config;
use crate::error::{Error, ProtocolError, UsageError};
#[cfg(feature = "deflate")]
use crate::frame::RSV1;
use crate::frame::{
    FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, encode_unmasked_short, first_byte,
    peek_payload_len,
};
use crate::mask::apply_mask;
use crate::message::{DataKind, Message};
use crate::role::Role;

pub use mask_keys::{MaskKeySource, os_mask_key};
pub use prepared::PreparedMessage;
use recv::Incoming;
pub(crate) use settings::Limits;
use settings::Settings;
pub use settings::SharedConfig;
use timer::{Clock, Tick};

/// Something the peer sent, ready for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text or binary message.
    Message(Message),
    /// With [`Config::streaming_receive`]: a piece of a data message as it arrived. Text pieces
    /// are validated but may end inside a character; `first` marks a new message, `fin` its end.
    Fragment {
        /// Text or binary.
        kind: DataKind,
        /// The piece.
        data: Bytes,
        /// The first piece of its message.
        first: bool,
        /// The last piece of its message.
        fin: bool,
    },
    /// A ping; the pong with the same payload is already queued.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The peer's Close frame (`None` for an empty one). If we had not sent a Close yet, the
    /// reply echoing its code is already queued. No event follows.
    Close(Option<CloseFrame>),
}

/// Where the close handshake stands (RFC 6455 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Data flows both ways.
    Open,
    /// We sent a Close and wait for the peer's; received data is still delivered.
    CloseSent,
    /// Both Close frames are exchanged, or the connection failed. Nothing more is sent or
    /// accepted; the transport can be shut once the transmits are drained.
    Closed,
}

/// One frame to write: a header of at most 14 bytes and a payload, kept apart so the runtime can
/// write both with one vectored write and the payload is never copied.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    head: [u8; MAX_HEADER_LEN],
    head_len: u8,
    payload: Bytes,
}

impl Transmit {
    fn new(header: &FrameHeader, payload: Bytes) -> Self {
        let (head, len) = header.encode();
        Transmit {
            head,
            head_len: len as u8,
            payload,
        }
    }

    /// The frame header.
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// The (already masked, for clients) payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Header plus payload length.
    pub fn len(&self) -> usize {
        usize::from(self.head_len) + self.payload.len()
    }

    /// Never true: every frame has a header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for Transmit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transmit")
            .field("head", &self.head())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A WebSocket connection after the opening handshake. See the [module docs](self) for the call
/// protocol.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    state: State,
    /// Limits, timer intervals, budget and masking-key source: the same for every connection
    /// of a server, so kept once (see [`SharedConfig`]).
    settings: Arc<Settings>,
    incoming: Incoming,
    /// How the connection ends, once known: held back until the events before it are drained
    /// (Autobahn 3.2, 4.1.3, 5.15: the application answers what came first), then the failure
    /// for [`Connection::protocol_error`]. Boxed: rare, and the state lives in every connection.
    end: Option<Box<End>>,
    clock: Clock,
    /// The `now` of the last `handle_timeout`; `None` until the first starts the clock.
    clock_at: Option<Instant>,
    /// Kind of the fragmented message we are sending, if one is open, and whether it is compressed.
    sending_fragmented: Option<(DataKind, bool)>,
    /// permessage-deflate's send side, once negotiated.
    #[cfg(feature = "deflate")]
    deflate: Option<Box<DeflateSend>>,
    events: VecDeque<Event>,
    transmits: TxQueue,
}

/// How the connection ends (see `Connection::end`).
#[derive(Debug)]
enum End {
    /// The peer's Close arrived after events still waiting to be drained.
    PeerClose(Option<CloseFrame>),
    /// A violation found after events still waiting to be drained.
    Violation(ProtocolError),
    /// The connection failed with this violation; its Close frame is queued.
    Failed(ProtocolError),
}

impl Connection {
    /// A connection in the open state, right after the opening handshake.
    ///
    /// A client masks its frames with keys from the operating system's generator
    /// ([`os_mask_key`]); [`Connection::set_mask_key_source`] sets another source.
    pub fn new(role: Role, config: Config) -> Connection {
        Connection::with_settings(role, Arc::new(Settings::new(&config)))
    }

    /// A connection like [`Connection::new`]'s, with settings shared with every other
    /// connection made from `shared`: a server making many connections from one
    /// configuration keeps it once instead of in each.
    pub fn with_shared(role: Role, shared: &SharedConfig) -> Connection {
        Connection::with_settings(role, shared.0.clone())
    }

    fn with_settings(role: Role, settings: Arc<Settings>) -> Connection {
        Connection {
            role,
            incoming: Incoming::default(),
            end: None,
            clock: Clock::default(),
            clock_at: None,
            settings,
            state: State::Open,
            sending_fragmented: None,
            #[cfg(feature = "deflate")]
            deflate: None,
            events: VecDeque::new(),
            transmits: TxQueue::default(),
        }
    }

    /// Replaces the timer settings ([`Config::timers`]), for a runtime whose own options carry
    /// them once a handshake has built the connection. Call it before the first
    /// [`Connection::handle_timeout`]: it restarts the timers.
    pub fn set_timers(&mut self, timers: &crate::config::Timers) {
        let intervals = timer::Intervals::new(timers);
        if self.settings.intervals != intervals {
            // Settings shared with other connections are copied first (copy on write).
            Arc::make_mut(&mut self.settings).intervals = intervals;
        }
        self.clock = Clock::default();
    }

    /// Sets where masking keys come from (used by clients only). The default,
    /// [`os_mask_key`], is what RFC 6455 section 5.3 asks for; change it only for a source at
    /// least as unpredictable, or in tests.
    pub fn set_mask_key_source(&mut self, source: MaskKeySource) {
        Arc::make_mut(&mut self.settings).mask_keys = source;
    }

    /// Masks with a predictable sequence (shared by every connection that asks for it), for
    /// tests that compare wire bytes. Never for a client on the open web.
    #[doc(hidden)]
    pub fn with_deterministic_masks(mut self) -> Connection {
        self.set_mask_key_source(mask_keys::deterministic_mask_key);
        self
    }

    /// Turns on permessage-deflate (RFC 7692) with the parameters the handshake agreed on.
    ///
    /// From then on, messages of at least the negotiated threshold are sent compressed (RSV1 on
    /// their first frame) and compressed messages from the peer are inflated under
    /// `max_message_size`. Call it right after the handshake, before any frame is exchanged.
    ///
    /// ```
    /// use duplex_proto::extensions::deflate::{self, DeflateConfig};
    /// use duplex_proto::extensions::parse;
    /// use duplex_proto::{Config, Connection, Role};
    ///
    /// let config = DeflateConfig::default();
    /// let offer = deflate::client_offer(&config).unwrap();
    /// let (negotiated, answer) = deflate::server_negotiate(&parse(&offer).unwrap(), &config).unwrap().unwrap();
    /// let mut server = Connection::new(Role::Server, Config::default());
    /// server.set_deflate(negotiated);
    /// let mut client = Connection::new(Role::Client, Config::default());
    /// client.set_deflate(deflate::client_accept(&parse(&answer).unwrap(), &config).unwrap().unwrap());
    /// ```
    #[cfg(feature = "deflate")]
    pub fn set_deflate(&mut self, negotiated: crate::extensions::deflate::Negotiated) {
        self.incoming
            .set_inflate(negotiated.decompressor(self.role));
        let compressor = negotiated.compressor(self.role);
        self.deflate = Some(Box::new(DeflateSend {
            negotiated,
            compressor,
        }));
    }

    /// The negotiated permessage-deflate parameters, if any.
    #[cfg(feature = "deflate")]
    pub fn deflate(&self) -> Option<&crate::extensions::deflate::Negotiated> {
        self.deflate.as_ref().map(|d| &d.negotiated)
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration (rebuilt: the connection keeps it in a compact form).
    pub fn config(&self) -> Config {
        self.settings.config()
    }

    /// Where the close handshake stands.
    #[inline]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the connection is finished: both Close frames exchanged, the connection failed,
    /// or the peer ended the transport. When to close the transport is
    /// [`Connection::should_close_transport`]'s call.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the runtime must close the transport now (RFC 6455 section 7.1.1):
    ///
    /// - a server, once the connection is closed and its last frames are written: it closes
    ///   the TCP connection first;
    /// - a client, once the server ended the transport ([`Connection::recv_eof`]) after the
    ///   close handshake: it waits for that rather than closing first;
    /// - either role, when the peer ended the transport, or when the close timeout ran out
    ///   ([`Connection::close_timed_out`]): now, whatever is still queued.
    #[inline]
    pub fn should_close_transport(&self) -> bool {
        self.clock.eof()
            || self.clock.expired()
            || (self.state == State::Closed
                && self.role == Role::Server
                && self.transmits.is_empty())
    }

    /// Whether the close timeout ran out: a Close was sent or received, or the connection
    /// failed, [`Timers::close_timeout`](crate::config::Timers::close_timeout) ago, and the
    /// transport is still open. The close handshake is over if [`Connection::is_closed`], else
    /// it was never answered.
    #[inline]
    pub fn close_timed_out(&self) -> bool {
        self.clock.expired()
    }

    /// Tells the core that the peer ended its side of the transport (a read returned 0 bytes).
    /// Unless the close handshake was over, the connection is closed without one (the
    /// application sees it as code 1006, section 7.1.5); either way the transport is to be
    /// closed ([`Connection::should_close_transport`]).
    pub fn recv_eof(&mut self) {
        self.clock.note_eof();
        // Nothing more arrives: a message in progress never completes.
        self.incoming.discard();
        if self.state != State::Closed {
            self.state = State::Closed;
            self.sending_fragmented = None;
        }
    }

    /// When the core next needs [`Connection::handle_timeout`]: the next keepalive or idle
    /// check, or the close deadline. `None` when no timer runs (none configured, the clock not
    /// started yet, or the close timeout already ran out). May be in the past: then call
    /// `handle_timeout` at once (the core asks that way to date a close it just learned of).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use duplex_proto::config::{Config, Timers};
    /// use duplex_proto::{Connection, Role};
    /// let timers = Timers { ping_interval: Some(Duration::from_secs(20)), ..Timers::default() };
    /// let mut conn = Connection::new(Role::Server, Config { timers, ..Config::default() });
    /// assert_eq!(conn.poll_timeout(), None); // the clock starts with the first call
    /// let start = Instant::now();
    /// conn.handle_timeout(start);
    /// // Checked at least every quarter of the interval (what arrived is dated at a check).
    /// assert_eq!(conn.poll_timeout(), Some(start + Duration::from_secs(5)));
    /// ```
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.clock.next(
            &self.settings.intervals,
            self.clock_at,
            self.state != State::Open,
        )
    }

    /// Runs the timers up to `now` (see [`Timers`](crate::config::Timers) for what they mean):
    /// may queue a keepalive ping, start the close handshake with Close 1001 "idle timeout",
    /// or make [`Connection::should_close_transport`] true when the close timeout ran out.
    /// Write what it queued and close the transport if told to. The first call starts the
    /// clock. Calling it early or often is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let closing = self.state != State::Open;
        let intervals = &self.settings.intervals;
        match self.clock.step(intervals, &mut self.clock_at, now, closing) {
            Tick::Nothing => {}
            Tick::Ping => self.queue_frame(true, OpCode::Ping, Bytes::new()),
            Tick::Idle => {
                self.queue_close(Some(CloseCode::GOING_AWAY), "idle timeout");
                self.state = State::CloseSent;
                self.clock.start_close(&self.settings.intervals);
            }
        }
    }

    /// How many bytes the frame that starts `buf` takes, header included, when it is a binary
    /// frame that waiting for whole costs nothing: uncompressed, within the limits, at a frame
    /// boundary (binary data has no UTF-8 to fail fast on, so holding it back until complete
    /// changes no outcome), and of 126 payload bytes or more (smaller frames are cheaper to
    /// copy than to wait for). `None` for anything else, and when `buf` does not hold the
    /// header, or the frame's payload is shorter than `at_least` bytes. Cheap for frames
    /// shorter than that: it reads their length and stops.
    ///
    /// A runtime may read the rest of such a frame straight behind what it has, into one
    /// buffer, and feed it whole: the message is then handed out without its payload being
    /// copied. Feeding it in pieces works as well, with a copy.
    ///
    /// ```
    /// use duplex_proto::{Config, Connection, Role};
    /// let server = Connection::new(Role::Server, Config::default());
    /// // A masked binary frame of 70,000 bytes: 14 header bytes (64-bit length and key).
    /// let mut head = vec![0x82, 0x80 | 127];
    /// head.extend_from_slice(&70_000u64.to_be_bytes());
    /// head.extend_from_slice(&[1, 2, 3, 4]);
    /// assert_eq!(server.whole_frame_len(&head, 16 * 1024), Some(14 + 70_000));
    /// assert_eq!(server.whole_frame_len(&head, 100_000), None);
    /// head[0] = 0x81; // text: validated as it arrives instead
    /// assert_eq!(server.whole_frame_len(&head, 16 * 1024), None);
    /// ```
    #[inline]
    pub fn whole_frame_len(&self, buf: &[u8], at_least: usize) -> Option<usize> {
        let at_least = at_least.max(126);
        if peek_payload_len(buf).is_none_or(|len| len < at_least as u64) {
            return None;
        }
        if self.state == State::Closed || self.end.is_some() {
            return None;
        }
        self.incoming
            .whole_frame_len(buf, &self.settings.limits, self.role, at_least)
    }

    /// Feeds received bytes.
    ///
    /// Consumes every complete frame and any partial payload of a data frame (so bad UTF-8 is
    /// caught as soon as it arrives); only an incomplete frame header or the start of a control
    /// frame stays in `buf`. After the connection is closed, input is discarded.
    ///
    /// On a protocol violation returns [`Error::Protocol`] and queues the Close frame with the
    /// matching code; the connection is then [`State::Closed`].
    ///
    /// Whatever ends the connection (a violation, the peer's Close) while events are waiting
    /// is held back, and nothing after it is read: [`Connection::poll_event`] carries it out
    /// once they are drained, so the application can answer the messages that came first.
    /// A violation carried out that way is not returned by any `recv`: see
    /// [`Connection::protocol_error`].
    #[inline(always)]
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        // Dated by the next `handle_timeout`: no clock read here.
        self.clock.note_received();
        if self.state == State::Closed || self.end.is_some() {
            buf.clear();
            return Ok(());
        }
        let mut out = recv::Output {
            events: &mut self.events,
            transmits: &mut self.transmits,
            role: self.role,
            mask_keys: self.settings.mask_keys,
            answer_pings: self.state == State::Open,
        };
        match self.incoming.consume(buf, &self.settings, &mut out) {
            Ok(recv::Consumed::NeedMore) => Ok(()),
            ended => self.recv_ended(ended, buf),
        }
    }

    /// What ends a `recv`: the peer's Close or a violation. Out of line, so that `recv` stays
    /// small enough to be inlined into every runtime's read path (worth ~25 instructions per
    /// message on the engine's small-message echo).
    #[cold]
    #[inline(never)]
    fn recv_ended(
        &mut self,
        ended: Result<recv::Consumed, ProtocolError>,
        buf: &mut BytesMut,
    ) -> Result<(), Error> {
        match ended {
            // Not sent here by `recv`; kept whole for the exhaustive match.
            Ok(recv::Consumed::NeedMore) => Ok(()),
            Ok(recv::Consumed::PeerClosed(close)) => {
                buf.clear();
                self.incoming.discard();
                if self.events.is_empty() {
                    self.on_peer_close(close);
                } else {
                    self.end = Some(Box::new(End::PeerClose(close)));
                }
                Ok(())
            }
            Err(e) => {
                buf.clear();
                // Nothing more is read: free the message in progress and its budget now,
                // not when the runtime drops the connection.
                self.incoming.discard();
                if self.events.is_empty() {
                    self.fail(e.clone());
                    Err(Error::Protocol(e))
                } else {
                    // Let the application see (and answer) what arrived before the violation.
                    self.end = Some(Box::new(End::Violation(e)));
                    Ok(())
                }
            }
        }
    }

    /// The next event, in the order the frames arrived.
    ///
    /// When the queue runs empty, carries out what [`Connection::recv`] held back behind the
    /// events: the peer's Close (returned as [`Event::Close`], the reply queued) or a violation
    /// (the Close frame queued, [`Connection::protocol_error`] set; returns `None`).
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        match self.events.pop_front() {
            Some(event) => Some(event),
            None if self.end.is_some() => self.carry_out_end(),
            None => None,
        }
    }

    #[cold]
    fn carry_out_end(&mut self) -> Option<Event> {
        let end = self.end.take()?;
        match *end {
            End::PeerClose(close) => {
                self.on_peer_close(close);
                self.events.pop_front()
            }
            End::Violation(e) => {
                self.fail(e);
                None
            }
            failed @ End::Failed(_) => {
                self.end = Some(Box::new(failed));
                None
            }
        }
    }

    /// The violation that failed the connection (section 7.1.7), once its Close frame is
    /// queued: set by the `recv` that returned it, or by the `poll_event` that carried it out
    /// after the events before it. Runtimes report it from here, after draining the events.
    pub fn protocol_error(&self) -> Option<&ProtocolError> {
        match self.end.as_deref() {
            Some(End::Failed(e)) => Some(e),
            Some(End::PeerClose(_) | End::Violation(_)) | None => None,
        }
    }

    /// Whether events are waiting for [`Connection::poll_event`] (the peer's Close held back
    /// behind drained events counts).
    pub fn has_pending_event(&self) -> bool {
        !self.events.is_empty() || matches!(self.end.as_deref(), Some(End::PeerClose(_)))
    }

    /// Queues a whole message as one frame.
    #[inline]
    pub fn send(&mut self, message: Message) -> Result<(), Error> {
        self.check_open()?;
        if self.sending_fragmented.is_some() {
            return Err(UsageError::FragmentOrder.into());
        }
        let opcode = match message.kind() {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        };
        let payload = message.into_bytes();
        #[cfg(feature = "deflate")]
        if let Some(deflate) = self
            .deflate
            .as_mut()
            .filter(|d| d.negotiated.should_compress(payload.len()))
        {
            let mut out = BytesMut::new();
            deflate.compressor.compress(&payload, &mut out);
            let bits = FrameBits {
                fin: true,
                rsv: RSV1,
                opcode,
            };
            push_frame(
                &mut self.transmits,
                self.role,
                self.settings.mask_keys,
                bits,
                out.freeze(),
            );
            return Ok(());
        }
        self.queue_frame(true, opcode, payload);
        Ok(())
    }

    /// Queues a message framed once for many connections (see [`PreparedMessage`]).
    ///
    /// A server sends the shared frame as it is, or the shared compressed frame when
    /// permessage-deflate was negotiated with `server_no_context_takeover`; with context
    /// takeover the message is compressed for this connection alone. A client must mask every
    /// frame itself, so for a client this is [`Connection::send`].
    pub fn send_prepared(&mut self, prepared: &PreparedMessage) -> Result<(), Error> {
        self.check_open()?;
        if self.sending_fragmented.is_some() {
            return Err(UsageError::FragmentOrder.into());
        }
        #[cfg(feature = "deflate")]
        let shared = prepared.frame_for(self.role, self.deflate.as_ref().map(|d| &d.negotiated));
        #[cfg(not(feature = "deflate"))]
        let shared = (!self.role.masks_outgoing()).then(|| prepared.plain());
        match shared {
            Some(frame) => {
                self.transmits.push(frame.clone());
                Ok(())
            }
            None => self.send(prepared.message().clone()),
        }
    }

    /// Queues one piece of a fragmented message (streaming out, RFC 6455 section 5.4).
    ///
    /// The first call starts a message of `kind`; later calls must pass the same kind; `fin`
    /// ends the message. Control frames may be sent between pieces.
    pub fn send_fragment(&mut self, kind: DataKind, data: Bytes, fin: bool) -> Result<(), Error> {
        self.check_open()?;
        let (opcode, compressed) = match self.sending_fragmented {
            None => {
                let opcode = match kind {
                    DataKind::Text => OpCode::Text,
                    DataKind::Binary => OpCode::Binary,
                };
                (opcode, self.compresses(data.len()))
            }
            Some((open, compressed)) if open == kind => (OpCode::Continuation, compressed),
            Some(_) => return Err(UsageError::FragmentOrder.into()),
        };
        self.sending_fragmented = if fin { None } else { Some((kind, compressed)) };
        #[cfg(feature = "deflate")]
        if compressed {
            let compressor = &mut self
                .deflate
                .as_mut()
                .expect("compressed implies deflate")
                .compressor;
            let mut out = BytesMut::new();
            compressor.compress_piece(&data, &mut out);
            // Each fragment must carry everything given so far, so it can go out now.
            if fin {
                compressor.finish(&mut out);
            } else {
                compressor.flush(&mut out);
            }
            // RSV1 marks the message, so only its first frame carries it (RFC 7692 section 6).
            let rsv = if opcode == OpCode::Continuation {
                0
            } else {
                RSV1
            };
            push_frame(
                &mut self.transmits,
                self.role,
                self.settings.mask_keys,
                FrameBits { fin, rsv, opcode },
                out.freeze(),
            );
            return Ok(());
        }
        let _ = compressed;
        self.queue_frame(fin, opcode, data);
        Ok(())
    }

    /// Queues a ping (payload at most 125 bytes).
    pub fn ping(&mut self, payload: Bytes) -> Result<(), Error> {
        self.queue_control(OpCode::Ping, payload)
    }

    /// Queues an unsolicited pong (payload at most 125 bytes), e.g. as a unidirectional heartbeat.
    pub fn pong(&mut self, payload: Bytes) -> Result<(), Error> {
        self.queue_control(OpCode::Pong, payload)
    }

    /// Starts the close handshake with `code` and `reason` (reason cut to 123 bytes on a
    /// character boundary). After this, no data may be sent; received data is still delivered
    /// until the peer's Close arrives.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.check_open()?;
        if !code.is_valid_on_wire() {
            return Err(UsageError::InvalidCloseCode(code.0).into());
        }
        self.queue_close(Some(code), reason);
        self.state = State::CloseSent;
        Ok(())
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop()
    }

    /// Whether frames are waiting to be written.
    #[inline]
    pub fn has_pending_transmit(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// Number of frames waiting to be written.
    pub fn pending_transmits(&self) -> usize {
        self.transmits.frames.len()
    }

    /// Bytes waiting to be written.
    #[inline]
    pub fn pending_transmit_bytes(&self) -> usize {
        self.transmits.bytes
    }

    /// Gather-write interface, an alternative to [`Connection::poll_transmit`] that needs no
    /// copy of the queue: fills `slices` with the bytes still to write, in order (each frame's
    /// header, then its payload), and returns how many slices it filled. After writing, report
    /// the bytes the transport took with [`Connection::advance_transmit`]. Don't mix the two
    /// interfaces within one frame.
    ///
    /// ```
    /// use std::io::IoSlice;
    /// use duplex_proto::{Config, Connection, Message, Role};
    /// let mut server = Connection::new(Role::Server, Config::default());
    /// server.send(Message::text("a")).unwrap();
    /// server.send(Message::text("bc")).unwrap();
    /// {
    ///     let mut slices = [IoSlice::new(&[]); 8];
    ///     assert_eq!(server.fill_io_slices(&mut slices), 4); // two heads, two payloads
    /// }
    /// server.advance_transmit(4); // a short write: the first frame and one byte
    /// assert_eq!(server.pending_transmit_bytes(), 3);
    /// let mut slices = [IoSlice::new(&[]); 8];
    /// assert_eq!(server.fill_io_slices(&mut slices), 2);
    /// assert_eq!((&*slices[0], &*slices[1]), (&b"\x02"[..], &b"bc"[..]));
    /// ```
    #[inline]
    pub fn fill_io_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        self.transmits.fill(slices)
    }

    /// Marks `n` bytes of the queued frames written (see [`Connection::fill_io_slices`]).
    ///
    /// # Panics
    ///
    /// If `n` is more than [`Connection::pending_transmit_bytes`].
    #[inline]
    pub fn advance_transmit(&mut self, n: usize) {
        self.transmits.advance(n);
    }

    /// Frees what the connection keeps allocated for reuse without using it: the capacity of
    /// its event and frame queues when they are empty. Queues keep their capacity between
    /// messages (allocating per message would cost a busy connection more than the memory);
    /// a runtime calls this for a connection that went quiet, so that an idle connection
    /// holds no heap memory. Harmless at any time: the next message allocates again.
    ///
    /// ```
    /// use duplex_proto::{Config, Connection, Message, Role};
    /// let mut server = Connection::new(Role::Server, Config::default());
    /// server.send(Message::text("hi")).unwrap();
    /// while server.poll_transmit().is_some() {}
    /// server.shrink_to_fit();
    /// server.send(Message::text("again")).unwrap();
    /// assert_eq!(server.pending_transmits(), 1);
    /// ```
    pub fn shrink_to_fit(&mut self) {
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
        if self.transmits.is_empty() && self.transmits.frames.capacity() > 0 {
            self.transmits.frames = VecDeque::new();
        }
    }

    /// Whether a message that starts with `len` bytes is sent compressed.
    fn compresses(&self, len: usize) -> bool {
        #[cfg(feature = "deflate")]
        if let Some(deflate) = &self.deflate {
            return deflate.negotiated.should_compress(len);
        }
        let _ = len;
        false
    }

    #[inline]
    fn check_open(&self) -> Result<(), Error> {
        match self.state {
            State::Open => Ok(()),
            State::CloseSent | State::Closed => Err(UsageError::Closed.into()),
        }
    }

    fn queue_control(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), Error> {
        self.check_open()?;
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(UsageError::ControlPayloadTooLong(payload.len()).into());
        }
        self.queue_frame(true, opcode, payload);
        Ok(())
    }

    /// Builds a Close frame payload: nothing, or the code and the (cut) reason.
    fn queue_close(&mut self, code: Option<CloseCode>, reason: &str) {
        let payload = match code {
            None => Bytes::new(),
            Some(code) => {
                let reason = truncate_reason(reason);
                let mut p = Vec::with_capacity(2 + reason.len());
                p.extend_from_slice(&code.0.to_be_bytes());
                p.extend_from_slice(reason.as_bytes());
                Bytes::from(p)
            }
        };
        self.queue_frame(true, OpCode::Close, payload);
    }

    #[inline]
    fn queue_frame(&mut self, fin: bool, opcode: OpCode, payload: Bytes) {
        push_frame(
            &mut self.transmits,
            self.role,
            self.settings.mask_keys,
            FrameBits {
                fin,
                rsv: 0,
                opcode,
            },
            payload,
        );
    }

    /// The peer's Close arrived (already validated).
    fn on_peer_close(&mut self, close: Option<CloseFrame>) {
        if self.state == State::Open {
            // Echo the code (section 5.5.1); an empty Close is answered with an empty one.
            let code = close.as_ref().map(|c| c.code);
            self.queue_close(code, "");
        }
        self.state = State::Closed;
        self.sending_fragmented = None;
        self.events.push_back(Event::Close(close));
    }

    /// Fails the connection (section 7.1.7): the Close with the error's code, unless we already
    /// sent one.
    #[cold]
    fn fail(&mut self, error: ProtocolError) {
        if self.state == State::Open {
            let reason = error.to_string();
            self.queue_close(Some(error.close_code()), &reason);
        }
        self.state = State::Closed;
        self.sending_fragmented = None;
        self.end = Some(Box::new(End::Failed(error)));
    }
}

/// permessage-deflate's send side: the agreed parameters and our compressor.
#[cfg(feature = "deflate")]
#[derive(Debug)]
struct DeflateSend {
    negotiated: crate::extensions::deflate::Negotiated,
    compressor: crate::extensions::deflate::Compressor,
}

/// The first header byte's fields of a frame to send.
#[derive(Debug, Clone, Copy)]
struct FrameBits {
    fin: bool,
    rsv: u8,
    opcode: OpCode,
}

/// Frames `payload` for the wire: a client masks it into a new buffer (the caller's bytes may be
/// shared), a server sends the caller's bytes as they are.
///
/// The common case (a server's frame under 64 KiB: most replies) is inlined into the caller,
/// the rest is a call: the call's register saves and restores cost about as much as the
/// fast path itself (~20 user-space instructions per message on the engine's echo).
#[inline(always)]
fn push_frame(
    transmits: &mut TxQueue,
    role: Role,
    mask_keys: MaskKeySource,
    bits: FrameBits,
    payload: Bytes,
) {
    if !role.masks_outgoing() {
        // Nothing to mask, a 7- or 16-bit length.
        let first = first_byte(bits.fin, bits.rsv, bits.opcode);
        let mut head = [0u8; MAX_HEADER_LEN];
        if let Some(head_len) = encode_unmasked_short(&mut head, first, payload.len()) {
            return transmits.push(Transmit {
                head,
                head_len,
                payload,
            });
        }
    }
    push_frame_general(transmits, role, mask_keys, bits, payload);
}

/// [`push_frame`] for a client's frames (masked) and for frames of 64 KiB and more.
#[inline(never)]
fn push_frame_general(
    transmits: &mut TxQueue,
    role: Role,
    mask_keys: MaskKeySource,
    bits: FrameBits,
    payload: Bytes,
) {
    let mask = role.masks_outgoing().then(mask_keys);
    let payload = match mask {
        Some(key) if !payload.is_empty() => {
            let mut masked = BytesMut::from(&payload[..]);
            apply_mask(&mut masked, key, 0);
            masked.freeze()
        }
        _ => payload,
    };
    let header = FrameHeader {
        fin: bits.fin,
        rsv: bits.rsv,
        opcode: bits.opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    transmits.push(Transmit::new(&header, payload));
}

/// Frames waiting to be written, with how much of the first one already was.
#[derive(Debug, Default)]
pub(crate) struct TxQueue {
    frames: VecDeque<Transmit>,
    /// Bytes of `frames.front()` already written.
    offset: usize,
    /// Bytes not yet written, all frames.
    bytes: usize,
}

impl TxQueue {
    #[inline]
    fn push(&mut self, transmit: Transmit) {
        self.bytes += transmit.len();
        self.frames.push_back(transmit);
    }

    fn pop(&mut self) -> Option<Transmit> {
        let transmit = self.frames.pop_front()?;
        self.bytes -= transmit.len() - self.offset;
        self.offset = 0;
        Some(transmit)
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    #[inline]
    fn fill<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        // One whole frame waiting: the usual case after answering a message.
        if let (1, 0, [first, second, ..]) = (self.frames.len(), self.offset, &mut *slices) {
            let transmit = &self.frames[0];
            *first = IoSlice::new(transmit.head());
            if transmit.payload.is_empty() {
                return 1;
            }
            *second = IoSlice::new(&transmit.payload);
            return 2;
        }
        let mut count = 0;
        let mut skip = self.offset;
        for transmit in &self.frames {
            for part in [transmit.head(), &transmit.payload[..]] {
                if count == slices.len() {
                    return count;
                }
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[count] = IoSlice::new(&part[skip..]);
                skip = 0;
                count += 1;
            }
        }
        count
    }

    #[inline]
    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.bytes, "advanced past the queued bytes");
        if n == self.bytes && self.frames.capacity() <= 16 {
            // Everything was written: the usual case.
            if self.frames.len() == 1 {
                self.frames.pop_front();
            } else {
                self.frames.clear();
            }
            self.offset = 0;
            self.bytes = 0;
            return;
        }
        self.bytes -= n;
        while n > 0 {
            let front = self.frames.front().expect("bytes are counted");
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.frames.pop_front();
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // A burst grew the queue: give the memory back rather than hold it while idle.
            self.frames = VecDeque::new();
        }
    }
}
