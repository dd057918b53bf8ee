//! fastwebsockets 0.10 echo server, shaped like the crate's own `echo_server` example: hyper 1
//! serves the HTTP/1.1 upgrade, `FragmentCollector` reassembles messages (and answers pings and
//! Close frames itself), every text/binary message goes back as it came.
//!
//! Single-threaded (current_thread runtime): bench/compare.sh pins it to one core.
//! Usage: fastwebsockets-echo [ADDR]   (default 127.0.0.1:9002)

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            if std::env::var_os("ECHO_DEBUG").is_some() {
                eprintln!("websocket connection: {e}");
            }
        }
    });
    Ok(response)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("fastwebsockets-echo listening on ws://{}", listener.local_addr()?);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: report and keep serving the connections we have.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Same as duplex serve: small frames go out as written (no Nagle delay).
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    })
}
