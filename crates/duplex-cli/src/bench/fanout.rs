//! `duplex bench fanout`: the hub's fan-out. N WebSocket subscribers on one channel, M
//! publications through the HTTP API; per publication, the time until the first and until the
//! last subscriber has it, deliveries per second, and an exact count of missing and duplicate
//! deliveries (by offset).
//!
//! Given several URLs (hub nodes sharing one broker, e.g. Redis), the subscribers are split
//! evenly over them (round robin) and the publications go to the first: what a publication
//! costs on its way through the broker to the other nodes is then in the times.
//!
//! ```text
//! connect + subscribe N (K at a time; each reader starts as soon as its subscribe is acked)
//!   --> warm-up publications (not counted) --> [sync "warm"]
//!   --> M measured publications --> [sync "done"] --> drop the connections
//! ```
//!
//! Publications go out on one keep-alive HTTP/1.1 connection (`POST /api/publish`), not over a
//! WebSocket: the hub rate-limits WebSocket publishes per connection (`publish_rate`), not the
//! API. By default they are lock-stepped: publication k+1 is sent once every subscriber has
//! publication k (or `--timeout` passed), so each publication's fan-out is timed alone and the
//! hub is idle between them. With `--interval-ms T` they are sent every T ms whatever was
//! delivered (each request still waits for its HTTP reply), to load the hub with overlapping
//! fan-outs.
//!
//! Time to first/last is from just before the request is written to the receipt (the
//! generator takes one timestamp per received push). On one core per side, time to last is
//! mostly the generator reading N sockets, so it bounds the hub's speed from above.
//!
//! Receipt is cheap: a push is recognised by its fixed prefix
//! `{"op":"pub","channel":"C","offset":` and the offset is parsed from the digits after it;
//! nothing else of it is parsed. Each subscriber checks that offsets arrive exactly once, in
//! order.
//!
//! At both sync points nothing is in flight, so a harness that counts the hub's instructions
//! between them (`--sync-dir`, bench/fanout.sh) sees the measured publications (their HTTP
//! requests, fan-out and socket writes) and nothing else.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use duplex::{MaybeTlsStream, Message, WebSocket};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::common::{self, Failures, SyncDir};
use crate::CliError;

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// The hub's WebSocket URL, `ws://HOST:PORT/ws` (the path defaults to `/ws`); publications
    /// go to `http://HOST:PORT/api/publish` of the first. Several URLs: hub nodes on one broker;
    /// the subscribers are split evenly over them.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,
    /// WebSocket subscribers, all on one channel. Each needs a file descriptor here and one in
    /// the hub: raise `ulimit -n` on both sides (and the hub's `--max-connections`).
    #[arg(long, short = 'n', default_value_t = 1000)]
    subscribers: u64,
    /// Measured publications.
    #[arg(long, short = 'm', default_value_t = 100)]
    publishes: u64,
    /// Bytes of the published `data` (a JSON string of exactly this length, quotes included);
    /// the push adds the hub's envelope `{"op":"pub","channel":..,"offset":..,"data":..}`.
    #[arg(long, short = 's', default_value_t = 100)]
    size: usize,
    /// Publish every T milliseconds instead of lock-step (next publication once every
    /// subscriber has the previous one).
    #[arg(long, value_name = "T")]
    interval_ms: Option<f64>,
    /// The channel (letters, digits and `:_.-` only).
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Handshakes (with their subscribes) in flight at once while connecting.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Lock-stepped publications before the measured ones (not counted).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Seconds to wait for one publication to reach every subscriber before counting the rest
    /// as missing and going on.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// `Authorization: Bearer KEY` for the hub's HTTP API (`--api-key` of the hub).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Lock-step with a harness: create DIR/warm.ready once subscribed and warmed up and wait
    /// for DIR/warm.go, create DIR/done.ready after the measured publications and wait for
    /// DIR/done.go.
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
}

