//! Client against server over 127.0.0.1: messages, fragments, control frames, close, split,
//! keepalive.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{echo_server, listener, within, ws_url};
use duplex::{
    ClientOptions, CloseCode, CloseFrame, Config, DataKind, Error, Event, Message, ServerOptions,
    Timeout, WebSocketOptions,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn text_and_binary_round_trip() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let (mut ws, response) = duplex::connect(&ws_url(addr, "/echo?x=1")).await.unwrap();
        assert_eq!(response.status, 101);
        assert_eq!(response.protocol, None);

        ws.send(Message::text("héllo")).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("héllo"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::binary(vec![0u8, 1, 2, 255])
        );
        ws.send(Message::text("")).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(""));
    })
    .await;
}

#[tokio::test]
async fn one_mebibyte_message() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(payload.clone())).await.unwrap();
        let echoed = ws.recv().await.unwrap().unwrap();
        assert_eq!(echoed.as_bytes(), &payload[..]);
    })
    .await;
}

#[tokio::test]
async fn many_small_messages_pipelined_through_the_sink() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        for i in 0..500 {
            ws.feed(Message::text(format!("m{i}"))).await.unwrap();
        }
        SinkExt::flush(&mut ws).await.unwrap();
        for i in 0..500 {
            let message = ws.next().await.unwrap().unwrap();
            assert_eq!(message, Message::text(format!("m{i}")));
        }
    })
    .await;
}

#[tokio::test]
async fn fragmented_send_arrives_whole_or_streamed() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        ws.send_fragment(DataKind::Text, "hel", false)
            .await
            .unwrap();
        ws.ping("between").await.unwrap();
        ws.send_fragment(DataKind::Text, "lo ", false)
            .await
            .unwrap();
        ws.send_fragment(DataKind::Text, "world", true)
            .await
            .unwrap();
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::text("hello world")
        );

        // A server that streams: every fragment comes back as it came.
        let streaming = ServerOptions {
            config: Config {
                streaming_receive: true,
                ..Config::default()
            },
            ..ServerOptions::default()
        };
        let addr = echo_server(streaming).await;
        let options = ClientOptions {
            config: Config {
                streaming_receive: true,
                ..Config::default()
            },
            ..ClientOptions::default()
        };
        let (mut ws, _) = duplex::connect_with(&ws_url(addr, "/"), options)
            .await
            .unwrap();
        ws.send_fragment(DataKind::Binary, vec![1u8, 2], false)
            .await
            .unwrap();
        ws.send_fragment(DataKind::Binary, vec![3u8], true)
            .await
            .unwrap();
        let mut pieces = Vec::new();
        while let Some(event) = ws.recv_event().await {
            match event.unwrap() {
                Event::Fragment {
                    kind,
                    data,
                    first,
                    fin,
                } => {
                    assert_eq!(kind, DataKind::Binary);
                    assert_eq!(first, pieces.is_empty());
                    pieces.extend_from_slice(&data);
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(pieces, [1, 2, 3]);
        // Whole-message receive is refused on a streaming connection.
        ws.send(Message::text("x")).await.unwrap();
        assert!(matches!(
            ws.recv().await,
            Some(Err(Error::StreamingReceive))
        ));
    })
    .await;
}

#[tokio::test]
async fn ping_gets_pong_and_reader_only_side_answers_pings() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        ws.ping(Bytes::from_static(b"are you there")).await.unwrap();
        match ws.recv_event().await.unwrap().unwrap() {
            Event::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
            other => panic!("expected a pong, got {other:?}"),
        }

        // A server that only reads: its pongs must still go out.
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = duplex::accept(tcp).await.unwrap();
            while let Some(Ok(_)) = ws.recv_event().await {}
        });
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        for i in 0..3u8 {
            ws.ping(vec![i]).await.unwrap();
            match ws.recv_event().await.unwrap().unwrap() {
                Event::Pong(payload) => assert_eq!(&payload[..], &[i]),
                other => panic!("expected a pong, got {other:?}"),
            }
        }
        // Oversized control payloads are the caller's mistake, and nothing is sent.
        assert!(matches!(
            ws.ping(vec![0u8; 126]).await,
            Err(Error::Usage(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn close_code_and_reason_seen_on_both_sides() {
    within(async {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = duplex::accept(tcp).await.unwrap();
            let mut seen = None;
            while let Some(event) = ws.recv_event().await {
                if let Event::Close(frame) = event.unwrap() {
                    seen = frame;
                }
            }
            // The connection is over: sending fails cleanly.
            assert!(ws.send(Message::text("late")).await.is_err());
            seen
        });
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        let reply = ws.close(CloseCode(4000), "bye now").await.unwrap();
        // The core's reply echoes the code (RFC 6455 section 5.5.1), without a reason.
        assert_eq!(reply.map(|frame| frame.code), Some(CloseCode(4000)));
        assert_eq!(ws.recv().await.map(|r| r.is_ok()), None);
        let seen = server.await.unwrap();
        assert_eq!(seen, Some(CloseFrame::new(CloseCode(4000), "bye now")));
    })
    .await;
}

#[tokio::test]
async fn server_initiated_close_ends_client_stream() {
    within(async {
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = duplex::accept(tcp).await.unwrap();
            ws.send(Message::text("last words")).await.unwrap();
            ws.close(CloseCode::GOING_AWAY, "shutting down")
                .await
                .unwrap();
        });
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::text("last words")
        );
        assert!(ws.recv().await.is_none());
        assert_eq!(
            ws.peer_close(),
            Some(&CloseFrame::new(CloseCode::GOING_AWAY, "shutting down"))
        );
    })
    .await;
}

