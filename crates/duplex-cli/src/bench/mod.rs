//! `duplex bench`: load generators for measuring a WebSocket server (any server, not only
//! duplex's). `bench/compare.sh` at the top of the repository drives them against duplex and
//! its peers; docs/performance.md describes the method.
//!
//! ```text
//! duplex bench echo ws://127.0.0.1:9001 --connections 100 --size 20 --duration 10
//! duplex bench idle ws://127.0.0.1:9001 --connections 10000 --hold 30
//! duplex bench handshake ws://127.0.0.1:9001 --count 1000
//! duplex bench soak ws://127.0.0.1:8080/ws --connections 15000 --channels 100 --minutes 10
//! ```
//!
//! Every generator runs on one thread (a current-thread runtime of its own), since it is meant
//! to be pinned to one core next to the server it measures, and prints a last line
//! `RESULT key=value ...` for scripts.

mod common;
mod echo;
mod fanout;
mod handshake;
mod idle;
mod soak;

use std::process::ExitCode;

use crate::CliError;

/// `duplex bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub kind: BenchKind,
}

/// The load generators.
#[derive(Debug, clap::Subcommand)]
pub enum BenchKind {
    /// Echo round trips: N connections, each with exactly one message in flight.
    Echo(echo::EchoArgs),
    /// Idle connections: open N upgraded connections and hold them.
    Idle(idle::IdleArgs),
    /// Handshakes: connect, upgrade, close, one after the other.
    Handshake(handshake::HandshakeArgs),
    /// Hub fan-out: N subscribers on one channel, M publications; time to first/last
    /// subscriber, deliveries/s, missing and duplicate deliveries.
    Fanout(fanout::FanoutArgs),
    /// Hub soak: N subscribers on C channels under steady publishing, reconnects with
    /// `since` and subscribe churn, every stream checked exactly; PROGRESS lines.
    Soak(soak::SoakArgs),
}

pub async fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    match args.kind {
        BenchKind::Echo(args) => common::on_own_thread(move || echo::run(args)).await,
        BenchKind::Idle(args) => common::on_own_thread(move || idle::run(args)).await,
        BenchKind::Handshake(args) => common::on_own_thread(move || handshake::run(args)).await,
        BenchKind::Fanout(args) => common::on_own_thread(move || fanout::run(args)).await,
        BenchKind::Soak(args) => common::on_own_thread(move || soak::run(args)).await,
    }
}
