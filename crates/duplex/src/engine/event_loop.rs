//! One event loop: an edge-triggered poll over the listener and a slab of connections.
//!
//! Every connection is registered once for both readable and writable readiness (edge
//! triggered, so nothing is re-registered as interest changes). A readable edge reads until a
//! short read, which means the socket is drained (a further read would only return EAGAIN);
//! the handler runs for every message; then the queued frames go out with one vectored write.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use duplex_proto::handshake::{
    REFUSAL_DRAIN_LIMIT, REFUSAL_LINGER, Refused, ServerHandshake, parse_request, validate_request,
};
use duplex_proto::{CloseCode, Event, SharedConfig, State};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustix::buffer::spare_capacity;
use rustix::io::Errno;
use rustix::net::RecvFlags;

use super::handoff::{HandedOff, Preface, preface};
use super::slot::{Open, Phase, Slot, Written};
use super::tls::{Plaintext, Tls};
use super::transport::Transport;
use super::{EngineOptions, Handler, Shared, Socket, SocketId};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// The per-thread read buffer: reads go to its front, and what a read brought is split off and
/// handed to the connection, so single-frame messages point into it without a copy. Its bytes
/// stay initialized (safe code cannot read into uninitialized memory), so it is replaced by a
/// fresh zeroed one only when less than `MIN_READ` of it is left: one allocation and zeroing
/// per ~48 KiB received, not per read.
const SCRATCH_SIZE: usize = 64 * 1024;
const MIN_READ: usize = 16 * 1024;

/// Binary frames from this size on are read into a buffer of their own (see `read_large`).
const LARGE_FRAME: usize = 16 * 1024;
/// Room past a large frame's end in its buffer: a read that does not fill it has drained the
/// socket. Bytes of the next frame that land there are fed like any others.
const HEADROOM: usize = 8 * 1024;

/// The size of the large binary frame `buf` starts with, if it does.
fn large_frame(open: &Open, buf: &[u8]) -> Option<usize> {
    if open.has_partial() {
        return None;
    }
    open.conn.whole_frame_len(buf, LARGE_FRAME)
}

/// The start of a large binary frame of `total` bytes came into the shared buffer: when the
/// rest is still to come, moves it to a buffer of its own to read the rest behind it (a copy
/// that happens once per connection: from then on such frames are read there from their
/// start) and returns true.
#[cold]
fn hold_large_frame(open: &mut Open, total: usize, chunk: &[u8]) -> bool {
    let spill = open.spill();
    spill.expect = total;
    if total <= chunk.len() {
        return false;
    }
    spill.held = Vec::with_capacity(total + HEADROOM);
    spill.held.extend_from_slice(chunk);
    spill.held_target = total;
    true
}

/// Ciphertext read per system call on a TLS connection: what the scratch buffer always has
/// room for (`MIN_READ`), so the plaintext of one read (never more than its ciphertext, plus
/// at most one record held back from the read before) is handed on in one or two chunks.
const TLS_READ: usize = MIN_READ;

/// What a read step leaves to its loop.
enum Step {
    /// Read again.
    Again,
    /// Done with this readiness event.
    Stop(Next),
}

/// A slab entry: the connection, and the generation that tells its ids from a previous
/// occupant's.
#[derive(Debug)]
struct Entry {
    generation: u32,
    slot: Option<Slot>,
}

/// What a step decided about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Keep,
    /// Close the socket and free the slot.
    Drop,
}

struct EventLoop<'a, H: Handler> {
    poll: Poll,
    listener: TcpListener,
    /// The listener is registered (not shutting down).
    listening: bool,
    /// At the connection limit (or out of descriptors): accept again once a slot frees, or at
    /// the next sweep.
    accept_paused: bool,
    entries: Vec<Entry>,
    free: Vec<u32>,
    live: usize,
    scratch: BytesMut,
    /// Ciphertext of TLS connections, read here before it is fed to their sessions; allocated
    /// at the first TLS read.
    cipher: Vec<u8>,
    handler: H,
    options: &'a EngineOptions,
    /// `options.config` as every connection of this loop reads it: one copy for all of them
    /// (each holds a pointer).
    config: SharedConfig,
    shared: &'a Shared,
    started: Instant,
    /// Seconds since `started`, from 1 (0 means "no deadline" in a slot).
    tick: u32,
    /// Set when the shutdown began: the tick at which whatever is left is dropped.
    stopping: Option<u32>,
}

