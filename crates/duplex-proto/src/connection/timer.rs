//! The connection's deadlines: keepalive, idle and close (RFC 6455 sections 5.5.2, 7.1.1,
//! 7.1.7), with time passed in by the runtime (the core reads no clock).
//!
//! Everything is kept as `u32` milliseconds relative to the `now` of the last
//! [`Connection::handle_timeout`](super::Connection::handle_timeout), so the whole state is a
//! few words, and one field (`due`) serves the keepalive while the connection is open and the
//! close timeout once it is closing.

use std::time::{Duration, Instant};

use crate::config::Timers;

/// What a clock step asks the connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tick {
    /// Nothing.
    Nothing,
    /// Send a keepalive ping.
    Ping,
    /// Nothing was received for the idle timeout: start the close handshake.
    Idle,
}

/// Timer settings and state. Settings are milliseconds, 0 for a timer that is off.
#[derive(Debug, Clone)]
pub(super) struct Clock {
    ping: u32,
    idle: u32,
    close: u32,
    /// The `now` of the last step; `None` before the first (no timer runs until then).
    at: Option<Instant>,
    /// Milliseconds without anything received, as known at `at`.
    quiet: u32,
    /// Open: the `quiet` at which the next ping goes out. Closing: milliseconds from `at`
    /// until the transport must be closed.
    due: u32,
    /// Closing, and `due` counts down to the close deadline.
    close_dated: bool,
    /// The close timeout ran out.
    expired: bool,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Clock {
    pub(super) fn new(timers: &Timers) -> Self {
        // `Config::validate` keeps timers within 1 ms..=49 days; unvalidated ones are clamped.
        let ms = |d: Duration| millis(d).max(1);
        let ping = timers.ping_interval.map_or(0, ms);
        Clock {
            ping,
            idle: timers.idle_timeout.map_or(0, ms),
            close: ms(timers.close_timeout),
            at: None,
            quiet: 0,
            due: ping,
            close_dated: false,
            expired: false,
        }
    }

    /// The settings back as [`Timers`].
    pub(super) fn timers(&self) -> Timers {
        let d = |ms: u32| Duration::from_millis(u64::from(ms));
        Timers {
            ping_interval: (self.ping != 0).then(|| d(self.ping)),
            idle_timeout: (self.idle != 0).then(|| d(self.idle)),
            close_timeout: d(self.close),
        }
    }

    pub(super) fn expired(&self) -> bool {
        self.expired
    }

    /// When [`Clock::step`] should run next; `closing` once a Close was sent or received or the
    /// connection failed.
    pub(super) fn next(&self, closing: bool) -> Option<Instant> {
        let at = self.at?;
        let wait = if closing {
            if self.expired {
                return None;
            }
            if !self.close_dated {
                // The close began after the last step, at a time the core does not know:
                // a deadline already passed, so the runtime steps at once and dates it.
                return Some(at);
            }
            self.due
        } else {
            let (ping, idle) = (self.ping, self.idle);
            let shortest = match (ping, idle) {
                (0, 0) => return None,
                (0, t) | (t, 0) => t,
                (p, i) => p.min(i),
            };
            // What `recv` noted is dated at the next step: step at least every quarter of the
            // shortest interval, so that dating is off by at most that much.
            let mut wait = (shortest / 4).max(1);
            if idle != 0 {
                wait = wait.min(idle.saturating_sub(self.quiet));
            }
            if ping != 0 {
                wait = wait.min(self.due.saturating_sub(self.quiet));
            }
            wait
        };
        Some(at + Duration::from_millis(u64::from(wait)))
    }

    /// Advances to `now`; `received`: bytes arrived since the last step (dated at `now`).
    pub(super) fn step(&mut self, now: Instant, received: bool, closing: bool) -> Tick {
        let elapsed = match self.at {
            Some(at) => millis(now.saturating_duration_since(at)),
            // The first step starts the clock.
            None => 0,
        };
        self.at = Some(now);
        if closing {
            if self.close_dated {
                self.due = self.due.saturating_sub(elapsed);
                self.expired |= self.due == 0;
            } else {
                self.start_close();
            }
            return Tick::Nothing;
        }
        if received {
            self.quiet = 0;
            self.due = self.ping;
        } else {
            self.quiet = self.quiet.saturating_add(elapsed);
        }
        if self.idle != 0 && self.quiet >= self.idle {
            return Tick::Idle;
        }
        if self.ping != 0 && self.quiet >= self.due {
            self.due = self.quiet.saturating_add(self.ping);
            return Tick::Ping;
        }
        Tick::Nothing
    }

    /// The close began at the last step's `now`: the close timeout runs from there.
    pub(super) fn start_close(&mut self) {
        self.close_dated = true;
        self.due = self.close;
    }
}
