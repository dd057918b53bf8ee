//! The command connection's socket ([`super::conn::Conn`] manages its health): requests are
//! written by their callers under one lock, pipelined, and a task of its own reads the
//! replies ([`super::resp::parse_value`]) and hands each to the oldest waiting request.
//! Replaces the `redis` crate's multiplexed connection, whose request channel, driver task
//! and generic parser cost several thousand instructions per publish.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use redis::{Client, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use crate::broker::BrokerError;

use super::resp;
use super::subconn::{self, Reader, Writer};

/// Why a request got no value.
#[derive(Debug)]
pub(crate) enum CmdError {
    /// The connection is gone (closed, unreadable, or dropped): the outcome is unknown.
    Lost(String),
    /// The server answered with an error reply.
    Server(String),
}

/// A waiting request: where its reply goes, and when it was sent (for the watchdog).
type Answer = (oneshot::Sender<Result<Value, CmdError>>, Instant);

struct Shared {
    /// Writes and their place in `waiting` are taken under this lock: replies come back in
    /// that order.
    writer: tokio::sync::Mutex<Writer>,
    /// The requests awaiting replies, oldest first; `None` once the connection ended.
    waiting: Mutex<Option<VecDeque<Answer>>>,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<VecDeque<Answer>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection; dropping it stops its reply reader (and fails what was waiting).
pub(crate) struct CmdConn {
    shared: Arc<Shared>,
    url: Arc<str>,
    timeout: Duration,
    replies: tokio::task::JoinHandle<()>,
}

impl Drop for CmdConn {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

impl CmdConn {
    /// Connects (AUTH and SELECT as the URL says; unbounded: the caller bounds it) and starts
    /// the reply reader. Once connected, a request whose reply has not come within `timeout`
    /// fails the connection (every waiting request gets [`CmdError::Lost`]), noticed by the
    /// reply task's watchdog within a quarter of the timeout more: one timer for the
    /// connection instead of one per command, which every publish paid for (registered and
    /// removed again).
    pub(crate) async fn connect(
        client: &Client,
        url: &Arc<str>,
        timeout: Duration,
    ) -> Result<CmdConn, BrokerError> {
        let (reader, writer, buf) = subconn::dial(client, url, true).await?;
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(writer),
            waiting: Mutex::new(Some(VecDeque::new())),
        });
        let replies = tokio::spawn(read_replies(
            reader,
            buf,
            shared.clone(),
            url.clone(),
            timeout,
        ));
        Ok(CmdConn {
            shared,
            url: url.clone(),
            timeout,
            replies,
        })
    }

    /// Sends one packed command (`sent`: when the caller started it) and waits for its reply,
    /// bounded by the connection's watchdog (see [`CmdConn::connect`]).
    pub(crate) async fn request(&self, packed: &[u8], sent: Instant) -> Result<Value, CmdError> {
        let (answer, answered) = oneshot::channel();
        {
            let mut writer = self.shared.writer.lock().await;
            match self.shared.waiting().as_mut() {
                Some(waiting) => waiting.push_back((answer, sent)),
                None => {
                    return Err(CmdError::Lost(format!(
                        "redis {}: connection closed",
                        self.url
                    )));
                }
            }
            // A write that cannot complete at once (Redis not reading) is bounded by a timer
            // of its own: the watchdog fails the waiting requests, but cannot stop a write.
            let write = subconn::write_all(&mut writer, packed, &self.url);
            let mut write = std::pin::pin!(write);
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            let written = match first {
                Poll::Ready(written) => written,
                Poll::Pending => tokio::time::timeout(self.timeout, write)
                    .await
                    .unwrap_or_else(|_| {
                        Err(BrokerError::Unavailable(format!(
                            "redis {}: no answer within {:?} (write)",
                            self.url, self.timeout
                        )))
                    }),
            };
            if let Err(e) = written {
                let (BrokerError::Unavailable(why)
                | BrokerError::Failed(why)
                | BrokerError::Full(why)) = e;
                return Err(CmdError::Lost(why));
            }
        }
        answered.await.unwrap_or_else(|_| {
            Err(CmdError::Lost(format!(
                "redis {}: connection lost before the reply",
                self.url
            )))
        })
    }
}

/// Reads replies until the connection ends, each to the oldest waiting request.
async fn read_replies(
    mut reader: Reader,
    mut buf: bytes::BytesMut,
    shared: Arc<Shared>,
    url: Arc<str>,
    timeout: Duration,
) {
    // (At least 1 ms: an interval of zero would panic.)
    let mut watchdog = tokio::time::interval((timeout / 4).max(Duration::from_millis(1)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        match resp::parse_value(&mut buf) {
            Ok(Some(reply)) => {
                let answer = shared.waiting().as_mut().and_then(VecDeque::pop_front);
                if let Some((answer, _)) = answer {
                    // The caller may have given up (its future dropped): nobody to tell.
                    let _ = answer.send(reply.map_err(CmdError::Server));
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break "connection closed".to_owned(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            },
            _ = watchdog.tick() => {
                let oldest = shared.waiting().as_ref().and_then(|w| w.front().map(|a| a.1));
                // A Redis that does not answer within the timeout is treated as gone: the
                // connection is replaced rather than left to pile up commands.
                if oldest.is_some_and(|sent| sent.elapsed() > timeout) {
                    break format!("no answer within {timeout:?}");
                }
            }
        }
    };
    tracing::debug!("redis {url}: command connection ended: {why}");
    let waiting = shared.waiting().take();
    for (answer, _) in waiting.into_iter().flatten() {
        let _ = answer.send(Err(CmdError::Lost(format!("redis {url}: {why}"))));
    }
}
