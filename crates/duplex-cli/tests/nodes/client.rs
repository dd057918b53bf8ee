//! Clients of the hub's JSON protocol for the many-node tests: a plain WebSocket client, an
//! HTTP publisher, the ledger of what was published, and a follower that keeps every
//! publication it is handed and checks the sequence as it goes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use duplex::{ClientOptions, MaybeTlsStream, Message, WebSocket};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// A WebSocket client: commands with ids, pushes kept in order while a reply is awaited.
#[derive(Debug)]
pub struct Client {
    ws: WebSocket<MaybeTlsStream>,
    pushes: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    /// Connects to `addr`'s `/ws?user=USER` (10 s at most).
    pub async fn connect(addr: SocketAddr, user: &str) -> Result<Client, String> {
        let url = format!("ws://{addr}/ws?user={user}");
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        let (ws, _) = timeout(Duration::from_secs(10), duplex::connect_with(&url, options))
            .await
            .map_err(|_| format!("connect to {addr}: timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        Ok(Client {
            ws,
            pushes: VecDeque::new(),
            next_id: 1,
        })
    }

    /// The next message; `Err` when the connection ended, `Ok(None)` at `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        match tokio::time::timeout_at(deadline, self.ws.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => Err("connection closed".into()),
            Ok(Some(Err(e))) => Err(format!("connection failed: {e}")),
            Ok(Some(Ok(message))) => serde_json::from_slice(message.as_bytes())
                .map(Some)
                .map_err(|e| format!("not JSON from the hub ({e})")),
        }
    }

    /// Sends `command` with a fresh id; the reply with that id (10 s at most).
    pub async fn call(&mut self, mut command: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(message) = self.next(deadline).await? else {
                return Err(format!("no reply to {command} within 10 s"));
            };
            if message.get("id").is_some() {
                if message["id"] != json!(id) {
                    return Err(format!("reply out of order: {message} for {command}"));
                }
                return Ok(message);
            }
            self.pushes.push_back(message);
        }
    }

    /// The next push (kept ones first); `Ok(None)` at `deadline`.
    pub async fn push(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(Some(push));
        }
        self.next(deadline).await
    }

    /// Publishes over the WebSocket; the reply (ok or not).
    pub async fn publish(&mut self, channel: &str, data: Value) -> Result<Value, String> {
        self.call(json!({"op": "publish", "channel": channel, "data": data}))
            .await
    }
}

/// One HTTP/1.1 request on a fresh connection; the status and the body (10 s at most).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{method} {target} on {addr}: no answer within 10 s"))?
        .map_err(|e| format!("{method} {target} on {addr}: {e}"))?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {target}: no complete response head"))?;
    let status = std::str::from_utf8(&response[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {target}: no status"))?;
    let body = &response[end + 4..];
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or_else(|_| json!(String::from_utf8_lossy(body)))
    };
    Ok((status, value))
}

/// `POST /api/publish`; the status and the body.
pub async fn publish_http(
    addr: SocketAddr,
    channel: &str,
    data: &Value,
) -> Result<(u16, Value), String> {
    http(
        addr,
        "POST",
        "/api/publish",
        Some(&json!({"channel": channel, "data": data})),
    )
    .await
}

/// What the hub confirmed: per channel, epoch and offset -> data.
#[derive(Debug, Default)]
pub struct Ledger {
    pub channels: HashMap<String, BTreeMap<(String, u64), Value>>,
    /// Per channel, the newest position confirmed: the highest offset of the epoch confirmed
    /// last (epochs are random strings: their order says nothing).
    latest: HashMap<String, (String, u64)>,
}

