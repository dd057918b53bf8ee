//! The client side of the Autobahn|Testsuite: run against wstest's fuzzing server.
//!
//! ```text
//! autobahn-client ws://127.0.0.1:9001
//! ```
//!
//! Reads the case count from `/getCaseCount`, runs every case by echoing what the fuzzing server
//! sends (text as text, binary as binary) until it closes the connection, then asks for the
//! reports with `/updateReports`. The agent name is `$AUTOBAHN_AGENT`, or `duplex`. The URL can
//! also come from `$AUTOBAHN_URL`.

use std::process::ExitCode;
use std::time::Duration;

use duplex::{ClientOptions, Config, Event, Message};

fn options() -> ClientOptions {
    ClientOptions {
        // Autobahn sends messages of up to 16 MiB (case 9.*): stay above that.
        config: Config {
            max_frame_size: 32 << 20,
            max_message_size: 64 << 20,
            ..Config::default()
        },
        ..ClientOptions::default()
    }
}

/// Echoes every message until the server closes; errors end the case (they are expected in
/// the fuzzing cases).
async fn echo(url: &str) -> Result<(), duplex::Error> {
    let (mut ws, _) = duplex::connect_with(url, options()).await?;
    while let Some(event) = ws.recv_event().await {
        if let Event::Message(message) = event? {
            ws.send(message).await?;
        }
    }
    Ok(())
}

async fn case_count(base: &str, agent: &str) -> Result<u32, Box<dyn std::error::Error>> {
    let url = format!("{base}/getCaseCount?agent={agent}");
    let (mut ws, _) = duplex::connect_with(&url, options()).await?;
    match ws.recv().await {
        Some(Ok(Message::Text(text))) => Ok(text.trim().parse()?),
        other => Err(format!("unexpected answer to getCaseCount: {other:?}").into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let base = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("AUTOBAHN_URL").ok())
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let base = base.trim_end_matches('/').to_owned();
    let agent = std::env::var("AUTOBAHN_AGENT").unwrap_or_else(|_| "duplex".to_owned());

    let count = match case_count(&base, &agent).await {
        Ok(count) => count,
        Err(e) => {
            eprintln!("autobahn-client: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{count} cases");

    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        // Generous bound: a case that hangs must not stall the whole run.
        match tokio::time::timeout(Duration::from_secs(120), echo(&url)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("case {case}: {e}"),
            Err(_) => eprintln!("case {case}: timed out"),
        }
    }

    let url = format!("{base}/updateReports?agent={agent}");
    match duplex::connect_with(&url, options()).await {
        Ok((mut ws, _)) => while let Some(Ok(_)) = ws.recv().await {},
        Err(e) => {
            eprintln!("autobahn-client: updateReports: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("reports updated");
    ExitCode::SUCCESS
}
