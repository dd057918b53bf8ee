//! Validating an upgrade request that hyper parsed, and deciding it.

use std::future::Future;

use duplex_proto::handshake::{
    Accept, ClientOffer, Refused, Reject, validate_extended_connect, validate_request,
};
use http::{Method, Request, Response, Version};
use hyper::upgrade::OnUpgrade;

use super::pending::{PendingWebSocket, UpgradedWebSocket};
use crate::server::ServerOptions;

/// Validates `request` as a WebSocket request, of either kind, into the offer the application
/// decides on:
///
/// - `CONNECT` over HTTP/2 or later: an extended CONNECT (RFC 8441 sections 4 and 5), through
///   [`validate_extended_connect`] with the `:protocol` pseudo-header hyper keeps as
///   [`hyper::ext::Protocol`];
/// - anything else: an HTTP/1.1 upgrade (RFC 6455 section 4.2.1), through
///   [`validate_request`].
///
/// [`WebSocketUpgrade::from_request`] calls it; it is public for services that only want to
/// know whether a request is a WebSocket (to route it) without taking the upgrade.
///
/// ```
/// let request = http::Request::builder()
///     .method("CONNECT")
///     .version(http::Version::HTTP_2)
///     .uri("https://example.com/ws")
///     .header("sec-websocket-version", "13")
///     .extension(hyper::ext::Protocol::from_static("websocket"))
///     .body(())?;
/// assert!(duplex::upgrade::validate(&request)?.extended_connect);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn validate<B>(request: &Request<B>) -> Result<ClientOffer, Refused> {
    if request.method() == Method::CONNECT && request.version() >= Version::HTTP_2 {
        let protocol = request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str);
        Ok(validate_extended_connect(request, protocol)?)
    } else {
        Ok(validate_request(request)?)
    }
}

/// The response for a refused upgrade: its status, the extra headers, and the reason as a
/// plain-text body ([`Refused::response`]), in the body type of the service (axum's `Body`,
/// `http_body_util::Full<Bytes>`, `String`...).
///
/// ```
/// use duplex_proto::handshake::{HandshakeError, Refused};
/// let refused = Refused::from(HandshakeError::MissingHeader("Sec-WebSocket-Key"));
/// let response: http::Response<String> = duplex::upgrade::refusal(&refused);
/// assert_eq!(response.status(), 400);
/// ```
pub fn refusal<B: From<String>>(refused: &Refused) -> Response<B> {
    refused.response().map(B::from)
}

/// A valid WebSocket request, waiting for the application's decision: the offer, the settings
/// of the connection it would open, and hyper's pending upgrade of the request.
///
/// Shaped like axum's own `WebSocketUpgrade` (configure, then
/// [`on_upgrade`](Self::on_upgrade) returns the response and spawns the handler), with
/// [`decide`](Self::decide) underneath for an explicit [`Accept`] or [`Reject`].
#[derive(Debug)]
pub struct WebSocketUpgrade {
    offer: ClientOffer,
    options: ServerOptions,
    protocols: Vec<String>,
    on_upgrade: OnUpgrade,
}

impl WebSocketUpgrade {
    /// Validates `request` ([`validate`]) and takes hyper's pending upgrade out of it
    /// ([`hyper::upgrade::on`]), with the default [`ServerOptions`] (permessage-deflate
    /// accepted).
    ///
    /// # Errors
    /// A [`Refused`] with the status to answer ([`refusal`]): 400 for a malformed request
    /// (missing or bad `Sec-WebSocket-Key` over HTTP/1.1, a `:protocol` other than `websocket`
    /// over HTTP/2), 405 for a method other than `GET` (HTTP/1.1) or `CONNECT` (HTTP/2), 426
    /// for a `Sec-WebSocket-Version` other than 13.
    pub fn from_request<B>(request: &mut Request<B>) -> Result<WebSocketUpgrade, Refused> {
        let offer = validate(request)?;
        Ok(WebSocketUpgrade {
            offer,
            options: ServerOptions::default(),
            protocols: Vec::new(),
            on_upgrade: hyper::upgrade::on(request),
        })
    }

    /// What the client offers: subprotocols, extensions, `Origin`, and whether it came as an
    /// HTTP/2 extended CONNECT.
    pub fn offer(&self) -> &ClientOffer {
        &self.offer
    }

    /// The settings of the connection: its [`Config`](crate::Config), timers
    /// ([`WebSocketOptions`](crate::WebSocketOptions)) and the permessage-deflate parameters
    /// accepted. `handshake_timeout` and `max_handshake_size` are not used: hyper reads the
    /// request.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// The subprotocols this endpoint speaks, in its order of preference: [`on_upgrade`]
    /// answers with the first one the client offered, or none.
    ///
    /// [`on_upgrade`]: Self::on_upgrade
    pub fn protocols<I>(mut self, supported: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.protocols = supported.into_iter().map(Into::into).collect();
        self
    }

    /// The subprotocol [`on_upgrade`](Self::on_upgrade) would select: the first of
    /// [`protocols`](Self::protocols) that the client offered.
    pub fn selected_protocol(&self) -> Option<&str> {
        self.protocols
            .iter()
            .find(|p| self.offer.protocols.contains(p))
            .map(String::as_str)
    }

    /// Decides the upgrade with the application's `choice`, through
    /// [`ServerHandshake::decide`](duplex_proto::handshake::ServerHandshake::decide):
    /// subprotocol check, permessage-deflate negotiation, the answer. On success, return the
    /// response from the service and await the [`PendingWebSocket`] (in a spawned task: it
    /// resolves only after hyper sent the response).
    ///
    /// # Errors
    /// A [`Refused`] with the status to answer ([`refusal`]): the application's [`Reject`], an
    /// invalid [`ServerOptions::config`] (500), or an [`Accept`] with a subprotocol the client
    /// did not offer (500).
    pub fn decide(
        self,
        choice: Result<Accept, Reject>,
    ) -> Result<(Response<()>, PendingWebSocket), Refused> {
        if let Err(error) = self.options.config.validate() {
            return Err(Reject::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("invalid WebSocket configuration: {error}"),
            )
            .into());
        }
        let upgrade = self.options.handshake().decide(&self.offer, choice)?;
        let response = upgrade.response();
        tracing::debug!(
            status = %response.status(),
            protocol = ?upgrade.protocol,
            extended_connect = self.offer.extended_connect,
            "websocket accepted"
        );
        let pending = PendingWebSocket::new(self.on_upgrade, upgrade, self.options.websocket);
        Ok((response, pending))
    }

    /// Accepts with the [selected subprotocol](Self::selected_protocol), spawns
    /// `handler` on the tokio runtime with the WebSocket once hyper upgraded the connection,
    /// and returns the response for the service to send (101, or 200 over HTTP/2).
    ///
    /// If the upgrade fails after the response (the client went away), the handler is not
    /// called. A decision that fails (see [`decide`](Self::decide)) returns its refusal.
    pub fn on_upgrade<F, Fut, B>(self, handler: F) -> Response<B>
    where
        F: FnOnce(UpgradedWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        B: From<String>,
    {
        let accept = Accept {
            protocol: self.selected_protocol().map(str::to_owned),
            ..Accept::default()
        };
        match self.decide(Ok(accept)) {
            Ok((response, pending)) => {
                tokio::spawn(async move {
                    match pending.await {
                        Ok(ws) => handler(ws).await,
                        Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
                    }
                });
                response.map(|()| B::from(String::new()))
            }
            Err(refused) => refusal(&refused),
        }
    }
}
