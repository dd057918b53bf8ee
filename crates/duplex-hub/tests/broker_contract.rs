//! The broker contract suite (`broker_contract/mod.rs`) against the memory broker.

mod common;
#[path = "broker_contract/mod.rs"]
mod contract;

use std::sync::Arc;

use contract::{Backend, HISTORY, ManyNodes};
use duplex_hub::{BoxFuture, Broker, MemoryBroker};

/// The memory broker: every node is a backend of its own (one process, one node).
struct Memory;

impl Backend for Memory {
    fn node(&self) -> BoxFuture<'_, Arc<dyn Broker>> {
        Box::pin(async { Arc::new(MemoryBroker::new(HISTORY, None)) as Arc<dyn Broker> })
    }

    fn lose_streams(&self) -> BoxFuture<'_, ()> {
        // A restarted hub is a new MemoryBroker: the next node.
        Box::pin(async {})
    }

    fn many_nodes(&self) -> Option<&dyn ManyNodes> {
        None
    }
}

#[tokio::test]
async fn offsets_are_gap_free_from_one() {
    contract::offsets_are_gap_free_from_one(&Memory).await;
}

#[tokio::test]
async fn history_honours_since_limit_and_earliest() {
    contract::history_honours_since_limit_and_earliest(&Memory).await;
}

