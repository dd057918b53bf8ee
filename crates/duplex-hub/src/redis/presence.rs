//! Presence in Redis: per channel a hash (client id -> user) and a sorted set of expiries
//! ([`super::keys`]). A client's entry lives `presence_ttl` unless its node refreshes it;
//! every node refreshes its own clients every `presence_refresh` ([`refresh_all`]), so the
//! clients of a node that died leave presence by themselves, within the TTL plus one refresh
//! period of the surviving nodes (the refresh and presence scripts drop expired entries and
//! announce each as a leave). Joins and leaves travel as pub/sub frames ([`super::frame`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use ::redis::Value;

use crate::broker::{BrokerError, ClientInfo};

use super::conn::Conn;
use super::frame;
use super::keys;
use super::script;
use super::stream::text;

/// This node's clients in presence, per channel: what [`refresh_all`] keeps alive.
#[derive(Debug, Default)]
pub(crate) struct LocalPresence {
    channels: Mutex<HashMap<String, BTreeMap<Arc<str>, ClientInfo>>>,
}

impl LocalPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<Arc<str>, ClientInfo>>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, channel: &str, client: &ClientInfo) {
        self.lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(client.client.clone(), client.clone());
    }

    fn remove(&self, channel: &str, client: &ClientInfo) {
        let mut channels = self.lock();
        if let Some(clients) = channels.get_mut(channel) {
            clients.remove(&client.client);
            if clients.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Every channel with this node's clients in it.
    fn snapshot(&self) -> Vec<(String, Vec<ClientInfo>)> {
        self.lock()
            .iter()
            .map(|(channel, clients)| (channel.clone(), clients.values().cloned().collect()))
            .collect()
    }
}

/// Adds `client` to `channel`'s presence (expiring after `ttl_ms` unless refreshed) and
/// announces the join.
pub(crate) async fn join(
    conn: &Arc<Conn>,
    local: &LocalPresence,
    ttl_ms: u64,
    channel: &str,
    client: &ClientInfo,
) -> Result<(), BrokerError> {
    let ttl = ttl_ms.to_string();
    let announce = frame::presence(b'j', client);
    conn.eval(
        &script::JOIN,
        &[&keys::presence(channel), &keys::presence_expiry(channel)],
        &[
            keys::pubsub(channel).as_bytes(),
            ttl.as_bytes(),
            client.client.as_bytes(),
            client.user.as_bytes(),
            &announce,
        ],
    )
    .await?;
    local.add(channel, client);
    Ok(())
}

/// Removes `client` from `channel`'s presence and announces the leave (if it was there).
pub(crate) async fn leave(
    conn: &Arc<Conn>,
    local: &LocalPresence,
    channel: &str,
    client: &ClientInfo,
) -> Result<(), BrokerError> {
    // Forgotten locally first: a refresh running meanwhile must not keep it alive.
    local.remove(channel, client);
    let announce = frame::presence(b'l', client);
    conn.eval(
        &script::LEAVE,
        &[&keys::presence(channel), &keys::presence_expiry(channel)],
        &[
            keys::pubsub(channel).as_bytes(),
            client.client.as_bytes(),
            &announce,
        ],
    )
    .await?;
    Ok(())
}

/// Who is in `channel` (expired entries dropped first), sorted by client id.
pub(crate) async fn presence(
    conn: &Arc<Conn>,
    channel: &str,
) -> Result<Vec<ClientInfo>, BrokerError> {
    let reply = conn
        .eval(
            &script::PRESENCE,
            &[&keys::presence(channel), &keys::presence_expiry(channel)],
            &[keys::pubsub(channel).as_bytes()],
        )
        .await?;
    let bad = || BrokerError::Failed(format!("redis {}: unexpected presence reply", conn.url));
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let mut clients = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks(2) {
        let [client, user] = pair else {
            return Err(bad());
        };
        clients.push(ClientInfo {
            client: text(client).ok_or_else(bad)?.into(),
            user: text(user).ok_or_else(bad)?.into(),
        });
    }
    clients.sort();
    Ok(clients)
}

/// One refresh round: every channel this node has clients in, on the shard `shard_of` says.
/// Errors are logged: the next round tries again (and puts the clients back should Redis
/// have lost the channel's presence meanwhile).
///
/// One race is accepted: a client leaving while a round that already listed it runs may be
/// put back if it was the channel's last client (the presence was gone); it then expires
/// after one TTL, announced as a leave, since no later round lists it.
pub(crate) async fn refresh_all(
    shards: &[Arc<Conn>],
    shard_of: impl Fn(&str) -> usize,
    local: &LocalPresence,
    ttl_ms: u64,
) {
    let ttl = ttl_ms.to_string();
    for (channel, clients) in local.snapshot() {
        let conn = &shards[shard_of(&channel)];
        let pubsub = keys::pubsub(&channel);
        let mut args: Vec<&[u8]> = vec![pubsub.as_bytes(), ttl.as_bytes()];
        for client in &clients {
            args.push(client.client.as_bytes());
            args.push(client.user.as_bytes());
        }
        let keys = [keys::presence(&channel), keys::presence_expiry(&channel)];
        let result = conn
            .eval(&script::REFRESH, &[&keys[0], &keys[1]], &args)
            .await;
        match result {
            Ok(Value::Int(dropped)) if dropped > 0 => {
                tracing::info!("presence of {channel}: {dropped} expired clients dropped");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("presence refresh of {channel}: {e}"),
        }
    }
}
