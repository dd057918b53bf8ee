//! The seam between a connection and its socket: plain TCP, or TLS over it.
//!
//! Everything above this module (the request head, frames, backpressure, lingering) is one
//! code path for both. What differs is only how bytes reach the socket and come back:
//!
//! - plain: the loop reads into its scratch buffer and writes the core's transmits with one
//!   `writev`, as it always did; the seam costs a plain connection one word and a branch at
//!   the read and at the write (`tls` is `None`);
//! - TLS: rustls' `ServerConnection` is sans-IO like the WebSocket core, so the loop reads
//!   ciphertext, feeds it in and takes the plaintext out into the same frame path
//!   (`EventLoop::read_tls`); `Open::write` is the same function, with the session's
//!   `writev` in place of the socket's (see [`Tls`](super::tls::Tls)).

use std::io;
use std::net::{Shutdown, TcpStream};

use rustix::io::Errno;

use super::slot::Written;
use super::tls::Tls;

/// A connection's socket and, for `wss://`, its TLS session.
#[derive(Debug)]
pub(super) struct Transport {
    /// Non-blocking; registered with the loop's poll by its descriptor. A std stream rather
    /// than mio's: std's reads into a `Vec`'s spare capacity skip zeroing it first.
    pub(super) stream: TcpStream,
    /// `None`: plain TCP. Boxed: a plain connection pays one word for the seam.
    pub(super) tls: Option<Box<Tls>>,
}

impl Transport {
    /// Writes `buf` from `*done` on; advances `*done` (for TLS: by what the session took).
    /// `Blocked`: the socket is full; call again when it is writable.
    pub(super) fn write_raw(&mut self, buf: &[u8], done: &mut usize) -> io::Result<Written> {
        match &mut self.tls {
            None => write_raw(&self.stream, buf, done),
            Some(tls) => tls.write_raw(&self.stream, buf, done),
        }
    }

    /// Writes what the transport itself still holds: TLS records (handshake messages, an
    /// alert, the ciphertext of earlier writes). Nothing for plain TCP.
    pub(super) fn flush(&mut self) -> io::Result<Written> {
        match &mut self.tls {
            None => Ok(Written::All),
            Some(tls) => tls.flush_records(&self.stream),
        }
    }

    /// Ends our side: TLS sends `close_notify` (and what precedes it) first; then the write
    /// side is shut, so the peer reads an end of stream after our last bytes. `Blocked`: call
    /// again when writable.
    pub(super) fn shut_write(&mut self) -> io::Result<Written> {
        if let Some(tls) = &mut self.tls {
            if tls.close(&self.stream)? == Written::Blocked {
                return Ok(Written::Blocked);
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        Ok(Written::All)
    }
}

/// Writes `buf` from `*done` on to a plain socket; advances `*done`.
pub(super) fn write_raw(stream: &TcpStream, buf: &[u8], done: &mut usize) -> io::Result<Written> {
    while *done < buf.len() {
        match rustix::io::write(stream, &buf[*done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(Errno::AGAIN) => return Ok(Written::Blocked),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Written::All)
}
