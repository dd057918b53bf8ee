//! The command connection's socket ([`super::conn::Conn`] manages its health): requests are
//! written by their callers under one lock, pipelined, and a task of its own reads the
//! replies ([`super::resp::parse_value`]) and hands each to the oldest waiting request.
//! Replaces the `redis` crate's multiplexed connection, whose request channel, driver task
//! and generic parser cost several thousand instructions per publish.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

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

type Answer = oneshot::Sender<Result<Value, CmdError>>;

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
    replies: tokio::task::JoinHandle<()>,
}

impl Drop for CmdConn {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

impl CmdConn {
    /// Connects (AUTH and SELECT as the URL says) and starts the reply reader. Unbounded:
    /// the caller bounds it.
    pub(crate) async fn connect(client: &Client, url: &Arc<str>) -> Result<CmdConn, BrokerError> {
        let (reader, writer, buf) = subconn::dial(client, url, true).await?;
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(writer),
            waiting: Mutex::new(Some(VecDeque::new())),
        });
        let replies = tokio::spawn(read_replies(reader, buf, shared.clone(), url.clone()));
        Ok(CmdConn {
            shared,
            url: url.clone(),
            replies,
        })
    }

    /// Sends one packed command and waits for its reply (unbounded: the caller bounds it).
    pub(crate) async fn request(&self, packed: &[u8]) -> Result<Value, CmdError> {
        let (answer, answered) = oneshot::channel();
        {
            let mut writer = self.shared.writer.lock().await;
            match self.shared.waiting().as_mut() {
                Some(waiting) => waiting.push_back(answer),
                None => {
                    return Err(CmdError::Lost(format!(
                        "redis {}: connection closed",
                        self.url
                    )));
                }
            }
            if let Err(e) = subconn::write_all(&mut writer, packed, &self.url).await {
                let (BrokerError::Unavailable(why) | BrokerError::Failed(why)) = e;
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
) {
    let why = loop {
        match resp::parse_value(&mut buf) {
            Ok(Some(reply)) => {
                let answer = shared.waiting().as_mut().and_then(VecDeque::pop_front);
                if let Some(answer) = answer {
                    // The caller may have given up (timed out): nobody to tell.
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
        match reader.read_buf(&mut buf).await {
            Ok(0) => break "connection closed".to_owned(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    tracing::debug!("redis {url}: command connection ended: {why}");
    let waiting = shared.waiting().take();
    for answer in waiting.into_iter().flatten() {
        let _ = answer.send(Err(CmdError::Lost(format!("redis {url}: {why}"))));
    }
}
