//! # duplex
//!
//! WebSocket client and server for tokio, driving the sans-IO [`duplex_proto`] core.
//!
//! This crate holds no protocol logic: framing, masking rules, close codes and the opening
//! handshake all live in `duplex_proto`. Every upgrade decision (request validation, the
//! subprotocol check, permessage-deflate negotiation, refusal statuses, the bounds of the
//! linger after a refusal) is `duplex_proto::handshake`'s `ServerHandshake` and
//! `ClientHandshake`; [`Accept`] and [`Reject`] are its types. What this crate adds is I/O:
//! sockets, TLS, timers, and a poll-based driver loop per connection:
//!
//! ```text
//!   socket --read--> BytesMut --Connection::recv--> events --> recv() / Stream
//!   send() / Sink --> Connection::send --> transmits --writev--> socket
//!                     (pongs and close replies are flushed from the read path too)
//! ```
//!
//! - Client: [`connect`] / [`connect_with`] (`ws://` and, with feature `tls`, `wss://`).
//! - Proxies: [`proxy`] (HTTP CONNECT, SOCKS5, the `*_PROXY` variables), chosen by
//!   [`ClientOptions::proxy`].
//! - Server: [`accept`] / [`accept_with`] on any accepted stream; [`tls::acceptor_from_pem`].
//! - Connection: [`WebSocket`] (`Stream` + `Sink`, [`split`](WebSocket::split) into halves),
//!   keepalive and close timers in [`WebSocketOptions`].
//! - With feature `hyper`: `upgrade`, WebSockets inside a hyper or axum
//!   service, over HTTP/1.1 and HTTP/2 (RFC 8441).
//! - With feature `http2`: `connect_auto` and `Http2Connection`, a client over HTTP/2 (RFC
//!   8441) that falls back to HTTP/1.1.
//! - With feature `engine`: `engine`, a callback server without a task per connection (one
//!   epoll loop per thread, the uWebSockets model): the least work per message and per idle
//!   connection, for `ws://` and `wss://` servers. It hands HTTP/2 connections off
//!   (`engine::Handoff`) to a tokio server, which continues them through [`resume`].
//!
//! ```no_run
//! use duplex::{CloseCode, Message};
//!
//! # async fn run() -> Result<(), duplex::Error> {
//! // Server
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let Ok(mut ws) = duplex::accept(tcp).await else { return };
//!             while let Some(Ok(message)) = ws.recv().await {
//!                 if ws.send(message).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! // Client
//! let (mut ws, _response) = duplex::connect("ws://127.0.0.1:9001/").await?;
//! ws.send(Message::text("hello")).await?;
//! assert_eq!(ws.recv().await.transpose()?, Some(Message::text("hello")));
//! ws.close(CloseCode::NORMAL, "done").await?;
//! # Ok(()) }
//! ```

mod client;
#[cfg(feature = "http2")]
mod client_h2;
mod core;
#[cfg(all(feature = "engine", unix))]
pub mod engine;
mod error;
pub mod proxy;
pub mod resume;
mod rng;
mod server;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "hyper")]
pub mod upgrade;
mod websocket;

pub use crate::client::{ClientOptions, Response, client_handshake, connect, connect_with};
#[cfg(feature = "http2")]
pub use crate::client_h2::{ClientStream, H2Stream, Http2Connection, connect_auto};
pub use crate::core::WebSocketOptions;
pub use crate::error::{Error, Timeout};
pub use crate::server::{Accept, Reject, ServerOptions, accept, accept_with};
pub use crate::stream::MaybeTlsStream;
pub use crate::websocket::{ReuniteError, WebSocket, WebSocketReceiver, WebSocketSender};

pub use duplex_proto;
pub use duplex_proto::handshake::ClientOffer;
pub use duplex_proto::{
    CloseCode, CloseFrame, Config, DataKind, Event, Message, PreparedMessage, Role, State,
    Utf8Bytes,
};
