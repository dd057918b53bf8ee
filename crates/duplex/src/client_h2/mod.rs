//! Client over HTTP/2 (RFC 8441, feature `http2`): WebSockets as extended CONNECT streams of
//! an HTTP/2 connection, and [`connect_auto`], which takes HTTP/2 when asked and the server
//! allows it, else HTTP/1.1.
//!
//! HTTP/2 is tried by prior knowledge (h2c) for `ws://` and by ALPN `h2` for `wss://`. A
//! server allows WebSockets over it by sending `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` (RFC 8441
//! section 3); the client learns the server's settings from its first frame, and to know they
//! have arrived it sends a PING and waits for the answer, which comes after them. Without the
//! setting, or when the server does not speak HTTP/2 at all, [`connect_auto`] falls back to an
//! HTTP/1.1 upgrade on a new connection (or, under TLS, on the same one when ALPN chose
//! `http/1.1`).
//!
//! The handshake itself is duplex-proto's [`ClientHandshake`]
//! ([`extended_connect_request`](ClientHandshake::extended_connect_request) and
//! [`finish_extended_connect`](ClientHandshake::finish_extended_connect)): same subprotocol
//! and permessage-deflate negotiation as over HTTP/1.1.

mod stream;

use bytes::{Bytes, BytesMut};
use duplex_proto::handshake::{ClientHandshake, ClientRequest, Connected, WsUrl};
use h2::client::SendRequest;
use tokio::time::{Instant, timeout_at};

use self::stream::io_error;
pub use self::stream::{ClientStream, H2Stream};
use crate::client::{ClientOptions, Response, handshake_until};
use crate::error::{Error, Timeout};
use crate::stream::MaybeTlsStream;
use crate::websocket::WebSocket;

/// Connects to a `ws://` or `wss://` URL over HTTP/2 when [`ClientOptions::http2`] is set and
/// the server allows WebSockets over HTTP/2 (RFC 8441), else over HTTP/1.1; the stream says
/// which ([`ClientStream::is_http2`]). Over HTTP/2 the response's status is `200`.
///
/// Each call opens a connection of its own; to open several WebSockets on one HTTP/2
/// connection, as browsers do, use [`Http2Connection`].
///
/// Errors: as [`connect_with`](crate::connect_with). Failing to reach the host (TCP, TLS,
/// certificates) is returned at once; what HTTP/2 lacks (no answer in HTTP/2 to the h2c
/// preface within `handshake_timeout`, no extended CONNECT in the server's settings) leads to
/// the HTTP/1.1 attempt, which has its own `connect_timeout` and `handshake_timeout`.
///
/// ```no_run
/// # async fn run() -> Result<(), duplex::Error> {
/// let options = duplex::ClientOptions { http2: true, ..Default::default() };
/// let (mut ws, response) = duplex::connect_auto("ws://127.0.0.1:9001/", options).await?;
/// println!("over HTTP/2: {}, status {}", ws.get_ref().is_http2(), response.status);
/// ws.send(duplex::Message::text("hi")).await?;
/// # Ok(()) }
/// ```
pub async fn connect_auto(
    url: &str,
    options: ClientOptions,
) -> Result<(WebSocket<ClientStream>, Response), Error> {
    let parsed: WsUrl = url.parse()?;
    options.config.validate()?;
    if options.http2 {
        let deadline = Instant::now() + options.handshake_timeout;
        // Failures to reach the host (TCP, TLS) are returned: a second connection would meet
        // them too. Only what HTTP/2 itself lacks falls back.
        match open(&parsed, &options, deadline).await? {
            Opened::Http2(connection) if connection.supports_websockets() => {
                let websocket = options.websocket.clone();
                let (stream, connected, response) =
                    connection.extended_connect(&parsed, options).await?;
                let ws = into_websocket(ClientStream::Http2(stream), connected, websocket);
                return Ok((ws, response));
            }
            Opened::Http2(_) => {
                tracing::debug!(%parsed, "no extended CONNECT on this HTTP/2 server: HTTP/1.1");
            }
            Opened::Http1(stream) => {
                return handshake_until(ClientStream::Http1(stream), parsed, options, deadline)
                    .await;
            }
            Opened::NoHttp2(error) => {
                tracing::debug!(%parsed, %error, "no HTTP/2 (h2c) on this server: HTTP/1.1");
            }
        }
    }
    let deadline = Instant::now() + options.handshake_timeout;
    let stream = dial(&parsed, &options, &[], deadline).await?;
    handshake_until(ClientStream::Http1(stream), parsed, options, deadline).await
}

