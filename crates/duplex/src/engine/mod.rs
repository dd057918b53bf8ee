//! A callback server in the uWebSockets model: one event loop per thread, no task per
//! connection (feature `engine`).
//!
//! The tokio server ([`accept`](crate::accept)) gives every connection a task, a waker and a
//! future; that costs about a thousand instructions per message in scheduling alone, and a few
//! hundred bytes per idle connection. The engine drops that layer: each thread runs one
//! edge-triggered `epoll` loop (through mio) over a slab of connections, reads into one scratch
//! buffer per thread, feeds the bytes to each connection's sans-IO
//! [`Connection`], calls the application's [`Handler`] for every
//! message, and writes what the callbacks queued with one vectored write per connection and
//! readiness event.
//!
//! ```text
//!  epoll ─ready─▶ read into the thread's scratch ─▶ Connection::recv ─▶ Handler::on_message
//!                                                                        │ Socket::send
//!  socket ◀─ one writev per connection and wake-up ◀─ Connection transmits ◀┘
//! ```
//!
//! - An idle connection holds its file descriptor, its `Connection` and a slab entry: no read
//!   buffer (only a partial frame header is ever kept), no write buffer, no task.
//! - A connection whose queued output passes [`EngineOptions::max_backpressure`] is not read
//!   until the peer catches up, so a client that sends without reading cannot grow the server's
//!   memory; [`Handler::on_drain`] says when its queue is empty again.
//! - Timers are swept once a second: the handshake deadline is the loop's own; keepalive, idle
//!   and close timeouts are run by each connection's core, with the meaning documented on
//!   [`duplex_proto::Timers`] (the same as the tokio runtime's), to within that second.
//! - `wss://` with [`EngineOptions::tls`] (feature `tls`): the connection's transport is its
//!   socket plus a rustls session, driven sans-IO like the WebSocket core: ciphertext in,
//!   plaintext out into the same frame path, writes through the session. The handshake
//!   deadline covers the TLS handshake; closing sends `close_notify`; a peer that sends
//!   garbage or fails its handshake loses its own connection only.
//! - HTTP/2 on the same port with [`EngineOptions::http2_handoff`]: the engine recognises an
//!   HTTP/2 connection (the h2c preface, or ALPN `h2` under TLS) and hands it, with what it
//!   read and its TLS session, to a server that speaks HTTP/2 ([`Handoff`]).
//!
//! ```no_run
//! use duplex::engine::{Engine, EngineOptions, Handler, Socket};
//! use duplex::Message;
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) {
//!         // Queued now, written once the loop has run every callback of this wake-up.
//!         let _ = socket.send(message);
//!     }
//! }
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:9001")?;
//! let engine = Engine::new(EngineOptions::default());
//! let handle = engine.handle();
//! // handle.shutdown() from another thread (a signal handler) closes every connection with
//! // 1001 and makes run() return.
//! engine.run(listener, || Echo)?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod event_loop;
mod handoff;
mod slot;
mod tls;
mod transport;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use duplex_proto::handshake::{ClientOffer, DEFAULT_MAX_HANDSHAKE_SIZE};
use duplex_proto::{CloseCode, Config, Connection, Error, Message, PreparedMessage};
use http::Request;

use crate::server::{Accept, Reject};

pub use handoff::{HTTP2_PREFACE, HandedOff, Handoff};

/// Settings of an [`Engine`]. Every limit has a safe default.
///
/// ```
/// use std::time::Duration;
/// let options = duplex::engine::EngineOptions {
///     threads: 2,
///     idle_timeout: Some(Duration::from_secs(60)),
///     ..Default::default()
/// };
/// assert_eq!(options.max_connections, 100_000);
/// ```
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Protocol limits of every connection. `streaming_receive` is ignored: handlers get whole
    /// messages.
    pub config: Config,
    /// permessage-deflate to accept when a client offers it, `None` to refuse compression.
    /// Default: accepted with the default parameters.
    #[cfg(feature = "deflate")]
    pub deflate: Option<duplex_proto::extensions::deflate::DeflateConfig>,
    /// Event loops (threads) sharing the listener. Default 1; `run` uses the calling thread
    /// for one of them.
    pub threads: usize,
    /// Most connections open at once, across all loops; more wait in the kernel's accept
    /// queue. Default 100,000.
    pub max_connections: usize,
    /// How long a client has to send a complete request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request head; larger gets 431. Default 16 KiB.
    pub max_handshake_size: usize,
    /// Close (1001 "idle timeout") a connection that sent nothing for this long. Default: none.
    /// Overrides `config.timers` (see [`duplex_proto::Timers`]).
    pub idle_timeout: Option<Duration>,
    /// Ping a connection that sent nothing for this long, and again every interval while it
    /// stays quiet. Default: none. Overrides `config.timers`.
    pub ping_interval: Option<Duration>,
    /// How long the close handshake may take before the socket is dropped; also bounds the
    /// linger after a refusal and the shutdown. Default 5 s. Overrides `config.timers`.
    pub close_timeout: Duration,
    /// Bytes queued for one connection above which it is not read until they are written.
    /// Default 1 MiB.
    pub max_backpressure: usize,
    /// Serve `wss://` with this configuration (e.g. from [`crate::tls::server_config`]);
    /// `None` (the default): plain `ws://`. The engine speaks HTTP/1.1 upgrades itself, so it
    /// advertises ALPN `http/1.1` whatever the configuration says, and `h2` before it when
    /// [`http2_handoff`](Self::http2_handoff) is set. A configuration with a
    /// certificate resolver of its own (`ResolvesServerCert`) can change certificates while
    /// the engine runs: each handshake asks it.
    ///
    /// ```no_run
    /// let (chain, key) = duplex::tls::load_pem("cert.pem", "key.pem")?;
    /// let options = duplex::engine::EngineOptions {
    ///     tls: Some(duplex::tls::server_config(chain, key)?),
    ///     ..Default::default()
    /// };
    /// # drop(options);
    /// # Ok::<(), duplex::tls::TlsError>(())
    /// ```
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where HTTP/2 connections go: `None` (the default) refuses them as bad HTTP/1.1
    /// requests (400); with a [`Handoff`], a plain connection that starts with the h2c preface
    /// and a TLS connection that chose `h2` by ALPN are handed to it (see [`Handoff`]).
    pub http2_handoff: Option<Handoff>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            config: Config::default(),
            #[cfg(feature = "deflate")]
            deflate: Some(Default::default()),
            threads: 1,
            max_connections: 100_000,
            handshake_timeout: Duration::from_secs(10),
            max_handshake_size: DEFAULT_MAX_HANDSHAKE_SIZE,
            idle_timeout: None,
            ping_interval: None,
            close_timeout: Duration::from_secs(5),
            max_backpressure: 1 << 20,
            #[cfg(feature = "tls")]
            tls: None,
            http2_handoff: None,
        }
    }
}

