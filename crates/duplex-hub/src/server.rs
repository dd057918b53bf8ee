//! [`Hub`]: binding, the broker's start (retried with backoff), the accept loop, hub state,
//! and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use duplex::WebSocketOptions;
use duplex_proto::extensions::deflate::DeflateConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerError, BrokerHandler};
use crate::config::{BrokerConfig, Compression, HttpServer, HubConfig};
use crate::fanout::{Fanout, FanoutOptions};
use crate::limit::AddressLimiter;
use crate::memory::{MemoryBroker, MemoryLimits};
use crate::metrics::Metrics;
use crate::outbox::{Closing, Outbox};
use crate::state::HubState;
use crate::tls::Certificate;
use crate::ws_loop::Loops;
use tokio_rustls::TlsAcceptor;

/// The real-time hub. [`Hub::bind`] starts one in the current tokio runtime.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let config = duplex_hub::HubConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
/// let hub = duplex_hub::Hub::bind(config).await?;
/// println!("demo page on http://{}/", hub.local_addr());
/// hub.shutdown();
/// hub.wait().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Hub;

impl Hub {
    /// Binds `config.listen` (port 0 picks a free port) and serves with the broker
    /// `config.broker` names.
    pub async fn bind(config: HubConfig) -> io::Result<HubHandle> {
        // Created here so that a broker counting into it (Redis) shows on /metrics.
        let metrics = Arc::new(Metrics::default());
        let broker = build_broker(&config, &metrics)?;
        Hub::bind_inner(config, broker, metrics).await
    }

    /// Binds `config.listen` and serves with `broker` (which must not be started yet): the
    /// hub starts it, retrying with backoff while it fails (see [`Broker::start`]).
    pub async fn bind_with_broker(
        config: HubConfig,
        broker: Arc<dyn Broker>,
    ) -> io::Result<HubHandle> {
        Hub::bind_inner(config, broker, Arc::new(Metrics::default())).await
    }

    async fn bind_inner(
        config: HubConfig,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> io::Result<HubHandle> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let certificate = match &config.tls {
            Some(files) => {
                Some(Arc::new(Certificate::load(files.clone()).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, e)
                })?))
            }
            None => None,
        };
        let acceptor = match &certificate {
            Some(certificate) => Some(
                certificate
                    .acceptor()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let deflate = match config.compression {
            Compression::Off => None,
            Compression::Shared => Some(DeflateConfig {
                server_no_context_takeover: true,
                threshold: config.compression_threshold,
                ..DeflateConfig::default()
            }),
            Compression::Context => Some(DeflateConfig {
                threshold: config.compression_threshold,
                ..DeflateConfig::default()
            }),
        };
        let fanout = Fanout::new(
            FanoutOptions {
                deflate_level: deflate.as_ref().map(|d| d.level),
                join_leave: config.join_leave,
                presence_batch: config.presence_batch,
                join_leave_max_subscribers: config.join_leave_max_subscribers,
                threads: fanout_threads(config.fanout_threads),
                queue_bytes: config.fanout_queue_bytes,
            },
            metrics.clone(),
        )?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let ws_config = duplex::Config {
            max_frame_size: config.max_message_size,
            max_message_size: config.max_message_size,
            streaming_receive: false,
            // One budget for every connection of the hub: partly received and inflating
            // messages cannot hold more than this together (1009/1013 past it).
            message_budget: (config.message_budget > 0)
                .then(|| duplex_proto::MessageBudget::new(config.message_budget)),
            // The same timers as `ws_options` below: a connection of an event loop runs them
            // from here (shared by every connection, not copied into each).
            timers: duplex_proto::Timers {
                ping_interval: config.ping_interval,
                idle_timeout: config.ping_interval.map(|p| p * 3),
                close_timeout: config.close_timeout,
            },
        };
        if let Some(budget) = &ws_config.message_budget {
            let _ = metrics.message_budget.set(budget.clone());
        }
        let ws_options = WebSocketOptions {
            ping_interval: config.ping_interval,
            idle_timeout: config.ping_interval.map(|p| p * 3),
            close_timeout: config.close_timeout,
            ..WebSocketOptions::default()
        };
        if config.token_secret.is_none() {
            tracing::warn!(
                "no --token-secret: ANYONE who can reach this port may subscribe and publish to \
                 ANY channel (fine for the demo, not for production)"
            );
        }
        if config.api_key.is_none() {
            tracing::warn!("no --api-key: the HTTP API (/api/*) is open to anyone");
        }
        let (http, ws) = if acceptor.is_some() {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        tracing::info!(
            "duplex hub listening: demo page {http}://{addr}/ , WebSocket {ws}://{addr}/ws , \
             HTTP API {http}://{addr}/api/ , metrics {http}://{addr}/metrics"
        );
        let loops = Arc::new(Loops::new(event_loops(config.event_loops))?);
        let hub = Arc::new(HubState {
            broker,
            broker_started: AtomicBool::new(false),
            fanout: fanout.clone(),
            metrics: metrics.clone(),
            shutdown,
            sessions: Mutex::new(HashMap::new()),
            websockets: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            ws_config: duplex_proto::SharedConfig::new(&ws_config),
            ws_options,
            deflate,
            http_publish_limit: AddressLimiter::new(
                config.http_publish_rate,
                config.http_publish_burst,
                config.rate_limit_loopback,
            ),
            connection_limit: AddressLimiter::new(
                config.connection_rate,
                config.connection_burst,
                config.rate_limit_loopback,
            ),
            config,
        });
        if let Some(certificate) = &certificate {
            reload_on_sighup(certificate.clone(), hub.shutdown.clone())?;
        }
        loops.start(&hub)?;
        start_broker(&hub, fanout);
        let fanout = Arc::downgrade(&hub.fanout);
        let (done_tx, done_rx) = mpsc::channel(1);
        tokio::spawn(close_sessions_on_shutdown(hub.clone(), loops.clone()));
        let accept = tokio::spawn(accept_loop(listener, hub, loops, acceptor, done_tx));
        Ok(HubHandle {
            addr,
            shutdown: shutdown_tx,
            accept,
            done: done_rx,
            metrics,
            certificate,
            fanout,
        })
    }
}

/// How many event loops `event_loops` (`None`: one per worker thread) means in this runtime.
fn event_loops(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| tokio::runtime::Handle::current().metrics().num_workers())
}

