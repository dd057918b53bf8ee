//! Client side: TCP (and TLS) connect and the opening handshake (RFC 6455 section 4.1). The
//! request and the checks of the answer are [`duplex_proto::handshake::ClientHandshake`]'s;
//! this module connects, writes the request, reads the response head under the size limit and
//! the timeout, and reads a refusal's body for the error message.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use duplex_proto::Config;
use duplex_proto::handshake::{
    ClientHandshake, ClientRequest, Connected, DEFAULT_MAX_HANDSHAKE_SIZE, WsUrl, parse_response,
};
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::core::WebSocketOptions;
use crate::error::{Error, Timeout};
use crate::proxy::ProxyChoice;
use crate::stream::MaybeTlsStream;
use crate::websocket::WebSocket;

/// Client settings.
///
/// ```
/// let options = duplex::ClientOptions {
///     protocols: vec!["chat.v2".into()],
///     ..Default::default()
/// };
/// assert!(options.deflate.is_some());
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra request headers (`Authorization`, `Origin`, cookies...).
    pub headers: HeaderMap,
    /// Subprotocols to offer, in order of preference (`Sec-WebSocket-Protocol`).
    pub protocols: Vec<String>,
    /// permessage-deflate (RFC 7692) to offer, `None` to offer no compression. Default: offered
    /// with [`DeflateConfig::default`](duplex_proto::extensions::deflate::DeflateConfig).
    #[cfg(feature = "deflate")]
    pub deflate: Option<duplex_proto::extensions::deflate::DeflateConfig>,
    /// Protocol limits of the connection.
    pub config: Config,
    /// Timers and buffers of the connection.
    pub websocket: WebSocketOptions,
    /// The proxy to connect through. Default [`ProxyChoice::FromEnv`]: the one the
    /// `*_PROXY` variables name, if any (see [`proxy`](crate::proxy)).
    pub proxy: ProxyChoice,
    /// Bound on the TCP connect (through a proxy: the connect to it, and the tunnel).
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on the TLS and HTTP handshakes together. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest response head accepted. Default [`DEFAULT_MAX_HANDSHAKE_SIZE`] (16 KiB).
    pub max_handshake_size: usize,
    /// Disable Nagle's algorithm (frames go out as written). Default true.
    pub nodelay: bool,
    /// Trust anchors for `wss://`. Default: the compiled-in Mozilla roots.
    #[cfg(feature = "tls")]
    pub tls: crate::tls::ClientTls,
    /// Try HTTP/2 first (RFC 8441: h2c by prior knowledge for `ws://`, ALPN `h2` for
    /// `wss://`), falling back to HTTP/1.1 when the server does not allow it. Honoured by
    /// [`connect_auto`](crate::connect_auto), whose stream can be either;
    /// [`connect_with`] returns a socket of its own and always speaks HTTP/1.1. Default false.
    #[cfg(feature = "http2")]
    pub http2: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            headers: HeaderMap::new(),
            protocols: Vec::new(),
            #[cfg(feature = "deflate")]
            deflate: Some(Default::default()),
            config: Config::default(),
            websocket: WebSocketOptions::default(),
            proxy: ProxyChoice::FromEnv,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_handshake_size: DEFAULT_MAX_HANDSHAKE_SIZE,
            nodelay: true,
            #[cfg(feature = "tls")]
            tls: crate::tls::ClientTls::default(),
            #[cfg(feature = "http2")]
            http2: false,
        }
    }
}

/// What the server answered to the upgrade.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status: `101 Switching Protocols`.
    pub status: StatusCode,
    /// The subprotocol the server chose, one of [`ClientOptions::protocols`].
    pub protocol: Option<String>,
    /// The extensions the server accepted (`Sec-WebSocket-Extensions`).
    pub extensions: Option<String>,
    /// Every response header.
    pub headers: HeaderMap,
}

/// Connects to a `ws://` or `wss://` URL with the default [`ClientOptions`].
///
/// ```no_run
/// # async fn run() -> Result<(), duplex::Error> {
/// let (mut ws, response) = duplex::connect("ws://127.0.0.1:9001/echo?room=1").await?;
/// println!("subprotocol: {:?}", response.protocol);
/// ws.send(duplex::Message::text("hi")).await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, Response), Error> {
    connect_with(url, ClientOptions::default()).await
}

