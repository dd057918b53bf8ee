//! The WebSocket connection state machine (RFC 6455 sections 5, 6 and 7), sans-IO.
//!
//! # Call protocol
//!
//! A [`Connection`] never touches a socket. The runtime around it:
//!
//! 1. **feeds** received bytes with [`Connection::recv`],
//! 2. **drains** what they produced with [`Connection::poll_event`],
//! 3. **commands** with [`Connection::send`], [`Connection::send_fragment`], [`Connection::ping`],
//!    [`Connection::pong`] and [`Connection::close`],
//! 4. **drains** the frames to write with [`Connection::poll_transmit`], and
//! 5. shuts the transport once [`Connection::is_closed`] and nothing is left to transmit.
//!
//! A protocol violation by the peer fails the connection in one step: `recv` returns the error
//! and the Close frame with the matching code is already queued (section 7.1.7), so every runtime
//! gets the close codes right without knowing them.
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

mod prepared;
mod recv;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame, truncate_reason};
use crate::config::Config;
use crate::error::{Error, ProtocolError, UsageError};
#[cfg(feature = "deflate")]
use crate::frame::RSV1;
use crate::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use crate::mask::apply_mask;
use crate::message::{DataKind, Message};
use crate::role::Role;

pub use prepared::PreparedMessage;
use recv::Incoming;

/// Where a client's masking keys come from (RFC 6455 section 5.3: "unpredictable").
///
/// The core has no randomness of its own; runtimes pass a function backed by the operating
/// system's generator.
pub type MaskKeySource = fn() -> [u8; 4];

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
    config: Config,
    state: State,
    mask_keys: MaskKeySource,
    incoming: Incoming,
    /// A violation found after other events in the same `recv` call: reported by the next call,
    /// so the application can answer what came before it (Autobahn 3.2, 4.1.3, 5.15).
    pending_error: Option<Box<ProtocolError>>,
    /// The last `recv` stopped early (see `recv`): call it again once events are drained.
    deferred: bool,
    /// Kind of the fragmented message we are sending, if one is open, and whether it is compressed.
    sending_fragmented: Option<(DataKind, bool)>,
    /// permessage-deflate's send side, once negotiated.
    #[cfg(feature = "deflate")]
    deflate: Option<Box<DeflateSend>>,
    events: VecDeque<Event>,
    transmits: TxQueue,
}

impl Connection {
    /// A connection in the open state, right after the opening handshake.
    ///
    /// Clients should call [`Connection::set_mask_key_source`]: until they do, masking keys come
    /// from a deterministic sequence, which is fine for tests but not for the open web.
    pub fn new(role: Role, config: Config) -> Connection {
        Connection {
            role,
            incoming: Incoming::new(&config),
            pending_error: None,
            deferred: false,
            config,
            state: State::Open,
            mask_keys: deterministic_mask_key,
            sending_fragmented: None,
            #[cfg(feature = "deflate")]
            deflate: None,
            events: VecDeque::new(),
            transmits: TxQueue::default(),
        }
    }

