//! The hub's WebSocket protocol and HTTP API against a hub started in-process on port 0.

mod common;

use common::{Client, config, http, hub, publish_http, within};
use duplex::Message;
use duplex_hub::HubConfig;
use serde_json::{Value, json};

#[tokio::test]
async fn subscribe_then_publish_over_websocket_and_http() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        let mut alice = Client::connect(addr, "").await;
        let mut bob = Client::connect(addr, "").await;

        let reply = alice.subscribe("chat").await;
        assert_eq!(reply["offset"], 0);
        let epoch = reply["epoch"].as_str().unwrap().to_owned();
        assert!(!epoch.is_empty());
        assert!(reply.get("recovered").is_none(), "no since, no recovery: {reply}");

        let reply = bob.publish("chat", json!({"text": "hi", "n": [1, 2]})).await;
        assert_eq!(reply["offset"], 1);
        let push = alice.publication().await;
        assert_eq!(
            push,
            json!({"op": "pub", "channel": "chat", "offset": 1, "data": {"text": "hi", "n": [1, 2]}})
        );

        let reply = publish_http(addr, "chat", json!("from http")).await;
        assert_eq!(reply, json!({"offset": 2, "epoch": epoch}));
        let push = alice.publication().await;
        assert_eq!(push["offset"], 2);
        assert_eq!(push["data"], "from http");

        // Other channels do not leak in; the publisher is not subscribed.
        bob.publish("news", json!(1)).await;
        alice.assert_quiet().await;
        bob.assert_quiet().await;

        // Unsubscribed: nothing more.
        let reply = alice
            .call(json!({"op": "unsubscribe", "channel": "chat"}))
            .await;
        assert_eq!(reply["ok"], true);
        bob.publish("chat", json!(3)).await;
        alice.assert_quiet().await;
        let reply = alice
            .call(json!({"op": "unsubscribe", "channel": "chat"}))
            .await;
        assert_eq!(reply["error"]["code"], "not_subscribed");
        hub.shutdown();
        hub.wait().await;
    })
    .await;
}

#[tokio::test]
async fn history_over_http() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        for n in 1..=5 {
            publish_http(addr, "prices:eur", json!({"n": n})).await;
        }
        let response = http(
            addr,
            "GET",
            "/api/history?channel=prices%3Aeur&since=2",
            &[],
            None,
        )
        .await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let history = response.json();
        let offsets: Vec<u64> = history["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!(history["publications"][0]["data"], json!({"n": 3}));
        assert_eq!(history["offset"], 5);
        assert!(history["epoch"].is_string());

        let limited = http(
            addr,
            "GET",
            "/api/history?channel=prices:eur&since=2&limit=1",
            &[],
            None,
        )
        .await
        .json();
        assert_eq!(
            limited["publications"],
            json!([{"offset": 3, "data": {"n": 3}}])
        );
        let newest = http(
            addr,
            "GET",
            "/api/history?channel=prices:eur&limit=2",
            &[],
            None,
        )
        .await
        .json();
        assert_eq!(newest["publications"][0]["offset"], 4);
        let empty = http(addr, "GET", "/api/history?channel=never", &[], None)
            .await
            .json();
        assert_eq!(empty["publications"], json!([]));
        assert_eq!(empty["epoch"], history["epoch"]);

        let missing = http(addr, "GET", "/api/history", &[], None).await;
        assert_eq!(missing.status, 400);
        assert!(
            missing.json()["error"]
                .as_str()
                .unwrap()
                .contains("channel")
        );
        let bad = http(addr, "GET", "/api/history?channel=a&since=-1", &[], None).await;
        assert_eq!(bad.status, 400);
    })
    .await;
}

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn reconnect_with_since_recovers_exactly_what_was_missed() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        let mut publisher = Client::connect(addr, "").await;
        let mut client = Client::connect(addr, "").await;
        let epoch = client.subscribe("game").await["epoch"].clone();
        for n in 1..=3 {
            publisher.publish("game", json!(n)).await;
        }
        for n in 1..=3 {
            assert_eq!(client.publication().await["offset"], n);
        }
        drop(client);

        for n in 4..=6 {
            publisher.publish("game", json!(n)).await;
        }
        let mut client = Client::connect(addr, "").await;
        let reply = client
            .call(json!({"op": "subscribe", "channel": "game", "since": {"epoch": epoch, "offset": 3}}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply["offset"], 6);
        assert_eq!(
            reply["publications"],
            json!([{"offset": 4, "data": 4}, {"offset": 5, "data": 5}, {"offset": 6, "data": 6}])
        );
        // New ones follow, without a duplicate or a gap.
        publisher.publish("game", json!(7)).await;
        assert_eq!(client.publication().await["offset"], 7);
        client.assert_quiet().await;

        // Up to date: recovered, nothing to replay.
        let mut again = Client::connect(addr, "").await;
        let reply = again
            .call(json!({"op": "subscribe", "channel": "game", "since": {"epoch": epoch, "offset": 7}}))
            .await;
        assert_eq!(reply["recovered"], true);
        assert_eq!(reply["publications"], json!([]));
    })
    .await;
}

