//! A budget for partly received messages, shared by every connection of a process.
//!
//! `max_message_size` bounds one message; nothing bounded how many connections may each hold
//! one half-received at once. One non-final compressed fragment of 61 KB that inflates to
//! 60 MiB was held for the life of its connection (issue 12: 12 connections held 721 MiB for
//! 716 KiB sent). A [`MessageBudget`] is one counter of the bytes such messages hold (the
//! fragments assembled so far, and what was inflated), shared through
//! [`Config::message_budget`](crate::Config::message_budget) by every connection given it.
//!
//! The core charges the budget *before* it grows a message in progress (an inflated step of at
//! most 32 KiB, a fragment appended), so memory never grows past it; a connection whose
//! message does not fit is failed ([`ProtocolError::OverBudget`]) and its message dropped.
//! What a connection charged is refunded when its message completes (the application then
//! owns it), when the connection fails or ends, and when the [`Connection`](crate::Connection)
//! is dropped, whatever the runtime does: nothing leaks.
//!
//! The first [`UNCHARGED`] bytes of each message are not charged, so that small messages keep
//! flowing while large ones fill the budget: that much per connection is of the order of what
//! its socket buffers already cost, and bounded by the connection count, not by what a peer
//! can make the server inflate.
//!
//! Which close code: 1009 (message too big) when the message alone, at the size it would
//! reach, is larger than the whole budget (it can never be received here, so retrying is
//! pointless), else 1013 (try again later): it would fit once other connections' messages
//! complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::error::ProtocolError;

/// Bytes of each message in progress that are not charged (see the [module docs](self)).
pub const UNCHARGED: usize = 16 << 10;

/// The bytes all partly received messages of the connections sharing it may hold together.
/// Cheap to clone (one `Arc`): clones share the count. Two budgets are equal when they are
/// the same budget.
///
/// ```
/// use duplex_proto::{Config, MessageBudget};
/// let budget = MessageBudget::new(256 << 20);
/// let config = Config { message_budget: Some(budget.clone()), ..Config::default() };
/// assert_eq!(budget.held(), 0);
/// assert_eq!(config.message_budget, Some(budget));
/// ```
#[derive(Debug, Clone)]
pub struct MessageBudget(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    limit: usize,
    held: AtomicUsize,
    refusals: AtomicU64,
}

impl MessageBudget {
    /// A budget of `limit` bytes, nothing held.
    pub fn new(limit: usize) -> MessageBudget {
        MessageBudget(Arc::new(Shared {
            limit,
            held: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        }))
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes held now by partly received messages.
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::Relaxed)
    }

    /// Connections failed so far because their message did not fit (closed with 1009 or 1013).
    pub fn refusals(&self) -> u64 {
        self.0.refusals.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit.
    fn try_take(&self, n: usize) -> bool {
        self.0
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|&total| total <= self.0.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.0.held.fetch_sub(n, Ordering::Relaxed);
    }
}

impl PartialEq for MessageBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MessageBudget {}

/// What one connection holds of its budget: charged as its message grows, refunded when the
/// message completes or is dropped, and on drop.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    budget: Option<MessageBudget>,
    charged: usize,
}

impl Hold {
    #[cfg(test)]
    pub(crate) fn new(budget: Option<MessageBudget>) -> Hold {
        Hold { budget, charged: 0 }
    }

    /// Charges `budget` from now on, if it charges none yet: bound when a message first needs
    /// charging, so that messages received whole (most) never touch the budget's counter.
    #[inline]
    pub(crate) fn bind(&mut self, budget: Option<&MessageBudget>) {
        if self.budget.is_none() {
            self.budget = budget.cloned();
        }
    }

    /// Makes sure at least `total` bytes are charged for the message in progress, before it
    /// grows to that size. Fails, having charged nothing more, when the budget cannot cover it.
    #[inline]
    pub(crate) fn cover(&mut self, total: usize) -> Result<(), ProtocolError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let charge = total.saturating_sub(UNCHARGED);
        if charge <= self.charged {
            return Ok(());
        }
        if budget.try_take(charge - self.charged) {
            self.charged = charge;
            return Ok(());
        }
        budget.0.refusals.fetch_add(1, Ordering::Relaxed);
        Err(ProtocolError::OverBudget {
            size: charge as u64,
            budget: budget.limit(),
        })
    }

    /// Like [`Hold::cover`] for a buffer about to grow: covers `wanted` bytes (its usual
    /// doubling) if the budget allows, else only `needed`; returns what was covered.
    #[inline]
    pub(crate) fn cover_growth(
        &mut self,
        wanted: usize,
        needed: usize,
    ) -> Result<usize, ProtocolError> {
        let Some(budget) = &self.budget else {
            return Ok(wanted);
        };
        let charge = wanted.saturating_sub(UNCHARGED);
        if charge <= self.charged {
            return Ok(wanted);
        }
        if budget.try_take(charge - self.charged) {
            self.charged = charge;
            return Ok(wanted);
        }
        self.cover(needed)?;
        Ok(needed)
    }

    /// Gives back everything charged: the message completed or was dropped.
    #[inline]
    pub(crate) fn release(&mut self) {
        if self.charged > 0 {
            if let Some(budget) = &self.budget {
                budget.give_back(self.charged);
            }
            self.charged = 0;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_within_the_limit_and_refunds() {
        let budget = MessageBudget::new(100);
        let mut a = Hold::new(Some(budget.clone()));
        let mut b = Hold::new(Some(budget.clone()));
        a.cover(UNCHARGED).unwrap();
        assert_eq!(budget.held(), 0, "the first bytes are free");
        a.cover(UNCHARGED + 60).unwrap();
        a.cover(UNCHARGED + 40).unwrap(); // already covered
        assert_eq!(budget.held(), 60);
        // 50 would fit alone but not beside a's 60: try again later.
        let err = b.cover(UNCHARGED + 50).unwrap_err();
        assert_eq!(err.close_code(), crate::CloseCode::TRY_AGAIN_LATER);
        assert_eq!(budget.held(), 60, "a refusal charges nothing");
        // Small messages still pass.
        b.cover(UNCHARGED).unwrap();
        // Larger than the whole budget: too big, whatever the others hold.
        let err = b.cover(UNCHARGED + 101).unwrap_err();
        assert_eq!(err.close_code(), crate::CloseCode::MESSAGE_TOO_BIG);
        assert_eq!(budget.refusals(), 2);
        a.release();
        b.cover(UNCHARGED + 50).unwrap();
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn without_a_budget_everything_is_covered() {
        let mut hold = Hold::new(None);
        hold.cover(usize::MAX).unwrap();
        hold.release();
    }
}
