//! The broker contract suite (`broker_contract/mod.rs`) against the memory broker.

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
