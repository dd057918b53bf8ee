//! The WebSocket that starts once hyper has upgraded the connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use duplex_proto::Connection;
use duplex_proto::handshake::Upgrade;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::core::WebSocketOptions;
use crate::error::Error;
use crate::websocket::WebSocket;

/// A WebSocket over a connection hyper upgraded: the whole TCP (or TLS) connection after an
/// HTTP/1.1 `101`, or one HTTP/2 stream after a `200` to an extended CONNECT.
pub type UpgradedWebSocket = WebSocket<TokioIo<Upgraded>>;

/// An accepted upgrade whose response has not been sent yet: a future that resolves to the
/// [`UpgradedWebSocket`] once hyper sent it and handed over the connection.
///
/// Await it in a task of its own: it can only complete after the service returned the
/// response to hyper. It fails with [`Error::Io`] if hyper could not upgrade (the client
/// closed the connection first, or the request did not come through a hyper server with
/// upgrades enabled, see [`builder`](super::builder)).
#[must_use = "the WebSocket only exists once this future is awaited"]
#[derive(Debug)]
pub struct PendingWebSocket {
    on_upgrade: OnUpgrade,
    /// Taken when the upgrade completes.
    ready: Option<(Connection, Option<String>, WebSocketOptions)>,
}

impl PendingWebSocket {
    pub(super) fn new(on_upgrade: OnUpgrade, upgrade: Upgrade, options: WebSocketOptions) -> Self {
        let Upgrade {
            connection,
            protocol,
            ..
        } = upgrade;
        PendingWebSocket {
            on_upgrade,
            ready: Some((connection, protocol, options)),
        }
    }

    /// The subprotocol agreed on.
    pub fn protocol(&self) -> Option<&str> {
        self.ready.as_ref().and_then(|(_, p, _)| p.as_deref())
    }
}

impl Future for PendingWebSocket {
    type Output = Result<UpgradedWebSocket, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let upgraded = ready!(Pin::new(&mut this.on_upgrade).poll(cx))
            .map_err(|e| Error::Io(std::io::Error::other(e)));
        let Some((connection, protocol, options)) = this.ready.take() else {
            return Poll::Ready(Err(Error::ConnectionClosed));
        };
        // hyper's Upgraded replays whatever it had read past the request itself, so no
        // leftover bytes are handed to the connection here.
        Poll::Ready(upgraded.map(|io| {
            WebSocket::from_connection(
                TokioIo::new(io),
                connection,
                options,
                BytesMut::new(),
                protocol,
            )
        }))
    }
}
