//! `duplex bench echo`: N connections, each with exactly one message in flight (send, wait for
//! the echo, check it, repeat); messages per second and round-trip latency.
//!
//! Phases, each connection in lock-step with the others at the boundaries:
//!
//! ```text
//! connect all --> warm-up (time) --> [sync "warm"] --> measure (time or --messages) --> [sync "done"] --> close
//! ```
//!
//! At both sync points every connection is idle (no message in flight), so a harness that
//! counts the server's instructions between them (`--sync-dir`) sees exactly the measured
//! echoes and no handshake or close.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use duplex::{CloseCode, MaybeTlsStream, Message, Utf8Bytes, WebSocket};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Barrier;

use super::common::{self, Failures, SyncDir};
use crate::CliError;

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// ws:// URL of an echo server.
    url: String,
    /// Connections, each with one message in flight.
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: u64,
    /// Payload bytes per message.
    #[arg(long, short = 's', default_value_t = 20)]
    size: usize,
    /// Seconds to measure (with --messages: an upper bound).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of echoes before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after exactly this many echoes in all (spread evenly over the connections)
    /// instead of after --duration.
    #[arg(long)]
    messages: Option<u64>,
    /// Send binary messages (default: text, which the server validates as UTF-8).
    #[arg(long)]
    binary: bool,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Lock-step with a harness: create DIR/warm.ready after the warm-up and wait for
    /// DIR/warm.go, create DIR/done.ready after the measurement and wait for DIR/done.go.
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Settle,
    Measure,
    Stop,
}

/// State the connection tasks share with the controller (one thread: no atomics).
struct Shared {
    phase: Cell<Phase>,
    /// Echoes completed in the measured phase.
    measured: Cell<u64>,
    /// Round trips of the measured phase, nanoseconds.
    latency: RefCell<Histogram<u64>>,
    failures: RefCell<Failures>,
    /// Connections plus the controller.
    barrier: Barrier,
}

type Ws = WebSocket<MaybeTlsStream>;

/// The message every connection sends, and what its echo must look like.
struct Payload {
    message: Message,
    bytes: Bytes,
}

