//! Per-message compression (RFC 7692 section 7.2): raw DEFLATE with the sync-flush tail
//! stripped on send and restored on receive, and inflation bounded by a size limit.

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use crate::budget::Hold;
use crate::error::ProtocolError;

/// The empty stored block a sync flush ends with; stripped by the sender, appended by the
/// receiver (RFC 7692 sections 7.2.1 and 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Largest output step when inflating: at most this much (and never more than the limit
/// allows) is allocated before the size limit is checked again.
const INFLATE_STEP: usize = 32 * 1024;
/// Largest output step when deflating without a flush.
const DEFLATE_STEP: usize = 64 * 1024;
/// Largest output step of a sync flush. zlib writes a second flush marker when a sync flush
/// returns with the output full, so a flush gets room for all its output when it can.
const SYNC_STEP: usize = 1024 * 1024;

/// The window bits zlib is asked for: 8 becomes 9 (see the module docs), the rest is clamped
/// to 9..=15.
pub(super) fn zlib_window_bits(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW_BITS + 1, MAX_WINDOW_BITS)
}

/// Compresses outgoing messages with raw DEFLATE (RFC 7692 section 7.2.1), keeping or
/// dropping the sliding window between messages as negotiated.
///
/// Call protocol: either [`compress`](Self::compress) for a whole message, or for a message
/// sent in fragments any number of [`compress_piece`](Self::compress_piece) (and optionally
/// [`flush`](Self::flush)) calls followed by one [`finish`](Self::finish). Each call appends
/// the bytes ready so far to `out`; the concatenation of everything appended for one message
/// is its compressed payload, and may be cut into frames anywhere.
///
/// ```
/// use bytes::BytesMut;
/// use duplex_proto::extensions::deflate::{Compressor, Decompressor};
///
/// let mut compressor = Compressor::new(15, 1, false);
/// let mut frames = Vec::new();
/// for piece in [&b"Hel"[..], b"lo, ", b"world"] {
///     let mut frame = BytesMut::new();
///     compressor.compress_piece(piece, &mut frame);
///     frames.push(frame); // may be empty: zlib buffers input until it has a block
/// }
/// let mut last = BytesMut::new();
/// compressor.finish(&mut last);
/// frames.push(last);
///
/// let mut decompressor = Decompressor::new(15, false);
/// let mut message = BytesMut::new();
/// for (i, frame) in frames.iter().enumerate() {
///     decompressor.decompress(frame, i == frames.len() - 1, &mut message, 1 << 20)?;
/// }
/// assert_eq!(&message[..], b"Hello, world");
/// # Ok::<(), duplex_proto::ProtocolError>(())
/// ```
#[derive(Debug)]
pub struct Compressor {
    /// Created on first use.
    inner: Option<Compress>,
    window_bits: u8,
    level: u32,
    no_context_takeover: bool,
    /// Input bytes given to zlib since the last sync flush: bounds the next flush's output.
    unflushed: u64,
}

impl Compressor {
    /// A compressor with an LZ77 window of 2^`window_bits` bytes (8..=15, 8 runs as 9, see the
    /// module docs; out-of-range values are clamped), zlib `level` 0..=9 (clamped), resetting
    /// after each message when `no_context_takeover`. zlib state is allocated on first use.
    ///
    /// ```
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let compressor = Compressor::new(15, 1, false);
    /// ```
    pub fn new(window_bits: u8, level: u32, no_context_takeover: bool) -> Compressor {
        Compressor {
            inner: None,
            window_bits: zlib_window_bits(window_bits),
            level: level.min(9),
            no_context_takeover,
            unflushed: 0,
        }
    }

    /// Compresses a whole message: appends its payload to `out` (sync flush, trailing
    /// `00 00 ff ff` removed, section 7.2.1), then resets if there is no context takeover.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.compress(b"Hello", &mut out);
    /// assert_eq!(&out[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    /// ```
    pub fn compress(&mut self, payload: &[u8], out: &mut BytesMut) {
        let start = out.len();
        self.deflate(payload, out, FlushCompress::Sync);
        self.end_message(start, out);
    }

