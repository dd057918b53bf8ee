use super::*;
use proptest::prelude::*;

#[test]
fn compress_once_reuses_its_compressor_without_leaking_context() {
    // Each prepared message must inflate alone: the reused compressor resets in between.
    for (i, text) in ["first message", "second message", "first message", ""]
        .iter()
        .enumerate()
    {
        let level = if i == 2 { 6 } else { 1 };
        let prepared = compress_once(text.as_bytes(), level);
        let mut out = BytesMut::new();
        Decompressor::new(15, true)
            .decompress(&prepared, true, &mut out, 1 << 20)
            .unwrap();
        assert_eq!(&out[..], text.as_bytes(), "message {i}");
    }
}

const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

fn compress(c: &mut Compressor, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    c.compress(payload, &mut out);
    out
}

fn inflate(d: &mut Decompressor, fragments: &[&[u8]]) -> Result<BytesMut, ProtocolError> {
    let mut out = BytesMut::new();
    for (i, f) in fragments.iter().enumerate() {
        d.decompress(f, i + 1 == fragments.len(), &mut out, 1 << 20)?;
    }
    Ok(out)
}

// ---- RFC 7692 section 7.2.3 examples ----

#[test]
fn rfc_7_2_3_1_hello() {
    // zlib produces the RFC's bytes at every level (a static Huffman block).
    for level in 1..=9 {
        assert_eq!(
            &compress(&mut Compressor::new(15, level, false), b"Hello")[..],
            HELLO
        );
    }
    let mut d = Decompressor::new(15, false);
    assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
    // The same message in two fragments: 0x41 0x03 f2 48 cd, 0x80 0x04 c9 c9 07 00.
    assert_eq!(
        &inflate(&mut d, &[&HELLO[..3], &HELLO[3..]]).unwrap()[..],
        b"Hello"
    );
}

#[test]
fn rfc_7_2_3_2_context_takeover() {
    let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
    // zlib-rs reproduces the RFC's bytes from level 2 up. Level 1 (its "quick" strategy)
    // encodes the back-reference differently, also valid.
    for level in 1..=9 {
        let mut c = Compressor::new(15, level, false);
        assert_eq!(&compress(&mut c, b"Hello")[..], HELLO);
        let again = compress(&mut c, b"Hello");
        if level >= 2 {
            assert_eq!(&again[..], second, "level {level}");
        }
        let mut d = Decompressor::new(15, false);
        assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
        assert_eq!(&inflate(&mut d, &[&again]).unwrap()[..], b"Hello");
    }
    let mut d = Decompressor::new(15, false);
    assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
    assert_eq!(&inflate(&mut d, &[&second]).unwrap()[..], b"Hello");

    // Without context takeover every message is compressed alone.
    let mut c = Compressor::new(15, 1, true);
    for _ in 0..3 {
        assert_eq!(&compress(&mut c, b"Hello")[..], HELLO);
    }
    // A decompressor that resets cannot resolve the back-reference into the previous
    // message: the peer broke its no-context-takeover promise.
    let mut d = Decompressor::new(15, true);
    inflate(&mut d, &[&HELLO]).unwrap();
    assert_eq!(
        inflate(&mut d, &[&second]),
        Err(ProtocolError::InvalidCompressedData)
    );
}

#[test]
fn rfc_7_2_3_3_stored_block() {
    let payload = [
        0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ];
    let mut d = Decompressor::new(15, false);
    assert_eq!(&inflate(&mut d, &[&payload]).unwrap()[..], b"Hello");
    // Level 0 writes stored blocks the same way.
    assert_eq!(
        &compress(&mut Compressor::new(15, 0, false), b"Hello")[..],
        payload
    );
}

#[test]
fn rfc_7_2_3_4_bfinal() {
    let payload = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    let mut d = Decompressor::new(15, false);
    assert_eq!(&inflate(&mut d, &[&payload]).unwrap()[..], b"Hello");
    // Split inside the block, and the stream ended: the next message starts afresh.
    assert_eq!(
        &inflate(&mut d, &[&payload[..2], &payload[2..]]).unwrap()[..],
        b"Hello"
    );
    assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
}

#[test]
fn rfc_7_2_3_5_two_blocks() {
    let payload = [
        0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
    ];
    let mut d = Decompressor::new(15, false);
    assert_eq!(&inflate(&mut d, &[&payload]).unwrap()[..], b"Hello");
    // Every split point.
    for i in 0..=payload.len() {
        let out = inflate(&mut d, &[&payload[..i], &payload[i..]]).unwrap();
        assert_eq!(&out[..], b"Hello", "split at {i}");
    }
    // The sender side: a flush between "He" and "llo" gives the same shape.
    let mut c = Compressor::new(15, 1, false);
    let mut out = BytesMut::new();
    c.compress_piece(b"He", &mut out);
    c.flush(&mut out);
    c.compress_piece(b"llo", &mut out);
    c.finish(&mut out);
    assert_eq!(
        &inflate(&mut Decompressor::new(15, false), &[&out]).unwrap()[..],
        b"Hello"
    );
}

