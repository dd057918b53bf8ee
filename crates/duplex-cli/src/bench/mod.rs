//! `duplex bench`: load generators. Being built.

use std::process::ExitCode;

use crate::CliError;

/// `duplex bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_parser = ["echo", "idle", "fanout"])]
    pub kind: String,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    Err(CliError(format!(
        "duplex bench {} is not built yet",
        args.kind
    )))
}
