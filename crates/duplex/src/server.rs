//! Server side: the opening handshake on an accepted stream (RFC 6455 section 4.2), driven by
//! the sans-IO functions of [`duplex_proto::handshake`].

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use duplex_proto::handshake::{
    ClientOffer, DEFAULT_MAX_HANDSHAKE_SIZE, HandshakeError, accept_response, parse_request,
    reject_response, validate_request,
};
use duplex_proto::{Config, Role};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::core::WebSocketOptions;
use crate::error::{Error, Timeout};
use crate::websocket::WebSocket;

/// Server settings.
///
/// ```
/// use std::time::Duration;
/// let options = duplex::ServerOptions {
///     handshake_timeout: Duration::from_secs(5),
///     ..Default::default()
/// };
/// assert_eq!(options.max_handshake_size, 16 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Protocol limits of the connection.
    pub config: Config,
    /// Timers and buffers of the connection.
    pub websocket: WebSocketOptions,
    /// How long the client has to send a complete request head, so a half-sent request cannot
    /// hold a connection. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request head accepted; larger gets 431. Default
    /// [`DEFAULT_MAX_HANDSHAKE_SIZE`] (16 KiB).
    pub max_handshake_size: usize,
    /// permessage-deflate (RFC 7692) to accept when a client offers it, `None` to refuse
    /// compression. Default: accepted with
    /// [`DeflateConfig::default`](duplex_proto::extensions::deflate::DeflateConfig). zlib state
    /// is allocated on a connection's first compressed message, not at the handshake.
    #[cfg(feature = "deflate")]
    pub deflate: Option<duplex_proto::extensions::deflate::DeflateConfig>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            config: Config::default(),
            websocket: WebSocketOptions::default(),
            handshake_timeout: Duration::from_secs(10),
            max_handshake_size: DEFAULT_MAX_HANDSHAKE_SIZE,
            #[cfg(feature = "deflate")]
            deflate: Some(Default::default()),
        }
    }
}

/// The application accepts the upgrade.
///
/// ```
/// let accept = duplex::Accept::with_protocol("chat.v2");
/// assert_eq!(accept.protocol.as_deref(), Some("chat.v2"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Accept {
    /// The subprotocol chosen, which must be one the client offered
    /// ([`ClientOffer::select_protocol`] picks one), or `None`.
    pub protocol: Option<String>,
    /// Extra headers for the 101 response (cookies...).
    pub headers: HeaderMap,
}

impl Accept {
    /// Accepts with the subprotocol `protocol`.
    pub fn with_protocol(protocol: impl Into<String>) -> Self {
        Accept {
            protocol: Some(protocol.into()),
            headers: HeaderMap::new(),
        }
    }
}

/// The application refuses the upgrade: answered with `status` and `reason` as a text body.
///
/// ```
/// use http::{StatusCode, HeaderValue, header::WWW_AUTHENTICATE};
/// let reject = duplex::Reject::new(StatusCode::UNAUTHORIZED, "token required")
///     .header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
/// assert_eq!(reject.status, 401);
/// ```
#[derive(Debug, Clone)]
pub struct Reject {
    /// The HTTP status (4xx or 5xx).
    pub status: StatusCode,
    /// A short sentence, sent as the body.
    pub reason: String,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`...). A list rather than a
    /// `HeaderMap` to keep the `Err` side of the callback's result small.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reject {
    /// A refusal with `status` and `reason`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Reject {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Accepts a WebSocket connection on `stream` with the default [`ServerOptions`], accepting
/// every valid upgrade request without a subprotocol.
///
/// ```no_run
/// # async fn run() -> Result<(), duplex::Error> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// let (tcp, _) = listener.accept().await?;
/// let mut ws = duplex::accept(tcp).await?;
/// while let Some(message) = ws.recv().await {
///     ws.send(message?).await?;
/// }
/// # Ok(()) }
/// ```
pub async fn accept<S>(stream: S) -> Result<WebSocket<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with(stream, ServerOptions::default(), |_, _| {
        Ok(Accept::default())
    })
    .await
}

