//! [`RedisBroker`]: the broker for many hub processes ("nodes") sharing channels, history and
//! presence through one or more independent Redis servers (7.x).
//!
//! ```text
//!  node A ──┐  EVALSHA publish (1 round trip)   ┌─ Redis shard 0: duplex:{c}:s stream, :m meta,
//!  node B ──┼──────────────────────────────────▶│   :p/:x presence, PUBLISH duplex:{c}
//!  node C ──┘  SUBSCRIBE duplex:{c} (1 conn/shard)└─ Redis shard 1: ... channels hashed here
//! ```
//!
//! - [`keys`]: what is stored where; [`shard`]: which Redis holds a channel (a pinned hash,
//!   so every node agrees); [`script`]: one Lua script per operation, so a publish is one
//!   round trip; [`frame`]: what travels on pub/sub; [`stream`]: publish and history over
//!   the scripts; [`pubsub`]: one pub/sub connection per shard and the counted
//!   subscriptions on it; [`subconn`]: that connection's socket, read without the `redis`
//!   crate ([`resp`]: the lean RESP reader); [`reader`]: the task reading it, ordered
//!   hand-off, gap fill and reconnect; [`presence`]: expiring presence refreshed by each node; [`conn`]: the
//!   command connection per shard, fail-fast with background reconnect ([`cmdconn`]: its
//!   socket, pipelined, replies read with [`resp`]).
//! - The node's fan-out stays local: Redis delivers each publication once per node, never
//!   once per subscriber.
//! - Failure: [`Broker::start`] fails if a shard cannot be reached (the hub retries it);
//!   afterwards a lost connection makes commands on that shard fail fast with
//!   [`BrokerError::Unavailable`] while it reconnects in the background,
//!   [`Broker::is_available`] says false meanwhile, and subscribed channels are filled from
//!   their streams (or reset / gapped) once it is back.

mod cmdconn;
mod conn;
mod frame;
mod keys;
mod presence;
mod pubsub;
mod reader;
mod resp;
mod script;
mod shard;
mod stream;
mod subconn;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::broker::{
    BoxFuture, Broker, BrokerError, BrokerHandler, ClientInfo, History, HistoryQuery,
    StreamPosition,
};
use crate::config::HubConfig;
use crate::metrics::Metrics;

use self::conn::Conn;
use self::presence::LocalPresence;
use self::pubsub::PubSubShard;

/// What the broker's parts need from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Publications kept per channel.
    pub(crate) history_size: usize,
    /// History TTL in milliseconds (0: none).
    pub(crate) history_ttl_ms: u64,
    /// How long a presence entry lives without a refresh.
    pub(crate) presence_ttl: Duration,
    /// How often this node refreshes its clients' entries.
    pub(crate) presence_refresh: Duration,
    /// Bound on connecting and on every command.
    pub(crate) timeout: Duration,
}

/// Offsets, history, presence and delivery in Redis, for a hub of many nodes.
///
/// Each hub channel lives on one Redis shard (a stable hash of its name, the same on every
/// node): its history in a stream with entry ids `<offset>-0`, its epoch and offset counter
/// beside it (a new epoch whenever Redis lost them), its presence in a hash with an expiry
/// per client, and its events on one pub/sub channel. A publish is one round trip (a Lua
/// script: next offset, XADD, PUBLISH). A node subscribes in Redis only to the channels its
/// clients use, over one pub/sub connection per shard, and hands publications to its own
/// fan-out in offset order: a jump in offsets or a lost connection is filled from the stream
/// first; a new epoch is signalled as a reset, what the stream lost as a gap. Each node
/// refreshes its clients' presence; a dead node's clients expire. While a shard is
/// unreachable its commands fail fast with [`BrokerError::Unavailable`] and the node
/// reconnects in the background. See docs/hub.md ("Many nodes").
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use duplex_hub::{HubConfig, Metrics, RedisBroker};
/// let shards = ["redis://127.0.0.1:6379".to_owned()];
/// let broker = RedisBroker::new(&shards, &HubConfig::default(), Arc::new(Metrics::default()))?;
/// let hub = duplex_hub::Hub::bind_with_broker(HubConfig::default(), Arc::new(broker)).await?;
/// # Ok(()) }
/// ```
pub struct RedisBroker {
    shards: Vec<(Arc<str>, ::redis::Client)>,
    options: Arc<Options>,
    metrics: Arc<Metrics>,
    local_presence: Arc<LocalPresence>,
    /// Serializes `start` attempts.
    starting: tokio::sync::Mutex<()>,
    /// Set once `start` succeeded.
    running: OnceLock<Running>,
}

