//! Event loops for the hub's plain WebSocket connections: many connections per tokio task, in
//! the engine's model (`duplex::engine`), so an idle subscriber costs its state and nothing
//! else (issue 12: no task, no waker, no tokio registration, no timer entry of its own).
//!
//! ```text
//!  HTTP/1.1 upgrade (service.rs, http.rs) ── socket, Connection, Session ──▶ LoopEvent::Adopt
//!                                                                                 │
//!  loop task: its epoll (tokio watches that one descriptor) ─ready─▶ read into the scratch buffer
//!     │  ─▶ Connection::recv ─▶ a command ─▶ Session::reply, polled once in place
//!     │        └ not finished (it waits for the broker)? boxed onto a task of its own, which
//!     │          posts LoopEvent::Reply with the Session when done; the connection is not read
//!     │          meanwhile and its deliveries queue up (held), as in `session.rs`
//!     │  ─▶ the Connection's frames written through the outbox (its lock orders them with
//!     │     the fan-out's direct writes)
//!  fan-out threads ── Outbox::deliver: straight to the socket, or queued + LoopEvent::Wake
//!  once a second: every connection's timers (keepalive, idle, close: duplex-proto's)
//! ```
//!
//! A loop is one tokio task with an epoll instance of its own (mio) over its connections;
//! tokio's reactor watches that one descriptor. A task rather than a thread: `--threads 1`
//! stays one thread (glibc skips its cancellation bookkeeping around every system call only
//! while a process has a single thread: ~45 instructions per delivery). What a loop starts
//! that waits (a command on the broker, the end of a connection) is a task of its own.
//! Connections over TLS or HTTP/2 keep a task each (`session.rs`): they are read through
//! streams the loop cannot poll.
//!
//! The rules are `session.rs`'s: what was queued before a command goes out before its reply,
//! pushes that arrive while the command runs go after it (filtered), direct writes resume only
//! once the connection has nothing of its own in flight; a connection ends by leaving every
//! channel (on a task: it awaits the broker) after its close handshake.

use std::future::Future;
use std::io::{self, IoSlice, Read};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use duplex::{Message, State};
use duplex_proto::{Connection, Event};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use tokio::io::unix::AsyncFd;

use duplex::WebSocket;

use crate::auth::Grants;
use crate::metrics::Transport;
use crate::outbox::{Closing, Delivery, LoopWaker, Outbox, OutboxEvent, OutboxStream};
use crate::session::{End, Session};
use crate::state::{ConnectionGuard, HubState};

/// How many buffers one vectored write carries.
const MAX_IO_SLICES: usize = 16;
/// The loop's read buffer (one per loop, shared by its connections), and the least room a
/// read gets (less left: a new buffer).
const SCRATCH: usize = 64 * 1024;
const MIN_READ: usize = 4096;
/// Replies queued past this are written before the next command is run.
const FLUSH_AT: usize = 64 * 1024;
/// How often the connections' timers run.
const SWEEP: Duration = Duration::from_secs(1);

/// What is posted to a loop from elsewhere.
pub(crate) enum LoopEvent {
    /// A connection to take over.
    Adopt(Box<Adopted>),
    /// The outbox of this token has something to do (queued, partly written, closed).
    Wake(u64),
    /// The hub is shutting down: close every connection (1001).
    Shutdown,
    /// A command that had to wait finished: the session comes back with its reply.
    Reply {
        token: u64,
        session: Box<Session>,
        reply: Option<String>,
    },
}

/// A command's end: the session, back, and the reply to send.
type Replied = (Box<Session>, Option<String>);

/// An upgraded plain HTTP/1.1 connection handed to a loop.
///
/// Its `Outbox` and `Session` are made by the loop, once the task that upgraded the connection
/// is gone: made by that task, they would sit in the heap behind its future (2 KiB), and
/// every connection of a burst would leave that much free between long-lived allocations
/// (measured: ~0.45 KiB per connection of RSS at 10,000).
pub(crate) struct Adopted {
    tcp: std::net::TcpStream,
    conn: Connection,
    /// What the client sent right behind its request head.
    leftover: BytesMut,
    grants: Grants,
    transport: Transport,
    /// Held until the connection ends.
    guard: ConnectionGuard,
}