#[tokio::test]
async fn split_halves_on_two_tasks() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let (ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        let (mut tx, mut rx) = ws.split();
        let (all_back, wait_all_back) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn(async move {
            for i in 0..200 {
                tx.send(Message::text(format!("{i}"))).await.unwrap();
                if i % 50 == 0 {
                    tx.ping(Bytes::new()).await.unwrap();
                }
            }
            // The echo server stops echoing once it has read our Close, so wait for the echoes.
            wait_all_back.await.unwrap();
            tx.close(CloseCode::NORMAL, "done").await.unwrap();
            tx
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut all_back = Some(all_back);
            while let Some(message) = rx.next().await {
                got.push(message.unwrap());
                if got.len() == 200 {
                    all_back.take().unwrap().send(()).unwrap();
                }
            }
            (got, rx)
        });
        let tx = writer.await.unwrap();
        let (got, rx) = reader.await.unwrap();
        let expected: Vec<_> = (0..200).map(|i| Message::text(format!("{i}"))).collect();
        assert_eq!(got, expected);
        assert_eq!(rx.peer_close().map(|f| f.code), Some(CloseCode::NORMAL));
        let ws = tx.reunite(rx).unwrap();
        assert_eq!(ws.state(), duplex::State::Closed);
    })
    .await;
}

#[tokio::test]
async fn subprotocol_is_negotiated() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let options = ClientOptions {
            protocols: vec!["echo.v1".into(), "echo.v2".into()],
            ..ClientOptions::default()
        };
        let (ws, response) = duplex::connect_with(&ws_url(addr, "/"), options)
            .await
            .unwrap();
        // The server prefers v2.
        assert_eq!(response.protocol.as_deref(), Some("echo.v2"));
        assert_eq!(ws.protocol(), Some("echo.v2"));
    })
    .await;
}

#[tokio::test]
async fn keepalive_pings_keep_an_idle_connection_alive() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let options = ClientOptions {
            websocket: WebSocketOptions {
                ping_interval: Some(Duration::from_millis(50)),
                idle_timeout: Some(Duration::from_millis(300)),
                ..WebSocketOptions::default()
            },
            ..ClientOptions::default()
        };
        let (mut ws, _) = duplex::connect_with(&ws_url(addr, "/"), options)
            .await
            .unwrap();
        let mut pongs = 0;
        let quiet_for = tokio::time::sleep(Duration::from_millis(800));
        tokio::pin!(quiet_for);
        loop {
            tokio::select! {
                _ = &mut quiet_for => break,
                event = ws.recv_event() => match event.unwrap().unwrap() {
                    Event::Pong(_) => pongs += 1,
                    other => panic!("unexpected {other:?}"),
                },
            }
        }
        assert!(pongs >= 5, "only {pongs} pongs");
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::text("still here")
        );
    })
    .await;
}

#[tokio::test]
async fn idle_timeout_fails_a_silent_connection() {
    within(async {
        // A server that completes the handshake and then never sends a byte.
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = duplex::accept(tcp).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(ws);
        });
        // Idle: Close 1001 after 200 ms of silence; the server never reads it, so the close
        // timeout (300 ms) ends the connection, reported as the idle timeout it came from.
        let options = ClientOptions {
            websocket: WebSocketOptions {
                idle_timeout: Some(Duration::from_millis(200)),
                close_timeout: Duration::from_millis(300),
                ..WebSocketOptions::default()
            },
            ..ClientOptions::default()
        };
        let (mut ws, _) = duplex::connect_with(&ws_url(addr, "/"), options)
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(
            ws.recv().await,
            Some(Err(Error::Timeout(Timeout::Idle)))
        ));
        assert!(started.elapsed() >= Duration::from_millis(450));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(ws.recv().await.is_none());
        assert!(matches!(
            ws.send(Message::text("x")).await,
            Err(Error::ConnectionClosed)
        ));
    })
    .await;
}

