//! # duplex-hub
//!
//! The real-time push server: channels, fan-out, presence, history and recovery, an HTTP
//! publish API, auth and metrics. Being built; see docs/hub.md once it lands.

use std::process::ExitCode;

/// Command-line arguments of `duplex hub`.
#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// Address to listen on (HTTP and WebSocket on one port).
    #[arg(long, default_value = "127.0.0.1:8080", env = "DUPLEX_LISTEN")]
    pub listen: std::net::SocketAddr,
}

/// Runs the hub until SIGINT/SIGTERM.
pub async fn run(args: HubArgs) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    Err(format!("duplex hub on {} is not built yet", args.listen).into())
}