/// Runs an upgraded plain TCP connection: on one of the hub's event loops, or (with none) on
/// a task of its own (`session.rs`). `guard` is held until it ends.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one upgrade, handed on"
)]
pub(crate) fn run_plain(
    tcp: tokio::net::TcpStream,
    conn: Connection,
    leftover: BytesMut,
    hub: &Arc<HubState>,
    loops: &Loops,
    grants: Grants,
    transport: Transport,
    guard: ConnectionGuard,
) {
    let negotiated = conn.deflate().copied();
    let limit = hub.config.queue_bytes;
    let Some(inbox) = loops.pick() else {
        let (stream, outbox) = OutboxStream::new(tcp, limit, negotiated);
        let ws = WebSocket::from_connection(stream, conn, hub.ws_options.clone(), leftover, None);
        let session = crate::session::run(ws, outbox, hub.clone(), grants, transport, guard);
        tokio::spawn(session);
        return;
    };
    // Out of tokio's reactor (the loop's epoll watches it now); still non-blocking.
    let tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::debug!("websocket lost at its hand-over: {e}");
            return;
        }
    };
    // Copied out: `leftover` shares the request head's read buffer (kilobytes), which would
    // otherwise live as long as the bytes the connection keeps of it.
    let leftover = BytesMut::from(&leftover[..]);
    inbox.post(LoopEvent::Adopt(Box::new(Adopted {
        tcp,
        conn,
        leftover,
        grants,
        transport,
        guard,
    })));
}

/// A loop's mailbox: events posted from any thread, and the wake-up of its task (a waker
/// registered in the loop's epoll).
#[derive(Debug)]
pub(crate) struct Inbox {
    events: Mutex<Vec<LoopEvent>>,
    waker: mio::Waker,
}

impl std::fmt::Debug for LoopEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoopEvent::Adopt(_) => f.write_str("Adopt"),
            LoopEvent::Wake(token) => write!(f, "Wake({token})"),
            LoopEvent::Shutdown => f.write_str("Shutdown"),
            LoopEvent::Reply { token, .. } => write!(f, "Reply({token})"),
        }
    }
}

impl LoopWaker for Inbox {
    fn wake(&self, token: u64) {
        self.post(LoopEvent::Wake(token));
    }
}

impl Inbox {
    pub(crate) fn post(&self, event: LoopEvent) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = events.is_empty();
        events.push(event);
        drop(events);
        if was_empty {
            // The loop swaps the whole list out: one wake-up for what piles up meanwhile.
            if let Err(e) = self.waker.wake() {
                tracing::error!("waking an event loop: {e}");
            }
        }
    }

    fn take(&self, into: &mut Vec<LoopEvent>) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *events, into);
    }
}

/// The hub's loops, started with the hub.
#[derive(Debug, Default)]
pub(crate) struct Loops {
    inboxes: Vec<Arc<Inbox>>,
    /// Each loop's epoll instance, until its task takes it.
    polls: Mutex<Vec<mio::Poll>>,
    next: AtomicUsize,
}

/// The waker's token; connections' tokens carry a generation of at least 1 in their high half.
const WAKER: Token = Token(0);