/// Publications race the subscribe: whatever the interleaving, the reply's publications
/// followed by the live ones are exactly since+1, since+2, ... with no duplicate and no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_racing_live_publications_has_no_gap_or_duplicate() {
    within(async {
        let hub = hub(HubConfig {
            history_size: 10_000,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut first = Client::connect(addr, "").await;
        let epoch = first.subscribe("race").await["epoch"].clone();
        drop(first);
        const TOTAL: u64 = 2_000;
        let flood = tokio::spawn(async move {
            let mut publisher = Client::connect(addr, "").await;
            for n in 1..=TOTAL {
                let command = json!({"id": n, "op": "publish", "channel": "race", "data": n});
                publisher.send_text(&command.to_string()).await;
            }
            for n in 1..=TOTAL {
                assert_eq!(publisher.reply(json!(n)).await["ok"], true);
            }
        });
        let mut seen = Vec::new();
        for round in 0..5u64 {
            tokio::time::sleep(std::time::Duration::from_millis(3 * round)).await;
            let since = seen.last().copied().unwrap_or(0);
            let mut client = Client::connect(addr, "").await;
            let reply = client
                .call(json!({"op": "subscribe", "channel": "race", "since": {"epoch": epoch, "offset": since}}))
                .await;
            assert_eq!(reply["recovered"], true, "{reply}");
            let top = reply["offset"].as_u64().unwrap();
            seen.extend(offsets(&reply["publications"]));
            // Read live ones for a while (a few, or up to the end).
            let live_until = (top + 50).min(TOTAL);
            while seen.last().copied().unwrap_or(0) < live_until {
                seen.push(client.publication().await["offset"].as_u64().unwrap());
            }
        }
        flood.await.unwrap();
        let expected: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(seen, expected);
    })
    .await;
}

/// One connection unsubscribes and subscribes again with `since` while HTTP publications
/// flood the channel (written straight to its socket between its commands): every round's
/// reply, the pushes before the unsubscribe reply and the live pushes after the subscribe reply
/// add up to 1, 2, 3, ... with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_on_one_connection_while_publications_race_has_no_gap_or_duplicate() {
    within(async {
        let hub = hub(HubConfig {
            history_size: 10_000,
            join_leave: false,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut client = Client::connect(addr, "").await;
        let reply = client.subscribe("resub");
        let epoch = reply.await["epoch"].clone();
        const TOTAL: u64 = 1_500;
        let flood = tokio::spawn(async move {
            for n in 1..=TOTAL {
                publish_http(addr, "resub", json!(n)).await;
            }
        });
        let mut seen: Vec<u64> = Vec::new();
        for round in 0.. {
            // Live pushes for a while.
            let until = (seen.last().copied().unwrap_or(0) + 20 + round % 7).min(TOTAL);
            while seen.last().copied().unwrap_or(0) < until {
                seen.push(client.publication().await["offset"].as_u64().unwrap());
            }
            if until == TOTAL {
                break;
            }
            let reply = client
                .call(json!({"op": "unsubscribe", "channel": "resub"}))
                .await;
            assert_eq!(reply["ok"], true, "{reply}");
            seen.extend(
                client
                    .take_pushes()
                    .iter()
                    .map(|p| p["offset"].as_u64().unwrap()),
            );
            let since = seen.last().copied().unwrap_or(0);
            let reply = client
                .call(json!({"op": "subscribe", "channel": "resub", "since": {"epoch": epoch, "offset": since}}))
                .await;
            assert_eq!(reply["recovered"], true, "{reply}");
            assert!(
                client.take_pushes().is_empty(),
                "nothing live before the subscribe reply"
            );
            seen.extend(offsets(&reply["publications"]));
        }
        flood.await.unwrap();
        let expected: Vec<u64> = (1..=TOTAL).collect();
        assert_eq!(seen, expected);
        client.assert_quiet().await;
    })
    .await;
}

#[tokio::test]
async fn recovery_fails_loudly_when_history_is_too_short_or_epoch_differs() {
    within(async {
        let hub = hub(HubConfig {
            history_size: 3,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut client = Client::connect(addr, "").await;
        for n in 1..=10 {
            client.publish("ticker", json!(n)).await;
        }
        let epoch = client.subscribe("ticker").await["epoch"].clone();
        client
            .call(json!({"op": "unsubscribe", "channel": "ticker"}))
            .await;

        let reply = client
            .call(json!({"op": "subscribe", "channel": "ticker", "since": {"epoch": epoch, "offset": 2}}))
            .await;
        assert_eq!(reply["ok"], true);
        assert_eq!(reply["recovered"], false, "{reply}");
        assert_eq!(reply["offset"], 10);
        assert!(reply["reason"].as_str().unwrap().contains("history"), "{reply}");
        assert_eq!(reply["publications"], json!([]));
        client
            .call(json!({"op": "unsubscribe", "channel": "ticker"}))
            .await;

        // The last 3 are still there: offset 7 is recoverable.
        let reply = client
            .call(json!({"op": "subscribe", "channel": "ticker", "since": {"epoch": epoch, "offset": 7}}))
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(offsets(&reply["publications"]), [8, 9, 10]);
        client
            .call(json!({"op": "unsubscribe", "channel": "ticker"}))
            .await;

        let reply = client
            .call(json!({"op": "subscribe", "channel": "ticker", "since": {"epoch": "another-process", "offset": 9}}))
            .await;
        assert_eq!(reply["recovered"], false);
        assert!(reply["reason"].as_str().unwrap().contains("epoch"), "{reply}");
    })
    .await;
}

#[tokio::test]
async fn presence_joins_leaves_and_queries() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        let mut alice = Client::connect(addr, "?user=alice").await;
        alice.subscribe("room").await;
        // Without a batching window (the tests' config) each event is a push of its own.
        let join = alice.push().await;
        assert_eq!(join["op"], "presence");
        assert_eq!(join["leave"], json!([]));
        assert_eq!(join["join"].as_array().unwrap().len(), 1, "{join}");
        assert_eq!(join["join"][0]["user"], "alice");
        let alice_id = join["join"][0]["client"].clone();

        let mut bob = Client::connect(addr, "?user=bob").await;
        bob.subscribe("room").await;
        let join = alice.push().await;
        assert_eq!(join["op"], "presence");
        assert_eq!(join["channel"], "room");
        assert_eq!(join["join"][0]["user"], "bob");
        let bob_id = join["join"][0]["client"].clone();
        assert_ne!(alice_id, bob_id);

        let reply = alice
            .call(json!({"op": "presence", "channel": "room"}))
            .await;
        let mut users: Vec<&str> = reply["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["user"].as_str().unwrap())
            .collect();
        users.sort();
        assert_eq!(users, ["alice", "bob"]);

        let over_http = http(addr, "GET", "/api/presence?channel=room", &[], None)
            .await
            .json();
        assert_eq!(over_http["clients"].as_array().unwrap().len(), 2);
        let channels = http(addr, "GET", "/api/channels", &[], None).await.json();
        assert_eq!(
            channels,
            json!({"channels": [{"channel": "room", "subscribers": 2}]})
        );

        drop(bob);
        let leave = alice.push().await;
        assert_eq!(
            leave,
            json!({"op": "presence", "channel": "room", "join": [], "leave": [{"client": bob_id, "user": "bob"}]})
        );
        let reply = alice
            .call(json!({"op": "presence", "channel": "room"}))
            .await;
        assert_eq!(
            reply["clients"],
            json!([{"client": alice_id, "user": "alice"}])
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_commands_get_error_replies_and_the_connection_stays_usable() {
    within(async {
        let hub = hub(config()).await;
        let mut client = Client::connect(hub.local_addr(), "").await;

        client.send_text("this is not json").await;
        let reply = client.next().await;
        assert_eq!(reply["ok"], false);
        assert_eq!(reply["id"], Value::Null);
        assert_eq!(reply["error"]["code"], "bad_request");

        client.send_text("[1,2]").await;
        assert_eq!(client.next().await["error"]["code"], "bad_request");

        let cases = [
            (json!({"id": 1, "op": "teleport"}), "unknown_op"),
            (json!({"id": 2}), "bad_request"),
            (json!({"id": 3, "op": 7}), "bad_request"),
            (json!({"id": 4, "op": "subscribe"}), "bad_request"),
            (
                json!({"id": 5, "op": "subscribe", "channel": 5}),
                "bad_request",
            ),
            (
                json!({"id": 6, "op": "subscribe", "channel": ""}),
                "bad_request",
            ),
            (
                json!({"id": 7, "op": "publish", "channel": "c"}),
                "bad_request",
            ),
            (
                json!({"id": 8, "op": "subscribe", "channel": "c", "since": {"offset": "x"}}),
                "bad_request",
            ),
            (json!({"id": "str-id", "op": "presence"}), "bad_request"),
        ];
        for (command, code) in cases {
            client.send_text(&command.to_string()).await;
            let reply = client.next().await;
            assert_eq!(reply["id"], command["id"], "{reply}");
            assert_eq!(reply["ok"], false, "{reply}");
            assert_eq!(reply["error"]["code"], code, "{command} -> {reply}");
            assert!(reply["error"]["message"].as_str().unwrap().len() > 3);
        }

        client
            .ws
            .send(Message::binary(vec![1, 2, 3]))
            .await
            .unwrap();
        assert_eq!(client.next().await["error"]["code"], "bad_request");

        let reply = client.call(json!({"op": "ping"})).await;
        assert_eq!(reply["ok"], true);
        client.subscribe("still-works").await;
        let reply = client
            .call(json!({"op": "subscribe", "channel": "still-works"}))
            .await;
        assert_eq!(reply["error"]["code"], "already_subscribed");
    })
    .await;
}

#[tokio::test]
async fn subscription_and_rate_limits_are_clear_errors() {
    within(async {
        let hub = hub(HubConfig {
            max_subscriptions: 2,
            publish_rate: 1.0,
            publish_burst: 2,
            ..config()
        })
        .await;
        let mut client = Client::connect(hub.local_addr(), "").await;
        client.subscribe("a").await;
        client.subscribe("b").await;
        let reply = client
            .call(json!({"op": "subscribe", "channel": "c"}))
            .await;
        assert_eq!(reply["ok"], false);
        assert_eq!(reply["error"]["code"], "limit_exceeded");
        assert!(reply["error"]["message"].as_str().unwrap().contains('2'));
        // Leaving one makes room.
        client
            .call(json!({"op": "unsubscribe", "channel": "a"}))
            .await;
        client.subscribe("c").await;

        client.publish("x", json!(1)).await;
        client.publish("x", json!(2)).await;
        let reply = client
            .call(json!({"op": "publish", "channel": "x", "data": 3}))
            .await;
        assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
        let reply = client.call(json!({"op": "ping"})).await;
        assert_eq!(reply["ok"], true);
    })
    .await;
}

#[tokio::test]
async fn compressed_and_plain_subscribers_get_the_same_publications() {
    within(async {
        let hub = hub(HubConfig {
            compression_threshold: 0,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut compressed = Client::connect(addr, "").await;
        let plain_options = duplex::ClientOptions {
            deflate: None,
            ..Default::default()
        };
        let mut plain = Client::connect_with(addr, "", plain_options).await.unwrap();
        // A client asking for a smaller window gets a per-connection compressor.
        let small_window = duplex::ClientOptions {
            deflate: Some(duplex_proto::extensions::deflate::DeflateConfig {
                server_max_window_bits: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut own = Client::connect_with(addr, "", small_window).await.unwrap();
        for client in [&mut compressed, &mut plain, &mut own] {
            client.subscribe("big").await;
        }
        let text = "compressible ".repeat(200);
        for n in 1..=3 {
            publish_http(addr, "big", json!({"n": n, "text": text})).await;
        }
        for client in [&mut compressed, &mut plain, &mut own] {
            for n in 1..=3 {
                let push = client.publication().await;
                assert_eq!(push["offset"], n);
                assert_eq!(push["data"]["text"], text.as_str());
            }
        }
    })
    .await;
}

/// Subscribers get `data` exactly as published: key order, number spelling and integers too big
/// for a float survive, over HTTP and WebSocket alike.
#[tokio::test]
async fn published_data_arrives_byte_for_byte() {
    within(async {
        let hub = hub(config()).await;
        let addr = hub.local_addr();
        let data =
            r#"{"symbol":"DPLX","price":101.50,"id":12345678901234567890123,"e":1e2,"a":[1, 2]}"#;
        let mut subscriber = Client::connect(addr, "").await;
        subscriber.subscribe("exact").await;
        let body = format!(r#"{{"channel":"exact","data":{data}}}"#);
        let response = http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await;
        assert_eq!(response.status, 200);
        let mut publisher = Client::connect(addr, "").await;
        publisher
            .send_text(&format!(
                r#"{{"id":7,"op":"publish","channel":"exact","data":{data}}}"#
            ))
            .await;
        assert_eq!(publisher.reply(json!(7)).await["ok"], json!(true));

        let mut publications = 0;
        while publications < 2 {
            let raw = subscriber.next_raw().await;
            if raw.contains(r#""op":"pub""#) {
                assert!(raw.contains(&format!(r#""data":{data}"#)), "{raw}");
                publications += 1;
            }
        }
        let history = http(addr, "GET", "/api/history?channel=exact", &[], None).await;
        let text = String::from_utf8(history.body.clone()).unwrap();
        assert_eq!(text.matches(data).count(), 2, "{text}");
    })
    .await;
}
