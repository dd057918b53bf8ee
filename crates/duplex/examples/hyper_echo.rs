//! A plain hyper service that hands `/echo` to duplex, over HTTP/1.1 upgrades and HTTP/2
//! extended CONNECT (RFC 8441) on one port, through `duplex::upgrade::builder`.
//!
//! ```text
//! cargo run -p duplex --features hyper --example hyper_echo -- 127.0.0.1:9003
//! duplex connect ws://127.0.0.1:9003/echo
//! ```

use std::convert::Infallible;

use duplex::upgrade::{WebSocketUpgrade, refusal};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request: `/echo` upgrades (any other path is 404). `String` is a hyper body, and what
/// a refusal's reason becomes.
pub async fn handle(mut request: Request<Incoming>) -> Result<Response<String>, Infallible> {
    if request.uri().path() != "/echo" {
        let mut response = Response::new("not found".to_owned());
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    let upgrade = match WebSocketUpgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade,
        Err(refused) => return Ok(refusal(&refused)),
    };
    Ok(upgrade.protocols(["echo"]).on_upgrade(|mut ws| async move {
        while let Some(Ok(message)) = ws.recv().await {
            if ws.send(message).await.is_err() {
                return;
            }
        }
    }))
}

/// Serves `listener` until it fails: each connection on a task of its own, HTTP/1.1 or
/// HTTP/2, with upgrades.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        // Frames go out as written: with Nagle's algorithm on, the small HTTP/2 frame that
        // ends a message waits for the peer's delayed ACK (40 ms on Linux).
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let io = TokioIo::new(tcp);
            let served = duplex::upgrade::builder()
                .serve_connection_with_upgrades(io, service_fn(handle))
                .await;
            if let Err(error) = served {
                eprintln!("connection: {error}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("hyper echo on ws://{}/echo", listener.local_addr()?);
    serve(listener).await
}