impl Loops {
    /// `count` loops (0: none; every connection gets a task of its own).
    pub(crate) fn new(count: usize) -> io::Result<Loops> {
        let mut inboxes = Vec::with_capacity(count);
        let mut polls = Vec::with_capacity(count);
        for _ in 0..count {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKER)?;
            inboxes.push(Arc::new(Inbox {
                events: Mutex::default(),
                waker,
            }));
            polls.push(poll);
        }
        Ok(Loops {
            inboxes,
            polls: Mutex::new(polls),
            next: AtomicUsize::new(0),
        })
    }

    /// Starts the loop tasks of `hub` on the current runtime.
    pub(crate) fn start(&self, hub: &Arc<HubState>) -> io::Result<()> {
        let polls = std::mem::take(&mut *self.polls.lock().unwrap_or_else(PoisonError::into_inner));
        for (poll, inbox) in polls.into_iter().zip(&self.inboxes) {
            let registry = poll.registry().try_clone()?;
            // tokio watches the loop's epoll descriptor (readable: some connection or the
            // waker is ready). Deprecated for being unsound with a descriptor the `AsyncFd`
            // does not own, which could be closed and reused while registered; here it owns
            // it (the `mio::Poll` inside), and deregisters before dropping it. The sound
            // replacement is an `unsafe fn`, which this project keeps to `mask.rs`.
            #[allow(deprecated, reason = "sound here: the AsyncFd owns the descriptor")]
            let epoll = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
            let event_loop = EventLoop::new(hub.clone(), inbox.clone(), registry);
            tokio::spawn(event_loop.run(epoll));
        }
        Ok(())
    }

    /// Every loop closes its connections (the hub is shutting down).
    pub(crate) fn shutdown(&self) {
        for inbox in &self.inboxes {
            inbox.post(LoopEvent::Shutdown);
        }
    }

    /// The loop the next connection goes to, if the hub runs loops.
    pub(crate) fn pick(&self) -> Option<&Arc<Inbox>> {
        if self.inboxes.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Relaxed);
        Some(&self.inboxes[n % self.inboxes.len()])
    }
}

struct Entry {
    generation: u32,
    /// The sweep (seconds since the loop started, rounded up) at which the connection's core
    /// next needs its timers run; 0: none. Kept here (it fills the entry's padding) so that a
    /// sweep passes over a connection with no timer due in a few instructions. Never later
    /// than the core's own deadline: anything that can bring that forward (closing) sets it
    /// to the next sweep, and early is harmless (the core is asked again).
    due: u32,
    slot: Option<Slot>,
}

/// Entries in pages of a fixed size: the slab grows a page at a time and never moves (a
/// `Vec` of every entry would copy itself on growth and leave the old copy as a hole in the
/// heap, tens of bytes per connection at 10,000).
#[derive(Default)]
struct Slab {
    pages: Vec<Vec<Entry>>,
    len: usize,
}

const PAGE: usize = 64;

impl Slab {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Option<&Entry> {
        self.pages.get(index / PAGE)?.get(index % PAGE)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Entry> {
        self.pages.get_mut(index / PAGE)?.get_mut(index % PAGE)
    }

