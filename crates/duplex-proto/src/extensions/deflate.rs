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
//! with the right window and context rules for a [`Role`].
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

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{ExtensionError, ExtensionOffer};
use crate::config::ConfigError;
use crate::error::ProtocolError;
use crate::role::Role;

/// The extension token (RFC 7692 section 7).
pub const EXTENSION_NAME: &str = "permessage-deflate";
/// Smallest window the RFC allows (2^8 bytes); see the module docs on how zlib handles it.
pub const MIN_WINDOW_BITS: u8 = 8;
/// Largest window, and the default (2^15 = 32 KiB).
pub const MAX_WINDOW_BITS: u8 = 15;
/// Default compression level: 1. On streams of small JSON messages (about 70 bytes, each
/// flushed, context takeover) zlib-rs level 1 is about 10 times faster than level 2..6 and
/// within 12% of level 6's size; raise it for large payloads, where level 2 gains about 30%.
pub const DEFAULT_LEVEL: u32 = 1;
/// Default threshold: 0, every message is compressed. With context takeover (the default) even
/// small messages shrink; with no context takeover consider 64..256 bytes.
pub const DEFAULT_THRESHOLD: usize = 0;

const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";

/// The empty stored block a sync flush ends with; stripped by the sender, appended by the
/// receiver (RFC 7692 sections 7.2.1 and 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Largest output step when inflating: at most this much (and never more than the limit
/// allows) is allocated before the size limit is checked again.
const INFLATE_STEP: usize = 32 * 1024;
/// Largest output step when deflating without a flush.
const DEFLATE_STEP: usize = 64 * 1024;
/// Largest output step of a sync flush. zlib writes a second flush marker when a sync flush
/// returns with the output full, so a flush gets room for all its output when it can.
const SYNC_STEP: usize = 1024 * 1024;

/// What this endpoint wants from permessage-deflate. The window and context fields name the
/// direction they govern (`server_*`: server to client, `client_*`: client to server), so one
/// config reads the same on both roles; their effect depends on the role.
///
/// ```
/// use duplex_proto::extensions::deflate::DeflateConfig;
/// let config = DeflateConfig { level: 6, threshold: 128, ..DeflateConfig::default() };
/// assert!(config.validate().is_ok());
/// assert!(DeflateConfig { server_max_window_bits: 16, ..config }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Offer (client) or accept (server) permessage-deflate at all. Default true.
    pub enabled: bool,
    /// zlib level for outgoing messages, 0 (stored) to 9. Default [`DEFAULT_LEVEL`] (1).
    pub level: u32,
    /// Outgoing messages shorter than this many bytes are sent uncompressed (see
    /// [`Negotiated::should_compress`]). Default [`DEFAULT_THRESHOLD`] (0).
    pub threshold: usize,
    /// Largest window for server-to-client messages, 8..=15. Server: the largest window it
    /// compresses with (a client asking for less gets less; below 15 it is announced in the
    /// response). Client: the largest window it accepts from the server, sent in the offer
    /// when below 15. Default 15.
    pub server_max_window_bits: u8,
    /// Largest window for client-to-server messages, 8..=15. Client: the largest window it
    /// compresses with (sent in the offer when below 15; the client always offers the
    /// parameter so the server may lower it). Server: the largest window it accepts from
    /// clients; below 15, offers without `client_max_window_bits` are declined, since the
    /// server may not limit a client that did not offer it. Default 15.
    pub client_max_window_bits: u8,
    /// Ask that the server resets its compressor after each message: requested by a client,
    /// imposed by a server (needed for [`compress_once`] fan-out). Default false: keeping the
    /// context gives a better ratio at no extra memory.
    pub server_no_context_takeover: bool,
    /// Ask that the client resets its compressor after each message: a client announces it,
    /// a server imposes it. Default false.
    pub client_no_context_takeover: bool,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            level: DEFAULT_LEVEL,
            threshold: DEFAULT_THRESHOLD,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
        }
    }
}

impl DeflateConfig {
    /// Checks the level (0..=9) and window bits (8..=15).
    ///
    /// ```
    /// use duplex_proto::extensions::deflate::DeflateConfig;
    /// assert!(DeflateConfig { level: 10, ..DeflateConfig::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.level > 9 {
            return Err(ConfigError("deflate level must be 0..=9"));
        }
        let bits = MIN_WINDOW_BITS..=MAX_WINDOW_BITS;
        if !bits.contains(&self.server_max_window_bits) {
            return Err(ConfigError("server_max_window_bits must be 8..=15"));
        }
        if !bits.contains(&self.client_max_window_bits) {
            return Err(ConfigError("client_max_window_bits must be 8..=15"));
        }
        Ok(())
    }
}

/// The permessage-deflate parameters agreed for one connection, plus the local level and
/// threshold. Both ends hold the same four negotiated values; the direction-specific methods
/// read them for a [`Role`]: "outgoing" is what this endpoint sends, "incoming" what it
/// receives.
///
/// ```
/// use duplex_proto::extensions::deflate::Negotiated;
/// use duplex_proto::Role;
/// let n = Negotiated {
///     server_no_context_takeover: true,
///     client_no_context_takeover: false,
///     server_max_window_bits: 10,
///     client_max_window_bits: 15,
///     level: 1,
///     threshold: 0,
/// };
/// assert_eq!(n.outgoing_window_bits(Role::Server), 10);
/// assert!(n.outgoing_no_context_takeover(Role::Server));
/// assert_eq!(n.incoming_window_bits(Role::Client), 10);
/// assert!(n.incoming_no_context_takeover(Role::Client));
/// assert!(!n.outgoing_no_context_takeover(Role::Client));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The server resets its compressor after each message (and the client may reset its
    /// decompressor).
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// Largest window of server-to-client messages, 8..=15.
    pub server_max_window_bits: u8,
    /// Largest window of client-to-server messages, 8..=15.
    pub client_max_window_bits: u8,
    /// Local zlib level for outgoing messages (not negotiated).
    pub level: u32,
    /// Local threshold: outgoing messages shorter than this go uncompressed (not negotiated).
    pub threshold: usize,
}

impl Negotiated {
    /// Window bits (8..=15) of the messages `role` sends.
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::Negotiated;
    /// # use duplex_proto::Role;
    /// # let n = Negotiated { server_no_context_takeover: false, client_no_context_takeover: false,
    /// #     server_max_window_bits: 10, client_max_window_bits: 12, level: 1, threshold: 0 };
    /// assert_eq!(n.outgoing_window_bits(Role::Client), 12);
    /// ```
    pub fn outgoing_window_bits(&self, role: Role) -> u8 {
        match role {
            Role::Server => self.server_max_window_bits,
            Role::Client => self.client_max_window_bits,
        }
    }

    /// Window bits (8..=15) of the messages `role` receives, i.e. the peer's outgoing window.
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::Negotiated;
    /// # use duplex_proto::Role;
    /// # let n = Negotiated { server_no_context_takeover: false, client_no_context_takeover: false,
    /// #     server_max_window_bits: 10, client_max_window_bits: 12, level: 1, threshold: 0 };
    /// assert_eq!(n.incoming_window_bits(Role::Client), 10);
    /// ```
    pub fn incoming_window_bits(&self, role: Role) -> u8 {
        match role {
            Role::Server => self.client_max_window_bits,
            Role::Client => self.server_max_window_bits,
        }
    }

    /// Whether `role` resets its compressor after each message it sends.
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::Negotiated;
    /// # use duplex_proto::Role;
    /// # let n = Negotiated { server_no_context_takeover: false, client_no_context_takeover: true,
    /// #     server_max_window_bits: 15, client_max_window_bits: 15, level: 1, threshold: 0 };
    /// assert!(n.outgoing_no_context_takeover(Role::Client));
    /// ```
    pub fn outgoing_no_context_takeover(&self, role: Role) -> bool {
        match role {
            Role::Server => self.server_no_context_takeover,
            Role::Client => self.client_no_context_takeover,
        }
    }

    /// Whether the peer of `role` resets its compressor after each message, so `role` resets
    /// its decompressor too (allowed by RFC 7692 section 7.1.1, and it turns a peer that
    /// breaks the promise into an [`ProtocolError::InvalidCompressedData`]).
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::Negotiated;
    /// # use duplex_proto::Role;
    /// # let n = Negotiated { server_no_context_takeover: false, client_no_context_takeover: true,
    /// #     server_max_window_bits: 15, client_max_window_bits: 15, level: 1, threshold: 0 };
    /// assert!(n.incoming_no_context_takeover(Role::Server));
    /// ```
    pub fn incoming_no_context_takeover(&self, role: Role) -> bool {
        match role {
            Role::Server => self.client_no_context_takeover,
            Role::Client => self.server_no_context_takeover,
        }
    }

