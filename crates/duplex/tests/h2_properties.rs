//! Property test of the HTTP/2 pair: any sequence of messages (text or binary, empty to larger
//! than a frame, sent whole or in fragments split anywhere, pings between them), with or
//! without permessage-deflate, comes back unchanged over an RFC 8441 stream from the hyper
//! example's echo server, and the close code the client picks comes back in the server's
//! Close. Every case opens a new WebSocket on one shared HTTP/2 connection, so the
//! connection also carries a few dozen streams one after another.
#![cfg(all(feature = "hyper", feature = "http2", feature = "deflate"))]

mod common;

#[path = "../examples/hyper_echo.rs"]
#[allow(
    dead_code,
    reason = "the example's main is not run here, only its server"
)]
mod hyper_echo;

use bytes::Bytes;
use duplex::{ClientOptions, CloseCode, DataKind, Event, Http2Connection, Message};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One message to send: its kind, its bytes (made from a seed), and where to cut it.
#[derive(Debug, Clone)]
struct Case {
    text: bool,
    len: usize,
    seed: u64,
    /// Fractions (0..1000) of the length at which to cut fragments; empty: sent whole.
    cuts: Vec<u16>,
    ping_after: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop_oneof![0..130usize, 0..70_000usize, 60_000..300_000usize],
        any::<u64>(),
        proptest::collection::vec(0..1000u16, 0..4),
        any::<bool>(),
    )
        .prop_map(|(text, len, seed, cuts, ping_after)| Case {
            text,
            len,
            seed,
            cuts,
            ping_after,
        })
}

/// The payload: for text, ASCII letters and a three-byte character (so cuts may fall inside
/// one); for binary, noise that deflate cannot shrink every time.
fn payload(case: &Case) -> Vec<u8> {
    let mut state = case.seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    if case.text {
        let mut s = String::with_capacity(case.len);
        while s.len() < case.len {
            match next() % 8 {
                0 => s.push('✓'),
                n => s.push(char::from(b'a' + (n as u8) * 3)),
            }
        }
        s.into_bytes()
    } else {
        (0..case.len).map(|_| next() as u8).collect()
    }
}

#[test]
fn any_message_sequence_echoes_over_http2() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (url, connection) = runtime.block_on(async {
        let (listener, addr) = common::listener().await;
        tokio::spawn(hyper_echo::serve(listener));
        let url = format!("ws://{addr}/echo");
        let connection = common::within(Http2Connection::connect(&url, &ClientOptions::default()))
            .await
            .expect("h2 connection");
        assert!(connection.supports_websockets());
        (url, connection)
    });

    let strategy = (
        proptest::collection::vec(case(), 1..6),
        any::<bool>(),
        prop_oneof![Just(1000u16), 3000..5000u16],
    );
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    let result = runner.run(&strategy, |(cases, deflate, code)| {
        runtime.block_on(common::within(async {
            let options = ClientOptions {
                deflate: deflate.then(Default::default),
                ..ClientOptions::default()
            };
            let (mut ws, response) = connection.websocket(&url, options).await.expect("open");
            assert_eq!(response.extensions.is_some(), deflate);
            let mut expected = Vec::new();
            let mut pings = 0usize;
            for case in &cases {
                let bytes = payload(case);
                let message = if case.text {
                    Message::text(String::from_utf8(bytes.clone()).expect("utf-8"))
                } else {
                    Message::binary(bytes.clone())
                };
                if case.cuts.is_empty() {
                    ws.send(message.clone()).await.expect("send");
                } else {
                    let kind = if case.text {
                        DataKind::Text
                    } else {
                        DataKind::Binary
                    };
                    let mut cuts: Vec<usize> = case
                        .cuts
                        .iter()
                        .map(|c| bytes.len() * usize::from(*c) / 1000)
                        .collect();
                    cuts.sort_unstable();
                    let bytes = Bytes::from(bytes);
                    let mut start = 0;
                    for cut in cuts {
                        ws.send_fragment(kind, bytes.slice(start..cut), false)
                            .await
                            .expect("fragment");
                        start = cut;
                    }
                    ws.send_fragment(kind, bytes.slice(start..), true)
                        .await
                        .expect("last fragment");
                }
                expected.push(message);
                if case.ping_after {
                    ws.ping(format!("ping {pings}")).await.expect("ping");
                    pings += 1;
                }
            }
            let mut received = Vec::new();
            let mut pongs = 0usize;
            while received.len() < expected.len() || pongs < pings {
                match ws.recv_event().await.expect("open").expect("event") {
                    Event::Message(message) => received.push(message),
                    Event::Pong(payload) => {
                        assert_eq!(&payload[..], format!("ping {pongs}").as_bytes());
                        pongs += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(received == expected, "echo differs from what was sent");
            let close = ws.close(CloseCode(code), "done").await.expect("close");
            assert_eq!(close.map(|c| c.code), Some(CloseCode(code)));
        }));
        Ok(())
    });
    result.expect("property failed");
}