/// What the subscribers saw of one publication.
#[derive(Debug, Clone, Default)]
struct PubStat {
    /// Just before its request was written.
    sent: Option<Instant>,
    received: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// State the reader tasks share with the controller (one thread: no atomics).
struct Shared {
    subscribers: u64,
    /// `{"op":"pub","channel":"C","offset":`
    prefix: Vec<u8>,
    /// The channel's offset when the subscribers subscribed: publication i (from 0, warm-up
    /// included) has offset `base + 1 + i`.
    base: Cell<Option<u64>>,
    stats: RefCell<Vec<PubStat>>,
    /// Deliveries of an offset a subscriber already had (or older).
    duplicates: Cell<u64>,
    /// Offsets skipped by a subscriber (counted when a later one arrives).
    gaps: Cell<u64>,
    /// Pushes with offsets beyond what was published.
    unexpected: Cell<u64>,
    /// Other pushes (join/leave, other channels).
    other: Cell<u64>,
    /// A publication reached its last subscriber.
    complete: Notify,
    /// Connections that ended before the run did.
    failures: RefCell<Failures>,
    stopping: Cell<bool>,
}

impl Shared {
    fn receipt(&self, offset: u64, expected: &mut u64, now: Instant) {
        if offset < *expected {
            self.duplicates.set(self.duplicates.get() + 1);
            return;
        }
        if offset > *expected {
            self.gaps.set(self.gaps.get() + (offset - *expected));
        }
        *expected = offset + 1;
        let Some(base) = self.base.get() else {
            self.unexpected.set(self.unexpected.get() + 1);
            return;
        };
        let mut stats = self.stats.borrow_mut();
        let Some(stat) = offset
            .checked_sub(base + 1)
            .and_then(|i| stats.get_mut(i as usize))
        else {
            self.unexpected.set(self.unexpected.get() + 1);
            return;
        };
        stat.received += 1;
        if stat.first.is_none() {
            stat.first = Some(now);
        }
        stat.last = Some(now);
        if stat.received == self.subscribers {
            self.complete.notify_one();
        }
    }

    /// Waits until publication `i` reached every subscriber or `deadline` passed.
    async fn delivered(&self, i: usize, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.stats.borrow()[i].received >= self.subscribers {
                return true;
            }
            if tokio::time::timeout_at(deadline, self.complete.notified())
                .await
                .is_err()
            {
                return self.stats.borrow()[i].received >= self.subscribers;
            }
        }
    }
}

type Ws = WebSocket<MaybeTlsStream>;

