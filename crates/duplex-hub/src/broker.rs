//! The broker: where publications get their offsets, where history and presence live, and how
//! a node learns about publications on the channels its clients subscribed to.
//!
//! The node (the fan-out code in this crate) never stores publications itself: it asks the
//! broker. [`MemoryBroker`](crate::MemoryBroker) is the default, for one process; a networked
//! broker (Redis: one stream + one pub/sub channel per hub channel, presence in a hash with
//! expiring entries) implements the same trait for many processes without any change to the
//! fan-out code. `tests/broker_contract.rs` checks the contract below against every broker.
//!
//! # The contract
//!
//! - [`Broker::start`] is called before anything else, with the node's [`BrokerHandler`]. It
//!   may fail (a backend that cannot be reached): the hub logs it and calls it again later,
//!   with the same handler and backoff, until it succeeds, and never after that; meanwhile
//!   commands that need the broker are refused with `broker_unavailable` and `/healthz`
//!   answers 503. From its
//!   success on the broker calls the handler for every publication, join and leave on
//!   channels the node [subscribed](Broker::subscribe) to (it may call it for others too; the
//!   node ignores them).
//! - Offsets per channel start at 1 and increase by one per publication, without gaps, within
//!   an epoch ([`StreamPosition::epoch`]). A stream that lost its state (a restarted backend)
//!   starts a new epoch.
//! - For one channel, [`BrokerHandler::on_publication`] is called in offset order, one at a
//!   time, once per publication, and only after the publication is visible to
//!   [`Broker::history`]. This is what makes recovery exact: the node registers a subscriber,
//!   then reads history; everything after the history's top offset reaches the subscriber
//!   live, everything up to it comes from history, and the node drops live copies of what
//!   history already had.
//! - When the broker cannot keep that promise it says so, in the same per-channel order as
//!   the publications: [`BrokerHandler::on_reset`] (the stream restarted in a new epoch;
//!   publications continue after the given position) or [`BrokerHandler::on_gap`] (a range of
//!   offsets is lost for this node; publications continue after it). Subscribers are told
//!   with a push (`reset` or `gap`, see `docs/hub.md`), never left with a silent gap.
//! - [`Broker::subscribe`] resolves once publications of the channel will reach the handler.
//!   The node calls it when its first local subscriber arrives and
//!   [`unsubscribe`](Broker::unsubscribe) when the last one leaves; calls for the same channel
//!   may overlap (a subscriber arriving while the last one leaves), so a networked broker
//!   counts them.
//! - Handler methods are cheap and never block: the node hands each event to its own fan-out
//!   threads (a channel always to the same thread, so its order holds) and returns. A broker
//!   may therefore call them from a tokio task, or under a lock of its own (the
//!   [`MemoryBroker`](crate::MemoryBroker) calls them under its channel lock, right after
//!   storing, which is how its order comes for free). On a single-threaded runtime
//!   (`--threads 1`) the node has no fan-out threads by default and the call fans out itself:
//!   the one thread has nothing else to run meanwhile.
//! - Errors say who is to blame: [`BrokerError::Unavailable`] when the backend cannot be
//!   reached (the client should retry: `broker_unavailable`, HTTP 503),
//!   [`BrokerError::Full`] when a budget of the broker refuses to grow (`channel_limit`,
//!   HTTP 503), [`BrokerError::Failed`] for anything else (`internal`, HTTP 500).
//!   [`Broker::is_available`] tells `/healthz` whether a started broker still reaches its
//!   backend.
//! - Presence refresh and expiry (a dead node's clients leaving presence by themselves) are
//!   the broker's own business.

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

/// Why a broker call failed, and so who is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The broker's backend cannot be reached (not started yet, connection lost): the request
    /// may succeed later. Wire code `broker_unavailable`, HTTP 503.
    Unavailable(String),
    /// Anything else the broker did wrong. Wire code `internal`, HTTP 500.
    Failed(String),
    /// The request would grow the broker past one of its budgets (a new channel over the
    /// channel cap): refused, nothing changed; it may succeed once channels are freed. Wire
    /// code `channel_limit`, HTTP 503.
    Full(String),
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Unavailable(why) => write!(f, "broker unavailable: {why}"),
            BrokerError::Failed(why) => write!(f, "broker: {why}"),
            BrokerError::Full(why) => write!(f, "broker full: {why}"),
        }
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
    /// `channel`'s stream restarted in a new epoch: publications continue after
    /// `position.offset` in `position.epoch`; what subscribers hold from the old epoch cannot
    /// be recovered. Ordered with the channel's publications.
    fn on_reset(&self, channel: &str, position: &StreamPosition);
    /// Publications `first..=last` of `channel` are lost for this node (history could not
    /// cover them); the channel's next [`on_publication`](BrokerHandler::on_publication) is
    /// `last + 1`.
    fn on_gap(&self, channel: &str, first: u64, last: u64);
}

/// Offsets, history, presence, and publication delivery across the nodes of a hub (see the
/// [module docs](self) for the contract).
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Gives the broker the node's handler and connects it to its backend. Called before any
    /// other method; called again (with the same handler) after it failed, until it succeeds.
    fn start(&self, handler: Arc<dyn BrokerHandler>) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Whether the broker reaches its backend now (`/healthz` answers 503 while it does not).
    fn is_available(&self) -> bool {
        true
    }

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
