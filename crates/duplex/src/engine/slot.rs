//! One connection of an event loop: its socket, where it stands, and its writes.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use duplex_proto::Connection;
use rustix::io::Errno;

use super::transport::Transport;

/// How many buffers one vectored write carries (two per frame: header and payload).
pub(super) const MAX_IO_SLICES: usize = 16;

/// A connection of the slab.
#[derive(Debug)]
pub(super) struct Slot {
    /// The socket, and its TLS session for `wss://`.
    pub(super) transport: Transport,
    pub(super) phase: Phase,
    /// Loop tick (seconds since the loop started, from 1) at which the handshake or the linger
    /// gives up; 0: none. An upgraded connection's timers are its core's.
    pub(super) deadline: u32,
    /// The last write stopped short: wait for the socket to be writable.
    pub(super) write_blocked: bool,
    /// Too much is queued: the socket is not read until it is written out.
    pub(super) read_paused: bool,
    /// Upgraded: `on_close` was called. (Here rather than in [`Open`]: beside the other flags
    /// it fills padding, in `Open` it would cost 8 bytes.)
    pub(super) notified: bool,
    /// Upgraded: bytes came in since the last sweep; a sweep that finds it clear frees what
    /// the connection kept for reuse (see [`Open::release_if_quiet`]).
    pub(super) active: bool,
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Reading the request head (for `wss://`, the TLS handshake comes first: same phase,
    /// same deadline); what arrived so far when it came in pieces.
    Handshake(Vec<u8>),
    /// Upgraded. Inline: the slab holds what nearly every connection is, rather than a
    /// pointer to a separate allocation (8 bytes, and malloc's 16 of overhead).
    Open(Open),
    /// Writing the last bytes (a refusal), then the write side is shut (after TLS'
    /// `close_notify`, for `wss://`) and what the peer still sends is discarded until it
    /// closes, so closing does not reset the connection before the peer read our last bytes. `drained` counts the discarded bytes, bounded by
    /// `duplex_proto::handshake::REFUSAL_DRAIN_LIMIT`.
    Linger {
        out: Vec<u8>,
        shut: bool,
        drained: usize,
    },
}

/// An upgraded connection: what every idle connection holds, inline in the slab (no
/// allocation of its own), plus the rarely used state out of line.
#[derive(Debug)]
pub(super) struct Open {
    pub(super) conn: Connection,
    /// Buffers a connection needs only now and then; `None` (one word) most of the time.
    pub(super) spill: Option<Box<Spill>>,
}

/// What an upgraded connection holds only while it is in use: boxed, so that an idle
/// connection pays one word for all of it (each field here would cost every connection its
/// size: 100 bytes together, most of what the engine itself kept per connection).
#[derive(Debug, Default)]
pub(super) struct Spill {
    /// Bytes not consumed by the connection: a partial frame header or control frame, or the
    /// bytes sent right behind the request head.
    pub(super) read_buf: BytesMut,
    /// Raw bytes to write before any frame: what a short write left of the 101 response.
    pub(super) preface: Vec<u8>,
    /// A large binary frame being read into a buffer of its own, and its size once complete
    /// (0: none). See `EventLoop::read_large`.
    pub(super) held: Vec<u8>,
    pub(super) held_target: usize,
    /// The size of the last large binary frame: the next read goes straight into a buffer of
    /// that size, on the guess that large frames follow large frames. 0: read small.
    pub(super) expect: usize,
}

impl Spill {
    /// Nothing in it but, possibly, the guess at the next frame's size.
    fn is_drained(&self) -> bool {
        self.read_buf.is_empty()
            && self.preface.is_empty()
            && self.held.is_empty()
            && self.held_target == 0
    }
}

impl Open {
    /// A connection just upgraded; `preface` is what is left to write of the 101 response.
    pub(super) fn new(conn: Connection, preface: Vec<u8>) -> Open {
        let spill = (!preface.is_empty()).then(|| {
            Box::new(Spill {
                preface,
                ..Spill::default()
            })
        });
        Open { conn, spill }
    }

    /// The out-of-line state, allocated on first use.
    #[inline]
    pub(super) fn spill(&mut self) -> &mut Spill {
        self.spill.get_or_insert_with(Box::default)
    }

