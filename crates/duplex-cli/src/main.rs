//! `duplex`: a WebSocket echo server and client for the terminal.
//!
//! ```text
//! duplex serve --echo --listen 127.0.0.1:9001          # echo server (ws://)
//! duplex serve --echo --tls-cert c.pem --tls-key k.pem # echo server (wss://)
//! duplex connect ws://127.0.0.1:9001                   # stdin lines out, messages in
//! duplex hub                                           # the real-time hub on :8080
//! duplex bench echo ws://127.0.0.1:9001                # load generator
//! ```

mod bench;
mod connect;
mod serve;
mod shutdown;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// WebSocket toolkit: echo server and client.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WebSocket server (`--echo`: every message back as it came).
    Serve(serve::ServeArgs),
    /// Connect to a WebSocket server: stdin lines become messages, received messages are printed.
    Connect(connect::ConnectArgs),
    /// Run the real-time hub: channels, fan-out, presence, history, HTTP publish API.
    // Boxed: its many settings would make every `Command` as large (clippy::large_enum_variant).
    Hub(Box<duplex_hub::HubArgs>),
    /// Load generators: echo throughput and latency, idle connections, hub fan-out.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DUPLEX_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let threads = match &cli.command {
        Command::Serve(args) => args.tokio_threads(),
        Command::Hub(args) => args.threads,
        _ => None,
    };
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("duplex: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Connect(args) => connect::run(args).await,
            Command::Hub(args) => duplex_hub::run(*args)
                .await
                .map_err(|e| CliError(e.to_string())),
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // A blocking stdin read (`connect`) would hold a normal shutdown until the next line.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("duplex: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors that end a command, with what was being done.
#[derive(Debug)]
pub struct CliError(String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// Attaches what we were doing to an error.
pub trait Context<T> {
    /// Wraps the error with `what`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| CliError(format!("{}: {e}", what())))
    }
}
