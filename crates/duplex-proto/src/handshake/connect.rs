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
//!
//! Over HTTP/2 (RFC 8441) the same handshake sends
//! [`extended_connect_request`](ClientHandshake::extended_connect_request) on a new stream of a
//! connection whose server sent `SETTINGS_ENABLE_CONNECT_PROTOCOL`, with the `:protocol`
//! pseudo-header set to `websocket` by the HTTP/2 library, and checks the answer with
//! [`finish_extended_connect`](ClientHandshake::finish_extended_connect): a `2xx` instead of
//! `101`, no key and no `Sec-WebSocket-Accept`, the same subprotocol and extension rules.

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{Method, Request, Response, Uri, Version};

use super::HandshakeError;
use super::client::{Accepted, ClientRequest, agreement, validate_response};
use super::is_header_value;
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
        self.open(accepted)
    }

    /// The request as an HTTP/2 extended CONNECT (RFC 8441 sections 4 and 5): method
    /// `CONNECT`, version HTTP/2, the URI `http(s)://authority/resource` (which the HTTP/2
    /// library sends as `:scheme`, `:authority` and `:path`), `Sec-WebSocket-Version: 13`, the
    /// subprotocols, the extension offer and the extra headers. No key, and none of the
    /// connection-specific headers HTTP/2 forbids (`Connection`, `Upgrade`, `Transfer-Encoding`,
    /// `TE`, `Keep-Alive`, `Proxy-Connection`); a `Host` among the extra headers becomes the
    /// authority. The caller's HTTP/2 library adds `:protocol = websocket` (its own request
    /// extension) and sends it on a connection whose server allowed extended CONNECT.
    ///
    /// ```
    /// use duplex_proto::handshake::{ClientHandshake, ClientRequest};
    /// let mut request = ClientRequest::new("wss://example.com/chat?room=1".parse()?, [1; 16]);
    /// request.protocols.push("chat".into());
    /// let connect = ClientHandshake::new(request, Default::default()).extended_connect_request();
    /// assert_eq!(connect.method(), http::Method::CONNECT);
    /// assert_eq!(connect.uri(), "https://example.com/chat?room=1");
    /// assert_eq!(connect.headers()["sec-websocket-version"], "13");
    /// assert_eq!(connect.headers()["sec-websocket-protocol"], "chat");
    /// assert!(connect.headers().get("sec-websocket-key").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extended_connect_request(&self) -> Request<()> {
        let url = &self.request.url;
        let extra = &self.request.headers;
        let authority = extra
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .map_or_else(|| url.host_header(), |host| host.trim().to_owned());
        let mut resource = String::with_capacity(url.resource.len() + 1);
        super::url::percent_encode_into(&mut resource, &url.resource);
        if !resource.starts_with('/') {
            resource.insert(0, '/');
        }
        let scheme = if url.tls { "https" } else { "http" };
        // The parts were checked (a WsUrl's host, a percent-encoded resource); a URI that
        // still does not parse falls back to the bare resource rather than failing.
        let uri = format!("{scheme}://{authority}{resource}")
            .parse::<Uri>()
            .or_else(|_| resource.parse::<Uri>())
            .unwrap_or_default();

        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.version_mut() = Version::HTTP_2;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        let protocols: Vec<&str> = self.request.offered_protocols().collect();
        if !protocols.is_empty() {
            // Tokens joined by ", " are always a valid value.
            if let Ok(value) = HeaderValue::from_str(&protocols.join(", ")) {
                headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
        if let Some(value) = self
            .request
            .offered_extensions()
            .filter(|e| is_header_value(e))
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, value);
        }
        let skip = [
            HOST,
            CONNECTION,
            UPGRADE,
            TRANSFER_ENCODING,
            CONTENT_LENGTH,
            TE,
            SEC_WEBSOCKET_KEY,
            SEC_WEBSOCKET_VERSION,
            SEC_WEBSOCKET_PROTOCOL,
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ];
        for (name, value) in extra {
            if !skip.contains(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        request
    }

    /// Checks the server's answer to [`extended_connect_request`](Self::extended_connect_request)
    /// and opens the connection (RFC 8441 section 5): any `2xx` accepts (servers send `200`),
    /// with the subprotocol and extension rules of [`finish`](Self::finish); there is no
    /// `Sec-WebSocket-Accept` to check.
    ///
    /// # Errors
    /// [`HandshakeError::UnexpectedStatus`] for a status outside `2xx`, and what
    /// [`finish`](Self::finish) finds in the subprotocol and extension headers.
    ///
    /// ```
    /// use duplex_proto::handshake::{
    ///     validate_extended_connect, Accept, ClientHandshake, ClientRequest, ServerHandshake,
    /// };
    /// use duplex_proto::Config;
    /// let mut request = ClientRequest::new("ws://example.com/".parse()?, [1; 16]);
    /// request.protocols.push("chat".into());
    /// let client = ClientHandshake::new(request, Config::default());
    /// let connect = client.extended_connect_request();
    ///
    /// let offer = validate_extended_connect(&connect, Some("websocket"))?;
    /// let config = Config::default();
    /// let upgrade = ServerHandshake::new(&config).decide(&offer, Ok(Accept::with_protocol("chat")))?;
    /// let response = upgrade.response();
    /// assert_eq!(response.status(), 200);
    ///
    /// let connected = client.finish_extended_connect(&response)?;
    /// assert_eq!(connected.protocol.as_deref(), Some("chat"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish_extended_connect(
        &self,
        response: &Response<()>,
    ) -> Result<Connected, HandshakeError> {
        if !response.status().is_success() {
            return Err(HandshakeError::UnexpectedStatus(response.status()));
        }
        let accepted = agreement(&self.request, response.headers())?;
        self.open(accepted)
    }

    /// The client connection for what the server agreed to, with permessage-deflate turned on
    /// if it accepted the offer within its parameters.
    fn open(&self, accepted: Accepted) -> Result<Connected, HandshakeError> {
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
