//! Negotiation of permessage-deflate parameters (RFC 7692 sections 5 and 7.1): the
//! configuration, the offer a client sends, the server's choice among offers and the client's
//! check of the response.

use super::codec::{Compressor, Decompressor, zlib_window_bits};
use super::{EXTENSION_NAME, MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use crate::config::ConfigError;
use crate::extensions::{ExtensionError, ExtensionOffer};
use crate::role::Role;

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
    ///
    /// [`compress_once`]: super::compress_once
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
    ///
    /// [`ProtocolError::InvalidCompressedData`]: crate::ProtocolError::InvalidCompressedData
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
    ///
    /// [`compress_once`]: super::compress_once
    pub fn accepts_prepared(&self, role: Role, window_bits: u8) -> bool {
        self.outgoing_no_context_takeover(role)
            && zlib_window_bits(window_bits) <= zlib_window_bits(self.outgoing_window_bits(role))
    }
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

#[cfg(test)]
mod tests;
