//! WebSockets inside a hyper or axum service (feature `hyper`): the upgrade API on `http`
//! types, over HTTP/1.1 (`Upgrade: websocket`, RFC 6455 section 4.2) and over HTTP/2
//! (extended CONNECT with `:protocol = websocket`, RFC 8441).
//!
//! The HTTP server is the application's (hyper, or axum on hyper); duplex decides the upgrade
//! and drives the WebSocket afterwards. The decision is duplex-proto's one handshake path
//! ([`ServerHandshake::decide`](duplex_proto::handshake::ServerHandshake::decide)), the same
//! one [`accept_with`](crate::accept_with), the engine and the hub take:
//!
//! ```text
//!   Request<B> --WebSocketUpgrade::from_request--> offer (subprotocols, extensions, Origin)
//!              --accept / reject / on_upgrade-----> Response (101, or 200 over HTTP/2)
//!                                                 + PendingWebSocket --hyper upgrades--> WebSocket
//! ```
//!
//! 1. [`WebSocketUpgrade::from_request`] validates the request (method, version,
//!    `Sec-WebSocket-Version: 13`, the key over HTTP/1.1, `:protocol` over HTTP/2) and takes
//!    hyper's pending upgrade out of it. A bad request is a
//!    [`Refused`](duplex_proto::handshake::Refused): answer it with [`refusal`] (400, 405, 426).
//! 2. The application looks at the request and the [offer](WebSocketUpgrade::offer) and either
//!    calls [`on_upgrade`](WebSocketUpgrade::on_upgrade) (the shape of axum's own
//!    `WebSocketUpgrade`: a task is spawned with the socket once hyper upgraded) or
//!    [`decide`](WebSocketUpgrade::decide) with an [`Accept`](crate::Accept) /
//!    [`Reject`](crate::Reject) for full control, which gives the response and a
//!    [`PendingWebSocket`] to await.
//! 3. The service returns the response; hyper sends it and hands the connection (HTTP/1.1) or
//!    the stream (HTTP/2) over; the [`PendingWebSocket`] resolves to an [`UpgradedWebSocket`].
//!
//! Over HTTP/2 many WebSockets share one TCP connection, each on its own stream, and hyper's h2
//! applies flow control to each. A server only gets extended CONNECT requests if it advertises
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`: [`builder`] returns a hyper-util auto server (HTTP/1.1
//! and HTTP/2 on one port, h2c by prior knowledge) that does; `axum::serve` does too.
//!
//! Routes: an HTTP/2 WebSocket arrives with method `CONNECT`, not `GET`, so an axum route for
//! it uses `any(handler)` (or `get(handler).connect(handler)`).
//!
//! ```no_run
//! use duplex::upgrade::{WebSocketUpgrade, refusal};
//! use http_body_util::Full;
//! use hyper::body::{Bytes, Incoming};
//! use hyper::{Request, Response};
//!
//! async fn handle(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
//!     let upgrade = match WebSocketUpgrade::from_request(&mut request) {
//!         Ok(upgrade) => upgrade,
//!         Err(refused) => return Ok(refusal(&refused)),
//!     };
//!     Ok(upgrade.protocols(["chat"]).on_upgrade(|mut ws| async move {
//!         while let Some(Ok(message)) = ws.recv().await {
//!             if ws.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     }))
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     tcp.set_nodelay(true)?; // see `builder`: HTTP/2 frames must not wait for ACKs
//!     tokio::spawn(async move {
//!         let service = hyper::service::service_fn(handle);
//!         let io = hyper_util::rt::TokioIo::new(tcp);
//!         let _ = duplex::upgrade::builder().serve_connection_with_upgrades(io, service).await;
//!     });
//! }
//! # }
//! ```

mod pending;
mod request;
mod serve;

pub use pending::{PendingWebSocket, UpgradedWebSocket};
pub use request::{WebSocketUpgrade, refusal, validate};
pub use serve::{CONNECTION_WINDOW, STREAM_WINDOW, builder};