    /// Adds `entry`, returning its index.
    fn push(&mut self, entry: Entry) -> usize {
        if self.len % PAGE == 0 {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        let page = self.pages.last_mut().expect("a page with room");
        page.push(entry);
        self.len += 1;
        self.len - 1
    }
}

impl std::ops::Index<usize> for Slab {
    type Output = Entry;
    fn index(&self, index: usize) -> &Entry {
        &self.pages[index / PAGE][index % PAGE]
    }
}

impl std::ops::IndexMut<usize> for Slab {
    fn index_mut(&mut self, index: usize) -> &mut Entry {
        &mut self.pages[index / PAGE][index % PAGE]
    }
}

/// One connection of a loop.
struct Slot {
    outbox: Arc<Outbox>,
    conn: Connection,
    /// `None` while a command runs on a task of its own.
    session: Option<Box<Session>>,
    /// A partial frame header (or control frame) waiting for the rest.
    partial: Option<Box<BytesMut>>,
    guard: ConnectionGuard,
    /// The last write stopped short: wait for the socket to be writable.
    write_blocked: bool,
    /// The close handshake was started here (the outbox closed).
    closing: bool,
    /// The connection is over but its session is out on a command: removed when it is back.
    ended: bool,
}

/// What to do with a connection after a step.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Keep,
    Drop,
}

struct EventLoop {
    hub: Arc<HubState>,
    inbox: Arc<Inbox>,
    registry: mio::Registry,
    /// When the loop started: sweeps and `Entry::due` count seconds from here.
    started: Instant,
    events: mio::Events,
    entries: Slab,
    free: Vec<u32>,
    scratch: BytesMut,
    batch: Vec<Arc<Delivery>>,
    posted: Vec<LoopEvent>,
}

/// Whole seconds from `started` to `at`, rounded up or down.
fn secs_since(started: Instant, at: Instant, up: bool) -> u32 {
    let elapsed = at.saturating_duration_since(started);
    let secs = elapsed.as_secs() + u64::from(up && elapsed.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The sweep at which a core whose next deadline is `deadline` needs its timers run (0: no
/// timer). A deadline already past is due at the next sweep.
fn due_tick(started: Instant, deadline: Option<Instant>) -> u32 {
    deadline.map_or(0, |at| secs_since(started, at, true).max(1))
}

fn token(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | index as u64
}

fn split(token: u64) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

impl EventLoop {
    fn new(hub: Arc<HubState>, inbox: Arc<Inbox>, registry: mio::Registry) -> EventLoop {
        EventLoop {
            hub,
            inbox,
            registry,
            started: Instant::now(),
            events: mio::Events::with_capacity(1024),
            entries: Slab::default(),
            free: Vec::new(),
            scratch: BytesMut::new(),
            batch: Vec::new(),
            posted: Vec::new(),
        }
    }

    /// Runs until the hub is shut down (or dropped) and every connection is gone.
    async fn run(mut self, mut epoll: AsyncFd<mio::Poll>) {
        let mut shutdown = self.hub.shutdown.clone();
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ready = Vec::new();
        loop {
            tokio::select! {
                guard = epoll.readable_mut() => {
                    let mut guard = match guard {
                        Ok(guard) => guard,
                        Err(e) => {
                            tracing::error!("event loop: {e}");
                            return;
                        }
                    };
                    let poll = guard.get_inner_mut();
                    if let Err(e) = poll.poll(&mut self.events, Some(Duration::ZERO)) {
                        if e.kind() != io::ErrorKind::Interrupted {
                            tracing::error!("event loop: {e}");
                            return;
                        }
                    }
                    let more = self.events.iter().count() == self.events.capacity();
                    ready.extend(self.events.iter().filter(|e| e.token() != WAKER).map(|e| {
                        let readable = e.is_readable() || e.is_read_closed() || e.is_error();
                        (e.token().0 as u64, readable, e.is_writable())
                    }));
                    // Cleared unless the descriptor became ready again since the guard was
                    // taken (tokio compares); edge-triggered, the kernel reports what comes
                    // after the poll above anew. A full batch: look again at once.
                    if !more {
                        guard.clear_ready();
                    }
                    self.take_posted();
                    for (token, readable, writable) in ready.drain(..) {
                        self.on_ready(token, readable, writable);
                    }
                }
                _ = tick.tick() => {
                    self.sweep();
                    // The hub shut down (or is gone) and every connection ended: the loop ends.
                    let stopping =
                        shutdown.has_changed().is_err() || *shutdown.borrow_and_update();
                    if stopping && self.free.len() == self.entries.len() {
                        self.take_posted();
                        if self.free.len() == self.entries.len() {
                            return;
                        }
                    }
                }
            }
        }
    }

    // ---- events ----

    fn take_posted(&mut self) {
        let mut posted = std::mem::take(&mut self.posted);
        self.inbox.take(&mut posted);
        for event in posted.drain(..) {
            match event {
                LoopEvent::Adopt(adopted) => self.adopt(*adopted),
                LoopEvent::Wake(token) => {
                    if let Some(index) = self.index(token) {
                        self.on_outbox(index);
                    }
                }
                LoopEvent::Shutdown => {
                    for index in 0..self.entries.len() {
                        if let Some(slot) = self.slot(index) {
                            slot.outbox.close(Closing::Shutdown);
                            self.on_outbox(index);
                        }
                    }
                }
                LoopEvent::Reply {
                    token,
                    session,
                    reply,
                } => {
                    let (index, _) = split(token);
                    self.on_reply(index, session, reply);
                }
            }
        }
        self.posted = posted;
    }

    /// The slot of `token`, if its connection is still there.
    fn index(&self, token: u64) -> Option<usize> {
        let (index, generation) = split(token);
        let entry = self.entries.get(index)?;
        (entry.generation == generation && entry.slot.is_some()).then_some(index)
    }

    /// A connection's socket is readable or writable (or failed: the read finds out).
    fn on_ready(&mut self, token: u64, readable: bool, writable: bool) {
        let Some(index) = self.index(token) else {
            return;
        };
        if writable {
            if let Some(slot) = self.slot(index) {
                slot.write_blocked = false;
            }
            // What waited for the socket: our frames, then the queued deliveries, then the
            // commands and reads that waited for them.
            if self.flush(index) == Next::Drop {
                self.remove(index);
                return;
            }
            self.on_outbox(index);
            if self.index(token).is_some() && self.on_events(index) == Next::Drop {
                self.remove(index);
                return;
            }
        }
        if (readable || writable) && self.index(token).is_some() {
            self.read(index);
        }
    }

    fn slot(&mut self, index: usize) -> Option<&mut Slot> {
        self.entries.get_mut(index)?.slot.as_mut()
    }

    /// Takes over an upgraded connection.
    fn adopt(&mut self, adopted: Adopted) {
        let Adopted {
            tcp,
            mut conn,
            leftover,
            grants,
            transport,
            guard,
        } = adopted;
        let limit = self.hub.config.queue_bytes;
        let negotiated = conn.deflate().copied();
        let inbox: Arc<dyn LoopWaker> = self.inbox.clone();
        let outbox = Arc::new(Outbox::for_loop(tcp, limit, negotiated, inbox));
        let session = Box::new(Session::open(
            self.hub.clone(),
            outbox.clone(),
            grants,
            transport,
            false,
        ));
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => self.entries.push(Entry {
                generation: 1,
                due: 0,
                slot: None,
            }),
        };
        let token = token(index, self.entries[index].generation);
        let Some(socket) = outbox.loop_socket() else {
            self.free.push(index as u32);
            return;
        };
        if let Err(e) = self.registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(token as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!("event loop: registering a connection: {e}");
            self.free.push(index as u32);
            tokio::spawn(async move {
                session.unregister();
                drop(guard);
            });
            return;
        }
        // The timers are the hub's shared settings' (server.rs); the clock starts now.
        conn.handle_timeout(Instant::now());
        self.entries[index].due = due_tick(self.started, conn.poll_timeout());
        outbox.set_token(token);
        if *self.hub.shutdown.borrow() {
            // Adopted after the loop closed its connections for the shutdown.
            outbox.close(Closing::Shutdown);
        }
        self.entries[index].slot = Some(Slot {
            outbox,
            conn,
            session: Some(session),
            partial: (!leftover.is_empty()).then(|| Box::new(leftover)),
            guard,
            write_blocked: false,
            closing: false,
            ended: false,
        });
        // The 101 is written; what the client sent behind its request, then the socket.
        if self.slot(index).is_some_and(|s| s.partial.is_some())
            && self.on_bytes(index, BytesMut::new()) == Next::Drop
        {
            self.remove(index);
            return;
        }
        // Anything the hub closed meanwhile (shutdown) or queued.
        self.on_outbox(index);
        if self.index(token).is_some() {
            self.read(index);
        }
    }

    // ---- reading ----

    /// Reads until the socket has nothing more, or the connection stops reading (a command
    /// waits, it ended).
    fn read(&mut self, index: usize) {
        loop {
            let Some(slot) = self.entries[index].slot.as_mut() else {
                return;
            };
            if slot.session.is_none()
                || slot.write_blocked
                || slot.ended
                || slot.conn.state() == State::Closed
            {
                return;
            }
            let Some(socket) = slot.outbox.loop_socket() else {
                return;
            };
            // Zeroed once per buffer and used from the front: reads go into initialised
            // room without zeroing it again (as the engine does).
            if self.scratch.len() < MIN_READ {
                self.scratch = BytesMut::zeroed(SCRATCH);
            }
            let room = self.scratch.len();
            let next = match (&mut &*socket).read(&mut self.scratch[..]) {
                Ok(0) => {
                    slot.conn.recv_eof();
                    self.on_events(index)
                }
                Ok(n) => {
                    let chunk = self.scratch.split_to(n);
                    let next = self.on_bytes(index, chunk);
                    if next == Next::Keep && n < room {
                        // A short read: the socket is drained.
                        return;
                    }
                    next
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("read failed: {e}");
                    Next::Drop
                }
            };
            if next == Next::Drop {
                self.remove(index);
                return;
            }
        }
    }

    /// Feeds `chunk` (after what was kept of the last read) to the connection and handles
    /// what it held.
    fn on_bytes(&mut self, index: usize, mut chunk: BytesMut) -> Next {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        let buf = match slot.partial.as_mut() {
            Some(partial) => {
                partial.extend_from_slice(&chunk);
                chunk.clear();
                &mut **partial
            }
            None => &mut chunk,
        };
        // A violation is reported by the core's Close (see `on_events`).
        let _ = slot.conn.recv(buf);
        if slot.partial.as_ref().is_some_and(|p| p.is_empty()) {
            slot.partial = None;
        }
        if !chunk.is_empty() {
            slot.partial = Some(Box::new(BytesMut::from(&chunk[..])));
        }
        self.on_events(index)
    }

    /// Handles the connection's events until it has none, or a command has to wait.
    fn on_events(&mut self, index: usize) -> Next {
        loop {
            let Some(slot) = self.entries[index].slot.as_mut() else {
                return Next::Drop;
            };
            // A command is out, or the client does not read what we sent: the rest waits.
            if slot.session.is_none() || slot.write_blocked {
                break;
            }
            match slot.conn.poll_event() {
                Some(Event::Message(message)) => {
                    if slot.closing {
                        continue;
                    }
                    if let Some((session, reply)) = self.command(index, message) {
                        if !self.replied(index, session, reply) {
                            return Next::Drop;
                        }
                    }
                    // Many commands in one read: their replies go out as they pile up, and a
                    // client that does not read them stops being read.
                    if self
                        .slot(index)
                        .is_some_and(|s| s.conn.pending_transmit_bytes() > FLUSH_AT)
                        && self.flush(index) == Next::Drop
                    {
                        return Next::Drop;
                    }
                }
                // The answer to a keepalive ping: the connection is otherwise quiet.
                Some(Event::Pong(_)) => slot.conn.shrink_to_fit(),
                // The core queued the answers (Close, Pong); fragments are off.
                Some(Event::Close(_) | Event::Ping(_) | Event::Fragment { .. }) => {}
                None => break,
            }
        }
        self.flush(index)
    }

    // ---- commands ----

    /// Runs a command: in place when it does not wait (most do not, with the memory broker:
    /// returns the session and the reply), else on a task of its own (`on_reply` follows).
    /// Either way pushes are held until the reply is out.
    fn command(&mut self, index: usize, message: Message) -> Option<Replied> {
        // What was queued before the command goes out before its reply.
        self.drain(index);
        let slot = self.entries[index].slot.as_mut()?;
        let mut session = slot.session.take()?;
        slot.outbox.hold();
        let mut step: Pin<Box<dyn Future<Output = Replied> + Send>> = Box::pin(async move {
            let reply = session.reply(message).await;
            (session, reply)
        });
        match step.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(done) => Some(done),
            Poll::Pending => {
                // Polled again at once by its task, which registers the real waker.
                let inbox = self.inbox.clone();
                let token = token(index, self.entries[index].generation);
                tokio::spawn(async move {
                    let (session, reply) = step.await;
                    inbox.post(LoopEvent::Reply {
                        token,
                        session,
                        reply,
                    });
                });
                None
            }
        }
    }

    /// The session is back with its reply: queues the reply, then what was queued meanwhile.
    /// False: the connection ended meanwhile (and is removed).
    fn replied(&mut self, index: usize, session: Box<Session>, reply: Option<String>) -> bool {
        let Some(slot) = self.entries.get_mut(index).and_then(|e| e.slot.as_mut()) else {
            // Cannot happen (a slot waits for its session); the session still leaves.
            finish(session, None, None);
            return false;
        };
        slot.session = Some(session);
        if slot.ended {
            self.remove(index);
            return false;
        }
        if let Some(text) = reply {
            let _ = slot.conn.send(Message::text(text));
        }
        self.drain(index);
        true
    }

    /// A command finished: its reply, then what was queued meanwhile, then reading resumes.
    fn on_reply(&mut self, index: usize, session: Box<Session>, reply: Option<String>) {
        if !self.replied(index, session, reply) {
            return;
        }
        if self.on_events(index) == Next::Drop {
            self.remove(index);
            return;
        }
        self.on_outbox(index);
        if self.entries[index].slot.is_some() {
            self.read(index);
        }
    }

    // ---- writing ----

    /// Moves the deliveries queued in the outbox (those that pass the filters) into the
    /// connection's frames, unless the socket is full (they wait in the outbox, bounded).
    fn drain(&mut self, index: usize) {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return;
        };
        if slot.write_blocked || slot.conn.state() != State::Open {
            return;
        }
        let taken = slot.outbox.take(&mut self.batch);
        let (mut messages, mut bytes) = (0u64, 0u64);
        for delivery in self.batch.drain(..) {
            if slot.conn.send_prepared(&delivery.prepared).is_ok() {
                messages += 1;
                bytes += delivery.prepared.wire_len() as u64;
            }
        }
        slot.outbox.release(taken);
        let metrics = &self.hub.metrics;
        metrics.messages_out.fetch_add(messages, Relaxed);
        metrics.bytes_out.fetch_add(bytes, Relaxed);
    }

    /// The outbox has something: close as it says, or drain it and write.
    fn on_outbox(&mut self, index: usize) {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return;
        };
        if slot.session.is_none() {
            // After the command's reply (`on_reply` looks again).
            return;
        }
        match slot.outbox.event() {
            Some(OutboxEvent::Closed(why)) if !slot.closing => {
                slot.closing = true;
                slot.outbox.hold();
                if let End::Close(code, reason) = End::from(why) {
                    let client = slot.session.as_ref().map_or("", |s| s.client());
                    tracing::debug!(client, code = code.as_u16(), reason, "closing");
                    let _ = slot.conn.close(code, reason);
                }
            }
            Some(OutboxEvent::Closed(_)) => {}
            Some(OutboxEvent::Ready) => self.drain(index),
            None => {}
        }
        if self.flush(index) == Next::Drop {
            self.remove(index);
        }
    }

