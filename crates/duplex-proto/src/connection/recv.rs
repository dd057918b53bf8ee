//! The receive path: frames in, events out (RFC 6455 sections 5.2-5.6, 8.1).
//!
//! Data frame payloads are consumed as they arrive, not once the whole frame is buffered: each
//! piece is unmasked at its offset and, for text, validated at once, so invalid UTF-8 fails the
//! connection on the byte that makes it invalid. Only a partial header (or the start of a control
//! frame, at most 125 bytes) waits in the caller's buffer.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::settings::Settings;
use super::{Event, FrameBits, Limits, MaskKeySource, push_frame};
use crate::budget::Hold;
use crate::close::{CloseCode, CloseFrame};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, OpCode, RSV1, decode_short};
use crate::mask::apply_mask;
use crate::message::{DataKind, Message, Utf8Bytes};
use crate::role::Role;
use crate::utf8::Utf8Validator;

/// Where the receive path puts what it produces.
pub(super) struct Output<'a> {
    pub(super) events: &'a mut VecDeque<Event>,
    pub(super) transmits: &'a mut super::TxQueue,
    pub(super) role: Role,
    pub(super) mask_keys: MaskKeySource,
    /// Pongs are sent only while the connection is open (not after our Close).
    pub(super) answer_pings: bool,
}

/// Why [`Incoming::consume`] returned.
pub(super) enum Consumed {
    /// Everything usable was consumed and more bytes are needed.
    NeedMore,
    /// The peer's Close frame arrived (validated); nothing after it is read.
    PeerClosed(Option<CloseFrame>),
}

/// Receive state: the frame being read and the message being reassembled.
#[derive(Debug, Default)]
pub(super) struct Incoming {
    /// A frame or message received in part. Boxed: between messages (an idle connection,
    /// and nearly every read of small messages, which arrive whole) there is none, and inline
    /// it would cost every connection ~100 bytes.
    partial: Option<Box<Partial>>,
    /// permessage-deflate's receive side, once negotiated.
    #[cfg(feature = "deflate")]
    inflate: Option<Box<crate::extensions::deflate::Decompressor>>,
}

/// What [`Incoming`] keeps between reads while a frame or a message is incomplete.
#[derive(Debug, Default)]
struct Partial {
    frame: Option<FrameInProgress>,
    message: Option<MessageInProgress>,
    /// What the message in progress holds of the shared budget (none without one).
    hold: Hold,
}

impl Partial {
    fn is_empty(&self) -> bool {
        self.frame.is_none() && self.message.is_none()
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    header: FrameHeader,
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes consumed so far: the masking offset of the next piece.
    consumed: u64,
}

#[derive(Debug)]
struct MessageInProgress {
    kind: DataKind,
    data: BytesMut,
    /// Payload bytes received so far, all fragments.
    size: u64,
    utf8: Utf8Validator,
    /// Streaming mode: whether a fragment event was already given for this message.
    started: bool,
    /// RSV1 on the first frame: the payload is DEFLATE data (RFC 7692 section 6.2).
    compressed: bool,
}

impl Incoming {
    /// Whether a frame or message is in progress (its state boxed).
    #[cfg(test)]
    pub(super) fn has_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// Drops the message in progress (nothing more will be read: the connection failed or
    /// ended) and gives its bytes back to the budget.
    #[cold]
    pub(super) fn discard(&mut self) {
        // Dropping the hold gives its bytes back.
        self.partial = None;
    }

    /// Enables the receive side of permessage-deflate: RSV1 marks compressed messages.
    #[cfg(feature = "deflate")]
    pub(super) fn set_inflate(&mut self, decompressor: crate::extensions::deflate::Decompressor) {
        self.inflate = Some(Box::new(decompressor));
    }

    /// RSV bits the negotiated extensions define: RSV1 with permessage-deflate (the only
    /// extension; derived rather than stored, which would cost every connection 8 bytes).
    fn allowed_rsv(&self) -> u8 {
        #[cfg(feature = "deflate")]
        if self.inflate.is_some() {
            return RSV1;
        }
        0
    }

    /// See [`Connection::whole_frame_len`](super::Connection::whole_frame_len).
    pub(super) fn whole_frame_len(
        &self,
        buf: &[u8],
        config: &Limits,
        role: Role,
        at_least: usize,
    ) -> Option<usize> {
        let partial = self.partial.as_deref();
        if partial.is_some_and(|p| p.frame.is_some()) || config.streaming_receive {
            return None;
        }
        let (header, header_len) = FrameHeader::decode(buf).ok()??;
        let size_so_far = match (partial.and_then(|p| p.message.as_ref()), header.opcode) {
            (None, OpCode::Binary) => 0,
            (Some(message), OpCode::Continuation)
                if message.kind == DataKind::Binary && !message.compressed =>
            {
                message.size
            }
            _ => return None,
        };
        let acceptable = header.rsv == 0
            && header.payload_len >= at_least as u64
            && header.mask.is_some() == role.requires_masked_incoming()
            && header.payload_len <= config.max_frame_size as u64
            && size_so_far + header.payload_len <= config.max_message_size as u64;
        let len = usize::try_from(header.payload_len).ok()?;
        acceptable.then(|| header_len + len)
    }

