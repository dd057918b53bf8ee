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
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Reading the request head (for `wss://`, the TLS handshake comes first: same phase,
    /// same deadline); what arrived so far when it came in pieces.
    Handshake(Vec<u8>),
    /// Upgraded.
    Open(Box<Open>),
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

/// An upgraded connection.
#[derive(Debug)]
pub(super) struct Open {
    pub(super) conn: Connection,
    /// Bytes not consumed by the connection: a partial frame header or control frame, or the
    /// bytes sent right behind the request head. Unallocated most of the time.
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
    /// `on_close` was called.
    pub(super) notified: bool,
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
        if !self.preface.is_empty() {
            let mut done = 0;
            let written = transport.write_raw(&self.preface, &mut done);
            self.preface.drain(..done);
            if written? == Written::Blocked {
                return Ok(Written::Blocked);
            }
            self.preface = Vec::new();
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