/// Identifies a connection of one event loop for its whole life; a slot reused by a later
/// connection gets a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    index: u32,
    generation: u32,
}

impl SocketId {
    /// The slab slot (unique among the open connections of one loop).
    pub fn index(self) -> u32 {
        self.index
    }
}

/// A connection, lent to a [`Handler`] callback. What is sent is queued and written when the
/// loop has run the callbacks of the current wake-up.
#[derive(Debug)]
pub struct Socket<'a> {
    id: SocketId,
    conn: &'a mut Connection,
}

impl Socket<'_> {
    /// This connection's id.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// Queues a message. Fails once the connection is closing.
    pub fn send(&mut self, message: Message) -> Result<(), Error> {
        self.conn.send(message)
    }

    /// Queues a message framed once for many connections (fan-out).
    pub fn send_prepared(&mut self, prepared: &PreparedMessage) -> Result<(), Error> {
        self.conn.send_prepared(prepared)
    }

    /// Queues a ping.
    pub fn ping(&mut self, payload: Bytes) -> Result<(), Error> {
        self.conn.ping(payload)
    }

    /// Starts the close handshake; the socket is dropped when the peer answers, or after
    /// [`EngineOptions::close_timeout`].
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.conn.close(code, reason)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn buffered_amount(&self) -> usize {
        self.conn.pending_transmit_bytes()
    }
}