    /// Consumes as much of `buf` as possible.
    ///
    /// Whole single frames are taken here, in a small function; the general path (a function
    /// large enough that merely entering it costs more than a small frame's whole work) runs
    /// only for what they cannot take.
    #[inline(always)]
    pub(super) fn consume(
        &mut self,
        buf: &mut BytesMut,
        settings: &Settings,
        out: &mut Output<'_>,
    ) -> Result<Consumed, ProtocolError> {
        let config = &settings.limits;
        while self.partial.is_none() {
            if buf.is_empty() {
                return Ok(Consumed::NeedMore);
            }
            if !self.consume_whole_frame(buf, config, out)? {
                break;
            }
        }
        self.consume_general(buf, settings, out)
    }

    /// [`Incoming::consume`] for everything: partial and fragmented frames, control frames,
    /// compression, errors. Works on the partial state out of its box (or a fresh one on the
    /// stack), and boxes it again only if something is still incomplete when it returns: a
    /// whole large frame allocates nothing here.
    fn consume_general(
        &mut self,
        buf: &mut BytesMut,
        settings: &Settings,
        out: &mut Output<'_>,
    ) -> Result<Consumed, ProtocolError> {
        let mut boxed = self.partial.take();
        let mut state = boxed.as_deref_mut().map(std::mem::take).unwrap_or_default();
        let result = self.consume_parts(&mut state, buf, settings, out);
        if !state.is_empty() {
            self.partial = Some(match boxed {
                Some(mut reused) => {
                    *reused = state;
                    reused
                }
                None => Box::new(state),
            });
        }
        result
    }

