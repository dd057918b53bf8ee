//! `wss://` for the engine: one rustls `ServerConnection` per connection, driven sans-IO.
//!
//! Reading: the loop reads ciphertext from the socket into a buffer of its own and hands it
//! here ([`Tls::feed`]); the plaintext comes back out ([`Tls::take_plaintext`]) into the loop's
//! scratch buffer and goes down the same path as plain bytes. Writing: plaintext goes into
//! the session's writer, and its records go out with `write_tls` (vectored).
//!
//! Memory stays bounded whatever the peer does: one read's worth of ciphertext (a fixed
//! buffer per loop) is fed at a time and its plaintext is taken out at once, so rustls'
//! receive buffer never fills; rustls keeps at most one partial record; what we write waits in
//! the WebSocket core's queue (the loop's backpressure bound) and rustls buffers at most
//! its default limit (64 KiB) of records on top.
//!
//! Without the `tls` feature, [`Tls`] is an empty enum: `Transport::tls` is always `None`,
//! and the TLS branches of the loop are dead code the compiler drops.

#[cfg(feature = "tls")]
pub(super) use imp::Tls;
#[cfg(not(feature = "tls"))]
pub(super) use stub::Tls;

/// What [`Tls::take_plaintext`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "tls"),
    allow(dead_code, reason = "only a TLS session makes these")
)]
pub(super) enum Plaintext {
    /// This many bytes were copied out.
    Bytes(usize),
    /// None for now: feed more ciphertext.
    Empty,
    /// The peer sent `close_notify`: an end of stream.
    Closed,
}

#[cfg(feature = "tls")]
mod imp {
    use std::io::{self, IoSlice, Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;

    use rustix::io::Errno;
    use rustls::{ServerConfig, ServerConnection};

    use super::Plaintext;
    use crate::engine::slot::{MAX_IO_SLICES, Written};

    /// A write error as the errno `Open::write` expects; what rustls said goes to the log.
    fn errno(e: &io::Error) -> Errno {
        tracing::debug!("tls write: {e}");
        Errno::from_io_error(e).unwrap_or(Errno::IO)
    }

    /// A connection's TLS session.
    #[derive(Debug)]
    pub(in crate::engine) struct Tls {
        conn: ServerConnection,
    }

    impl Tls {
        /// A session for a newly accepted connection.
        pub(in crate::engine) fn new(config: &Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
            Ok(Tls {
                conn: ServerConnection::new(config.clone())?,
            })
        }

        /// Feeds ciphertext: takes what rustls accepts from the front of `cipher` (a record
        /// buffer's worth at most) and decrypts it. An error (garbage instead of a
        /// ClientHello, a bad record, a failed handshake) ends the connection: the alert
        /// rustls queued for it is written if the socket takes it, and the error returned.
        pub(in crate::engine) fn feed(
            &mut self,
            cipher: &mut &[u8],
            stream: &TcpStream,
        ) -> io::Result<()> {
            let result = match self.conn.read_tls(cipher) {
                // A full record buffer: cannot happen while plaintext is taken out after each
                // feed, but must not loop forever if it did.
                Ok(0) => Err(io::ErrorKind::InvalidData.into()),
                Ok(_) => self
                    .conn
                    .process_new_packets()
                    .map(drop)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
                Err(e) => Err(e),
            };
            if result.is_err() {
                let _ = self.flush_records(stream);
            }
            result
        }

        /// Copies decrypted bytes into `buf` (which must not be empty).
        pub(in crate::engine) fn take_plaintext(&mut self, buf: &mut [u8]) -> Plaintext {
            match self.conn.reader().read(buf) {
                Ok(0) => Plaintext::Closed,
                Ok(n) => Plaintext::Bytes(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Plaintext::Empty,
                // UnexpectedEof (TCP closed without close_notify) is never reported: the loop
                // never feeds an end of stream, it ends the connection itself.
                Err(_) => Plaintext::Closed,
            }
        }

        /// Writes the records rustls holds until there are none or the socket is full.
        pub(in crate::engine) fn flush_records(
            &mut self,
            stream: &TcpStream,
        ) -> io::Result<Written> {
            let mut socket: &TcpStream = stream;
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut socket) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Written::Blocked);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Written::All)
        }

        /// Encrypts `buf` from `*done` on and writes it; `Blocked` when the socket is full
        /// (what rustls took is counted in `*done`, the rest waits for the caller).
        pub(in crate::engine) fn write_raw(
            &mut self,
            stream: &TcpStream,
            buf: &[u8],
            done: &mut usize,
        ) -> io::Result<Written> {
            loop {
                if self.flush_records(stream)? == Written::Blocked {
                    return Ok(Written::Blocked);
                }
                if *done == buf.len() {
                    return Ok(Written::All);
                }
                let n = self.conn.writer().write(&buf[*done..])?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                *done += n;
            }
        }

