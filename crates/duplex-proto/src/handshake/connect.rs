//! The client's whole handshake, from the request it offers to a configured [`Connection`]:
//! what a client runtime calls, so that it only does the I/O (connect, TLS, write the request,
//! read the response head, timeouts).
//!
//! 1. Build a [`ClientRequest`] (URL, 16 random key bytes, subprotocols, extra headers) and
//!    wrap it in a [`ClientHandshake`] with the [`Config`] of the connection;
//!    [`offer_deflate`](ClientHandshake::offer_deflate) adds a permessage-deflate offer.
//! 2. Write [`encode`](ClientHandshake::encode); read until
//!    [`parse_response`](super::parse_response) returns the head.
//! 3. [`finish`](ClientHandshake::finish) checks the answer (RFC 6455 section 4.1: status 101,
//!    `Sec-WebSocket-Accept`, a subprotocol that was offered, only offered extensions; RFC 7692
//!    section 5: a deflate answer the offer allows) and returns [`Connected`]. The bytes after
//!    the head (`buf[consumed..]`) are the first frames: the caller feeds them to the
//!    connection.

use http::Response;

use super::HandshakeError;
use super::client::{ClientRequest, validate_response};
use crate::{Config, Connection, Role};

/// A client handshake in progress: the request and what the resulting connection will be.
///
/// ```
/// use duplex_proto::handshake::{
///     parse_request, parse_response, validate_request, Accept, ClientHandshake, ClientRequest,
///     ServerHandshake,
/// };
/// use duplex_proto::{Config, Role};
///
/// let mut request = ClientRequest::new("ws://example.com/".parse()?, [1; 16]);
/// request.protocols.push("chat".into());
/// let client = ClientHandshake::new(request, Config::default());
/// let wire = client.encode();
///
/// // A server answers (see `ServerHandshake`).
/// let (head, _) = parse_request(&wire, 4096)?.expect("complete");
/// let offer = validate_request(&head)?;
/// let config = Config::default();
/// let upgrade = ServerHandshake::new(&config).decide(&offer, Ok(Accept::with_protocol("chat")))?;
///
/// let (response, consumed) = parse_response(&upgrade.encode_http11(), 4096)?.expect("complete");
/// let connected = client.finish(&response)?;
/// assert_eq!(connected.protocol.as_deref(), Some("chat"));
/// assert_eq!(connected.connection.role(), Role::Client);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    request: ClientRequest,
    config: Config,
    #[cfg(feature = "deflate")]
    deflate: Option<crate::extensions::deflate::DeflateConfig>,
}

impl ClientHandshake {
    /// A handshake sending `request` and opening a connection with `config`. The extension
    /// offer is this type's business: the request's `extensions` are cleared, and only
    /// [`offer_deflate`](Self::offer_deflate) sets them, so an extension the connection could
    /// not speak is never offered.
    pub fn new(mut request: ClientRequest, config: Config) -> ClientHandshake {
        request.extensions = None;
        ClientHandshake {
            request,
            config,
            #[cfg(feature = "deflate")]
            deflate: None,
        }
    }

    /// Offers permessage-deflate (RFC 7692) with `deflate`'s parameters (nothing if
    /// `deflate.enabled` is false), and accepts the server's answer within them.
    ///
    /// # Errors
    /// An invalid `deflate` ([`DeflateConfig::validate`](crate::extensions::deflate::DeflateConfig::validate)).
    ///
    /// ```
    /// use duplex_proto::handshake::{
    ///     parse_request, parse_response, validate_request, Accept, ClientHandshake, ClientRequest,
    ///     ServerHandshake,
    /// };
    /// use duplex_proto::extensions::deflate::DeflateConfig;
    /// use duplex_proto::Config;
    ///
    /// let request = ClientRequest::new("ws://example.com/".parse()?, [1; 16]);
    /// let mut client = ClientHandshake::new(request, Config::default());
    /// client.offer_deflate(DeflateConfig::default())?;
    /// let (head, _) = parse_request(&client.encode(), 4096)?.expect("complete");
    ///
    /// let (config, deflate) = (Config::default(), DeflateConfig::default());
    /// let server = ServerHandshake::new(&config).deflate(Some(&deflate));
    /// let upgrade = server.decide(&validate_request(&head)?, Ok(Accept::default()))?;
    /// assert!(upgrade.connection.deflate().is_some());
    ///
    /// let (response, _) = parse_response(&upgrade.encode_http11(), 4096)?.expect("complete");
    /// let connected = client.finish(&response)?;
    /// assert_eq!(connected.extensions.as_deref(), Some("permessage-deflate"));
    /// assert_eq!(connected.connection.deflate(), upgrade.connection.deflate());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "deflate")]
    pub fn offer_deflate(
        &mut self,
        deflate: crate::extensions::deflate::DeflateConfig,
    ) -> Result<(), crate::config::ConfigError> {
        deflate.validate()?;
        self.request.extensions = crate::extensions::deflate::client_offer(&deflate);
        self.deflate = Some(deflate);
        Ok(())
    }

    /// The request.
    pub fn request(&self) -> &ClientRequest {
        &self.request
    }

    /// The request's bytes ([`ClientRequest::encode`]).
    pub fn encode(&self) -> Vec<u8> {
        self.request.encode()
    }

    /// Checks the server's answer and opens the connection.
    ///
    /// # Errors
    /// Whatever [`validate_response`] finds (a status other than 101, a wrong or missing
    /// `Sec-WebSocket-Accept`, a subprotocol or extension that was not offered...), and
    /// [`HandshakeError::InvalidResponseHeader`]`("Sec-WebSocket-Extensions")` for a
    /// permessage-deflate answer the offer does not allow (RFC 7692 section 5: the client fails
    /// the connection).
    pub fn finish(&self, response: &Response<()>) -> Result<Connected, HandshakeError> {
        let accepted = validate_response(&self.request, response)?;
        #[cfg_attr(
            not(feature = "deflate"),
            allow(unused_mut, reason = "only deflate configures it after it is built")
        )]
        let mut connection = Connection::new(Role::Client, self.config.clone());
        #[cfg(feature = "deflate")]
        if let (Some(answer), Some(deflate)) = (accepted.extensions.as_deref(), &self.deflate) {
            use crate::extensions::{deflate::client_accept, parse};
            let invalid = |_| HandshakeError::InvalidResponseHeader("Sec-WebSocket-Extensions");
            let extensions = parse(answer).map_err(invalid)?;
            if let Some(negotiated) = client_accept(&extensions, deflate).map_err(invalid)? {
                connection.set_deflate(negotiated);
            }
        }
        Ok(Connected {
            connection,
            protocol: accepted.protocol,
            extensions: accepted.extensions,
        })
    }
}

/// An opened client connection: what the server agreed to and the connection configured with
/// it.
///
/// `#[non_exhaustive]`: take the fields by destructuring
/// (`let Connected { connection, protocol, .. } = connected;`).
#[derive(Debug)]
#[non_exhaustive]
pub struct Connected {
    /// The client side of the connection, with permessage-deflate turned on if the server
    /// accepted it.
    pub connection: Connection,
    /// The subprotocol the server selected, one the request offered.
    pub protocol: Option<String>,
    /// The server's `Sec-WebSocket-Extensions`, unparsed.
    pub extensions: Option<String>,
}

#[cfg(test)]
mod tests;
