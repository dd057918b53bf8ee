//! `duplex connect URL`: stdin lines become messages, received messages are printed, EOF closes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use duplex::proxy::ProxyChoice;
use duplex::{ClientOptions, CloseCode, Event, Message};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::{CliError, Context};

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// ws:// or wss:// URL.
    url: String,
    /// Send stdin lines as binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Subprotocol to offer (repeatable, in order of preference).
    #[arg(long = "protocol", value_name = "NAME")]
    protocols: Vec<String>,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    no_deflate: bool,
    /// Trust this PEM certificate (e.g. a self-signed server's) instead of the public roots.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Connect through this proxy: http://[user:pass@]host:port (HTTP CONNECT),
    /// socks5://... (this client resolves the host) or socks5h://... (the proxy does).
    /// Default: the proxy HTTPS_PROXY (wss), HTTP_PROXY (ws) or ALL_PROXY names, unless
    /// NO_PROXY lists the host.
    #[arg(long, value_name = "URL", conflicts_with = "no_proxy")]
    proxy: Option<String>,
    /// Connect directly, ignoring the proxy variables.
    #[arg(long)]
    no_proxy: bool,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = duplex_proto::config::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Open the WebSocket over HTTP/2 (RFC 8441: h2c by prior knowledge for ws://, ALPN h2 for
    /// wss://) when the server allows it, else over HTTP/1.1; stderr says which.
    #[arg(long)]
    http2: bool,
}

pub async fn run(args: ConnectArgs) -> Result<ExitCode, CliError> {
    let mut options = ClientOptions::default();
    options.config.max_message_size = args.max_message_size;
    options.protocols = args.protocols.clone();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| CliError(format!("header {header:?}: expected `Name: value`")))?;
        let name: http::HeaderName = name
            .trim()
            .parse()
            .context(|| format!("header name {name:?}"))?;
        let value: http::HeaderValue = value
            .trim()
            .parse()
            .context(|| format!("header value {value:?}"))?;
        options.headers.append(name, value);
    }
    if args.no_deflate {
        options.deflate = None;
    }
    if let Some(path) = &args.ca_cert {
        options.tls = duplex::tls::ClientTls::Config(
            duplex::tls::client_config_trusting_pem(path)
                .context(|| format!("loading {}", path.display()))?,
        );
    }
    if let Some(url) = &args.proxy {
        options.proxy = ProxyChoice::Use(url.parse().context(|| "--proxy".into())?);
    } else if args.no_proxy {
        options.proxy = ProxyChoice::Direct;
    }
    if args.http2 {
        options.http2 = true;
        let (ws, response) = duplex::connect_auto(&args.url, options)
            .await
            .context(|| format!("connecting to {}", args.url))?;
        if ws.get_ref().is_http2() {
            tracing::info!(status = %response.status, "connected over HTTP/2 (RFC 8441)");
        } else {
            tracing::info!(
                status = %response.status,
                "connected over HTTP/1.1 (the server does not allow WebSockets over HTTP/2)"
            );
        }
        return session(ws, &response, &args).await;
    }
    let (ws, response) = duplex::connect_with(&args.url, options)
        .await
        .context(|| format!("connecting to {}", args.url))?;
    session(ws, &response, &args).await
}

/// Stdin lines out, messages in, until EOF on stdin or the end of the connection.
async fn session<S>(
    ws: duplex::WebSocket<S>,
    response: &duplex::Response,
    args: &ConnectArgs,
) -> Result<ExitCode, CliError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(protocol = ?response.protocol, extensions = ?response.extensions, "connected");
    let (mut sender, mut receiver) = ws.split();

    // Received messages go to stdout as lines; the task ends when the connection closes.
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut close = None;
        while let Some(event) = receiver.recv_event().await {
            match event {
                Ok(Event::Message(message)) => {
                    let _ = stdout.write_all(message.as_bytes()).await;
                    let _ = stdout.write_all(b"\n").await;
                    let _ = stdout.flush().await;
                }
                Ok(Event::Close(frame)) => close = Some(frame),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(close)
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut printer = printer;
    let mut printer_done = None;
    loop {
        tokio::select! {
            line = lines.next_line() => match line.context(|| "reading stdin".into())? {
                Some(line) => {
                    let message = if args.binary { Message::binary(Bytes::from(line)) } else { Message::text(line) };
                    if let Err(e) = sender.send(message).await {
                        return Err(CliError(format!("send: {e}")));
                    }
                }
                None => break,
            },
            done = &mut printer => {
                printer_done = Some(done);
                break;
            }
        }
    }
    let outcome = match printer_done {
        Some(done) => done,
        None => {
            // EOF on stdin: close normally, then wait for the close handshake to finish.
            let _ = sender.close(CloseCode::NORMAL, "").await;
            match tokio::time::timeout(Duration::from_secs(10), &mut printer).await {
                Ok(done) => done,
                Err(_) => {
                    return Err(CliError(
                        "the server did not finish the close handshake".into(),
                    ));
                }
            }
        }
    };
    match outcome {
        Ok(Ok(Some(Some(frame))))
            if frame.code != CloseCode::NORMAL && frame.code != CloseCode::GOING_AWAY =>
        {
            eprintln!("closed by server: {} {}", frame.code, frame.reason);
            Ok(ExitCode::FAILURE)
        }
        Ok(Ok(_)) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(CliError(format!("connection failed: {e}"))),
        Err(e) => Err(CliError(format!("receiver task: {e}"))),
    }
}