        /// `Open::write`'s vectored write, through the session: takes what rustls accepts
        /// and writes its records, round after round, until everything is taken or the
        /// socket is full. So a short count means what it means for a socket (full: wait for
        /// writable), never just "rustls' buffer is full", for which no readiness edge would
        /// come. What rustls took before the socket filled is counted, and its records go out
        /// with the next flush. Errors: `EAGAIN` when the socket is full before anything was
        /// taken, `EIO` for a TLS failure.
        pub(in crate::engine) fn writev(
            &mut self,
            stream: &TcpStream,
            slices: &[IoSlice<'_>],
        ) -> rustix::io::Result<usize> {
            let mut rest = [IoSlice::new(&[]); MAX_IO_SLICES];
            let rest = &mut rest[..slices.len()];
            rest.copy_from_slice(slices);
            let mut rest = &mut rest[..];
            let mut taken = 0;
            loop {
                match self.flush_records(stream) {
                    Ok(Written::All) => {}
                    Ok(Written::Blocked) if taken > 0 => return Ok(taken),
                    Ok(Written::Blocked) => return Err(Errno::AGAIN),
                    Err(e) => return Err(errno(&e)),
                }
                if rest.iter().all(|s| s.is_empty()) {
                    return Ok(taken);
                }
                let n = match self.conn.writer().write_vectored(rest) {
                    // rustls took nothing though its records were all written: only a
                    // session that cannot send application data does that.
                    Ok(0) => return Err(Errno::IO),
                    Ok(n) => n,
                    Err(e) => return Err(errno(&e)),
                };
                taken += n;
                IoSlice::advance_slices(&mut rest, n);
            }
        }

        /// Queues `close_notify` (once) and writes it with whatever precedes it.
        pub(in crate::engine) fn close(&mut self, stream: &TcpStream) -> io::Result<Written> {
            self.conn.send_close_notify();
            self.flush_records(stream)
        }

        /// The handshake is complete and chose HTTP/2 by ALPN.
        pub(in crate::engine) fn chose_h2(&self) -> bool {
            !self.conn.is_handshaking() && self.conn.alpn_protocol() == Some(b"h2")
        }

        /// The session, for a hand-off: first the ciphertext read but not fed yet goes in,
        /// and every byte of plaintext comes out into `plaintext`, so the session holds no
        /// received data (records still to write stay in it).
        pub(in crate::engine) fn into_session(
            mut self,
            mut cipher: &[u8],
            stream: &TcpStream,
            plaintext: &mut Vec<u8>,
        ) -> io::Result<ServerConnection> {
            loop {
                let mut buf = [0; 4096];
                // The end (close_notify, `Closed`) stays in the session for its reader to see.
                while let Plaintext::Bytes(n) = self.take_plaintext(&mut buf) {
                    plaintext.extend_from_slice(&buf[..n]);
                }
                if cipher.is_empty() {
                    return Ok(self.conn);
                }
                self.feed(&mut cipher, stream)?;
            }
        }
    }

    /// The configuration the engine serves with: `config`, advertising by ALPN `http/1.1`
    /// (the engine speaks HTTP/1.1 upgrades itself; a client that negotiated `h2` sends a
    /// preface it cannot parse), and `h2` before it when HTTP/2 connections are handed off.
    pub(in crate::engine) fn with_alpn(config: &Arc<ServerConfig>, h2: bool) -> Arc<ServerConfig> {
        let protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        if config.alpn_protocols == protocols {
            return config.clone();
        }
        let mut config = ServerConfig::clone(config);
        config.alpn_protocols = protocols;
        Arc::new(config)
    }
}

#[cfg(feature = "tls")]
pub(super) use imp::with_alpn;

#[cfg(not(feature = "tls"))]
mod stub {
    //! Without the `tls` feature no connection has a session: every method is unreachable
    //! by construction (no value of `Tls` exists).

    use std::io::{self, IoSlice};
    use std::net::TcpStream;

    use super::Plaintext;
    use crate::engine::slot::Written;

    /// No TLS session can exist.
    #[derive(Debug)]
    pub(in crate::engine) enum Tls {}

    impl Tls {
        pub(in crate::engine) fn feed(&mut self, _: &mut &[u8], _: &TcpStream) -> io::Result<()> {
            match *self {}
        }

        pub(in crate::engine) fn take_plaintext(&mut self, _: &mut [u8]) -> Plaintext {
            match *self {}
        }

        pub(in crate::engine) fn flush_records(&mut self, _: &TcpStream) -> io::Result<Written> {
            match *self {}
        }

        pub(in crate::engine) fn write_raw(
            &mut self,
            _: &TcpStream,
            _: &[u8],
            _: &mut usize,
        ) -> io::Result<Written> {
            match *self {}
        }

        pub(in crate::engine) fn writev(
            &mut self,
            _: &TcpStream,
            _: &[IoSlice<'_>],
        ) -> rustix::io::Result<usize> {
            match *self {}
        }

        pub(in crate::engine) fn close(&mut self, _: &TcpStream) -> io::Result<Written> {
            match *self {}
        }

        pub(in crate::engine) fn chose_h2(&self) -> bool {
            match *self {}
        }
    }
}