/// Accepts a WebSocket connection on `stream`, letting `callback` decide.
///
/// The callback sees the request (method, path and query in [`Request::uri`], every header)
/// and what it offers (key, subprotocols, extensions, `Origin`), and answers with an
/// [`Accept`] or a [`Reject`]. A malformed or non-WebSocket request is answered with the
/// matching error status (400, 405, 426 with `Sec-WebSocket-Version: 13`, 431) without calling
/// it. After any refusal the socket is shut and the error returned:
/// [`Error::Handshake`], with [`HandshakeError::Refused`] for the callback's refusals.
///
/// The whole handshake is bounded by [`ServerOptions::handshake_timeout`]
/// ([`Error::Timeout`]).
///
/// ```no_run
/// # async fn run(tcp: tokio::net::TcpStream) -> Result<(), duplex::Error> {
/// use duplex::{Accept, Reject, ServerOptions};
/// let ws = duplex::accept_with(tcp, ServerOptions::default(), |request, offer| {
///     if request.uri().path() != "/chat" {
///         return Err(Reject::new(http::StatusCode::NOT_FOUND, "no such endpoint"));
///     }
///     Ok(Accept {
///         protocol: offer.select_protocol(&["chat.v2", "chat.v1"]).map(str::to_owned),
///         ..Accept::default()
///     })
/// })
/// .await?;
/// # drop(ws); Ok(()) }
/// ```
pub async fn accept_with<S, F>(
    mut stream: S,
    options: ServerOptions,
    callback: F,
) -> Result<WebSocket<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request<()>, &ClientOffer) -> Result<Accept, Reject>,
{
    options.config.validate()?;
    let deadline = Instant::now() + options.handshake_timeout;
    // Boxed so that the handshake's state (buffers, parsed request) is freed once it is done,
    // rather than sized into the future of every connection for its whole life.
    let handshake = Box::pin(server_handshake(&mut stream, &options, callback));
    let (leftover, protocol, negotiated) = match timeout_at(deadline, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(Refusal { error, response })) => {
            if let Some(response) = response {
                // Bounded too: a client that does not read must not hold the task.
                let _ = timeout_at(deadline, refuse(&mut stream, &response)).await;
            }
            return Err(error);
        }
        // Dropping the stream closes the socket.
        Err(_) => return Err(Error::Timeout(Timeout::Handshake)),
    };
    let ws = WebSocket::from_raw(
        stream,
        Role::Server,
        options.config,
        options.websocket,
        leftover,
        protocol,
    );
    #[cfg(feature = "deflate")]
    let ws = match negotiated {
        Some(negotiated) => ws.with_deflate(negotiated),
        None => ws,
    };
    #[cfg(not(feature = "deflate"))]
    let () = negotiated.unwrap_or(());
    Ok(ws)
}

#[cfg(feature = "deflate")]
pub(crate) type Negotiated = duplex_proto::extensions::deflate::Negotiated;
#[cfg(not(feature = "deflate"))]
pub(crate) type Negotiated = ();

/// The permessage-deflate parameters a server accepts, if any.
#[cfg(feature = "deflate")]
pub(crate) type DeflateAccepted<'a> = Option<&'a duplex_proto::extensions::deflate::DeflateConfig>;
#[cfg(not(feature = "deflate"))]
pub(crate) type DeflateAccepted<'a> = Option<&'a ()>;

impl ServerOptions {
    fn deflate_accepted(&self) -> DeflateAccepted<'_> {
        #[cfg(feature = "deflate")]
        return self.deflate.as_ref();
        #[cfg(not(feature = "deflate"))]
        None
    }
}

/// The extensions to agree to: permessage-deflate if the client offered an acceptable one
/// (RFC 7692 section 5.1: the first acceptable offer wins), with the response header value.
/// A malformed offer declines compression rather than the connection.
fn negotiate_extensions(
    deflate: DeflateAccepted<'_>,
    offer: &ClientOffer,
) -> (Option<Negotiated>, Option<String>) {
    #[cfg(feature = "deflate")]
    if let (Some(config), Some(header)) = (deflate, &offer.extensions) {
        let offers = match duplex_proto::extensions::parse(header) {
            Ok(offers) => offers,
            Err(e) => {
                tracing::debug!("ignoring malformed Sec-WebSocket-Extensions: {e}");
                return (None, None);
            }
        };
        return match duplex_proto::extensions::deflate::server_negotiate(&offers, config) {
            Ok(Some((negotiated, answer))) => (Some(negotiated), Some(answer)),
            Ok(None) => (None, None),
            Err(e) => {
                tracing::warn!("permessage-deflate configuration: {e}");
                (None, None)
            }
        };
    }
    let _ = (deflate, offer);
    (None, None)
}