    /// Compresses one piece of a message sent in fragments, without ending the message.
    /// Appends what zlib has ready, possibly nothing.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.compress_piece(b"Hel", &mut out);
    /// compressor.compress_piece(b"lo", &mut out);
    /// compressor.finish(&mut out);
    /// assert_eq!(&out[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    /// ```
    pub fn compress_piece(&mut self, piece: &[u8], out: &mut BytesMut) {
        self.deflate(piece, out, FlushCompress::None);
    }

    /// Pushes out everything given so far without ending the message (a sync flush whose
    /// `00 00 ff ff` stays in the stream): for a streamed message whose fragments must not
    /// wait for more input. Costs about 5 bytes.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.compress_piece(b"Hel", &mut out);
    /// compressor.flush(&mut out);
    /// assert!(out.ends_with(&[0x00, 0x00, 0xff, 0xff]));
    /// ```
    pub fn flush(&mut self, out: &mut BytesMut) {
        self.deflate(&[], out, FlushCompress::Sync);
    }

    /// Ends a message started with [`compress_piece`](Self::compress_piece): appends the rest
    /// (sync flush, trailing `00 00 ff ff` removed), then resets if there is no context
    /// takeover.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.finish(&mut out); // an empty message
    /// assert_eq!(&out[..], [0x00]);
    /// ```
    pub fn finish(&mut self, out: &mut BytesMut) {
        let start = out.len();
        self.deflate(&[], out, FlushCompress::Sync);
        self.end_message(start, out);
    }

    fn end_message(&mut self, start: usize, out: &mut BytesMut) {
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        } else {
            // zlib writes nothing for a sync flush right after another one (`flush` then
            // `finish` with no input between): the stream is already byte-aligned, but the
            // last `00 00 ff ff` went out with the previous piece. End with a 0x00 (an empty
            // stored block whose tail is stripped, as in RFC 7692 section 7.2.3.6) so the
            // receiver's appended tail still lands on a block boundary.
            debug_assert_eq!(out.len(), start);
            out.extend_from_slice(&[0x00]);
        }
        if self.no_context_takeover {
            if let Some(inner) = &mut self.inner {
                inner.reset();
            }
        }
    }

    fn deflate(&mut self, mut input: &[u8], out: &mut BytesMut, flush: FlushCompress) {
        let sync = matches!(flush, FlushCompress::Sync);
        let (level, bits) = (self.level, self.window_bits);
        let inner = self.inner.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(level), false, bits)
        });
        loop {
            let step = if sync {
                // Worst case of DEFLATE output (stored blocks of at least 512 bytes, 5 bytes
                // of header each) plus the flush marker and leftover bits.
                let n = self.unflushed + input.len() as u64;
                usize::try_from(n + n / 64 + 64).map_or(SYNC_STEP, |b| b.min(SYNC_STEP))
            } else {
                (input.len() + 64).min(DEFLATE_STEP)
            };
            let len = out.len();
            out.resize(len + step, 0);
            let (in_before, out_before) = (inner.total_in(), inner.total_out());
            // Errors only come from a misused stream (zlib's Z_STREAM_ERROR); lack of progress
            // is Ok(Status::BufError).
            let result = inner.compress(input, &mut out[len..], flush);
            let consumed = (inner.total_in() - in_before) as usize;
            let written = (inner.total_out() - out_before) as usize;
            out.truncate(len + written);
            self.unflushed += consumed as u64;
            input = &input[consumed..];
            if result.is_err() || (input.is_empty() && written < step) {
                debug_assert!(result.is_ok(), "deflate failed: {result:?}");
                break;
            }
            if consumed == 0 && written == 0 {
                debug_assert!(false, "deflate made no progress");
                break;
            }
        }
        if sync {
            self.unflushed = 0;
        }
    }
}