    /// The compressor for the messages `role` sends.
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::DeflateConfig;
    /// use duplex_proto::extensions::{deflate, parse};
    /// use duplex_proto::Role;
    /// let offers = parse("permessage-deflate")?;
    /// let (n, _) = deflate::server_negotiate(&offers, &DeflateConfig::default())?.unwrap();
    /// let mut compressor = n.compressor(Role::Server);
    /// let mut out = bytes::BytesMut::new();
    /// compressor.compress(b"Hello", &mut out);
    /// # Ok::<(), duplex_proto::extensions::ExtensionError>(())
    /// ```
    pub fn compressor(&self, role: Role) -> Compressor {
        Compressor::new(
            self.outgoing_window_bits(role),
            self.level,
            self.outgoing_no_context_takeover(role),
        )
    }

    /// The decompressor for the messages `role` receives.
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::DeflateConfig;
    /// use duplex_proto::extensions::{deflate, parse};
    /// use duplex_proto::Role;
    /// let offers = parse("permessage-deflate")?;
    /// let (n, _) = deflate::server_negotiate(&offers, &DeflateConfig::default())?.unwrap();
    /// let mut decompressor = n.decompressor(Role::Server);
    /// # Ok::<(), duplex_proto::extensions::ExtensionError>(())
    /// ```
    pub fn decompressor(&self, role: Role) -> Decompressor {
        Decompressor::new(
            self.incoming_window_bits(role),
            self.incoming_no_context_takeover(role),
        )
    }

    /// Whether an outgoing message of `len` bytes should be compressed (`len >= threshold`).
    /// For a message sent in fragments, decide on what is known when the first frame goes
    /// out (RSV1 is set on the first frame only).
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::Negotiated;
    /// # let n = Negotiated { server_no_context_takeover: false, client_no_context_takeover: false,
    /// #     server_max_window_bits: 15, client_max_window_bits: 15, level: 1, threshold: 64 };
    /// assert!(!n.should_compress(63));
    /// assert!(n.should_compress(64));
    /// ```
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// Whether `role` may send a message prepared once for many connections (see
    /// [`compress_once`]) that was compressed with `window_bits`: its outgoing direction has
    /// no context takeover and the window does not exceed the negotiated one.
    ///
    /// ```
    /// # use duplex_proto::extensions::deflate::Negotiated;
    /// use duplex_proto::Role;
    /// # let n = Negotiated { server_no_context_takeover: true, client_no_context_takeover: false,
    /// #     server_max_window_bits: 15, client_max_window_bits: 15, level: 1, threshold: 0 };
    /// assert!(n.accepts_prepared(Role::Server, 15));
    /// assert!(!n.accepts_prepared(Role::Client, 15)); // the client keeps its context
    /// ```
    pub fn accepts_prepared(&self, role: Role, window_bits: u8) -> bool {
        self.outgoing_no_context_takeover(role)
            && zlib_window_bits(window_bits) <= zlib_window_bits(self.outgoing_window_bits(role))
    }
}

/// The window bits zlib is asked for: 8 becomes 9 (see the module docs), the rest is clamped
/// to 9..=15.
fn zlib_window_bits(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW_BITS + 1, MAX_WINDOW_BITS)
}

/// The four parameters of one offer or response, each at most once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in offers only).
    client_max_window_bits: Option<Option<u8>>,
}

/// Reads the RFC 7692 section 7.1 parameters of a permessage-deflate element: unknown,
/// duplicate or malformed parameters are errors.
fn read_params(ext: &ExtensionOffer) -> Result<Params, ExtensionError> {
    let mut p = Params::default();
    let mut seen = [false; 4];
    for (name, value) in &ext.params {
        let index = [
            SERVER_NO_CONTEXT_TAKEOVER,
            CLIENT_NO_CONTEXT_TAKEOVER,
            SERVER_MAX_WINDOW_BITS,
            CLIENT_MAX_WINDOW_BITS,
        ]
        .iter()
        .position(|known| name.eq_ignore_ascii_case(known))
        .ok_or_else(|| ExtensionError::UnknownParam(name.clone()))?;
        if std::mem::replace(&mut seen[index], true) {
            return Err(ExtensionError::DuplicateParam(name.clone()));
        }
        let invalid = || ExtensionError::InvalidParamValue {
            param: name.clone(),
            value: value.clone(),
        };
        match (index, value.as_deref()) {
            (0, None) => p.server_no_context_takeover = true,
            (1, None) => p.client_no_context_takeover = true,
            (2, Some(v)) => p.server_max_window_bits = Some(window_bits(v).ok_or_else(invalid)?),
            (3, None) => p.client_max_window_bits = Some(None),
            (3, Some(v)) => {
                p.client_max_window_bits = Some(Some(window_bits(v).ok_or_else(invalid)?));
            }
            _ => return Err(invalid()),
        }
    }
    Ok(p)
}

/// A window bits value: a decimal 8..=15 without leading zeros (RFC 7692 section 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&bits)
        .then_some(bits)
}

/// Formats negotiated or offered parameters in the RFC's order.
fn to_extension(p: &Params) -> ExtensionOffer {
    let mut ext = ExtensionOffer::new(EXTENSION_NAME);
    if p.server_no_context_takeover {
        ext = ext.with_param(SERVER_NO_CONTEXT_TAKEOVER, None);
    }
    if p.client_no_context_takeover {
        ext = ext.with_param(CLIENT_NO_CONTEXT_TAKEOVER, None);
    }
    if let Some(bits) = p.server_max_window_bits {
        ext = ext.with_param(SERVER_MAX_WINDOW_BITS, Some(&bits.to_string()));
    }
    if let Some(bits) = p.client_max_window_bits {
        let value = bits.map(|b| b.to_string());
        ext = ext.with_param(CLIENT_MAX_WINDOW_BITS, value.as_deref());
    }
    ext
}

/// Server side: accepts the first acceptable `permessage-deflate` offer (RFC 7692 section 5)
/// and returns the agreed parameters with the `Sec-WebSocket-Extensions` response value.
/// `Ok(None)`: deflate is disabled, not offered, or every offer was declined (the handshake
/// goes on without it). `Err` only for an invalid `config`. Other extensions are ignored.
///
/// The response is built from the offer and `config` (RFC 7692 section 7.1):
/// - `server_no_context_takeover` and `client_no_context_takeover`: echoed when offered,
///   added when the config asks for them;
/// - `server_max_window_bits`: the smaller of the offered value and the configured one,
///   present when offered or when the configured value is below 15;
/// - `client_max_window_bits`: present only when offered (section 7.1.2.2), with the smaller
///   of the offered value and the configured one when that is below 15; an offer without it
///   is declined when the configured limit is below 15.
///
/// ```
/// use duplex_proto::extensions::{deflate::{self, DeflateConfig}, parse};
/// let offers = parse("permessage-deflate; foo, permessage-deflate; server_max_window_bits=10")?;
/// let (negotiated, response) = deflate::server_negotiate(&offers, &DeflateConfig::default())?.unwrap();
/// assert_eq!(response, "permessage-deflate; server_max_window_bits=10"); // the first offer was declined
/// assert_eq!(negotiated.server_max_window_bits, 10);
/// # Ok::<(), duplex_proto::extensions::ExtensionError>(())
/// ```
pub fn server_negotiate(
    offers: &[ExtensionOffer],
    config: &DeflateConfig,
) -> Result<Option<(Negotiated, String)>, ExtensionError> {
    config.validate()?;
    if !config.enabled {
        return Ok(None);
    }
    Ok(offers
        .iter()
        .filter(|offer| offer.is(EXTENSION_NAME))
        .find_map(|offer| server_accept_offer(offer, config).ok())
        .map(|(negotiated, response)| (negotiated, response.to_string())))
}