    fn consume_parts(
        &mut self,
        state: &mut Partial,
        buf: &mut BytesMut,
        settings: &Settings,
        out: &mut Output<'_>,
    ) -> Result<Consumed, ProtocolError> {
        let config = &settings.limits;
        // `consume` has just tried the shortcut on what `buf` starts with.
        let mut tried_shortcut = true;
        loop {
            if state.frame.is_none() {
                if buf.is_empty() {
                    return Ok(Consumed::NeedMore);
                }
                if !std::mem::replace(&mut tried_shortcut, false)
                    && state.message.is_none()
                    && self.consume_whole_frame(buf, config, out)?
                {
                    continue;
                }
            }
            tried_shortcut = false;
            let mut frame = match state.frame {
                Some(frame) => frame,
                None => {
                    let Some((header, header_len)) = FrameHeader::decode(buf)? else {
                        return Ok(Consumed::NeedMore);
                    };
                    check_header(self.allowed_rsv(), state, &header, config, out.role)?;
                    buf.advance(header_len);
                    FrameInProgress {
                        header,
                        remaining: header.payload_len,
                        consumed: 0,
                    }
                }
            };
            let header = frame.header;

            if header.opcode.is_control() {
                // At most 125 bytes: wait for all of it, then act on it whole.
                let len = frame.remaining as usize;
                if buf.len() < len {
                    state.frame = Some(frame);
                    return Ok(Consumed::NeedMore);
                }
                state.frame = None;
                let mut payload = buf.split_to(len);
                if let Some(key) = header.mask {
                    apply_mask(&mut payload, key, 0);
                }
                let payload = payload.freeze();
                match header.opcode {
                    OpCode::Ping => {
                        if out.answer_pings {
                            let bits = FrameBits {
                                fin: true,
                                rsv: 0,
                                opcode: OpCode::Pong,
                            };
                            push_frame(
                                out.transmits,
                                out.role,
                                out.mask_keys,
                                bits,
                                payload.clone(),
                            );
                        }
                        out.events.push_back(Event::Ping(payload));
                    }
                    OpCode::Pong => out.events.push_back(Event::Pong(payload)),
                    _ => return Ok(Consumed::PeerClosed(parse_close(&payload)?)),
                }
                continue;
            }

            // A data frame: take whatever part of the payload is here.
            let take = frame.remaining.min(buf.len() as u64) as usize;
            if take == 0 && frame.remaining > 0 {
                state.frame = Some(frame);
                return Ok(Consumed::NeedMore);
            }
            let mut chunk = buf.split_to(take);
            if let Some(key) = header.mask {
                apply_mask(&mut chunk, key, frame.consumed as usize);
            }
            let whole_frame_at_once = frame.consumed == 0 && take as u64 == header.payload_len;
            frame.consumed += take as u64;
            frame.remaining -= take as u64;
            let frame_done = frame.remaining == 0;
            state.frame = if frame_done { None } else { Some(frame) };
            let message_done = frame_done && header.fin;

            let message = state
                .message
                .as_mut()
                .expect("a data frame always has a message in progress");
            if message.compressed {
                #[cfg(feature = "deflate")]
                {
                    let inflate = self
                        .inflate
                        .as_mut()
                        .expect("RSV1 is only allowed once deflate is set");
                    // Streaming hands out each inflated piece; otherwise inflate into the message.
                    let mut piece = BytesMut::new();
                    let target = if config.streaming_receive {
                        &mut piece
                    } else {
                        &mut message.data
                    };
                    let start = target.len();
                    // Streamed pieces go straight to the application: only the message
                    // reassembled here is held, and charged.
                    let mut unheld = Hold::default();
                    let hold = if config.streaming_receive {
                        &mut unheld
                    } else {
                        state.hold.bind(settings.budget.as_ref());
                        &mut state.hold
                    };
                    inflate.decompress_held(
                        &chunk,
                        message_done,
                        target,
                        config.max_message_size,
                        hold,
                    )?;
                    if message.kind == DataKind::Text
                        && message.utf8.feed(&target[start..]).is_err()
                    {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    chunk = piece;
                }
            } else if message.kind == DataKind::Text && message.utf8.feed(&chunk).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            if message_done && message.kind == DataKind::Text && message.utf8.finish().is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }

            if config.streaming_receive {
                if !chunk.is_empty() || message_done {
                    let first = !message.started;
                    message.started = true;
                    let kind = message.kind;
                    out.events.push_back(Event::Fragment {
                        kind,
                        data: chunk.freeze(),
                        first,
                        fin: message_done,
                    });
                }
                if message_done {
                    state.message = None;
                }
                continue;
            }

            if !message_done {
                if !message.compressed {
                    if !frame_done && message.data.capacity() == 0 {
                        // A frame arriving over several reads: size the buffer once for the rest
                        // of it (within the limit already checked, capped so a peer that only
                        // announces a large frame does not get the memory before sending it),
                        // instead of growing it read by read.
                        let frame_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
                        let reserve = frame_len.min(MAX_RESERVE);
                        state.hold.bind(settings.budget.as_ref());
                        state.hold.cover(reserve)?;
                        message.data.reserve(reserve);
                    }
                    state.hold.bind(settings.budget.as_ref());
                    state.hold.cover(message.data.len() + chunk.len())?;
                    append(&mut message.data, chunk);
                }
                continue;
            }
            let data = if whole_frame_at_once && message.data.is_empty() && !message.compressed {
                // The common case: a single-frame message read in one piece, handed out without a copy.
                chunk.freeze()
            } else {
                if !message.compressed {
                    append(&mut message.data, chunk);
                }
                std::mem::take(&mut message.data).freeze()
            };
            let kind = message.kind;
            state.message = None;
            // Complete: the application owns it now.
            state.hold.release();
            let message = match kind {
                DataKind::Text => Message::Text(Utf8Bytes::from_validated(data)),
                DataKind::Binary => Message::Binary(data),
            };
            out.events.push_back(Event::Message(message));
        }
    }