/// Inflates incoming compressed messages (RFC 7692 section 7.2.2) under a size limit.
///
/// Call protocol: for each message with RSV1 set, call [`decompress`](Self::decompress) with
/// each frame's payload as it arrives, `fin` on the last one. The limit is checked while
/// inflating, in steps of at most 32 KiB of output: a deflate bomb fails with
/// [`ProtocolError::MessageTooLarge`] once it passes `max_size`, having produced at most
/// `max_size + 1` bytes. Corrupt data fails with [`ProtocolError::InvalidCompressedData`].
/// After an error the connection is to be failed; the decompressor has been reset.
///
/// A message that ends its DEFLATE stream with a BFINAL block (section 7.2.3.4) ends the
/// stream: bytes after it in the message are ignored, and the next message starts with a fresh
/// window (zlib cannot continue a finished stream).
///
/// ```
/// use bytes::BytesMut;
/// use duplex_proto::extensions::deflate::Decompressor;
/// use duplex_proto::ProtocolError;
///
/// let mut decompressor = Decompressor::new(15, false);
/// let mut message = BytesMut::new();
/// // "Hello" in two fragments (RFC 7692 section 7.2.3.1).
/// decompressor.decompress(&[0xf2, 0x48, 0xcd], false, &mut message, 1024)?;
/// decompressor.decompress(&[0xc9, 0xc9, 0x07, 0x00], true, &mut message, 1024)?;
/// assert_eq!(&message[..], b"Hello");
///
/// let mut message = BytesMut::new();
/// let err = decompressor.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut message, 4);
/// assert!(matches!(err, Err(ProtocolError::MessageTooLarge { max: 4, .. })));
/// # Ok::<(), ProtocolError>(())
/// ```
#[derive(Debug)]
pub struct Decompressor {
    /// Created on first use.
    inner: Option<Decompress>,
    window_bits: u8,
    no_context_takeover: bool,
    /// Bytes inflated so far for the current message.
    message_len: u64,
    /// A BFINAL block ended the stream within the current message.
    stream_ended: bool,
}

impl Decompressor {
    /// A decompressor for a peer compressing with at most 2^`window_bits` bytes of window
    /// (8..=15; 8 inflates with 9, out-of-range values are clamped), resetting after each
    /// message when `no_context_takeover`. zlib state is allocated on first use.
    ///
    /// ```
    /// use duplex_proto::extensions::deflate::Decompressor;
    /// let decompressor = Decompressor::new(15, false);
    /// assert_eq!(decompressor.message_len(), 0);
    /// ```
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Decompressor {
        Decompressor {
            inner: None,
            window_bits: zlib_window_bits(window_bits),
            no_context_takeover,
            message_len: 0,
            stream_ended: false,
        }
    }

    /// Inflates one compressed fragment of the current message and appends the output to
    /// `out`; `fin` marks the message's last fragment (then `00 00 ff ff` is appended to the
    /// input, section 7.2.2, and the message ends). `max_size` bounds the whole message's
    /// inflated size, counted across fragments.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Decompressor;
    /// let mut decompressor = Decompressor::new(15, false);
    /// let mut out = BytesMut::new();
    /// // Two DEFLATE blocks in one message (RFC 7692 section 7.2.3.5).
    /// let payload = [0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00];
    /// decompressor.decompress(&payload, true, &mut out, 1 << 20)?;
    /// assert_eq!(&out[..], b"Hello");
    /// # Ok::<(), duplex_proto::ProtocolError>(())
    /// ```
    pub fn decompress(
        &mut self,
        fragment: &[u8],
        fin: bool,
        out: &mut BytesMut,
        max_size: usize,
    ) -> Result<(), ProtocolError> {
        self.decompress_held(fragment, fin, out, max_size, &mut Hold::default())
    }

    /// [`Decompressor::decompress`], charging `hold` for `out`'s capacity before each time it
    /// grows (see [`crate::budget`]).
    pub(crate) fn decompress_held(
        &mut self,
        fragment: &[u8],
        fin: bool,
        out: &mut BytesMut,
        max_size: usize,
        hold: &mut Hold,
    ) -> Result<(), ProtocolError> {
        let mut result = self.inflate(fragment, out, max_size, hold);
        if result.is_ok() && fin {
            result = self.inflate(&TAIL, out, max_size, hold);
        }
        if fin || result.is_err() {
            self.end_message(result.is_err());
        }
        result
    }

