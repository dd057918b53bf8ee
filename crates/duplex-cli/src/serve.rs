//! `duplex serve`: the echo server, for conformance runs and for people testing their clients.
//!
//! HTTP/1.1 and HTTP/2 on one port, under TLS or not, whichever runtime runs:
//!
//! - the engine (default) serves HTTP/1.1 upgrades itself and hands HTTP/2 connections (the
//!   h2c preface, or ALPN `h2`) to this process's tokio runtime (`duplex::engine::Handoff`),
//!   which continues them (`duplex::resume`) and serves them with [`serve_http`];
//! - `--runtime tokio` serves every connection with [`serve_http`]: hyper-util's auto
//!   connection (HTTP/1.1, h2c, ALPN `h2` under TLS, `SETTINGS_ENABLE_CONNECT_PROTOCOL`) and
//!   duplex's upgrade API.
//!
//! A plain `GET` without an upgrade (a browser loading a page) gets [`PAGE`], a tiny HTML page,
//! from [`serve_http`]: a browser only opens WebSockets over HTTP/2 (RFC 8441) on an HTTP/2
//! connection it already holds to that origin, so there must be something to load over it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;

use clap::Args;
use duplex::engine::{Engine, EngineOptions, HandedOff, Handler, Handoff, Socket};
use duplex::resume::{Prefixed, ResumedTls};
use duplex::upgrade::{WebSocketUpgrade, refusal};
use duplex::{Accept, CloseCode, Config, Message, ServerOptions};
use duplex_proto::MessageBudget;
use futures_util::{Sink, Stream};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::shutdown::{Listener, Shutdown};
use crate::{CliError, Context};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Echo every text and binary message back as it came.
    #[arg(long)]
    echo: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001", env = "DUPLEX_LISTEN")]
    listen: SocketAddr,
    /// PEM certificate chain: serve wss:// (needs --tls-key), ALPN h2 and http/1.1. SIGHUP
    /// reads both files again:
    /// new TLS handshakes get the new certificate, open connections stay.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse permessage-deflate (accepted by default).
    #[arg(long)]
    no_deflate: bool,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = duplex_proto::config::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = duplex_proto::config::DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: usize,
    /// Most connections served at once; more wait in the kernel's accept queue.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Seconds a client has to complete the opening handshake.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Ping a connection that sent nothing for this long (`30`, `30s`, `500ms`; `0`: never).
    /// 30 s keeps NAT and proxy mappings alive (many drop idle TCP after 60 s) for the cost of
    /// one small frame per quiet connection and half-minute.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Close (1001 "idle timeout") a connection that sent nothing, not even a pong, for this
    /// long (`0`: never). 90 s is three ping intervals: a live client answers at least two
    /// pings before it, so only a silent or vanished one is closed, and its memory freed.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Bytes all partly received messages may hold together, across every connection
    /// (fragments so far and inflated output). A connection whose message would pass it is
    /// closed: 1009 if that message alone is larger than the budget, else 1013 (try again
    /// later). `0`: no budget (each message is still bounded by --max-message-size).
    #[arg(long, default_value_t = DEFAULT_MESSAGE_BUDGET)]
    message_budget: usize,
    /// Worker threads (default: one per core). 1 runs everything on the calling thread, which
    /// is what benchmarks pinned to one core want.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Which server runs the connections: `engine` (one epoll loop per thread and no task per
    /// connection: the leanest), `tokio` (a task per connection, through `duplex::accept`), or
    /// `auto`: the engine. Both serve ws:// and wss://, over HTTP/1.1 and HTTP/2 (RFC 8441) on
    /// the one port; the engine hands HTTP/2 connections to a tokio runtime thread.
    #[arg(long, value_enum, default_value_t = Runtime::Auto)]
    runtime: Runtime,
}

/// `--message-budget`'s default: four messages of the default `--max-message-size` in
/// flight at once, while the 12 connections of issue 12 held 721 MiB without one.
const DEFAULT_MESSAGE_BUDGET: usize = 256 << 20;