#[test]
fn rfc_7_2_3_6_empty_message() {
    let mut c = Compressor::new(15, 1, false);
    assert_eq!(&compress(&mut c, b"")[..], [0x00]);
    let mut d = Decompressor::new(15, false);
    assert!(inflate(&mut d, &[&[0x00]]).unwrap().is_empty());
    // An empty payload with RSV1 is the empty stored block once the tail is appended.
    assert!(inflate(&mut d, &[&[]]).unwrap().is_empty());
}

#[test]
fn invalid_data_is_an_error_and_resets() {
    let mut d = Decompressor::new(15, false);
    // BTYPE 11 is reserved.
    assert_eq!(
        inflate(&mut d, &[&[0xff, 0xff]]),
        Err(ProtocolError::InvalidCompressedData)
    );
    assert_eq!(d.message_len(), 0);
    assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
    // A distance before the start of the stream.
    assert_eq!(
        inflate(
            &mut Decompressor::new(15, false),
            &[&[0xf2, 0x00, 0x11, 0x00, 0x00]]
        ),
        Err(ProtocolError::InvalidCompressedData)
    );
}

// ---- size limit ----

/// A message inflating to `mib` MiB of zeros, built from one compressed MiB repeated.
fn bomb(mib: usize) -> Vec<u8> {
    let one = compress_once(&vec![0u8; 1 << 20], 9);
    let mut msg = Vec::new();
    for i in 0..mib {
        msg.extend_from_slice(&one);
        if i + 1 < mib {
            msg.extend_from_slice(&TAIL);
        }
    }
    msg
}

