//! The per-byte and per-frame hot paths: unmasking, UTF-8 validation, frame headers, and a
//! whole receive of a masked frame.
//!
//! `cargo bench -p duplex-proto --bench hot_paths` prints throughput (GiB/s) and ns per frame.
#![allow(
    missing_docs,
    reason = "criterion_group! defines an undocumented pub fn"
)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duplex_proto::frame::{FrameHeader, OpCode};
use duplex_proto::mask::{apply_mask, apply_mask_scalar};
use duplex_proto::{Config, Connection, Message, Role};

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in [20usize, 1024, 64 * 1024] {
        let mut buf = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("fast", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
        group.bench_with_input(BenchmarkId::new("scalar", size), &size, |b, _| {
            b.iter(|| apply_mask_scalar(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    let ascii = "a".repeat(64 * 1024);
    let mixed = "grüß dich, κόσμε, 世界 🙂 ".repeat(64 * 1024 / 40);
    for (name, text) in [("ascii", &ascii), ("mixed", &mixed)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(BenchmarkId::new("validate", name), |b| {
            b.iter(|| duplex_proto::utf8::validate(black_box(text.as_bytes())))
        });
        group.bench_function(BenchmarkId::new("incremental_4k_pieces", name), |b| {
            b.iter(|| {
                let mut v = duplex_proto::utf8::Utf8Validator::new();
                for piece in text.as_bytes().chunks(4096) {
                    v.feed(black_box(piece)).unwrap();
                }
                v.finish()
            })
        });
    }
    group.finish();
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header");
    group.throughput(Throughput::Elements(1));
    for len in [20u64, 1024, 65536] {
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: Some([1, 2, 3, 4]),
            payload_len: len,
        };
        let (bytes, n) = header.encode();
        group.bench_function(BenchmarkId::new("decode", len), |b| {
            b.iter(|| FrameHeader::decode(black_box(&bytes[..n])))
        });
        group.bench_function(BenchmarkId::new("encode", len), |b| {
            b.iter(|| black_box(&header).encode())
        });
    }
    group.finish();
}

/// A masked client frame received and handed out by a server connection: the core's whole
/// per-message receive cost.
fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive_frame");
    for size in [20usize, 1024, 64 * 1024] {
        let mut client = Connection::new(Role::Client, Config::default());
        client.send(Message::text("x".repeat(size))).unwrap();
        let tx = client.poll_transmit().unwrap();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(tx.head());
        wire.extend_from_slice(tx.payload());
        let wire = wire.freeze();
        let mut server = Connection::new(Role::Server, Config::default());
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("text", size), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                server.recv(&mut buf).unwrap();
                black_box(server.poll_event())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, masking, utf8, headers, receive);
criterion_main!(benches);
