//! What the generators share: their thread, client options, the sync directory the harness
//! steps them with, progress bars, error wording, histogram summaries.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use duplex::ClientOptions;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{CliError, Context};

/// Runs a generator on a thread of its own with a current-thread runtime and a `LocalSet`, so
/// the whole generator is one thread (pin it with `taskset`) and its tasks can share state
/// through `Rc`/`Cell` without atomics. The caller's (multi-thread) runtime just waits.
pub(crate) async fn on_own_thread<F, Fut>(make: F) -> Result<ExitCode, CliError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<ExitCode, CliError>> + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("duplex-bench".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context(|| "starting the bench runtime".into())
                .and_then(|runtime| tokio::task::LocalSet::new().block_on(&runtime, make()));
            let _ = done_tx.send(result);
        })
        .context(|| "starting the bench thread".into())?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(CliError("the bench thread panicked".into())))
}

/// Client settings for every generator: no permessage-deflate offered (so compression is never
/// negotiated, whatever the server accepts), no message size limit in the way of large echoes.
pub(crate) fn client_options(handshake_timeout: Duration) -> ClientOptions {
    let mut options = ClientOptions {
        deflate: None,
        handshake_timeout,
        connect_timeout: handshake_timeout,
        ..ClientOptions::default()
    };
    options.config.max_message_size = usize::MAX >> 1;
    options.config.max_frame_size = usize::MAX >> 1;
    options
}

/// Describes a connection failure, naming the fix for running out of file descriptors.
pub(crate) fn describe(e: &duplex::Error) -> String {
    if let duplex::Error::Io(io) = e {
        match io.raw_os_error() {
            Some(24) => {
                return "out of file descriptors (EMFILE): raise the limit with `ulimit -n`".into();
            }
            Some(99) => {
                return "no local port left (EADDRNOTAVAIL): too many connections or TIME_WAIT \
                        sockets to this address"
                    .into();
            }
            _ => {}
        }
    }
    e.to_string()
}

/// Counts failures by description and keeps the distinct ones for the report.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    kinds: Vec<(String, u64)>,
}

impl Failures {
    pub(crate) fn add(&mut self, what: String) {
        match self.kinds.iter_mut().find(|(kind, _)| *kind == what) {
            Some((_, count)) => *count += 1,
            None => self.kinds.push((what, 1)),
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.kinds.iter().map(|(_, count)| count).sum()
    }

    /// One line per distinct failure, most frequent first.
    pub(crate) fn print(&self, indent: &str) {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
        for (kind, count) in kinds.iter().take(8) {
            println!("{indent}{count} x {kind}");
        }
    }
}

/// Lock-step with a harness (bench/compare.sh) that measures the server over an exact window:
/// at each named point the generator, with all its connections idle, creates `DIR/NAME.ready`
/// and waits until `DIR/NAME.go` exists.
#[derive(Debug, Clone)]
pub(crate) struct SyncDir(Option<PathBuf>);

impl SyncDir {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        SyncDir(dir)
    }

    /// Whether a harness is driving: without one, [`SyncDir::point`] returns at once.
    pub(crate) fn is_set(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) async fn point(&self, name: &str, progress: &ProgressBar) -> Result<(), CliError> {
        let Some(dir) = &self.0 else { return Ok(()) };
        let ready = dir.join(format!("{name}.ready"));
        let go = dir.join(format!("{name}.go"));
        std::fs::write(&ready, b"").context(|| format!("creating {}", ready.display()))?;
        progress.set_message(format!("waiting for {}", go.display()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while !go.exists() {
            if tokio::time::Instant::now() > deadline {
                return Err(CliError(format!(
                    "{} did not appear in 600 s",
                    go.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// A progress bar on stdout, or a hidden one when stdout is not a terminal (scripts, pipes).
pub(crate) fn progress_bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stdout());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A latency histogram in nanoseconds, 3 significant digits, 100 ns to 10 minutes.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// `p50`, `p99`, `p99.9` and max of a nanosecond histogram, in microseconds.
pub(crate) fn quantiles_us(histogram: &Histogram<u64>) -> [f64; 4] {
    if histogram.is_empty() {
        return [0.0; 4];
    }
    [
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
    ]
    .map(|ns| ns as f64 / 1000.0)
}

/// Microseconds for people: `38.2 us`, `1.25 ms`.
pub(crate) fn human_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} us")
    }
}
