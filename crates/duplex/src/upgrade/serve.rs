//! The server side of HTTP: a hyper-util auto connection that serves HTTP/1.1 upgrades and
//! RFC 8441 WebSockets on one port.

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;

/// A hyper-util auto connection builder for WebSocket services: HTTP/1.1 and HTTP/2 on one
/// port (HTTP/2 by prior knowledge on plain TCP, h2c, or under TLS when ALPN chose `h2`), with
/// `SETTINGS_ENABLE_CONNECT_PROTOCOL` advertised so HTTP/2 clients may open WebSockets with
/// extended CONNECT (RFC 8441 section 3). Serve each connection with
/// [`serve_connection_with_upgrades`](Builder::serve_connection_with_upgrades), not
/// `serve_connection`: HTTP/1.1 upgrades need it.
///
/// Set `TCP_NODELAY` on the accepted sockets (`tcp.set_nodelay(true)`): over HTTP/2 a message
/// often ends in a small DATA frame, which Nagle's algorithm holds until the peer's delayed
/// ACK, 40 ms on Linux; measured here, a 16 KiB echo took 43 ms instead of 0.1 ms without it.
///
/// hyper's h2 applies flow control per stream: a WebSocket that stops reading holds back its
/// own stream once [`STREAM_WINDOW`] bytes wait unread. The connection's window is
/// [`CONNECTION_WINDOW`], 16 stream windows, so that one stalled WebSocket cannot take all of
/// it and hold back the others (hyper's default makes both 1 MiB). Everything else is
/// hyper's defaults; tune it further as any [`Builder`] (`http1()`, `http2()`).
///
/// ```
/// let builder = duplex::upgrade::builder();
/// # drop(builder);
/// ```
pub fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .enable_connect_protocol()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    builder
}

/// The HTTP/2 receive window of each stream (WebSocket) in [`builder`]: 1 MiB, as hyper's.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// The HTTP/2 receive window of a whole connection in [`builder`]: 16 MiB, room for 16
/// stalled WebSockets before the others wait.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
