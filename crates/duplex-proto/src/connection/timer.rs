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

/// Timer settings in milliseconds, 0 for a timer that is off: part of the connection's shared
/// settings (see `Settings`), the same for every connection built from one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Intervals {
    ping: u32,
    idle: u32,
    close: u32,
}

impl Intervals {
    pub(super) fn new(timers: &Timers) -> Self {
        // `Config::validate` keeps timers within 1 ms..=49 days; unvalidated ones are clamped.
        let ms = |d: Duration| millis(d).max(1);
        Intervals {
            ping: timers.ping_interval.map_or(0, ms),
            idle: timers.idle_timeout.map_or(0, ms),
            close: ms(timers.close_timeout),
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
}

/// One connection's timer state: six bytes. The settings are the connection's shared
/// [`Intervals`], passed in; the time of the last step (an `Instant`, 16 bytes) is kept by the
/// connection beside this.
#[derive(Debug, Clone, Default)]
pub(super) struct Clock {
    /// Open: milliseconds without anything received, as known at the last step. Closing (once
    /// dated): milliseconds from the last step until the transport must be closed.
    ms: u32,
    /// Keepalive pings sent in the current silence (the next goes out at `ping * (pings + 1)`
    /// of quiet; at 255 no more are sent, the idle timeout's business by then).
    pings: u8,
    flags: u8,
}

/// Bytes were fed since the last step (set by `recv`: one instruction, no clock).
const RECEIVED: u8 = 1;
/// Closing, and `ms` counts down to the close deadline.
const CLOSE_DATED: u8 = 2;
/// The close timeout ran out.
const EXPIRED: u8 = 4;
/// The peer ended the transport (`Connection::recv_eof`): not a timer, but a flag that costs
/// nothing here where a field of its own would cost the connection 8 bytes.
const PEER_EOF: u8 = 8;

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Clock {
    /// Notes that bytes arrived; the next step dates them.
    #[inline]
    pub(super) fn note_received(&mut self) {
        self.flags |= RECEIVED;
    }

    pub(super) fn expired(&self) -> bool {
        self.flags & EXPIRED != 0
    }

    pub(super) fn note_eof(&mut self) {
        self.flags |= PEER_EOF;
    }

    pub(super) fn eof(&self) -> bool {
        self.flags & PEER_EOF != 0
    }

    /// The quiet at which the next keepalive ping is due, if one is.
    fn ping_due(&self, iv: &Intervals) -> Option<u32> {
        (iv.ping != 0 && self.pings < u8::MAX)
            .then(|| iv.ping.saturating_mul(u32::from(self.pings) + 1))
    }

    /// When [`Clock::step`] should run next, given the last step's time `at`; `closing` once
    /// a Close was sent or received or the connection failed.
    pub(super) fn next(
        &self,
        iv: &Intervals,
        at: Option<Instant>,
        closing: bool,
    ) -> Option<Instant> {
        let at = at?;
        let wait = if closing {
            if self.expired() {
                return None;
            }
            if self.flags & CLOSE_DATED == 0 {
                // The close began after the last step, at a time the core does not know:
                // a deadline already passed, so the runtime steps at once and dates it.
                return Some(at);
            }
            self.ms
        } else {
            let (ping, idle) = (iv.ping, iv.idle);
            let shortest = match (ping, idle) {
                (0, 0) => return None,
                (0, t) | (t, 0) => t,
                (p, i) => p.min(i),
            };
            // What `recv` noted is dated at the next step: step at least every quarter of the
            // shortest interval, so that dating is off by at most that much.
            let mut wait = (shortest / 4).max(1);
            if idle != 0 {
                wait = wait.min(idle.saturating_sub(self.ms));
            }
            if let Some(due) = self.ping_due(iv) {
                wait = wait.min(due.saturating_sub(self.ms));
            }
            wait
        };
        Some(at + Duration::from_millis(u64::from(wait)))
    }

    /// Advances from the last step's time `*at` to `now` (and records `now` there).
    pub(super) fn step(
        &mut self,
        iv: &Intervals,
        at: &mut Option<Instant>,
        now: Instant,
        closing: bool,
    ) -> Tick {
        let elapsed = match *at {
            Some(at) => millis(now.saturating_duration_since(at)),
            // The first step starts the clock.
            None => 0,
        };
        *at = Some(now);
        let received = self.flags & RECEIVED != 0;
        self.flags &= !RECEIVED;
        if closing {
            if self.flags & CLOSE_DATED != 0 {
                self.ms = self.ms.saturating_sub(elapsed);
                if self.ms == 0 {
                    self.flags |= EXPIRED;
                }
            } else {
                self.start_close(iv);
            }
            return Tick::Nothing;
        }
        if received {
            self.ms = 0;
            self.pings = 0;
        } else {
            self.ms = self.ms.saturating_add(elapsed);
        }
        if iv.idle != 0 && self.ms >= iv.idle {
            return Tick::Idle;
        }
        if self.ping_due(iv).is_some_and(|due| self.ms >= due) {
            self.pings += 1;
            return Tick::Ping;
        }
        Tick::Nothing
    }

    /// The close began at the last step's time: the close timeout runs from there.
    pub(super) fn start_close(&mut self, iv: &Intervals) {
        self.flags |= CLOSE_DATED;
        self.ms = iv.close;
    }
}
