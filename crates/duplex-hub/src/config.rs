//! Configuration: command-line flags, `DUPLEX_*` environment variables (both through clap), an
//! optional TOML file, and defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Command-line arguments of `duplex hub`. Every setting is optional here so that a setting
/// given nowhere on the command line or in the environment can come from the `--config` file,
/// and then from the defaults of [`HubConfig`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HubArgs {
    /// Address to listen on, HTTP and WebSocket on one port [default: 127.0.0.1:8080].
    #[arg(long, env = "DUPLEX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML file with any of the settings below (flags and env variables override it).
    #[arg(long, env = "DUPLEX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Secret for HS256 connection tokens (`/ws?token=JWT`). Without it anyone may subscribe
    /// and publish anywhere.
    #[arg(long, env = "DUPLEX_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Key the HTTP API (`/api/*`) requires as `Authorization: Bearer KEY`.
    #[arg(long, env = "DUPLEX_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Origin allowed to open WebSockets (repeat, or comma-separated in the env); others get
    /// 403. Default: any origin.
    #[arg(
        long = "allowed-origin",
        env = "DUPLEX_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Publications kept per channel for history and recovery (0: none) [default: 100].
    #[arg(long, env = "DUPLEX_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Seconds a publication stays in history (0: no expiry) [default: 0].
    #[arg(long, env = "DUPLEX_HISTORY_TTL")]
    pub history_ttl: Option<u64>,
    /// Memory broker: bytes all channels' history may hold together (data plus 128 bytes per
    /// publication); past it the oldest publications of any channel go first [default:
    /// 268435456, 256 MiB].
    #[arg(long, env = "DUPLEX_HISTORY_BYTES")]
    pub history_bytes: Option<usize>,
    /// Memory broker: most channels in memory; a new one past it is refused
    /// (`channel_limit`, HTTP 503) [default: 100000].
    #[arg(long, env = "DUPLEX_MAX_CHANNELS")]
    pub max_channels: Option<usize>,
    /// `POST /api/publish` per second, per client address (per API key when the hub has
    /// one); over it: 429 with Retry-After (0: no limit) [default: 100].
    #[arg(long, env = "DUPLEX_HTTP_PUBLISH_RATE")]
    pub http_publish_rate: Option<f64>,
    /// `POST /api/publish` burst per client address or API key [default: 200].
    #[arg(long, env = "DUPLEX_HTTP_PUBLISH_BURST")]
    pub http_publish_burst: Option<u32>,
    /// Subscribes and unsubscribes per second one connection may make, sustained; over it:
    /// `rate_limited` (0: no limit) [default: 20].
    #[arg(long, env = "DUPLEX_SUBSCRIBE_RATE")]
    pub subscribe_rate: Option<f64>,
    /// Subscribes and unsubscribes one connection may make in a burst [default: 200].
    #[arg(long, env = "DUPLEX_SUBSCRIBE_BURST")]
    pub subscribe_burst: Option<u32>,
    /// New connections (`/ws`, `/sse`) per second per client address; over it: 429 with
    /// Retry-After before the upgrade or the stream (0: no limit) [default: 20].
    #[arg(long, env = "DUPLEX_CONNECTION_RATE")]
    pub connection_rate: Option<f64>,
    /// New connections per client address in a burst [default: 100].
    #[arg(long, env = "DUPLEX_CONNECTION_BURST")]
    pub connection_burst: Option<u32>,
    /// Apply the per-address limits to loopback clients too (off: a reverse proxy on the same
    /// host gives every client its own address, 127.0.0.1) [default: false].
    #[arg(long, env = "DUPLEX_RATE_LIMIT_LOOPBACK")]
    pub rate_limit_loopback: Option<bool>,
    /// Bytes all partly received and inflating WebSocket messages may hold together; a
    /// connection whose message does not fit is closed with 1009 or 1013 (0: no budget)
    /// [default: 268435456, 256 MiB].
    #[arg(long, env = "DUPLEX_MESSAGE_BUDGET")]
    pub message_budget: Option<usize>,
    /// Most WebSocket connections at once; more get 503 [default: 10000].
    #[arg(long, env = "DUPLEX_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most channels one connection may subscribe to [default: 100].
    #[arg(long, env = "DUPLEX_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Largest WebSocket message and HTTP body accepted, in bytes [default: 65536].
    #[arg(long, env = "DUPLEX_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Publishes per second one connection may make, sustained [default: 20].
    #[arg(long, env = "DUPLEX_PUBLISH_RATE")]
    pub publish_rate: Option<f64>,
    /// Publishes one connection may make in a burst [default: 50].
    #[arg(long, env = "DUPLEX_PUBLISH_BURST")]
    pub publish_burst: Option<u32>,
    /// Bytes queued for one connection above which it is a slow consumer and is disconnected
    /// with 1013 [default: 1048576].
    #[arg(long, env = "DUPLEX_QUEUE_BYTES")]
    pub queue_bytes: Option<usize>,
    /// permessage-deflate: `shared` (compress each publication once, for every connection;
    /// imposes server_no_context_takeover), `context` (per connection, better ratio, more
    /// CPU and memory), `off` [default: shared].
    #[arg(long, env = "DUPLEX_COMPRESSION")]
    pub compression: Option<Compression>,
    /// Messages shorter than this many bytes are sent uncompressed [default: 256].
    #[arg(long, env = "DUPLEX_COMPRESSION_THRESHOLD")]
    pub compression_threshold: Option<usize>,
    /// Push join/leave events to subscribers (presence queries work either way)
    /// [default: true].
    #[arg(long, env = "DUPLEX_JOIN_LEAVE")]
    pub join_leave: Option<bool>,
    /// Milliseconds a channel's joins and leaves are collected before they go out as one
    /// `presence` push (0: each at once, still as a `presence` push) [default: 100].
    #[arg(long, env = "DUPLEX_PRESENCE_BATCH_MS")]
    pub presence_batch_ms: Option<u64>,
    /// A channel with more subscribers than this (on this node) gets no join/leave pushes;
    /// presence queries still answer (0: no limit) [default: 1000].
    #[arg(long, env = "DUPLEX_JOIN_LEAVE_MAX_SUBSCRIBERS")]
    pub join_leave_max_subscribers: Option<usize>,
    /// Seconds between server pings on idle-looking connections (0: none) [default: 25].
    #[arg(long, env = "DUPLEX_PING_INTERVAL")]
    pub ping_interval: Option<u64>,
    /// Worker threads (default: one per core). 1 runs everything on one thread: fewer
    /// instructions per delivery, for a hub pinned to one core.
    #[arg(long, env = "DUPLEX_THREADS")]
    pub threads: Option<usize>,
    /// Where channels, history and presence live: `memory` (this process only) or
    /// `redis://host:port[,redis://host:port...]` (many hub processes sharing Redis, channels
    /// spread over the listed instances) [default: memory].
    #[arg(long, env = "DUPLEX_BROKER", value_parser = BrokerConfig::parse)]
    pub broker: Option<BrokerConfig>,
    /// Threads that fan publications out to this node's subscribers (0: automatic: one per
    /// core, none with `--threads 1`, whose one thread fans out itself) [default: 0].
    #[arg(long, env = "DUPLEX_FANOUT_THREADS")]
    pub fanout_threads: Option<usize>,
    /// Event loops (tasks, each polling many connections) that hold the plain `ws://`
    /// WebSocket connections once upgraded; 0: a task per connection (more memory per idle
    /// connection) [default: one per worker thread].
    #[arg(long, env = "DUPLEX_EVENT_LOOPS")]
    pub event_loops: Option<usize>,
    /// Bytes the events waiting for the fan-out threads may hold together (publications,
    /// presence pushes, shares of large channels); a publish that does not fit is refused
    /// (`overloaded`, HTTP 503), a presence push dropped (0: no bound) [default: 67108864,
    /// 64 MiB].
    #[arg(long, env = "DUPLEX_FANOUT_QUEUE_BYTES")]
    pub fanout_queue_bytes: Option<usize>,
    /// Redis broker: seconds a client stays in presence unless its node refreshes it (a dead
    /// node's clients leave after this) [default: 30].
    #[arg(long, env = "DUPLEX_PRESENCE_TTL")]
    pub presence_ttl: Option<u64>,
    /// Redis broker: seconds between a node's presence refreshes [default: 10].
    #[arg(long, env = "DUPLEX_PRESENCE_REFRESH")]
    pub presence_refresh: Option<u64>,
    /// Redis broker: milliseconds a connection attempt or command may take before it fails
    /// with broker_unavailable [default: 2000].
    #[arg(long, env = "DUPLEX_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// PEM certificate chain (leaf first): serve HTTPS and wss:// (HTTP/2 by ALPN `h2`, else
    /// HTTP/1.1) instead of plain HTTP. Reloaded with the key on SIGHUP. Needs --tls-key.
    #[arg(long, env = "DUPLEX_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "DUPLEX_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The HTTP server: `hyper` (HTTP/1.1 and HTTP/2 on one port, TLS) or `builtin` (the
    /// former hand-written HTTP/1.1 server, no TLS, no HTTP/2) [default: hyper].
    #[arg(long, env = "DUPLEX_HTTP_SERVER")]
    pub http_server: Option<HttpServer>,
    /// Seconds between comment heartbeats on an idle `/sse` stream (0: none) [default: 15].
    #[arg(long, env = "DUPLEX_SSE_HEARTBEAT")]
    pub sse_heartbeat: Option<u64>,
    /// The `retry:` an `/sse` stream tells the browser: milliseconds before it reconnects
    /// [default: 2000].
    #[arg(long, env = "DUPLEX_SSE_RETRY_MS")]
    pub sse_retry_ms: Option<u64>,
}

