//! What every connection built from one [`Config`] has in common, kept once behind a pointer.
//!
//! A connection used to copy its limits, timer intervals, budget handle and masking-key source
//! into itself: 52 bytes, the same in every connection of a server. [`SharedConfig`] builds
//! them once; each [`Connection`](super::Connection) then holds one pointer to them (8 bytes),
//! and reading a limit costs one load more. A connection made with
//! [`Connection::new`](super::Connection::new) gets a pointer of its own; servers that make
//! many share one ([`Connection::with_shared`](super::Connection::with_shared),
//! [`ServerHandshake::shared`](crate::handshake::ServerHandshake::shared)).

use std::sync::Arc;

use super::mask_keys::{MaskKeySource, os_mask_key};
use super::timer::Intervals;
use crate::budget::MessageBudget;
use crate::config::Config;

/// A [`Config`] in the form connections read it, built once and shared by every connection
/// made from it. Cheap to clone (one `Arc`).
///
/// ```
/// use duplex_proto::{Config, Connection, Role, SharedConfig};
/// let shared = SharedConfig::new(&Config { max_message_size: 1 << 20, ..Config::default() });
/// let a = Connection::with_shared(Role::Server, &shared);
/// let b = Connection::with_shared(Role::Server, &shared);
/// assert_eq!(a.config(), b.config());
/// assert_eq!(a.config().max_message_size, 1 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct SharedConfig(pub(super) Arc<Settings>);

impl SharedConfig {
    /// The settings of `config`, for any number of connections.
    pub fn new(config: &Config) -> SharedConfig {
        SharedConfig(Arc::new(Settings::new(config)))
    }

    /// The configuration back.
    pub fn config(&self) -> Config {
        self.0.config()
    }
}

/// The shared settings (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) limits: Limits,
    pub(super) intervals: Intervals,
    /// The budget every connection made from these settings charges, if any.
    pub(super) budget: Option<MessageBudget>,
    /// Where a client's masking keys come from (unused by servers).
    pub(super) mask_keys: MaskKeySource,
}

/// The protocol limits of [`Config`], as the receive path reads them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_frame_size: usize,
    pub(crate) max_message_size: usize,
    pub(crate) streaming_receive: bool,
}

impl Settings {
    pub(super) fn new(config: &Config) -> Settings {
        Settings {
            limits: Limits {
                max_frame_size: config.max_frame_size,
                max_message_size: config.max_message_size,
                streaming_receive: config.streaming_receive,
            },
            intervals: Intervals::new(&config.timers),
            budget: config.message_budget.clone(),
            mask_keys: os_mask_key,
        }
    }

    pub(super) fn config(&self) -> Config {
        Config {
            max_frame_size: self.limits.max_frame_size,
            max_message_size: self.limits.max_message_size,
            streaming_receive: self.limits.streaming_receive,
            message_budget: self.budget.clone(),
            timers: self.intervals.timers(),
        }
    }
}