    /// Writes what the connection queued (after the rest of a partly written delivery); lets
    /// the fan-out write directly again once nothing of ours is in flight.
    fn flush(&mut self, index: usize) -> Next {
        let entry = &mut self.entries[index];
        let Some(slot) = entry.slot.as_mut() else {
            return Next::Drop;
        };
        if slot.conn.state() != State::Open {
            // Closing: the close timeout may come before the deadline the sweep knows (and
            // must end a connection whose peer does not read: checked even while blocked).
            entry.due = 1;
        }
        if slot.write_blocked {
            return Next::Keep;
        }
        let wrote = slot.conn.has_pending_transmit();
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
            let n = slot.conn.fill_io_slices(&mut slices);
            match slot.outbox.write_own(&slices[..n]) {
                Ok(written) => {
                    slot.conn.advance_transmit(written);
                    if !slot.conn.has_pending_transmit() {
                        if wrote {
                            // A reply or a drain is out, and most connections go quiet for a
                            // long time after either: the queues they grew go.
                            slot.conn.shrink_to_fit();
                        }
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.write_blocked = true;
                    return Next::Keep;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("write failed: {e}");
                    return Next::Drop;
                }
            }
        }
        if slot.conn.should_close_transport() {
            return Next::Drop;
        }
        if slot.session.is_some() && !slot.closing && slot.conn.state() == State::Open {
            slot.outbox.resume();
        }
        Next::Keep
    }

