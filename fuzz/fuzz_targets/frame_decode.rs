//! Frame header decoding (RFC 6455 section 5.2) on arbitrary bytes, and the encode/decode
//! round trip of an arbitrary header built from the same bytes.
#![no_main]

use duplex_proto::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use libfuzzer_sys::fuzz_target;

const OPCODES: [OpCode; 6] = [
    OpCode::Continuation,
    OpCode::Text,
    OpCode::Binary,
    OpCode::Close,
    OpCode::Ping,
    OpCode::Pong,
];

fuzz_target!(|data: &[u8]| {
    decode(data);
    round_trip(data);
});

/// Whatever `decode` says must be consistent with itself and with `encode`.
fn decode(data: &[u8]) {
    match FrameHeader::decode(data) {
        Ok(Some((header, len))) => {
            assert!(len <= MAX_HEADER_LEN && len <= data.len());
            if header.opcode.is_control() {
                assert!(header.fin && header.payload_len <= MAX_CONTROL_PAYLOAD as u64);
            }
            assert!(header.payload_len >> 63 == 0);
            // Every strict prefix of a valid header asks for more bytes.
            for cut in 0..len {
                assert_eq!(
                    FrameHeader::decode(&data[..cut]),
                    Ok(None),
                    "prefix of {cut}"
                );
            }
            // Re-encoding uses the minimal length form: never longer, and identical when the
            // input was minimal.
            let (bytes, n) = header.encode();
            assert!(n <= len);
            if n == len {
                assert_eq!(&bytes[..n], &data[..len]);
            }
            assert_eq!(FrameHeader::decode(&bytes[..n]), Ok(Some((header, n))));
        }
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN),
        Err(_) => {}
    }
}

/// A header from the input's first 15 bytes: encode, then decode gives it back, unless it is
/// a control frame the RFC forbids (fragmented or over 125 bytes), which decode rejects.
fn round_trip(data: &[u8]) {
    let Some(bytes) = data.get(..15) else { return };
    let header = FrameHeader {
        fin: bytes[0] & 0x01 != 0,
        rsv: (bytes[0] >> 1) & 0x7,
        opcode: OPCODES[usize::from(bytes[0] >> 4) % OPCODES.len()],
        mask: (bytes[1] & 0x01 != 0).then(|| [bytes[2], bytes[3], bytes[4], bytes[5]]),
        // The top bit must be clear (section 5.2); lengths near the form boundaries are likely.
        payload_len: u64::from_be_bytes(bytes[6..14].try_into().expect("8 bytes"))
            >> (bytes[14] % 63 + 1),
    };
    let (encoded, n) = header.encode();
    let decoded = FrameHeader::decode(&encoded[..n]);
    let forbidden = header.opcode.is_control()
        && (!header.fin || header.payload_len > MAX_CONTROL_PAYLOAD as u64);
    if forbidden {
        assert!(decoded.is_err(), "{header:?} decoded");
    } else {
        assert_eq!(decoded, Ok(Some((header, n))));
        let minimal = match header.payload_len {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        } + if header.mask.is_some() { 4 } else { 0 };
        assert_eq!(n, minimal, "{header:?}");
    }
}