/// Server side, one offer: the agreed parameters and the response element, or why the offer
/// is declined. [`server_negotiate`] calls this for each offer in turn; use it directly to
/// log the reasons. `offer` must be a `permessage-deflate` element; `config` should be valid
/// (out-of-range values are clamped).
///
/// ```
/// use duplex_proto::extensions::{deflate::{self, DeflateConfig}, parse, ExtensionError};
/// let offer = &parse("permessage-deflate; server_max_window_bits=16")?[0];
/// assert!(matches!(
///     deflate::server_accept_offer(offer, &DeflateConfig::default()),
///     Err(ExtensionError::InvalidParamValue { .. })
/// ));
/// # Ok::<(), ExtensionError>(())
/// ```
pub fn server_accept_offer(
    offer: &ExtensionOffer,
    config: &DeflateConfig,
) -> Result<(Negotiated, ExtensionOffer), ExtensionError> {
    let offered = read_params(offer)?;
    let server_limit = config
        .server_max_window_bits
        .clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
    let client_limit = config
        .client_max_window_bits
        .clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);

    let server_bits = offered
        .server_max_window_bits
        .map_or(server_limit, |bits| bits.min(server_limit));
    let client_bits = match offered.client_max_window_bits {
        None if client_limit < MAX_WINDOW_BITS => {
            return Err(ExtensionError::MissingParam(CLIENT_MAX_WINDOW_BITS.into()));
        }
        None => MAX_WINDOW_BITS,
        Some(bits) => bits.unwrap_or(MAX_WINDOW_BITS).min(client_limit),
    };
    let response = Params {
        server_no_context_takeover: offered.server_no_context_takeover
            || config.server_no_context_takeover,
        client_no_context_takeover: offered.client_no_context_takeover
            || config.client_no_context_takeover,
        server_max_window_bits: (offered.server_max_window_bits.is_some()
            || server_bits < MAX_WINDOW_BITS)
            .then_some(server_bits),
        client_max_window_bits: (offered.client_max_window_bits.is_some()
            && client_bits < MAX_WINDOW_BITS)
            .then_some(Some(client_bits)),
    };
    let negotiated = Negotiated {
        server_no_context_takeover: response.server_no_context_takeover,
        client_no_context_takeover: response.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
        level: config.level.min(9),
        threshold: config.threshold,
    };
    Ok((negotiated, to_extension(&response)))
}

/// The parameters a client offers for `config` (see [`DeflateConfig`]).
fn offer_params(config: &DeflateConfig) -> Params {
    let below_max = |bits: u8| (bits < MAX_WINDOW_BITS).then_some(bits);
    Params {
        server_no_context_takeover: config.server_no_context_takeover,
        client_no_context_takeover: config.client_no_context_takeover,
        server_max_window_bits: below_max(config.server_max_window_bits),
        // Always offered: the client can compress with any window the server asks for.
        client_max_window_bits: Some(below_max(config.client_max_window_bits)),
    }
}

/// Client side: the `Sec-WebSocket-Extensions` value to offer, `None` when `config.enabled`
/// is false. One offer, with `client_max_window_bits` always (so the server may limit the
/// client's window) and the other parameters as `config` asks.
///
/// ```
/// use duplex_proto::extensions::deflate::{client_offer, DeflateConfig};
/// assert_eq!(
///     client_offer(&DeflateConfig { server_max_window_bits: 10, client_no_context_takeover: true, ..Default::default() }).unwrap(),
///     "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits"
/// );
/// assert_eq!(client_offer(&DeflateConfig { enabled: false, ..Default::default() }), None);
/// ```
pub fn client_offer(config: &DeflateConfig) -> Option<String> {
    config
        .enabled
        .then(|| to_extension(&offer_params(config)).to_string())
}

/// Client side: checks the server's response (all its extensions, parsed) against the offer
/// [`client_offer`] made for the same `config`. `Ok(None)`: the server did not accept
/// permessage-deflate. Any `Err` means the client must fail the connection (RFC 7692
/// section 5): permessage-deflate more than once, or when not offered; unknown, duplicate or
/// malformed parameters; `client_max_window_bits` without a value, above the offered value,
/// or not offered; `server_max_window_bits` missing although the client offered a limit, or
/// above it. Other extension names are left to the handshake's "was it offered" check.
///
/// A response without `server_no_context_takeover` that the client asked for is accepted:
/// the client's decompressor then simply keeps the context.
///
/// ```
/// use duplex_proto::extensions::{deflate::{self, DeflateConfig}, parse, ExtensionError};
/// let config = DeflateConfig::default();
/// let n = deflate::client_accept(&parse("permessage-deflate; client_max_window_bits=10")?, &config)?.unwrap();
/// assert_eq!(n.client_max_window_bits, 10);
/// assert_eq!(
///     deflate::client_accept(&parse("permessage-deflate; server_max_window_bits=7")?, &config),
///     Err(ExtensionError::InvalidParamValue { param: "server_max_window_bits".into(), value: Some("7".into()) })
/// );
/// # Ok::<(), ExtensionError>(())
/// ```
pub fn client_accept(
    response: &[ExtensionOffer],
    config: &DeflateConfig,
) -> Result<Option<Negotiated>, ExtensionError> {
    config.validate()?;
    let mut ours = response.iter().filter(|ext| ext.is(EXTENSION_NAME));
    let Some(ext) = ours.next() else {
        return Ok(None);
    };
    if ours.next().is_some() {
        return Err(ExtensionError::DuplicateExtension(EXTENSION_NAME.into()));
    }
    if !config.enabled {
        return Err(ExtensionError::NotOffered(EXTENSION_NAME.into()));
    }
    check_response(ext, &offer_params(config), config).map(Some)
}

/// The response to an `offered` set of parameters (RFC 7692 section 7.1).
fn check_response(
    ext: &ExtensionOffer,
    offered: &Params,
    config: &DeflateConfig,
) -> Result<Negotiated, ExtensionError> {
    let got = read_params(ext)?;
    let too_large = |param: &str, bits: u8| ExtensionError::InvalidParamValue {
        param: param.into(),
        value: Some(bits.to_string()),
    };

    // server_max_window_bits (section 7.1.2.1): required when offered, never above the offer;
    // the server may announce it unasked.
    let server_bits = match (offered.server_max_window_bits, got.server_max_window_bits) {
        (Some(_), None) => return Err(ExtensionError::MissingParam(SERVER_MAX_WINDOW_BITS.into())),
        (Some(limit), Some(bits)) if bits > limit => {
            return Err(too_large(SERVER_MAX_WINDOW_BITS, bits));
        }
        (_, bits) => bits.unwrap_or(MAX_WINDOW_BITS),
    };

    // client_max_window_bits (section 7.1.2.2): only if offered, always with a value.
    let offered_client = offered
        .client_max_window_bits
        .map(|bits| bits.unwrap_or(MAX_WINDOW_BITS));
    let client_bits = match (offered_client, got.client_max_window_bits) {
        (_, None) => offered_client.unwrap_or(MAX_WINDOW_BITS),
        (None, Some(_)) => {
            return Err(ExtensionError::UnexpectedParam(
                CLIENT_MAX_WINDOW_BITS.into(),
            ));
        }
        (Some(_), Some(None)) => {
            return Err(ExtensionError::InvalidParamValue {
                param: CLIENT_MAX_WINDOW_BITS.into(),
                value: None,
            });
        }
        (Some(limit), Some(Some(bits))) if bits > limit => {
            return Err(too_large(CLIENT_MAX_WINDOW_BITS, bits));
        }
        (Some(_), Some(Some(bits))) => bits,
    };

    Ok(Negotiated {
        server_no_context_takeover: got.server_no_context_takeover,
        client_no_context_takeover: got.client_no_context_takeover
            || offered.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
        level: config.level,
        threshold: config.threshold,
    })
}

/// Compresses outgoing messages with raw DEFLATE (RFC 7692 section 7.2.1), keeping or
/// dropping the sliding window between messages as negotiated.
///
/// Call protocol: either [`compress`](Self::compress) for a whole message, or for a message
/// sent in fragments any number of [`compress_piece`](Self::compress_piece) (and optionally
/// [`flush`](Self::flush)) calls followed by one [`finish`](Self::finish). Each call appends
/// the bytes ready so far to `out`; the concatenation of everything appended for one message
/// is its compressed payload, and may be cut into frames anywhere.
///
/// ```
/// use bytes::BytesMut;
/// use duplex_proto::extensions::deflate::{Compressor, Decompressor};
///
/// let mut compressor = Compressor::new(15, 1, false);
/// let mut frames = Vec::new();
/// for piece in [&b"Hel"[..], b"lo, ", b"world"] {
///     let mut frame = BytesMut::new();
///     compressor.compress_piece(piece, &mut frame);
///     frames.push(frame); // may be empty: zlib buffers input until it has a block
/// }
/// let mut last = BytesMut::new();
/// compressor.finish(&mut last);
/// frames.push(last);
///
/// let mut decompressor = Decompressor::new(15, false);
/// let mut message = BytesMut::new();
/// for (i, frame) in frames.iter().enumerate() {
///     decompressor.decompress(frame, i == frames.len() - 1, &mut message, 1 << 20)?;
/// }
/// assert_eq!(&message[..], b"Hello, world");
/// # Ok::<(), duplex_proto::ProtocolError>(())
/// ```
#[derive(Debug)]
pub struct Compressor {
    /// Created on first use.
    inner: Option<Compress>,
    window_bits: u8,
    level: u32,
    no_context_takeover: bool,
    /// Input bytes given to zlib since the last sync flush: bounds the next flush's output.
    unflushed: u64,
}

