//! Helpers shared by the fuzz targets: cutting an input into pieces the way a socket would,
//! and driving a [`Connection`] the way a runtime does while checking what must always hold.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use duplex_proto::extensions::deflate::Negotiated;
use duplex_proto::frame::{FrameHeader, OpCode, RSV1};
use duplex_proto::{
    CloseCode, Config, Connection, DataKind, Error, Event, PreparedMessage, Role, State, Transmit,
    UsageError,
};

/// Piece lengths derived from one input byte: `0` gives one piece (everything at once), `n`
/// gives pieces of 1..=n bytes in a sequence fixed by `n` (a small xorshift), so the fuzzer
/// controls where the frames are cut by changing one byte.
#[derive(Debug, Clone)]
pub struct Splitter {
    max: usize,
    state: u32,
}

impl Splitter {
    /// Pieces of at most `max` bytes (`0`: unbounded).
    pub fn new(max: u8) -> Splitter {
        Splitter {
            max: usize::from(max),
            state: 0x9e37_79b9 ^ u32::from(max),
        }
    }

    /// The next pseudo-random 32 bits.
    pub fn next_u32(&mut self) -> u32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        self.state
    }

    /// Takes the next piece off the front of `rest`.
    pub fn next_piece<'a>(&mut self, rest: &mut &'a [u8]) -> &'a [u8] {
        let len = if self.max == 0 {
            rest.len()
        } else {
            (1 + self.next_u32() as usize % self.max).min(rest.len())
        };
        let (piece, tail) = rest.split_at(len);
        *rest = tail;
        piece
    }
}

/// Deflate parameters picked by the bits of one byte: window bits 8..=15 for each direction
/// and both no-context-takeover flags.
pub fn negotiated(byte: u8) -> Negotiated {
    Negotiated {
        server_no_context_takeover: byte & 0x01 != 0,
        client_no_context_takeover: byte & 0x02 != 0,
        server_max_window_bits: 8 + ((byte >> 2) & 0x7),
        client_max_window_bits: 8 + ((byte >> 5) & 0x7),
        level: 1,
        threshold: 0,
    }
}

/// Runs a `Connection` in `role` on `data` like a runtime would, and panics where an
/// invariant breaks. The first byte picks the setup, the second the piece lengths, the rest is
/// what the peer sends:
///
/// - bit 0: permessage-deflate negotiated (parameters from the second byte);
/// - bit 1: streaming receive (fragments echoed as fragments);
/// - bit 2: small limits (frame and message 256 bytes), so the 1009 paths are reached;
/// - bit 3: we start the close handshake after the first message we echo;
/// - bit 4: messages are echoed as a `PreparedMessage` (compressed once when deflate is on).
///
/// Everything the connection sends is fed to a peer `Connection` of the other role with the
/// same parameters, which must accept it and receive exactly the echoed messages.
pub fn run_connection(role: Role, data: &[u8]) {
    let [setup, split, ref wire @ ..] = *data else {
        return;
    };
    let mut config = Config {
        streaming_receive: setup & 0x02 != 0,
        ..Config::default()
    };
    if setup & 0x04 != 0 {
        config.max_frame_size = 256;
        config.max_message_size = 256;
    }
    let timed = setup & 0x20 != 0;
    if timed {
        config.timers = duplex_proto::Timers {
            ping_interval: Some(std::time::Duration::from_secs(1)),
            idle_timeout: Some(std::time::Duration::from_secs(3)),
            close_timeout: std::time::Duration::from_secs(1),
        };
    }
    let mut conn = Connection::new(role, config);
    // A fixed start, so runs are reproducible; the core reads no clock of its own.
    let mut clock = timed.then(std::time::Instant::now);
    if let Some(start) = clock {
        conn.handle_timeout(start);
    }
    let peer_role = match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    let mut peer = Peer::new(Connection::new(peer_role, Config::default()));
    for c in [&mut conn, &mut peer.conn] {
        if c.role() == Role::Client {
            // Deterministic keys: the fuzzer needs reproducible runs.
            c.set_mask_key_source(|| [0x37, 0xfa, 0x21, 0x3d]);
        }
    }
    let deflate = setup & 0x01 != 0;
    if deflate {
        conn.set_deflate(negotiated(split));
        peer.conn.set_deflate(negotiated(split));
    }
    let echo = Echo {
        close_after: setup & 0x08 != 0,
        prepared: setup & 0x10 != 0,
    };

    let mut checker = TransmitChecker::new(role, deflate);
    let mut splitter = Splitter::new(split);
    let mut rest = wire;
    let mut buf = BytesMut::new();
    let mut closed_and_drained = false;
    while !rest.is_empty() {
        buf.extend_from_slice(splitter.next_piece(&mut rest));
        check_whole_frame_len(&conn, &buf);
        // One feed, then drain: what ends the connection behind waiting events is carried
        // out by `poll_event` once they are drained (no re-feed loop in the call protocol).
        let was_closed = conn.state() == State::Closed;
        let result = conn.recv(&mut buf);
        match &result {
            Err(Error::Protocol(_)) => {
                assert_eq!(conn.state(), State::Closed, "a failed recv closes");
                assert!(!was_closed, "a closed connection reports no error");
            }
            Err(Error::Usage(e)) => panic!("recv reported a usage error: {e:?}"),
            Ok(()) => {}
        }
        if was_closed {
            assert!(buf.is_empty(), "input after the close is discarded");
            assert!(!conn.has_pending_event(), "no event after the close");
        }
        if result.is_ok() && conn.state() != State::Closed {
            // Only an incomplete header or a control frame's start stays buffered.
            assert!(
                buf.len() < 14 + 125 + 1,
                "recv left {} bytes unconsumed",
                buf.len()
            );
        }
        drain_events(&mut conn, echo, &mut peer.expected);
        if let Some(clock) = clock.as_mut() {
            // Time passes between pieces: keepalive, idle and close timers run in the core.
            *clock += std::time::Duration::from_millis(u64::from(split) * 16);
            conn.handle_timeout(*clock);
            if let Some(due) = conn.poll_timeout() {
                assert!(
                    due > *clock || conn.state() != State::Open,
                    "an open connection asked for a timeout already due right after handling it"
                );
            }
        }
        while let Some(tx) = conn.poll_transmit() {
            assert!(
                !closed_and_drained,
                "a transmit after the connection closed"
            );
            checker.check(&tx);
            peer.feed(&tx);
        }
        if conn.state() == State::Closed {
            closed_and_drained = true;
        }
    }
}

