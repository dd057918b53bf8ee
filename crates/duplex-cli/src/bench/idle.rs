//! `duplex bench idle`: opens N upgraded connections (a bounded number of handshakes in flight)
//! and holds them, answering nothing but what the protocol needs, until `--hold` elapses or
//! Ctrl-C. What a server spends per idle connection is then its memory growth divided by N.
//!
//! Against `duplex hub`, `--hub-channels N` subscribes connection i to channel `idle-{i % N}`
//! (waiting for each reply) before holding it: what the hub spends per subscribed connection.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;

use super::common::{self, Failures, SyncDir};
use crate::CliError;

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// ws:// URL of a WebSocket server.
    url: String,
    /// Connections to open. Each needs a file descriptor here and one in the server: raise
    /// `ulimit -n` on both sides past it.
    #[arg(long, short = 'c', default_value_t = 10_000)]
    connections: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds to hold the connections once open (Ctrl-C ends the hold early).
    #[arg(long, default_value_t = 60.0)]
    hold: f64,
    /// Lock-step with a harness: once every connection is open (or failed), create
    /// DIR/open.ready, then hold until DIR/open.go exists (or --hold elapses).
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
    /// Against `duplex hub`: after the upgrade, subscribe connection i to the channel
    /// `idle-{i % N}` and wait for the hub's `{"id":1,"ok":true,...}` reply (0: no subscribe).
    #[arg(long, value_name = "N", default_value_t = 0)]
    hub_channels: u64,
}

/// What a subscribe came to.
#[derive(Debug)]
enum Subscribed {
    /// The hub said `"ok":true`.
    Ok,
    /// The hub refused (its reply), or the connection failed or closed before the reply.
    Failed(String),
}

/// Subscribes `ws` to `channel` as request id 1 and waits for the reply: pushes that come
/// first (other clients' joins on the same channel) are skipped.
async fn subscribe<S>(ws: &mut duplex::WebSocket<S>, channel: &str) -> Subscribed
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let command = format!(r#"{{"id":1,"op":"subscribe","channel":"{channel}"}}"#);
    if let Err(e) = ws.send(duplex::Message::text(command)).await {
        return Subscribed::Failed(format!("subscribe: {}", common::describe(&e)));
    }
    loop {
        match ws.recv().await {
            Some(Ok(duplex::Message::Text(text))) => {
                let text = text.as_str();
                if !text.starts_with(r#"{"id":1,"#) {
                    continue;
                }
                if text.starts_with(r#"{"id":1,"ok":true"#) {
                    return Subscribed::Ok;
                }
                return Subscribed::Failed(format!("subscribe refused: {text}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                return Subscribed::Failed(format!("subscribe: {}", common::describe(&e)));
            }
            None => return Subscribed::Failed("closed before the subscribe reply".into()),
        }
    }
}

pub async fn run(args: IdleArgs) -> Result<ExitCode, CliError> {
    println!(
        "duplex bench idle: {} | {} connections, {} handshakes in flight, hold {} s{}",
        args.url,
        args.connections,
        args.concurrency,
        args.hold,
        if args.hub_channels > 0 {
            format!(
                ", each subscribed to one of {} hub channels",
                args.hub_channels
            )
        } else {
            String::new()
        }
    );
    let sync = SyncDir::new(args.sync_dir.clone());
    let bar = common::progress_bar(args.connections, "opening {bar:40} {pos}/{len} {msg}");
    let options = common::client_options(Duration::from_secs(30));
    let url = args.url.clone();
    // Connections the server closed (or that failed) while held.
    let dropped = Rc::new(Cell::new(0u64));
    let mut held = Vec::with_capacity(args.connections as usize);
    let mut failures = Failures::default();
    let started = Instant::now();
    let channels = args.hub_channels;
    let mut opening = futures_util::stream::iter(0..args.connections)
        .map(|i| {
            let connecting = duplex::connect_with(&url, options.clone());
            async move {
                let (mut ws, _response) = connecting.await.map_err(|e| common::describe(&e))?;
                if channels > 0 {
                    match subscribe(&mut ws, &format!("idle-{}", i % channels)).await {
                        Subscribed::Ok => {}
                        Subscribed::Failed(why) => return Err(why),
                    }
                }
                Ok(ws)
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some(result) = opening.next().await {
        match result {
            Ok(mut ws) => {
                let dropped = dropped.clone();
                // Keep reading, so pings are answered and a close from the server is noticed.
                held.push(tokio::task::spawn_local(async move {
                    while let Some(Ok(_)) = ws.recv_event().await {}
                    dropped.set(dropped.get() + 1);
                }));
            }
            Err(why) => failures.add(why),
        }
        bar.inc(1);
        bar.set_message(format!("{} failed", failures.total()));
    }
    drop(opening);
    let open_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let opened = held.len() as u64;
    println!(
        "  opened {opened}, failed {} in {open_secs:.2} s ({:.0} connections/s)",
        failures.total(),
        args.connections as f64 / open_secs
    );
    failures.print("    ");

    let bar = common::progress_bar(
        (args.hold * 10.0) as u64,
        "holding {bar:40} {elapsed} {msg}",
    );
    let hold = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let end = Instant::now() + Duration::from_secs_f64(args.hold);
        while Instant::now() < end {
            tick.tick().await;
            bar.inc(1);
            bar.set_message(format!("{} open", opened - dropped.get()));
        }
    };
    let mut interrupted = false;
    tokio::select! {
        _ = hold => {}
        // Only with a harness: without one, `point` returns at once and would end the hold.
        result = sync.point("open", &bar), if sync.is_set() => result?,
        _ = tokio::signal::ctrl_c() => interrupted = true,
    }
    bar.finish_and_clear();
    let dropped_n = dropped.get();
    println!(
        "  held {} s{}: {dropped_n} of {opened} were closed meanwhile",
        args.hold,
        if interrupted { " (interrupted)" } else { "" },
    );
    // Let go without close handshakes: dropping closes the sockets.
    for task in &held {
        task.abort();
    }
    println!(
        "RESULT opened={opened} failed={} dropped={dropped_n} open_secs={open_secs:.3} \
         conns_per_sec={:.1}",
        failures.total(),
        args.connections as f64 / open_secs
    );
    if failures.total() > 0 || dropped_n > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