impl Compressor {
    /// A compressor with an LZ77 window of 2^`window_bits` bytes (8..=15, 8 runs as 9, see the
    /// module docs; out-of-range values are clamped), zlib `level` 0..=9 (clamped), resetting
    /// after each message when `no_context_takeover`. zlib state is allocated on first use.
    ///
    /// ```
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let compressor = Compressor::new(15, 1, false);
    /// ```
    pub fn new(window_bits: u8, level: u32, no_context_takeover: bool) -> Compressor {
        Compressor {
            inner: None,
            window_bits: zlib_window_bits(window_bits),
            level: level.min(9),
            no_context_takeover,
            unflushed: 0,
        }
    }

    /// Compresses a whole message: appends its payload to `out` (sync flush, trailing
    /// `00 00 ff ff` removed, section 7.2.1), then resets if there is no context takeover.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.compress(b"Hello", &mut out);
    /// assert_eq!(&out[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    /// ```
    pub fn compress(&mut self, payload: &[u8], out: &mut BytesMut) {
        let start = out.len();
        self.deflate(payload, out, FlushCompress::Sync);
        self.end_message(start, out);
    }

    /// Compresses one piece of a message sent in fragments, without ending the message.
    /// Appends what zlib has ready, possibly nothing.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.compress_piece(b"Hel", &mut out);
    /// compressor.compress_piece(b"lo", &mut out);
    /// compressor.finish(&mut out);
    /// assert_eq!(&out[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    /// ```
    pub fn compress_piece(&mut self, piece: &[u8], out: &mut BytesMut) {
        self.deflate(piece, out, FlushCompress::None);
    }

    /// Pushes out everything given so far without ending the message (a sync flush whose
    /// `00 00 ff ff` stays in the stream): for a streamed message whose fragments must not
    /// wait for more input. Costs about 5 bytes.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.compress_piece(b"Hel", &mut out);
    /// compressor.flush(&mut out);
    /// assert!(out.ends_with(&[0x00, 0x00, 0xff, 0xff]));
    /// ```
    pub fn flush(&mut self, out: &mut BytesMut) {
        self.deflate(&[], out, FlushCompress::Sync);
    }

    /// Ends a message started with [`compress_piece`](Self::compress_piece): appends the rest
    /// (sync flush, trailing `00 00 ff ff` removed), then resets if there is no context
    /// takeover.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Compressor;
    /// let mut compressor = Compressor::new(15, 1, false);
    /// let mut out = BytesMut::new();
    /// compressor.finish(&mut out); // an empty message
    /// assert_eq!(&out[..], [0x00]);
    /// ```
    pub fn finish(&mut self, out: &mut BytesMut) {
        let start = out.len();
        self.deflate(&[], out, FlushCompress::Sync);
        self.end_message(start, out);
    }

    fn end_message(&mut self, start: usize, out: &mut BytesMut) {
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        } else {
            // zlib writes nothing for a sync flush right after another one (`flush` then
            // `finish` with no input between): the stream is already byte-aligned, but the
            // last `00 00 ff ff` went out with the previous piece. End with a 0x00 (an empty
            // stored block whose tail is stripped, as in RFC 7692 section 7.2.3.6) so the
            // receiver's appended tail still lands on a block boundary.
            debug_assert_eq!(out.len(), start);
            out.extend_from_slice(&[0x00]);
        }
        if self.no_context_takeover {
            if let Some(inner) = &mut self.inner {
                inner.reset();
            }
        }
    }

    fn deflate(&mut self, mut input: &[u8], out: &mut BytesMut, flush: FlushCompress) {
        let sync = matches!(flush, FlushCompress::Sync);
        let (level, bits) = (self.level, self.window_bits);
        let inner = self.inner.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(level), false, bits)
        });
        loop {
            let step = if sync {
                // Worst case of DEFLATE output (stored blocks of at least 512 bytes, 5 bytes
                // of header each) plus the flush marker and leftover bits.
                let n = self.unflushed + input.len() as u64;
                usize::try_from(n + n / 64 + 64).map_or(SYNC_STEP, |b| b.min(SYNC_STEP))
            } else {
                (input.len() + 64).min(DEFLATE_STEP)
            };
            let len = out.len();
            out.resize(len + step, 0);
            let (in_before, out_before) = (inner.total_in(), inner.total_out());
            // Errors only come from a misused stream (zlib's Z_STREAM_ERROR); lack of progress
            // is Ok(Status::BufError).
            let result = inner.compress(input, &mut out[len..], flush);
            let consumed = (inner.total_in() - in_before) as usize;
            let written = (inner.total_out() - out_before) as usize;
            out.truncate(len + written);
            self.unflushed += consumed as u64;
            input = &input[consumed..];
            if result.is_err() || (input.is_empty() && written < step) {
                debug_assert!(result.is_ok(), "deflate failed: {result:?}");
                break;
            }
            if consumed == 0 && written == 0 {
                debug_assert!(false, "deflate made no progress");
                break;
            }
        }
        if sync {
            self.unflushed = 0;
        }
    }
}

/// Inflates incoming compressed messages (RFC 7692 section 7.2.2) under a size limit.
///
/// Call protocol: for each message with RSV1 set, call [`decompress`](Self::decompress) with
/// each frame's payload as it arrives, `fin` on the last one. The limit is checked while
/// inflating, in steps of at most 32 KiB of output: a deflate bomb fails with
/// [`ProtocolError::MessageTooLarge`] once it passes `max_size`, having produced at most
/// `max_size + 1` bytes. Corrupt data fails with [`ProtocolError::InvalidCompressedData`].
/// After an error the connection is to be failed; the decompressor has been reset.
///
/// A message that ends its DEFLATE stream with a BFINAL block (section 7.2.3.4) ends the
/// stream: bytes after it in the message are ignored, and the next message starts with a fresh
/// window (zlib cannot continue a finished stream).
///
/// ```
/// use bytes::BytesMut;
/// use duplex_proto::extensions::deflate::Decompressor;
/// use duplex_proto::ProtocolError;
///
/// let mut decompressor = Decompressor::new(15, false);
/// let mut message = BytesMut::new();
/// // "Hello" in two fragments (RFC 7692 section 7.2.3.1).
/// decompressor.decompress(&[0xf2, 0x48, 0xcd], false, &mut message, 1024)?;
/// decompressor.decompress(&[0xc9, 0xc9, 0x07, 0x00], true, &mut message, 1024)?;
/// assert_eq!(&message[..], b"Hello");
///
/// let mut message = BytesMut::new();
/// let err = decompressor.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut message, 4);
/// assert!(matches!(err, Err(ProtocolError::MessageTooLarge { max: 4, .. })));
/// # Ok::<(), ProtocolError>(())
/// ```
#[derive(Debug)]
pub struct Decompressor {
    /// Created on first use.
    inner: Option<Decompress>,
    window_bits: u8,
    no_context_takeover: bool,
    /// Bytes inflated so far for the current message.
    message_len: u64,
    /// A BFINAL block ended the stream within the current message.
    stream_ended: bool,
}

impl Decompressor {
    /// A decompressor for a peer compressing with at most 2^`window_bits` bytes of window
    /// (8..=15; 8 inflates with 9, out-of-range values are clamped), resetting after each
    /// message when `no_context_takeover`. zlib state is allocated on first use.
    ///
    /// ```
    /// use duplex_proto::extensions::deflate::Decompressor;
    /// let decompressor = Decompressor::new(15, false);
    /// assert_eq!(decompressor.message_len(), 0);
    /// ```
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Decompressor {
        Decompressor {
            inner: None,
            window_bits: zlib_window_bits(window_bits),
            no_context_takeover,
            message_len: 0,
            stream_ended: false,
        }
    }