/// How the echo answers.
#[derive(Debug, Clone, Copy)]
struct Echo {
    /// Start the close handshake after the first echoed message.
    close_after: bool,
    /// Send messages as a `PreparedMessage`.
    prepared: bool,
}

/// Answers events as an echo server does: messages and fragments are sent back. What was
/// sent is added to `expected`, the messages the peer must receive.
fn drain_events(conn: &mut Connection, echo: Echo, expected: &mut Expected) {
    while let Some(event) = conn.poll_event() {
        let open = conn.state() == State::Open;
        let sent = match event {
            Event::Message(message) => {
                let (kind, bytes) = (message.kind(), Bytes::copy_from_slice(message.as_bytes()));
                let sent = if echo.prepared {
                    let deflate = conn.deflate().is_some();
                    conn.send_prepared(&if deflate {
                        PreparedMessage::with_deflate(message, 1)
                    } else {
                        PreparedMessage::new(message)
                    })
                } else {
                    conn.send(message)
                };
                if sent.is_ok() {
                    expected.messages.push_back((kind, bytes));
                }
                if echo.close_after && open {
                    conn.close(CloseCode::NORMAL, "bye")
                        .expect("closing an open connection");
                }
                sent
            }
            Event::Fragment {
                kind, data, fin, ..
            } => {
                let piece = data.clone();
                let sent = conn.send_fragment(kind, data, fin);
                if sent.is_ok() {
                    expected.partial.extend_from_slice(&piece);
                    if fin {
                        let whole = std::mem::take(&mut expected.partial).freeze();
                        expected.messages.push_back((kind, whole));
                    }
                }
                sent
            }
            // The pong and the Close reply are queued by the connection itself.
            Event::Ping(_) | Event::Pong(_) | Event::Close(_) => continue,
        };
        match sent {
            Ok(()) => assert!(open, "sent on a connection that is not open"),
            Err(Error::Usage(UsageError::Closed)) => {
                assert!(!open, "refused on an open connection")
            }
            Err(e) => panic!("echo refused: {e:?}"),
        }
    }
}

/// The messages the peer must receive, in order, and the echo's fragments so far.
#[derive(Debug, Default)]
struct Expected {
    messages: VecDeque<(DataKind, Bytes)>,
    partial: BytesMut,
}

/// The other end: reads everything the fuzzed connection sends, as a correct peer would.
#[derive(Debug)]
struct Peer {
    conn: Connection,
    buf: BytesMut,
    expected: Expected,
}