/// Which HTTP server a hub runs (`--http-server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HttpServer {
    /// hyper: HTTP/1.1 and HTTP/2 (h2c by prior knowledge, h2 by ALPN under TLS), TLS.
    #[default]
    Hyper,
    /// The hand-written HTTP/1.1 server: plain TCP only.
    Builtin,
}

/// The certificate and key files of a TLS hub: read at start and on every SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Which broker a hub uses (`--broker`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum BrokerConfig {
    /// [`MemoryBroker`](crate::MemoryBroker): one process.
    #[default]
    Memory,
    /// A Redis broker over these instances (`redis://host:port` URLs, at least one, no
    /// duplicates), channels spread over them by a stable hash of their names: every node
    /// must list the same shards in the same order.
    Redis {
        /// The instances' URLs, in the order given.
        shards: Vec<String>,
    },
}

impl BrokerConfig {
    /// Parses `memory` or a comma-separated list of `redis://` URLs.
    pub fn parse(text: &str) -> Result<BrokerConfig, ConfigError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("memory") {
            return Ok(BrokerConfig::Memory);
        }
        let expected = "expected `memory` or redis://host:port[,redis://host:port...]";
        let mut shards: Vec<String> = Vec::new();
        for url in text.split(',').map(str::trim) {
            let Some(rest) = url.strip_prefix("redis://") else {
                return Err(ConfigError(format!("broker {text:?}: {expected}")));
            };
            // The host is what follows any `user:password@`, up to a path or query.
            let host = rest
                .rsplit_once('@')
                .map_or(rest, |(_, host)| host)
                .split(['/', '?'])
                .next()
                .unwrap_or("");
            if host.is_empty() || host.starts_with(':') {
                return Err(ConfigError(format!(
                    "broker {text:?}: {url:?} names no host ({expected})"
                )));
            }
            if shards.iter().any(|s| s == url) {
                return Err(ConfigError(format!(
                    "broker {text:?}: {url:?} is listed twice"
                )));
            }
            shards.push(url.to_owned());
        }
        Ok(BrokerConfig::Redis { shards })
    }
}

