//! One shard's command connection: a multiplexed connection (every command of the node to
//! that Redis goes over it, pipelined), with bounded timeouts, health, and a background
//! reconnect with capped, jittered backoff.
//!
//! Commands fail fast: while the connection is down (or being re-established) a command gets
//! [`BrokerError::Unavailable`] at once instead of queueing; a connection error or a timeout
//! marks the connection down and starts the reconnect task. Nothing here retries a command
//! (a publish must not be applied twice); the caller decides. A command that timed out may
//! still have been applied (it reached a Redis that answered too late): `Unavailable` after a
//! timeout means the outcome is unknown, as with any networked store.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{Client, Cmd, Value};

use crate::broker::BrokerError;
use crate::metrics::Metrics;

use super::cmdconn::{CmdConn, CmdError};
use super::resp;
use super::script::Script;

/// A shard's command connection.
pub(crate) struct Conn {
    /// The URL, for errors and logs.
    pub(crate) url: Arc<str>,
    client: Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// `None` while down.
    current: Mutex<Option<Arc<CmdConn>>>,
    /// A reconnect task is running.
    reconnecting: AtomicBool,
    /// Tells [`Conn::wait_up`] when the connection is back.
    up: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("url", &self.url)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Why a command failed.
enum Failure {
    /// As reported to the broker's callers.
    Broker(BrokerError),
    /// The server does not know the script (reload it).
    NoScript(String),
}

/// How long to wait before reconnect attempt `attempt` (0-based): 100 ms doubling up to 5 s,
/// each drawn uniformly from its upper half, so nodes that lost Redis together do not come
/// back in lockstep.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(5));
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    let fraction = f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX);
    cap.mul_f64(0.5 + fraction / 2.0)
}

impl Conn {
    /// Connects to `client` (at most `timeout`); fails with `Unavailable` if it cannot.
    pub(crate) async fn connect(
        client: Client,
        url: Arc<str>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Conn>, BrokerError> {
        let conn = Arc::new(Conn {
            url,
            client,
            timeout,
            metrics,
            current: Mutex::new(None),
            reconnecting: AtomicBool::new(false),
            up: tokio::sync::watch::Sender::new(false),
        });
        let connection = conn.open().await?;
        *conn.lock() = Some(connection);
        conn.up.send_replace(true);
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<CmdConn>>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn open(&self) -> Result<Arc<CmdConn>, BrokerError> {
        match tokio::time::timeout(
            self.timeout,
            CmdConn::connect(&self.client, &self.url, self.timeout),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(Arc::new(connection)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "redis {}: no connection within {:?}",
                self.url, self.timeout
            ))),
        }
    }

    /// Whether the connection is up (as far as the last command knows).
    pub(crate) fn is_up(&self) -> bool {
        self.lock().is_some()
    }