/// A duration in seconds (`90`, `90s`) or milliseconds (`500ms`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix("ms") {
        Some(number) => (number, Duration::from_millis(1)),
        None => (
            text.strip_suffix('s').unwrap_or(text),
            Duration::from_secs(1),
        ),
    };
    let n: u32 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected seconds (`90`, `90s`) or `500ms`"))?;
    Ok(unit * n)
}

/// `None` for a zero duration: the flag's way of saying "off".
fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    Auto,
    Engine,
    Tokio,
}

impl ServeArgs {
    fn uses_engine(&self) -> bool {
        match self.runtime {
            Runtime::Engine | Runtime::Auto => true,
            Runtime::Tokio => false,
        }
    }

    /// Threads of the tokio runtime `main` starts: with the engine it only waits for signals.
    pub fn tokio_threads(&self) -> Option<usize> {
        if self.uses_engine() {
            Some(1)
        } else {
            self.threads
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    if !args.echo {
        return Err(CliError(
            "nothing to serve: pass --echo (the hub is `duplex hub`)".into(),
        ));
    }
    // One budget for every connection of the process, whichever runtime serves them.
    let budget = (args.message_budget > 0).then(|| MessageBudget::new(args.message_budget));
    let config = Config {
        max_message_size: args.max_message_size,
        max_frame_size: args.max_frame_size,
        message_budget: budget.clone(),
        ..Config::default()
    };
    config.validate().context(|| "limits".into())?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let certificate = Arc::new(ReloadableCert::new(cert, key)?);
            tokio::spawn(reload_on_sighup(certificate.clone()));
            Some(certificate.server_config()?)
        }
        _ => None,
    };
    if let Some(budget) = &budget {
        tokio::spawn(report_refusals(budget.clone()));
    }
    let result = if args.uses_engine() {
        run_engine(args, config, tls).await
    } else {
        run_tokio(args, config, tls).await
    };
    if let Some(budget) = &budget {
        tracing::info!(
            held = budget.held(),
            refusals = budget.refusals(),
            "message budget of {} bytes at exit",
            budget.limit()
        );
    }
    result
}

/// Says when connections were closed for the message budget (1009/1013), at most every 10 s.
async fn report_refusals(budget: MessageBudget) {
    let mut reported = 0;
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        every.tick().await;
        let refusals = budget.refusals();
        if refusals > reported {
            tracing::warn!(
                held = budget.held(),
                "{} connections closed for the message budget of {} bytes ({refusals} in all)",
                refusals - reported,
                budget.limit()
            );
            reported = refusals;
        }
    }
}

/// What the tokio runtime serves with: the limits, the timers, the handshake deadline.
fn server_options(args: &ServeArgs, config: Config) -> ServerOptions {
    let mut options = ServerOptions {
        config,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        websocket: duplex::WebSocketOptions {
            ping_interval: nonzero(args.ping_interval),
            idle_timeout: nonzero(args.idle_timeout),
            ..duplex::WebSocketOptions::default()
        },
        ..ServerOptions::default()
    };
    if args.no_deflate {
        options.deflate = None;
    }
    options
}

/// What the engine serves with (TLS apart): the same limits and timers as `server_options`.
fn engine_options(args: &ServeArgs, config: Config, threads: usize) -> EngineOptions {
    let mut options = EngineOptions {
        config,
        threads,
        max_connections: args.max_connections,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        ping_interval: nonzero(args.ping_interval),
        idle_timeout: nonzero(args.idle_timeout),
        ..EngineOptions::default()
    };
    if args.no_deflate {
        options.deflate = None;
    }
    options
}