impl TryFrom<String> for BrokerConfig {
    type Error = ConfigError;

    fn try_from(text: String) -> Result<BrokerConfig, ConfigError> {
        BrokerConfig::parse(&text)
    }
}

impl std::fmt::Display for BrokerConfig {
    /// The form [`BrokerConfig::parse`] reads (passwords in URLs included).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerConfig::Memory => f.write_str("memory"),
            BrokerConfig::Redis { shards } => f.write_str(&shards.join(",")),
        }
    }
}

/// permessage-deflate policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    Off,
    /// Compress each message once and share the bytes (server_no_context_takeover).
    #[default]
    Shared,
    /// Compress per connection with context takeover.
    Context,
}

/// The TOML file: the same settings as [`HubArgs`], snake_case, all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`HubArgs::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`HubArgs::token_secret`].
    pub token_secret: Option<String>,
    /// See [`HubArgs::api_key`].
    pub api_key: Option<String>,
    /// See [`HubArgs::allowed_origins`].
    pub allowed_origins: Option<Vec<String>>,
    /// See [`HubArgs::history_size`].
    pub history_size: Option<usize>,
    /// See [`HubArgs::history_ttl`] (seconds).
    pub history_ttl: Option<u64>,
    /// See [`HubArgs::history_bytes`].
    pub history_bytes: Option<usize>,
    /// See [`HubArgs::max_channels`].
    pub max_channels: Option<usize>,
    /// See [`HubArgs::http_publish_rate`].
    pub http_publish_rate: Option<f64>,
    /// See [`HubArgs::http_publish_burst`].
    pub http_publish_burst: Option<u32>,
    /// See [`HubArgs::subscribe_rate`].
    pub subscribe_rate: Option<f64>,
    /// See [`HubArgs::subscribe_burst`].
    pub subscribe_burst: Option<u32>,
    /// See [`HubArgs::connection_rate`].
    pub connection_rate: Option<f64>,
    /// See [`HubArgs::connection_burst`].
    pub connection_burst: Option<u32>,
    /// See [`HubArgs::rate_limit_loopback`].
    pub rate_limit_loopback: Option<bool>,
    /// See [`HubArgs::message_budget`].
    pub message_budget: Option<usize>,
    /// See [`HubArgs::max_connections`].
    pub max_connections: Option<usize>,
    /// See [`HubArgs::max_subscriptions`].
    pub max_subscriptions: Option<usize>,
    /// See [`HubArgs::max_message_size`].
    pub max_message_size: Option<usize>,
    /// See [`HubArgs::publish_rate`].
    pub publish_rate: Option<f64>,
    /// See [`HubArgs::publish_burst`].
    pub publish_burst: Option<u32>,
    /// See [`HubArgs::queue_bytes`].
    pub queue_bytes: Option<usize>,
    /// See [`HubArgs::compression`].
    pub compression: Option<Compression>,
    /// See [`HubArgs::compression_threshold`].
    pub compression_threshold: Option<usize>,
    /// See [`HubArgs::join_leave`].
    pub join_leave: Option<bool>,
    /// See [`HubArgs::presence_batch_ms`].
    pub presence_batch_ms: Option<u64>,
    /// See [`HubArgs::join_leave_max_subscribers`].
    pub join_leave_max_subscribers: Option<usize>,
    /// See [`HubArgs::ping_interval`] (seconds).
    pub ping_interval: Option<u64>,
    /// See [`HubArgs::broker`].
    pub broker: Option<BrokerConfig>,
    /// See [`HubArgs::fanout_threads`].
    pub fanout_threads: Option<usize>,
    /// See [`HubArgs::fanout_queue_bytes`].
    pub fanout_queue_bytes: Option<usize>,
    /// See [`HubArgs::event_loops`].
    pub event_loops: Option<usize>,
    /// See [`HubArgs::presence_ttl`] (seconds).
    pub presence_ttl: Option<u64>,
    /// See [`HubArgs::presence_refresh`] (seconds).
    pub presence_refresh: Option<u64>,
    /// See [`HubArgs::redis_timeout_ms`].
    pub redis_timeout_ms: Option<u64>,
    /// See [`HubArgs::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`HubArgs::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`HubArgs::http_server`].
    pub http_server: Option<HttpServer>,
    /// See [`HubArgs::sse_heartbeat`] (seconds).
    pub sse_heartbeat: Option<u64>,
    /// See [`HubArgs::sse_retry_ms`].
    pub sse_retry_ms: Option<u64>,
}

