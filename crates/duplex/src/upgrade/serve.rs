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
/// Everything else is hyper's defaults, and hyper's h2 applies flow control per stream, so a
/// WebSocket that stops reading holds back only its own stream. Tune it further as any
/// [`Builder`] (`http1()`, `http2()`).
///
/// ```
/// let builder = duplex::upgrade::builder();
/// # drop(builder);
/// ```
pub fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    builder
}