/// Echo on tokio: a task per connection, each served by [`serve_http`] (HTTP/1.1 and
/// HTTP/2).
async fn run_tokio(
    args: ServeArgs,
    config: Config,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<ExitCode, CliError> {
    let tls = tls.map(duplex::tls::TlsAcceptor::from);
    let listener = TcpListener::bind(args.listen)
        .await
        .context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().context(|| "local address".into())?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!("echo server on {scheme}://{local} (HTTP/1.1 and HTTP/2)");

    let echo = EchoHttp::new(&args, config);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let permit = tokio::select! {
            _ = &mut signal => break,
            permit = echo.slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let echo = echo.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let permit = Arc::new(permit);
            match tls {
                Some(acceptor) => {
                    match duplex::tls::accept(&acceptor, tcp, echo.handshake_timeout).await {
                        Ok(stream) => serve_http(stream, echo, permit).await,
                        Err(e) => tracing::debug!(%peer, "tls: {e}"),
                    }
                }
                None => serve_http(tcp, echo, permit).await,
            }
        });
    }
    drop(listener);
    echo.drain().await;
    Ok(ExitCode::SUCCESS)
}

/// What every HTTP connection of the echo server shares, whichever runtime accepted it.
#[derive(Debug, Clone)]
struct EchoHttp {
    /// The WebSockets' limits, timers and budget.
    options: ServerOptions,
    handshake_timeout: Duration,
    /// One permit per connection, held until it and its WebSockets are gone.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Fired at SIGINT/SIGTERM: WebSockets close with 1001, HTTP/2 connections send GOAWAY.
    shutdown: Shutdown,
}

impl EchoHttp {
    fn new(args: &ServeArgs, config: Config) -> EchoHttp {
        let max_connections = args.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        EchoHttp {
            options: server_options(args, config),
            handshake_timeout: Duration::from_secs(args.handshake_timeout),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            shutdown: Shutdown::new(),
        }
    }

    /// Fires the shutdown and waits (10 s at most) until every connection is gone.
    async fn drain(&self) {
        let open = self.max_connections - self.slots.available_permits();
        tracing::info!(
            "shutting down: closing {open} connections served by hyper (WebSockets with 1001)"
        );
        self.shutdown.fire();
        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            self.slots.acquire_many(self.max_connections as u32),
        );
        if drained.await.is_err() {
            tracing::warn!("some connections did not close in time");
        }
    }
}

/// The page a plain `GET` gets (any path): enough for a browser to load something over the
/// connection it then opens its WebSockets on.
pub const PAGE: &str = "<!doctype html><meta charset=\"utf-8\"><title>duplex serve</title>\n\
    <p>duplex echo server: open a WebSocket to this address (HTTP/1.1 or HTTP/2).\n";

/// Serves one connection of the echo server, HTTP/1.1 or HTTP/2 (for either runtime: the
/// tokio runtime's connections and those the engine hands off): hyper-util's auto connection
/// from `duplex::upgrade::builder` (extended CONNECT enabled), WebSockets through duplex's
/// upgrade API, each echoed by an [`EchoTask`] with the server's options; a plain `GET` gets
/// [`PAGE`]. At shutdown the connection ends gracefully (GOAWAY over HTTP/2) once its
/// WebSockets closed.
async fn serve_http<I>(io: I, echo: EchoHttp, permit: Arc<OwnedSemaphorePermit>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The request head's bounds, as the engine's: its deadline (HTTP/1.1) and its size
    // (hyper's smallest read buffer is 8 KiB).
    let max_head = echo.options.max_handshake_size;
    let mut builder = duplex::upgrade::builder();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(echo.handshake_timeout)
        .max_buf_size(max_head.max(8192));
    // HTTP/2 PINGs at the WebSockets' ping interval: a vanished peer's connection (with
    // no WebSocket to notice) is dropped when one goes unanswered (hyper's 20 s).
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .timer(TokioTimer::new())
        .keep_alive_interval(echo.options.websocket.ping_interval);
    let mut shutdown = echo.shutdown.listen();
    let service = hyper::service::service_fn(move |request| {
        let echo = echo.clone();
        let permit = permit.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(request, &echo, permit)) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = &mut shutdown => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!("http connection: {e}");
    }
}