/// The digits right after `at` in `bytes`.
fn number_at(bytes: &[u8], at: usize) -> Option<u64> {
    let digits = bytes.get(at..)?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 || end > 19 {
        return None;
    }
    digits[..end].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The number after the first `key` (for example `"offset":`) in a small JSON text.
fn number_after(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = bytes.windows(key.len()).position(|w| w == key)?;
    number_at(bytes, at + key.len())
}

/// Connects one subscriber and subscribes it; returns the socket and the channel's offset
/// from the reply.
async fn subscribe(
    url: &str,
    options: duplex::ClientOptions,
    command: &str,
) -> Result<(Ws, u64), String> {
    let (mut ws, _response) = duplex::connect_with(url, options)
        .await
        .map_err(|e| format!("connect: {}", common::describe(&e)))?;
    ws.send(Message::text(command.to_owned()))
        .await
        .map_err(|e| format!("subscribe: {}", common::describe(&e)))?;
    loop {
        match ws.recv().await {
            Some(Ok(message)) => {
                let bytes = message.as_bytes();
                if !bytes.starts_with(br#"{"id":"#) {
                    continue; // a push (join) before the reply
                }
                if !bytes.windows(9).any(|w| w == br#""ok":true"#) {
                    return Err(format!(
                        "subscribe refused: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    ));
                }
                let offset = number_after(bytes, br#""offset":"#)
                    .ok_or("subscribe reply without an offset")?;
                return Ok((ws, offset));
            }
            Some(Err(e)) => return Err(format!("subscribe: {}", common::describe(&e))),
            None => return Err("the hub closed the connection before replying".into()),
        }
    }
}

/// One subscriber after its subscribe was acknowledged: reads pushes until the run ends.
async fn read_pushes(mut ws: Ws, shared: Rc<Shared>, base: u64) {
    let mut expected = base + 1;
    loop {
        match ws.recv().await {
            Some(Ok(message)) => {
                let now = Instant::now();
                let bytes = message.as_bytes();
                match bytes
                    .starts_with(&shared.prefix)
                    .then(|| number_at(bytes, shared.prefix.len()))
                    .flatten()
                {
                    Some(offset) => shared.receipt(offset, &mut expected, now),
                    None => shared.other.set(shared.other.get() + 1),
                }
            }
            Some(Err(e)) => {
                if !shared.stopping.get() {
                    shared
                        .failures
                        .borrow_mut()
                        .add(format!("receive: {}", common::describe(&e)));
                }
                return;
            }
            None => {
                if !shared.stopping.get() {
                    let why = match ws.peer_close() {
                        Some(close) => format!(
                            "the hub closed the connection ({} {})",
                            close.code.as_u16(),
                            close.reason
                        ),
                        None => "the hub closed the connection".into(),
                    };
                    shared.failures.borrow_mut().add(why);
                }
                return;
            }
        }
    }
}

/// `POST /api/publish` on one keep-alive connection.
struct Publisher {
    tcp: TcpStream,
    /// The whole request, the same for every publication.
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Publisher {
    async fn connect(
        authority: &str,
        channel: &str,
        size: usize,
        api_key: Option<&str>,
    ) -> Result<Publisher, CliError> {
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| CliError(format!("connecting to {authority} for publishing: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut body = format!(r#"{{"channel":"{channel}","data":""#).into_bytes();
        body.extend((0..size.saturating_sub(2)).map(|i| b'a' + (i % 26) as u8));
        body.extend_from_slice(b"\"}");
        let mut head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if let Some(key) = api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.clone().into_bytes();
        request.extend_from_slice(&body);
        Ok(Publisher {
            tcp,
            request,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Writes one publish request (the same every time).
    async fn send(&mut self) -> Result<(), String> {
        self.tcp
            .write_all(&self.request)
            .await
            .map_err(|e| format!("publish request: {e}"))
    }

    /// Reads one response; returns the offset the hub gave the publication.
    async fn reply(&mut self) -> Result<u64, String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = &self.buf[..end];
                let status = number_at(head, 9).unwrap_or(0);
                let lower = head.to_ascii_lowercase();
                let length = number_after(&lower, b"content-length: ").unwrap_or(0) as usize;
                let total = end + 4 + length;
                while self.buf.len() < total {
                    self.read_more().await?;
                }
                let body = &self.buf[end + 4..total];
                let result = if status == 200 {
                    number_after(body, br#""offset":"#).ok_or_else(|| "reply without offset".into())
                } else {
                    Err(format!(
                        "publish answered {status}: {}",
                        String::from_utf8_lossy(body)
                    ))
                };
                self.buf.drain(..total);
                return result;
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self
            .tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("publish reply: {e}"))?;
        if n == 0 {
            return Err("the hub closed the publishing connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Bytes of the push `{"op":"pub","channel":"C","offset":N,"data":D}` for a `size`-byte `data`.
fn push_len(channel: &str, offset: u64, size: usize) -> usize {
    r#"{"op":"pub","channel":"","offset":,"data":}"#.len()
        + channel.len()
        + offset.to_string().len()
        + size
}

/// Publishes publication `i` and checks the offset the hub gave it.
async fn publish_one(
    shared: &Shared,
    i: usize,
    publisher: &mut Publisher,
    reply_hist: Option<&mut Histogram<u64>>,
    next_offset: &mut u64,
    channel: &str,
) -> Result<(), CliError> {
    let sent = Instant::now();
    shared.stats.borrow_mut()[i].sent = Some(sent);
    publisher.send().await.map_err(CliError)?;
    let offset = publisher.reply().await.map_err(CliError)?;
    if let Some(h) = reply_hist {
        h.saturating_record((sent.elapsed().as_nanos() as u64).max(100));
    }
    if offset != *next_offset {
        return Err(CliError(format!(
            "the hub gave offset {offset}, expected {next_offset}: is someone else publishing \
             to {channel:?}?"
        )));
    }
    *next_offset += 1;
    Ok(())
}

/// `ws://host:port/path` -> (the WebSocket URL with `/ws` as the default path, `host:port`).
fn split_url(url: &str) -> Result<(String, String), CliError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CliError(format!("bad URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(CliError(
                "wss:// is not supported here: publications go over plain HTTP".into(),
            ));
        }
        _ => return Err(CliError(format!("{url:?}: expected ws://HOST:PORT/ws"))),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| CliError(format!("{url:?}: no host")))?
        .as_str()
        .to_owned();
    let authority = if uri.port().is_some() {
        authority
    } else {
        format!("{authority}:80")
    };
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => "/ws",
        Some(path) => path,
    };
    Ok((format!("ws://{authority}{path}"), authority))
}

pub async fn run(args: FanoutArgs) -> Result<ExitCode, CliError> {
    if args.subscribers == 0 || args.publishes == 0 {
        return Err(CliError(
            "--subscribers and --publishes must be at least 1".into(),
        ));
    }
    if args.size < 2 {
        return Err(CliError("--size must be at least 2 (a JSON string)".into()));
    }
    if args.channel.is_empty()
        || args.channel.len() > 255
        || !args
            .channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.-".contains(&b))
    {
        return Err(CliError(
            "--channel: 1..255 letters, digits and :_.- only".into(),
        ));
    }
    if !args.timeout.is_finite()
        || args.timeout <= 0.0
        || args.interval_ms.is_some_and(|t| !t.is_finite() || t < 0.0)
    {
        return Err(CliError(
            "--timeout must be > 0 and --interval-ms >= 0".into(),
        ));
    }
    let mut ws_urls = Vec::with_capacity(args.urls.len());
    let mut authority = None;
    for url in &args.urls {
        let (ws_url, node) = split_url(url)?;
        ws_urls.push(ws_url);
        authority.get_or_insert(node);
    }
    let authority = authority.unwrap_or_default();
    let nodes = ws_urls.len() as u64;
    let sync = SyncDir::new(args.sync_dir.clone());
    let n = args.subscribers;
    let total_pubs = (args.warmup + args.publishes) as usize;
    let timeout = Duration::from_secs_f64(args.timeout);
    let mode = match args.interval_ms {
        Some(t) => format!("every {t} ms"),
        None => "lock-step".into(),
    };
    let mut publisher = Publisher::connect(
        &authority,
        &args.channel,
        args.size,
        args.api_key.as_deref(),
    )
    .await?;
    println!(
        "duplex bench fanout: {} | {n} subscribers on {:?} | {} publishes ({} warm-up) x \
         {} B data | {mode}, via HTTP POST /api/publish to {authority}",
        ws_urls.join(" "),
        args.channel,
        args.publishes,
        args.warmup,
        args.size
    );

    let shared = Rc::new(Shared {
        subscribers: n,
        prefix: format!(r#"{{"op":"pub","channel":"{}","offset":"#, args.channel).into_bytes(),
        base: Cell::new(None),
        stats: RefCell::new(vec![PubStat::default(); total_pubs]),
        duplicates: Cell::new(0),
        gaps: Cell::new(0),
        unexpected: Cell::new(0),
        other: Cell::new(0),
        complete: Notify::new(),
        failures: RefCell::new(Failures::default()),
        stopping: Cell::new(false),
    });

    // Connect and subscribe, `concurrency` at a time; each reader starts at its ack.
    let bar = common::progress_bar(n, "subscribing {bar:40} {pos}/{len} {msg}");
    let options = common::client_options(Duration::from_secs(30));
    let command = format!(
        r#"{{"id":1,"op":"subscribe","channel":"{}"}}"#,
        args.channel
    );
    let started = Instant::now();
    let mut readers = Vec::with_capacity(n as usize);
    let mut connect_failures = Failures::default();
    let mut bases_differ = false;
    {
        let mut subscribing = futures_util::stream::iter(0..n)
            .map(|i| subscribe(&ws_urls[(i % nodes) as usize], options.clone(), &command))
            .buffer_unordered(args.concurrency.max(1));
        let all = async {
            while let Some(result) = subscribing.next().await {
                match result {
                    Ok((ws, base)) => {
                        match shared.base.get() {
                            None => shared.base.set(Some(base)),
                            Some(b) if b != base => bases_differ = true,
                            Some(_) => {}
                        }
                        readers.push(tokio::task::spawn_local(read_pushes(
                            ws,
                            shared.clone(),
                            base,
                        )));
                    }
                    Err(e) => connect_failures.add(e),
                }
                bar.inc(1);
                bar.set_message(format!("{} failed", connect_failures.total()));
            }
        };
        let bound = Duration::from_secs(60 + n / 50);
        if tokio::time::timeout(bound, all).await.is_err() {
            return Err(CliError(format!(
                "subscribing did not finish within {} s",
                bound.as_secs()
            )));
        }
    }
    bar.finish_and_clear();
    let subscribe_secs = started.elapsed().as_secs_f64();
    println!(
        "  subscribed {} in {subscribe_secs:.2} s ({:.0}/s)",
        readers.len(),
        readers.len() as f64 / subscribe_secs
    );
    if connect_failures.total() > 0 {
        println!("{} of {n} subscribers failed:", connect_failures.total());
        connect_failures.print("  ");
        return Err(CliError("not all subscribers could subscribe".into()));
    }
    if bases_differ {
        return Err(CliError(format!(
            "channel {:?} was published to while subscribing (or the nodes disagree on its \
             offset: do they share one broker?): use a channel of its own",
            args.channel
        )));
    }

    // Warm-up, lock-step.
    let mut next_offset = shared.base.get().unwrap_or(0) + 1;
    let push_len = push_len(&args.channel, next_offset + args.warmup, args.size);
    println!(
        "  pushes of {push_len} B (the hub's envelope included), text frames of {} B",
        push_len + if push_len < 126 { 2 } else { 4 }
    );
    let warm = common::progress_bar(args.warmup, "warm-up    {bar:40} {pos}/{len}");
    for i in 0..args.warmup as usize {
        publish_one(
            &shared,
            i,
            &mut publisher,
            None,
            &mut next_offset,
            &args.channel,
        )
        .await?;
        shared
            .delivered(i, tokio::time::Instant::now() + timeout)
            .await;
        warm.inc(1);
    }
    warm.finish_and_clear();
    let bound = Duration::from_secs(660);
    tokio::time::timeout(bound, sync.point("warm", &warm))
        .await
        .map_err(|_| CliError("sync point `warm` timed out".into()))??;

    // Measured publications.
    let bar = common::progress_bar(args.publishes, "publishing {bar:40} {pos}/{len} {msg}");
    let mut reply_hist = common::latency_histogram();
    let first_measured = args.warmup as usize;
    let start = Instant::now();
    let mut timed_out = 0u64;
    match args.interval_ms {
        None => {
            for i in first_measured..total_pubs {
                publish_one(
                    &shared,
                    i,
                    &mut publisher,
                    Some(&mut reply_hist),
                    &mut next_offset,
                    &args.channel,
                )
                .await?;
                if !shared
                    .delivered(i, tokio::time::Instant::now() + timeout)
                    .await
                {
                    timed_out += 1;
                }
                bar.inc(1);
            }
        }
        Some(t) => {
            let mut tick = tokio::time::interval(
                Duration::from_secs_f64(t / 1000.0).max(Duration::from_micros(1)),
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in first_measured..total_pubs {
                tick.tick().await;
                publish_one(
                    &shared,
                    i,
                    &mut publisher,
                    Some(&mut reply_hist),
                    &mut next_offset,
                    &args.channel,
                )
                .await?;
                bar.inc(1);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            for i in first_measured..total_pubs {
                if !shared.delivered(i, deadline).await {
                    timed_out += 1;
                }
            }
        }
    }
    bar.finish_and_clear();
    tokio::time::timeout(bound, sync.point("done", &bar))
        .await
        .map_err(|_| CliError("sync point `done` timed out".into()))??;
    shared.stopping.set(true);
    // Let go without close handshakes: dropping closes the sockets.
    for reader in &readers {
        reader.abort();
    }

    // Report.
    let stats = shared.stats.borrow();
    let measured = &stats[first_measured..];
    let mut to_first = common::latency_histogram();
    let mut to_last = common::latency_histogram();
    let mut deliveries = 0u64;
    let mut missing = 0u64;
    let mut end = start;
    for stat in measured {
        deliveries += stat.received;
        missing += n.saturating_sub(stat.received);
        let (Some(sent), Some(first), Some(last)) = (stat.sent, stat.first, stat.last) else {
            continue;
        };
        end = end.max(last);
        to_first.saturating_record((first.duration_since(sent).as_nanos() as u64).max(100));
        // The last subscriber's receipt, only for publications every subscriber got.
        if stat.received >= n {
            to_last.saturating_record((last.duration_since(sent).as_nanos() as u64).max(100));
        }
    }
    let warm_missing: u64 = stats[..first_measured]
        .iter()
        .map(|s| n.saturating_sub(s.received))
        .sum();
    let secs = end.duration_since(start).as_secs_f64().max(1e-9);
    let rate = deliveries as f64 / secs;
    let [f50, f99, _, fmax] = common::quantiles_us(&to_first);
    let [l50, l99, _, lmax] = common::quantiles_us(&to_last);
    let [r50, r99, _, _] = common::quantiles_us(&reply_hist);
    let failures = shared.failures.borrow();
    let duplicates = shared.duplicates.get();
    let unexpected = shared.unexpected.get();
    println!(
        "  {} publishes, {deliveries} deliveries in {secs:.3} s: {rate:.0} deliveries/s",
        args.publishes
    );
    println!(
        "  time to first subscriber: p50 {}  p99 {}  max {}",
        common::human_us(f50),
        common::human_us(f99),
        common::human_us(fmax)
    );
    println!(
        "  time to last subscriber:  p50 {}  p99 {}  max {}",
        common::human_us(l50),
        common::human_us(l99),
        common::human_us(lmax)
    );
    println!(
        "  publish reply (HTTP):     p50 {}  p99 {}",
        common::human_us(r50),
        common::human_us(r99)
    );
    println!(
        "  missing {missing} (warm-up {warm_missing}), duplicate {duplicates}, gaps seen {}, \
         unexpected {unexpected}, other pushes {}, publications that timed out {timed_out}",
        shared.gaps.get(),
        shared.other.get()
    );
    if failures.total() > 0 {
        println!("  {} subscribers failed:", failures.total());
        failures.print("    ");
    }
    println!(
        "RESULT subscribers={n} nodes={nodes} publishes={} deliveries={deliveries} secs={secs:.4} \
         deliveries_per_sec={rate:.1} first_p50_us={f50:.1} first_p99_us={f99:.1} \
         last_p50_us={l50:.1} last_p99_us={l99:.1} last_max_us={lmax:.1} reply_p50_us={r50:.1} \
         missing={} duplicate={duplicates} unexpected={unexpected} failed={} size={} \
         push_bytes={push_len} subscribe_secs={subscribe_secs:.3}",
        args.publishes,
        missing + warm_missing,
        failures.total(),
        args.size
    );
    if missing + warm_missing + duplicates + unexpected + failures.total() > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_cheaply() {
        let push = br#"{"op":"pub","channel":"bench","offset":1234,"data":"x"}"#;
        let prefix = br#"{"op":"pub","channel":"bench","offset":"#;
        assert!(push.starts_with(prefix));
        assert_eq!(number_at(push, prefix.len()), Some(1234));
        assert_eq!(
            number_after(
                br#"{"id":1,"ok":true,"epoch":"e","offset":15}"#,
                br#""offset":"#
            ),
            Some(15)
        );
        assert_eq!(number_at(b"x", 0), None);
        assert_eq!(number_at(b"99999999999999999999", 0), None);
    }

    #[test]
    fn urls_default_to_ws_path() {
        let (url, authority) = split_url("ws://127.0.0.1:9000").unwrap();
        assert_eq!(url, "ws://127.0.0.1:9000/ws");
        assert_eq!(authority, "127.0.0.1:9000");
        assert!(split_url("wss://h:1/ws").is_err());
    }
}
