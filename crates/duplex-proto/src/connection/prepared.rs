//! Messages framed once and sent to many connections (the hub's fan-out).
//!
//! Server frames are not masked (RFC 6455 section 5.1), so a message's frame is the same bytes
//! on every server connection: [`PreparedMessage`] encodes it once and each connection queues
//! a clone of the same [`Bytes`](bytes::Bytes) (a reference count, no copy).
//!
//! With permessage-deflate, the compressed frame can be shared too, but only with connections
//! whose negotiated parameters say the server resets its compressor after every message
//! (`server_no_context_takeover`): otherwise each connection's compressor has a window the
//! prepared bytes know nothing of, and the message is compressed for that connection alone.
//! [`PreparedMessage::with_deflate`] compresses once, with a fresh 15-bit window, and
//! [`Connection::send_prepared`](super::Connection::send_prepared) picks the right variant.

use bytes::Bytes;

use super::Transmit;
use crate::frame::{FrameHeader, OpCode};
use crate::message::{DataKind, Message};

/// A data message framed once for any number of server connections.
///
/// ```
/// use duplex_proto::{Config, Connection, Message, PreparedMessage, Role};
/// let prepared = PreparedMessage::new(Message::text("tick"));
/// let mut a = Connection::new(Role::Server, Config::default());
/// let mut b = Connection::new(Role::Server, Config::default());
/// a.send_prepared(&prepared).unwrap();
/// b.send_prepared(&prepared).unwrap();
/// let (ta, tb) = (a.poll_transmit().unwrap(), b.poll_transmit().unwrap());
/// assert_eq!(ta.payload().as_ptr(), tb.payload().as_ptr()); // the same bytes, not a copy
/// ```
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    message: Message,
    plain: Transmit,
    #[cfg(feature = "deflate")]
    compressed: Option<Transmit>,
}

impl PreparedMessage {
    /// Frames `message` (unmasked, one frame).
    pub fn new(message: Message) -> Self {
        let plain = frame(
            &message,
            message.as_bytes().len(),
            0,
            message.clone().into_bytes(),
        );
        PreparedMessage {
            message,
            plain,
            #[cfg(feature = "deflate")]
            compressed: None,
        }
    }

    /// Frames `message` and also compresses it once (no context, 15-bit window, zlib `level`),
    /// for connections that negotiated permessage-deflate with `server_no_context_takeover`.
    #[cfg(feature = "deflate")]
    pub fn with_deflate(message: Message, level: u32) -> Self {
        let mut prepared = PreparedMessage::new(message);
        let payload = crate::extensions::deflate::compress_once(prepared.message.as_bytes(), level);
        prepared.compressed = Some(frame(
            &prepared.message,
            payload.len(),
            crate::frame::RSV1,
            payload,
        ));
        prepared
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The uncompressed frame.
    #[cfg(not(feature = "deflate"))]
    pub(super) fn plain(&self) -> &Transmit {
        &self.plain
    }

    /// The frame [`Connection::send_prepared`](super::Connection::send_prepared) queues for
    /// this message on a connection with `role` and permessage-deflate parameters `deflate`
    /// (`None`: not negotiated), when that frame is one of the shared ones; `None` when the
    /// connection must encode the message itself (a client masks every frame; with context
    /// takeover, or without a prepared compressed frame, it compresses for itself alone).
    ///
    /// For runtimes that write a prepared frame to a socket without going through the
    /// connection's queue (the hub writes it straight to each subscriber's socket): the bytes
    /// are valid for that connection exactly when this returns them.
    ///
    /// ```
    /// use duplex_proto::{Message, PreparedMessage, Role};
    /// let prepared = PreparedMessage::new(Message::text("tick"));
    /// let frame = prepared.frame_for(Role::Server, None).unwrap();
    /// assert_eq!(frame.head(), [0x81, 4]);
    /// assert_eq!(&frame.payload()[..], b"tick");
    /// assert!(prepared.frame_for(Role::Client, None).is_none()); // clients mask
    /// ```
    #[cfg(feature = "deflate")]
    pub fn frame_for(
        &self,
        role: crate::Role,
        deflate: Option<&crate::extensions::deflate::Negotiated>,
    ) -> Option<&Transmit> {
        if role.masks_outgoing() {
            return None;
        }
        let Some(negotiated) = deflate else {
            return Some(&self.plain);
        };
        if !negotiated.should_compress(self.message.len()) {
            return Some(&self.plain);
        }
        match &self.compressed {
            Some(shared)
                if negotiated
                    .accepts_prepared(role, crate::extensions::deflate::MAX_WINDOW_BITS) =>
            {
                Some(shared)
            }
            _ => None,
        }
    }

    /// Bytes on the wire for the uncompressed frame.
    pub fn wire_len(&self) -> usize {
        self.plain.len()
    }
}

fn frame(message: &Message, len: usize, rsv: u8, payload: Bytes) -> Transmit {
    let opcode = match message.kind() {
        DataKind::Text => OpCode::Text,
        DataKind::Binary => OpCode::Binary,
    };
    Transmit::new(
        &FrameHeader {
            fin: true,
            rsv,
            opcode,
            mask: None,
            payload_len: len as u64,
        },
        payload,
    )
}
