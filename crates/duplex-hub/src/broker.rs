//! The broker: where publications get their offsets, where history and presence live, and how
//! a node learns about publications on the channels its clients subscribed to.
//!
//! The node (the fan-out code in this crate) never stores publications itself: it asks the
//! broker. [`MemoryBroker`](crate::MemoryBroker) is the default, for one process; a Redis
//! broker (one stream + one pub/sub channel per hub channel, presence in a hash with expiring
//! entries) can implement the same trait for many processes without any change to the
//! fan-out code.
//!
//! # The contract
//!
//! - [`Broker::start`] is called once, before anything else, with the node's
//!   [`BrokerHandler`]. From then on the broker calls the handler for every publication, join
//!   and leave on channels the node [subscribed](Broker::subscribe) to (it may call it for
//!   others too; the node ignores them).
//! - Offsets per channel start at 1 and increase by one per publication, without gaps.
//! - For one channel, [`BrokerHandler::on_publication`] is called in offset order, one at a
//!   time, and only after the publication is visible to [`Broker::history`]. This is what
//!   makes recovery exact: the node registers a subscriber, then reads history; everything
//!   after the history's top offset reaches the subscriber live, everything up to it comes
//!   from history, and the node drops live copies of what history already had.
//! - [`Broker::subscribe`] resolves once publications of the channel will reach the handler.
//!   The node calls it when its first local subscriber arrives and
//!   [`unsubscribe`](Broker::unsubscribe) when the last one leaves; calls for the same channel
//!   may overlap (a subscriber arriving while the last one leaves), so a networked broker
//!   counts them.
//! - Handler methods are synchronous and never wait for a socket (one non-blocking write or
//!   queue push per subscriber), but a fan-out to many subscribers takes a while (~50-90 ms at
//!   10,000): a broker must not hold a lock that [`Broker::history`] or presence need while it
//!   calls them. A broker whose events arrive on a network task calls them from that task.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// A boxed future, so [`Broker`] stays object-safe (`Arc<dyn Broker>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One publication: its offset in the channel and its data, serialized JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Position in the channel, from 1.
    pub offset: u64,
    /// The publication's `data`, as serialized JSON.
    pub data: Bytes,
}

/// Where a channel's stream stands: its epoch and last offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// Changes whenever the stream's offsets restart (a restarted in-memory hub).
    pub epoch: Arc<str>,
    /// The last offset given out (0 before the first publication).
    pub offset: u64,
}

/// What [`Broker::history`] should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only publications with an offset above this one, oldest first; `None`: the newest
    /// `limit` ones, oldest first.
    pub since: Option<u64>,
    /// At most this many publications (0: none, only the position).
    pub limit: usize,
}

/// A channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The stream's position when the history was read.
    pub position: StreamPosition,
    /// The oldest offset still held (`position.offset + 1` when none is).
    pub earliest: u64,
    /// The publications asked for, in offset order.
    pub publications: Vec<Publication>,
}

/// A connection in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientInfo {
    /// The connection's id, unique per hub process.
    pub client: Arc<str>,
    /// The user (token `sub`, or the `user` query parameter without authentication).
    pub user: Arc<str>,
}

/// A broker failed (a networked one lost its connection...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError(pub String);

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broker: {}", self.0)
    }
}

impl std::error::Error for BrokerError {}

/// What a node is told about its channels. Implemented by the hub's fan-out.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A publication on `channel`: in offset order, after it reached history.
    fn on_publication(&self, channel: &str, publication: &Publication);
    /// `client` joined `channel`'s presence.
    fn on_join(&self, channel: &str, client: &ClientInfo);
    /// `client` left `channel`'s presence.
    fn on_leave(&self, channel: &str, client: &ClientInfo);
}

/// Offsets, history, presence, and publication delivery across the nodes of a hub (see the
/// [module docs](self) for the contract).
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Gives the broker the node's handler; called once, before any other method.
    fn start(&self, handler: Arc<dyn BrokerHandler>);

    /// Appends `data` (serialized JSON) to `channel`: assigns the next offset, stores it in
    /// history, delivers it to every node subscribed to `channel`. Returns its position.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>>;

    /// Reads `channel`'s history. A channel never published to has offset 0 and no history.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// The node wants `channel`'s publications and presence events from now on.
    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The node no longer has subscribers on `channel`.
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Adds `client` to `channel`'s presence and announces the join.
    fn join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Removes `client` from `channel`'s presence and announces the leave.
    fn leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Who is in `channel`.
    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ClientInfo>, BrokerError>>;
}