/// Every setting of a hub, resolved. Build one with [`HubConfig::default`] and struct update
/// syntax in tests, or [`HubConfig::from_args`] from the command line.
///
/// ```
/// let config = duplex_hub::HubConfig {
///     listen: "127.0.0.1:0".parse().unwrap(),
///     history_size: 10,
///     ..Default::default()
/// };
/// assert_eq!(config.max_subscriptions, 100);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// HS256 secret for connection tokens; `None`: no authentication.
    pub token_secret: Option<String>,
    /// Bearer key for `/api/*`; `None`: open.
    pub api_key: Option<String>,
    /// Allowed `Origin`s for WebSockets; empty: any.
    pub allowed_origins: Vec<String>,
    /// Publications kept per channel.
    pub history_size: usize,
    /// How long a publication stays in history; `None`: until pushed out by newer ones.
    pub history_ttl: Option<Duration>,
    /// Memory broker: bytes of history all channels may hold together.
    pub history_bytes: usize,
    /// Memory broker: most channels in memory.
    pub max_channels: usize,
    /// HTTP publishes per second per client address or API key; 0: no limit.
    pub http_publish_rate: f64,
    /// Burst of HTTP publishes per client address or API key.
    pub http_publish_burst: u32,
    /// Subscribes and unsubscribes per second per connection; 0: no limit.
    pub subscribe_rate: f64,
    /// Burst of subscribes and unsubscribes per connection.
    pub subscribe_burst: u32,
    /// New connections per second per client address; 0: no limit.
    pub connection_rate: f64,
    /// Burst of new connections per client address.
    pub connection_burst: u32,
    /// Whether the per-address limits apply to loopback clients.
    pub rate_limit_loopback: bool,
    /// Bytes partly received WebSocket messages of all connections may hold; 0: no budget.
    pub message_budget: usize,
    /// Most WebSocket connections at once.
    pub max_connections: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest WebSocket message and HTTP body, in bytes.
    pub max_message_size: usize,
    /// Sustained publishes per second per connection.
    pub publish_rate: f64,
    /// Burst of publishes per connection.
    pub publish_burst: u32,
    /// Outbound queue bound per connection, in bytes (the slow-consumer threshold).
    pub queue_bytes: usize,
    /// permessage-deflate policy.
    pub compression: Compression,
    /// Messages shorter than this are not compressed.
    pub compression_threshold: usize,
    /// Push join/leave events.
    pub join_leave: bool,
    /// How long a channel's joins and leaves are collected into one `presence` push; zero:
    /// each goes out at once [default: 100 ms].
    pub presence_batch: Duration,
    /// Channels with more subscribers than this (on this node) get no join/leave pushes;
    /// 0: no limit [default: 1000].
    pub join_leave_max_subscribers: usize,
    /// Server ping interval; `None`: no pings.
    pub ping_interval: Option<Duration>,
    /// How long closing a WebSocket may take (close handshake) before the socket is dropped.
    pub close_timeout: Duration,
    /// The broker [`Hub::bind`](crate::Hub::bind) builds.
    pub broker: BrokerConfig,
    /// Fan-out threads; 0 (the default): one per core this process may use, or none on a
    /// single-threaded runtime (its one thread fans out itself: see [`HubArgs::threads`]).
    pub fanout_threads: usize,
    /// Event loops holding the plain WebSocket connections once upgraded (`Some(0)`: a task
    /// per connection); `None` (the default): one per worker thread.
    pub event_loops: Option<usize>,
    /// Bytes the fan-out threads' queues may hold together; a publish that does not fit is
    /// refused with `overloaded` (HTTP 503), a presence push is dropped; 0: no bound
    /// [default: 64 MiB].
    pub fanout_queue_bytes: usize,
    /// Redis broker: how long a client's presence entry lives unless its node refreshes it
    /// (a dead node's clients leave presence by themselves after this) [default: 30 s].
    pub presence_ttl: Duration,
    /// Redis broker: how often a node refreshes its clients' presence entries (less than
    /// `presence_ttl`) [default: 10 s].
    pub presence_refresh: Duration,
    /// Redis broker: bound on connecting and on every command; past it the command fails
    /// with `broker_unavailable` and the connection is replaced [default: 2 s].
    pub redis_timeout: Duration,
    /// Serve TLS with these files; `None`: plain TCP.
    pub tls: Option<TlsFiles>,
    /// The HTTP server.
    pub http_server: HttpServer,
    /// How long an `/sse` stream may stay silent before the hub writes a comment heartbeat
    /// (proxies close idle responses; the client notices a dead connection); `None`: no
    /// heartbeats [default: 15 s].
    pub sse_heartbeat: Option<Duration>,
    /// The reconnection delay an `/sse` stream asks the browser for (`retry:`) [default: 2 s].
    pub sse_retry: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_secret: None,
            api_key: None,
            allowed_origins: Vec::new(),
            history_size: 100,
            history_ttl: None,
            history_bytes: 256 << 20,
            max_channels: 100_000,
            http_publish_rate: 100.0,
            http_publish_burst: 200,
            subscribe_rate: 20.0,
            subscribe_burst: 200,
            connection_rate: 20.0,
            connection_burst: 100,
            rate_limit_loopback: false,
            message_budget: 256 << 20,
            max_connections: 10_000,
            max_subscriptions: 100,
            max_message_size: 64 * 1024,
            publish_rate: 20.0,
            publish_burst: 50,
            queue_bytes: 1 << 20,
            compression: Compression::Shared,
            compression_threshold: 256,
            join_leave: true,
            presence_batch: Duration::from_millis(100),
            join_leave_max_subscribers: 1000,
            ping_interval: Some(Duration::from_secs(25)),
            close_timeout: Duration::from_secs(3),
            broker: BrokerConfig::Memory,
            fanout_threads: 0,
            event_loops: None,
            fanout_queue_bytes: 64 << 20,
            presence_ttl: Duration::from_secs(30),
            presence_refresh: Duration::from_secs(10),
            redis_timeout: Duration::from_secs(2),
            tls: None,
            http_server: HttpServer::Hyper,
            sse_heartbeat: Some(Duration::from_secs(15)),
            sse_retry: Duration::from_secs(2),
        }
    }
}