#[test]
fn deflate_bomb_stops_at_the_limit() {
    let msg = bomb(100);
    assert!(msg.len() < 200 * 1024, "bomb is {} bytes", msg.len());
    let max = 1 << 20;
    let mut d = Decompressor::new(15, false);
    let mut out = BytesMut::new();
    let mut result = Ok(());
    let mut fed = 0;
    for chunk in msg.chunks(16 * 1024) {
        fed += chunk.len();
        result = d.decompress(chunk, fed == msg.len(), &mut out, max);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(
        result,
        Err(ProtocolError::MessageTooLarge {
            size: max as u64 + 1,
            max
        })
    );
    // The first 16 KiB of input already hold far more than 1 MiB of output.
    assert_eq!(fed, 16 * 1024, "stopped after {fed} bytes of input");
    assert_eq!(out.len(), max + 1);
    assert!(out.capacity() <= 3 * max, "capacity {}", out.capacity());
    // Reset: the next message is fine.
    assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
}

#[test]
fn limit_is_exact_and_counts_across_fragments() {
    let data = vec![7u8; 100_000];
    let compressed = compress_once(&data, 6);
    let (a, b) = compressed.split_at(compressed.len() / 2);
    for (max, ok) in [(100_000, true), (99_999, false)] {
        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::new();
        let r = d
            .decompress(a, false, &mut out, max)
            .and_then(|()| d.decompress(b, true, &mut out, max));
        assert_eq!(r.is_ok(), ok, "max {max}");
        if ok {
            assert_eq!(&out[..], &data[..]);
        }
    }
}

// ---- context takeover and fragmentation ----

fn messages() -> Vec<Vec<u8>> {
    (0..8)
        .map(|i| {
            format!(
                "{{\"channel\":\"prices\",\"seq\":{i},\"bid\":{}.{}}}",
                100 + i,
                i * 7
            )
            .repeat(1 + i % 3)
            .into_bytes()
        })
        .collect()
}

#[test]
fn context_takeover_round_trips() {
    for bits in [8, 9, 12, 15] {
        let mut sizes = [0usize; 2];
        for (k, no_context) in [false, true].into_iter().enumerate() {
            let mut c = Compressor::new(bits, 1, no_context);
            let mut d = Decompressor::new(bits, no_context);
            for msg in messages() {
                let wire = compress(&mut c, &msg);
                sizes[k] += wire.len();
                assert_eq!(inflate(&mut d, &[&wire]).unwrap(), msg);
            }
            // A decompressor that keeps context also reads a resetting compressor.
            if no_context {
                let mut d = Decompressor::new(bits, false);
                for msg in messages() {
                    assert_eq!(inflate(&mut d, &[&compress(&mut c, &msg)]).unwrap(), msg);
                }
            }
        }
        assert!(sizes[0] < sizes[1], "bits {bits}: takeover {sizes:?}");
    }
}

#[test]
fn fragmented_message_round_trip() {
    let msg: Vec<u8> = messages().concat().repeat(50);
    let mut c = Compressor::new(15, 6, false);
    let mut d = Decompressor::new(15, false);
    for round in 0..3 {
        let mut frames = Vec::new();
        for (i, piece) in msg.chunks(1000).enumerate() {
            let mut frame = BytesMut::new();
            c.compress_piece(piece, &mut frame);
            if (i + round) % 4 == 0 {
                c.flush(&mut frame);
            }
            frames.push(frame);
        }
        let mut last = BytesMut::new();
        c.finish(&mut last);
        frames.push(last);
        let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(inflate(&mut d, &frames).unwrap(), msg, "round {round}");
    }
}

#[test]
fn flushes_write_one_marker() {
    let data = messages().concat().repeat(30);
    for level in [0, 1, 6] {
        for bits in [9, 15] {
            // `compress_piece` + `finish` gives the same bytes as `compress`: the final sync
            // flush gets room for all its output, so zlib does not repeat the marker.
            let mut whole = BytesMut::new();
            Compressor::new(bits, level, true).compress(&data, &mut whole);
            let mut c = Compressor::new(bits, level, true);
            let mut pieces = BytesMut::new();
            c.compress_piece(&data, &mut pieces);
            c.finish(&mut pieces);
            assert!(whole == pieces, "level {level} bits {bits}");
            // In many pieces (level 0 then cuts stored blocks differently).
            let mut pieces = BytesMut::new();
            for piece in data.chunks(777) {
                c.compress_piece(piece, &mut pieces);
            }
            c.finish(&mut pieces);
            let mut d = Decompressor::new(bits, true);
            assert!(inflate(&mut d, &[&pieces]).unwrap() == data);

            // `flush` then `finish` with nothing between: the marker already went out, so
            // `finish` adds the 0x00 that keeps the receiver's appended tail aligned.
            let mut out = BytesMut::new();
            c.compress_piece(&data, &mut out);
            c.flush(&mut out);
            let n = out.len();
            assert!(out.ends_with(&TAIL));
            c.finish(&mut out);
            assert_eq!(&out[n..], [0x00]);
            let mut d = Decompressor::new(bits, true);
            assert!(inflate(&mut d, &[&out[..n], &out[n..]]).unwrap() == data);
        }
    }
}

#[test]
fn window_9_output_fits_an_8_bit_window() {
    // A random 256-byte block repeated: an 8-bit window cannot reach back 256 bytes, and
    // zlib's 9-bit compressor (max distance 512 - 262 = 250) does not either, even at
    // level 9, while a 10-bit one does.
    let mut x = 0x2545_f491_u32;
    let block: Vec<u8> = (0..256)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let data = block.repeat(40);
    let narrow = compress(&mut Compressor::new(8, 9, false), &data);
    let wide = compress(&mut Compressor::new(10, 9, false), &data);
    assert!(
        narrow.len() > data.len() * 9 / 10,
        "8-bit: {}",
        narrow.len()
    );
    assert!(wide.len() < data.len() / 10, "10-bit: {}", wide.len());
    assert_eq!(
        inflate(&mut Decompressor::new(8, false), &[&narrow]).unwrap(),
        data
    );
}

#[test]
fn compress_once_is_a_fresh_context() {
    let mut c = Compressor::new(15, 1, false);
    compress(&mut c, b"Hello");
    let prepared = compress_once(b"Hello", 1);
    assert_eq!(&prepared[..], HELLO);
    // Every receiver, whatever it decoded before, reads it.
    let mut d = Decompressor::new(15, false);
    inflate(&mut d, &[&compress(&mut c, b"something else")]).unwrap();
    assert_eq!(&inflate(&mut d, &[&prepared]).unwrap()[..], b"Hello");
}

fn window() -> impl Strategy<Value = u8> {
    MIN_WINDOW_BITS..=MAX_WINDOW_BITS
}

/// Random data with some repetition, so that matches happen.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(b'a'..=b'e', 0..300),
            (any::<u8>(), 0..2000usize).prop_map(|(b, n)| vec![b; n]),
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

/// Cut `data` at the given fractions.
fn cut(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(data[start..p].to_vec());
        start = p;
    }
    pieces.push(data[start..].to_vec());
    pieces
}

proptest! {
    #[test]
    fn round_trip_with_random_fragmentation(
        messages in prop::collection::vec((payload(), prop::collection::vec(any::<usize>(), 0..5), prop::collection::vec(any::<usize>(), 0..5), any::<bool>()), 1..5),
        bits in window(),
        level in 0..=9u32,
        no_context in any::<bool>(),
    ) {
        let mut c = Compressor::new(bits, level, no_context);
        let mut d = Decompressor::new(bits, no_context);
        for (msg, send_cuts, recv_cuts, flush) in messages {
            // Sender: the message in pieces; receiver: the wire bytes cut elsewhere.
            let mut wire = BytesMut::new();
            for piece in cut(&msg, &send_cuts) {
                c.compress_piece(&piece, &mut wire);
                if flush {
                    c.flush(&mut wire);
                }
            }
            c.finish(&mut wire);
            let frames = cut(&wire, &recv_cuts);
            let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            prop_assert_eq!(&inflate(&mut d, &frames).unwrap()[..], &msg[..]);
            // The whole-message call gives the same result as pieces without flushes.
            if !flush && no_context {
                let mut whole = BytesMut::new();
                Compressor::new(bits, level, true).compress(&msg, &mut whole);
                let mut pieces = BytesMut::new();
                let mut fresh = Compressor::new(bits, level, true);
                fresh.compress_piece(&msg, &mut pieces);
                fresh.finish(&mut pieces);
                prop_assert_eq!(whole, pieces);
            }
        }
    }
}