    // ---- timers ----

    /// Once a second: every connection's timers, run by its core (keepalive ping, idle
    /// timeout, close timeout), to within that second.
    fn sweep(&mut self) {
        let now = Instant::now();
        let tick = secs_since(self.started, now, false);
        for index in 0..self.entries.len() {
            let entry = &mut self.entries[index];
            if entry.due == 0 || entry.due > tick {
                continue;
            }
            let Some(slot) = entry.slot.as_mut() else {
                entry.due = 0;
                continue;
            };
            match slot.conn.poll_timeout() {
                Some(deadline) if deadline <= now => {}
                later => {
                    entry.due = due_tick(self.started, later);
                    continue;
                }
            }
            slot.conn.handle_timeout(now);
            if slot.conn.close_timed_out() {
                self.remove(index);
                continue;
            }
            if self.flush(index) == Next::Drop {
                self.remove(index);
                continue;
            }
            let started = self.started;
            let entry = &mut self.entries[index];
            if let Some(slot) = entry.slot.as_mut() {
                // A keepalive ping, written: its queue goes now, not at the next quiet moment.
                if !slot.conn.has_pending_transmit() {
                    slot.conn.shrink_to_fit();
                }
                entry.due = due_tick(started, slot.conn.poll_timeout());
            }
        }
    }

