//! Limits and options for a [`Connection`](crate::Connection), validated in one place.

use std::time::Duration;

/// Connection limits and options. Every limit has a safe default.
///
/// ```
/// use duplex_proto::Config;
/// let config = Config { max_message_size: 1 << 20, ..Config::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest frame payload accepted, checked on the header before any payload is buffered.
    /// Default 16 MiB. Exceeding it fails the connection with 1009.
    pub max_frame_size: usize,
    /// Largest message accepted, all fragments together (after inflating, with
    /// permessage-deflate). Default 64 MiB. Exceeding it fails the connection with 1009.
    pub max_message_size: usize,
    /// Deliver data frames as [`Event::Fragment`](crate::Event::Fragment)s as they arrive instead
    /// of reassembling whole messages, for messages too large to hold. `max_message_size` then
    /// bounds nothing but each frame's `max_frame_size` still applies. Default false.
    pub streaming_receive: bool,
    /// The budget shared with other connections for the bytes partly received messages hold
    /// (see [`crate::budget`]). Default: none (each message bounded by `max_message_size`
    /// only). Servers facing untrusted clients give all their connections one.
    pub message_budget: Option<crate::MessageBudget>,
    /// Keepalive, idle and close deadlines, run by
    /// [`Connection::handle_timeout`](crate::Connection::handle_timeout).
    pub timers: Timers,
}

/// The connection's deadlines (RFC 6455 sections 5.5.2, 7.1.1, 7.1.7), with one meaning for
/// every runtime. "Received" means any bytes fed to [`Connection::recv`](crate::Connection::recv):
/// data, pings, pongs.
///
/// - **Keepalive** (`ping_interval`): a ping is sent only when nothing was received for
///   `ping_interval`, and again every `ping_interval` while the silence lasts. A peer that keeps
///   sending is never pinged.
/// - **Idle** (`idle_timeout`): nothing received for `idle_timeout` starts the close handshake
///   with Close 1001 "idle timeout" (the close timeout starts with it). Pair it with a shorter
///   `ping_interval` so a healthy but quiet peer's pongs count.
/// - **Close** (`close_timeout`): once a Close was sent or received, or the connection failed,
///   the transport must be closed within `close_timeout`, answered or not
///   ([`Connection::should_close_transport`](crate::Connection::should_close_transport)).
///
/// The core reads no clock: `recv` only notes that something arrived, and the next
/// `handle_timeout(now)` dates it at `now`. [`Connection::poll_timeout`](crate::Connection::poll_timeout)
/// asks for such a check at least every quarter of the shortest enabled interval, so the
/// keepalive and idle timers act between their interval and 1.25 times it after the last
/// bytes received (plus the runtime's own timer resolution).
///
/// ```
/// use std::time::Duration;
/// use duplex_proto::config::{Config, Timers};
/// let config = Config {
///     timers: Timers { ping_interval: Some(Duration::from_secs(20)), ..Timers::default() },
///     ..Config::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Ping when nothing was received for this long. Default: none.
    pub ping_interval: Option<Duration>,
    /// Start the close handshake (1001) when nothing was received for this long. Default: none.
    pub idle_timeout: Option<Duration>,
    /// How long the close handshake may take, from the first Close frame sent or received (or
    /// the failure) until the transport must be closed. Default 5 s.
    pub close_timeout: Duration,
}

/// 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
/// 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;
/// 5 s.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest timer: the core keeps times as `u32` milliseconds (about 49 days).
pub const MAX_TIMER: Duration = Duration::from_millis(u32::MAX as u64);

impl Default for Timers {
    fn default() -> Self {
        Timers {
            ping_interval: None,
            idle_timeout: None,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            streaming_receive: false,
            message_budget: None,
            timers: Timers::default(),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub &'static str);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks that the limits are usable together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_size < 125 {
            return Err(ConfigError(
                "max_frame_size must be at least 125 (the control frame size)",
            ));
        }
        if self.max_message_size == 0 {
            return Err(ConfigError("max_message_size must be positive"));
        }
        self.timers.validate()
    }
}

impl Timers {
    /// Checks that every timer is at least 1 ms and at most [`MAX_TIMER`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let in_range = |d: Duration| d >= Duration::from_millis(1) && d <= MAX_TIMER;
        if !self.ping_interval.is_none_or(in_range) {
            return Err(ConfigError(
                "ping_interval must be between 1 ms and 49 days",
            ));
        }
        if !self.idle_timeout.is_none_or(in_range) {
            return Err(ConfigError("idle_timeout must be between 1 ms and 49 days"));
        }
        if !in_range(self.close_timeout) {
            return Err(ConfigError(
                "close_timeout must be between 1 ms and 49 days",
            ));
        }
        Ok(())
    }
}
