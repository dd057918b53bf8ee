//! permessage-deflate inflation (RFC 7692 section 7.2.2) of arbitrary bytes under a small size
//! limit: it never exceeds the limit, never panics, and recovers after an error.
//!
//! Input: a setup byte (bits 0..=2: window bits 8..=15; bit 3: no context takeover), a limit
//! byte (limit = 1 + 64 * byte), a split byte (piece lengths and where messages end, see
//! `Splitter`), then the compressed bytes.
#![no_main]

use bytes::BytesMut;
use duplex_fuzz::Splitter;
use duplex_proto::extensions::deflate::Decompressor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [setup, limit, split, ref compressed @ ..] = *data else {
        return;
    };
    let window_bits = 8 + (setup & 0x7);
    let no_context_takeover = setup & 0x8 != 0;
    let max_size = 1 + 64 * usize::from(limit);
    let mut decompressor = Decompressor::new(window_bits, no_context_takeover);
    let mut splitter = Splitter::new(split);
    let mut rest = compressed;
    let mut message = BytesMut::new();
    while !rest.is_empty() {
        let piece = splitter.next_piece(&mut rest);
        // The last piece always ends its message; others do one time in four.
        let fin = rest.is_empty() || splitter.next_u32().is_multiple_of(4);
        let result = decompressor.decompress(piece, fin, &mut message, max_size);
        // One byte past the limit is how the decompressor sees it was passed; it then fails.
        let bound = if result.is_ok() {
            max_size
        } else {
            max_size + 1
        };
        assert!(
            message.len() <= bound,
            "inflated {} bytes over a limit of {max_size} ({result:?})",
            message.len()
        );
        assert!(decompressor.message_len() <= max_size as u64);
        if result.is_err() || fin {
            // A failed or finished message starts over, as a connection does.
            assert_eq!(decompressor.message_len(), 0, "the message length resets");
            message.clear();
        }
    }
});
