//! Server side: the opening handshake on an accepted stream (RFC 6455 section 4.2). The
//! decision (validation, subprotocol, permessage-deflate, the refusal and its status) is
//! [`duplex_proto::handshake::ServerHandshake`]'s; this module only reads the request head
//! under the size limit and the timeout, writes the answer, and lingers after a refusal.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use duplex_proto::Config;
use duplex_proto::handshake::{
    ClientOffer, DEFAULT_MAX_HANDSHAKE_SIZE, HandshakeError, REFUSAL_DRAIN_LIMIT, REFUSAL_LINGER,
    Refused, ServerHandshake, Upgrade, parse_request, validate_request,
};
use http::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::core::WebSocketOptions;
use crate::error::{Error, Timeout};
use crate::websocket::WebSocket;

pub use duplex_proto::handshake::{Accept, Reject};

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

impl ServerOptions {
    /// What the handshake accepts: these options' `Config` and deflate parameters.
    pub(crate) fn handshake(&self) -> ServerHandshake<'_> {
        let handshake = ServerHandshake::new(&self.config);
        #[cfg(feature = "deflate")]
        let handshake = handshake.deflate(self.deflate.as_ref());
        handshake
    }

    /// Checks the settings once, before a request is read.
    fn validate(&self) -> Result<(), Error> {
        self.config.validate()?;
        #[cfg(feature = "deflate")]
        if let Some(deflate) = &self.deflate {
            deflate.validate()?;
        }
        Ok(())
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
/// it; an [`Accept`] naming a subprotocol the client did not offer is answered with 500
/// ([`HandshakeError::ProtocolNotOffered`]). After any refusal the write side is shut, what
/// the client still sends is drained within [`REFUSAL_LINGER`] and [`REFUSAL_DRAIN_LIMIT`],
/// and the error returned: [`Error::Handshake`], with [`HandshakeError::Refused`] for the
/// callback's refusals. The decisions are [`ServerHandshake::decide`]'s.
///
/// The whole handshake is bounded by [`ServerOptions::handshake_timeout`]
/// ([`Error::Timeout`]); an invalid `config` or `deflate` fails with [`Error::Config`] before
/// anything is read.
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
    options.validate()?;
    let deadline = Instant::now() + options.handshake_timeout;
    // Boxed so that the handshake's state (buffers, parsed request) is freed once it is done,
    // rather than sized into the future of every connection for its whole life.
    let handshake = Box::pin(server_handshake(&mut stream, &options, callback));
    let (leftover, upgrade) = match timeout_at(deadline, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(Failed::Refused(refused))) => {
            // Bounded by the deadline too: a client that does not read must not hold the task.
            let _ = timeout_at(deadline, refuse(&mut stream, &refused.encode_http11())).await;
            return Err(Error::Handshake(refused.into_error()));
        }
        Ok(Err(Failed::Io(error))) => return Err(error),
        // Dropping the stream closes the socket.
        Err(_) => return Err(Error::Timeout(Timeout::Handshake)),
    };
    let Upgrade {
        connection,
        protocol,
        ..
    } = upgrade;
    Ok(WebSocket::from_connection(
        stream,
        connection,
        options.websocket,
        leftover,
        protocol,
    ))
}

/// A failed handshake: refused with an HTTP answer, or broken off (I/O, end of stream).
enum Failed {
    Refused(Refused),
    Io(Error),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Io(Error::Io(e))
    }
}

impl From<HandshakeError> for Failed {
    fn from(e: HandshakeError) -> Self {
        Failed::Refused(e.into())
    }
}

impl From<Refused> for Failed {
    fn from(refused: Refused) -> Self {
        Failed::Refused(refused)
    }
}

/// Reads the request, lets `callback` choose, writes the 101; returns the bytes read past the
/// head and the upgrade.
async fn server_handshake<S, F>(
    stream: &mut S,
    options: &ServerOptions,
    callback: F,
) -> Result<(BytesMut, Upgrade), Failed>
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
            return Err(Failed::Io(Error::eof(
                "connection closed during the opening handshake",
            )));
        }
    };
    let offer = validate_request(&request)?;
    let choice = callback(&request, &offer);
    let upgrade = options.handshake().decide(&offer, choice)?;
    stream.write_all(&upgrade.encode_http11()).await?;
    stream.flush().await?;
    tracing::debug!(path = %request.uri().path(), protocol = ?upgrade.protocol, "websocket accepted");
    buf.advance(consumed);
    Ok((buf, upgrade))
}

/// Writes a refusal, shuts the write side, and drains what the client still sends within
/// the handshake module's bounds ([`REFUSAL_LINGER`], [`REFUSAL_DRAIN_LIMIT`]), so closing
/// does not reset the connection before the client read the answer.
async fn refuse<S>(stream: &mut S, response: &[u8]) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(response).await?;
    stream.flush().await?;
    stream.shutdown().await?;
    let linger = Instant::now() + REFUSAL_LINGER;
    // On the heap: an array here would sit in every connection's future for its whole life.
    let mut sink = vec![0u8; 4096];
    let mut drained = 0usize;
    while drained < REFUSAL_DRAIN_LIMIT {
        match timeout_at(linger, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}