/// How many fan-out threads `fanout_threads` (0: automatic) means in this runtime.
fn fanout_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    if flavor == tokio::runtime::RuntimeFlavor::CurrentThread {
        // `--threads 1` promises one thread: it fans out itself (fanout.rs says why).
        0
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The broker `config` names, not started yet.
fn build_broker(config: &HubConfig, metrics: &Arc<Metrics>) -> io::Result<Arc<dyn Broker>> {
    match &config.broker {
        BrokerConfig::Memory => Ok(Arc::new(
            MemoryBroker::with_limits(MemoryLimits {
                history_size: config.history_size,
                history_ttl: config.history_ttl,
                history_bytes: config.history_bytes,
                max_channels: config.max_channels,
            })
            .with_metrics(metrics.clone()),
        )),
        BrokerConfig::Redis { shards } => {
            crate::redis::RedisBroker::new(shards, config, metrics.clone())
                .map(|broker| Arc::new(broker) as Arc<dyn Broker>)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        }
    }
}

/// First wait after a failed [`Broker::start`], doubled after each failure up to
/// [`START_RETRY_MAX`]; each wait is jittered (half to all of it), so that nodes restarted
/// together do not retry in lockstep.
const START_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two [`Broker::start`] attempts.
const START_RETRY_MAX: Duration = Duration::from_secs(10);

/// Starts the broker: at once when it is ready at once (the memory broker: commands work as
/// soon as `bind` returns), otherwise from a task that retries with backoff until it succeeds
/// or the hub shuts down. Until then `hub.broker()` refuses and `/healthz` answers 503.
fn start_broker(hub: &Arc<HubState>, handler: Arc<dyn BrokerHandler>) {
    let mut first = attempt(hub, &handler);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // One poll here; a future that is not ready registers the task's waker when the task
    // polls it again.
    let first = match first.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(())) => {
            hub.broker_started.store(true, Ordering::Release);
            return;
        }
        std::task::Poll::Ready(Err(e)) => Err(e),
        std::task::Poll::Pending => Ok(first),
    };
    let hub = hub.clone();
    tokio::spawn(async move {
        let mut shutdown = hub.shutdown.clone();
        let mut result = match first {
            Ok(pending) => tokio::select! {
                result = pending => result,
                _ = shutdown.wait_for(|stop| *stop) => return,
            },
            Err(e) => Err(e),
        };
        let mut wait = START_RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            match result {
                Ok(()) => {
                    hub.broker_started.store(true, Ordering::Release);
                    if failures > 0 {
                        tracing::info!("broker started after {failures} failed attempts");
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let jittered = jitter(wait);
                    tracing::warn!(
                        "cannot start the broker (attempt {failures}): {e}; retrying in {} ms \
                         (/healthz answers 503 meanwhile)",
                        jittered.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(jittered) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                    wait = (wait * 2).min(START_RETRY_MAX);
                }
            }
            result = tokio::select! {
                result = attempt(&hub, &handler) => result,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
        }
    });
}

type StartFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// One call of [`Broker::start`], owning what it needs (so that it can move to a task).
fn attempt(hub: &Arc<HubState>, handler: &Arc<dyn BrokerHandler>) -> StartFuture {
    let broker = hub.broker.clone();
    let handler = handler.clone();
    Box::pin(async move { broker.start(handler).await })
}

/// Between half of `wait` and all of it, at random.
fn jitter(wait: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    // Without randomness the wait is simply not jittered.
    let _ = getrandom::fill(&mut bytes);
    let fraction = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    wait.mul_f64(0.5 + fraction / 2.0)
}

/// A running hub: its address, its metrics, and the way to stop it.
#[derive(Debug)]
pub struct HubHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    /// Closed once the accept loop and every connection task have ended.
    done: mpsc::Receiver<()>,
    metrics: Arc<Metrics>,
    /// The TLS certificate, when the hub serves TLS.
    certificate: Option<Arc<Certificate>>,
    /// For [`HubHandle::hold_fanout`] (weak: the handle does not keep the fan-out alive).
    fanout: Weak<Fanout>,
}

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Tests only: holds the hub's fan-out threads still until the guard is dropped, so that
    /// what is published meanwhile waits in their queues (the `fanout_queue_bytes` bound).
    /// Returns once every fan-out thread ran what was queued before and waits (it blocks the
    /// calling thread that long); a hub that fans out inline has no thread to hold. `None`
    /// once the hub's fan-out is gone.
    #[doc(hidden)]
    pub fn hold_fanout(&self) -> Option<crate::fanout::FanoutHold> {
        Some(self.fanout.upgrade()?.hold())
    }

    /// Reads the TLS certificate and key files again (what SIGHUP does): handshakes from now
    /// on present the new certificate; open connections are not touched. On failure the
    /// current certificate stays. A hub without TLS has nothing to reload (`Ok`).
    pub fn reload_tls(&self) -> io::Result<()> {
        match &self.certificate {
            Some(certificate) => certificate
                .reload()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            None => Ok(()),
        }
    }

    /// Starts a graceful shutdown: stop accepting, close every WebSocket with 1001 (going
    /// away), end idle HTTP connections. [`wait`](HubHandle::wait) for it to finish.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until the accept loop and every connection have ended (after
    /// [`shutdown`](HubHandle::shutdown); each close handshake is bounded by the close timeout).
    pub async fn wait(mut self) {
        let _ = (&mut self.accept).await;
        // Every connection task holds a sender; recv returns None when the last one is gone.
        let _ = self.done.recv().await;
    }

    /// [`shutdown`](HubHandle::shutdown), then [`wait`](HubHandle::wait) at most `timeout`.
    /// Returns false if connections were still open when it expired.
    pub async fn shutdown_within(self, timeout: Duration) -> bool {
        self.shutdown();
        tokio::time::timeout(timeout, self.wait()).await.is_ok()
    }
}