    /// Whether a partial header (or control frame) waits for more bytes.
    #[inline]
    pub(super) fn has_partial(&self) -> bool {
        self.spill.as_ref().is_some_and(|s| !s.read_buf.is_empty())
    }

    /// Whether the next read goes to the large-frame buffer.
    #[inline]
    pub(super) fn reads_large(&self) -> bool {
        self.spill
            .as_ref()
            .is_some_and(|s| s.read_buf.is_empty() && (s.held_target > 0 || s.expect > 0))
    }

    /// Called once a sweep with the slot's `active` flag (cleared by the sweep): a connection
    /// that received nothing since the previous sweep gives back the memory it kept for reuse (its core's queue capacity, the large-frame
    /// guess and the box around it), so an idle connection holds no heap memory at all.
    /// Connections that stay busy keep it: freeing it every second would cost them an
    /// allocation per second, and a copy of their next large frame.
    pub(super) fn release_if_quiet(&mut self, was_active: bool) {
        if was_active {
            return;
        }
        self.conn.shrink_to_fit();
        if self.spill.as_ref().is_some_and(|s| s.is_drained()) {
            self.spill = None;
        }
    }
}

/// What writing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// Everything queued is written.
    All,
    /// The socket is full: wait for writable.
    Blocked,
}

impl Open {
    /// Writes the preface and the connection's transmits, vectored, until done or blocked.
    /// One path for both transports: only the vectored write itself differs (see
    /// `Tls::writev`, which keeps its meaning: a short write means the socket is full).
    pub(super) fn write(&mut self, transport: &mut Transport) -> io::Result<Written> {
        if let Some(spill) = self.spill.as_mut().filter(|s| !s.preface.is_empty()) {
            let mut done = 0;
            let written = transport.write_raw(&spill.preface, &mut done);
            spill.preface.drain(..done);
            if written? == Written::Blocked {
                return Ok(Written::Blocked);
            }
            spill.preface = Vec::new();
        }
        while self.conn.has_pending_transmit() {
            let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
            let count = self.conn.fill_io_slices(&mut slices);
            let total = if count < MAX_IO_SLICES {
                // The slices hold everything queued.
                self.conn.pending_transmit_bytes()
            } else {
                slices.iter().map(|s| s.len()).sum()
            };
            let written = match &mut transport.tls {
                None => rustix::io::writev(&transport.stream, &slices[..count]),
                Some(tls) => tls.writev(&transport.stream, &slices[..count]),
            };
            match written {
                Ok(0) if total > 0 => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.conn.advance_transmit(n);
                    // A short write means the socket buffer is full: trying again now would
                    // only return EAGAIN.
                    if n < total {
                        return Ok(Written::Blocked);
                    }
                }
                Err(Errno::AGAIN) => return Ok(Written::Blocked),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // TLS: the records of what the session took; nothing for plain TCP.
        transport.flush()
    }
}

#[cfg(test)]
mod tests {
    use duplex_proto::{Config, Connection, Role};

    use super::Open;

    /// The out-of-line state goes at the first sweep that finds the connection quiet, not
    /// while it is busy (a large-frame guess kept between frames saves a copy per frame).
    #[test]
    fn the_spill_is_freed_once_the_connection_is_quiet() {
        let mut open = Open::new(Connection::new(Role::Server, Config::default()), Vec::new());
        assert!(
            open.spill.is_none(),
            "a 101 written whole leaves nothing behind"
        );
        open.spill().expect = 70_000;
        open.release_if_quiet(true);
        assert!(open.spill.is_some(), "kept across a busy second");
        open.release_if_quiet(false);
        assert!(open.spill.is_none(), "freed after a quiet one");
        // Bytes still to write or read are never dropped.
        let mut open = Open::new(
            Connection::new(Role::Server, Config::default()),
            b"HTTP/1.1 101".to_vec(),
        );
        open.release_if_quiet(false);
        assert_eq!(open.spill.as_ref().map(|s| s.preface.len()), Some(12));
        open.spill().preface.clear();
        open.spill().read_buf.extend_from_slice(&[0x82]);
        open.release_if_quiet(false);
        assert!(open.has_partial());
    }
}
