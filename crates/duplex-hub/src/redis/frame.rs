//! What travels on a channel's pub/sub channel ([`super::keys::pubsub`]): one message per
//! publication, join or leave, as text-prefixed bytes.
//!
//! ```text
//! p<epoch>:<offset>:<data>          a publication (written by the publish script)
//! j<n>:<client><user>               client joined; n = the client id's length in bytes
//! l<n>:<client><user>               client left (written by leave and by the expiry scripts)
//! ```
//!
//! `epoch` is hex (no `:`), `offset` and `n` are decimal; `data` and `user` run to the end of
//! the message, so they may hold any bytes. The Lua scripts in [`super::script`] build the
//! same frames.

use crate::broker::ClientInfo;

/// A decoded pub/sub message. A publication borrows its epoch and data from the message, so
/// the reader allocates nothing for one in the epoch it already holds, and takes the data as a
/// slice of the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A publication in `epoch` at `offset`.
    Publication {
        epoch: &'a str,
        offset: u64,
        data: &'a [u8],
    },
    /// A presence join.
    Join(ClientInfo),
    /// A presence leave.
    Leave(ClientInfo),
}

/// A presence frame (`kind` is `b'j'` or `b'l'`).
pub(crate) fn presence(kind: u8, client: &ClientInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + client.client.len() + client.user.len());
    out.push(kind);
    out.extend_from_slice(client.client.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(client.client.as_bytes());
    out.extend_from_slice(client.user.as_bytes());
    out
}

/// Decodes a message; `None` if it is not a frame of ours (nothing of ours writes one).
pub(crate) fn decode(payload: &[u8]) -> Option<Frame<'_>> {
    let (&kind, rest) = payload.split_first()?;
    match kind {
        b'p' => {
            let (epoch, rest) = split_colon(rest)?;
            let (offset, data) = split_colon(rest)?;
            Some(Frame::Publication {
                epoch: std::str::from_utf8(epoch).ok()?,
                offset: std::str::from_utf8(offset).ok()?.parse().ok()?,
                data,
            })
        }
        b'j' | b'l' => {
            let (len, rest) = split_colon(rest)?;
            let len: usize = std::str::from_utf8(len).ok()?.parse().ok()?;
            let (client, user) = rest.split_at_checked(len)?;
            let client = ClientInfo {
                client: std::str::from_utf8(client).ok()?.into(),
                user: std::str::from_utf8(user).ok()?.into(),
            };
            Some(if kind == b'j' {
                Frame::Join(client)
            } else {
                Frame::Leave(client)
            })
        }
        _ => None,
    }
}

fn split_colon(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == b':')?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(client: &str, user: &str) -> ClientInfo {
        ClientInfo {
            client: client.into(),
            user: user.into(),
        }
    }

    #[test]
    fn publications_decode_with_any_data() {
        assert_eq!(
            decode(b"p0123abcd:42:{\"a\":\"x:y\"}"),
            Some(Frame::Publication {
                epoch: "0123abcd",
                offset: 42,
                data: &b"{\"a\":\"x:y\"}"[..],
            })
        );
        assert_eq!(
            decode(b"pe:1:"),
            Some(Frame::Publication {
                epoch: "e",
                offset: 1,
                data: &b""[..],
            })
        );
    }

    #[test]
    fn presence_frames_round_trip() {
        for client in [
            info("c1", "ada"),
            info("a:b", ":x:"),
            info("", ""),
            info("ç", "ü"),
        ] {
            assert_eq!(
                decode(&presence(b'j', &client)),
                Some(Frame::Join(client.clone()))
            );
            assert_eq!(
                decode(&presence(b'l', &client)),
                Some(Frame::Leave(client.clone()))
            );
        }
        assert_eq!(presence(b'j', &info("c1", "ada")), b"j2:c1ada");
    }

    #[test]
    fn garbage_is_not_a_frame() {
        for bad in [
            &b""[..],
            b"x",
            b"p",
            b"pe",
            b"pe:",
            b"pe:x:1",
            b"pe:-1:1",
            b"j",
            b"j9:ab",
            b"jx:ab",
            b"j1:\xff",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