/// Runs one loop until the engine shuts down and its connections are gone.
pub(super) fn run<H: Handler>(
    listener: std::net::TcpListener,
    handler: H,
    options: &EngineOptions,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    shared
        .wakers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(waker);
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut event_loop = EventLoop {
        poll,
        listener,
        listening: true,
        accept_paused: false,
        entries: slab(options.max_connections),
        free: Vec::new(),
        live: 0,
        scratch: BytesMut::zeroed(SCRATCH_SIZE),
        cipher: Vec::new(),
        handler,
        options,
        config: SharedConfig::new(&options.config),
        shared,
        started: Instant::now(),
        tick: 1,
        stopping: None,
    };
    event_loop.run()
}

/// The slab, with room for every connection the engine may hold reserved up front: address
/// space only (an allocation this large is mapped, and untouched pages cost no memory), so the
/// slab never moves. Grown by doubling instead, it would copy itself at each step and leave
/// the smaller copies behind in the heap (a few hundred KiB at 10,000 connections: 0.03 KiB
/// per connection of the engine's ~0.2).
fn slab(max_connections: usize) -> Vec<Entry> {
    /// Beyond this many, grow as needed (a million entries reserve ~200 MB of address space).
    const MOST_RESERVED: usize = 1 << 20;
    Vec::with_capacity(max_connections.min(MOST_RESERVED))
}

/// Whole seconds, rounded up, at least 1: the timers' resolution.
fn ticks(duration: Duration) -> u32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