impl Drop for HubHandle {
    /// Dropping the handle shuts the hub down (without waiting).
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Reloads `certificate` on every SIGHUP until the hub shuts down. The handler is installed
/// before this returns, so a SIGHUP right after `bind` does not kill the process.
fn reload_on_sighup(
    certificate: Arc<Certificate>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    received = hangup.recv() => if received.is_none() { return },
                }
                match certificate.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::warn!(
                            "SIGHUP: cannot reload the TLS certificate ({e}); keeping the current one"
                        )
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (certificate, shutdown);
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    hub: Arc<HubState>,
    loops: Arc<Loops>,
    tls: Option<TlsAcceptor>,
    done: mpsc::Sender<()>,
) {
    let builtin = hub.config.http_server == HttpServer::Builtin;
    let mut shutdown = hub.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Writes are batched by the connection tasks themselves.
                let _ = tcp.set_nodelay(true);
                let hub = hub.clone();
                let done = done.clone();
                let loops = loops.clone();
                if builtin {
                    tokio::spawn(crate::http::serve(tcp, peer, hub, loops, done));
                } else {
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        // The service holds its own senders for the WebSockets it spawns.
                        crate::service::serve(tcp, peer, hub, loops, tls, done.clone()).await;
                        drop(done);
                    });
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// On shutdown (or when the handle is dropped), closes every session's outbox: each session
/// then closes its WebSocket with 1001.
async fn close_sessions_on_shutdown(hub: Arc<HubState>, loops: Arc<Loops>) {
    let mut shutdown = hub.shutdown.clone();
    let _ = shutdown.wait_for(|stop| *stop).await;
    // The event loops close theirs (they are not in `sessions`).
    loops.shutdown();
    let outboxes: Vec<Arc<Outbox>> = hub
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    for outbox in outboxes {
        outbox.close(Closing::Shutdown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_single_threaded_runtime_fans_out_on_its_thread_unless_told_otherwise() {
        assert_eq!(fanout_threads(0), 0);
        assert_eq!(fanout_threads(3), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_threaded_runtime_gets_fanout_threads() {
        assert!(fanout_threads(0) >= 1);
        assert_eq!(fanout_threads(2), 2);
    }

    #[test]
    fn retry_waits_are_jittered_between_half_and_all() {
        let wait = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..200).map(|_| jitter(wait)).collect();
        assert!(waits.iter().all(|w| *w >= wait / 2 && *w <= wait));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 100,
            "random: {} distinct waits",
            distinct.len()
        );
    }
}