    /// Bytes inflated so far for the message in progress (0 between messages).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Decompressor;
    /// let mut decompressor = Decompressor::new(15, false);
    /// let mut out = BytesMut::new();
    /// decompressor.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], false, &mut out, 1024)?;
    /// assert_eq!(decompressor.message_len(), 5);
    /// # Ok::<(), duplex_proto::ProtocolError>(())
    /// ```
    pub fn message_len(&self) -> u64 {
        self.message_len
    }

    fn end_message(&mut self, failed: bool) {
        if failed || self.stream_ended || self.no_context_takeover {
            if let Some(inner) = &mut self.inner {
                inner.reset(false);
            }
        }
        self.message_len = 0;
        self.stream_ended = false;
    }

    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        max_size: usize,
        hold: &mut Hold,
    ) -> Result<(), ProtocolError> {
        if self.stream_ended {
            return Ok(());
        }
        let bits = self.window_bits;
        let inner = self
            .inner
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        // Start near the likely output size and grow, so small messages do not zero 32 KiB.
        let mut step = (input.len() * 4).clamp(256, INFLATE_STEP);
        loop {
            // One byte more than the limit allows, to detect that it was passed.
            let allowed = (max_size as u64).saturating_sub(self.message_len);
            let this_step = step.min(
                usize::try_from(allowed)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            );
            let len = out.len();
            let needed = len + this_step;
            if needed > out.capacity() {
                // Growing doubles the capacity: charged first. Where the budget has room for
                // what is needed but not for the doubling, grow by exactly that much.
                let wanted = needed.max(out.capacity() * 2);
                if hold.cover_growth(wanted, needed)? < wanted {
                    let mut exact = BytesMut::with_capacity(needed);
                    exact.extend_from_slice(out);
                    *out = exact;
                }
            }
            out.resize(len + this_step, 0);
            let (in_before, out_before) = (inner.total_in(), inner.total_out());
            let result = inner.decompress(input, &mut out[len..], FlushDecompress::None);
            let consumed = (inner.total_in() - in_before) as usize;
            let written = (inner.total_out() - out_before) as usize;
            out.truncate(len + written);
            let status = result.map_err(|_| ProtocolError::InvalidCompressedData)?;
            self.message_len += written as u64;
            if self.message_len > max_size as u64 {
                return Err(ProtocolError::MessageTooLarge {
                    size: self.message_len,
                    max: max_size,
                });
            }
            input = &input[consumed..];
            if status == Status::StreamEnd {
                self.stream_ended = true;
                return Ok(());
            }
            if written == this_step {
                // The output space was filled: there may be more pending.
                step = (step * 2).min(INFLATE_STEP);
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            if consumed == 0 && written == 0 {
                // Input left, output space left, and no progress: not a DEFLATE stream zlib
                // can continue.
                return Err(ProtocolError::InvalidCompressedData);
            }
        }
    }
}

/// Compresses one whole message with a fresh compressor, no context and a 15-bit window, for
/// sending the same bytes to many connections (see the module docs): valid on every
/// connection where [`Negotiated::accepts_prepared`]`(role, 15)` holds. To prepare many
/// messages, or for a smaller window, keep a `Compressor::new(bits, level, true)` instead,
/// which reuses its zlib state.
///
/// [`Negotiated::accepts_prepared`]: super::Negotiated::accepts_prepared
///
/// ```
/// use bytes::BytesMut;
/// use duplex_proto::extensions::deflate::{compress_once, Decompressor};
/// let prepared = compress_once(b"Hello", 1);
/// assert_eq!(&prepared[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
/// ```
pub fn compress_once(payload: &[u8], level: u32) -> Bytes {
    thread_local! {
        // zlib state is a few hundred KiB to allocate and set up: one no-context compressor per
        // thread is reused (it resets after every message anyway) instead of one per message.
        static ONCE: std::cell::RefCell<Option<Compressor>> = const { std::cell::RefCell::new(None) };
    }
    let mut out = BytesMut::new();
    ONCE.with(|cell| {
        let mut cached = cell.borrow_mut();
        let compressor = match &mut *cached {
            Some(c) if c.level == level.min(9) => c,
            slot => slot.insert(Compressor::new(MAX_WINDOW_BITS, level, true)),
        };
        compressor.compress(payload, &mut out);
    });
    out.freeze()
}

#[cfg(test)]
mod tests;