/// The application: one instance per event loop, called on that loop's thread.
pub trait Handler {
    /// A valid upgrade request arrived: accept it (with a subprotocol, extra headers) or refuse
    /// it with an HTTP status. Default: accept.
    fn on_upgrade(&mut self, request: &Request<()>, offer: &ClientOffer) -> Result<Accept, Reject> {
        let _ = (request, offer);
        Ok(Accept::default())
    }

    /// The connection is open (the 101 response is queued).
    fn on_open(&mut self, socket: &mut Socket<'_>) {
        let _ = socket;
    }

    /// A whole text or binary message.
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message);

    /// The connection's queue, which had to wait for the socket, is written out.
    fn on_drain(&mut self, socket: &mut Socket<'_>) {
        let _ = socket;
    }

    /// The connection ended: `code` is the peer's close code (1005 for a Close without one),
    /// the code sent for a protocol violation, or 1006 when the connection was lost without a
    /// close handshake. Called once for every connection `on_open` saw.
    fn on_close(&mut self, id: SocketId, code: CloseCode, reason: &str) {
        let _ = (id, code, reason);
    }
}

/// What the loops share: the shutdown flag, their wakers, the connection count.
#[derive(Debug, Default)]
struct Shared {
    shutdown: AtomicBool,
    wakers: Mutex<Vec<Arc<mio::Waker>>>,
    connections: AtomicUsize,
}

/// Stops an [`Engine`] from any thread.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Stops accepting, closes every connection with 1001 (dropping those that do not answer
    /// within the close timeout) and makes [`Engine::run`] return.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let wakers = self
            .shared
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for waker in wakers.iter() {
            let _ = waker.wake();
        }
    }

    /// Connections open (upgraded or in their handshake) across all loops.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

/// The server: [`EngineOptions::threads`] event loops on one listener.
#[derive(Debug)]
pub struct Engine {
    options: EngineOptions,
    shared: Arc<Shared>,
}

impl Engine {
    /// An engine with these options.
    pub fn new(options: EngineOptions) -> Engine {
        Engine {
            options,
            shared: Arc::default(),
        }
    }

    /// A handle to stop it.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves `listener` until [`EngineHandle::shutdown`]: one loop on the calling thread and
    /// `threads - 1` more, each with a handler made by `make_handler`.
    pub fn run<H, F>(self, listener: std::net::TcpListener, make_handler: F) -> io::Result<()>
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        let handle = self.handle();
        let mut options = self.options;
        options.config.streaming_receive = false;
        // The core runs the timers: one meaning for every runtime.
        options.config.timers = duplex_proto::Timers {
            ping_interval: options.ping_interval,
            idle_timeout: options.idle_timeout,
            close_timeout: options.close_timeout,
        };
        options
            .config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        #[cfg(feature = "tls")]
        if let Some(config) = &options.tls {
            options.tls = Some(tls::with_alpn(config, options.http2_handoff.is_some()));
        }
        options.threads = options.threads.max(1);
        options.max_connections = options.max_connections.max(1);
        listener.set_nonblocking(true)?;
        let options = Arc::new(options);
        let make_handler = Arc::new(make_handler);
        let mut threads = Vec::new();
        for n in 1..options.threads {
            let listener = listener.try_clone()?;
            let (options, shared, make) =
                (options.clone(), self.shared.clone(), make_handler.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("duplex-engine-{n}"))
                .spawn(move || event_loop::run(listener, make(), &options, &shared));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    handle.shutdown();
                    return Err(e);
                }
            }
        }
        let result = event_loop::run(listener, make_handler(), &options, &self.shared);
        if result.is_err() {
            handle.shutdown();
        }
        for thread in threads {
            match thread.join() {
                Ok(Err(e)) => tracing::warn!("engine loop: {e}"),
                Err(_) => tracing::error!("an engine loop panicked"),
                Ok(Ok(())) => {}
            }
        }
        result
    }
}

#[cfg(test)]
mod handoff_tests;
#[cfg(test)]
mod tests;
#[cfg(all(test, feature = "tls"))]
mod tls_tests;