    /// Waits (at most `within`) until the connection is up; returns whether it is.
    pub(crate) async fn wait_up(&self, within: Duration) -> bool {
        let mut up = self.up.subscribe();
        tokio::time::timeout(within, up.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Runs one command: `Unavailable` at once if the connection is down, and within the
    /// timeout (plus up to a quarter of it: the connection's watchdog) otherwise.
    pub(crate) async fn query(self: &Arc<Self>, cmd: &Cmd) -> Result<Value, BrokerError> {
        self.query_packed(&cmd.get_packed_command()).await
    }

    /// [`query`](Conn::query) with the command already in RESP.
    async fn query_packed(self: &Arc<Self>, packed: &[u8]) -> Result<Value, BrokerError> {
        self.send(packed).await.map_err(|failure| match failure {
            Failure::Broker(e) => e,
            Failure::NoScript(message) => BrokerError::Failed(message),
        })
    }

    async fn send(self: &Arc<Self>, packed: &[u8]) -> Result<Value, Failure> {
        let Some(connection) = self.lock().clone() else {
            self.metrics.broker_errors.fetch_add(1, Relaxed);
            return Err(Failure::Broker(BrokerError::Unavailable(format!(
                "redis {}: not connected (reconnecting)",
                self.url
            ))));
        };
        let started = Instant::now();
        // Bounded by the connection's watchdog (see `CmdConn::connect`), without a timer here.
        match connection.request(packed, started).await {
            Ok(value) => {
                self.metrics.observe_broker_round_trip(started.elapsed());
                Ok(value)
            }
            Err(CmdError::Server(e)) if e.starts_with("NOSCRIPT") => {
                Err(Failure::NoScript(format!("redis {}: {e}", self.url)))
            }
            Err(CmdError::Server(e)) => {
                // A failed command on a healthy connection (a script's error).
                self.metrics.broker_errors.fetch_add(1, Relaxed);
                Err(Failure::Broker(BrokerError::Failed(format!(
                    "redis {}: {e}",
                    self.url
                ))))
            }
            Err(CmdError::Lost(e)) => {
                self.metrics.broker_errors.fetch_add(1, Relaxed);
                self.lost(&e);
                Err(Failure::Broker(BrokerError::Unavailable(e)))
            }
        }
    }

    /// Runs `script` (EVALSHA; SCRIPT LOAD first if its SHA is not known yet, and again when
    /// the server answers NOSCRIPT).
    pub(crate) async fn eval(
        self: &Arc<Self>,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, BrokerError> {
        let sha = match script.sha.get() {
            Some(sha) => sha,
            None => self.load(script).await?,
        };
        // Encoded straight into one buffer: this is every publish's command.
        let evalsha = |sha: &str| {
            let count = resp::Decimal::new(keys.len() as u64);
            let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
            parts.extend([&b"EVALSHA"[..], sha.as_bytes(), count.as_bytes()]);
            parts.extend(keys.iter().map(|k| k.as_bytes()));
            parts.extend_from_slice(args);
            let size = parts.iter().map(|p| p.len() + 16).sum::<usize>() + 16;
            let mut packed = Vec::with_capacity(size);
            resp::encode_command(&mut packed, &parts);
            packed
        };
        match self.send(&evalsha(sha)).await {
            Ok(value) => Ok(value),
            Err(Failure::Broker(e)) => Err(e),
            Err(Failure::NoScript(_)) => {
                // The server restarted or flushed its scripts: load it again, once.
                tracing::info!("redis {}: reloading the {} script", self.url, script.name);
                let sha = self.load(script).await?;
                self.query_packed(&evalsha(sha)).await
            }
        }
    }

    /// SCRIPT LOAD: returns the script's SHA1 (the same from every server).
    pub(crate) async fn load<'s>(
        self: &Arc<Self>,
        script: &'s Script,
    ) -> Result<&'s str, BrokerError> {
        let reply = self
            .query(redis::cmd("SCRIPT").arg("LOAD").arg(script.source))
            .await?;
        let sha: String = redis::from_redis_value(reply).map_err(|e| {
            BrokerError::Failed(format!(
                "redis {}: SCRIPT LOAD {}: {e}",
                self.url, script.name
            ))
        })?;
        Ok(script.sha.get_or_init(|| sha))
    }

    /// The connection failed: drop it, and reconnect in the background unless that is already
    /// under way.
    fn lost(self: &Arc<Self>, why: &str) {
        self.up.send_replace(false);
        if self.lock().take().is_some() {
            tracing::warn!("redis {}: connection lost ({why}); reconnecting", self.url);
        }
        if self.reconnecting.swap(true, SeqCst) {
            return;
        }
        let conn = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                tokio::time::sleep(backoff(attempt)).await;
                // The broker was dropped: nobody needs the connection any more.
                let Some(conn) = conn.upgrade() else { return };
                match conn.open().await {
                    Ok(connection) => {
                        *conn.lock() = Some(connection);
                        conn.up.send_replace(true);
                        conn.reconnecting.store(false, SeqCst);
                        conn.metrics.broker_reconnects.fetch_add(1, Relaxed);
                        tracing::info!("redis {}: reconnected", conn.url);
                        return;
                    }
                    Err(e) => {
                        if attempt == 0 || attempt % 20 == 0 {
                            tracing::warn!("{e}; retrying");
                        }
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_with_jitter() {
        for attempt in 0..40 {
            let cap = Duration::from_millis(100 << attempt.min(6)).min(Duration::from_secs(5));
            let d = backoff(attempt);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d:?} vs cap {cap:?}"
            );
        }
        let draws: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(3)).collect();
        assert!(draws.len() > 10, "jittered: {draws:?}");
    }
}
