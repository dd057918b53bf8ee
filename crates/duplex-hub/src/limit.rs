//! Rate limits: token buckets per connection (publishes, subscribes) and per client address or
//! API key ([`AddressLimiter`]: HTTP publishes, new connections), the latter in a bounded table
//! so that many addresses cannot grow the limiter itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A bucket's state alone (its rate and burst live with whoever owns it): tokens saved up and
/// when they were counted. 24 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token if there is one (`rate` per second, at most `burst` saved up); otherwise
    /// says how long until there is.
    pub(crate) fn take(&mut self, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// Whether it has refilled to `burst` by `now`: then it is as good as a new one, and a
    /// table may forget it.
    fn is_full(&self, rate: f64, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate >= f64::from(burst)
    }
}

/// Most keys an [`AddressLimiter`] remembers (each about 48 bytes with the table's overhead):
/// past it, idle ones are forgotten; if all are active, requests from new keys are refused.
pub(crate) const MAX_KEYS: usize = 65_536;

/// How often a full table may be swept for idle keys (a sweep reads the whole table).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Whom a rate applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A client address: IPv4, or the /64 prefix of IPv6 (one host's usual allocation).
    Address(IpAddr),
    /// Every request carrying the hub's API key.
    ApiKey,
}

impl Key {
    /// The key of a client at `ip`.
    pub(crate) fn address(ip: IpAddr) -> Key {
        Key::Address(match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            v4 => v4,
        })
    }
}

/// Why an [`AddressLimiter`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Over the rate: a token comes after this long.
    Wait(Duration),
    /// A new key while the table is full of active ones.
    Full,
}

/// One token bucket per [`Key`], in a table of at most [`MAX_KEYS`]. A check is one lock, one
/// hash lookup and a few arithmetic operations; forgetting idle keys (buckets refilled to
/// their burst, the same as new ones) happens only when the table is full.
#[derive(Debug)]
pub(crate) struct AddressLimiter {
    rate: f64,
    burst: u32,
    /// Whether loopback addresses are limited too (see [`AddressLimiter::new`]).
    loopback: bool,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    buckets: HashMap<Key, Bucket>,
    next_sweep: Instant,
}

impl AddressLimiter {
    /// `rate` per second and key, bursts of `burst`; `None` when `rate` is 0 (no limit).
    /// Loopback addresses are exempt unless `loopback`: behind a reverse proxy on the same
    /// host every client has the proxy's address, and one bucket for all of them would
    /// throttle everyone together.
    pub(crate) fn new(rate: f64, burst: u32, loopback: bool) -> Option<AddressLimiter> {
        (rate > 0.0).then(|| AddressLimiter {
            rate,
            burst: burst.max(1),
            loopback,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                next_sweep: Instant::now(),
            }),
        })
    }

    /// Takes a token of `key`'s bucket.
    pub(crate) fn check(&self, key: Key, now: Instant) -> Result<(), Limited> {
        if let Key::Address(ip) = key {
            if !self.loopback && ip.is_loopback() {
                return Ok(());
            }
        }
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = table.buckets.get_mut(&key) {
            return bucket
                .take(self.rate, self.burst, now)
                .map_err(Limited::Wait);
        }
        if table.buckets.len() >= MAX_KEYS {
            if now < table.next_sweep {
                return Err(Limited::Full);
            }
            let (rate, burst) = (self.rate, self.burst);
            table.buckets.retain(|_, b| !b.is_full(rate, burst, now));
            table.next_sweep = now + SWEEP_EVERY;
            if table.buckets.len() >= MAX_KEYS {
                return Err(Limited::Full);
            }
        }
        let mut bucket = Bucket::full(self.burst, now);
        let taken = bucket.take(self.rate, self.burst, now);
        table.buckets.insert(key, bucket);
        taken.map_err(Limited::Wait)
    }

    /// Keys remembered now.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buckets
            .len()
    }
}

impl Limited {
    /// The `Retry-After` value, in whole seconds (at least 1).
    pub(crate) fn retry_after(self) -> u64 {
        match self {
            Limited::Wait(wait) => wait.as_secs_f64().ceil().max(1.0) as u64,
            Limited::Full => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::full(3, t0);
        let take = |bucket: &mut Bucket, at| bucket.take(10.0, 3, at);
        for _ in 0..3 {
            take(&mut bucket, t0).unwrap();
        }
        let wait = take(&mut bucket, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(99));
        take(&mut bucket, t0 + Duration::from_millis(100)).unwrap();
        assert!(take(&mut bucket, t0 + Duration::from_millis(150)).is_err());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            take(&mut bucket, later).unwrap();
        }
        assert!(take(&mut bucket, later).is_err());
    }

    fn v4(n: u32) -> Key {
        Key::address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)))
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let t0 = Instant::now();
        let limiter = AddressLimiter::new(1.0, 2, false).unwrap();
        limiter.check(v4(1), t0).unwrap();
        limiter.check(v4(1), t0).unwrap();
        assert_eq!(
            limiter.check(v4(1), t0),
            Err(Limited::Wait(Duration::from_secs(1)))
        );
        limiter.check(v4(2), t0).unwrap();
        limiter.check(v4(1), t0 + Duration::from_secs(1)).unwrap();
        assert!(AddressLimiter::new(0.0, 5, false).is_none(), "0: no limit");
    }

    #[test]
    fn loopback_is_exempt_unless_asked_and_ipv6_counts_by_prefix() {
        let t0 = Instant::now();
        let local = Key::address(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let exempt = AddressLimiter::new(1.0, 1, false).unwrap();
        for _ in 0..10 {
            exempt.check(local, t0).unwrap();
        }
        let strict = AddressLimiter::new(1.0, 1, true).unwrap();
        strict.check(local, t0).unwrap();
        assert!(strict.check(local, t0).is_err());
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Key::address(a.into()), Key::address(b.into()));
        assert_ne!(Key::address(a.into()), Key::address(other.into()));
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Key::address(mapped.into()), v4(1));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_keys() {
        let t0 = Instant::now();
        let limiter = AddressLimiter::new(10.0, 2, false).unwrap();
        for n in 0..MAX_KEYS as u32 {
            limiter.check(v4(n), t0).unwrap();
        }
        assert_eq!(limiter.keys(), MAX_KEYS);
        // All active: a new address is refused, the table does not grow.
        assert_eq!(limiter.check(v4(u32::MAX >> 8), t0), Err(Limited::Full));
        assert_eq!(limiter.keys(), MAX_KEYS);
        // A known address still gets its own answer.
        limiter.check(v4(0), t0).unwrap();
        // Once they refilled (idle for burst / rate), they are forgotten for the newcomer.
        let later = t0 + Duration::from_secs(1);
        limiter.check(v4(u32::MAX >> 8), later).unwrap();
        assert_eq!(limiter.keys(), 1);
        assert_eq!(Limited::Wait(Duration::from_millis(1)).retry_after(), 1);
        assert_eq!(Limited::Wait(Duration::from_millis(2500)).retry_after(), 3);
    }
}