impl Ledger {
    /// Records a successful publish reply (`{"offset":N,"epoch":E}`); panics on a repeated
    /// position (two publications got the same offset).
    pub fn confirm(&mut self, channel: &str, reply: &Value, data: Value) {
        let offset = reply["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("publish reply without offset: {reply}"));
        let epoch = reply["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("publish reply without epoch: {reply}"))
            .to_owned();
        let latest = self
            .latest
            .entry(channel.to_owned())
            .or_insert_with(|| (epoch.clone(), offset));
        if latest.0 != epoch || latest.1 < offset {
            *latest = (epoch.clone(), offset);
        }
        let old = self
            .channels
            .entry(channel.to_owned())
            .or_default()
            .insert((epoch.clone(), offset), data);
        assert!(
            old.is_none(),
            "offset {offset} of {channel} in epoch {epoch} was given twice"
        );
    }

    /// The confirmed publications of `channel` in `epoch`, in offset order.
    pub fn of(&self, channel: &str, epoch: &str) -> Vec<(u64, Value)> {
        self.channels
            .get(channel)
            .map(|m| {
                m.iter()
                    .filter(|((e, _), _)| e == epoch)
                    .map(|((_, o), d)| (*o, d.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The newest confirmed position of `channel`.
    pub fn last(&self, channel: &str) -> Option<(String, u64)> {
        self.latest.get(channel).cloned()
    }
}

/// What a follower holds of one channel.
#[derive(Debug, Default)]
pub struct Stream {
    /// The position of the last publication delivered (or of the stream at subscribe time).
    pub epoch: String,
    pub offset: u64,
    /// Every publication delivered: (epoch, offset, data), in delivery order.
    pub got: Vec<(String, u64, Value)>,
    /// Where the first subscribe started (its reply's epoch and offset).
    pub start: Option<(String, u64)>,
    /// `reset` pushes and `recovered: false` replies: (epoch, offset) moved to.
    pub resets: Vec<(String, u64)>,
    /// `gap` pushes: (first, last).
    pub gaps: Vec<(u64, u64)>,
}

/// A client following some channels across connections (to any node): resubscribes with
/// `since` and records what it is handed. Anything out of order is recorded in `problems`,
/// never smoothed over: the hub promises neither duplicates nor gaps.
#[derive(Debug)]
pub struct Follower {
    pub user: String,
    pub streams: BTreeMap<String, Stream>,
    pub client: Option<Client>,
    /// Connections made (the first one included).
    pub connects: u32,
    pub problems: Vec<String>,
    /// The longest wait between two publications while connected (a stall).
    pub longest_silence: Duration,
    last_receipt: Option<Instant>,
}

impl Follower {
    pub fn new(user: &str, channels: &[String]) -> Follower {
        Follower {
            user: user.to_owned(),
            streams: channels
                .iter()
                .map(|c| (c.clone(), Stream::default()))
                .collect(),
            client: None,
            connects: 0,
            problems: Vec::new(),
            longest_silence: Duration::ZERO,
            last_receipt: None,
        }
    }

    /// Connects to `addr` and subscribes every channel (with `since` once it has a position).
    pub async fn attach(&mut self, addr: SocketAddr) -> Result<(), String> {
        self.client = None;
        let mut client = Client::connect(addr, &self.user).await?;
        self.connects += 1;
        let channels: Vec<String> = self.streams.keys().cloned().collect();
        for channel in channels {
            let stream = &self.streams[&channel];
            let mut command = json!({"op": "subscribe", "channel": channel});
            if !stream.epoch.is_empty() {
                command["since"] = json!({"epoch": stream.epoch, "offset": stream.offset});
            }
            let reply = client.call(command).await?;
            if reply["ok"] != true {
                return Err(format!("subscribe {channel} on {addr}: {reply}"));
            }
            self.subscribed(&channel, &reply);
        }
        self.client = Some(client);
        self.last_receipt = Some(Instant::now());
        Ok(())
    }

    fn subscribed(&mut self, channel: &str, reply: &Value) {
        let epoch = reply["epoch"].as_str().unwrap_or_default().to_owned();
        let offset = reply["offset"].as_u64().unwrap_or(0);
        match reply.get("recovered").and_then(Value::as_bool) {
            Some(true) => {
                let publications = reply["publications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for p in publications {
                    self.deliver(channel, &epoch, &p);
                }
                let stream = &self.streams[channel];
                if stream.offset != offset || stream.epoch != epoch {
                    self.problems.push(format!(
                        "{channel}: recovered up to {}/{} but the reply says {epoch}/{offset}",
                        stream.epoch, stream.offset
                    ));
                }
            }
            Some(false) | None => {
                let stream = self.streams.get_mut(channel).expect("followed channel");
                if reply.get("recovered").is_some() {
                    stream.resets.push((epoch.clone(), offset));
                } else if stream.start.is_none() {
                    stream.start = Some((epoch.clone(), offset));
                }
                stream.epoch = epoch;
                stream.offset = offset;
            }
        }
    }

    /// One publication handed over live or in a recovery reply.
    fn deliver(&mut self, channel: &str, epoch: &str, p: &Value) {
        let Some(stream) = self.streams.get_mut(channel) else {
            self.problems
                .push(format!("a publication of {channel}, not followed: {p}"));
            return;
        };
        let offset = p["offset"].as_u64().unwrap_or(0);
        if stream.epoch != epoch {
            self.problems.push(format!(
                "{channel}: publication {offset} of epoch {epoch} while in epoch {}",
                stream.epoch
            ));
        } else if offset != stream.offset + 1 {
            self.problems.push(format!(
                "{channel}: offset {offset} after {} ({})",
                stream.offset,
                if offset <= stream.offset {
                    "duplicate"
                } else {
                    "gap"
                }
            ));
        }
        stream.offset = offset;
        stream
            .got
            .push((epoch.to_owned(), offset, p["data"].clone()));
    }

    /// Applies one push (publication, reset, gap; presence events are not followed).
    fn apply(&mut self, push: &Value) {
        let channel = push["channel"].as_str().unwrap_or_default().to_owned();
        match push["op"].as_str() {
            Some("pub") => {
                let now = Instant::now();
                if let Some(last) = self.last_receipt {
                    self.longest_silence = self.longest_silence.max(now - last);
                }
                self.last_receipt = Some(now);
                let epoch = self
                    .streams
                    .get(&channel)
                    .map(|s| s.epoch.clone())
                    .unwrap_or_default();
                self.deliver(&channel, &epoch, push);
            }
            Some("reset") => {
                let epoch = push["epoch"].as_str().unwrap_or_default().to_owned();
                let offset = push["offset"].as_u64().unwrap_or(0);
                if let Some(stream) = self.streams.get_mut(&channel) {
                    stream.resets.push((epoch.clone(), offset));
                    stream.epoch = epoch;
                    stream.offset = offset;
                }
            }
            Some("gap") => {
                let first = push["first"].as_u64().unwrap_or(0);
                let last = push["last"].as_u64().unwrap_or(0);
                if let Some(stream) = self.streams.get_mut(&channel) {
                    if first != stream.offset + 1 || last < first {
                        self.problems.push(format!(
                            "{channel}: gap {first}..={last} announced after offset {}",
                            stream.offset
                        ));
                    }
                    stream.gaps.push((first, last));
                    stream.offset = last;
                }
            }
            Some("presence") => {}
            _ => self.problems.push(format!("unexpected push {push}")),
        }
    }

    /// Reads pushes until `deadline`, or until `done` says every channel is complete. `Err`
    /// when the connection was lost (the client is dropped then).
    pub async fn pump(
        &mut self,
        deadline: Instant,
        done: impl Fn(&Follower) -> bool,
    ) -> Result<(), String> {
        loop {
            if done(self) {
                return Ok(());
            }
            let Some(client) = self.client.as_mut() else {
                return Err("not connected".into());
            };
            match client.push(deadline).await {
                Ok(Some(push)) => self.apply(&push),
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.client = None;
                    self.last_receipt = None;
                    return Err(e);
                }
            }
        }
    }

    /// Drops the connection without a close handshake, as a lost link would.
    pub fn drop_connection(&mut self) {
        self.client = None;
        self.last_receipt = None;
    }

    /// True when every followed channel reached the ledger's last position.
    pub fn caught_up(&self, ledger: &Ledger) -> bool {
        self.streams.iter().all(|(channel, stream)| {
            ledger
                .last(channel)
                .is_none_or(|(epoch, offset)| stream.epoch == epoch && stream.offset >= offset)
        })
    }

    /// Checks everything against the ledger: in every epoch it saw, the publications it was
    /// handed are exactly the confirmed ones after where it started (or was reset to) up to
    /// the last one it got, each once, in order, with the data that was published.
    pub fn verify(&self, ledger: &Ledger) -> Result<(), String> {
        if !self.problems.is_empty() {
            return Err(format!(
                "{}: {} problems, first: {:?}",
                self.user,
                self.problems.len(),
                &self.problems[..self.problems.len().min(5)]
            ));
        }
        for (channel, stream) in &self.streams {
            let mut epochs: Vec<&str> = Vec::new();
            for (epoch, _, _) in &stream.got {
                if epochs.last() != Some(&epoch.as_str()) {
                    epochs.push(epoch);
                }
            }
            for epoch in epochs {
                let got: Vec<(u64, &Value)> = stream
                    .got
                    .iter()
                    .filter(|(e, _, _)| e == epoch)
                    .map(|(_, o, d)| (*o, d))
                    .collect();
                let confirmed = ledger.of(channel, epoch);
                let last = got[got.len() - 1].0;
                // Where this epoch began for the follower: its first subscribe or a reset.
                let Some(from) = stream
                    .start
                    .iter()
                    .chain(&stream.resets)
                    .find(|(e, _)| e == epoch)
                    .map(|(_, o)| *o)
                else {
                    return Err(format!(
                        "{}: {channel}: publications of epoch {epoch}, never subscribed or \
                         reset to it",
                        self.user
                    ));
                };
                let first = got[0].0;
                let expected: Vec<(u64, &Value)> = confirmed
                    .iter()
                    .filter(|(o, _)| *o > from && *o <= last)
                    .map(|(o, d)| (*o, d))
                    .collect();
                if got != expected {
                    return Err(format!(
                        "{}: {channel} in epoch {epoch}: got {} publications {first}..={last}, \
                         the ledger has {} after {from} up to {last}",
                        self.user,
                        got.len(),
                        expected.len()
                    ));
                }
            }
        }
        Ok(())
    }
}