impl<H: Handler> EventLoop<'_, H> {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut swept = self.tick;
        loop {
            if self.stopping.is_none() && self.shared.shutdown.load(Ordering::Acquire) {
                self.begin_shutdown();
            }
            if self.stopping.is_some() && self.live == 0 {
                return Ok(());
            }
            // Timers are swept once a second while there are connections; an idle loop sleeps.
            let timeout = (self.live > 0 || self.accept_paused).then(|| {
                let next = self.started + Duration::from_secs(u64::from(self.tick));
                next.saturating_duration_since(Instant::now()) + Duration::from_millis(1)
            });
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.tick = u32::try_from(self.started.elapsed().as_secs() + 1).unwrap_or(u32::MAX);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(index) => {
                        let readable = event.is_readable() || event.is_read_closed();
                        let failed = event.is_error();
                        self.ready(index, readable || failed, event.is_writable() || failed);
                    }
                }
            }
            if self.tick != swept {
                swept = self.tick;
                self.sweep();
            }
        }
    }

    fn id(&self, index: usize) -> SocketId {
        SocketId {
            index: index as u32,
            generation: self.entries[index].generation,
        }
    }

    // ---- accepting ----

    fn accept_all(&mut self) {
        while self.listening {
            if self.shared.connections.load(Ordering::Relaxed) >= self.options.max_connections {
                self.accept_paused = true;
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.insert(stream.into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_paused = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of file descriptors and the like: try again at the next sweep
                    // rather than spinning.
                    tracing::warn!("accept: {e}");
                    self.accept_paused = true;
                    return;
                }
            }
        }
    }

    fn insert(&mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let tls = match self.new_tls() {
            Ok(tls) => tls,
            Err(e) => {
                tracing::warn!("starting a TLS session: {e}");
                return;
            }
        };
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    slot: None,
                });
                self.entries.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!("registering a connection: {e}");
            self.free.push(index as u32);
            return;
        }
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        self.live += 1;
        self.entries[index].slot = Some(Slot {
            transport: Transport { stream, tls },
            phase: Phase::Handshake(Vec::new()),
            deadline: self
                .tick
                .saturating_add(ticks(self.options.handshake_timeout)),
            write_blocked: false,
            read_paused: false,
            notified: false,
            active: false,
        });
    }

    /// A TLS session for a new connection, if the engine serves `wss://`.
    #[cfg(feature = "tls")]
    fn new_tls(&self) -> Result<Option<Box<Tls>>, rustls::Error> {
        match &self.options.tls {
            Some(config) => Tls::new(config).map(|tls| Some(Box::new(tls))),
            None => Ok(None),
        }
    }

    /// Plain TCP only, without the `tls` feature.
    #[cfg(not(feature = "tls"))]
    fn new_tls(&self) -> Result<Option<Box<Tls>>, std::convert::Infallible> {
        Ok(None)
    }

    /// Closes the socket, tells the handler if it saw the connection open, frees the slot.
    fn remove(&mut self, index: usize) {
        let id = self.id(index);
        let entry = &mut self.entries[index];
        let Some(slot) = entry.slot.take() else {
            return;
        };
        entry.generation = entry.generation.wrapping_add(1);
        if let Phase::Open(_) = &slot.phase {
            if !slot.notified {
                self.handler.on_close(id, CloseCode::ABNORMAL, "");
            }
        }
        // Closing the descriptor takes it out of the epoll set.
        drop(slot);
        self.free.push(index as u32);
        self.live -= 1;
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        if self.accept_paused && self.stopping.is_none() {
            self.accept_all();
        }
    }

    // ---- readiness ----

    fn ready(&mut self, index: usize, readable: bool, writable: bool) {
        let Some(slot) = self.entries.get_mut(index).and_then(|e| e.slot.as_mut()) else {
            return;
        };
        if writable && slot.write_blocked {
            slot.write_blocked = false;
            if self.flush(index) == Next::Drop {
                return self.remove(index);
            }
        }
        if readable && self.read_any(index) == Next::Drop {
            self.remove(index);
        }
    }

    /// Reads plain or TLS: the transport seam on the read side.
    #[inline]
    fn read_any(&mut self, index: usize) -> Next {
        match self.entries[index].slot.as_ref() {
            Some(slot) if slot.transport.tls.is_some() => self.read_tls(index),
            _ => self.read(index),
        }
    }

    /// Makes room at the front of the scratch buffer for a read.
    fn scratch_room(&mut self) -> usize {
        if self.scratch.len() < MIN_READ {
            self.scratch = BytesMut::zeroed(SCRATCH_SIZE);
        }
        self.scratch.len()
    }

    /// Reads until the socket is drained (or the connection paused, ended, or failed).
    fn read(&mut self, index: usize) -> Next {
        loop {
            let room = self.scratch_room();
            let Some(slot) = self.entries[index].slot.as_mut() else {
                return Next::Drop;
            };
            if slot.read_paused {
                return Next::Keep;
            }
            if let Phase::Open(open) = &slot.phase {
                if open.reads_large() {
                    match self.read_large(index) {
                        Step::Again => continue,
                        Step::Stop(next) => return next,
                    }
                }
            }
            let n = match rustix::net::recv(
                &slot.transport.stream,
                &mut self.scratch[..],
                RecvFlags::empty(),
            ) {
                Ok((0, _)) => return self.on_eof(index),
                Ok((n, _)) => n,
                Err(Errno::AGAIN) => return Next::Keep,
                Err(Errno::INTR) => continue,
                Err(_) => return Next::Drop,
            };
            let chunk = self.scratch.split_to(n);
            let next = match &mut slot.phase {
                Phase::Open(open) => {
                    if let Some(total) = large_frame(open, &chunk) {
                        if hold_large_frame(open, total, &chunk) {
                            if n < room {
                                return Next::Keep;
                            }
                            continue;
                        }
                    }
                    self.on_frames(index, chunk)
                }
                Phase::Handshake(_) | Phase::Linger { .. } => self.deliver(index, chunk),
            };
            if next == Next::Drop {
                return Next::Drop;
            }
            if n < room {
                // A short read: the socket is drained.
                return Next::Keep;
            }
        }
    }

    /// Reads into the connection's large-frame buffer: the rest of a large binary frame, or a
    /// whole one where the previous frame was large (`expect`, a guess at its size). Reads go
    /// into the buffer's spare capacity without zeroing it first (rustix's `spare_capacity`:
    /// safe code cannot do that with std alone), and the frame is fed whole, so its payload is
    /// never copied in user space.
    #[inline(never)]
    fn read_large(&mut self, index: usize) -> Step {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Step::Stop(Next::Drop);
        };
        let Phase::Open(open) = &mut slot.phase else {
            return Step::Stop(Next::Keep);
        };
        slot.active = true;
        let spill = open.spill();
        let target = if spill.held_target > 0 {
            spill.held_target
        } else {
            spill.expect
        };
        let mut buf = std::mem::take(&mut spill.held);
        if buf.capacity() < target + HEADROOM {
            // Room past the frame, so that a read shorter than the room says the socket is
            // drained (no read that can only return EAGAIN).
            buf.reserve_exact(target + HEADROOM - buf.len());
        }
        let room = buf.capacity() - buf.len();
        let (drained, eof) = loop {
            // One system call into the spare capacity, which is never zeroed first.
            match rustix::net::recv(
                &slot.transport.stream,
                spare_capacity(&mut buf),
                RecvFlags::empty(),
            ) {
                Ok((0, _)) => break (true, true),
                Ok((n, _)) => break (n < room, false),
                Err(Errno::AGAIN) => break (true, false),
                Err(Errno::INTR) => {}
                Err(_) => return Step::Stop(Next::Drop),
            }
        };
        if buf.is_empty() {
            // Nothing came (the frame before ended exactly at the limit): keep the guess.
            return if eof {
                Step::Stop(self.on_eof(index))
            } else {
                Step::Stop(Next::Keep)
            };
        }
        let large = large_frame(open, &buf);
        let spill = open.spill();
        match large {
            Some(total) => {
                spill.expect = total;
                if buf.len() < total && !eof {
                    if buf.capacity() < total + HEADROOM {
                        // Larger than the guess.
                        buf.reserve_exact(total + HEADROOM - buf.len());
                    }
                    spill.held = buf;
                    spill.held_target = total;
                    return if drained {
                        Step::Stop(Next::Keep)
                    } else {
                        Step::Again
                    };
                }
            }
            // A small frame after large ones: back to the shared buffer after this.
            None => spill.expect = 0,
        }
        spill.held_target = 0;
        if self.on_frames(index, BytesMut::from(bytes::Bytes::from(buf))) == Next::Drop {
            return Step::Stop(Next::Drop);
        }
        if eof {
            Step::Stop(self.on_eof(index))
        } else if drained {
            Step::Stop(Next::Keep)
        } else {
            Step::Again
        }
    }

    /// Reads a TLS connection until the socket is drained: ciphertext into the loop's cipher
    /// buffer, into the session, plaintext out into the scratch buffer and down the same path
    /// as plain bytes (`deliver`). Then the records the session wrote by itself (handshake
    /// messages, key updates, tickets) go out.
    #[cold]
    #[inline(never)]
    fn read_tls(&mut self, index: usize) -> Next {
        let mut cipher = std::mem::take(&mut self.cipher);
        if cipher.len() < TLS_READ {
            cipher = vec![0; TLS_READ];
        }
        let next = self.read_tls_into(index, &mut cipher);
        self.cipher = cipher;
        next
    }

    fn read_tls_into(&mut self, index: usize, cipher: &mut [u8]) -> Next {
        loop {
            let Some(slot) = self.entries[index].slot.as_mut() else {
                return Next::Drop;
            };
            if slot.read_paused {
                return Next::Keep;
            }
            let n =
                match rustix::net::recv(&slot.transport.stream, &mut *cipher, RecvFlags::empty()) {
                    Ok((0, _)) => return self.on_eof(index),
                    Ok((n, _)) => n,
                    Err(Errno::AGAIN) => return Next::Keep,
                    Err(Errno::INTR) => continue,
                    Err(_) => return Next::Drop,
                };
            let mut rest = &cipher[..n];
            // Plaintext collects at the front of the scratch buffer: `filled` bytes so far.
            let mut filled = 0;
            let mut closed = false;
            self.scratch_room();
            while !rest.is_empty() && !closed {
                if let Err(e) = self.feed(index, &mut rest) {
                    tracing::debug!("tls: {e}");
                    return Next::Drop;
                }
                if self.chose_h2(index) {
                    let read = self.scratch[..filled].to_vec();
                    return self.hand_off(index, read, rest);
                }
                loop {
                    if filled == self.scratch.len() {
                        // The scratch buffer is full: hand it on, continue in a fresh one.
                        let chunk = self.scratch.split_to(filled);
                        filled = 0;
                        if self.deliver(index, chunk) == Next::Drop {
                            return Next::Drop;
                        }
                        self.scratch_room();
                    }
                    let Some(tls) = self.entries[index]
                        .slot
                        .as_mut()
                        .and_then(|slot| slot.transport.tls.as_deref_mut())
                    else {
                        return Next::Drop;
                    };
                    match tls.take_plaintext(&mut self.scratch[filled..]) {
                        Plaintext::Bytes(k) => filled += k,
                        Plaintext::Empty => break,
                        Plaintext::Closed => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if filled > 0 {
                let chunk = self.scratch.split_to(filled);
                if self.deliver(index, chunk) == Next::Drop {
                    return Next::Drop;
                }
            }
            if closed {
                // close_notify: the peer's end of stream.
                return self.on_eof(index);
            }
            let Some(slot) = self.entries[index].slot.as_mut() else {
                return Next::Drop;
            };
            let shut = matches!(slot.phase, Phase::Linger { shut: true, .. });
            if !slot.write_blocked && !shut {
                match slot.transport.flush() {
                    Ok(Written::All) => {}
                    Ok(Written::Blocked) => slot.write_blocked = true,
                    Err(_) => return Next::Drop,
                }
            }
            if n < cipher.len() {
                // A short read: the socket is drained.
                return Next::Keep;
            }
        }
    }

    /// Connection `index` is still in its handshake phase, under TLS that completed with
    /// ALPN `h2`, and HTTP/2 is handed off.
    fn chose_h2(&self, index: usize) -> bool {
        if self.options.http2_handoff.is_none() {
            return false;
        }
        match self.entries[index].slot.as_ref() {
            Some(Slot {
                phase: Phase::Handshake(_),
                transport: Transport { tls: Some(tls), .. },
                ..
            }) => tls.chose_h2(),
            _ => false,
        }
    }

    /// Hands connection `index` off as HTTP/2 (see `super::handoff`): frees its slot without
    /// closing the socket, takes it out of the poll, and calls the hand-off with the socket,
    /// `read` (plaintext read so far) and, for TLS, the session with `cipher` (ciphertext
    /// read but not fed yet) fed in. Returns `Keep`: the slot is empty now, which callers
    /// treat as gone (nothing in between accepts a connection that could take the slot).
    #[cold]
    fn hand_off(&mut self, index: usize, read: Vec<u8>, cipher: &[u8]) -> Next {
        let entry = &mut self.entries[index];
        let Some(slot) = entry.slot.take() else {
            return Next::Drop;
        };
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.live -= 1;
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        let Transport { stream, tls } = slot.transport;
        if let Err(e) = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&stream.as_raw_fd()))
        {
            // Still registered, the socket would wake this loop for a slot that is not its.
            tracing::warn!("deregistering a connection to hand off: {e}");
            return Next::Keep;
        }
        let Some(handoff) = &self.options.http2_handoff else {
            return Next::Keep;
        };
        #[cfg(feature = "tls")]
        let mut read = read;
        #[cfg(feature = "tls")]
        let tls = match tls.map(|tls| tls.into_session(cipher, &stream, &mut read)) {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(e)) => {
                tracing::debug!("tls, handing off: {e}");
                return Next::Keep;
            }
        };
        #[cfg(not(feature = "tls"))]
        let _ = (tls, cipher);
        handoff.call(HandedOff {
            stream,
            read,
            #[cfg(feature = "tls")]
            tls,
        });
        Next::Keep
    }

    /// Feeds the front of `cipher` to connection `index`'s session.
    fn feed(&mut self, index: usize, cipher: &mut &[u8]) -> io::Result<()> {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        match &mut slot.transport.tls {
            Some(tls) => tls.feed(cipher, &slot.transport.stream),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Bytes that came in, plain or decrypted, to where the connection stands: the request
    /// head, frames, or the discard of a lingering connection.
    fn deliver(&mut self, index: usize, chunk: BytesMut) -> Next {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        match &mut slot.phase {
            Phase::Open(_) => self.on_frames(index, chunk),
            Phase::Handshake(_) => self.on_request_bytes(index, chunk),
            // Discarded: the peer's last words after ours, up to the drain bound.
            Phase::Linger { drained, .. } => {
                *drained = drained.saturating_add(chunk.len());
                if *drained > REFUSAL_DRAIN_LIMIT {
                    Next::Drop
                } else {
                    Next::Keep
                }
            }
        }
    }

    fn on_eof(&mut self, index: usize) -> Next {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        if let Phase::Open(open) = &mut slot.phase {
            // Whatever the peer's Close asked for is written by now, or never will be.
            let _ = open.write(&mut slot.transport);
        }
        Next::Drop
    }

    // ---- the opening handshake ----

    fn on_request_bytes(&mut self, index: usize, chunk: BytesMut) -> Next {
        let max = self.options.max_handshake_size;
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        let Phase::Handshake(buf) = &mut slot.phase else {
            return Next::Keep;
        };
        // The whole head in one read is the common case: parse it where it landed.
        if !buf.is_empty() {
            buf.extend_from_slice(&chunk);
        }
        let data: &[u8] = if buf.is_empty() { &chunk } else { buf };
        // HTTP/2 by prior knowledge (h2c): only plain connections (under TLS, ALPN says).
        if self.options.http2_handoff.is_some() && slot.transport.tls.is_none() {
            match preface(data) {
                Preface::Full => {
                    let read = data.to_vec();
                    return self.hand_off(index, read, &[]);
                }
                Preface::Partial => {
                    if buf.is_empty() {
                        buf.extend_from_slice(&chunk);
                    }
                    return Next::Keep;
                }
                Preface::No => {}
            }
        }
        let parsed = parse_request(data, max);
        let (request, consumed) = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                if buf.is_empty() {
                    buf.extend_from_slice(&chunk);
                }
                return Next::Keep;
            }
            Err(e) => return self.refuse(index, &e.into()),
        };
        let rest = if buf.is_empty() {
            &chunk[consumed..]
        } else {
            &buf[consumed..]
        };
        let leftover = BytesMut::from(rest);
        let offer = match validate_request(&request) {
            Ok(offer) => offer,
            Err(e) => return self.refuse(index, &e.into()),
        };
        let choice = self.handler.on_upgrade(&request, &offer);
        let handshake = ServerHandshake::shared(&self.config);
        #[cfg(feature = "deflate")]
        let handshake = handshake.deflate(self.options.deflate.as_ref());
        let upgrade = match handshake.decide(&offer, choice) {
            Ok(upgrade) => upgrade,
            Err(refused) => return self.refuse(index, &refused),
        };
        let response = upgrade.encode_http11();
        let mut conn = upgrade.connection;
        // Start the core's clock now, on the sweep's time scale: from here on `poll_timeout`
        // is `None` only when no timer runs, so sweeps pass such connections by for free.
        conn.handle_timeout(self.sweep_time(self.tick));
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        let mut done = 0;
        match slot.transport.write_raw(&response, &mut done) {
            Ok(Written::All) => {}
            Ok(Written::Blocked) => slot.write_blocked = true,
            Err(_) => return Next::Drop,
        }
        let mut preface = response;
        preface.drain(..done);
        slot.deadline = 0;
        // A 101 written whole (the usual case) leaves nothing: `Open::new` then drops its
        // buffer now rather than keep it for the connection's life.
        slot.phase = Phase::Open(Open::new(conn, preface));
        let id = self.id(index);
        if let Some(Phase::Open(open)) = self.entries[index].slot.as_mut().map(|s| &mut s.phase) {
            self.handler.on_open(&mut Socket {
                id,
                conn: &mut open.conn,
            });
        }
        if leftover.is_empty() {
            self.flush(index)
        } else {
            self.on_frames(index, leftover)
        }
    }

    /// Answers a bad or refused request with its HTTP error, then lingers within the
    /// handshake module's bounds: [`REFUSAL_LINGER`] (at least, and at most one sweep more)
    /// and [`REFUSAL_DRAIN_LIMIT`] bytes read and discarded (see `read`).
    fn refuse(&mut self, index: usize, refused: &Refused) -> Next {
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        slot.phase = Phase::Linger {
            out: refused.encode_http11(),
            shut: false,
            drained: 0,
        };
        // The sweep runs once a tick: one more tick makes the linger at least REFUSAL_LINGER.
        slot.deadline = self
            .tick
            .saturating_add(ticks(REFUSAL_LINGER).saturating_add(1));
        self.flush(index)
    }

    // ---- frames ----

    /// Feeds received bytes to the connection and runs the handler for what they held.
    #[inline]
    fn on_frames(&mut self, index: usize, mut chunk: BytesMut) -> Next {
        let id = self.id(index);
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        let Phase::Open(open) = &mut slot.phase else {
            return Next::Keep;
        };
        let open: &mut Open = open;
        slot.active = true;
        let buf = match open.spill.as_mut() {
            Some(spill) if !spill.read_buf.is_empty() => {
                spill.read_buf.extend_from_slice(&chunk);
                chunk.clear();
                &mut spill.read_buf
            }
            _ => &mut chunk,
        };
        // A violation is reported below, from `protocol_error`, whether this call found it or
        // the drain below carried it out (after the messages before it were answered).
        let _ = open.conn.recv(buf);
        while let Some(event) = open.conn.poll_event() {
            match event {
                Event::Message(message) => {
                    let mut socket = Socket {
                        id,
                        conn: &mut open.conn,
                    };
                    self.handler.on_message(&mut socket, message);
                }
                Event::Close(frame) => {
                    if !slot.notified {
                        slot.notified = true;
                        let (code, reason) = match &frame {
                            Some(frame) => (frame.code, frame.reason.as_str()),
                            None => (CloseCode::NO_STATUS, ""),
                        };
                        self.handler.on_close(id, code, reason);
                    }
                }
                // The answer to our keepalive ping: the connection is otherwise quiet, so its
                // event queue goes now (see `sweep`); kept while it still holds events.
                Event::Pong(_) => open.conn.shrink_to_fit(),
                // Pongs are queued by the connection; fragments are off.
                Event::Ping(_) | Event::Fragment { .. } => {}
            }
        }
        if let (Some(e), false) = (open.conn.protocol_error(), slot.notified) {
            slot.notified = true;
            self.handler.on_close(id, e.close_code(), &e.to_string());
        }
        if !chunk.is_empty() {
            // A partial header or control frame: the only bytes a connection keeps.
            open.spill().read_buf.extend_from_slice(&chunk);
        }
        self.flush(index)
    }

    // ---- writing ----

    /// Writes what is queued; moves a finished connection on to lingering; pauses and resumes
    /// reading around the backpressure bound.
    #[inline]
    fn flush(&mut self, index: usize) -> Next {
        let tick = self.tick;
        let Some(slot) = self.entries[index].slot.as_mut() else {
            return Next::Drop;
        };
        if slot.write_blocked {
            // Waiting for writable; what the handler queued meanwhile may pass the bound.
            if let Phase::Open(open) = &slot.phase {
                if open.conn.pending_transmit_bytes() > self.options.max_backpressure {
                    slot.read_paused = true;
                }
            }
            return Next::Keep;
        }
        match &mut slot.phase {
            // Only a TLS handshake writes here (its records, after a full socket).
            Phase::Handshake(_) => match slot.transport.flush() {
                Ok(Written::All) => Next::Keep,
                Ok(Written::Blocked) => {
                    slot.write_blocked = true;
                    Next::Keep
                }
                Err(_) => Next::Drop,
            },
            Phase::Linger { out, shut, .. } => {
                if !*shut {
                    let mut done = 0;
                    let written = slot.transport.write_raw(out, &mut done);
                    out.drain(..done);
                    match written {
                        Ok(Written::All) => {
                            *out = Vec::new();
                            match slot.transport.shut_write() {
                                Ok(Written::All) => *shut = true,
                                Ok(Written::Blocked) => slot.write_blocked = true,
                                Err(_) => return Next::Drop,
                            }
                        }
                        Ok(Written::Blocked) => slot.write_blocked = true,
                        Err(_) => return Next::Drop,
                    }
                }
                Next::Keep
            }
            Phase::Open(open) => {
                let was_paused = slot.read_paused;
                match open.write(&mut slot.transport) {
                    Ok(Written::All) => {}
                    Ok(Written::Blocked) => {
                        slot.write_blocked = true;
                        if open.conn.pending_transmit_bytes() > self.options.max_backpressure {
                            slot.read_paused = true;
                        }
                        return Next::Keep;
                    }
                    Err(_) => return Next::Drop,
                }
                if open.conn.state() == State::Open && !was_paused {
                    return Next::Keep;
                }
                if open.conn.should_close_transport() {
                    // The core's call (section 7.1.1: a server closes TCP first, once both
                    // Close frames are through or the failure's Close is written): shut the
                    // write side (TLS: after close_notify), and linger so the peer reads our
                    // last bytes before the descriptor goes.
                    slot.phase = Phase::Linger {
                        out: Vec::new(),
                        shut: false,
                        drained: 0,
                    };
                    slot.deadline = tick.saturating_add(ticks(self.options.close_timeout));
                    return self.flush(index);
                }
                if was_paused {
                    slot.read_paused = false;
                    let id = SocketId {
                        index: index as u32,
                        generation: self.entries[index].generation,
                    };
                    let Some(Phase::Open(open)) =
                        self.entries[index].slot.as_mut().map(|s| &mut s.phase)
                    else {
                        return Next::Drop;
                    };
                    self.handler.on_drain(&mut Socket {
                        id,
                        conn: &mut open.conn,
                    });
                    // The readable edge may have come and gone while paused.
                    return self.read_any(index);
                }
                Next::Keep
            }
        }
    }

    // ---- timers and shutdown ----

    /// Once a second: the handshake and linger deadlines (the loop's own), and every upgraded
    /// connection's timers, run by its core (keepalive, idle, close: what they mean is
    /// `duplex_proto::Timers`'); their resolution here is the sweep's second.
    fn sweep(&mut self) {
        let tick = self.tick;
        let now = self.sweep_time(tick);
        if self.stopping.is_some_and(|deadline| tick >= deadline) {
            for index in 0..self.entries.len() {
                self.remove(index);
            }
            return;
        }
        if self.accept_paused && self.stopping.is_none() {
            self.accept_all();
        }
        for index in 0..self.entries.len() {
            let Some(slot) = self.entries[index].slot.as_mut() else {
                continue;
            };
            if slot.deadline != 0 && tick >= slot.deadline {
                self.remove(index);
                continue;
            }
            let Phase::Open(open) = &mut slot.phase else {
                continue;
            };
            open.release_if_quiet(std::mem::take(&mut slot.active));
            // `None`: no timer runs (the clock was started at the upgrade). Most connections
            // of a busy loop end here or at the comparison: a sweep costs a few instructions
            // per connection, not a clock step each.
            match open.conn.poll_timeout() {
                Some(deadline) if deadline <= now => {}
                Some(_) | None => continue,
            }
            open.conn.handle_timeout(now);
            if open.conn.close_timed_out() {
                // The close handshake took longer than the close timeout: drop the socket.
                self.remove(index);
                continue;
            }
            if !open.conn.has_pending_transmit() && !open.conn.should_close_transport() {
                continue;
            }
            if self.flush(index) == Next::Drop {
                self.remove(index);
            } else if let Some(Phase::Open(open)) =
                self.entries[index].slot.as_mut().map(|s| &mut s.phase)
            {
                // A keepalive ping, written: its queue goes now rather than at the next quiet
                // sweep. A ping round reaches every quiet connection within one sweep, and
                // each keeping its queue until the next would raise the heap's high-water
                // mark (RSS) by that much for good.
                open.conn.shrink_to_fit();
            }
        }
    }

    /// The time a sweep of `tick` stands for: the second it is for, not the clock's reading,
    /// so sweeps step the cores exactly a second apart (jitter cannot make a 2 s timer wait
    /// for a third sweep), and an upgrade starts its core's clock on the same scale.
    fn sweep_time(&self, tick: u32) -> Instant {
        self.started + Duration::from_secs(u64::from(tick.saturating_sub(1)))
    }

    /// Stops accepting and starts the close handshake (1001) on every connection.
    fn begin_shutdown(&mut self) {
        let _ = self.poll.registry().deregister(&mut self.listener);
        self.listening = false;
        self.accept_paused = false;
        self.stopping = Some(self.tick.saturating_add(ticks(self.options.close_timeout)));
        for index in 0..self.entries.len() {
            let Some(slot) = self.entries[index].slot.as_mut() else {
                continue;
            };
            if let Phase::Open(open) = &mut slot.phase {
                let _ = open
                    .conn
                    .close(CloseCode::GOING_AWAY, "server shutting down");
            } else if let Phase::Handshake(_) = slot.phase {
                self.remove(index);
                continue;
            }
            if self.flush(index) == Next::Drop {
                self.remove(index);
            }
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::Entry;

    /// An idle upgraded connection costs the engine its slab entry and nothing on the heap
    /// (the rest is boxed while in use, or shared): at most 192 bytes, so that with the
    /// heap's fixed costs 10,000 idle connections stay under 0.25 KiB each (issue 12; an
    /// entry and its boxed state were ~0.6 KiB).
    #[test]
    fn a_slab_entry_is_at_most_192_bytes() {
        let size = std::mem::size_of::<Entry>();
        assert!(size <= 192, "a slab entry grew to {size} bytes");
    }
}