/// An HTTP/2 client connection that carries WebSockets as extended CONNECT streams (RFC
/// 8441): many WebSockets on one TCP (or TLS) connection, each with its own flow control.
/// Cloning gives another handle to the same connection; it closes once every handle and
/// every WebSocket on it is dropped.
///
/// ```no_run
/// # async fn run() -> Result<(), duplex::Error> {
/// use duplex::{ClientOptions, Http2Connection};
/// let connection = Http2Connection::connect("ws://127.0.0.1:9001/", &ClientOptions::default()).await?;
/// assert!(connection.supports_websockets());
/// let (mut chat, _) = connection.websocket("ws://127.0.0.1:9001/chat", ClientOptions::default()).await?;
/// let (mut feed, _) = connection.websocket("ws://127.0.0.1:9001/feed", ClientOptions::default()).await?;
/// # drop((chat, feed)); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Http2Connection {
    send_request: SendRequest<Bytes>,
}

/// The receive window of each WebSocket's stream: 1 MiB unread per WebSocket at most.
const STREAM_WINDOW: u32 = 1 << 20;

/// The receive window of the connection: 16 streams' worth, so that one WebSocket the
/// application stopped reading cannot hold back the others (h2's default gives the
/// connection the same 64 KiB as one stream).
const CONNECTION_WINDOW: u32 = 16 << 20;

/// What [`open`] reached.
enum Opened {
    /// An HTTP/2 connection whose settings are known.
    Http2(Http2Connection),
    /// TLS where ALPN chose `http/1.1` (or nothing): the stream for an HTTP/1.1 upgrade.
    Http1(MaybeTlsStream),
    /// The server did not answer the h2c preface with HTTP/2 in time: why.
    NoHttp2(Error),
}

impl Http2Connection {
    /// Opens an HTTP/2 connection to the host of `url`: prior knowledge (h2c) for `ws://`,
    /// ALPN `h2` for `wss://`, and waits for the server's settings. `options` gives the
    /// timeouts, `nodelay` and the TLS roots.
    ///
    /// # Errors
    /// As [`connect_with`](crate::connect_with), and [`Error::Io`] if the server does not speak
    /// HTTP/2 (ALPN chose something else, or the h2c preface was not answered with HTTP/2).
    /// A server that speaks HTTP/2 without allowing WebSockets is not an error here: see
    /// [`supports_websockets`](Self::supports_websockets).
    pub async fn connect(url: &str, options: &ClientOptions) -> Result<Http2Connection, Error> {
        let url: WsUrl = url.parse()?;
        let deadline = Instant::now() + options.handshake_timeout;
        match open(&url, options, deadline).await? {
            Opened::Http2(connection) => Ok(connection),
            Opened::Http1(_) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the server chose HTTP/1.1 by ALPN",
            ))),
            Opened::NoHttp2(error) => Err(error),
        }
    }

    /// Whether the server sent `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` (RFC 8441 section 3):
    /// without it, [`websocket`](Self::websocket) is refused.
    pub fn supports_websockets(&self) -> bool {
        self.send_request.is_extended_connect_protocol_enabled()
    }

    /// Opens a WebSocket to `url` (same server: the scheme and authority go in the request,
    /// the connection is this one) on a new stream. `options` gives the subprotocols, headers,
    /// permessage-deflate offer, connection settings and `handshake_timeout`; its transport
    /// settings are not used.
    ///
    /// # Errors
    /// [`Error::Rejected`] with the status and body when the server answers other than `2xx`,
    /// [`Error::Handshake`] for a bad answer or URL, [`Error::Timeout`], and [`Error::Io`] when
    /// the server did not allow extended CONNECT or the connection failed.
    pub async fn websocket(
        &self,
        url: &str,
        options: ClientOptions,
    ) -> Result<(WebSocket<H2Stream>, Response), Error> {
        let url: WsUrl = url.parse()?;
        options.config.validate()?;
        let websocket = options.websocket.clone();
        let (stream, connected, response) = self.extended_connect(&url, options).await?;
        Ok((into_websocket(stream, connected, websocket), response))
    }

    /// The handshake on a new stream: request, answer, checks.
    async fn extended_connect(
        &self,
        url: &WsUrl,
        options: ClientOptions,
    ) -> Result<(H2Stream, Connected, Response), Error> {
        if !self.supports_websockets() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the HTTP/2 server did not enable extended CONNECT (RFC 8441)",
            )));
        }
        // The key is not sent over HTTP/2; ClientRequest wants one all the same.
        let mut request = ClientRequest::new(url.clone(), [0; 16]);
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
        let mut connect = handshake.extended_connect_request();
        connect
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));

        let deadline = Instant::now() + options.handshake_timeout;
        let exchange = async {
            let mut send_request = self.send_request.clone().ready().await.map_err(io_error)?;
            let (response, send) = send_request
                .send_request(connect, false)
                .map_err(io_error)?;
            let response = response.await.map_err(io_error)?;
            Ok::<_, std::io::Error>((response, send))
        };
        let (response, send) = match timeout_at(deadline, exchange).await {
            Ok(done) => done?,
            Err(_) => return Err(Error::Timeout(Timeout::Handshake)),
        };
        let (parts, mut recv) = response.into_parts();
        let head = http::Response::from_parts(parts, ());
        if !head.status().is_success() {
            let reason = timeout_at(deadline, read_body(&mut recv))
                .await
                .unwrap_or_default();
            return Err(Error::Rejected {
                status: head.status(),
                reason,
            });
        }
        let connected = handshake.finish_extended_connect(&head)?;
        tracing::debug!(%url, protocol = ?connected.protocol, "websocket connected over HTTP/2");
        let (parts, ()) = head.into_parts();
        let response = Response {
            status: parts.status,
            protocol: connected.protocol.clone(),
            extensions: connected.extensions.clone(),
            headers: parts.headers,
        };
        Ok((H2Stream::new(send, recv), connected, response))
    }
}