impl Peer {
    fn new(conn: Connection) -> Peer {
        Peer {
            conn,
            buf: BytesMut::new(),
            expected: Expected::default(),
        }
    }

    /// Feeds one transmit: the peer must accept it, and every message it completes must be
    /// the next echoed one.
    fn feed(&mut self, tx: &Transmit) {
        self.buf.extend_from_slice(tx.head());
        self.buf.extend_from_slice(tx.payload());
        if let Err(e) = self.conn.recv(&mut self.buf) {
            panic!("the peer rejected what we sent: {e:?}");
        }
        while let Some(event) = self.conn.poll_event() {
            if let Event::Message(message) = event {
                let expected = self
                    .expected
                    .messages
                    .pop_front()
                    .expect("the peer received a message that was not sent");
                assert_eq!(
                    (message.kind(), message.as_bytes()),
                    (expected.0, &expected.1[..]),
                    "the peer received something else than what was sent"
                );
            }
        }
    }
}

/// `whole_frame_len` agrees with the frame header at the start of `buf`.
fn check_whole_frame_len(conn: &Connection, buf: &[u8]) {
    let Some(len) = conn.whole_frame_len(buf, 0) else {
        return;
    };
    let (header, head_len) = FrameHeader::decode(buf)
        .expect("whole_frame_len only for a valid header")
        .expect("whole_frame_len only for a complete header");
    // A binary message's first frame or one of its continuations.
    assert!(
        matches!(header.opcode, OpCode::Binary | OpCode::Continuation),
        "a whole {:?} frame",
        header.opcode
    );
    assert!(header.payload_len >= 126);
    assert_eq!(len as u64, head_len as u64 + header.payload_len);
}

/// Checks every frame a connection writes: its head decodes to exactly itself with the
/// payload's length, the mask follows the role (RFC 6455 section 5.1), RSV1 only on the
/// first frame of a compressed message, control frames whole and small, and data fragments in
/// order.
#[derive(Debug)]
pub struct TransmitChecker {
    role: Role,
    deflate: bool,
    in_message: bool,
    close_sent: bool,
}

impl TransmitChecker {
    /// A checker for the frames of a connection in `role`.
    pub fn new(role: Role, deflate: bool) -> TransmitChecker {
        TransmitChecker {
            role,
            deflate,
            in_message: false,
            close_sent: false,
        }
    }

    /// Checks one transmit, in the order they were polled.
    pub fn check(&mut self, tx: &Transmit) {
        let head = tx.head();
        let (header, len) = FrameHeader::decode(head)
            .expect("a transmit head decodes")
            .expect("a transmit head is complete");
        assert_eq!(len, head.len(), "the head is exactly one header");
        assert_eq!(header.payload_len, tx.payload().len() as u64);
        assert_eq!(header.mask.is_some(), self.role == Role::Client);
        assert!(!self.close_sent, "a frame after our Close");
        assert!(header.rsv & !RSV1 == 0, "RSV2/RSV3 set: {:#x}", header.rsv);
        match header.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                assert_eq!(header.rsv, 0, "a control frame with RSV bits");
                assert!(header.payload_len <= 125);
                if header.opcode == OpCode::Close {
                    self.close_sent = true;
                    check_close_payload(tx.payload(), header.mask);
                }
            }
            OpCode::Text | OpCode::Binary => {
                assert!(!self.in_message, "a new message inside a fragmented one");
                assert!(header.rsv == 0 || self.deflate, "RSV1 without deflate");
                self.in_message = !header.fin;
            }
            OpCode::Continuation => {
                assert!(self.in_message, "a continuation outside a message");
                assert_eq!(header.rsv, 0, "RSV1 on a continuation frame");
                self.in_message = !header.fin;
            }
        }
    }
}

/// A Close payload we send is empty or a valid code and a UTF-8 reason.
fn check_close_payload(payload: &Bytes, mask: Option<[u8; 4]>) {
    let mut bytes = payload.to_vec();
    if let Some(key) = mask {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    if bytes.is_empty() {
        return;
    }
    assert!(bytes.len() >= 2, "a one-byte Close payload");
    let code = CloseCode(u16::from_be_bytes([bytes[0], bytes[1]]));
    assert!(code.is_valid_on_wire(), "we sent the close code {}", code.0);
    assert!(
        std::str::from_utf8(&bytes[2..]).is_ok(),
        "a close reason that is not UTF-8"
    );
}