/// Connects to a `ws://` or `wss://` URL (`http(s)://` are taken as `ws(s)://`).
///
/// Errors: [`Error::Handshake`] for a bad URL or a bad 101 response, [`Error::Rejected`] when
/// the server answers with another status (with the response body as reason),
/// [`Error::Timeout`] ([`Timeout::Connect`] / [`Timeout::Handshake`]), [`Error::Tls`] for
/// certificate problems, [`Error::Proxy`] when the proxy ([`ClientOptions::proxy`]) could not
/// be used, [`Error::Io`].
///
/// ```no_run
/// # async fn run() -> Result<(), duplex::Error> {
/// use duplex::ClientOptions;
/// let mut options = ClientOptions {
///     protocols: vec!["chat.v2".into()],
///     ..Default::default()
/// };
/// options.headers.insert("authorization", "Bearer abc".parse().unwrap());
/// let (ws, response) = duplex::connect_with("wss://example.com/chat", options).await?;
/// # drop((ws, response)); Ok(()) }
/// ```
pub async fn connect_with(
    url: &str,
    options: ClientOptions,
) -> Result<(WebSocket<MaybeTlsStream>, Response), Error> {
    let url: WsUrl = url.parse()?;
    options.config.validate()?;

    let tcp = crate::proxy::connect_tcp(
        &url.host,
        url.port,
        url.tls,
        &options.proxy,
        options.connect_timeout,
    )
    .await?;
    if options.nodelay {
        tcp.set_nodelay(true)?;
    }

    let deadline = Instant::now() + options.handshake_timeout;
    let stream = if url.tls {
        #[cfg(feature = "tls")]
        {
            match timeout_at(deadline, crate::tls::connect(&options.tls, &url.host, tcp)).await {
                Ok(stream) => stream?,
                Err(_) => return Err(Error::Timeout(Timeout::Handshake)),
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            drop(tcp);
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "wss:// needs the `tls` feature of duplex",
            )));
        }
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    handshake_until(stream, url, options, deadline).await
}

/// Runs the client opening handshake on an already connected `stream` (through a proxy, a
/// Unix socket, an in-memory pipe...). `url` gives the `Host` header and the resource; its
/// scheme is not acted upon (TLS, if any, is the stream's business). Bounded by
/// [`ClientOptions::handshake_timeout`]; `connect_timeout`, `nodelay` and `tls` are not used.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), duplex::Error> {
/// let (client_io, server_io) = tokio::io::duplex(4096);
/// let server = tokio::spawn(duplex::accept(server_io));
/// let (ws, response) =
///     duplex::client_handshake(client_io, "ws://localhost/", Default::default()).await?;
/// assert_eq!(response.status, 101);
/// # drop((ws, server)); Ok(()) }
/// ```
pub async fn client_handshake<S>(
    stream: S,
    url: &str,
    options: ClientOptions,
) -> Result<(WebSocket<S>, Response), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url: WsUrl = url.parse()?;
    options.config.validate()?;
    let deadline = Instant::now() + options.handshake_timeout;
    handshake_until(stream, url, options, deadline).await
}

pub(crate) async fn handshake_until<S>(
    mut stream: S,
    url: WsUrl,
    options: ClientOptions,
    deadline: Instant,
) -> Result<(WebSocket<S>, Response), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = ClientRequest::new(url, crate::rng::handshake_key()?);
    request.protocols = options.protocols;
    request.headers = options.headers;
    #[cfg_attr(
        not(feature = "deflate"),
        allow(unused_mut, reason = "only deflate configures it after it is built")
    )]
    let mut handshake = ClientHandshake::new(request, options.config);
    #[cfg(feature = "deflate")]
    if let Some(deflate) = options.deflate {
        handshake.offer_deflate(deflate)?;
    }

    let exchange = exchange(&mut stream, &handshake, options.max_handshake_size);
    let (response, leftover) = match timeout_at(deadline, exchange).await {
        Ok(done) => done?,
        Err(_) => return Err(Error::Timeout(Timeout::Handshake)),
    };
    let Connected {
        connection,
        protocol,
        extensions,
        ..
    } = handshake.finish(&response)?;
    tracing::debug!(url = %handshake.request().url, ?protocol, "websocket connected");

    let ws = WebSocket::from_connection(
        stream,
        connection,
        options.websocket,
        leftover,
        protocol.clone(),
    );
    let (parts, ()) = response.into_parts();
    let response = Response {
        status: parts.status,
        protocol,
        extensions,
        headers: parts.headers,
    };
    Ok((ws, response))
}

/// Writes the request and reads the response head; returns it with the bytes read past it (the
/// start of the WebSocket stream, never dropped). A non-101 answer becomes
/// [`Error::Rejected`] with its body.
async fn exchange<S>(
    stream: &mut S,
    handshake: &ClientHandshake,
    max_size: usize,
) -> Result<(http::Response<()>, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&handshake.encode()).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(1024);
    let (response, consumed) = loop {
        if let Some(parsed) = parse_response(&buf, max_size)? {
            break parsed;
        }
        let room = (max_size + 1).saturating_sub(buf.len()).max(1);
        buf.reserve(room.min(4096));
        if stream.read_buf(&mut (&mut buf).limit(room)).await? == 0 {
            return Err(Error::eof("connection closed during the opening handshake"));
        }
    };
    buf.advance(consumed);

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let reason = read_body(stream, &response, buf).await;
        return Err(Error::Rejected {
            status: response.status(),
            reason,
        });
    }
    Ok((response, buf))
}

/// The body of a refusal, for the error message: at most 4 KiB, as far as `Content-Length`
/// says or the server sends before closing.
async fn read_body<S>(stream: &mut S, response: &http::Response<()>, mut body: BytesMut) -> String
where
    S: AsyncRead + Unpin,
{
    const MAX_BODY: usize = 4096;
    let length = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    while body.len() < length {
        let room = length - body.len();
        match stream.read_buf(&mut (&mut body).limit(room)).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    body.truncate(length);
    String::from_utf8_lossy(&body).trim().to_owned()
}
