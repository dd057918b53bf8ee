//! permessage-deflate throughput against flate2 used directly, so the extension's own overhead
//! is visible, and the compression ratio on a JSON-like payload.
//!
//! `cargo bench -p duplex-proto --bench deflate` prints MB/s for each, then the ratio.
#![allow(
    missing_docs,
    reason = "criterion_group! defines an undocumented pub fn"
)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duplex_proto::extensions::deflate::{Compressor, Decompressor};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// A ticker-like JSON message of about `size` bytes, varied so it is not trivially repetitive.
fn json_payload(size: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < size {
        let price = 100.0 + ((i * 7919) % 1000) as f64 / 100.0;
        out.push_str(&format!(
            r#"{{"symbol":"SYM{}","bid":{:.2},"ask":{:.2},"volume":{},"ts":{}}},"#,
            i % 50,
            price,
            price + 0.05,
            (i * 104_729) % 100_000,
            1_700_000_000_000u64 + i * 13
        ));
        i += 1;
    }
    out.truncate(size - 1);
    out.push(']');
    out.into_bytes()
}

/// Several different payloads of `size`, cycled through, so context takeover is measured on a
/// stream of similar messages rather than one message repeated (which compresses to nothing).
fn payloads(size: usize) -> Vec<Vec<u8>> {
    (0..16).map(|i| json_payload(size + i * 7)).collect()
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_compress");
    for size in [1024usize, 16 * 1024, 256 * 1024] {
        let inputs = payloads(size);
        group.throughput(Throughput::Bytes(size as u64));
        for takeover in [true, false] {
            let name = if takeover {
                "duplex_context_takeover"
            } else {
                "duplex_no_context_takeover"
            };
            let mut compressor = Compressor::new(15, 1, !takeover);
            let mut out = BytesMut::with_capacity(size);
            let mut next = inputs.iter().cycle();
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    out.clear();
                    compressor.compress(black_box(next.next().unwrap()), &mut out);
                })
            });
            // The same work with flate2's raw deflate stream and nothing else: a sync flush per
            // message, and a reset per message where duplex resets.
            let mut raw = Compress::new_with_window_bits(Compression::new(1), false, 15);
            let mut out = vec![0u8; size * 2 + 1024];
            let mut next = inputs.iter().cycle();
            let name = if takeover {
                "flate2_context_takeover"
            } else {
                "flate2_no_context_takeover"
            };
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    let before = raw.total_out();
                    raw.compress(
                        black_box(next.next().unwrap()),
                        &mut out,
                        FlushCompress::Sync,
                    )
                    .unwrap();
                    let written = raw.total_out() - before;
                    if !takeover {
                        raw.reset();
                    }
                    black_box(written)
                })
            });
        }
    }
    group.finish();
}

fn decompress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_decompress");
    for size in [1024usize, 16 * 1024, 256 * 1024] {
        let payload = json_payload(size);
        let mut compressed = BytesMut::new();
        Compressor::new(15, 1, true).compress(&payload, &mut compressed);
        // Throughput counts inflated bytes, as a receiver experiences it.
        group.throughput(Throughput::Bytes(size as u64));
        let mut decompressor = Decompressor::new(15, true);
        let mut out = BytesMut::with_capacity(size);
        group.bench_with_input(BenchmarkId::new("duplex", size), &compressed, |b, data| {
            b.iter(|| {
                out.clear();
                decompressor
                    .decompress(black_box(data), true, &mut out, usize::MAX)
                    .unwrap();
            })
        });
        let mut with_tail = compressed.to_vec();
        with_tail.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut raw = Decompress::new_with_window_bits(false, 15);
        let mut out = vec![0u8; size + 1024];
        group.bench_with_input(
            BenchmarkId::new("flate2_direct", size),
            &with_tail,
            |b, data| {
                b.iter(|| {
                    raw.reset(false);
                    raw.decompress(black_box(data), &mut out, FlushDecompress::Sync)
                        .unwrap();
                    black_box(raw.total_out())
                })
            },
        );
    }
    group.finish();
}

fn ratio(_: &mut Criterion) {
    println!("\ncompression ratio, JSON-like payload (original / compressed):");
    for size in [1024usize, 16 * 1024, 256 * 1024] {
        let payload = json_payload(size);
        for level in [1u32, 6, 9] {
            let mut fresh = BytesMut::new();
            Compressor::new(15, level, true).compress(&payload, &mut fresh);
            // With context takeover, the second of two similar messages compresses against the first.
            let mut compressor = Compressor::new(15, level, false);
            let mut first = BytesMut::new();
            compressor.compress(&payload, &mut first);
            let mut second = BytesMut::new();
            compressor.compress(&json_payload(size + 7), &mut second);
            println!(
                "  {size:>7} B  level {level}: {:5.2}x alone, {:5.2}x with context takeover (2nd message)",
                size as f64 / fresh.len() as f64,
                (size + 7) as f64 / second.len() as f64
            );
        }
    }
}

criterion_group!(benches, compress, decompress, ratio);
criterion_main!(benches);
