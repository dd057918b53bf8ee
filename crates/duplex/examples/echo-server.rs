//! A WebSocket echo server: every message comes back as it was sent.
//!
//! ```text
//! echo-server [127.0.0.1:9002]
//! ```

use duplex::{Config, Event, ServerOptions};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("echo server on ws://{}", listener.local_addr()?);
    let options = ServerOptions {
        config: Config {
            // Large enough for the Autobahn suite's 16 MiB messages.
            max_frame_size: 32 << 20,
            ..Config::default()
        },
        ..ServerOptions::default()
    };
    loop {
        let (tcp, peer) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let options = options.clone();
        tokio::spawn(async move {
            let mut ws =
                match duplex::accept_with(tcp, options, |_, _| Ok(Default::default())).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        eprintln!("{peer}: handshake: {e}");
                        return;
                    }
                };
            while let Some(event) = ws.recv_event().await {
                let sent = match event {
                    Ok(Event::Message(message)) => ws.send(message).await,
                    Ok(_) => Ok(()),
                    Err(e) => {
                        eprintln!("{peer}: {e}");
                        return;
                    }
                };
                if let Err(e) = sent {
                    eprintln!("{peer}: send: {e}");
                    return;
                }
            }
        });
    }
}
