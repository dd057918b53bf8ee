//! # duplex-hub
//!
//! The real-time push server behind `duplex hub`: channels, fan-out, presence, history and
//! recovery, an HTTP publish API, HS256 token auth and Prometheus metrics, on one port.
//! The protocol, configuration and policies are documented in `docs/hub.md`.
//!
//! ## Modules
//!
//! One line per module, in layers: a module uses only modules listed below it (no import
//! cycles; the test `modules_use_only_the_modules_below_them` checks this list against the
//! sources).
//!
//! ```text
//! fuzzing   doc-hidden entry points running the parsers below on arbitrary bytes (fuzz/)
//! server    Hub and HubHandle: binding, the accept loop, graceful shutdown, SIGHUP reload
//! service   one connection on hyper: TLS, HTTP/1.1 or HTTP/2, bodies, /ws upgrades, /sse bodies
//! http      the routes (JSON API, web assets), WebSocket admission; the builtin HTTP/1.1 server
//! tls       --tls-cert/--tls-key: the rustls acceptor, its certificate reloaded in place
//! sse       /sse: Server-Sent Events subscribers (the WebSocket fallback), ids that resume
//! ws_loop   event loops holding plain WebSocket connections, many per thread (no task each)
//! session   one WebSocket connection's commands and subscriptions; the task of a TLS/HTTP/2 one
//! state     HubState: what every connection shares (config, broker, fan-out, metrics, sessions)
//! fanout    local subscribers per channel, sharded over the fan-out threads; encode once, all write
//! outbox    one connection's outbound path: direct writes, the bounded queue, Delivery
//! head      HTTP/1.1 request heads, pure: parsed request, keep-alive, body framing
//! protocol  typed commands (Command::parse), HTTP API inputs, ErrorCode, Refusal, replies
//! redis     RedisBroker: channels over sharded Redis servers (streams, pub/sub, presence)
//! memory    MemoryBroker: offsets, epochs, history and presence in one process, budgeted
//! json      hand-written JSON envelopes that embed publication data as it was published
//! presence_batch  join/leave events folded per channel, flushed as one push per window
//! config    HubArgs, FileConfig and HubConfig: flags, environment and TOML, validated
//! auth      HS256 tokens, grants (channel patterns), constant-time comparison
//! metrics   counters and histograms, rendered for Prometheus
//! limit     Bucket (rates per connection, the rate from the config), AddressLimiter (per address or key)
//! ids       random stream epochs and client ids
//! broker    the Broker trait and what it speaks (publications, positions, history, presence)
//! ```
//!
//! ## Data flow
//!
//! ```text
//!   HTTP/1.1, HTTP/2, TLS (hyper) ─ /api/publish ─▶ Broker ── offset + history ──┐
//!   /ws ── WebSocket ── {"op":"publish"} ─────▶ (--broker: memory by default) │ on_publication
//!                                                                             ▼ (in offset order)
//!                                    Fanout: a job to the channel's home fan-out thread
//!                                                                             ▼
//!                        home thread: encode once; the same Arc as a share to every other
//!                        fan-out thread holding subscribers of the channel (no waiting)
//!                                                                             ▼
//!   socket ◀── direct writev, or Outbox (bytes-bounded) ◀── every such thread, in parallel:
//!   connection task: drain all, feed frames, flush once      the Arc to each subscriber of its
//!                                                            shard (a large channel's are spread
//!                                                            by connection id)
//! ```
//!
//! - [`Hub::bind`] starts a hub in the current runtime and returns a [`HubHandle`] (address,
//!   metrics, graceful shutdown); [`run`] is the `duplex hub` command around it.
//! - [`Broker`] is where offsets, history and presence live (its module docs hold the
//!   contract); [`MemoryBroker`] is the single-process default, [`HubConfig::broker`] chooses
//!   another, and any broker plugs in through [`Hub::bind_with_broker`] without touching the
//!   fan-out.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use duplex_hub::{Hub, HubConfig};
//! let hub = Hub::bind(HubConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() }).await?;
//! let url = format!("ws://{}/ws", hub.local_addr());
//! let (mut ws, _) = duplex::connect(&url).await.expect("connect");
//! ws.send(duplex::Message::text(r#"{"id":1,"op":"subscribe","channel":"chat"}"#)).await.expect("send");
//! // ... {"id":1,"ok":true,"epoch":"...","offset":0}
//! hub.shutdown();
//! hub.wait().await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod broker;
mod config;
mod fanout;
#[doc(hidden)]
pub mod fuzzing;
mod head;
mod http;
mod ids;
mod json;
mod limit;
mod memory;
mod metrics;
mod outbox;
mod presence_batch;
mod protocol;
mod redis;
mod server;
mod service;
mod session;
mod sse;
mod state;
mod tls;
mod ws_loop;