    /// Sets where masking keys come from (used by clients only).
    pub fn set_mask_key_source(&mut self, source: MaskKeySource) {
        self.mask_keys = source;
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

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the close handshake stands.
    #[inline]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the connection is finished: both Close frames exchanged or the connection failed.
    /// Once [`Connection::has_pending_transmit`] is false too, the transport should be shut (a
    /// server closes TCP first, RFC 6455 section 7.1.1; a client waits briefly for that).
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
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
        let long_enough = match buf.get(1).map(|b1| b1 & 0x7f) {
            Some(126) => buf
                .get(2..4)
                .is_some_and(|len| usize::from(u16::from_be_bytes([len[0], len[1]])) >= at_least),
            Some(127) => true,
            _ => false,
        };
        if !long_enough {
            return None;
        }
        if self.state == State::Closed || self.pending_error.is_some() {
            return None;
        }
        self.incoming
            .whole_frame_len(buf, &self.config, self.role, at_least)
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
    /// Whatever ends the connection (a violation, the peer's Close) is acted on only in a call
    /// that produced no event before it: otherwise this call returns `Ok` and stops there, so
    /// the application can answer the messages that came first, and [`Connection::needs_recv`]
    /// says so: **after draining the events, call `recv` again**, even with no new bytes.
    #[inline]
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        // Cleared on every path: a deferral is answered by this very call.
        self.deferred = false;
        if let Some(e) = self.pending_error.take() {
            buf.clear();
            self.fail(&e);
            return Err(Error::Protocol(*e));
        }
        if self.state == State::Closed {
            buf.clear();
            return Ok(());
        }
        let events_before = self.events.len();
        let mut out = recv::Output {
            events: &mut self.events,
            transmits: &mut self.transmits,
            role: self.role,
            mask_keys: self.mask_keys,
            answer_pings: self.state == State::Open,
            events_before,
            deferred: false,
        };
        let consumed = self.incoming.consume(buf, &self.config, &mut out);
        self.deferred = out.deferred;
        match consumed {
            Ok(recv::Consumed::NeedMore) => Ok(()),
            Ok(recv::Consumed::PeerClosed(close)) => {
                self.on_peer_close(close);
                buf.clear();
                Ok(())
            }
            Err(e) if self.events.len() > events_before => {
                // Let the application see (and answer) what arrived before the violation.
                buf.clear();
                self.pending_error = Some(Box::new(e));
                self.deferred = true;
                Ok(())
            }
            Err(e) => {
                buf.clear();
                self.fail(&e);
                Err(Error::Protocol(e))
            }
        }
    }

    /// The next event, in the order the frames arrived.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the last [`Connection::recv`] stopped early, before a violation or the peer's
    /// Close, so the application could answer what came first: once the events are drained,
    /// call `recv` again (with no new bytes if none came).
    #[inline]
    pub fn needs_recv(&self) -> bool {
        self.deferred
    }

    /// Whether events are waiting for [`Connection::poll_event`].
    pub fn has_pending_event(&self) -> bool {
        !self.events.is_empty()
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
                self.mask_keys,
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
                self.mask_keys,
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
            self.mask_keys,
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
    fn fail(&mut self, error: &ProtocolError) {
        if self.state == State::Open {
            let reason = error.to_string();
            self.queue_close(Some(error.close_code()), &reason);
        }
        self.state = State::Closed;
        self.sending_fragmented = None;
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
#[inline]
fn push_frame(
    transmits: &mut TxQueue,
    role: Role,
    mask_keys: MaskKeySource,
    bits: FrameBits,
    payload: Bytes,
) {
    if !role.masks_outgoing() {
        // A server's frame under 64 KiB (most replies): nothing to mask, a 7- or 16-bit length.
        let first = (u8::from(bits.fin) << 7) | ((bits.rsv & 0x7) << 4) | bits.opcode as u8;
        let len = payload.len();
        if len <= 125 {
            let mut head = [0u8; MAX_HEADER_LEN];
            head[0] = first;
            head[1] = len as u8;
            return transmits.push(Transmit {
                head,
                head_len: 2,
                payload,
            });
        }
        if let Ok(len) = u16::try_from(len) {
            let mut head = [0u8; MAX_HEADER_LEN];
            let [hi, lo] = len.to_be_bytes();
            head[..4].copy_from_slice(&[first, 126, hi, lo]);
            return transmits.push(Transmit {
                head,
                head_len: 4,
                payload,
            });
        }
    }
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

/// Deterministic keys for connections whose runtime set no source: a SplitMix64 walk. Adequate
/// for tests and local tools; a client on the open web must use an unpredictable source.
fn deterministic_mask_key() -> [u8; 4] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let bytes = (z ^ (z >> 31)).to_le_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}
