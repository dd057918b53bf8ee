//! A [`BrokerHandler`] that records what a broker tells it, and waits (bounded) for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use duplex_hub::{BrokerHandler, ClientInfo, Publication, StreamPosition};
use tokio::sync::Notify;

/// One call the broker made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `on_publication(channel, offset, data)`.
    Publication(String, u64, String),
    /// `on_join(channel, client)`.
    Join(String, String),
    /// `on_leave(channel, client)`.
    Leave(String, String),
    /// `on_reset(channel, epoch, offset)`.
    Reset(String, String, u64),
    /// `on_gap(channel, first, last)`.
    Gap(String, u64, u64),
}

/// Records every call, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    changed: Notify,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn push(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
        self.changed.notify_waiters();
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The offsets of `channel`'s publications, in the order they came.
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Publication(c, offset, _) if c == channel => Some(offset),
                _ => None,
            })
            .collect()
    }

    /// Waits until `done` holds for the recorded events (at most `within`), or panics with
    /// `what` and what was recorded.
    pub async fn wait_until(&self, what: &str, within: Duration, done: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if done(&self.events()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "timed out waiting for {what}; recorded: {:?}",
                    self.events()
                );
            }
        }
    }
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, channel: &str, p: &Publication) {
        let data = String::from_utf8_lossy(&p.data).into_owned();
        self.push(Event::Publication(channel.to_owned(), p.offset, data));
    }
    fn on_join(&self, channel: &str, c: &ClientInfo) {
        self.push(Event::Join(channel.to_owned(), c.client.to_string()));
    }
    fn on_leave(&self, channel: &str, c: &ClientInfo) {
        self.push(Event::Leave(channel.to_owned(), c.client.to_string()));
    }
    fn on_reset(&self, channel: &str, position: &StreamPosition) {
        self.push(Event::Reset(
            channel.to_owned(),
            position.epoch.to_string(),
            position.offset,
        ));
    }
    fn on_gap(&self, channel: &str, first: u64, last: u64) {
        self.push(Event::Gap(channel.to_owned(), first, last));
    }
}
