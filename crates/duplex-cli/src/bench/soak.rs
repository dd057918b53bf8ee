//! `duplex bench soak`: the hub under a long, steady, mixed load, with every client's stream
//! checked exactly. bench/soak.sh runs it next to a hub it samples (RSS, descriptors, CPU).
//!
//! ```text
//! connect + subscribe N clients (K handshakes in flight), client i on channel i mod C
//!   --> t=0: publish R/s round robin over the C channels (one keep-alive POST /api/publish)
//!       every --reconnect-every s: --reconnect-percent of the clients (random) close, stay
//!         away up to --max-offline-ms, come back with `since` and must recover exactly
//!       --churn-rate/s: a random client subscribes to an extra channel (one of the C, or a
//!         fresh name nobody publishes to), holds it --churn-hold s, unsubscribes
//!       every --report-every s: a PROGRESS line
//!   --> after --minutes: publishing stops, every client must reach its channel's last offset
//!       (bounded by --drain-timeout) --> RESULT line; exit 1 on any violation
//! ```
//!
//! What is checked, per client and channel, by offset: each publication arrives exactly once,
//! in order, offsets contiguous from the subscribe reply's `offset` + 1 (a skipped offset is a
//! gap, an offset already had is a duplicate, one that was skipped and arrives late is out of
//! order); the publication's own sequence number `n` (in its data, `{"n":N,"p":"..."}`)
//! matches its offset (`offset = base + n`, `base` being the channel's offset when the run
//! began: the generator is the channel's only publisher); no publication of a channel
//! arrives before its subscribe reply or after its unsubscribe reply, and none of a fresh
//! channel at all; a resubscribe with `since` says `recovered: true` and carries exactly the
//! offsets missed, with live pushes going on right after them; at the end every client has
//! its channel's last offset. Join/leave pushes are counted, not checked. Any connection the
//! hub closes (or that fails) during the run is a violation too; the client then comes back
//! with `since` like a reconnecting one.
//!
//! Publications go over HTTP (`POST /api/publish`, with `--api-key`), not a publisher
//! WebSocket: the hub rate-limits WebSocket publishes per connection, and one keep-alive
//! connection with one request in flight keeps the per-channel order trivially the order sent.
//!
//! The whole generator is one thread (see `common::on_own_thread`): counters are `Cell`s.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use duplex::{CloseCode, MaybeTlsStream, Message, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use super::common::{self, Failures, SyncDir};
use crate::CliError;

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// The hub's WebSocket URL, `ws://HOST:PORT/ws` (the path defaults to `/ws`);
    /// publications go to `http://HOST:PORT/api/publish`.
    url: String,
    /// Subscribed clients, spread evenly over the channels. Each needs a file descriptor here
    /// and one in the hub (and the hub's `--max-connections`).
    #[arg(long, short = 'c', default_value_t = 15_000)]
    connections: u64,
    /// Channels the clients subscribe to, named PREFIX-0 .. PREFIX-(C-1).
    #[arg(long, default_value_t = 100)]
    channels: u64,
    /// Minutes of steady load after every client subscribed.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Publications per second in all, round robin over the channels (steady: one every 1/R s).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Percentage of the clients that close and come back with `since` in each reconnect
    /// round.
    #[arg(long, default_value_t = 10.0)]
    reconnect_percent: f64,
    /// Seconds between reconnect rounds (the first one a quarter period in, so with the
    /// default settings the rounds fall between progress lines: at 15 s, 75 s, ...).
    #[arg(long, default_value_t = 60.0)]
    reconnect_every: f64,
    /// A reconnecting client stays away a random time up to this many milliseconds, so it
    /// misses publications it must then recover.
    #[arg(long, default_value_t = 3000)]
    max_offline_ms: u64,
    /// Extra subscriptions started per second, each on a random client: subscribe, hold,
    /// unsubscribe. Half go to one of the C channels (their stream is checked), half to a
    /// fresh name nobody publishes to (a channel the hub creates and should free again).
    #[arg(long, default_value_t = 10.0)]
    churn_rate: f64,
    /// Seconds an extra subscription is held before its unsubscribe.
    #[arg(long, default_value_t = 5.0)]
    churn_hold: f64,
    /// Seconds between PROGRESS lines.
    #[arg(long, default_value_t = 30.0)]
    report_every: f64,
    /// Handshakes (with their subscribes) in flight at once, at the start and when
    /// reconnecting.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Padding bytes in each publication's data.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Channel name prefix (letters, digits and `:_.-`).
    #[arg(long, default_value = "soak")]
    prefix: String,
    /// Seconds the clients get at the end to receive the last publications.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// `Authorization: Bearer KEY` for `/api/publish` (the hub's `--api-key`).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Lock-step with a harness: after the drain, with every client still connected, create
    /// DIR/end.ready and wait for DIR/end.go (bench/soak.sh samples the hub in between).
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
    /// Seed of the random choices (which clients reconnect, for how long, which churn);
    /// printed at the start, so a run's choices can be repeated.
    #[arg(long)]
    seed: Option<u64>,
}

/// xorshift64*: reproducible choices from `--seed`, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // A zero state would stay zero.
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 for n = 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Picks `k` distinct indices of `order` (a permutation kept between calls): a partial
/// Fisher-Yates shuffle, so each round's choice is uniform and needs no set.
fn pick_distinct(order: &mut [usize], k: usize, rng: &mut Rng) -> Vec<usize> {
    let k = k.min(order.len());
    for i in 0..k {
        let j = i + rng.below((order.len() - i) as u64) as usize;
        order.swap(i, j);
    }
    order[..k].to_vec()
}

/// Counters every task adds to (one thread: `Cell`s).
#[derive(Debug, Default)]
struct Counters {
    open: Cell<u64>,
    /// Clients whose first subscribe was answered (or that gave up).
    started: Cell<u64>,
    published: Cell<u64>,
    /// Publications received and verified, live and recovered.
    checked: Cell<u64>,
    recovered_publications: Cell<u64>,
    gaps: Cell<u64>,
    duplicates: Cell<u64>,
    out_of_order: Cell<u64>,
    /// A publication whose `n` does not match its offset.
    mismatched: Cell<u64>,
    /// A publication of a channel the client was not subscribed to at that point, a `gap` or
    /// `reset` push, a reply out of command order.
    unexpected: Cell<u64>,
    reconnects: Cell<u64>,
    recoveries_exact: Cell<u64>,
    recoveries_failed: Cell<u64>,
    churn_subscribes: Cell<u64>,
    churn_unsubscribes: Cell<u64>,
    /// Churn commands that found their client busy with another extra subscription.
    churn_skipped: Cell<u64>,
    /// Connections the hub closed or that failed while the run was on.
    dropped: Cell<u64>,
    /// Join/leave and other pushes.
    other: Cell<u64>,
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get() + n);
}

