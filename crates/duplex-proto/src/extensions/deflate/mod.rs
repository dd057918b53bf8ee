//! permessage-deflate (RFC 7692): negotiation and per-message compression, sans-IO.
//!
//! # Negotiation (RFC 7692 sections 5 and 7.1)
//!
//! The client sends [`client_offer`] in `Sec-WebSocket-Extensions`. The server parses the
//! header with [`parse`](super::parse) and calls [`server_negotiate`], which accepts the first
//! acceptable `permessage-deflate` offer and returns the response value; offers it cannot
//! accept (malformed, duplicate or unknown parameters, or limits it cannot meet) are declined
//! and the next one is tried (section 5). The client checks the response with
//! [`client_accept`]. Both ends end up with the same [`Negotiated`] parameters.
//!
//! ```
//! use duplex_proto::extensions::{deflate, parse};
//! use duplex_proto::Role;
//!
//! let client_cfg = deflate::DeflateConfig::default();
//! let server_cfg = deflate::DeflateConfig { server_max_window_bits: 12, ..Default::default() };
//!
//! let offer = deflate::client_offer(&client_cfg).unwrap();
//! assert_eq!(offer, "permessage-deflate; client_max_window_bits");
//!
//! let (server, response) = deflate::server_negotiate(&parse(&offer)?, &server_cfg)?.unwrap();
//! assert_eq!(response, "permessage-deflate; server_max_window_bits=12");
//!
//! let client = deflate::client_accept(&parse(&response)?, &client_cfg)?.unwrap();
//! assert_eq!(client.incoming_window_bits(Role::Client), 12);
//! assert_eq!(server.outgoing_window_bits(Role::Server), 12);
//! # Ok::<(), duplex_proto::extensions::ExtensionError>(())
//! ```
//!
//! # Compression (RFC 7692 section 7.2)
//!
//! A [`Compressor`] per connection compresses outgoing messages (the frame carrying the first
//! fragment gets [`RSV1`](crate::frame::RSV1)); a [`Decompressor`] inflates incoming ones
//! under a size limit. [`Negotiated::compressor`] and [`Negotiated::decompressor`] build them
//! with the right window and context rules for a [`Role`](crate::Role).
//!
//! ```
//! use bytes::BytesMut;
//! use duplex_proto::extensions::deflate::{Compressor, Decompressor};
//!
//! let mut compressor = Compressor::new(15, 1, false);
//! let mut wire = BytesMut::new();
//! compressor.compress(b"Hello", &mut wire);
//! assert_eq!(&wire[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]); // RFC 7692 section 7.2.3.1
//!
//! let mut decompressor = Decompressor::new(15, false);
//! let mut message = BytesMut::new();
//! decompressor.decompress(&wire, true, &mut message, 1 << 20)?;
//! assert_eq!(&message[..], b"Hello");
//! # Ok::<(), duplex_proto::ProtocolError>(())
//! ```
//!
//! # Window bits 8
//!
//! RFC 7692 allows windows of 2^8 to 2^15 bytes. zlib (and zlib-rs) cannot run a raw deflate
//! stream with an 8-bit window, so where 8 is negotiated this module uses 9 for zlib:
//!
//! - compressing: a 9-bit zlib compressor never emits a distance above 250 (its maximum
//!   match distance is the window size minus 262 bytes of lookahead), so its output is also
//!   decodable by a peer that inflates with an 8-bit window;
//! - inflating: a peer compressing with an 8-bit window only refers 256 bytes back, which a
//!   9-bit (or larger) window covers.
//!
//! # Memory per connection
//!
//! Measured with zlib-rs 0.6 (the workspace's flate2 backend) through a counting allocator:
//!
//! | state                    | 15-bit window | 9-bit window |
//! |--------------------------|---------------|--------------|
//! | compressor (level 1..9)  | ≈ 371 KiB     | ≈ 245 KiB    |
//! | decompressor             | ≈ 46 KiB      | ≈ 46 KiB     |
//!
//! The compressor is dominated by its hash tables and block buffers (memLevel 8), not the
//! window. Both are allocated lazily, on the first message they handle, so a connection that
//! never sends compressed data (for example one only fed with [`compress_once`] output) does
//! not pay for a compressor. Context takeover costs no extra memory, only the state kept
//! between messages; no context takeover gives worse ratio on small messages.
//!
//! # Compress once, send to many
//!
//! When the outgoing direction has no context takeover, a compressed message depends only on
//! its payload, so a fan-out server can compress it once with [`compress_once`] (or a reused
//! `Compressor::new(bits, level, true)`) and queue the same bytes on every connection where
//! [`Negotiated::accepts_prepared`] holds: the sender's no-context-takeover parameter was
//! agreed (`server_no_context_takeover` for a server, `client_no_context_takeover` for a
//! client) and the prepared message's window is not larger than the one negotiated for that
//! direction. On a connection with context takeover a prepared message would desynchronise
//! the sliding windows of the two ends; compress per connection there.

mod codec;
mod negotiation;

pub use codec::{Compressor, Decompressor, compress_once};
pub use negotiation::{
    DEFAULT_LEVEL, DEFAULT_THRESHOLD, DeflateConfig, Negotiated, client_accept, client_offer,
    server_accept_offer, server_negotiate,
};

/// The extension token (RFC 7692 section 7).
pub const EXTENSION_NAME: &str = "permessage-deflate";
/// Smallest window the RFC allows (2^8 bytes); see the module docs on how zlib handles it.
pub const MIN_WINDOW_BITS: u8 = 8;
/// Largest window, and the default (2^15 = 32 KiB).
pub const MAX_WINDOW_BITS: u8 = 15;