impl Payload {
    fn new(size: usize, binary: bool) -> Self {
        // Printable ASCII, so the same bytes serve as text and as binary.
        let bytes: Bytes = (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>()
            .into();
        let message = if binary {
            Message::binary(bytes.clone())
        } else {
            Message::text(Utf8Bytes::try_from(bytes.clone()).expect("ASCII is UTF-8"))
        };
        Payload { message, bytes }
    }

    /// Cheap check of an echo: kind, length, the first and last 64 bytes.
    fn check(&self, echo: &Message) -> Result<(), String> {
        if echo.is_text() != self.message.is_text() {
            return Err("echo came back as another message kind".into());
        }
        let got = echo.as_bytes();
        let want = &self.bytes[..];
        if got.len() != want.len() {
            return Err(format!(
                "echo of {} bytes came back with {}",
                want.len(),
                got.len()
            ));
        }
        let edge = want.len().min(64);
        if got[..edge] != want[..edge] || got[got.len() - edge..] != want[want.len() - edge..] {
            return Err("echo differs from the message sent".into());
        }
        Ok(())
    }
}

async fn round_trip(ws: &mut Ws, payload: &Payload) -> Result<(), String> {
    ws.send(payload.message.clone())
        .await
        .map_err(|e| format!("send: {}", common::describe(&e)))?;
    match ws.recv().await {
        Some(Ok(echo)) => payload.check(&echo),
        Some(Err(e)) => Err(format!("receive: {}", common::describe(&e))),
        None => Err("the server closed the connection".into()),
    }
}

/// One connection's life after the handshake. Always reaches all four barrier waits, even
/// after a failure, so the others are never left waiting.
async fn drive(mut ws: Ws, shared: Rc<Shared>, payload: Rc<Payload>, quota: Option<u64>) {
    let mut alive = true;
    let fail = |e: String, alive: &mut bool| {
        shared.failures.borrow_mut().add(e);
        *alive = false;
    };
    while alive && shared.phase.get() == Phase::Warmup {
        if let Err(e) = round_trip(&mut ws, &payload).await {
            fail(e, &mut alive);
        }
    }
    shared.barrier.wait().await; // warm-up over, nothing in flight
    shared.barrier.wait().await; // measure
    let mut done = 0u64;
    let mut start = Instant::now();
    while alive
        && match quota {
            Some(quota) => done < quota,
            None => shared.phase.get() == Phase::Measure,
        }
    {
        match round_trip(&mut ws, &payload).await {
            Ok(()) => {
                let end = Instant::now();
                let ns = end.duration_since(start).as_nanos() as u64;
                shared.latency.borrow_mut().saturating_record(ns.max(100));
                start = end;
                done += 1;
                shared.measured.set(shared.measured.get() + 1);
            }
            Err(e) => fail(e, &mut alive),
        }
    }
    shared.barrier.wait().await; // measured, nothing in flight
    shared.barrier.wait().await; // close
    if alive {
        let _ = ws.close(CloseCode::NORMAL, "").await;
    }
}

pub async fn run(args: EchoArgs) -> Result<ExitCode, CliError> {
    if args.connections == 0 {
        return Err(CliError("--connections must be at least 1".into()));
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0) {
        return Err(CliError("--duration must be > 0 and --warmup >= 0".into()));
    }
    let sync = SyncDir::new(args.sync_dir.clone());
    let payload = Rc::new(Payload::new(args.size, args.binary));
    let kind = if args.binary { "binary" } else { "text" };
    println!(
        "duplex bench echo: {} | {} connections x {} B {kind} | warm-up {} s, {}",
        args.url,
        args.connections,
        args.size,
        args.warmup,
        match args.messages {
            Some(n) => format!("{n} messages (at most {} s)", args.duration),
            None => format!("{} s", args.duration),
        }
    );

    // Connect, `concurrency` handshakes at a time.
    let bar = common::progress_bar(args.connections, "connecting {bar:40} {pos}/{len} {msg}");
    let options = common::client_options(Duration::from_secs(30));
    let url = args.url.clone();
    let mut connecting = futures_util::stream::iter(0..args.connections)
        .map(|_| duplex::connect_with(&url, options.clone()))
        .buffer_unordered(args.concurrency.max(1));
    let mut sockets = Vec::with_capacity(args.connections as usize);
    let mut connect_failures = Failures::default();
    while let Some(result) = connecting.next().await {
        match result {
            Ok((ws, _response)) => sockets.push(ws),
            Err(e) => connect_failures.add(common::describe(&e)),
        }
        bar.inc(1);
    }
    drop(connecting);
    bar.finish_and_clear();
    if connect_failures.total() > 0 {
        println!(
            "{} of {} connections failed:",
            connect_failures.total(),
            args.connections
        );
        connect_failures.print("  ");
        return Err(CliError("not all connections could be opened".into()));
    }

    let n = sockets.len() as u64;
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Warmup),
        measured: Cell::new(0),
        latency: RefCell::new(common::latency_histogram()),
        failures: RefCell::new(Failures::default()),
        barrier: Barrier::new(sockets.len() + 1),
    });
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        let quota = args.messages.map(|m| m / n + u64::from((i as u64) < m % n));
        tasks.push(tokio::task::spawn_local(drive(
            ws,
            shared.clone(),
            payload.clone(),
            quota,
        )));
    }

    // The whole run is bounded: warm-up + duration + a minute for stragglers, plus whatever
    // the harness spends at the sync points (bounded by SyncDir itself).
    let bound = Duration::from_secs_f64(args.warmup + args.duration + 60.0);
    let controller = async {
        let bar = common::progress_bar(
            (args.warmup * 10.0) as u64,
            "warm-up    {bar:40} {elapsed} {msg}",
        );
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let warm_end = Instant::now() + Duration::from_secs_f64(args.warmup);
        while Instant::now() < warm_end {
            tick.tick().await;
            bar.inc(1);
        }
        shared.phase.set(Phase::Settle);
        shared.barrier.wait().await;
        bar.finish_and_clear();
        tokio::time::timeout(bound, sync.point("warm", &bar))
            .await
            .map_err(|_| CliError("sync point `warm` timed out".into()))??;

        let (len, template) = match args.messages {
            Some(m) => (m, "measuring  {bar:40} {pos}/{len} {msg}"),
            None => (
                (args.duration * 10.0) as u64,
                "measuring  {bar:40} {elapsed}/{duration} {msg}",
            ),
        };
        let bar = common::progress_bar(len, template);
        shared.phase.set(Phase::Measure);
        shared.barrier.wait().await; // the measured phase starts as this opens
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.duration);
        let all_idle = shared.barrier.wait();
        tokio::pin!(all_idle);
        let mut last = (start, 0u64);
        loop {
            tokio::select! {
                _ = &mut all_idle => break,
                _ = tick.tick() => {
                    let now = Instant::now();
                    let measured = shared.measured.get();
                    if now >= deadline && shared.phase.get() == Phase::Measure {
                        shared.phase.set(Phase::Stop);
                    }
                    let rate = (measured - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                    last = (now, measured);
                    bar.set_message(format!("{measured} msgs, {rate:.0}/s"));
                    match args.messages {
                        Some(_) => bar.set_position(measured),
                        None => bar.set_position((now.duration_since(start).as_secs_f64() * 10.0) as u64),
                    }
                }
            }
        }
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        tokio::time::timeout(bound, sync.point("done", &bar))
            .await
            .map_err(|_| CliError("sync point `done` timed out".into()))??;
        Ok::<_, CliError>(elapsed)
    };
    let elapsed = tokio::time::timeout(bound * 2, controller)
        .await
        .map_err(|_| {
            CliError(format!(
                "the run did not finish within {} s",
                bound.as_secs() * 2
            ))
        })??;
    // Close every connection (each task closes its own), bounded by the close timeout.
    shared.barrier.wait().await;
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(tasks),
    )
    .await;

    let measured = shared.measured.get();
    let secs = elapsed.as_secs_f64();
    let rate = measured as f64 / secs;
    let mbps = rate * args.size as f64 / 1e6;
    let [p50, p99, p999, max] = common::quantiles_us(&shared.latency.borrow());
    let failures = shared.failures.borrow();
    println!(
        "  {measured} echoes in {secs:.2} s: {rate:.0} msgs/s, {mbps:.2} MB/s of payload each way"
    );
    println!(
        "  round trip: p50 {}  p99 {}  p99.9 {}  max {}",
        common::human_us(p50),
        common::human_us(p99),
        common::human_us(p999),
        common::human_us(max)
    );
    if failures.total() > 0 {
        println!("  {} connections failed:", failures.total());
        failures.print("    ");
    }
    println!(
        "RESULT msgs={measured} secs={secs:.4} msgs_per_sec={rate:.1} mb_per_sec={mbps:.3} \
         p50_us={p50:.1} p99_us={p99:.1} p999_us={p999:.1} max_us={max:.1} connections={n} \
         size={} failed={}",
        args.size,
        failures.total()
    );
    if failures.total() > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