#[tokio::test]
async fn a_lost_stream_starts_a_new_epoch() {
    contract::a_lost_stream_starts_a_new_epoch(&Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publications_reach_the_handler_once_in_offset_order() {
    contract::publications_reach_the_handler_once_in_offset_order(&Memory).await;
}

#[tokio::test]
async fn presence_follows_joins_and_leaves() {
    contract::presence_follows_joins_and_leaves(&Memory).await;
}

#[tokio::test]
async fn a_dead_nodes_clients_leave_presence() {
    contract::a_dead_nodes_clients_leave_presence(&Memory).await;
}

/// The memory broker keeps exactly [`HISTORY`] publications: the suite's "at least" is exact
/// here.
#[tokio::test]
async fn the_memory_broker_keeps_exactly_its_history_size() {
    let (node, _) = contract::started(&Memory).await;
    let channel = contract::unique("exact");
    for _ in 0..3 * HISTORY {
        node.publish(&channel, bytes::Bytes::from_static(b"0"))
            .await
            .unwrap();
    }
    let read = node
        .history(
            &channel,
            duplex_hub::HistoryQuery {
                since: Some(0),
                limit: usize::MAX,
            },
        )
        .await
        .unwrap();
    assert_eq!(read.earliest, 2 * HISTORY as u64 + 1);
    assert_eq!(read.publications.len(), HISTORY);
}

/// How the hub holds up its side of the contract: it starts the broker with retries, answers
/// `broker_unavailable` / 503 while the broker cannot be reached, and `internal` / 500 when a
/// broker call fails otherwise.
mod hub {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use duplex_hub::{
        BoxFuture, Broker, BrokerError, BrokerHandler, ClientInfo, History, HistoryQuery, Hub,
        MemoryBroker, StreamPosition,
    };
    use serde_json::json;

    use crate::common::{Client, config, http, within};

    /// A memory broker whose backend can be "down" (start, publish and subscribe fail with
    /// `Unavailable`), and whose presence always fails (`Failed`).
    struct Flaky {
        inner: MemoryBroker,
        down: AtomicBool,
        starts: AtomicUsize,
        /// The node's handler, to signal resets and gaps as a networked broker would.
        handler: OnceLock<Arc<dyn BrokerHandler>>,
    }

    impl std::fmt::Debug for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Flaky")
                .field("down", &self.down)
                .finish_non_exhaustive()
        }
    }

    impl Flaky {
        fn new(down: bool) -> Arc<Flaky> {
            Arc::new(Flaky {
                inner: MemoryBroker::new(10, None),
                down: AtomicBool::new(down),
                starts: AtomicUsize::new(0),
                handler: OnceLock::new(),
            })
        }
    }

    impl Flaky {
        fn check(&self) -> Result<(), BrokerError> {
            if self.down.load(Ordering::SeqCst) {
                Err(BrokerError::Unavailable("the backend is down".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Broker for Flaky {
        fn start(&self, handler: Arc<dyn BrokerHandler>) -> BoxFuture<'_, Result<(), BrokerError>> {
            self.starts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                self.check()?;
                let _ = self.handler.set(handler.clone());
                self.inner.start(handler).await
            })
        }

        fn is_available(&self) -> bool {
            !self.down.load(Ordering::SeqCst)
        }

        fn publish<'a>(
            &'a self,
            channel: &'a str,
            data: Bytes,
        ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
            Box::pin(async move {
                self.check()?;
                self.inner.publish(channel, data).await
            })
        }

        fn history<'a>(
            &'a self,
            channel: &'a str,
            query: HistoryQuery,
        ) -> BoxFuture<'a, Result<History, BrokerError>> {
            self.inner.history(channel, query)
        }

        fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async move {
                self.check()?;
                self.inner.subscribe(channel).await
            })
        }

        fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.inner.unsubscribe(channel)
        }

        fn join<'a>(
            &'a self,
            channel: &'a str,
            client: &'a ClientInfo,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.inner.join(channel, client)
        }

        fn leave<'a>(
            &'a self,
            channel: &'a str,
            client: &'a ClientInfo,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.inner.leave(channel, client)
        }

        fn presence<'a>(
            &'a self,
            _channel: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ClientInfo>, BrokerError>> {
            Box::pin(async { Err(BrokerError::Failed("presence is broken".into())) })
        }
    }

    fn code(reply: &serde_json::Value) -> &str {
        reply["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"))
    }

    #[tokio::test]
    async fn the_hub_retries_the_start_and_says_when_the_broker_is_unavailable() {
        within(async {
            let flaky = Flaky::new(true);
            let hub = Hub::bind_with_broker(config(), flaky.clone())
                .await
                .unwrap();
            let addr = hub.local_addr();
            let healthz = || http(addr, "GET", "/healthz", &[], None);
            let publish_http = |data: &'static str| {
                let body = format!(r#"{{"channel":"c","data":{data}}}"#);
                async move { http(addr, "POST", "/api/publish", &[], Some(body.as_bytes())).await }
            };

            // Not started: 503, and every command needing the broker is refused as such.
            assert_eq!(healthz().await.status, 503);
            let mut client = Client::connect(addr, "").await;
            let reply = client
                .call(json!({"op": "publish", "channel": "c", "data": 1}))
                .await;
            assert_eq!(code(&reply), "broker_unavailable", "{reply}");
            let reply = client
                .call(json!({"op": "subscribe", "channel": "c"}))
                .await;
            assert_eq!(code(&reply), "broker_unavailable", "{reply}");
            let response = publish_http("1").await;
            assert_eq!(response.status, 503, "{response:?}");
            let response = http(addr, "GET", "/api/history?channel=c", &[], None).await;
            assert_eq!(response.status, 503, "{response:?}");

            // The backend comes back: a later attempt succeeds.
            flaky.down.store(false, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while healthz().await.status != 200 {
                assert!(Instant::now() < deadline, "the hub did not retry the start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(flaky.starts.load(Ordering::SeqCst) >= 2);
            client.subscribe("c").await;
            client.publish("c", json!(2)).await;
            assert_eq!(client.publication().await["data"], 2);
            assert_eq!(publish_http("3").await.status, 200);
            assert_eq!(client.publication().await["data"], 3);

            // Any other failure is the broker's fault: internal / 500.
            let reply = client.call(json!({"op": "presence", "channel": "c"})).await;
            assert_eq!(code(&reply), "internal", "{reply}");
            let response = http(addr, "GET", "/api/presence?channel=c", &[], None).await;
            assert_eq!(response.status, 500, "{response:?}");

            // The backend goes away while running: 503 again, the connection stays.
            flaky.down.store(true, Ordering::SeqCst);
            assert_eq!(healthz().await.status, 503);
            let reply = client
                .call(json!({"op": "publish", "channel": "c", "data": 4}))
                .await;
            assert_eq!(code(&reply), "broker_unavailable", "{reply}");
            assert_eq!(publish_http("4").await.status, 503);
            let pong = client.call(json!({"op": "ping"})).await;
            assert_eq!(pong["ok"], true, "{pong}");
            hub.shutdown();
            hub.wait().await;
        })
        .await;
    }

    #[tokio::test]
    async fn resets_and_gaps_reach_subscribers_in_order_with_publications() {
        within(async {
            let flaky = Flaky::new(false);
            let hub = Hub::bind_with_broker(config(), flaky.clone())
                .await
                .unwrap();
            let mut client = Client::connect(hub.local_addr(), "").await;
            let reply = client.subscribe("c").await;
            let epoch = reply["epoch"].as_str().unwrap().to_owned();
            client.publish("c", json!(1)).await;
            assert_eq!(client.publication().await["offset"], 1);
            let handler = flaky.handler.get().expect("started");
            handler.on_gap("c", 2, 4);
            // The next publication the memory broker makes is 2: past the gap as far as the
            // filter goes (it has none any more), so it is delivered after the gap push.
            client.publish("c", json!(2)).await;
            assert_eq!(
                client.push().await,
                json!({"op": "gap", "channel": "c", "epoch": epoch, "first": 2, "last": 4})
            );
            assert_eq!(client.publication().await["offset"], 2);
            let reset = StreamPosition {
                epoch: "e2".into(),
                offset: 0,
            };
            handler.on_reset("c", &reset);
            assert_eq!(
                client.push().await,
                json!({"op": "reset", "channel": "c", "epoch": "e2", "offset": 0})
            );
            // A channel nobody here subscribed to: nothing.
            handler.on_gap("other", 1, 2);
            client.assert_quiet().await;
            hub.shutdown();
            hub.wait().await;
        })
        .await;
    }
}
