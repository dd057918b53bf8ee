//! Key and pub/sub channel names: everything the broker stores for hub channel `C` lives under
//! `duplex:{C}:`, one key per kind.
//!
//! | name              | type       | holds                                                    |
//! |-------------------|------------|----------------------------------------------------------|
//! | `duplex:{C}:s`    | stream     | the history: entry id `<offset>-0`, fields `d` (data), `t` (ms) |
//! | `duplex:{C}:m`    | hash       | the stream's meta: `e` epoch, `o` last offset            |
//! | `duplex:{C}:p`    | hash       | presence: client id -> user                              |
//! | `duplex:{C}:x`    | sorted set | presence expiry: client id scored by its expiry (ms)     |
//! | `duplex:{C}`      | pub/sub    | publications, joins and leaves (see [`super::frame`])    |
//!
//! Names are injective: each kind ends in its own suffix after the last `}`, so two channels
//! (whatever characters they hold, `}` included) never share a key. The braces are also a
//! Redis Cluster hash tag: a channel's keys would land in one slot, as its scripts require.

/// The prefix of every name.
const PREFIX: &str = "duplex:{";

fn name(channel: &str, suffix: &str) -> String {
    let mut name = String::with_capacity(PREFIX.len() + channel.len() + suffix.len());
    name.push_str(PREFIX);
    name.push_str(channel);
    name.push_str(suffix);
    name
}

/// The channel's history stream.
pub(crate) fn stream(channel: &str) -> String {
    name(channel, "}:s")
}

/// The stream's epoch and offset counter.
pub(crate) fn meta(channel: &str) -> String {
    name(channel, "}:m")
}

/// Presence: client id -> user.
pub(crate) fn presence(channel: &str) -> String {
    name(channel, "}:p")
}

/// Presence expiries: client id scored by the time (ms) it expires at.
pub(crate) fn presence_expiry(channel: &str) -> String {
    name(channel, "}:x")
}

/// The pub/sub channel that carries the channel's publications and presence events.
pub(crate) fn pubsub(channel: &str) -> String {
    name(channel, "}")
}

/// The hub channel a pub/sub channel name belongs to (`None`: not one of ours).
pub(crate) fn channel_of_pubsub(pubsub: &str) -> Option<&str> {
    pubsub.strip_prefix(PREFIX)?.strip_suffix('}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_pinned() {
        assert_eq!(stream("chat"), "duplex:{chat}:s");
        assert_eq!(meta("chat"), "duplex:{chat}:m");
        assert_eq!(presence("chat"), "duplex:{chat}:p");
        assert_eq!(presence_expiry("chat"), "duplex:{chat}:x");
        assert_eq!(pubsub("chat"), "duplex:{chat}");
    }

    #[test]
    fn pubsub_names_round_trip_and_do_not_collide() {
        for channel in ["", "chat", "a}", "}:s", "a:b{c}d", "ünïcode"] {
            assert_eq!(channel_of_pubsub(&pubsub(channel)), Some(channel));
        }
        assert_eq!(channel_of_pubsub("other"), None);
        assert_eq!(channel_of_pubsub("duplex:{x"), None);
        // The nasty case for braces: "a}:s" as a channel vs "a" with its stream suffix.
        assert_ne!(stream("a"), meta("a}:s"));
        assert_ne!(stream("a}:s"), stream("a"));
        assert_ne!(pubsub("a}:s"), stream("a"));
    }
}
