//! A channel's stream, typed: publish and history reads over the [`super::script`] scripts,
//! and the decoding of their replies.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use ::redis::Value;
use bytes::Bytes;

use crate::broker::{BrokerError, History, HistoryQuery, Publication, StreamPosition};

use super::Options;
use super::conn::Conn;
use super::keys;
use super::resp::Decimal;
use super::script;

/// A new epoch for a channel whose meta is missing, sent with every publish and history
/// read (the script uses it only then). Random per process (as [`crate::ids`] makes them),
/// then counted up, so that a publish costs no random-source call and a channel that loses
/// its stream twice still gets two different epochs.
/// Sixteen lower-case hex digits, on the stack (no `format!` per publish).
fn candidate_epoch() -> [u8; 16] {
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| u64::from_str_radix(&crate::ids::epoch(), 16).unwrap_or(0));
    let n = base.wrapping_add(NEXT.fetch_add(1, Relaxed));
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    hex
}

/// Appends `data` to `channel`'s stream and publishes it: one EVALSHA.
pub(crate) async fn publish(
    conn: &Arc<Conn>,
    options: &Options,
    channel: &str,
    data: &[u8],
) -> Result<StreamPosition, BrokerError> {
    let (stream, meta, pubsub) = (
        keys::stream(channel),
        keys::meta(channel),
        keys::pubsub(channel),
    );
    let size = Decimal::new(options.history_size as u64);
    let ttl = Decimal::new(options.history_ttl_ms);
    let epoch = candidate_epoch();
    let reply = conn
        .eval(
            &script::PUBLISH,
            &[&stream, &meta],
            &[
                pubsub.as_bytes(),
                data,
                size.as_bytes(),
                ttl.as_bytes(),
                &epoch,
            ],
        )
        .await?;
    let bad = || {
        BrokerError::Failed(format!(
            "redis {}: unexpected publish reply {reply:?}",
            conn.url
        ))
    };
    let Value::Array(items) = &reply else {
        return Err(bad());
    };
    match items.as_slice() {
        [offset, epoch] => Ok(StreamPosition {
            epoch: text(epoch).ok_or_else(bad)?.into(),
            offset: int(offset).ok_or_else(bad)?,
        }),
        _ => Err(bad()),
    }
}

/// Reads `channel`'s history (one EVALSHA). The limit is clipped to the history size: the
/// stream never holds more.
pub(crate) async fn history(
    conn: &Arc<Conn>,
    options: &Options,
    channel: &str,
    query: HistoryQuery,
) -> Result<History, BrokerError> {
    let (stream, meta) = (keys::stream(channel), keys::meta(channel));
    let since = query
        .since
        .map_or_else(|| "-".to_owned(), |s| s.to_string());
    let limit = query.limit.min(options.history_size).to_string();
    let size = options.history_size.to_string();
    let ttl = options.history_ttl_ms.to_string();
    let epoch = candidate_epoch();
    let reply = conn
        .eval(
            &script::HISTORY,
            &[&stream, &meta],
            &[
                since.as_bytes(),
                limit.as_bytes(),
                size.as_bytes(),
                ttl.as_bytes(),
                &epoch,
            ],
        )
        .await?;
    decode_history(&reply)
        .ok_or_else(|| BrokerError::Failed(format!("redis {}: unexpected history reply", conn.url)))
}

/// `{epoch, top, earliest, offset, data, offset, data, ...}` as a [`History`].
fn decode_history(reply: &Value) -> Option<History> {
    let Value::Array(items) = reply else {
        return None;
    };
    let (head, rest) = items.split_at_checked(3)?;
    let position = StreamPosition {
        epoch: text(&head[0])?.into(),
        offset: int(&head[1])?,
    };
    let earliest = int(&head[2])?;
    let mut publications = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let [offset, data] = pair else { return None };
        publications.push(Publication {
            offset: int(offset)?,
            data: Bytes::copy_from_slice(bytes(data)?),
        });
    }
    Some(History {
        position,
        earliest,
        publications,
    })
}

/// A non-negative integer reply.
pub(crate) fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A string reply's bytes.
pub(crate) fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A string reply as UTF-8.
pub(crate) fn text(value: &Value) -> Option<&str> {
    std::str::from_utf8(bytes(value)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_epochs_are_sixteen_hex_digits_and_differ() {
        let epochs: std::collections::HashSet<String> = (0..1000)
            .map(|_| String::from_utf8(candidate_epoch().to_vec()).unwrap())
            .collect();
        assert_eq!(epochs.len(), 1000);
        assert!(
            epochs
                .iter()
                .all(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}