/// A configuration that cannot be loaded or used.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl HubConfig {
    /// Resolves flags and environment (already merged by clap), then the `--config` file, then
    /// the defaults.
    pub fn from_args(args: &HubArgs) -> Result<HubConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let cert = args.tls_cert.is_some() || file.tls_cert.is_some();
        let key = args.tls_key.is_some() || file.tls_key.is_some();
        if cert != key {
            return Err(ConfigError(
                "tls_cert and tls_key go together: give both or neither".to_owned(),
            ));
        }
        let config = HubConfig::merge(args, &file);
        config.validate()?;
        Ok(config)
    }

    /// Flags/env over the file over the defaults (no validation).
    pub fn merge(args: &HubArgs, file: &FileConfig) -> HubConfig {
        let d = HubConfig::default();
        let secs = |s: Option<u64>| s.filter(|&s| s > 0).map(Duration::from_secs);
        HubConfig {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            token_secret: args
                .token_secret
                .clone()
                .or_else(|| file.token_secret.clone())
                .filter(|s| !s.is_empty()),
            api_key: args
                .api_key
                .clone()
                .or_else(|| file.api_key.clone())
                .filter(|s| !s.is_empty()),
            allowed_origins: args
                .allowed_origins
                .clone()
                .or_else(|| file.allowed_origins.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            history_size: args
                .history_size
                .or(file.history_size)
                .unwrap_or(d.history_size),
            history_ttl: match args.history_ttl.or(file.history_ttl) {
                Some(s) => secs(Some(s)),
                None => d.history_ttl,
            },
            history_bytes: args
                .history_bytes
                .or(file.history_bytes)
                .unwrap_or(d.history_bytes),
            max_channels: args
                .max_channels
                .or(file.max_channels)
                .unwrap_or(d.max_channels),
            http_publish_rate: args
                .http_publish_rate
                .or(file.http_publish_rate)
                .unwrap_or(d.http_publish_rate),
            http_publish_burst: args
                .http_publish_burst
                .or(file.http_publish_burst)
                .unwrap_or(d.http_publish_burst),
            subscribe_rate: args
                .subscribe_rate
                .or(file.subscribe_rate)
                .unwrap_or(d.subscribe_rate),
            subscribe_burst: args
                .subscribe_burst
                .or(file.subscribe_burst)
                .unwrap_or(d.subscribe_burst),
            connection_rate: args
                .connection_rate
                .or(file.connection_rate)
                .unwrap_or(d.connection_rate),
            connection_burst: args
                .connection_burst
                .or(file.connection_burst)
                .unwrap_or(d.connection_burst),
            rate_limit_loopback: args
                .rate_limit_loopback
                .or(file.rate_limit_loopback)
                .unwrap_or(d.rate_limit_loopback),
            message_budget: args
                .message_budget
                .or(file.message_budget)
                .unwrap_or(d.message_budget),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_subscriptions: args
                .max_subscriptions
                .or(file.max_subscriptions)
                .unwrap_or(d.max_subscriptions),
            max_message_size: args
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(d.max_message_size),
            publish_rate: args
                .publish_rate
                .or(file.publish_rate)
                .unwrap_or(d.publish_rate),
            publish_burst: args
                .publish_burst
                .or(file.publish_burst)
                .unwrap_or(d.publish_burst),
            queue_bytes: args
                .queue_bytes
                .or(file.queue_bytes)
                .unwrap_or(d.queue_bytes),
            compression: args
                .compression
                .or(file.compression)
                .unwrap_or(d.compression),
            compression_threshold: args
                .compression_threshold
                .or(file.compression_threshold)
                .unwrap_or(d.compression_threshold),
            join_leave: args.join_leave.or(file.join_leave).unwrap_or(d.join_leave),
            presence_batch: args
                .presence_batch_ms
                .or(file.presence_batch_ms)
                .map_or(d.presence_batch, Duration::from_millis),
            join_leave_max_subscribers: args
                .join_leave_max_subscribers
                .or(file.join_leave_max_subscribers)
                .unwrap_or(d.join_leave_max_subscribers),
            ping_interval: match args.ping_interval.or(file.ping_interval) {
                Some(s) => secs(Some(s)),
                None => d.ping_interval,
            },
            close_timeout: d.close_timeout,
            broker: args
                .broker
                .clone()
                .or_else(|| file.broker.clone())
                .unwrap_or(d.broker),
            fanout_threads: args
                .fanout_threads
                .or(file.fanout_threads)
                .unwrap_or(d.fanout_threads),
            event_loops: args.event_loops.or(file.event_loops).or(d.event_loops),
            fanout_queue_bytes: args
                .fanout_queue_bytes
                .or(file.fanout_queue_bytes)
                .unwrap_or(d.fanout_queue_bytes),
            presence_ttl: args
                .presence_ttl
                .or(file.presence_ttl)
                .map_or(d.presence_ttl, Duration::from_secs),
            presence_refresh: args
                .presence_refresh
                .or(file.presence_refresh)
                .map_or(d.presence_refresh, Duration::from_secs),
            redis_timeout: args
                .redis_timeout_ms
                .or(file.redis_timeout_ms)
                .map_or(d.redis_timeout, Duration::from_millis),
            tls: match (
                args.tls_cert.as_ref().or(file.tls_cert.as_ref()),
                args.tls_key.as_ref().or(file.tls_key.as_ref()),
            ) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                // One without the other: refused by `from_args`.
                _ => None,
            },
            http_server: args
                .http_server
                .or(file.http_server)
                .unwrap_or(d.http_server),
            sse_heartbeat: match args.sse_heartbeat.or(file.sse_heartbeat) {
                Some(s) => secs(Some(s)),
                None => d.sse_heartbeat,
            },
            sse_retry: args
                .sse_retry_ms
                .or(file.sse_retry_ms)
                .map_or(d.sse_retry, Duration::from_millis),
        }
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_owned()));
        if self.max_message_size < 125 {
            return fail("max_message_size must be at least 125 bytes");
        }
        if self.queue_bytes < 2 * self.max_message_size {
            return fail(
                "queue_bytes must be at least twice max_message_size (the largest publication, \
                 with its envelope, must fit in a queue)",
            );
        }
        if !(self.publish_rate > 0.0 && self.publish_rate.is_finite()) {
            return fail("publish_rate must be a positive number");
        }
        if self.publish_burst == 0 {
            return fail("publish_burst must be at least 1");
        }
        if self.max_connections == 0 {
            return fail("max_connections must be at least 1");
        }
        if self.max_channels == 0 {
            return fail("max_channels must be at least 1");
        }
        if self.history_bytes < 2 * self.max_message_size {
            return fail(
                "history_bytes must be at least twice max_message_size (the largest \
                 publication must fit in history)",
            );
        }
        for (name, rate, burst) in [
            (
                "http_publish_rate",
                self.http_publish_rate,
                self.http_publish_burst,
            ),
            ("subscribe_rate", self.subscribe_rate, self.subscribe_burst),
            (
                "connection_rate",
                self.connection_rate,
                self.connection_burst,
            ),
        ] {
            if !(rate >= 0.0 && rate.is_finite()) {
                return Err(ConfigError(format!(
                    "{name} must be a number, 0 or more (0: no limit)"
                )));
            }
            if rate > 0.0 && burst == 0 {
                return Err(ConfigError(format!(
                    "the burst of {name} must be at least 1"
                )));
            }
        }
        if self.message_budget != 0 && self.message_budget < self.max_message_size {
            return fail(
                "message_budget must be 0 (none) or at least max_message_size (else no large \
                 message could ever be received)",
            );
        }
        if self.fanout_queue_bytes != 0 && self.fanout_queue_bytes < 2 * self.max_message_size {
            return fail(
                "fanout_queue_bytes must be 0 (no bound) or at least twice max_message_size \
                 (else the largest publication could never be published)",
            );
        }
        if self.presence_refresh.is_zero() || self.presence_refresh >= self.presence_ttl {
            return fail("presence_refresh must be above zero and below presence_ttl");
        }
        if self.redis_timeout.is_zero() {
            return fail("redis_timeout must be above zero");
        }
        if self.tls.is_some() && self.http_server == HttpServer::Builtin {
            return fail("TLS needs the hyper HTTP server (--http-server hyper)");
        }
        Ok(())
    }
}