use std::error::Error;
use std::process::ExitCode;

pub use crate::broker::{
    BoxFuture, Broker, BrokerError, BrokerHandler, ClientInfo, History, HistoryQuery, Publication,
    StreamPosition,
};
pub use crate::config::{
    BrokerConfig, Compression, ConfigError, FileConfig, HttpServer, HubArgs, HubConfig, TlsFiles,
    load_file,
};
pub use crate::memory::{MemoryBroker, MemoryLimits};
pub use crate::metrics::Metrics;
pub use crate::redis::RedisBroker;
pub use crate::server::{Hub, HubHandle};

/// Runs `duplex hub` until SIGINT or SIGTERM, then shuts down gracefully (every WebSocket
/// closed with 1001) and returns success.
pub async fn run(args: HubArgs) -> Result<ExitCode, Box<dyn Error + Send + Sync>> {
    let config = HubConfig::from_args(&args)?;
    let close_timeout = config.close_timeout;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let hub = Hub::bind(config)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = hub.local_addr();
    tracing::info!("demo page: {scheme}://{addr}/");
    shutdown_signal().await?;
    tracing::info!("shutting down: closing every connection with 1001");
    if !hub
        .shutdown_within(close_timeout + std::time::Duration::from_secs(2))
        .await
    {
        tracing::warn!("some connections did not close in time");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The module map at the top of this file, top layer first.
    fn module_map() -> Vec<String> {
        let lib = include_str!("lib.rs");
        let start = lib.find("//! ```text\n").expect("module map") + "//! ```text\n".len();
        let end = start + lib[start..].find("//! ```").expect("end of module map");
        lib[start..end]
            .lines()
            .map(|line| line.trim_start_matches("//!").split_whitespace().next())
            .map(|name| name.expect("a module name on every line").to_owned())
            .collect()
    }

    /// The modules `source` names as `crate::module`, outside comments.
    fn uses(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for line in source.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
        found
    }

    #[test]
    fn modules_use_only_the_modules_below_them() {
        let map = module_map();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // A module is `name.rs`, or a directory `name/` with `mod.rs` (its files' sources
        // count as the module's).
        let mut files: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter_map(|name| match name.strip_suffix(".rs") {
                Some(module) => Some(module.to_owned()),
                None => src.join(&name).join("mod.rs").exists().then_some(name),
            })
            .filter(|name| name != "lib")
            .collect();
        files.sort();
        let mut listed = map.clone();
        listed.sort();
        assert_eq!(files, listed, "every module has one line in the map");
        for (layer, module) in map.iter().enumerate() {
            let dir = src.join(module);
            let source = if dir.is_dir() {
                std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                std::fs::read_to_string(src.join(format!("{module}.rs"))).unwrap()
            };
            for used in uses(&source) {
                let below = map.iter().position(|m| *m == used);
                assert!(
                    below.is_some_and(|below| below > layer),
                    "{module} uses crate::{used}, which is not listed below it"
                );
            }
        }
        // The check sees imports at all.
        assert_eq!(uses("use crate::broker::Broker; // crate::x"), ["broker"]);
    }
}
