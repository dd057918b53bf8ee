//! `duplex serve`: the echo server, for conformance runs and for people testing their clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use duplex::{CloseCode, Config, Event, ServerOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::shutdown::{Listener, Shutdown};
use crate::{CliError, Context};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Echo every text and binary message back as it came.
    #[arg(long)]
    echo: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001", env = "DUPLEX_LISTEN")]
    listen: SocketAddr,
    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse permessage-deflate (accepted by default).
    #[arg(long)]
    no_deflate: bool,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = duplex_proto::config::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = duplex_proto::config::DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: usize,
    /// Most connections served at once; more wait in the kernel's accept queue.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Seconds a client has to complete the opening handshake.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Worker threads (default: one per core). 1 runs everything on the calling thread, which
    /// is what benchmarks pinned to one core want.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub async fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    if !args.echo {
        return Err(CliError(
            "nothing to serve: pass --echo (the hub is `duplex hub`)".into(),
        ));
    }
    let config = Config {
        max_message_size: args.max_message_size,
        max_frame_size: args.max_frame_size,
        ..Config::default()
    };
    config.validate().context(|| "limits".into())?;
    let mut options = ServerOptions {
        config,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        ..ServerOptions::default()
    };
    if args.no_deflate {
        options.deflate = None;
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            duplex::tls::acceptor_from_pem(cert, key)
                .context(|| format!("loading {}", cert.display()))?,
        ),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().context(|| "local address".into())?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!("echo server on {scheme}://{local}");

    let shutdown = Shutdown::new();
    let slots = Arc::new(Semaphore::new(args.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let permit = tokio::select! {
            _ = &mut signal => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let options = options.clone();
        let tls = tls.clone();
        let listener = shutdown.listen();
        tasks.spawn(async move {
            let _permit = permit;
            serve_connection(tcp, peer, tls, options, listener).await;
        });
        // Reap finished tasks so the set does not grow with every connection ever served.
        while tasks.try_join_next().is_some() {}
    }
    tracing::info!(
        "shutting down: closing {} connections with 1001",
        tasks.len()
    );
    drop(listener);
    shutdown.fire();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<duplex::tls::TlsAcceptor>,
    options: ServerOptions,
    shutdown: Listener,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        Some(acceptor) => {
            match duplex::tls::accept(&acceptor, tcp, options.handshake_timeout).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, "tls: {e}");
                    return;
                }
            }
        }
        None => duplex::MaybeTlsStream::from(tcp),
    };
    let ws = match duplex::accept_with(stream, options, |_, _| Ok(Default::default())).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, "handshake refused: {e}");
            return;
        }
    };
    echo(ws, peer, shutdown).await;
}

async fn echo(
    mut ws: duplex::WebSocket<duplex::MaybeTlsStream>,
    peer: SocketAddr,
    mut shutdown: Listener,
) {
    loop {
        let event = tokio::select! {
            biased;
            event = ws.recv_event() => event,
            _ = &mut shutdown => {
                let _ = ws.close(CloseCode::GOING_AWAY, "server shutting down").await;
                return;
            }
        };
        // feed, not send: the reply goes out when recv_event next polls the socket, together
        // with the replies to everything else that arrived in the same read.
        let result = match event {
            None => return,
            Some(Ok(Event::Message(message))) => ws.feed(message).await,
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                tracing::debug!(%peer, "connection failed: {e}");
                return;
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, "send: {e}");
            return;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