    /// The common case in one step: a whole unfragmented, uncompressed text or binary frame
    /// (of any length: 64-bit lengths through `decode_long`), masked as the role requires,
    /// entirely in `buf`, with no message in progress. Anything else returns `false` having consumed nothing, and the general path
    /// takes it (errors included: a frame over a limit is left to it to report).
    #[inline(always)]
    fn consume_whole_frame(
        &mut self,
        buf: &mut BytesMut,
        config: &Limits,
        out: &mut Output<'_>,
    ) -> Result<bool, ProtocolError> {
        let Some(header) = decode_short(buf).or_else(|| decode_long(buf)) else {
            return Ok(false);
        };
        // FIN set, no RSV bit, and an opcode that starts a message.
        let kind = match header.first {
            0x81 => DataKind::Text,
            0x82 => DataKind::Binary,
            _ => return Ok(false),
        };
        let (len, start) = (header.payload_len, header.len);
        if config.streaming_receive
            || header.mask.is_some() != out.role.requires_masked_incoming()
            || len > config.max_frame_size
            || len > config.max_message_size
            || buf.len() < start + len
        {
            return Ok(false);
        }
        let key = header.mask;
        buf.advance(start);
        let mut payload = if buf.len() == len {
            // The frame ends the buffer (one message per read): take it all, no split.
            std::mem::take(buf)
        } else {
            buf.split_to(len)
        };
        if let Some(key) = key {
            crate::mask::apply_mask_from_start(&mut payload, key);
        }
        let message = match kind {
            DataKind::Text => {
                if crate::utf8::validate(&payload).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                Message::Text(Utf8Bytes::from_validated(payload.freeze()))
            }
            DataKind::Binary => Message::Binary(payload.freeze()),
        };
        out.events.push_back(Event::Message(message));
        Ok(true)
    }
}

/// A whole header with a 64-bit length (frames of 64 KiB and more), for the whole-frame path:
/// a large frame fed whole (the engine reads one into a buffer of its own) is then taken in
/// one step like a small one, without the general path's frame and message state. `None` for
/// anything else (incomplete, a shorter length field, a length with the top bit set or past
/// `usize`: the general path judges those). The returned `payload_len` may exceed 64 KiB.
#[inline(never)]
fn decode_long(buf: &[u8]) -> Option<crate::frame::ShortHeader> {
    let [first, b1, ref rest @ ..] = *buf else {
        return None;
    };
    if b1 & 0x7f != 127 {
        return None;
    }
    let len64 = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    if len64 >> 63 != 0 {
        return None;
    }
    let payload_len = usize::try_from(len64).ok()?;
    let (mask, len) = if b1 & 0x80 != 0 {
        let &[k0, k1, k2, k3] = rest.get(8..12)? else {
            return None;
        };
        (Some([k0, k1, k2, k3]), 14)
    } else {
        (None, 10)
    };
    Some(crate::frame::ShortHeader {
        first,
        payload_len,
        mask,
        len,
    })
}

/// What can be judged from the header alone, before any payload is read (RFC 6455 section
/// 5.2 for RSV and opcodes, 5.1 for masking, 5.4 for fragment order, and the size limits).
/// Starts the message in `state` for the first frame of one.
fn check_header(
    allowed_rsv: u8,
    state: &mut Partial,
    header: &FrameHeader,
    config: &Limits,
    role: Role,
) -> Result<(), ProtocolError> {
    match (role.requires_masked_incoming(), header.mask.is_some()) {
        (true, false) => return Err(ProtocolError::UnmaskedFrame),
        (false, true) => return Err(ProtocolError::MaskedFrame),
        _ => {}
    }
    if header.rsv & !allowed_rsv != 0 {
        return Err(ProtocolError::ReservedBits(header.rsv));
    }
    if header.rsv & RSV1 != 0 && matches!(header.opcode, OpCode::Continuation) {
        return Err(ProtocolError::CompressedControlOrContinuation);
    }
    if header.opcode.is_control() {
        if header.rsv & RSV1 != 0 {
            return Err(ProtocolError::CompressedControlOrContinuation);
        }
        return Ok(());
    }
    if header.payload_len > config.max_frame_size as u64 {
        return Err(ProtocolError::FrameTooLarge {
            size: header.payload_len,
            max: config.max_frame_size,
        });
    }
    let kind = match (header.opcode, state.message.is_some()) {
        (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
        (OpCode::Text | OpCode::Binary, true) => {
            return Err(ProtocolError::ExpectedContinuation);
        }
        (OpCode::Text, false) => Some(DataKind::Text),
        (OpCode::Binary, false) => Some(DataKind::Binary),
        _ => None,
    };
    if let Some(kind) = kind {
        state.message = Some(MessageInProgress {
            kind,
            data: BytesMut::new(),
            size: 0,
            utf8: Utf8Validator::new(),
            started: false,
            compressed: header.rsv & RSV1 != 0,
        });
    }
    let message = state.message.as_mut().expect("checked above");
    message.size += header.payload_len;
    if !config.streaming_receive && message.size > config.max_message_size as u64 {
        return Err(ProtocolError::MessageTooLarge {
            size: message.size,
            max: config.max_message_size,
        });
    }
    Ok(())
}

/// Appends without a copy when `chunk` directly follows `data` in memory (pieces split off one
/// read buffer), else copies.
fn append(data: &mut BytesMut, chunk: BytesMut) {
    if data.capacity() == 0 {
        *data = chunk;
    } else if data.is_empty() {
        // Reserved for a frame arriving over several reads (`unsplit` would drop the
        // reservation for the chunk's own buffer).
        data.extend_from_slice(&chunk);
    } else {
        data.unsplit(chunk);
    }
}

/// Most a frame's announced length reserves before its bytes arrive.
const MAX_RESERVE: usize = 1 << 20;

/// Decodes and checks a Close payload (RFC 6455 section 5.5.1, 7.4).
fn parse_close(payload: &Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidClosePayload),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}