/// A failed handshake: the error for the caller and the HTTP answer for the client, if any.
pub(crate) struct Refusal {
    pub(crate) error: Error,
    pub(crate) response: Option<Vec<u8>>,
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal {
            error: Error::Io(e),
            response: None,
        }
    }
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        Refusal {
            error,
            response: None,
        }
    }
}

impl From<HandshakeError> for Refusal {
    fn from(e: HandshakeError) -> Self {
        Refusal {
            response: Some(e.response()),
            error: Error::Handshake(e),
        }
    }
}

/// Reads and answers the request; returns the bytes read past the head and the subprotocol.
async fn server_handshake<S, F>(
    stream: &mut S,
    options: &ServerOptions,
    callback: F,
) -> Result<(BytesMut, Option<String>, Option<Negotiated>), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request<()>, &ClientOffer) -> Result<Accept, Reject>,
{
    let max_size = options.max_handshake_size;
    let mut buf = BytesMut::with_capacity(1024);
    let (request, consumed) = loop {
        if let Some(parsed) = parse_request(&buf, max_size)? {
            break parsed;
        }
        // One byte past the limit is enough for parse_request to report it.
        let room = (max_size + 1).saturating_sub(buf.len()).max(1);
        buf.reserve(room.min(4096));
        if stream.read_buf(&mut (&mut buf).limit(room)).await? == 0 {
            return Err(Error::eof("connection closed during the opening handshake").into());
        }
    };
    let Upgrade {
        response,
        protocol,
        negotiated,
    } = answer(&request, options.deflate_accepted(), callback)?;
    stream.write_all(&response).await?;
    stream.flush().await?;
    buf.advance(consumed);
    Ok((buf, protocol, negotiated))
}

/// What to answer a parsed upgrade request with, for every server runtime: validates it, asks
/// the application, checks the subprotocol it chose, negotiates extensions, builds the 101.
pub(crate) fn answer<F>(
    request: &Request<()>,
    deflate: DeflateAccepted<'_>,
    callback: F,
) -> Result<Upgrade, Refusal>
where
    F: FnOnce(&Request<()>, &ClientOffer) -> Result<Accept, Reject>,
{
    let offer = validate_request(request)?;
    let accept = match callback(request, &offer) {
        Ok(accept) => accept,
        Err(reject) => {
            let headers: HeaderMap = reject.headers.into_iter().collect();
            let response = reject_response(reject.status, &reject.reason, &headers);
            return Err(Refusal {
                error: Error::Handshake(HandshakeError::Refused {
                    status: reject.status,
                    reason: reject.reason,
                }),
                response: Some(response),
            });
        }
    };
    if let Some(protocol) = &accept.protocol {
        if !offer.protocols.contains(protocol) {
            // The application's mistake; the client would fail the connection anyway.
            return Err(HandshakeError::Refused {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                reason: format!("the server chose subprotocol {protocol:?}, which was not offered"),
            }
            .into());
        }
    }
    let (negotiated, extensions) = negotiate_extensions(deflate, &offer);
    let response = accept_response(
        &offer,
        accept.protocol.as_deref(),
        extensions.as_deref(),
        &accept.headers,
    );
    tracing::debug!(path = %request.uri().path(), protocol = ?accept.protocol, "websocket accepted");
    Ok(Upgrade {
        response,
        protocol: accept.protocol,
        negotiated,
    })
}

/// An accepted upgrade: the 101 response to write, the subprotocol, the deflate parameters.
pub(crate) struct Upgrade {
    pub(crate) response: Vec<u8>,
    pub(crate) protocol: Option<String>,
    pub(crate) negotiated: Option<Negotiated>,
}

/// Writes a refusal, shuts the write side, and drains what the client still sends for a
/// moment, so closing does not reset the connection before the client read the answer.
async fn refuse<S>(stream: &mut S, response: &[u8]) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(response).await?;
    stream.flush().await?;
    stream.shutdown().await?;
    let linger = Instant::now() + Duration::from_secs(1);
    // On the heap: an array here would sit in every connection's future for its whole life.
    let mut sink = vec![0u8; 4096];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        match timeout_at(linger, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}