    // ---- the end ----

    /// The connection is over: the socket goes (the fan-out may hold the outbox a moment
    /// longer; nothing more is written to it) and the session leaves its channels on a task.
    fn remove(&mut self, index: usize) {
        let entry = &mut self.entries[index];
        let Some(slot) = entry.slot.as_mut() else {
            return;
        };
        if let Some(socket) = slot.outbox.loop_socket() {
            let _ = self.registry.deregister(&mut SourceFd(&socket.as_raw_fd()));
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        // Nothing is written to it any more: deliveries still fanned out to it are dropped.
        slot.outbox.close(Closing::Shutdown);
        if slot.session.is_none() {
            // A command is out with the session: the slot waits for it (`on_reply`).
            slot.ended = true;
            return;
        }
        let Some(slot) = entry.slot.take() else {
            return;
        };
        entry.generation = entry.generation.wrapping_add(1).max(1);
        self.free.push(index as u32);
        let Slot {
            outbox,
            session,
            guard,
            ..
        } = slot;
        if let Some(session) = session {
            finish(session, Some(outbox), Some(guard));
        }
    }
}

/// Leaves every channel of an ended connection's session, then lets the hub forget it.
fn finish(mut session: Box<Session>, outbox: Option<Arc<Outbox>>, guard: Option<ConnectionGuard>) {
    tokio::spawn(async move {
        session.leave_all().await;
        session.unregister();
        drop(outbox);
        drop(guard);
    });
}

#[cfg(test)]
mod tests {
    /// Every idle connection is a slab entry (its `Connection` inline), a `Session` and an
    /// `Outbox`: what issue 12's per-connection figure is made of. A field added here costs
    /// every connection; the bound says so.
    #[test]
    fn an_idle_connection_holds_at_most_these_bytes() {
        assert!(std::mem::size_of::<super::Entry>() <= 208);
        assert!(std::mem::size_of::<crate::session::Session>() <= 144);
        assert!(std::mem::size_of::<crate::outbox::Outbox>() <= 176);
    }

