//! The pub/sub connection itself, read without the `redis` crate: a socket whose write half
//! ([`Sink`]) the broker's calls share and whose read half ([`Source`]) the shard's reader
//! owns. A message is parsed straight out of the read buffer ([`super::resp`]) on the
//! reader's own task: no value tree, no channel hop, per publication.
//!
//! Commands (SUBSCRIBE, UNSUBSCRIBE, PING) are answered on the read half, in the order they
//! were written: each write queues an acknowledgement slot under the write lock, and the
//! [`Source`] fills the oldest slot as the confirmations come in (one per channel, one per
//! PING; an error reply answers the whole command). So an acknowledged SUBSCRIBE needs the
//! [`Source`] to be read meanwhile: by the reader task, or by whoever holds it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{Client, ConnectionAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::broker::BrokerError;

use super::resp::{self, Push};

/// A socket's read half.
pub(super) type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A socket's write half.
pub(super) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A message on a subscribed channel: slices of the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The Redis pub/sub channel.
    pub(crate) channel: Bytes,
    /// What was published.
    pub(crate) payload: Bytes,
}

/// The write half, shared (cheap to clone) by everyone who sends commands.
#[derive(Clone)]
pub(crate) struct Sink {
    shared: Arc<Shared>,
    url: Arc<str>,
}

struct Shared {
    /// The socket's write half; writes and their slots are queued under this lock, so the
    /// slots are in the order the commands reach Redis.
    writer: tokio::sync::Mutex<Writer>,
    /// The commands written and not fully answered yet, oldest first.
    waiting: Mutex<VecDeque<Slot>>,
}

/// One command awaiting its answers.
struct Slot {
    /// Confirmations still to come.
    remaining: usize,
    done: oneshot::Sender<Result<(), String>>,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The read half: owned by the shard's reader.
pub(crate) struct Source {
    reader: Reader,
    buf: BytesMut,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Opens a pub/sub connection to `client`'s server (AUTH if the URL has a password), within
/// `timeout`.
pub(crate) async fn connect(
    client: &Client,
    url: &Arc<str>,
    timeout: Duration,
) -> Result<(Sink, Source), BrokerError> {
    match tokio::time::timeout(timeout, open(client, url)).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Unavailable(format!(
            "redis {url}: no pub/sub connection within {timeout:?}"
        ))),
    }
}

async fn open(client: &Client, url: &Arc<str>) -> Result<(Sink, Source), BrokerError> {
    // Pub/sub channels are not per database: no SELECT.
    let (reader, writer, buf) = dial(client, url, false).await?;
    let shared = Arc::new(Shared {
        writer: tokio::sync::Mutex::new(writer),
        waiting: Mutex::new(VecDeque::new()),
    });
    let sink = Sink {
        shared: shared.clone(),
        url: url.clone(),
    };
    let source = Source {
        reader,
        buf,
        shared,
    };
    Ok((sink, source))
}

/// A socket to `client`'s server (plain TCP or a unix socket), authenticated (AUTH) if the
/// URL has a password and, with `select`, on the URL's database (SELECT); returns its halves
/// and what was read past the handshake's replies.
pub(super) async fn dial(
    client: &Client,
    url: &str,
    select: bool,
) -> Result<(Reader, Writer, BytesMut), BrokerError> {
    let unreachable =
        |e: std::io::Error| BrokerError::Unavailable(format!("redis {url}: cannot connect: {e}"));
    let info = client.get_connection_info();
    let (mut reader, mut writer): (Reader, Writer) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(unreachable)?;
            stream.set_nodelay(true).map_err(unreachable)?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(unreachable)?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        other => {
            return Err(BrokerError::Failed(format!(
                "redis {url}: {other:?} is not supported (plain TCP or a unix socket)"
            )));
        }
    };
    let settings = info.redis_settings();
    let mut commands: Vec<Vec<String>> = Vec::new();
    if let Some(password) = settings.password() {
        let mut auth = vec!["AUTH".to_owned()];
        auth.extend(settings.username().map(str::to_owned));
        auth.push(password.to_owned());
        commands.push(auth);
    }
    if select && settings.db() != 0 {
        commands.push(vec!["SELECT".to_owned(), settings.db().to_string()]);
    }
    let mut buf = BytesMut::with_capacity(16 * 1024);
    for command in commands {
        let mut packed = Vec::new();
        resp::encode_command(&mut packed, &command);
        write_all(&mut writer, &packed, url).await?;
        let reply = loop {
            match resp::parse(&mut buf) {
                Ok(Some(reply)) => break reply,
                Ok(None) => {}
                Err(e) => return Err(BrokerError::Failed(format!("redis {url}: {e}"))),
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => {
                    return Err(BrokerError::Unavailable(format!(
                        "redis {url}: connection closed during {}",
                        command[0]
                    )));
                }
                Ok(_) => {}
                Err(e) => return Err(unreachable(e)),
            }
        };
        match reply {
            Push::Status(_) => {}
            Push::Error(e) => {
                return Err(BrokerError::Failed(format!(
                    "redis {url}: {}: {e}",
                    command[0]
                )));
            }
            other => {
                return Err(BrokerError::Failed(format!(
                    "redis {url}: {}: unexpected reply {other:?}",
                    command[0]
                )));
            }
        }
    }
    Ok((reader, writer, buf))
}

