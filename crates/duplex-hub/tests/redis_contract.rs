//! The broker contract suite (`broker_contract/mod.rs`) against RedisBroker: on one
//! redis-server, and on two (channels sharded over both). Every test starts its own servers.

#[path = "broker_contract/mod.rs"]
mod contract;
mod support;

use std::sync::Arc;
use std::time::Duration;

use contract::{Backend, HISTORY, ManyNodes};
use duplex_hub::{BoxFuture, Broker, HubConfig, Metrics, RedisBroker};
use support::redis::RedisServer;

/// Short presence times, so that a dead node's clients expire within the test.
const PRESENCE_TTL: Duration = Duration::from_millis(1000);
const PRESENCE_REFRESH: Duration = Duration::from_millis(200);

/// Nodes on the same redis-servers (one per shard).
struct Redis {
    servers: Vec<RedisServer>,
}

impl Redis {
    fn shards(count: usize) -> Redis {
        Redis {
            servers: (0..count).map(|_| RedisServer::start()).collect(),
        }
    }
}

impl Backend for Redis {
    fn node(&self) -> BoxFuture<'_, Arc<dyn Broker>> {
        Box::pin(async {
            let config = HubConfig {
                history_size: HISTORY,
                history_ttl: None,
                presence_ttl: PRESENCE_TTL,
                presence_refresh: PRESENCE_REFRESH,
                redis_timeout: Duration::from_secs(2),
                ..HubConfig::default()
            };
            let urls: Vec<String> = self.servers.iter().map(RedisServer::url).collect();
            let broker = RedisBroker::new(&urls, &config, Arc::new(Metrics::default()))
                .expect("valid shard URLs");
            Arc::new(broker) as Arc<dyn Broker>
        })
    }

    fn lose_streams(&self) -> BoxFuture<'_, ()> {
        // Redis restarted without persistence, as far as the keys go.
        Box::pin(async {
            for server in &self.servers {
                assert_eq!(server.command(&["FLUSHALL"]), "OK");
            }
        })
    }

    fn many_nodes(&self) -> Option<&dyn ManyNodes> {
        Some(self)
    }
}

impl ManyNodes for Redis {
    fn kill(&self, node: Arc<dyn Broker>) -> BoxFuture<'_, ()> {
        // The last reference: its tasks (presence refresh, pub/sub readers) are aborted and
        // its connections dropped, without a leave, as a killed process would.
        assert_eq!(
            Arc::strong_count(&node),
            1,
            "the test holds the only reference"
        );
        drop(node);
        Box::pin(async {})
    }

    fn presence_expiry(&self) -> Duration {
        // The TTL, plus one refresh period of the survivor (which drops the expired).
        PRESENCE_TTL + PRESENCE_REFRESH
    }
}

macro_rules! contract_tests {
    ($module:ident, $shards:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn offsets_are_gap_free_from_one() {
                contract::offsets_are_gap_free_from_one(&Redis::shards($shards)).await;
            }

            #[tokio::test]
            async fn history_honours_since_limit_and_earliest() {
                contract::history_honours_since_limit_and_earliest(&Redis::shards($shards)).await;
            }

            #[tokio::test]
            async fn a_lost_stream_starts_a_new_epoch() {
                contract::a_lost_stream_starts_a_new_epoch(&Redis::shards($shards)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn publications_reach_the_handler_once_in_offset_order() {
                let backend = Redis::shards($shards);
                contract::publications_reach_the_handler_once_in_offset_order(&backend).await;
            }

            #[tokio::test]
            async fn presence_follows_joins_and_leaves() {
                contract::presence_follows_joins_and_leaves(&Redis::shards($shards)).await;
            }

            #[tokio::test]
            async fn a_dead_nodes_clients_leave_presence() {
                contract::a_dead_nodes_clients_leave_presence(&Redis::shards($shards)).await;
            }
        }
    };
}

contract_tests!(one_shard, 1);
contract_tests!(two_shards, 2);

/// Redis keeps exactly the configured window in history, although `MAXLEN ~` trims lazily
/// (the stream holds more): the history script clips to the last `HISTORY` offsets.
#[tokio::test]
async fn redis_history_is_exactly_its_history_size() {
    let backend = Redis::shards(1);
    let (node, _) = contract::started(&backend).await;
    let channel = contract::unique("exact");
    for _ in 0..3 * HISTORY {
        node.publish(&channel, bytes::Bytes::from_static(b"0"))
            .await
            .unwrap();
    }
    let stream = format!("duplex:{{{channel}}}:s");
    let held: usize = backend.servers[0]
        .command(&["XLEN", &stream])
        .parse()
        .unwrap();
    assert!(held > HISTORY, "MAXLEN ~ keeps whole nodes: {held}");
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