#[tokio::test]
async fn frames_sent_right_after_the_101_are_not_lost() {
    within(async {
        // A raw server that writes its 101 and a first frame in one go.
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            use duplex::duplex_proto::handshake::{
                accept_response, parse_request, validate_request,
            };
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let request = loop {
                let n = tcp.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some((request, _)) = parse_request(&buf, 16 * 1024).unwrap() {
                    break request;
                }
            };
            let offer = validate_request(&request).unwrap();
            let mut out = accept_response(&offer, None, None, &http::HeaderMap::new());
            out.extend_from_slice(b"\x81\x05early"); // unmasked text "early"
            tcp.write_all(&out).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let (mut ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("early"));
    })
    .await;
}

#[tokio::test]
async fn in_memory_stream_works_too() {
    within(async {
        let (client_io, server_io) = tokio::io::duplex(64);
        let server = tokio::spawn(async move {
            let mut ws = duplex::accept(server_io).await.unwrap();
            while let Some(Ok(message)) = ws.recv().await {
                ws.send(message).await.unwrap();
            }
        });
        let (mut ws, _) = duplex::client_handshake(client_io, "ws://test/", Default::default())
            .await
            .unwrap();
        // Larger than the pipe: exercises partial writes of the gathered, non-vectored path.
        for size in [0usize, 10, 125, 126, 1000, 70_000] {
            let payload = vec![b'x'; size];
            ws.send(Message::binary(payload.clone())).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap().as_bytes(), &payload[..]);
        }
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        server.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_under_backpressure_with_server_pings() {
    within(async {
        // The server pings often, so the client's reader queues pongs while its writer is
        // blocked on a full socket: both must make progress.
        let addr = echo_server(ServerOptions {
            websocket: WebSocketOptions {
                ping_interval: Some(Duration::from_millis(2)),
                idle_timeout: Some(Duration::from_secs(5)),
                ..WebSocketOptions::default()
            },
            ..ServerOptions::default()
        })
        .await;
        let (ws, _) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        let (mut tx, mut rx) = ws.split();
        const COUNT: usize = 300;
        const SIZE: usize = 64 * 1024;
        let writer = tokio::spawn(async move {
            for i in 0..COUNT {
                tx.feed(Message::binary(vec![i as u8; SIZE])).await.unwrap();
            }
            SinkExt::flush(&mut tx).await.unwrap();
            tx
        });
        let mut received = 0;
        while received < COUNT {
            let message = rx.next().await.unwrap().unwrap();
            assert_eq!(message.len(), SIZE);
            assert_eq!(message.as_bytes()[0], received as u8);
            received += 1;
        }
        let mut tx = writer.await.unwrap();
        tx.close(CloseCode::NORMAL, "").await.unwrap();
        while let Some(message) = rx.next().await {
            message.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn close_gives_up_after_the_close_timeout() {
    within(async {
        // A server that accepts, then never reads again: our Close is never answered.
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = duplex::accept(tcp).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(ws);
        });
        let options = ClientOptions {
            websocket: WebSocketOptions {
                close_timeout: Duration::from_millis(200),
                ..WebSocketOptions::default()
            },
            ..ClientOptions::default()
        };
        let (mut ws, _) = duplex::connect_with(&ws_url(addr, "/"), options)
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let result = ws.close(CloseCode::NORMAL, "").await;
        assert!(
            matches!(result, Err(Error::Timeout(Timeout::Close))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            ws.send(Message::text("x")).await,
            Err(Error::ConnectionClosed)
        ));
    })
    .await;
}

#[tokio::test]
async fn permessage_deflate_is_negotiated_by_default_and_messages_round_trip() {
    within(async {
        let addr = echo_server(ServerOptions::default()).await;
        let (mut ws, response) = duplex::connect(&ws_url(addr, "/")).await.unwrap();
        let extensions = response.extensions.expect("deflate accepted");
        assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
        let message = Message::text("squeeze ".repeat(1000));
        ws.send(message.clone()).await.unwrap();
        assert_eq!(ws.recv().await.transpose().unwrap(), Some(message));
    })
    .await;
}
