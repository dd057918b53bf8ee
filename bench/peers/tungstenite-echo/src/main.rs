//! tokio-tungstenite 0.30 echo server: `accept_async`, then a read/write loop that sends every
//! text/binary message back as it came (pings are answered and Close frames replied to by
//! tungstenite itself; the replies go out with the next write or flush).
//!
//! Single-threaded (current_thread runtime): bench/compare.sh pins it to one core.
//! Usage: tungstenite-echo [ADDR]   (default 127.0.0.1:9003)

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

async fn handle(stream: TcpStream) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(message) = ws.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            ws.send(message).await?;
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9003".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("tungstenite-echo listening on ws://{}", listener.local_addr()?);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Same as duplex serve: small frames go out as written (no Nagle delay).
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                if let Err(e) = handle(stream).await {
                    if std::env::var_os("ECHO_DEBUG").is_some() {
                        eprintln!("websocket connection: {e}");
                    }
                }
            });
        }
    })
}
