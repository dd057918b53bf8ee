//! Helpers shared by the integration tests: everything on 127.0.0.1, everything bounded in time.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use duplex::{Event, ServerOptions};
use tokio::net::TcpListener;

/// Fails the test instead of hanging it.
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("test timed out")
}

/// A listener on an ephemeral port of 127.0.0.1.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// An echo server: every data message comes back as it was; it serves connections
/// concurrently until the test ends.
pub async fn echo_server(options: ServerOptions) -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let options = options.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = duplex::accept_with(tcp, options, |_, offer| {
                    Ok(duplex::Accept {
                        protocol: offer
                            .select_protocol(&["echo.v2", "echo.v1"])
                            .map(Into::into),
                        ..Default::default()
                    })
                })
                .await
                else {
                    return;
                };
                while let Some(Ok(event)) = ws.recv_event().await {
                    let sent = match event {
                        Event::Message(message) => ws.send(message).await,
                        Event::Fragment {
                            kind, data, fin, ..
                        } => ws.send_fragment(kind, data, fin).await,
                        _ => Ok(()),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub fn ws_url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}
