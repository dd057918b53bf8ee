//! An axum service that hands `/echo` to duplex: every message comes back as it was.
//!
//! ```text
//! cargo run -p duplex --features hyper --example axum_echo -- 127.0.0.1:9002
//! duplex connect ws://127.0.0.1:9002/echo
//! ```
//!
//! `axum::serve` speaks HTTP/1.1 and HTTP/2 (h2c) on one port and advertises extended CONNECT,
//! so the same route serves HTTP/1.1 upgrades (`GET`) and RFC 8441 WebSockets (`CONNECT`):
//! hence `any`, not `get`.

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::any;
use axum::serve::ListenerExt;
use duplex::upgrade::{UpgradedWebSocket, WebSocketUpgrade, refusal};

/// The application: `/echo` upgrades, offering the `echo` subprotocol.
pub fn router() -> Router {
    Router::new().route("/echo", any(echo))
}

/// Validates the request (a bad one gets its status: 400, 405, 426) and accepts it.
async fn echo(mut request: Request) -> Response {
    match WebSocketUpgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade.protocols(["echo"]).on_upgrade(echo_messages),
        Err(refused) => refusal(&refused),
    }
}

/// Sends every message back until the client closes.
async fn echo_messages(mut ws: UpgradedWebSocket) {
    while let Some(Ok(message)) = ws.recv().await {
        if ws.send(message).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("axum echo on ws://{}/echo", listener.local_addr()?);
    axum::serve(listener.tap_io(no_delay), router()).await
}

/// Frames go out as written: with Nagle's algorithm on, the small HTTP/2 frame that ends a
/// message waits for the peer's delayed ACK (40 ms on Linux).
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        eprintln!("TCP_NODELAY: {error}");
    }
}