    /// Inflates one compressed fragment of the current message and appends the output to
    /// `out`; `fin` marks the message's last fragment (then `00 00 ff ff` is appended to the
    /// input, section 7.2.2, and the message ends). `max_size` bounds the whole message's
    /// inflated size, counted across fragments.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Decompressor;
    /// let mut decompressor = Decompressor::new(15, false);
    /// let mut out = BytesMut::new();
    /// // Two DEFLATE blocks in one message (RFC 7692 section 7.2.3.5).
    /// let payload = [0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00];
    /// decompressor.decompress(&payload, true, &mut out, 1 << 20)?;
    /// assert_eq!(&out[..], b"Hello");
    /// # Ok::<(), duplex_proto::ProtocolError>(())
    /// ```
    pub fn decompress(
        &mut self,
        fragment: &[u8],
        fin: bool,
        out: &mut BytesMut,
        max_size: usize,
    ) -> Result<(), ProtocolError> {
        let mut result = self.inflate(fragment, out, max_size);
        if result.is_ok() && fin {
            result = self.inflate(&TAIL, out, max_size);
        }
        if fin || result.is_err() {
            self.end_message(result.is_err());
        }
        result
    }

    /// Bytes inflated so far for the message in progress (0 between messages).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex_proto::extensions::deflate::Decompressor;
    /// let mut decompressor = Decompressor::new(15, false);
    /// let mut out = BytesMut::new();
    /// decompressor.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], false, &mut out, 1024)?;
    /// assert_eq!(decompressor.message_len(), 5);
    /// # Ok::<(), duplex_proto::ProtocolError>(())
    /// ```
    pub fn message_len(&self) -> u64 {
        self.message_len
    }

    fn end_message(&mut self, failed: bool) {
        if failed || self.stream_ended || self.no_context_takeover {
            if let Some(inner) = &mut self.inner {
                inner.reset(false);
            }
        }
        self.message_len = 0;
        self.stream_ended = false;
    }

    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        max_size: usize,
    ) -> Result<(), ProtocolError> {
        if self.stream_ended {
            return Ok(());
        }
        let bits = self.window_bits;
        let inner = self
            .inner
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        // Start near the likely output size and grow, so small messages do not zero 32 KiB.
        let mut step = (input.len() * 4).clamp(256, INFLATE_STEP);
        loop {
            // One byte more than the limit allows, to detect that it was passed.
            let allowed = (max_size as u64).saturating_sub(self.message_len);
            let this_step = step.min(
                usize::try_from(allowed)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            );
            let len = out.len();
            out.resize(len + this_step, 0);
            let (in_before, out_before) = (inner.total_in(), inner.total_out());
            let result = inner.decompress(input, &mut out[len..], FlushDecompress::None);
            let consumed = (inner.total_in() - in_before) as usize;
            let written = (inner.total_out() - out_before) as usize;
            out.truncate(len + written);
            let status = result.map_err(|_| ProtocolError::InvalidCompressedData)?;
            self.message_len += written as u64;
            if self.message_len > max_size as u64 {
                return Err(ProtocolError::MessageTooLarge {
                    size: self.message_len,
                    max: max_size,
                });
            }
            input = &input[consumed..];
            if status == Status::StreamEnd {
                self.stream_ended = true;
                return Ok(());
            }
            if written == this_step {
                // The output space was filled: there may be more pending.
                step = (step * 2).min(INFLATE_STEP);
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            if consumed == 0 && written == 0 {
                // Input left, output space left, and no progress: not a DEFLATE stream zlib
                // can continue.
                return Err(ProtocolError::InvalidCompressedData);
            }
        }
    }
}