impl Sink {
    /// SUBSCRIBE to `channels`: resolves once Redis confirmed every one (the [`Source`] must
    /// be read meanwhile).
    pub(crate) async fn subscribe<S: AsRef<str>>(&self, channels: &[S]) -> Result<(), BrokerError> {
        self.command("SUBSCRIBE", channels).await
    }

    /// UNSUBSCRIBE from `channels`, as [`subscribe`](Sink::subscribe).
    pub(crate) async fn unsubscribe<S: AsRef<str>>(
        &self,
        channels: &[S],
    ) -> Result<(), BrokerError> {
        self.command("UNSUBSCRIBE", channels).await
    }

    /// Writes a PING; the returned receiver resolves with its PONG (an error once the
    /// connection is gone).
    pub(crate) async fn ping(&self) -> Result<oneshot::Receiver<Result<(), String>>, BrokerError> {
        self.send(&["PING"], 1).await
    }

    async fn command<S: AsRef<str>>(&self, name: &str, channels: &[S]) -> Result<(), BrokerError> {
        if channels.is_empty() {
            return Ok(()); // without channels the command would mean "all" (or be an error)
        }
        let mut args = Vec::with_capacity(channels.len() + 1);
        args.push(name);
        args.extend(channels.iter().map(AsRef::as_ref));
        let answered = self.send(&args, channels.len()).await?;
        match answered.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BrokerError::Failed(format!(
                "redis {}: {name}: {e}",
                self.url
            ))),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "redis {}: pub/sub connection lost before {name} was confirmed",
                self.url
            ))),
        }
    }

    /// Writes a command expecting `answers` confirmations; returns where they will be told.
    async fn send(
        &self,
        args: &[&str],
        answers: usize,
    ) -> Result<oneshot::Receiver<Result<(), String>>, BrokerError> {
        let mut command = Vec::with_capacity(64);
        resp::encode_command(&mut command, args);
        let (done, answered) = oneshot::channel();
        let mut writer = self.shared.writer.lock().await;
        self.shared.waiting().push_back(Slot {
            remaining: answers,
            done,
        });
        write_all(&mut writer, &command, &self.url).await?;
        Ok(answered)
    }
}

pub(super) async fn write_all(
    writer: &mut Writer,
    bytes: &[u8],
    url: &str,
) -> Result<(), BrokerError> {
    writer
        .write_all(bytes)
        .await
        .map_err(|e| BrokerError::Unavailable(format!("redis {url}: write: {e}")))
}

impl Source {
    /// The next message on a subscribed channel; `None` once the connection is closed or
    /// unreadable. Confirmations and PONGs met on the way answer the [`Sink`]'s commands.
    ///
    /// Cancel-safe: everything read stays in the buffer.
    pub(crate) async fn next(&mut self) -> Option<Message> {
        loop {
            match self.reply().await? {
                Push::Message { channel, payload } => return Some(Message { channel, payload }),
                Push::Subscribed(_) | Push::Unsubscribed(_) | Push::Pong => self.answer(Ok(())),
                Push::Error(e) => self.answer(Err(e)),
                Push::Status(_) | Push::Other => {}
            }
        }
    }

    /// One confirmation of the oldest unanswered command (an error answers all of it).
    fn answer(&self, result: Result<(), String>) {
        let mut waiting = self.shared.waiting();
        let Some(slot) = waiting.front_mut() else {
            return; // nothing of ours asked (a server-side unsubscribe)
        };
        slot.remaining = slot.remaining.saturating_sub(1);
        if slot.remaining == 0 || result.is_err() {
            if let Some(slot) = waiting.pop_front() {
                // The caller may have given up (timed out): nobody to tell.
                let _ = slot.done.send(result);
            }
        }
    }

    /// The next complete reply; `None` (and every waiting command told so) once the
    /// connection is closed or sends something that is not RESP.
    async fn reply(&mut self) -> Option<Push> {
        loop {
            match resp::parse(&mut self.buf) {
                Ok(Some(push)) => return Some(push),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("redis pub/sub: {e}; dropping the connection");
                    return self.closed();
                }
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                // Frames handed out are slices of the buffer: once they are dropped this
                // reclaims their space instead of allocating.
                self.buf.reserve(16 * 1024);
            }
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return self.closed(),
                Ok(_) => {}
            }
        }
    }

    fn closed(&mut self) -> Option<Push> {
        // Dropping the slots tells every waiting command the connection is gone.
        self.shared.waiting().clear();
        None
    }
}
