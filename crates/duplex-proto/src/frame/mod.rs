//! Frame headers: incremental decode and stack-only encode (RFC 6455 section 5.2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! Decoding looks only at the header bytes, so limits are checked before a payload byte is
//! buffered. Encoding writes the header into a 14-byte array; the payload stays a separate
//! buffer so large frames go out with one vectored write and no copy.

use crate::error::ProtocolError;

/// Largest possible header: 2 + 8 (64-bit length) + 4 (masking key).
pub const MAX_HEADER_LEN: usize = 14;
/// Largest control frame payload (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (section 5.2). Reserved opcodes are rejected while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation = 0x0,
    /// 0x1: starts a text message.
    Text = 0x1,
    /// 0x2: starts a binary message.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// Parses the low nibble of the first header byte.
    pub fn from_u8(op: u8) -> Result<OpCode, ProtocolError> {
        Ok(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, ping and pong are control frames (section 5.5).
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded or to-be-encoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1..RSV3 as the three low bits (RSV1 = 0b100).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub payload_len: u64,
}

/// RSV1: "per-message compressed" under permessage-deflate (RFC 7692 section 6).
pub const RSV1: u8 = 0b100;

impl FrameHeader {
    /// Decodes a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed, or the header and its length in bytes.
    /// Rejects what is wrong from the header alone: reserved opcodes, a 64-bit length with the high
    /// bit set, fragmented or oversized control frames. Mask and RSV rules depend on the role and
    /// the negotiated extensions and are checked by the connection.
    ///
    /// ```
    /// use duplex_proto::frame::{FrameHeader, OpCode};
    /// // RFC 6455 section 5.7: a single-frame unmasked text message "Hello".
    /// let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    /// let (header, len) = FrameHeader::decode(&bytes).unwrap().unwrap();
    /// assert_eq!((header.fin, header.opcode, header.payload_len, len), (true, OpCode::Text, 5, 2));
    /// assert!(FrameHeader::decode(&bytes[..1]).unwrap().is_none());
    /// ```
    #[inline]
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if len7 > 125 {
                // 126/127 announce an extended length, which is always > 125 for a control frame
                // unless non-minimal; both are errors for control frames.
                let len = peek_extended_len(buf, len7).unwrap_or(u64::from(len7));
                return Err(ProtocolError::ControlFrameTooLong(len));
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let Some(k) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([k[0], k[1], k[2], k[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Encodes the header with the shortest length form (section 5.2: "the minimal number of
    /// bytes MUST be used"). Returns the header bytes and their count.
    ///
    /// ```
    /// use duplex_proto::frame::{FrameHeader, OpCode};
    /// let header = FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: None, payload_len: 256 };
    /// let (bytes, len) = header.encode();
    /// assert_eq!(&bytes[..len], &[0x82, 0x7e, 0x01, 0x00]); // RFC 6455 section 5.7, 256 bytes
    /// ```
    #[inline]
    pub fn encode(&self) -> ([u8; MAX_HEADER_LEN], usize) {
        let mut out = [0u8; MAX_HEADER_LEN];
        out[0] = first_byte(self.fin, self.rsv, self.opcode);
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = match self.payload_len {
            n @ 0..=125 => {
                out[1] = mask_bit | n as u8;
                2
            }
            n @ 126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        (out, pos)
    }
}

/// The first header byte: FIN, the three RSV bits (`rsv`'s low bits, RSV1 = 0b100) and the
/// opcode.
#[inline]
pub const fn first_byte(fin: bool, rsv: u8, opcode: OpCode) -> u8 {
    ((fin as u8) << 7) | ((rsv & 0x7) << 4) | opcode as u8
}

/// Writes the header of an unmasked frame (a server's) whose payload is shorter than 64 KiB
/// into `head`, in the shortest form: 2 bytes up to 125, else 4; returns its length. `None`
/// (and `head` untouched) for longer payloads. The caller's buffer, rather than a returned
/// array, keeps this free on a server's per-message path.
///
/// ```
/// use duplex_proto::frame::{encode_unmasked_short, first_byte, OpCode, MAX_HEADER_LEN};
/// let mut head = [0u8; MAX_HEADER_LEN];
/// let len = encode_unmasked_short(&mut head, first_byte(true, 0, OpCode::Binary), 256).unwrap();
/// assert_eq!(&head[..usize::from(len)], &[0x82, 0x7e, 0x01, 0x00]);
/// assert!(encode_unmasked_short(&mut head, 0x82, 1 << 16).is_none());
/// ```
#[inline]
pub fn encode_unmasked_short(
    head: &mut [u8; MAX_HEADER_LEN],
    first: u8,
    payload_len: usize,
) -> Option<u8> {
    if payload_len <= 125 {
        head[0] = first;
        head[1] = payload_len as u8;
        return Some(2);
    }
    let [hi, lo] = u16::try_from(payload_len).ok()?.to_be_bytes();
    head[..4].copy_from_slice(&[first, 126, hi, lo]);
    Some(4)
}

/// A header with a 7- or 16-bit length, as [`decode_short`] reads it: the raw first byte
/// (unchecked: the caller matches it against the frames it takes), the payload length, the
/// masking key, and the header's length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortHeader {
    /// FIN, RSV and opcode as on the wire.
    pub first: u8,
    /// Payload length (under 64 KiB).
    pub payload_len: usize,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Header bytes: 2 to 8.
    pub len: usize,
}

/// The hot path's decode: a whole header with a 7- or 16-bit length at the start of `buf`.
/// `None` when the header is incomplete or announces a 64-bit length (use
/// [`FrameHeader::decode`] for those, and for everything that needs checking: this checks
/// nothing).
///
/// ```
/// use duplex_proto::frame::decode_short;
/// let h = decode_short(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f]).unwrap();
/// assert_eq!((h.first, h.payload_len, h.mask, h.len), (0x81, 5, Some([0x37, 0xfa, 0x21, 0x3d]), 6));
/// assert!(decode_short(&[0x81, 0x85, 0x37]).is_none());
/// ```
#[inline]
pub fn decode_short(buf: &[u8]) -> Option<ShortHeader> {
    let [first, b1, ..] = *buf else { return None };
    let (payload_len, mut len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(&[hi, lo]) => (usize::from(u16::from_be_bytes([hi, lo])), 4),
            _ => return None,
        },
        127 => return None,
        n => (usize::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let &[k0, k1, k2, k3] = buf.get(len..len + 4)? else {
            return None;
        };
        len += 4;
        Some([k0, k1, k2, k3])
    } else {
        None
    };
    Some(ShortHeader {
        first,
        payload_len,
        mask,
        len,
    })
}

/// The payload length announced by the header at the start of `buf`, once its length field is
/// there (the first 2, 4 or 10 bytes), without checking anything else.
///
/// ```
/// use duplex_proto::frame::peek_payload_len;
/// assert_eq!(peek_payload_len(&[0x82, 0x7e, 0x01]), None);
/// assert_eq!(peek_payload_len(&[0x82, 0x7e, 0x01, 0x00]), Some(256));
/// assert_eq!(peek_payload_len(&[0x81, 0x05]), Some(5));
/// ```
#[inline]
pub fn peek_payload_len(buf: &[u8]) -> Option<u64> {
    let len7 = buf.get(1)? & 0x7f;
    match len7 {
        126 | 127 => peek_extended_len(buf, len7),
        n => Some(u64::from(n)),
    }
}

fn peek_extended_len(buf: &[u8], len7: u8) -> Option<u64> {
    match len7 {
        126 => buf
            .get(2..4)
            .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        127 => buf
            .get(2..10)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> (FrameHeader, usize) {
        FrameHeader::decode(bytes)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn rfc6455_section_5_7_examples() {
        // A single-frame masked text message "Hello".
        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, len) = decode_all(&masked);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!((h.opcode, h.payload_len, len), (OpCode::Text, 5, 6));
        let mut payload = masked[6..].to_vec();
        crate::mask::apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");

        // A fragmented unmasked text message: "Hel" then "lo".
        let (h, _) = decode_all(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = decode_all(&[0x80, 0x02, 0x6c, 0x6f]);
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));

        // Unmasked ping "Hello", masked pong "Hello".
        let (h, _) = decode_all(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(h.opcode, OpCode::Ping);
        let (h, _) = decode_all(&[
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ]);
        assert_eq!((h.opcode, h.mask.is_some()), (OpCode::Pong, true));

        // 256 bytes and 64 KiB binary messages in a single unmasked frame.
        let (h, len) = decode_all(&[0x82, 0x7e, 0x01, 0x00]);
        assert_eq!((h.payload_len, len), (256, 4));
        let (h, len) = decode_all(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!((h.payload_len, len), (65536, 10));
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            FrameHeader::decode(&[0x83, 0x00]),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            FrameHeader::decode(&[0x8b, 0x00]),
            Err(ProtocolError::ReservedOpcode(0xb))
        );
        assert_eq!(
            FrameHeader::decode(&[0x09, 0x00]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            FrameHeader::decode(&[0x89, 0x7e, 0x00, 0x7e]),
            Err(ProtocolError::ControlFrameTooLong(126))
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::InvalidLength)
        );
    }

    #[test]
    fn shortcuts_agree_with_the_full_decode_and_encode() {
        for len in [0u64, 1, 125, 126, 127, 1000, 65535, 65536, 1 << 20] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = FrameHeader {
                    fin: true,
                    rsv: 0,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let (bytes, n) = h.encode();
                assert_eq!(peek_payload_len(&bytes[..n]), Some(len));
                match decode_short(&bytes[..n]) {
                    Some(short) => {
                        assert!(len < 65536);
                        assert_eq!(
                            (short.first, short.payload_len as u64, short.mask, short.len),
                            (bytes[0], len, mask, n)
                        );
                        assert_eq!(decode_short(&bytes[..n - 1]), None);
                    }
                    None => assert!(len >= 65536),
                }
                if mask.is_none() {
                    let mut head = [0u8; MAX_HEADER_LEN];
                    match encode_unmasked_short(&mut head, bytes[0], len as usize) {
                        Some(l) => assert_eq!(&head[..usize::from(l)], &bytes[..n]),
                        None => assert!(len >= 65536),
                    }
                }
            }
        }
    }

    #[test]
    fn lengths_are_minimal() {
        for (len, header_len) in [
            (0u64, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (u32::MAX as u64 + 1, 10),
        ] {
            let h = FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Binary,
                mask: None,
                payload_len: len,
            };
            assert_eq!(h.encode().1, header_len, "payload {len}");
        }
    }

    fn any_header() -> impl Strategy<Value = FrameHeader> {
        let opcode = prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong)
        ];
        (
            any::<bool>(),
            0u8..8,
            opcode,
            any::<Option<[u8; 4]>>(),
            prop_oneof![0u64..200, 0u64..70000, 0u64..(1 << 63)],
        )
            .prop_map(|(fin, rsv, opcode, mask, len)| {
                if opcode.is_control() {
                    FrameHeader {
                        fin: true,
                        rsv,
                        opcode,
                        mask,
                        payload_len: len % 126,
                    }
                } else {
                    FrameHeader {
                        fin,
                        rsv,
                        opcode,
                        mask,
                        payload_len: len,
                    }
                }
            })
    }

    proptest! {
        #[test]
        fn decode_of_encode_at_every_prefix(h in any_header()) {
            let (bytes, len) = h.encode();
            // Every strict prefix asks for more; the whole header decodes to the same value.
            for prefix in 0..len {
                prop_assert_eq!(FrameHeader::decode(&bytes[..prefix]), Ok(None));
            }
            prop_assert_eq!(FrameHeader::decode(&bytes[..len]), Ok(Some((h, len))));
        }
    }
}
