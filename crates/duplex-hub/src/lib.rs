//! # duplex-hub
//!
//! The real-time push server behind `duplex hub`: channels, fan-out, presence, history and
//! recovery, an HTTP publish API, HS256 token auth and Prometheus metrics, on one port.
//! The protocol, configuration and policies are documented in `docs/hub.md`.
//!
//! ```text
//!   HTTP/1.1 (raw TcpStream) ── /api/publish ──▶ Broker ── offset + history ──┐
//!   /ws ── WebSocket ── {"op":"publish"} ─────▶ (MemoryBroker by default)    │ on_publication
//!                                                                             ▼ (in offset order)
//!                 connection task ◀── Outbox (bytes-bounded) ◀── Fanout: encode once, queue Arc
//!                 drain all, feed frames, flush once
//! ```
//!
//! - [`Hub::bind`] starts a hub in the current runtime and returns a [`HubHandle`] (address,
//!   metrics, graceful shutdown); [`run`] is the `duplex hub` command around it.
//! - [`Broker`] is where offsets, history and presence live; [`MemoryBroker`] is the
//!   single-process default, and a networked broker plugs in through
//!   [`Hub::bind_with_broker`] without touching the fan-out.
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
mod http;
mod json;
mod limit;
mod memory;
mod metrics;
mod node;
mod outbox;
mod server;
mod session;

use std::error::Error;
use std::process::ExitCode;

pub use crate::broker::{
    BoxFuture, Broker, BrokerError, BrokerHandler, ClientInfo, History, HistoryQuery, Publication,
    StreamPosition,
};
pub use crate::config::{Compression, ConfigError, FileConfig, HubArgs, HubConfig, load_file};
pub use crate::memory::MemoryBroker;
pub use crate::metrics::Metrics;
pub use crate::server::{Hub, HubHandle};

/// Runs `duplex hub` until SIGINT or SIGTERM, then shuts down gracefully (every WebSocket
/// closed with 1001) and returns success.
pub async fn run(args: HubArgs) -> Result<ExitCode, Box<dyn Error + Send + Sync>> {
    let config = HubConfig::from_args(&args)?;
    let close_timeout = config.close_timeout;
    let hub = Hub::bind(config)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = hub.local_addr();
    tracing::info!("demo page: http://{addr}/");
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