/// One of the C channels: where its offsets start and how far publishing got.
#[derive(Debug)]
struct Channel {
    name: String,
    /// The channel's offset before the run's first publication: publication `n` (from 1) of
    /// the run has offset `base + n`. Set by the first subscribe reply.
    base: Cell<Option<u64>>,
    epoch: RefCell<Option<Rc<str>>>,
    /// The offset of the last publication the hub acknowledged.
    top: Cell<u64>,
    /// Publications sent to it so far.
    sent: Cell<u64>,
}

struct Shared {
    counters: Counters,
    channels: Vec<Channel>,
    /// Per client: the next offset it expects on its channel (`u64::MAX` once it gave up).
    positions: Vec<Cell<u64>>,
    failures: RefCell<Failures>,
    /// Handshakes in flight.
    handshakes: Semaphore,
    url: String,
    options: duplex::ClientOptions,
    /// The run is over: connection ends are expected.
    stopping: Cell<bool>,
    /// Publishing stops after the current publication.
    stop_publishing: Cell<bool>,
    /// A client got its first subscribe reply (or gave up).
    started: tokio::sync::Notify,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failures.borrow_mut().add(what);
    }

    /// Every violation of the stream rules, failures included.
    fn violations(&self) -> u64 {
        let c = &self.counters;
        c.gaps.get()
            + c.duplicates.get()
            + c.out_of_order.get()
            + c.mismatched.get()
            + c.unexpected.get()
            + c.recoveries_failed.get()
            + c.dropped.get()
            + self.failures.borrow().total()
    }
}

/// One subscription's stream as a client sees it.
#[derive(Debug, Clone, Default)]
struct Stream {
    /// The next offset expected.
    expected: u64,
    /// Offsets skipped by a gap (first, last), so one arriving late counts as out of order
    /// rather than as a duplicate. Bounded: a stream with that many gaps is reported anyway.
    skipped: Vec<(u64, u64)>,
}

/// What one received publication was.
#[derive(Debug, PartialEq, Eq)]
enum Receipt {
    InOrder,
    /// This many offsets were skipped before it.
    Gap(u64),
    Duplicate,
    OutOfOrder,
}

impl Stream {
    fn after(offset: u64) -> Stream {
        Stream {
            expected: offset + 1,
            skipped: Vec::new(),
        }
    }

    fn receive(&mut self, offset: u64) -> Receipt {
        if offset == self.expected {
            self.expected += 1;
            return Receipt::InOrder;
        }
        if offset > self.expected {
            let skipped = offset - self.expected;
            if self.skipped.len() < 64 {
                self.skipped.push((self.expected, offset - 1));
            }
            self.expected = offset + 1;
            return Receipt::Gap(skipped);
        }
        match self
            .skipped
            .iter()
            .position(|&(a, b)| (a..=b).contains(&offset))
        {
            Some(i) => {
                // Each skipped offset may arrive late once; a second copy is a duplicate.
                let (a, b) = self.skipped[i];
                self.skipped.remove(i);
                if a < offset {
                    self.skipped.push((a, offset - 1));
                }
                if offset < b {
                    self.skipped.push((offset + 1, b));
                }
                Receipt::OutOfOrder
            }
            None => Receipt::Duplicate,
        }
    }
}

/// Counts one publication of channel `channel` received at `offset` with sequence number `n`.
fn check(shared: &Shared, channel: &Channel, stream: &mut Stream, offset: u64, n: Option<u64>) {
    let c = &shared.counters;
    match stream.receive(offset) {
        Receipt::InOrder => {}
        Receipt::Gap(k) => add(&c.gaps, k),
        Receipt::Duplicate => add(&c.duplicates, 1),
        Receipt::OutOfOrder => add(&c.out_of_order, 1),
    }
    let expected_offset = channel.base.get().zip(n).map(|(base, n)| base + n);
    if expected_offset != Some(offset) {
        add(&c.mismatched, 1);
    }
    add(&c.checked, 1);
}

// --- parsing: the hub's envelopes are fixed; only what is checked is read ----------------

/// The digits at the start of `bytes`.
fn number_at(bytes: &[u8]) -> Option<u64> {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    if end == 0 || end > 19 {
        return None;
    }
    bytes[..end].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn find(bytes: &[u8], key: &[u8]) -> Option<usize> {
    bytes.windows(key.len()).position(|w| w == key)
}

/// The number right after the first `key` in `bytes`.
fn number_after(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(bytes, key)? + key.len();
    number_at(&bytes[at..])
}

/// The JSON string (without escapes, as the hub's epochs and our channel names are) after
/// the first `key` (ending in `"`).
fn string_after<'a>(bytes: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(bytes, key)? + key.len();
    let rest = &bytes[at..];
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then_some(&rest[..end])
}

/// A message from the hub, as far as the soak cares.
#[derive(Debug, PartialEq, Eq)]
enum Incoming<'a> {
    /// `{"op":"pub","channel":C,"offset":O,"data":{"n":N,...}}`
    Pub {
        channel: &'a [u8],
        offset: u64,
        n: Option<u64>,
    },
    /// A command reply, `{"id":I,...}`.
    Reply { id: Option<u64>, body: &'a [u8] },
    /// `gap` or `reset`: the hub lost part of a stream (never expected from one process).
    Loss,
    /// join, leave, anything else.
    Other,
}

fn parse(bytes: &[u8]) -> Incoming<'_> {
    const PUB: &[u8] = br#"{"op":"pub","channel":""#;
    if let Some(rest) = bytes.strip_prefix(PUB) {
        let Some(end) = rest.iter().position(|&b| b == b'"') else {
            return Incoming::Other;
        };
        let (channel, rest) = rest.split_at(end);
        let Some(offset) = rest.strip_prefix(br#"","offset":"#).and_then(number_at) else {
            return Incoming::Other;
        };
        return Incoming::Pub {
            channel,
            offset,
            n: number_after(rest, br#""n":"#),
        };
    }
    if let Some(rest) = bytes.strip_prefix(br#"{"id":"#) {
        return Incoming::Reply {
            id: number_at(rest),
            body: bytes,
        };
    }
    if bytes.starts_with(br#"{"op":"gap""#) || bytes.starts_with(br#"{"op":"reset""#) {
        return Incoming::Loss;
    }
    Incoming::Other
}