/// Compresses one whole message with a fresh compressor, no context and a 15-bit window, for
/// sending the same bytes to many connections (see the module docs): valid on every
/// connection where [`Negotiated::accepts_prepared`]`(role, 15)` holds. To prepare many
/// messages, or for a smaller window, keep a `Compressor::new(bits, level, true)` instead,
/// which reuses its zlib state.
///
/// ```
/// use bytes::BytesMut;
/// use duplex_proto::extensions::deflate::{compress_once, Decompressor};
/// let prepared = compress_once(b"Hello", 1);
/// assert_eq!(&prepared[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
/// ```
pub fn compress_once(payload: &[u8], level: u32) -> Bytes {
    thread_local! {
        // zlib state is a few hundred KiB to allocate and set up: one no-context compressor per
        // thread is reused (it resets after every message anyway) instead of one per message.
        static ONCE: std::cell::RefCell<Option<Compressor>> = const { std::cell::RefCell::new(None) };
    }
    let mut out = BytesMut::new();
    ONCE.with(|cell| {
        let mut cached = cell.borrow_mut();
        let compressor = match &mut *cached {
            Some(c) if c.level == level.min(9) => c,
            slot => slot.insert(Compressor::new(MAX_WINDOW_BITS, level, true)),
        };
        compressor.compress(payload, &mut out);
    });
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_once_reuses_its_compressor_without_leaking_context() {
        // Each prepared message must inflate alone: the reused compressor resets in between.
        for (i, text) in ["first message", "second message", "first message", ""]
            .iter()
            .enumerate()
        {
            let level = if i == 2 { 6 } else { 1 };
            let prepared = compress_once(text.as_bytes(), level);
            let mut out = BytesMut::new();
            Decompressor::new(15, true)
                .decompress(&prepared, true, &mut out, 1 << 20)
                .unwrap();
            assert_eq!(&out[..], text.as_bytes(), "message {i}");
        }
    }
    use crate::extensions::parse;
    use proptest::prelude::*;

    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    fn compress(c: &mut Compressor, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        c.compress(payload, &mut out);
        out
    }

    fn inflate(d: &mut Decompressor, fragments: &[&[u8]]) -> Result<BytesMut, ProtocolError> {
        let mut out = BytesMut::new();
        for (i, f) in fragments.iter().enumerate() {
            d.decompress(f, i + 1 == fragments.len(), &mut out, 1 << 20)?;
        }
        Ok(out)
    }

    // ---- RFC 7692 section 7.2.3 examples ----

    #[test]
    fn rfc_7_2_3_1_hello() {
        // zlib produces the RFC's bytes at every level (a static Huffman block).
        for level in 1..=9 {
            assert_eq!(
                &compress(&mut Compressor::new(15, level, false), b"Hello")[..],
                HELLO
            );
        }
        let mut d = Decompressor::new(15, false);
        assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
        // The same message in two fragments: 0x41 0x03 f2 48 cd, 0x80 0x04 c9 c9 07 00.
        assert_eq!(
            &inflate(&mut d, &[&HELLO[..3], &HELLO[3..]]).unwrap()[..],
            b"Hello"
        );
    }

    #[test]
    fn rfc_7_2_3_2_context_takeover() {
        let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
        // zlib-rs reproduces the RFC's bytes from level 2 up. Level 1 (its "quick" strategy)
        // encodes the back-reference differently, also valid.
        for level in 1..=9 {
            let mut c = Compressor::new(15, level, false);
            assert_eq!(&compress(&mut c, b"Hello")[..], HELLO);
            let again = compress(&mut c, b"Hello");
            if level >= 2 {
                assert_eq!(&again[..], second, "level {level}");
            }
            let mut d = Decompressor::new(15, false);
            assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
            assert_eq!(&inflate(&mut d, &[&again]).unwrap()[..], b"Hello");
        }
        let mut d = Decompressor::new(15, false);
        assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
        assert_eq!(&inflate(&mut d, &[&second]).unwrap()[..], b"Hello");

        // Without context takeover every message is compressed alone.
        let mut c = Compressor::new(15, 1, true);
        for _ in 0..3 {
            assert_eq!(&compress(&mut c, b"Hello")[..], HELLO);
        }
        // A decompressor that resets cannot resolve the back-reference into the previous
        // message: the peer broke its no-context-takeover promise.
        let mut d = Decompressor::new(15, true);
        inflate(&mut d, &[&HELLO]).unwrap();
        assert_eq!(
            inflate(&mut d, &[&second]),
            Err(ProtocolError::InvalidCompressedData)
        );
    }

    #[test]
    fn rfc_7_2_3_3_stored_block() {
        let payload = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        let mut d = Decompressor::new(15, false);
        assert_eq!(&inflate(&mut d, &[&payload]).unwrap()[..], b"Hello");
        // Level 0 writes stored blocks the same way.
        assert_eq!(
            &compress(&mut Compressor::new(15, 0, false), b"Hello")[..],
            payload
        );
    }

    #[test]
    fn rfc_7_2_3_4_bfinal() {
        let payload = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        let mut d = Decompressor::new(15, false);
        assert_eq!(&inflate(&mut d, &[&payload]).unwrap()[..], b"Hello");
        // Split inside the block, and the stream ended: the next message starts afresh.
        assert_eq!(
            &inflate(&mut d, &[&payload[..2], &payload[2..]]).unwrap()[..],
            b"Hello"
        );
        assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
    }

    #[test]
    fn rfc_7_2_3_5_two_blocks() {
        let payload = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        let mut d = Decompressor::new(15, false);
        assert_eq!(&inflate(&mut d, &[&payload]).unwrap()[..], b"Hello");
        // Every split point.
        for i in 0..=payload.len() {
            let out = inflate(&mut d, &[&payload[..i], &payload[i..]]).unwrap();
            assert_eq!(&out[..], b"Hello", "split at {i}");
        }
        // The sender side: a flush between "He" and "llo" gives the same shape.
        let mut c = Compressor::new(15, 1, false);
        let mut out = BytesMut::new();
        c.compress_piece(b"He", &mut out);
        c.flush(&mut out);
        c.compress_piece(b"llo", &mut out);
        c.finish(&mut out);
        assert_eq!(
            &inflate(&mut Decompressor::new(15, false), &[&out]).unwrap()[..],
            b"Hello"
        );
    }

    #[test]
    fn rfc_7_2_3_6_empty_message() {
        let mut c = Compressor::new(15, 1, false);
        assert_eq!(&compress(&mut c, b"")[..], [0x00]);
        let mut d = Decompressor::new(15, false);
        assert!(inflate(&mut d, &[&[0x00]]).unwrap().is_empty());
        // An empty payload with RSV1 is the empty stored block once the tail is appended.
        assert!(inflate(&mut d, &[&[]]).unwrap().is_empty());
    }

    #[test]
    fn invalid_data_is_an_error_and_resets() {
        let mut d = Decompressor::new(15, false);
        // BTYPE 11 is reserved.
        assert_eq!(
            inflate(&mut d, &[&[0xff, 0xff]]),
            Err(ProtocolError::InvalidCompressedData)
        );
        assert_eq!(d.message_len(), 0);
        assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
        // A distance before the start of the stream.
        assert_eq!(
            inflate(
                &mut Decompressor::new(15, false),
                &[&[0xf2, 0x00, 0x11, 0x00, 0x00]]
            ),
            Err(ProtocolError::InvalidCompressedData)
        );
    }

    // ---- size limit ----

    /// A message inflating to `mib` MiB of zeros, built from one compressed MiB repeated.
    fn bomb(mib: usize) -> Vec<u8> {
        let one = compress_once(&vec![0u8; 1 << 20], 9);
        let mut msg = Vec::new();
        for i in 0..mib {
            msg.extend_from_slice(&one);
            if i + 1 < mib {
                msg.extend_from_slice(&TAIL);
            }
        }
        msg
    }

    #[test]
    fn deflate_bomb_stops_at_the_limit() {
        let msg = bomb(100);
        assert!(msg.len() < 200 * 1024, "bomb is {} bytes", msg.len());
        let max = 1 << 20;
        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::new();
        let mut result = Ok(());
        let mut fed = 0;
        for chunk in msg.chunks(16 * 1024) {
            fed += chunk.len();
            result = d.decompress(chunk, fed == msg.len(), &mut out, max);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result,
            Err(ProtocolError::MessageTooLarge {
                size: max as u64 + 1,
                max
            })
        );
        // The first 16 KiB of input already hold far more than 1 MiB of output.
        assert_eq!(fed, 16 * 1024, "stopped after {fed} bytes of input");
        assert_eq!(out.len(), max + 1);
        assert!(out.capacity() <= 3 * max, "capacity {}", out.capacity());
        // Reset: the next message is fine.
        assert_eq!(&inflate(&mut d, &[&HELLO]).unwrap()[..], b"Hello");
    }

    #[test]
    fn limit_is_exact_and_counts_across_fragments() {
        let data = vec![7u8; 100_000];
        let compressed = compress_once(&data, 6);
        let (a, b) = compressed.split_at(compressed.len() / 2);
        for (max, ok) in [(100_000, true), (99_999, false)] {
            let mut d = Decompressor::new(15, false);
            let mut out = BytesMut::new();
            let r = d
                .decompress(a, false, &mut out, max)
                .and_then(|()| d.decompress(b, true, &mut out, max));
            assert_eq!(r.is_ok(), ok, "max {max}");
            if ok {
                assert_eq!(&out[..], &data[..]);
            }
        }
    }

    // ---- context takeover and fragmentation ----

    fn messages() -> Vec<Vec<u8>> {
        (0..8)
            .map(|i| {
                format!(
                    "{{\"channel\":\"prices\",\"seq\":{i},\"bid\":{}.{}}}",
                    100 + i,
                    i * 7
                )
                .repeat(1 + i % 3)
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn context_takeover_round_trips() {
        for bits in [8, 9, 12, 15] {
            let mut sizes = [0usize; 2];
            for (k, no_context) in [false, true].into_iter().enumerate() {
                let mut c = Compressor::new(bits, 1, no_context);
                let mut d = Decompressor::new(bits, no_context);
                for msg in messages() {
                    let wire = compress(&mut c, &msg);
                    sizes[k] += wire.len();
                    assert_eq!(inflate(&mut d, &[&wire]).unwrap(), msg);
                }
                // A decompressor that keeps context also reads a resetting compressor.
                if no_context {
                    let mut d = Decompressor::new(bits, false);
                    for msg in messages() {
                        assert_eq!(inflate(&mut d, &[&compress(&mut c, &msg)]).unwrap(), msg);
                    }
                }
            }
            assert!(sizes[0] < sizes[1], "bits {bits}: takeover {sizes:?}");
        }
    }

    #[test]
    fn fragmented_message_round_trip() {
        let msg: Vec<u8> = messages().concat().repeat(50);
        let mut c = Compressor::new(15, 6, false);
        let mut d = Decompressor::new(15, false);
        for round in 0..3 {
            let mut frames = Vec::new();
            for (i, piece) in msg.chunks(1000).enumerate() {
                let mut frame = BytesMut::new();
                c.compress_piece(piece, &mut frame);
                if (i + round) % 4 == 0 {
                    c.flush(&mut frame);
                }
                frames.push(frame);
            }
            let mut last = BytesMut::new();
            c.finish(&mut last);
            frames.push(last);
            let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            assert_eq!(inflate(&mut d, &frames).unwrap(), msg, "round {round}");
        }
    }

    #[test]
    fn flushes_write_one_marker() {
        let data = messages().concat().repeat(30);
        for level in [0, 1, 6] {
            for bits in [9, 15] {
                // `compress_piece` + `finish` gives the same bytes as `compress`: the final sync
                // flush gets room for all its output, so zlib does not repeat the marker.
                let mut whole = BytesMut::new();
                Compressor::new(bits, level, true).compress(&data, &mut whole);
                let mut c = Compressor::new(bits, level, true);
                let mut pieces = BytesMut::new();
                c.compress_piece(&data, &mut pieces);
                c.finish(&mut pieces);
                assert!(whole == pieces, "level {level} bits {bits}");
                // In many pieces (level 0 then cuts stored blocks differently).
                let mut pieces = BytesMut::new();
                for piece in data.chunks(777) {
                    c.compress_piece(piece, &mut pieces);
                }
                c.finish(&mut pieces);
                let mut d = Decompressor::new(bits, true);
                assert!(inflate(&mut d, &[&pieces]).unwrap() == data);

                // `flush` then `finish` with nothing between: the marker already went out, so
                // `finish` adds the 0x00 that keeps the receiver's appended tail aligned.
                let mut out = BytesMut::new();
                c.compress_piece(&data, &mut out);
                c.flush(&mut out);
                let n = out.len();
                assert!(out.ends_with(&TAIL));
                c.finish(&mut out);
                assert_eq!(&out[n..], [0x00]);
                let mut d = Decompressor::new(bits, true);
                assert!(inflate(&mut d, &[&out[..n], &out[n..]]).unwrap() == data);
            }
        }
    }

    #[test]
    fn window_9_output_fits_an_8_bit_window() {
        // A random 256-byte block repeated: an 8-bit window cannot reach back 256 bytes, and
        // zlib's 9-bit compressor (max distance 512 - 262 = 250) does not either, even at
        // level 9, while a 10-bit one does.
        let mut x = 0x2545_f491_u32;
        let block: Vec<u8> = (0..256)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let data = block.repeat(40);
        let narrow = compress(&mut Compressor::new(8, 9, false), &data);
        let wide = compress(&mut Compressor::new(10, 9, false), &data);
        assert!(
            narrow.len() > data.len() * 9 / 10,
            "8-bit: {}",
            narrow.len()
        );
        assert!(wide.len() < data.len() / 10, "10-bit: {}", wide.len());
        assert_eq!(
            inflate(&mut Decompressor::new(8, false), &[&narrow]).unwrap(),
            data
        );
    }

    #[test]
    fn compress_once_is_a_fresh_context() {
        let mut c = Compressor::new(15, 1, false);
        compress(&mut c, b"Hello");
        let prepared = compress_once(b"Hello", 1);
        assert_eq!(&prepared[..], HELLO);
        // Every receiver, whatever it decoded before, reads it.
        let mut d = Decompressor::new(15, false);
        inflate(&mut d, &[&compress(&mut c, b"something else")]).unwrap();
        assert_eq!(&inflate(&mut d, &[&prepared]).unwrap()[..], b"Hello");
    }

    // ---- negotiation ----

    fn cfg(f: impl FnOnce(&mut DeflateConfig)) -> DeflateConfig {
        let mut c = DeflateConfig::default();
        f(&mut c);
        c
    }

    fn server(header: &str, config: &DeflateConfig) -> Option<String> {
        server_negotiate(&parse(header).unwrap(), config)
            .unwrap()
            .map(|(_, response)| response)
    }

    #[test]
    fn server_negotiation_table() {
        let default = DeflateConfig::default();
        let pd = "permessage-deflate";
        let cases: Vec<(&str, DeflateConfig, Option<&str>)> = vec![
            (pd, default.clone(), Some(pd)),
            ("Permessage-Deflate", default.clone(), Some(pd)),
            ("x-webkit-deflate-frame", default.clone(), None),
            ("", default.clone(), None),
            (pd, cfg(|c| c.enabled = false), None),
            // client_max_window_bits
            (
                "permessage-deflate; client_max_window_bits",
                default.clone(),
                Some(pd),
            ),
            (
                "permessage-deflate; client_max_window_bits",
                cfg(|c| c.client_max_window_bits = 10),
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
            (pd, cfg(|c| c.client_max_window_bits = 10), None),
            (
                "permessage-deflate; client_max_window_bits=12",
                default.clone(),
                Some("permessage-deflate; client_max_window_bits=12"),
            ),
            (
                "permessage-deflate; client_max_window_bits=12",
                cfg(|c| c.client_max_window_bits = 10),
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
            (
                "permessage-deflate; client_max_window_bits=15",
                default.clone(),
                Some(pd),
            ),
            (
                "permessage-deflate; client_max_window_bits=\"9\"",
                default.clone(),
                Some("permessage-deflate; client_max_window_bits=9"),
            ),
            // server_max_window_bits
            (
                "permessage-deflate; server_max_window_bits=10",
                default.clone(),
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                cfg(|c| c.server_max_window_bits = 9),
                Some("permessage-deflate; server_max_window_bits=9"),
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                default.clone(),
                Some("permessage-deflate; server_max_window_bits=8"),
            ),
            (
                "permessage-deflate; server_max_window_bits=15",
                default.clone(),
                Some("permessage-deflate; server_max_window_bits=15"),
            ),
            (
                pd,
                cfg(|c| c.server_max_window_bits = 12),
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
            // context takeover: echoed, or imposed by the config
            (
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
                default.clone(),
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            (
                pd,
                cfg(|c| c.server_no_context_takeover = true),
                Some("permessage-deflate; server_no_context_takeover"),
            ),
            (
                pd,
                cfg(|c| c.client_no_context_takeover = true),
                Some("permessage-deflate; client_no_context_takeover"),
            ),
            // declined offers: malformed, duplicate, unknown
            (
                "permessage-deflate; server_max_window_bits",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=7",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=16",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=08",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=abc",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits=0",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits=+9",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; server_no_context_takeover=1",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; client_no_context_takeover=\"x\"",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                default.clone(),
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits; Client_Max_Window_Bits=10",
                default.clone(),
                None,
            ),
            ("permessage-deflate; foo", default.clone(), None),
            // several offers: the first acceptable one wins
            (
                "x-webkit-deflate-frame, permessage-deflate; foo, permessage-deflate; client_max_window_bits=11, permessage-deflate",
                default.clone(),
                Some("permessage-deflate; client_max_window_bits=11"),
            ),
            (
                "permessage-deflate, permessage-deflate; client_max_window_bits",
                cfg(|c| c.client_max_window_bits = 10),
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_max_window_bits=20, permessage-deflate; bad, permessage-deflate; server_no_context_takeover",
                default.clone(),
                Some("permessage-deflate; server_no_context_takeover"),
            ),
        ];
        for (offer, config, expected) in &cases {
            assert_eq!(
                server(offer, config).as_deref(),
                *expected,
                "offer {offer:?} with {config:?}"
            );
        }
    }

    #[test]
    fn server_negotiated_values_and_errors() {
        let offers = parse(
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits; client_no_context_takeover",
        )
        .unwrap();
        let config = cfg(|c| {
            c.client_max_window_bits = 12;
            c.level = 6;
            c.threshold = 100;
        });
        let (n, response) = server_negotiate(&offers, &config).unwrap().unwrap();
        assert_eq!(
            response,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
        );
        assert_eq!(
            n,
            Negotiated {
                server_no_context_takeover: false,
                client_no_context_takeover: true,
                server_max_window_bits: 10,
                client_max_window_bits: 12,
                level: 6,
                threshold: 100,
            }
        );
        assert_eq!(
            (
                n.outgoing_window_bits(Role::Server),
                n.incoming_window_bits(Role::Server)
            ),
            (10, 12)
        );
        assert!(!n.outgoing_no_context_takeover(Role::Server));
        assert!(n.incoming_no_context_takeover(Role::Server));

        // Declines explain themselves.
        let decline = |header: &str, config: &DeflateConfig| {
            server_accept_offer(&parse(header).unwrap()[0], config).unwrap_err()
        };
        assert_eq!(
            decline("permessage-deflate; foo=1", &config),
            ExtensionError::UnknownParam("foo".into())
        );
        assert_eq!(
            decline("permessage-deflate", &config),
            ExtensionError::MissingParam(CLIENT_MAX_WINDOW_BITS.into())
        );
        assert_eq!(
            decline(
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                &config
            ),
            ExtensionError::DuplicateParam(SERVER_NO_CONTEXT_TAKEOVER.into())
        );

        // An invalid config is the caller's error.
        assert!(matches!(
            server_negotiate(&offers, &cfg(|c| c.level = 10)),
            Err(ExtensionError::Config(_))
        ));
        assert!(matches!(
            server_negotiate(&offers, &cfg(|c| c.server_max_window_bits = 7)),
            Err(ExtensionError::Config(_))
        ));
    }

    #[test]
    fn client_offer_table() {
        let cases: Vec<(DeflateConfig, Option<&str>)> = vec![
            (
                DeflateConfig::default(),
                Some("permessage-deflate; client_max_window_bits"),
            ),
            (cfg(|c| c.enabled = false), None),
            (
                cfg(|c| {
                    c.server_no_context_takeover = true;
                    c.client_no_context_takeover = true;
                    c.server_max_window_bits = 10;
                    c.client_max_window_bits = 12;
                }),
                Some(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12",
                ),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(client_offer(&config).as_deref(), expected, "{config:?}");
        }
    }

    #[test]
    fn client_accept_table() {
        type Expect = Result<Option<(bool, bool, u8, u8)>, ExtensionError>;
        let default = DeflateConfig::default();
        let limited = cfg(|c| {
            c.server_max_window_bits = 10;
            c.client_max_window_bits = 12;
        });
        let invalid = |param: &str, value: Option<&str>| {
            Err(ExtensionError::InvalidParamValue {
                param: param.into(),
                value: value.map(Into::into),
            })
        };
        let cases: Vec<(&str, DeflateConfig, Expect)> = vec![
            ("", default.clone(), Ok(None)),
            ("x-other", default.clone(), Ok(None)),
            (
                "permessage-deflate",
                default.clone(),
                Ok(Some((false, false, 15, 15))),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                default.clone(),
                Ok(Some((true, true, 15, 15))),
            ),
            (
                "permessage-deflate; client_max_window_bits=10",
                default.clone(),
                Ok(Some((false, false, 15, 10))),
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                default.clone(),
                Ok(Some((false, false, 15, 8))),
            ),
            // The server may announce its own window unasked.
            (
                "permessage-deflate; server_max_window_bits=9",
                default.clone(),
                Ok(Some((false, false, 9, 15))),
            ),
            // The client's own no-context wish holds even if the server does not echo it.
            (
                "permessage-deflate",
                cfg(|c| c.client_no_context_takeover = true),
                Ok(Some((false, true, 15, 15))),
            ),
            // A server that ignores the wish for server_no_context_takeover is tolerated.
            (
                "permessage-deflate",
                cfg(|c| c.server_no_context_takeover = true),
                Ok(Some((false, false, 15, 15))),
            ),
            // Limits the client offered.
            (
                "permessage-deflate; server_max_window_bits=10",
                limited.clone(),
                Ok(Some((false, false, 10, 12))),
            ),
            (
                "permessage-deflate; server_max_window_bits=9; client_max_window_bits=11",
                limited.clone(),
                Ok(Some((false, false, 9, 11))),
            ),
            (
                "permessage-deflate",
                limited.clone(),
                Err(ExtensionError::MissingParam(SERVER_MAX_WINDOW_BITS.into())),
            ),
            (
                "permessage-deflate; server_max_window_bits=11",
                limited.clone(),
                invalid(SERVER_MAX_WINDOW_BITS, Some("11")),
            ),
            (
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=13",
                limited.clone(),
                invalid(CLIENT_MAX_WINDOW_BITS, Some("13")),
            ),
            // Malformed responses.
            (
                "permessage-deflate; client_max_window_bits",
                default.clone(),
                invalid(CLIENT_MAX_WINDOW_BITS, None),
            ),
            (
                "permessage-deflate; server_max_window_bits=16",
                default.clone(),
                invalid(SERVER_MAX_WINDOW_BITS, Some("16")),
            ),
            (
                "permessage-deflate; client_max_window_bits=7",
                default.clone(),
                invalid(CLIENT_MAX_WINDOW_BITS, Some("7")),
            ),
            (
                "permessage-deflate; server_no_context_takeover=yes",
                default.clone(),
                invalid(SERVER_NO_CONTEXT_TAKEOVER, Some("yes")),
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                default.clone(),
                Err(ExtensionError::DuplicateParam(
                    CLIENT_NO_CONTEXT_TAKEOVER.into(),
                )),
            ),
            (
                "permessage-deflate; x=1",
                default.clone(),
                Err(ExtensionError::UnknownParam("x".into())),
            ),
            (
                "permessage-deflate, permessage-deflate",
                default.clone(),
                Err(ExtensionError::DuplicateExtension(EXTENSION_NAME.into())),
            ),
            (
                "permessage-deflate",
                cfg(|c| c.enabled = false),
                Err(ExtensionError::NotOffered(EXTENSION_NAME.into())),
            ),
        ];
        for (response, config, expected) in cases {
            let got = client_accept(&parse(response).unwrap(), &config).map(|n| {
                n.map(|n| {
                    (
                        n.server_no_context_takeover,
                        n.client_no_context_takeover,
                        n.server_max_window_bits,
                        n.client_max_window_bits,
                    )
                })
            });
            assert_eq!(got, expected, "response {response:?} with {config:?}");
        }
    }

    #[test]
    fn client_rejects_client_max_window_bits_it_did_not_offer() {
        // client_offer always includes the parameter; a hand-made offer without it shows the rule.
        let offered = Params::default();
        let response = &parse("permessage-deflate; client_max_window_bits=10").unwrap()[0];
        assert_eq!(
            check_response(response, &offered, &DeflateConfig::default()),
            Err(ExtensionError::UnexpectedParam(
                CLIENT_MAX_WINDOW_BITS.into()
            ))
        );
        let response = &parse("permessage-deflate").unwrap()[0];
        assert!(check_response(response, &offered, &DeflateConfig::default()).is_ok());
    }

    #[test]
    fn direction_table() {
        let n = Negotiated {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: 9,
            client_max_window_bits: 13,
            level: 1,
            threshold: 0,
        };
        // (role, outgoing bits, outgoing reset, incoming bits, incoming reset)
        for (role, out_bits, out_reset, in_bits, in_reset) in [
            (Role::Server, 9, true, 13, false),
            (Role::Client, 13, false, 9, true),
        ] {
            assert_eq!(n.outgoing_window_bits(role), out_bits);
            assert_eq!(n.outgoing_no_context_takeover(role), out_reset);
            assert_eq!(n.incoming_window_bits(role), in_bits);
            assert_eq!(n.incoming_no_context_takeover(role), in_reset);
        }
        assert!(n.accepts_prepared(Role::Server, 9));
        assert!(!n.accepts_prepared(Role::Server, 15));
        assert!(!n.accepts_prepared(Role::Client, 9));
        let eight = Negotiated {
            server_max_window_bits: 8,
            ..n
        };
        assert!(
            eight.accepts_prepared(Role::Server, 9),
            "9-bit zlib output suits an 8-bit peer"
        );
        assert!(!eight.accepts_prepared(Role::Server, 10));
    }

    fn window() -> impl Strategy<Value = u8> {
        MIN_WINDOW_BITS..=MAX_WINDOW_BITS
    }

    fn config() -> impl Strategy<Value = DeflateConfig> {
        (window(), window(), any::<bool>(), any::<bool>(), 0..=9u32).prop_map(
            |(server_bits, client_bits, server_nct, client_nct, level)| DeflateConfig {
                level,
                server_max_window_bits: server_bits,
                client_max_window_bits: client_bits,
                server_no_context_takeover: server_nct,
                client_no_context_takeover: client_nct,
                ..DeflateConfig::default()
            },
        )
    }

    /// Random data with some repetition, so that matches happen.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop::collection::vec(b'a'..=b'e', 0..300),
                (any::<u8>(), 0..2000usize).prop_map(|(b, n)| vec![b; n]),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Cut `data` at the given fractions.
    fn cut(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(data[start..p].to_vec());
            start = p;
        }
        pieces.push(data[start..].to_vec());
        pieces
    }

    proptest! {
        #[test]
        fn both_ends_agree(client in config(), server in config()) {
            let offer = client_offer(&client).unwrap();
            let (on_server, response) = server_negotiate(&parse(&offer).unwrap(), &server)
                .unwrap()
                .expect("a client offer is always acceptable");
            let on_client = client_accept(&parse(&response).unwrap(), &client).unwrap().unwrap();
            let strip = |n: Negotiated| Negotiated { level: 0, threshold: 0, ..n };
            prop_assert_eq!(strip(on_server), strip(on_client));
            prop_assert!(on_server.server_max_window_bits <= server.server_max_window_bits.min(client.server_max_window_bits));
            prop_assert!(on_server.client_max_window_bits <= server.client_max_window_bits.min(client.client_max_window_bits));
        }

        #[test]
        fn round_trip_with_random_fragmentation(
            messages in prop::collection::vec((payload(), prop::collection::vec(any::<usize>(), 0..5), prop::collection::vec(any::<usize>(), 0..5), any::<bool>()), 1..5),
            bits in window(),
            level in 0..=9u32,
            no_context in any::<bool>(),
        ) {
            let mut c = Compressor::new(bits, level, no_context);
            let mut d = Decompressor::new(bits, no_context);
            for (msg, send_cuts, recv_cuts, flush) in messages {
                // Sender: the message in pieces; receiver: the wire bytes cut elsewhere.
                let mut wire = BytesMut::new();
                for piece in cut(&msg, &send_cuts) {
                    c.compress_piece(&piece, &mut wire);
                    if flush {
                        c.flush(&mut wire);
                    }
                }
                c.finish(&mut wire);
                let frames = cut(&wire, &recv_cuts);
                let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                prop_assert_eq!(&inflate(&mut d, &frames).unwrap()[..], &msg[..]);
                // The whole-message call gives the same result as pieces without flushes.
                if !flush && no_context {
                    let mut whole = BytesMut::new();
                    Compressor::new(bits, level, true).compress(&msg, &mut whole);
                    let mut pieces = BytesMut::new();
                    let mut fresh = Compressor::new(bits, level, true);
                    fresh.compress_piece(&msg, &mut pieces);
                    fresh.finish(&mut pieces);
                    prop_assert_eq!(whole, pieces);
                }
            }
        }
    }
}
