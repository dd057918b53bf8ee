//! Limits and options for a [`Connection`](crate::Connection), validated in one place.

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
}

/// 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
/// 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            streaming_receive: false,
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
        Ok(())
    }
}
