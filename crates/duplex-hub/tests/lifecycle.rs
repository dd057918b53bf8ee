//! Slow consumers and graceful shutdown.

mod common;

use std::time::Duration;

use common::{Client, config, hub, within};
use duplex::MaybeTlsStream;
use duplex_hub::HubConfig;
use serde_json::json;
use tokio::net::TcpSocket;

/// A client whose socket receive buffer is small, so that not reading backs up into the hub
/// quickly.
async fn stalled_client(addr: std::net::SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let options = duplex::ClientOptions {
        deflate: None,
        ..Default::default()
    };
    let url = format!("ws://{addr}/ws?user=slow");
    let (ws, _) = duplex::client_handshake(MaybeTlsStream::Plain(tcp), &url, options)
        .await
        .unwrap();
    Client::from_ws(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_with_1013_and_others_get_everything() {
    within(async {
        let hub = hub(HubConfig {
            max_message_size: 16 * 1024,
            queue_bytes: 256 * 1024,
            history_size: 100_000,
            join_leave: false,
            // Time for the stalled client to read its backlog up to the Close frame.
            close_timeout: Duration::from_secs(20),
            ..config()
        })
        .await;
        let addr = hub.local_addr();

        let mut slow = stalled_client(addr).await;
        let epoch = slow.subscribe("flood").await["epoch"].clone();
        // Uncompressed, so the batched (feed, then one flush) path carries the flood.
        let plain = duplex::ClientOptions {
            deflate: None,
            ..Default::default()
        };
        let mut fast = Client::connect_with(addr, "", plain).await.unwrap();
        fast.subscribe("flood").await;

        // The fast subscriber reads everything, concurrently.
        let reader = tokio::spawn(async move {
            let mut expected = 1;
            loop {
                let push = fast.publication().await;
                assert_eq!(push["offset"], expected, "in order, no gap, no duplicate");
                if push["data"]["last"] == true {
                    return expected;
                }
                expected += 1;
            }
        });

        // Publish 8 KiB publications until the slow one is cut off, then a few more.
        let mut publisher = Client::connect(addr, "").await;
        let payload = "x".repeat(8 * 1024);
        let mut published = 0u64;
        let mut after_cut = 0;
        while after_cut < 10 {
            assert!(published < 20_000, "the slow consumer was never disconnected");
            for _ in 0..16 {
                publisher
                    .publish("flood", json!({"pad": payload, "last": false}))
                    .await;
                published += 1;
            }
            if hub.metrics().slow_consumer_disconnects() > 0 {
                after_cut += 1;
            }
        }
        publisher
            .publish("flood", json!({"pad": "", "last": true}))
            .await;
        published += 1;
        assert_eq!(reader.await.unwrap(), published);
        assert_eq!(hub.metrics().slow_consumer_disconnects(), 1);
        assert!(hub.metrics().dropped_messages() > 0);

        // The slow client finally reads: what was already on its way, then the close.
        let mut last_seen = 0;
        let (code, reason) = loop {
            match tokio::time::timeout(Duration::from_secs(10), slow.ws.recv_event())
                .await
                .expect("the close within 10 s")
            {
                Some(Ok(duplex::Event::Message(message))) => {
                    let push: serde_json::Value = serde_json::from_slice(message.as_bytes()).unwrap();
                    let offset = push["offset"].as_u64().unwrap();
                    assert_eq!(offset, last_seen + 1);
                    last_seen = offset;
                }
                Some(Ok(duplex::Event::Close(Some(frame)))) => {
                    break (frame.code.as_u16(), frame.reason);
                }
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(code, 1013);
        assert!(reason.contains("slow consumer"), "{reason}");
        assert!(last_seen < published);

        // Reconnecting with since recovers exactly what it missed.
        let mut back = Client::connect(addr, "").await;
        let reply = back
            .call(json!({"op": "subscribe", "channel": "flood", "since": {"epoch": epoch, "offset": last_seen}}))
            .await;
        assert_eq!(reply["recovered"], true, "{}", reply["reason"]);
        let recovered: Vec<u64> = reply["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(recovered, (last_seen + 1..=published).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_closes_every_client_with_1001() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        let mut a = Client::connect(addr, "").await;
        let mut b = Client::connect(addr, "").await;
        a.subscribe("x").await;
        // An idle keep-alive HTTP connection must not hold the shutdown either.
        let _idle_http = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        hub.shutdown();
        let (code, reason) = a.close_frame().await;
        assert_eq!(code, 1001);
        assert!(reason.contains("shutting down"), "{reason}");
        assert_eq!(b.close_frame().await.0, 1001);
        // Both answered the close; the hub is done promptly.
        tokio::time::timeout(Duration::from_secs(5), hub.wait())
            .await
            .expect("the hub stops once every connection closed");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    })
    .await;
}

/// Publishers write straight to a subscriber's socket only while nothing is queued ahead: once
/// the socket would block (or takes part of a frame) the rest queues up, and the subscriber gets
/// every publication once, in order, when it reads again, including those published while it
/// catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_within_the_bound_gets_everything_once_in_order() {
    within(async {
        let hub = hub(HubConfig {
            max_message_size: 16 * 1024,
            queue_bytes: 64 * 1024 * 1024,
            join_leave: false,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut slow = stalled_client(addr).await;
        slow.subscribe("backlog").await;
        let plain = duplex::ClientOptions {
            deflate: None,
            ..Default::default()
        };
        let mut publisher = Client::connect_with(addr, "", plain).await.unwrap();
        // Sizes that do not divide socket buffers evenly, so writes end inside frames.
        let data = |n: u64| json!({"n": n, "pad": "y".repeat((n as usize * 997) % 9000)});
        const STALLED: u64 = 800;
        const TOTAL: u64 = 1_600;
        for n in 1..=STALLED {
            publisher.publish("backlog", data(n)).await;
        }
        let reader = tokio::spawn(async move {
            for expected in 1..=TOTAL {
                let push = slow.publication().await;
                assert_eq!(push["offset"], expected, "in order, no gap, no duplicate");
                assert_eq!(push["data"], data(expected));
            }
            slow.assert_quiet().await;
        });
        // More while it catches up: they queue behind the backlog, then go direct again.
        for n in STALLED + 1..=TOTAL {
            publisher.publish("backlog", data(n)).await;
        }
        reader.await.unwrap();
        assert_eq!(hub.metrics().slow_consumer_disconnects(), 0);
        assert_eq!(hub.metrics().dropped_messages(), 0);
    })
    .await;
}