/// The connected shards and the broker's tasks (aborted when the broker is dropped).
struct Running {
    conns: Vec<Arc<Conn>>,
    pubsubs: Vec<Arc<PubSubShard>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.shards.iter().map(|(url, _)| &**url).collect();
        f.debug_struct("RedisBroker")
            .field("shards", &urls)
            .field("started", &self.running.get().is_some())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// A broker over `shards` (Redis URLs, `redis://host:port[/db]`; every node must list
    /// the same ones in the same order), configured by `config` (history size and TTL,
    /// presence TTL and refresh, Redis timeout), counting into `metrics` (the hub's). Connects
    /// nothing yet: [`Broker::start`] does. Fails on an empty list or a malformed URL.
    pub fn new(
        shards: &[String],
        config: &HubConfig,
        metrics: Arc<Metrics>,
    ) -> Result<RedisBroker, BrokerError> {
        if shards.is_empty() {
            return Err(BrokerError::Failed("redis: no shard URL given".to_owned()));
        }
        let shards = shards
            .iter()
            .map(|url| {
                ::redis::Client::open(url.as_str())
                    .map(|client| (Arc::from(url.as_str()), client))
                    .map_err(|e| BrokerError::Failed(format!("redis URL {url:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = Options {
            history_size: config.history_size,
            history_ttl_ms: config.history_ttl.map_or(0, |ttl| {
                u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            presence_ttl: config.presence_ttl,
            presence_refresh: config.presence_refresh,
            timeout: config.redis_timeout,
        };
        Ok(RedisBroker {
            shards,
            options: Arc::new(options),
            metrics,
            local_presence: Arc::default(),
            starting: tokio::sync::Mutex::new(()),
            running: OnceLock::new(),
        })
    }

    /// The index (in the URL list) of the shard that holds `channel`.
    pub fn shard_of(&self, channel: &str) -> usize {
        shard::shard_of(channel, self.shards.len())
    }

    fn running(&self) -> Result<&Running, BrokerError> {
        self.running
            .get()
            .ok_or_else(|| BrokerError::Unavailable("redis broker not started yet".to_owned()))
    }

    /// The command connection of `channel`'s shard.
    fn conn(&self, channel: &str) -> Result<&Arc<Conn>, BrokerError> {
        Ok(&self.running()?.conns[self.shard_of(channel)])
    }

    fn presence_ttl_ms(&self) -> u64 {
        u64::try_from(self.options.presence_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    async fn start_now(&self, handler: Arc<dyn BrokerHandler>) -> Result<(), BrokerError> {
        let _one_at_a_time = self.starting.lock().await;
        if self.running.get().is_some() {
            return Ok(());
        }
        let mut conns = Vec::with_capacity(self.shards.len());
        let mut pubsubs = Vec::with_capacity(self.shards.len());
        let mut tasks = Vec::new();
        for (url, client) in &self.shards {
            let conn = Conn::connect(
                client.clone(),
                url.clone(),
                self.options.timeout,
                self.metrics.clone(),
            )
            .await?;
            // Loaded up front: the first publish is then one round trip too.
            for script in &script::ALL {
                conn.load(script).await?;
            }
            let (pubsub, reader) = PubSubShard::connect(
                client.clone(),
                url.clone(),
                conn.clone(),
                self.options.clone(),
                self.metrics.clone(),
                handler.clone(),
            )
            .await?;
            tasks.push(tokio::spawn(reader.run()));
            conns.push(conn);
            pubsubs.push(pubsub);
        }
        tasks.push(tokio::spawn(refresh_presence(
            conns.clone(),
            self.local_presence.clone(),
            self.options.clone(),
        )));
        tracing::info!(
            "redis broker: {} shard(s) connected: {}",
            self.shards.len(),
            self.shards
                .iter()
                .map(|(url, _)| &**url)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let running = Running {
            conns,
            pubsubs,
            tasks,
        };
        // Only this call sets it (under `starting`), after checking it was unset.
        let _ = self.running.set(running);
        Ok(())
    }
}

/// Refreshes this node's presence entries every `presence_refresh`, on every shard.
async fn refresh_presence(conns: Vec<Arc<Conn>>, local: Arc<LocalPresence>, options: Arc<Options>) {
    let ttl_ms = u64::try_from(options.presence_ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut ticks = tokio::time::interval(options.presence_refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shards = conns.len();
    loop {
        ticks.tick().await;
        presence::refresh_all(&conns, |c| shard::shard_of(c, shards), &local, ttl_ms).await;
    }
}

impl Broker for RedisBroker {
    fn start(&self, handler: Arc<dyn BrokerHandler>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.start_now(handler))
    }

    fn is_available(&self) -> bool {
        self.running.get().is_some_and(|running| {
            running.conns.iter().all(|c| c.is_up()) && running.pubsubs.iter().all(|p| p.is_up())
        })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            stream::publish(self.conn(channel)?, &self.options, channel, &data).await
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            stream::history(self.conn(channel)?, &self.options, channel, query).await
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let running = self.running()?;
            running.pubsubs[self.shard_of(channel)]
                .subscribe(channel)
                .await
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let running = self.running()?;
            running.pubsubs[self.shard_of(channel)]
                .unsubscribe(channel)
                .await
        })
    }

    fn join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let ttl = self.presence_ttl_ms();
            presence::join(
                self.conn(channel)?,
                &self.local_presence,
                ttl,
                channel,
                client,
            )
            .await
        })
    }

    fn leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            presence::leave(self.conn(channel)?, &self.local_presence, channel, client).await
        })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ClientInfo>, BrokerError>> {
        Box::pin(async move { presence::presence(self.conn(channel)?, channel).await })
    }
}
