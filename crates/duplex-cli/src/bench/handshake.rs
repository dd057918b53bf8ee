//! `duplex bench handshake`: connect, upgrade, close (the full close handshake), one after the
//! other, `--count` times: handshakes per second, and with `--sync-dir` an exact window for
//! counting what the server spends per handshake.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use duplex::CloseCode;

use super::common::{self, Failures, SyncDir};
use crate::CliError;

#[derive(Debug, Args)]
pub struct HandshakeArgs {
    /// ws:// URL of a WebSocket server.
    url: String,
    /// Handshakes to measure.
    #[arg(long, short = 'n', default_value_t = 1000)]
    count: u64,
    /// Handshakes before measuring (not counted).
    #[arg(long, default_value_t = 10)]
    warmup_count: u64,
    /// Lock-step with a harness: create DIR/warm.ready after the warm-up and wait for
    /// DIR/warm.go, create DIR/done.ready after the last handshake and wait for DIR/done.go.
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
}

/// One connect + upgrade + close. The server's side of the close is awaited (the client's
/// `close` returns once the server's Close frame arrived and the socket is shut).
async fn once(url: &str, options: &duplex::ClientOptions) -> Result<(), String> {
    let (mut ws, _response) = duplex::connect_with(url, options.clone())
        .await
        .map_err(|e| format!("connect: {}", common::describe(&e)))?;
    ws.close(CloseCode::NORMAL, "")
        .await
        .map_err(|e| format!("close: {}", common::describe(&e)))?;
    Ok(())
}

pub async fn run(args: HandshakeArgs) -> Result<ExitCode, CliError> {
    println!(
        "duplex bench handshake: {} | {} handshakes (connect, upgrade, close) one at a time",
        args.url, args.count
    );
    let sync = SyncDir::new(args.sync_dir.clone());
    let options = common::client_options(Duration::from_secs(10));
    let mut failures = Failures::default();
    let bar = common::progress_bar(args.warmup_count, "warm-up {bar:40} {pos}/{len}");
    for _ in 0..args.warmup_count {
        if let Err(e) = once(&args.url, &options).await {
            failures.add(e);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    sync.point("warm", &bar).await?;

    let bar = common::progress_bar(args.count, "handshakes {bar:40} {pos}/{len} {per_sec}");
    let mut latency = common::latency_histogram();
    let start = Instant::now();
    let mut last = start;
    for _ in 0..args.count {
        if let Err(e) = once(&args.url, &options).await {
            failures.add(e);
        }
        let now = Instant::now();
        latency.saturating_record((now.duration_since(last).as_nanos() as u64).max(100));
        last = now;
        bar.inc(1);
    }
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    sync.point("done", &bar).await?;

    let rate = args.count as f64 / secs;
    let [p50, p99, p999, max] = common::quantiles_us(&latency);
    println!("  {} handshakes in {secs:.2} s: {rate:.0}/s", args.count);
    println!(
        "  each: p50 {}  p99 {}  p99.9 {}  max {}",
        common::human_us(p50),
        common::human_us(p99),
        common::human_us(p999),
        common::human_us(max)
    );
    if failures.total() > 0 {
        println!("  {} failed:", failures.total());
        failures.print("    ");
    }
    println!(
        "RESULT handshakes={} secs={secs:.4} per_sec={rate:.1} p50_us={p50:.1} p99_us={p99:.1} \
         p999_us={p999:.1} failed={}",
        args.count,
        failures.total()
    );
    if failures.total() > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