    #[test]
    fn the_slab_grows_by_pages_and_keeps_every_index() {
        let mut slab = super::Slab::default();
        for n in 0..(super::PAGE * 2 + 3) {
            let index = slab.push(super::Entry {
                generation: n as u32,
                due: 0,
                slot: None,
            });
            assert_eq!(index, n);
        }
        assert_eq!(slab.len(), super::PAGE * 2 + 3);
        assert_eq!(slab.pages.len(), 3);
        assert!(
            slab.pages.iter().all(|p| p.capacity() == super::PAGE),
            "never moved"
        );
        assert_eq!(slab[super::PAGE + 1].generation, super::PAGE as u32 + 1);
        slab[super::PAGE * 2].generation = 7;
        assert_eq!(slab.get(super::PAGE * 2).map(|e| e.generation), Some(7));
        assert!(slab.get(super::PAGE * 2 + 3).is_none());
        assert!(slab.get_mut(super::PAGE * 9).is_none());
    }

    #[test]
    fn a_deadline_is_due_at_the_first_sweep_at_or_after_it() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        assert_eq!(super::due_tick(t0, None), 0, "no timer");
        assert_eq!(super::due_tick(t0, at(2_300)), 3);
        assert_eq!(super::due_tick(t0, at(3_000)), 3);
        assert_eq!(super::due_tick(t0, at(0)), 1, "past: the next sweep");
        // The sweep at 3.0x s sees tick 3: the 2.3 s deadline is run then, not at 2.
        assert_eq!(
            super::secs_since(t0, t0 + Duration::from_millis(3_050), false),
            3
        );
        assert_eq!(
            super::secs_since(t0, t0 + Duration::from_millis(2_950), false),
            2
        );
    }

    #[test]
    fn tokens_carry_the_slot_and_its_generation() {
        let token = super::token(7, 3);
        assert_eq!(super::split(token), (7, 3));
        assert_ne!(token, super::WAKER.0 as u64, "generations start at 1");
        assert_ne!(super::token(7, 4), token);
    }
}