/// The WebSocket over `stream` with the connection the handshake configured.
fn into_websocket<S>(
    stream: S,
    connected: Connected,
    options: crate::WebSocketOptions,
) -> WebSocket<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Connected {
        connection,
        protocol,
        ..
    } = connected;
    WebSocket::from_connection(stream, connection, options, BytesMut::new(), protocol)
}

/// The body of a refusal, for the error message: at most 4 KiB.
async fn read_body(recv: &mut h2::RecvStream) -> String {
    const MAX_BODY: usize = 4096;
    let mut body = Vec::new();
    while body.len() < MAX_BODY {
        match recv.data().await {
            Some(Ok(chunk)) => {
                let _ = recv.flow_control().release_capacity(chunk.len());
                body.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - body.len())]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).trim().to_owned()
}

/// Connects (TCP, and TLS offering ALPN `h2` then `http/1.1`) and, unless ALPN chose
/// `http/1.1`, runs the HTTP/2 handshake and waits for the server's settings. Errors are
/// those of reaching the host; an HTTP/2 handshake that fails is [`Opened::NoHttp2`].
async fn open(url: &WsUrl, options: &ClientOptions, deadline: Instant) -> Result<Opened, Error> {
    let stream = dial(url, options, &[b"h2", b"http/1.1"], deadline).await?;
    if stream.is_tls() && !negotiated_h2(&stream) {
        return Ok(Opened::Http1(stream));
    }
    Ok(match timeout_at(deadline, handshake_h2(stream)).await {
        Ok(Ok(connection)) => Opened::Http2(connection),
        Ok(Err(error)) => Opened::NoHttp2(error),
        Err(_) => Opened::NoHttp2(Error::Timeout(Timeout::Handshake)),
    })
}

/// Whether TLS chose `h2` by ALPN.
fn negotiated_h2(stream: &MaybeTlsStream) -> bool {
    match stream {
        MaybeTlsStream::Plain(_) => false,
        #[cfg(feature = "tls")]
        MaybeTlsStream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
    }
}

/// The HTTP/2 handshake, then a PING: the server's SETTINGS is the first frame it sends
/// (RFC 9113 section 3.4), so once the PING's answer is back the settings, and with them
/// `SETTINGS_ENABLE_CONNECT_PROTOCOL`, are known.
async fn handshake_h2(stream: MaybeTlsStream) -> Result<Http2Connection, Error> {
    let (send_request, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(stream)
        .await
        .map_err(io_error)?;
    let ping_pong = connection.ping_pong();
    // The connection's driver: ends when the connection closes, which it does once every
    // handle and stream is dropped.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP/2 connection failed");
        }
    });
    if let Some(mut ping_pong) = ping_pong {
        ping_pong.ping(h2::Ping::opaque()).await.map_err(io_error)?;
    }
    Ok(Http2Connection { send_request })
}

/// TCP, then TLS for `wss://` offering `alpn` (nothing: the configuration's own).
async fn dial(
    url: &WsUrl,
    options: &ClientOptions,
    alpn: &[&[u8]],
    deadline: Instant,
) -> Result<MaybeTlsStream, Error> {
    // Through the configured proxy, as HTTP/1.1 connections go (a CONNECT or SOCKS5 tunnel
    // carries h2 as well); the connect timeout covers the proxy's part too.
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
    if !url.tls {
        return Ok(MaybeTlsStream::Plain(tcp));
    }
    #[cfg(feature = "tls")]
    {
        use rustls::pki_types::ServerName;
        let mut config = crate::tls::client_config(&options.tls)?;
        if !alpn.is_empty() {
            let mut with_alpn = (*config).clone();
            with_alpn.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            config = std::sync::Arc::new(with_alpn);
        }
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| crate::tls::TlsError::InvalidServerName(url.host.clone()))?;
        let connect = crate::tls::TlsConnector::from(config).connect(name, tcp);
        match timeout_at(deadline, connect).await {
            Ok(stream) => Ok(MaybeTlsStream::from(
                stream.map_err(crate::tls::tls_io_error)?,
            )),
            Err(_) => Err(Error::Timeout(Timeout::Handshake)),
        }
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (alpn, deadline);
        Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "wss:// needs the `tls` feature of duplex",
        )))
    }
}