/// One request: a WebSocket (HTTP/1.1 upgrade or extended CONNECT) is accepted and echoed; a
/// plain `GET` or `HEAD` gets the page; anything else its refusal.
fn respond(
    mut request: Request<Incoming>,
    echo: &EchoHttp,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<String> {
    let plain_get = matches!(*request.method(), Method::GET | Method::HEAD)
        && !request.headers().contains_key(http::header::UPGRADE);
    if plain_get {
        let mut response = Response::new(PAGE.to_owned());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return response;
    }
    let decided = WebSocketUpgrade::from_request(&mut request).and_then(|upgrade| {
        upgrade
            .options(echo.options.clone())
            .decide(Ok(Accept::default()))
    });
    let (response, pending) = match decided {
        Ok(decided) => decided,
        Err(refused) => return refusal(&refused),
    };
    let shutdown = echo.shutdown.listen();
    tokio::spawn(async move {
        match pending.await {
            Ok(ws) => {
                EchoTask {
                    ws,
                    shutdown,
                    closing: false,
                    pending: None,
                    _permit: permit,
                }
                .await;
            }
            Err(e) => tracing::debug!("upgrade: {e}"),
        }
    });
    response.map(|()| String::new())
}

/// The engine's HTTP/2 hand-off: each connection continues on the tokio runtime `runtime`
/// (TLS resumed where the engine left it, the bytes it read replayed) and is served by
/// [`serve_http`], within the same connection limit. Spawning never blocks the engine's loop.
fn http2_handoff(echo: &EchoHttp, runtime: tokio::runtime::Handle) -> Handoff {
    let echo = echo.clone();
    Handoff::new(move |handed: HandedOff| {
        let echo = echo.clone();
        runtime.spawn(async move {
            let Ok(permit) = echo.slots.clone().try_acquire_owned() else {
                tracing::warn!("HTTP/2 connection dropped: at --max-connections");
                return;
            };
            let permit = Arc::new(permit);
            let tcp = match TcpStream::from_std(handed.stream) {
                Ok(tcp) => tcp,
                Err(e) => return tracing::warn!("handed-off connection: {e}"),
            };
            match handed.tls {
                Some(session) => {
                    let io = Prefixed::new(handed.read, ResumedTls::new(tcp, session));
                    serve_http(io, echo, permit).await;
                }
                None => serve_http(Prefixed::new(handed.read, tcp), echo, permit).await,
            }
        });
    })
}

/// Echo on the engine: one event loop per thread (`--threads`, default one per core), no task
/// per connection. Its thread runs beside this (current-thread) runtime, which waits for
/// SIGINT/SIGTERM.
async fn run_engine(
    args: ServeArgs,
    config: Config,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<ExitCode, CliError> {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let echo = EchoHttp::new(&args, config.clone());
    let mut options = engine_options(&args, config, threads);
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    options.tls = tls;
    options.http2_handoff = Some(http2_handoff(&echo, tokio::runtime::Handle::current()));
    let listener = std::net::TcpListener::bind(args.listen)
        .context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().context(|| "local address".into())?;
    tracing::info!(
        "echo server on {scheme}://{local} (engine, {threads} loops; HTTP/2 handed to tokio)"
    );
    let engine = Engine::new(options);
    let handle = engine.handle();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("duplex-engine-0".into())
        .spawn(move || {
            let _ = done_tx.send(engine.run(listener, || EngineEcho));
        })
        .context(|| "starting the engine".into())?;
    tokio::pin!(done_rx);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let result = tokio::select! {
        result = &mut done_rx => result,
        _ = &mut signal => {
            tracing::info!("shutting down: closing {} connections with 1001", handle.connections());
            handle.shutdown();
            // The HTTP/2 connections the engine handed off, meanwhile.
            let ((), result) = tokio::join!(echo.drain(), done_rx);
            result
        }
    };
    match result {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(CliError(format!("engine: {e}"))),
        Err(_) => Err(CliError("the engine thread panicked".into())),
    }
}

/// The certificate `serve` presents: read from the PEM files at start and again on SIGHUP.
/// Every TLS handshake asks for the current one, so a reload reaches new connections while
/// open ones keep theirs.
#[derive(Debug)]
struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    fn new(cert: &Path, key: &Path) -> Result<ReloadableCert, CliError> {
        Ok(ReloadableCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(Self::load(cert, key)?)),
        })
    }

    /// Reads the chain and the key, and checks that they belong together.
    fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, CliError> {
        let what = || format!("loading {} and {}", cert.display(), key.display());
        let (chain, key) = duplex::tls::load_pem(cert, key).context(what)?;
        CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).context(what)
    }

    /// Reads the files again; on failure the certificate in use stays.
    fn reload(&self) -> Result<(), CliError> {
        let fresh = Arc::new(Self::load(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// A server configuration presenting this certificate (ring, safe default versions,
    /// ALPN `h2` and `http/1.1`), for the engine and for tokio-rustls alike.
    fn server_config(self: Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CliError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context(|| "TLS configuration".into())?
            .with_no_client_auth()
            .with_cert_resolver(self);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Reloads the certificate on every SIGHUP, for as long as the server runs.
async fn reload_on_sighup(certificate: Arc<ReloadableCert>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(e) => {
                tracing::warn!("no certificate reload on SIGHUP: {e}");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            match certificate.reload() {
                Ok(()) => tracing::info!("SIGHUP: reloaded {}", certificate.cert.display()),
                Err(e) => tracing::warn!("SIGHUP: {e}; the certificate in use stays"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = certificate;
}

/// Every message back as it came.
struct EngineEcho;

impl Handler for EngineEcho {
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) {
        // Fails only once the connection is closing, when there is no one left to answer.
        let _ = socket.send(message);
    }
}

/// One echo connection: every message back as it came, until the peer closes or the server
/// shuts down (then 1001). A hand-written future rather than an async fn so the task holds the
/// connection and a few words, nothing more.
struct EchoTask<S> {
    ws: duplex::WebSocket<S>,
    shutdown: Listener,
    closing: bool,
    /// A message received while the send queue was full.
    pending: Option<Message>,
    /// The connection's permit: an HTTP/2 connection's WebSockets share it.
    _permit: Arc<OwnedSemaphorePermit>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for EchoTask<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.closing && Pin::new(&mut this.shutdown).poll(cx).is_ready() {
            this.closing = true;
            if this
                .ws
                .start_close(CloseCode::GOING_AWAY, "server shutting down")
                .is_err()
            {
                return Poll::Ready(());
            }
        }
        if this.closing {
            return this.ws.poll_closed(cx).map(|_| ());
        }
        loop {
            if let Some(message) = this.pending.take() {
                match Pin::new(&mut this.ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {
                        this.pending = Some(message);
                        return Poll::Pending;
                    }
                }
                // Queued, not flushed: the next receive poll writes every queued reply at once.
                if Pin::new(&mut this.ws).start_send(message).is_err() {
                    return Poll::Ready(());
                }
            }
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => this.pending = Some(message),
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!("connection failed: {e}");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use duplex::engine::{Engine, EngineOptions};
    use duplex::tls::ClientTls;
    use duplex::{ClientOptions, CloseCode, Error, Message};

    use super::*;

    /// Writes a new self-signed certificate for 127.0.0.1 over the PEM files; returns it.
    fn issue(cert: &Path, key: &Path) -> rustls::pki_types::CertificateDer<'static> {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(cert, certified.cert.pem()).unwrap();
        std::fs::write(key, certified.signing_key.serialize_pem()).unwrap();
        certified.cert.der().clone()
    }

    /// Client options that trust only `cert`, with a session cache of their own (a resumed
    /// session would skip the certificate).
    fn trusting(cert: &rustls::pki_types::CertificateDer<'static>) -> ClientOptions {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        ClientOptions {
            tls: ClientTls::Config(duplex::tls::client_config_with_roots(roots).unwrap()),
            ..ClientOptions::default()
        }
    }

    async fn echoes(ws: &mut duplex::WebSocket<duplex::MaybeTlsStream>, text: &str) {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    #[test]
    fn timers_and_budget_have_nonzero_defaults_and_parse() {
        let args = parse(&["--echo"]);
        assert_eq!(args.ping_interval, Duration::from_secs(30));
        assert_eq!(args.idle_timeout, Duration::from_secs(90));
        assert_eq!(args.message_budget, 256 << 20);
        let args = parse(&[
            "--echo",
            "--ping-interval",
            "0",
            "--idle-timeout",
            "250ms",
            "--message-budget",
            "1000",
        ]);
        assert_eq!(nonzero(args.ping_interval), None);
        assert_eq!(args.idle_timeout, Duration::from_millis(250));
        assert_eq!(args.message_budget, 1000);
        assert!(parse_duration("ten").is_err());
        let engine = engine_options(&args, Config::default(), 1);
        assert_eq!(engine.idle_timeout, Some(Duration::from_millis(250)));
        assert_eq!(engine.ping_interval, None);
        let tokio = server_options(&args, Config::default());
        assert_eq!(
            tokio.websocket.idle_timeout,
            Some(Duration::from_millis(250))
        );
    }

    /// Reads until the server's Close arrives; returns its code. Bounded.
    async fn close_code_of_silent(url: &str) -> u16 {
        let (mut ws, _) = duplex::connect(url).await.unwrap();
        let started = std::time::Instant::now();
        let code = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.recv_event().await {
                    Some(Ok(duplex::Event::Close(frame))) => {
                        return frame.map(|f| f.code.as_u16());
                    }
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
        })
        .await
        .expect("the idle timeout closed nothing within 5 s");
        assert!(started.elapsed() >= Duration::from_millis(250));
        code.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_idle_timeout_closes_a_silent_connection_on_both_runtimes() {
        let args = parse(&["--echo", "--ping-interval", "0", "--idle-timeout", "300ms"]);
        // The engine.
        let engine = Engine::new(engine_options(&args, Config::default(), 1));
        let handle = engine.handle();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || engine.run(listener, || EngineEcho));
        assert_eq!(close_code_of_silent(&url).await, 1001);
        handle.shutdown();
        tokio::task::spawn_blocking(move || thread.join().unwrap().unwrap())
            .await
            .unwrap();
        // tokio.
        let options = server_options(&args, Config::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = duplex::accept_with(tcp, options, |_, _| Ok(Default::default()))
                .await
                .unwrap();
            while ws.recv().await.is_some() {}
        });
        assert_eq!(close_code_of_silent(&url).await, 1001);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_reaches_new_handshakes_and_keeps_open_connections() {
        let dir = std::env::temp_dir().join(format!("duplex-serve-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let old = issue(&cert, &key);
        let certificate = Arc::new(ReloadableCert::new(&cert, &key).unwrap());
        let engine = Engine::new(EngineOptions {
            tls: Some(certificate.clone().server_config().unwrap()),
            ..EngineOptions::default()
        });
        let handle = engine.handle();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("wss://{}/", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || engine.run(listener, || EngineEcho));

        let (mut kept, _) = duplex::connect_with(&url, trusting(&old)).await.unwrap();
        echoes(&mut kept, "before").await;
        let new = issue(&cert, &key);
        certificate.reload().unwrap();
        // New handshakes get the new certificate...
        let (mut fresh, _) = duplex::connect_with(&url, trusting(&new)).await.unwrap();
        echoes(&mut fresh, "fresh").await;
        let refused = duplex::connect_with(&url, trusting(&old))
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::Tls(_)), "{refused:?}");
        // ...while the connection made before it stays open.
        echoes(&mut kept, "after").await;
        // A broken file is reported and the certificate in use stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(certificate.reload().is_err());
        let (mut third, _) = duplex::connect_with(&url, trusting(&new)).await.unwrap();
        echoes(&mut third, "still").await;

        for mut ws in [kept, fresh, third] {
            ws.close(CloseCode::NORMAL, "").await.unwrap();
        }
        handle.shutdown();
        tokio::task::spawn_blocking(move || thread.join().unwrap().unwrap())
            .await
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