/// Reads and parses a TOML config file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        hub: HubArgs,
    }

    fn parse(argv: &[&str]) -> HubArgs {
        Cli::try_parse_from(std::iter::once("hub").chain(argv.iter().copied()))
            .expect("valid arguments")
            .hub
    }

    const FILE: &str = r#"
        listen = "127.0.0.1:9000"
        history_size = 7
        max_subscriptions = 3
        allowed_origins = ["https://a.example"]
        compression = "off"
        history_ttl = 60
    "#;

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let config = HubConfig::merge(&HubArgs::default(), &FileConfig::default());
        assert_eq!(config, HubConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        config.validate().unwrap();
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let file: FileConfig = toml::from_str(FILE).unwrap();
        let args = parse(&[
            "--history-size",
            "9",
            "--allowed-origin",
            "https://b.example",
        ]);
        let config = HubConfig::merge(&args, &file);
        assert_eq!(config.history_size, 9, "flag beats file");
        assert_eq!(config.allowed_origins, ["https://b.example"]);
        assert_eq!(config.max_subscriptions, 3, "file beats default");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.compression, Compression::Off);
        assert_eq!(config.history_ttl, Some(Duration::from_secs(60)));
        assert_eq!(config.max_connections, 10_000, "default");
    }

    #[test]
    fn redis_presence_and_timeout_settings() {
        let args = parse(&["--presence-ttl", "20", "--redis-timeout-ms", "500"]);
        let file: FileConfig = toml::from_str("presence_ttl = 40\npresence_refresh = 5").unwrap();
        let config = HubConfig::merge(&args, &file);
        assert_eq!(
            config.presence_ttl,
            Duration::from_secs(20),
            "flag beats file"
        );
        assert_eq!(config.presence_refresh, Duration::from_secs(5), "file");
        assert_eq!(config.redis_timeout, Duration::from_millis(500));
        config.validate().unwrap();
        let slow_refresh = HubConfig {
            presence_refresh: Duration::from_secs(30),
            ..HubConfig::default()
        };
        assert!(
            slow_refresh.validate().is_err(),
            "refresh must beat the TTL"
        );
    }

    #[test]
    fn tls_files_go_together_and_need_the_hyper_server() {
        let config = HubConfig::merge(
            &parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]),
            &FileConfig::default(),
        );
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert_eq!(config.http_server, HttpServer::Hyper);
        config.validate().unwrap();
        let file: FileConfig = toml::from_str("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"").unwrap();
        assert!(HubConfig::merge(&HubArgs::default(), &file).tls.is_some());
        let builtin = HubConfig {
            http_server: HttpServer::Builtin,
            ..config
        };
        assert!(builtin.validate().is_err(), "TLS needs hyper");
        // One without the other: clap refuses it, and so does a file.
        assert!(
            Cli::try_parse_from(["hub", "--tls-cert", "c.pem"]).is_err(),
            "--tls-cert alone"
        );
        let dir = std::env::temp_dir().join(format!("duplex-hub-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.toml");
        std::fs::write(&path, "tls_key = \"k.pem\"").unwrap();
        let args = HubArgs {
            config: Some(path),
            ..HubArgs::default()
        };
        let refused = HubConfig::from_args(&args);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(refused.is_err(), "tls_key alone in a file");
        let file: FileConfig = toml::from_str("http_server = \"builtin\"").unwrap();
        assert_eq!(
            HubConfig::merge(&parse(&[]), &file).http_server,
            HttpServer::Builtin
        );
    }

    #[test]
    fn brokers_are_memory_or_redis_urls() {
        assert_eq!(BrokerConfig::parse("memory").unwrap(), BrokerConfig::Memory);
        assert_eq!(
            BrokerConfig::parse("redis://a:6379, redis://u:p@b:6380/0").unwrap(),
            BrokerConfig::Redis {
                shards: vec!["redis://a:6379".into(), "redis://u:p@b:6380/0".into()]
            }
        );
        for bad in [
            "",
            "memcached",
            "redis://",
            "redis://:6379",
            "redis://a:6379,",
            "redis://a:6379,http://b",
            "redis://a:6379,redis://a:6379",
        ] {
            let error = BrokerConfig::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("broker"), "{bad}: {error}");
        }
        let args = parse(&[
            "--broker",
            "redis://127.0.0.1:7000",
            "--fanout-threads",
            "3",
        ]);
        let file: FileConfig = toml::from_str("broker = \"memory\"\nfanout_threads = 5").unwrap();
        let config = HubConfig::merge(&args, &file);
        assert_eq!(config.broker.to_string(), "redis://127.0.0.1:7000");
        assert_eq!(config.fanout_threads, 3);
        let config = HubConfig::merge(&HubArgs::default(), &file);
        assert_eq!(config.broker, BrokerConfig::Memory);
        assert_eq!(config.fanout_threads, 5);
        let error = toml::from_str::<FileConfig>("broker = \"redis:/x\"").unwrap_err();
        assert!(error.to_string().contains("expected `memory`"), "{error}");
        assert!(
            Cli::try_parse_from(["hub", "--broker", "redis//x"]).is_err(),
            "clap refuses it too"
        );
    }

    #[test]
    fn event_loops_default_to_the_workers_and_0_means_a_task_each() {
        assert_eq!(
            HubConfig::default().event_loops,
            None,
            "one per worker thread"
        );
        let file: FileConfig = toml::from_str("event_loops = 3").unwrap();
        assert_eq!(
            HubConfig::merge(&HubArgs::default(), &file).event_loops,
            Some(3)
        );
        let args = parse(&["--event-loops", "0"]);
        assert_eq!(
            HubConfig::merge(&args, &file).event_loops,
            Some(0),
            "flag beats file"
        );
    }

    #[test]
    fn sse_heartbeat_and_retry() {
        let args = parse(&["--sse-heartbeat", "0"]);
        let file: FileConfig = toml::from_str("sse_heartbeat = 5\nsse_retry_ms = 750").unwrap();
        let config = HubConfig::merge(&args, &file);
        assert_eq!(
            config.sse_heartbeat, None,
            "0 turns heartbeats off; the flag wins"
        );
        assert_eq!(config.sse_retry, Duration::from_millis(750));
        let config = HubConfig::merge(&HubArgs::default(), &file);
        assert_eq!(config.sse_heartbeat, Some(Duration::from_secs(5)));
    }

    #[test]
    fn budgets_and_rate_limits() {
        let config = HubConfig::default();
        assert_eq!(config.history_bytes, 256 << 20);
        assert_eq!(config.max_channels, 100_000);
        assert_eq!(config.message_budget, 256 << 20);
        assert_eq!(config.fanout_queue_bytes, 64 << 20);
        assert!(config.http_publish_rate > 0.0 && config.subscribe_rate > 0.0);
        assert!(config.connection_rate > 0.0 && !config.rate_limit_loopback);
        let args = parse(&[
            "--history-bytes",
            "1000000",
            "--max-channels",
            "7",
            "--subscribe-rate",
            "0",
            "--rate-limit-loopback",
            "true",
            "--message-budget",
            "0",
            "--fanout-queue-bytes",
            "200000",
        ]);
        let file: FileConfig = toml::from_str(
            "max_channels = 9\nhttp_publish_rate = 5.5\nhttp_publish_burst = 6\n\
             connection_rate = 2\nconnection_burst = 3\nsubscribe_burst = 4\n\
             fanout_queue_bytes = 300000",
        )
        .unwrap();
        let config = HubConfig::merge(&args, &file);
        assert_eq!(config.history_bytes, 1_000_000);
        assert_eq!(config.max_channels, 7, "flag beats file");
        assert_eq!(config.subscribe_rate, 0.0);
        assert_eq!(config.subscribe_burst, 4);
        assert_eq!(config.http_publish_rate, 5.5);
        assert_eq!(config.http_publish_burst, 6);
        assert_eq!((config.connection_rate, config.connection_burst), (2.0, 3));
        assert!(config.rate_limit_loopback);
        assert_eq!(config.message_budget, 0);
        assert_eq!(config.fanout_queue_bytes, 200_000, "flag beats file");
        config.validate().unwrap();
        let file: FileConfig = toml::from_str("fanout_queue_bytes = 0").unwrap();
        let config = HubConfig::merge(&HubArgs::default(), &file);
        assert_eq!(config.fanout_queue_bytes, 0, "0: no bound");
        config.validate().unwrap();
        for bad in [
            HubConfig {
                history_bytes: 1000,
                ..HubConfig::default()
            },
            HubConfig {
                max_channels: 0,
                ..HubConfig::default()
            },
            HubConfig {
                connection_rate: -1.0,
                ..HubConfig::default()
            },
            HubConfig {
                http_publish_burst: 0,
                ..HubConfig::default()
            },
            HubConfig {
                message_budget: 100,
                ..HubConfig::default()
            },
            HubConfig {
                fanout_queue_bytes: 1000,
                ..HubConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn presence_batching_and_the_join_leave_limit() {
        let config = HubConfig::merge(&HubArgs::default(), &FileConfig::default());
        assert_eq!(config.presence_batch, Duration::from_millis(100));
        assert_eq!(config.join_leave_max_subscribers, 1000);
        let args = parse(&["--presence-batch-ms", "0"]);
        let file: FileConfig =
            toml::from_str("presence_batch_ms = 250\njoin_leave_max_subscribers = 50").unwrap();
        let config = HubConfig::merge(&args, &file);
        assert_eq!(config.presence_batch, Duration::ZERO, "the flag wins");
        assert_eq!(config.join_leave_max_subscribers, 50, "the file");
        let config = HubConfig::merge(
            &parse(&["--join-leave-max-subscribers", "0"]),
            &FileConfig::default(),
        );
        assert_eq!(config.join_leave_max_subscribers, 0, "0: no limit");
        config.validate().unwrap();
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<FileConfig>("histroy_size = 3").is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        let config = HubConfig {
            queue_bytes: 10,
            ..HubConfig::default()
        };
        assert!(config.validate().is_err());
    }

    /// Environment precedence needs a process of its own (setting variables in a threaded test
    /// process is unsound), so this test runs the child test below with the variables set.
    #[test]
    fn env_is_between_flags_and_file() {
        let exe = std::env::current_exe().unwrap();
        let output = std::process::Command::new(exe)
            .args(["--exact", "config::tests::env_child"])
            .env("DUPLEX_HUB_ENV_CHILD", "1")
            .env("DUPLEX_HISTORY_SIZE", "11")
            .env("DUPLEX_MAX_SUBSCRIPTIONS", "12")
            .env("DUPLEX_FANOUT_QUEUE_BYTES", "1048576")
            .env(
                "DUPLEX_BROKER",
                "redis://127.0.0.1:7001,redis://127.0.0.1:7002",
            )
            .env(
                "DUPLEX_ALLOWED_ORIGIN",
                "https://x.example,https://y.example",
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    #[test]
    fn env_child() {
        if std::env::var_os("DUPLEX_HUB_ENV_CHILD").is_none() {
            return;
        }
        let file: FileConfig = toml::from_str(FILE).unwrap();
        let config = HubConfig::merge(&parse(&["--history-size", "9"]), &file);
        assert_eq!(config.history_size, 9, "flag beats env");
        assert_eq!(config.max_subscriptions, 12, "env beats file");
        assert_eq!(config.fanout_queue_bytes, 1 << 20, "env beats the default");
        assert_eq!(
            config.allowed_origins,
            ["https://x.example", "https://y.example"]
        );
        assert_eq!(config.listen.port(), 9000, "file beats default");
        assert_eq!(
            config.broker,
            BrokerConfig::Redis {
                shards: vec![
                    "redis://127.0.0.1:7001".into(),
                    "redis://127.0.0.1:7002".into()
                ]
            }
        );
    }
}