/// A successful subscribe reply.
#[derive(Debug, PartialEq, Eq)]
struct Subscribed {
    epoch: String,
    offset: u64,
    /// `recovered` (with `since` only).
    recovered: Option<bool>,
    /// The recovered publications: offset and sequence number.
    publications: Vec<(u64, Option<u64>)>,
}

/// Reads a subscribe reply; `Err` carries the hub's refusal.
fn parse_subscribed(body: &[u8]) -> Result<Subscribed, String> {
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if find(body, br#""ok":true"#).is_none() {
        return Err(format!("subscribe refused: {}", text()));
    }
    // The publications come last; the fields before them are the reply's own.
    let (head, list) = match find(body, br#""publications":["#) {
        Some(at) => body.split_at(at),
        None => (body, &b""[..]),
    };
    let epoch =
        string_after(head, br#""epoch":""#).ok_or_else(|| format!("no epoch: {}", text()))?;
    let offset =
        number_after(head, br#""offset":"#).ok_or_else(|| format!("no offset: {}", text()))?;
    let recovered = if find(head, br#""recovered":true"#).is_some() {
        Some(true)
    } else if find(head, br#""recovered":false"#).is_some() {
        Some(false)
    } else {
        None
    };
    let mut publications = Vec::new();
    let mut rest = list;
    while let Some(at) = find(rest, br#"{"offset":"#) {
        rest = &rest[at + br#"{"offset":"#.len()..];
        let offset = number_at(rest).ok_or_else(|| format!("bad publication: {}", text()))?;
        // Our data is `{"n":N,"p":"..."}`: its `n` comes before the next publication.
        let next = find(rest, br#"{"offset":"#).unwrap_or(rest.len());
        publications.push((offset, number_after(&rest[..next], br#""n":"#)));
    }
    Ok(Subscribed {
        epoch: String::from_utf8_lossy(epoch).into_owned(),
        offset,
        recovered,
        publications,
    })
}

// --- clients --------------------------------------------------------------------------------

type Ws = WebSocket<MaybeTlsStream>;

/// What the controller tells a client.
#[derive(Debug)]
enum Cmd {
    /// Close, stay away this long, come back with `since`.
    Reconnect(Duration),
    /// Subscribe to an extra channel for `hold`, then unsubscribe.
    Churn { target: ChurnTarget, hold: Duration },
}

#[derive(Debug, Clone)]
enum ChurnTarget {
    /// One of the C channels (by index): its stream is checked.
    Channel(usize),
    /// A name nobody publishes to.
    Fresh(String),
}

/// An extra subscription in progress.
#[derive(Debug)]
struct Extra {
    target: ChurnTarget,
    name: String,
    /// `None` until the subscribe reply.
    stream: Option<Stream>,
    hold: Duration,
    unsubscribe_at: Option<tokio::time::Instant>,
    /// The unsubscribe was sent; its reply ends the subscription.
    leaving: bool,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Subscribe,
    Unsubscribe,
}

/// How a connected session ended.
enum End {
    Reconnect(Duration),
    Lost(String),
    /// The controller is gone: the run is over.
    Stop,
}

/// Connects and subscribes to `channel` (with `since` if given); the subscribe reply comes
/// back parsed. A publication of that channel before the reply is a violation.
async fn open(
    shared: &Shared,
    channel: &Channel,
    since: Option<(&str, u64)>,
) -> Result<(Ws, Subscribed), String> {
    let _permit = shared
        .handshakes
        .acquire()
        .await
        .map_err(|_| "handshakes closed".to_owned())?;
    let (mut ws, _response) = duplex::connect_with(&shared.url, shared.options.clone())
        .await
        .map_err(|e| format!("connect: {}", common::describe(&e)))?;
    let command = match since {
        None => format!(
            r#"{{"id":0,"op":"subscribe","channel":"{}"}}"#,
            channel.name
        ),
        Some((epoch, offset)) => format!(
            r#"{{"id":0,"op":"subscribe","channel":"{}","since":{{"epoch":"{epoch}","offset":{offset}}}}}"#,
            channel.name
        ),
    };
    ws.send(Message::text(command))
        .await
        .map_err(|e| format!("subscribe: {}", common::describe(&e)))?;
    loop {
        match ws.recv().await {
            Some(Ok(message)) => match parse(message.as_bytes()) {
                Incoming::Reply { body, .. } => return Ok((ws, parse_subscribed(body)?)),
                Incoming::Pub { .. } | Incoming::Loss => add(&shared.counters.unexpected, 1),
                Incoming::Other => add(&shared.counters.other, 1),
            },
            Some(Err(e)) => return Err(format!("subscribe: {}", common::describe(&e))),
            None => return Err("the hub closed the connection before replying".into()),
        }
    }
}

/// One client for the whole run: subscribes, then runs sessions, reconnecting with `since`
/// when told to (or when its connection is lost).
async fn client(shared: Rc<Shared>, id: usize, mut commands: mpsc::UnboundedReceiver<Cmd>) {
    let channel = &shared.channels[id % shared.channels.len()];
    let c = &shared.counters;
    let give_up = |why: String| {
        shared.fail(why);
        shared.positions[id].set(u64::MAX);
    };
    // The first subscribe: a few attempts, each failure counted.
    let mut attempts = 0;
    let (mut ws, mut stream) = loop {
        match open(&shared, channel, None).await {
            Ok((ws, reply)) => {
                if let Some(why) = note_position(channel, &reply) {
                    shared.fail(why);
                }
                break (ws, Stream::after(reply.offset));
            }
            Err(e) => {
                attempts += 1;
                if attempts >= 3 {
                    give_up(format!("client gave up: {e}"));
                    add(&c.started, 1);
                    shared.started.notify_one();
                    return;
                }
                shared.fail(e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    add(&c.open, 1);
    add(&c.started, 1);
    shared.started.notify_one();
    loop {
        shared.positions[id].set(stream.expected);
        let end = session(&shared, id, channel, &mut ws, &mut stream, &mut commands).await;
        c.open.set(c.open.get().saturating_sub(1));
        let offline = match end {
            End::Stop => return,
            End::Reconnect(offline) => {
                // Pushes arriving during the close are discarded: they are recovered.
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    ws.close(CloseCode::NORMAL, "soak reconnect"),
                )
                .await;
                offline
            }
            End::Lost(why) => {
                if shared.stopping.get() {
                    return;
                }
                add(&c.dropped, 1);
                shared.fail(why);
                Duration::from_secs(1)
            }
        };
        drop(ws);
        tokio::time::sleep(offline).await;
        // Back with `since`: the last offset seen.
        let mut attempts = 0;
        ws = loop {
            let epoch = channel.epoch.borrow().clone().unwrap_or_else(|| "".into());
            match open(&shared, channel, Some((&epoch, stream.expected - 1))).await {
                Ok((ws, reply)) => {
                    add(&c.reconnects, 1);
                    recover(&shared, channel, &mut stream, &reply);
                    break ws;
                }
                Err(e) => {
                    attempts += 1;
                    if attempts >= 5 || shared.stopping.get() {
                        give_up(format!("client gave up reconnecting: {e}"));
                        return;
                    }
                    shared.fail(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        add(&c.open, 1);
    }
}

/// Records the channel's epoch and base from a first subscribe; says what is wrong if the
/// reply disagrees with what earlier replies said.
fn note_position(channel: &Channel, reply: &Subscribed) -> Option<String> {
    let mut epoch = channel.epoch.borrow_mut();
    match epoch.as_deref() {
        None => *epoch = Some(reply.epoch.as_str().into()),
        Some(known) if known != reply.epoch => {
            return Some(format!(
                "{}: epoch {} in a subscribe reply, {known} before",
                channel.name, reply.epoch
            ));
        }
        Some(_) => {}
    }
    match channel.base.get() {
        None => channel.base.set(Some(reply.offset)),
        // Nothing is published while the clients subscribe.
        Some(base) if base != reply.offset && channel.sent.get() == 0 => {
            return Some(format!(
                "{} was published to while the clients subscribed ({base}, then {}): \
                 is someone else publishing? Use another --prefix",
                channel.name, reply.offset
            ));
        }
        Some(_) => {}
    }
    None
}

/// Checks a resubscribe's recovery: `recovered: true`, exactly the offsets after the last one
/// seen up to the reply's offset, in order; the stream goes on from the reply's offset.
fn recover(shared: &Shared, channel: &Channel, stream: &mut Stream, reply: &Subscribed) {
    let c = &shared.counters;
    let from = stream.expected;
    let offsets: Vec<u64> = reply.publications.iter().map(|p| p.0).collect();
    let exact = reply.recovered == Some(true)
        && channel.epoch.borrow().as_deref() == Some(reply.epoch.as_str())
        && reply.offset + 1 >= from
        && offsets.len() as u64 == reply.offset + 1 - from
        && offsets.iter().zip(from..).all(|(&a, b)| a == b);
    for &(offset, n) in &reply.publications {
        check(shared, channel, stream, offset, n);
    }
    add(&c.recovered_publications, reply.publications.len() as u64);
    if exact {
        add(&c.recoveries_exact, 1);
    } else {
        add(&c.recoveries_failed, 1);
        shared.fail(format!(
            "{}: since {} recovered {:?}, offset {}, {} publications ({:?}..{:?})",
            channel.name,
            from - 1,
            reply.recovered,
            reply.offset,
            offsets.len(),
            offsets.first(),
            offsets.last()
        ));
        // Live publications continue after the reply's offset whatever came back.
        stream.expected = reply.offset + 1;
    }
}

/// One connected session: receives and checks, runs the controller's commands.
async fn session(
    shared: &Shared,
    id: usize,
    channel: &Channel,
    ws: &mut Ws,
    stream: &mut Stream,
    commands: &mut mpsc::UnboundedReceiver<Cmd>,
) -> End {
    let c = &shared.counters;
    let mut extra: Option<Extra> = None;
    let mut pending: VecDeque<(u64, Pending)> = VecDeque::new();
    let mut next_id = 1u64;
    let far = Duration::from_secs(86_400 * 365);
    loop {
        let unsubscribe_at = extra
            .as_ref()
            .and_then(|e| e.unsubscribe_at)
            .unwrap_or_else(|| tokio::time::Instant::now() + far);
        tokio::select! {
            message = ws.recv() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return End::Lost(format!("receive: {}", common::describe(&e))),
                    None => {
                        return End::Lost(match ws.peer_close() {
                            Some(close) => format!(
                                "the hub closed the connection ({} {})",
                                close.code.as_u16(),
                                close.reason
                            ),
                            None => "the hub closed the connection".into(),
                        });
                    }
                };
                match parse(message.as_bytes()) {
                    Incoming::Pub { channel: name, offset, n } => {
                        if name == channel.name.as_bytes() {
                            check(shared, channel, stream, offset, n);
                            shared.positions[id].set(stream.expected);
                        } else {
                            match extra.as_mut() {
                                Some(Extra { target: ChurnTarget::Channel(i), name: extra_name, stream: Some(s), .. })
                                    if name == extra_name.as_bytes() =>
                                {
                                    check(shared, &shared.channels[*i], s, offset, n);
                                }
                                _ => add(&c.unexpected, 1),
                            }
                        }
                    }
                    Incoming::Reply { id, body } => {
                        let Some((expected_id, kind)) = pending.pop_front() else {
                            add(&c.unexpected, 1);
                            continue;
                        };
                        if id != Some(expected_id) {
                            add(&c.unexpected, 1);
                        }
                        let Some(e) = extra.as_mut() else {
                            add(&c.unexpected, 1);
                            continue;
                        };
                        match kind {
                            Pending::Subscribe => match parse_subscribed(body) {
                                Ok(reply) => {
                                    add(&c.churn_subscribes, 1);
                                    e.stream = Some(Stream::after(reply.offset));
                                    e.unsubscribe_at = Some(tokio::time::Instant::now() + e.hold);
                                }
                                Err(why) => {
                                    shared.fail(format!("churn {}: {why}", e.name));
                                    extra = None;
                                }
                            },
                            Pending::Unsubscribe => {
                                if find(body, br#""ok":true"#).is_some() {
                                    add(&c.churn_unsubscribes, 1);
                                } else {
                                    shared.fail(format!(
                                        "churn unsubscribe {}: {}",
                                        e.name,
                                        String::from_utf8_lossy(&body[..body.len().min(200)])
                                    ));
                                }
                                extra = None;
                            }
                        }
                    }
                    Incoming::Loss => add(&c.unexpected, 1),
                    Incoming::Other => add(&c.other, 1),
                }
            }
            command = commands.recv() => match command {
                None => return End::Stop,
                Some(Cmd::Reconnect(offline)) => return End::Reconnect(offline),
                Some(Cmd::Churn { target, hold }) => {
                    if extra.is_some() {
                        add(&c.churn_skipped, 1);
                        continue;
                    }
                    let name = match &target {
                        ChurnTarget::Channel(i) => shared.channels[*i].name.clone(),
                        ChurnTarget::Fresh(name) => name.clone(),
                    };
                    if name == channel.name {
                        add(&c.churn_skipped, 1);
                        continue;
                    }
                    let command = format!(r#"{{"id":{next_id},"op":"subscribe","channel":"{name}"}}"#);
                    if let Err(e) = ws.send(Message::text(command)).await {
                        return End::Lost(format!("send: {}", common::describe(&e)));
                    }
                    pending.push_back((next_id, Pending::Subscribe));
                    next_id += 1;
                    extra = Some(Extra { target, name, stream: None, hold, unsubscribe_at: None, leaving: false });
                }
            },
            () = tokio::time::sleep_until(unsubscribe_at) => {
                let Some(e) = extra.as_mut().filter(|e| !e.leaving) else { continue };
                e.unsubscribe_at = None;
                e.leaving = true;
                let command = format!(r#"{{"id":{next_id},"op":"unsubscribe","channel":"{}"}}"#, e.name);
                if let Err(e) = ws.send(Message::text(command)).await {
                    return End::Lost(format!("send: {}", common::describe(&e)));
                }
                pending.push_back((next_id, Pending::Unsubscribe));
                next_id += 1;
            }
        }
    }
}

// --- publishing -----------------------------------------------------------------------------

/// `POST /api/publish` on one keep-alive connection, one request in flight.
struct Publisher {
    tcp: TcpStream,
    authority: String,
    api_key: Option<String>,
    padding: String,
    buf: Vec<u8>,
}

impl Publisher {
    async fn connect(
        authority: &str,
        api_key: Option<String>,
        size: usize,
    ) -> Result<Self, CliError> {
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| CliError(format!("connecting to {authority} for publishing: {e}")))?;
        let _ = tcp.set_nodelay(true);
        Ok(Publisher {
            tcp,
            authority: authority.to_owned(),
            api_key,
            padding: (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Publishes `{"n":n,"p":"..."}` to `channel`; returns the offset the hub gave it.
    async fn publish(&mut self, channel: &str, n: u64) -> Result<u64, String> {
        let body = format!(
            r#"{{"channel":"{channel}","data":{{"n":{n},"p":"{}"}}}}"#,
            self.padding
        );
        let mut request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            self.authority,
            body.len()
        );
        if let Some(key) = &self.api_key {
            request.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        self.tcp
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("publish request: {e}"))?;
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = self.buf[..end].to_ascii_lowercase();
                let status = head.get(9..).and_then(number_at).unwrap_or(0);
                let length = number_after(&head, b"content-length: ").unwrap_or(0) as usize;
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

/// Publishes every 1/rate s, round robin over the channels, until told to stop; a failed
/// publication ends publishing (its outcome is unknown, so the sequence could not stay exact).
async fn publish_loop(shared: Rc<Shared>, mut publisher: Publisher, rate: f64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Publication k is due at k/rate: one delayed (the thread was busy reading) goes out as
    // soon as it can, so the rate holds on average.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut k = 0usize;
    while !shared.stop_publishing.get() {
        tick.tick().await;
        let channel = &shared.channels[k % shared.channels.len()];
        k += 1;
        let n = channel.sent.get() + 1;
        match publisher.publish(&channel.name, n).await {
            Ok(offset) => {
                channel.sent.set(n);
                channel.top.set(offset);
                add(&shared.counters.published, 1);
                if channel.base.get().map(|base| base + n) != Some(offset) {
                    add(&shared.counters.mismatched, 1);
                    shared.fail(format!(
                        "{}: publication {n} got offset {offset}, expected {:?}",
                        channel.name,
                        channel.base.get().map(|base| base + n)
                    ));
                }
            }
            Err(e) => {
                shared.fail(format!("publishing stopped: {e}"));
                return;
            }
        }
    }
}

// --- the controller -------------------------------------------------------------------------

/// `ws://host:port/path` -> (the WebSocket URL with `/ws` as the default path, `host:port`).
fn split_url(url: &str) -> Result<(String, String), CliError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CliError(format!("bad URL {url:?}: {e}")))?;
    if uri.scheme_str() != Some("ws") {
        return Err(CliError(format!(
            "{url:?}: expected ws://HOST:PORT/ws (publications go over plain HTTP)"
        )));
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

fn validate(args: &SoakArgs) -> Result<(), CliError> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let checks = [
        (args.connections > 0, "--connections must be at least 1"),
        (args.channels > 0, "--channels must be at least 1"),
        (positive(args.minutes), "--minutes must be > 0"),
        (positive(args.rate), "--rate must be > 0"),
        (
            args.reconnect_percent.is_finite() && (0.0..=100.0).contains(&args.reconnect_percent),
            "--reconnect-percent must be within 0..100",
        ),
        (
            positive(args.reconnect_every),
            "--reconnect-every must be > 0",
        ),
        (
            args.churn_rate.is_finite() && args.churn_rate >= 0.0,
            "--churn-rate must be >= 0",
        ),
        (
            args.churn_hold.is_finite() && args.churn_hold >= 0.0,
            "--churn-hold must be >= 0",
        ),
        (positive(args.report_every), "--report-every must be > 0"),
        (positive(args.drain_timeout), "--drain-timeout must be > 0"),
        (
            !args.prefix.is_empty()
                && args.prefix.len() <= 200
                && args
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":_.-".contains(&b)),
            "--prefix: 1..200 letters, digits and :_.- only",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, why)) => Err(CliError((*why).into())),
        None => Ok(()),
    }
}

/// One `KIND key=value ...` line (bench/soak.sh samples the hub at each `PROGRESS` line) at
/// `t` seconds.
fn progress_line(kind: &str, shared: &Shared, t: f64) -> String {
    let c = &shared.counters;
    format!(
        "{kind} t={t:.0} open={} published={} checked={} gaps={} duplicates={} \
         out_of_order={} mismatched={} unexpected={} reconnects={} recoveries_exact={} \
         recoveries_failed={} recovered_publications={} churn_subscribes={} \
         churn_unsubscribes={} dropped={} failures={} other_pushes={}",
        c.open.get(),
        c.published.get(),
        c.checked.get(),
        c.gaps.get(),
        c.duplicates.get(),
        c.out_of_order.get(),
        c.mismatched.get(),
        c.unexpected.get(),
        c.reconnects.get(),
        c.recoveries_exact.get(),
        c.recoveries_failed.get(),
        c.recovered_publications.get(),
        c.churn_subscribes.get(),
        c.churn_unsubscribes.get(),
        c.dropped.get(),
        shared.failures.borrow().total(),
        c.other.get(),
    )
}

/// Publications a client has yet to receive: its channel's last offset minus what it has.
fn missing(shared: &Shared) -> (u64, u64) {
    let mut missing = 0;
    let mut behind = 0;
    for (id, position) in shared.positions.iter().enumerate() {
        let channel = &shared.channels[id % shared.channels.len()];
        let expected = position.get();
        if expected == u64::MAX {
            continue; // gave up: counted as a failure already
        }
        let wanted = channel.top.get().max(channel.base.get().unwrap_or(0)) + 1;
        if expected < wanted {
            missing += wanted - expected;
            behind += 1;
        }
    }
    (missing, behind)
}

/// What a run found, for the exit code (and the tests).
#[derive(Debug, Clone, Copy)]
struct Summary {
    violations: u64,
    published: u64,
    checked: u64,
    reconnects: u64,
    recoveries_exact: u64,
    recoveries_failed: u64,
    churn_subscribes: u64,
    churn_unsubscribes: u64,
    missing: u64,
}

pub async fn run(args: SoakArgs) -> Result<ExitCode, CliError> {
    let s = soak(args).await?;
    let verdict = if s.violations == 0 {
        "every stream exact".to_owned()
    } else {
        format!("{} VIOLATIONS (see above)", s.violations)
    };
    println!(
        "soak: {} publications, {} deliveries checked, {} reconnects ({} recovered exactly, \
         {} not), churn {}/{} subscribes/unsubscribes, {} missing at the end: {verdict}",
        s.published,
        s.checked,
        s.reconnects,
        s.recoveries_exact,
        s.recoveries_failed,
        s.churn_subscribes,
        s.churn_unsubscribes,
        s.missing
    );
    Ok(if s.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The run: prints its lines and returns what it found.
async fn soak(args: SoakArgs) -> Result<Summary, CliError> {
    validate(&args)?;
    let (url, authority) = split_url(&args.url)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    let n = args.connections as usize;
    let per_channel = args.rate / args.channels as f64;
    println!(
        "duplex bench soak: {url} | {n} clients on {} channels ({}-0..) | {} min | {} \
         publications/s ({per_channel:.2}/s per channel, {} B padding) via POST /api/publish | \
         {}% reconnect every {} s (offline up to {} ms) | churn {}/s held {} s | seed {seed}",
        args.channels,
        args.prefix,
        args.minutes,
        args.rate,
        args.size,
        args.reconnect_percent,
        args.reconnect_every,
        args.max_offline_ms,
        args.churn_rate,
        args.churn_hold,
    );
    let shared = Rc::new(Shared {
        counters: Counters::default(),
        channels: (0..args.channels)
            .map(|i| Channel {
                name: format!("{}-{i}", args.prefix),
                base: Cell::new(None),
                epoch: RefCell::new(None),
                top: Cell::new(0),
                sent: Cell::new(0),
            })
            .collect(),
        positions: (0..n).map(|_| Cell::new(0)).collect(),
        failures: RefCell::new(Failures::default()),
        handshakes: Semaphore::new(args.concurrency.max(1)),
        url,
        options: common::client_options(Duration::from_secs(30)),
        stopping: Cell::new(false),
        stop_publishing: Cell::new(false),
        started: tokio::sync::Notify::new(),
    });

    // Start: every client connects and subscribes (bounded handshakes in flight).
    let started = Instant::now();
    let mut senders = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for id in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        tasks.push(tokio::task::spawn_local(client(shared.clone(), id, rx)));
    }
    let bar = common::progress_bar(n as u64, "subscribing {bar:40} {pos}/{len}");
    let bound = Duration::from_secs(60 + n as u64 / 50);
    let all_started = async {
        while shared.counters.started.get() < n as u64 {
            shared.started.notified().await;
            bar.set_position(shared.counters.started.get());
        }
    };
    if tokio::time::timeout(bound, all_started).await.is_err() {
        return Err(CliError(format!(
            "{} of {n} clients subscribed within {} s",
            shared.counters.started.get(),
            bound.as_secs()
        )));
    }
    bar.finish_and_clear();
    let subscribe_secs = started.elapsed().as_secs_f64();
    println!(
        "  subscribed {} of {n} in {subscribe_secs:.1} s; {} failures",
        shared.counters.open.get(),
        shared.failures.borrow().total()
    );
    // A channel nobody subscribed to (fewer clients than channels) starts where it is.
    for channel in &shared.channels {
        if channel.base.get().is_none() {
            channel.base.set(Some(0));
        }
        channel.top.set(channel.base.get().unwrap_or(0));
    }

    // Steady phase. The publishing connection is opened only now: an HTTP connection left
    // idle while thousands of clients subscribe would be closed by the hub's idle timeout.
    let publisher = Publisher::connect(&authority, args.api_key.clone(), args.size).await?;
    let t0 = tokio::time::Instant::now();
    println!("{}", progress_line("PROGRESS", &shared, 0.0));
    let publishing = tokio::task::spawn_local(publish_loop(shared.clone(), publisher, args.rate));
    let end = t0 + Duration::from_secs_f64(args.minutes * 60.0);
    let mut report = tokio::time::interval_at(
        t0 + Duration::from_secs_f64(args.report_every),
        Duration::from_secs_f64(args.report_every),
    );
    let mut reconnect = tokio::time::interval_at(
        t0 + Duration::from_secs_f64(args.reconnect_every / 4.0),
        Duration::from_secs_f64(args.reconnect_every),
    );
    reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A churn tick that never comes when the rate is 0.
    let churn_period = if args.churn_rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.churn_rate)
    } else {
        Duration::from_secs(86_400 * 365)
    };
    let mut churn = tokio::time::interval_at(t0 + churn_period, churn_period);
    churn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut order: Vec<usize> = (0..n).collect();
    let per_round = ((n as f64) * args.reconnect_percent / 100.0).round() as usize;
    let mut fresh = 0u64;
    let hold = Duration::from_secs_f64(args.churn_hold);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            now = report.tick() => {
                if now < end {
                    println!("{}", progress_line("PROGRESS", &shared, now.duration_since(t0).as_secs_f64()));
                }
            }
            _ = reconnect.tick() => {
                for id in pick_distinct(&mut order, per_round, &mut rng) {
                    let offline = Duration::from_millis(rng.below(args.max_offline_ms + 1));
                    let _ = senders[id].send(Cmd::Reconnect(offline));
                }
            }
            _ = churn.tick() => {
                let id = rng.below(n as u64) as usize;
                let target = if rng.below(2) == 0 {
                    ChurnTarget::Channel(rng.below(args.channels) as usize)
                } else {
                    fresh += 1;
                    ChurnTarget::Fresh(format!("{}-x{fresh}", args.prefix))
                };
                let _ = senders[id].send(Cmd::Churn { target, hold });
            }
        }
    }

    // Drain: publishing stops; every client must reach its channel's last offset.
    shared.stop_publishing.set(true);
    let _ = publishing.await;
    let drain_start = Instant::now();
    let drain_deadline = drain_start + Duration::from_secs_f64(args.drain_timeout);
    let (missing_count, behind) = loop {
        let (missing_count, behind) = missing(&shared);
        if missing_count == 0 || Instant::now() >= drain_deadline {
            break (missing_count, behind);
        }
        // Polled: the drain has no single event to await (reconnecting clients included).
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let elapsed = t0.elapsed().as_secs_f64();
    // The last line: at the end of the steady phase (on the report grid when the minutes are
    // a multiple of the period), with the totals after the drain; every client is still
    // connected until the harness has sampled the hub.
    println!(
        "{}",
        progress_line("PROGRESS", &shared, end.duration_since(t0).as_secs_f64())
    );
    let bound = Duration::from_secs(60);
    let sync = SyncDir::new(args.sync_dir.clone());
    tokio::time::timeout(bound, sync.point("end", &indicatif::ProgressBar::hidden()))
        .await
        .map_err(|_| CliError("sync point `end` timed out".into()))??;
    shared.stopping.set(true);
    drop(senders);
    for task in &tasks {
        task.abort();
    }

    // Report.
    let c = &shared.counters;
    let violations = shared.violations() + missing_count;
    let expected_pubs = (args.rate * args.minutes * 60.0).floor() as u64;
    println!(
        "  {} publications of {expected_pubs} planned ({:.1}/s), {} deliveries checked \
         ({} recovered), drained in {drain_secs:.2} s",
        c.published.get(),
        c.published.get() as f64 / elapsed.max(1e-9),
        c.checked.get(),
        c.recovered_publications.get()
    );
    println!(
        "  reconnects {} (recoveries exact {}, failed {}), churn subscribes {} / \
         unsubscribes {} (skipped {}), join/leave and other pushes {}",
        c.reconnects.get(),
        c.recoveries_exact.get(),
        c.recoveries_failed.get(),
        c.churn_subscribes.get(),
        c.churn_unsubscribes.get(),
        c.churn_skipped.get(),
        c.other.get()
    );
    println!(
        "  gaps {}, duplicates {}, out of order {}, mismatched {}, unexpected {}, dropped {}, \
         missing at the end {missing_count} ({behind} clients behind)",
        c.gaps.get(),
        c.duplicates.get(),
        c.out_of_order.get(),
        c.mismatched.get(),
        c.unexpected.get(),
        c.dropped.get(),
    );
    let failures = shared.failures.borrow();
    if failures.total() > 0 {
        println!("  {} failures:", failures.total());
        failures.print("    ");
    }
    println!(
        "RESULT connections={n} channels={} minutes={} rate={} published={} checked={} \
         recovered_publications={} reconnects={} recoveries_exact={} recoveries_failed={} \
         churn_subscribes={} churn_unsubscribes={} gaps={} duplicates={} out_of_order={} \
         mismatched={} unexpected={} dropped={} failures={} missing={missing_count} \
         violations={violations} subscribe_secs={subscribe_secs:.2} seed={seed}",
        args.channels,
        args.minutes,
        args.rate,
        c.published.get(),
        c.checked.get(),
        c.recovered_publications.get(),
        c.reconnects.get(),
        c.recoveries_exact.get(),
        c.recoveries_failed.get(),
        c.churn_subscribes.get(),
        c.churn_unsubscribes.get(),
        c.gaps.get(),
        c.duplicates.get(),
        c.out_of_order.get(),
        c.mismatched.get(),
        c.unexpected.get(),
        c.dropped.get(),
        failures.total(),
    );
    Ok(Summary {
        violations,
        published: c.published.get(),
        checked: c.checked.get(),
        reconnects: c.reconnects.get(),
        recoveries_exact: c.recoveries_exact.get(),
        recoveries_failed: c.recoveries_failed.get(),
        churn_subscribes: c.churn_subscribes.get(),
        churn_unsubscribes: c.churn_unsubscribes.get(),
        missing: missing_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SoakArgs,
    }

    fn args(line: &str) -> SoakArgs {
        Cli::try_parse_from(std::iter::once("soak").chain(line.split_whitespace()))
            .expect("valid arguments")
            .args
    }

    #[test]
    fn streams_tell_gaps_duplicates_and_late_offsets_apart() {
        let mut s = Stream::after(10);
        assert_eq!(s.receive(11), Receipt::InOrder);
        assert_eq!(s.receive(11), Receipt::Duplicate);
        assert_eq!(s.receive(15), Receipt::Gap(3)); // 12, 13, 14 skipped
        assert_eq!(s.receive(13), Receipt::OutOfOrder);
        assert_eq!(
            s.receive(13),
            Receipt::Duplicate,
            "a late offset counts once"
        );
        assert_eq!(s.receive(12), Receipt::OutOfOrder);
        assert_eq!(s.receive(14), Receipt::OutOfOrder);
        assert_eq!(s.receive(9), Receipt::Duplicate);
        assert_eq!(s.receive(16), Receipt::InOrder);
        assert_eq!(s.expected, 17);
    }

    #[test]
    fn pushes_and_replies_are_read_from_the_hub_envelopes() {
        assert_eq!(
            parse(br#"{"op":"pub","channel":"soak-7","offset":1234,"data":{"n":34,"p":"abc"}}"#),
            Incoming::Pub {
                channel: b"soak-7",
                offset: 1234,
                n: Some(34)
            }
        );
        assert_eq!(
            parse(br#"{"op":"pub","channel":"x","offset":5,"data":"other"}"#),
            Incoming::Pub {
                channel: b"x",
                offset: 5,
                n: None
            }
        );
        assert_eq!(
            parse(br#"{"op":"gap","channel":"c","epoch":"e","first":1,"last":2}"#),
            Incoming::Loss
        );
        assert_eq!(
            parse(br#"{"op":"join","channel":"c","client":"a","user":"u"}"#),
            Incoming::Other
        );
        let reply = br#"{"id":3,"ok":true,"epoch":"ab12","offset":15,"recovered":true,"publications":[{"offset":14,"data":{"n":4,"p":"offset"}},{"offset":15,"data":{"n":5,"p":"z"}}]}"#;
        let Incoming::Reply { id, body } = parse(reply) else {
            panic!("not a reply");
        };
        assert_eq!(id, Some(3));
        assert_eq!(
            parse_subscribed(body),
            Ok(Subscribed {
                epoch: "ab12".into(),
                offset: 15,
                recovered: Some(true),
                publications: vec![(14, Some(4)), (15, Some(5))],
            })
        );
        let refused = br#"{"id":0,"ok":true,"epoch":"e","offset":9,"recovered":false,"reason":"history no longer reaches back","publications":[]}"#;
        let parsed = parse_subscribed(refused).unwrap();
        assert_eq!(
            (parsed.recovered, parsed.publications.len()),
            (Some(false), 0)
        );
        assert!(
            parse_subscribed(br#"{"id":0,"ok":false,"error":{"code":"limit_exceeded"}}"#)
                .unwrap_err()
                .contains("limit_exceeded")
        );
        let plain = parse_subscribed(br#"{"id":0,"ok":true,"epoch":"e","offset":0}"#).unwrap();
        assert_eq!((plain.offset, plain.recovered), (0, None));
    }

    #[test]
    fn recoveries_must_be_exactly_what_was_missed() {
        let shared = |base| Shared {
            counters: Counters::default(),
            channels: vec![Channel {
                name: "c".into(),
                base: Cell::new(Some(base)),
                epoch: RefCell::new(Some("e".into())),
                top: Cell::new(0),
                sent: Cell::new(0),
            }],
            positions: Vec::new(),
            failures: RefCell::new(Failures::default()),
            handshakes: Semaphore::new(1),
            url: String::new(),
            options: common::client_options(Duration::from_secs(1)),
            stopping: Cell::new(false),
            stop_publishing: Cell::new(false),
            started: tokio::sync::Notify::new(),
        };
        let reply = |offset, recovered, publications: &[u64]| Subscribed {
            epoch: "e".into(),
            offset,
            recovered: Some(recovered),
            publications: publications.iter().map(|&o| (o, Some(o - 100))).collect(),
        };
        // Saw up to 104; 105..=107 came back: exact.
        let s = shared(100);
        let mut stream = Stream::after(104);
        recover(
            &s,
            &s.channels[0],
            &mut stream,
            &reply(107, true, &[105, 106, 107]),
        );
        assert_eq!(s.counters.recoveries_exact.get(), 1);
        assert_eq!(s.violations(), 0);
        assert_eq!(stream.expected, 108);
        // One missing in the middle, one short at the end, a refusal: each a failed recovery.
        for bad in [
            reply(107, true, &[105, 107]),
            reply(107, true, &[105, 106]),
            reply(107, false, &[]),
        ] {
            let s = shared(100);
            let mut stream = Stream::after(104);
            recover(&s, &s.channels[0], &mut stream, &bad);
            assert_eq!(s.counters.recoveries_failed.get(), 1, "{bad:?}");
            assert!(s.violations() > 0);
            assert_eq!(stream.expected, 108, "live pushes go on after the reply");
        }
        // Data that does not belong to its offset.
        let s = shared(90);
        let mut stream = Stream::after(104);
        recover(&s, &s.channels[0], &mut stream, &reply(105, true, &[105]));
        assert_eq!(s.counters.mismatched.get(), 1);
    }

    #[test]
    fn choices_are_distinct_and_reproducible() {
        let mut order: Vec<usize> = (0..1000).collect();
        let mut rng = Rng::new(42);
        let mut picked = pick_distinct(&mut order, 100, &mut rng);
        assert_eq!(picked.len(), 100);
        picked.sort_unstable();
        picked.dedup();
        assert_eq!(picked.len(), 100, "no client picked twice in a round");
        let again = pick_distinct(&mut (0..1000).collect::<Vec<_>>(), 100, &mut Rng::new(42));
        let first = pick_distinct(&mut (0..1000).collect::<Vec<_>>(), 100, &mut Rng::new(42));
        assert_eq!(again, first);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert_eq!(pick_distinct(&mut [1, 2], 5, &mut rng).len(), 2);
    }

    #[test]
    fn arguments_are_checked() {
        assert!(validate(&args("ws://127.0.0.1:1/ws")).is_ok());
        assert!(validate(&args("ws://h:1 --channels 0")).is_err());
        assert!(validate(&args("ws://h:1 --reconnect-percent 101")).is_err());
        assert!(validate(&args("ws://h:1 --prefix a/b")).is_err());
        assert_eq!(
            split_url("ws://127.0.0.1:9000").unwrap(),
            ("ws://127.0.0.1:9000/ws".into(), "127.0.0.1:9000".into())
        );
        assert!(split_url("wss://h:1/ws").is_err());
    }

    /// A hub in this process on a free loopback port.
    async fn hub(history_size: usize) -> duplex_hub::HubHandle {
        duplex_hub::Hub::bind(duplex_hub::HubConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            api_key: Some("soak-key".into()),
            history_size,
            ..Default::default()
        })
        .await
        .expect("hub binds")
    }

    async fn soak_against(hub: &duplex_hub::HubHandle, line: &str) -> Summary {
        let line = format!(
            "ws://{}/ws --api-key soak-key --seed 5 {line}",
            hub.local_addr()
        );
        let local = tokio::task::LocalSet::new();
        tokio::time::timeout(Duration::from_secs(60), local.run_until(soak(args(&line))))
            .await
            .expect("the soak ends by itself")
            .expect("the soak runs")
    }

    /// A short soak against a real hub: reconnects recover exactly, churn runs, no violation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_soak_is_exact() {
        let hub = hub(100).await;
        let summary = soak_against(
            &hub,
            "--connections 60 --channels 3 --minutes 0.08 --rate 60 --reconnect-every 2 \
             --reconnect-percent 20 --max-offline-ms 300 --churn-rate 20 --churn-hold 0.3 \
             --report-every 2 --drain-timeout 10",
        )
        .await;
        hub.shutdown();
        assert_eq!(summary.violations, 0, "{summary:?}");
        assert!(summary.published > 100, "{summary:?}");
        // Every publication reached the 20 clients of its channel at least.
        assert!(summary.checked >= summary.published * 20, "{summary:?}");
        assert!(summary.reconnects >= 24, "two rounds of 12: {summary:?}");
        assert_eq!(summary.recoveries_exact, summary.reconnects);
        assert!(summary.churn_subscribes > 10 && summary.churn_unsubscribes > 10);
        assert_eq!(summary.missing, 0);
    }

    /// Without history a client away while publications went by cannot recover them: the
    /// soak must say so (recoveries failed, a non-zero exit), not pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hub_that_cannot_recover_fails_the_soak() {
        let hub = hub(0).await;
        let summary = soak_against(
            &hub,
            "--connections 20 --channels 1 --minutes 0.05 --rate 100 --reconnect-every 1 \
             --reconnect-percent 50 --max-offline-ms 400 --churn-rate 0 --report-every 1 \
             --drain-timeout 10",
        )
        .await;
        hub.shutdown();
        assert!(summary.recoveries_failed > 0, "{summary:?}");
        assert!(
            summary.violations >= summary.recoveries_failed,
            "{summary:?}"
        );
    }
}
