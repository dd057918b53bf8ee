//! Join/leave events batched per channel: one `presence` push carries every join and leave of
//! a channel during a short window (`--presence-batch-ms`), encoded once for all subscribers.
//!
//! ```text
//!  broker ─on_join/on_leave─▶ Batcher::add: folded into the channel's Pending (no push yet)
//!                                 │ the first event of a window wakes the flusher task
//!                                 ▼
//!  flusher task: sleeps one window, takes every channel's Pending, hands each batch to the
//!  fan-out (a job on the channel's fan-out thread, in order with its publications)
//! ```
//!
//! Without batching each subscribe pushed one event to every subscriber of the channel:
//! subscribing N clients cost N²/2 pushes, and one connection subscribing and unsubscribing in
//! a loop made one push per subscriber per event. Batched, a channel gets at most one presence
//! push per window, whatever the rate of joins and leaves.
//!
//! A window only reports what changed: each client's events fold into where it was before the
//! window and where it is after it. A join followed by a leave of the same client in one window
//! cancels out (nobody hears of it), and so does a leave followed by a join (a connection that
//! resubscribed is present before and after). So a batch's `join` and `leave` lists never name
//! the same client and may be applied in any order.
//!
//! The flusher is a tokio task, not a thread: a hub on one thread stays on one thread, and an
//! idle hub has no timer armed (the task sleeps only while some event waits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::broker::ClientInfo;

/// What one `presence` push says: who joined and who left since the channel's previous one.
/// No client is in both lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PresenceBatch {
    /// Clients that joined, in the order of their (first) event.
    pub(crate) joins: Vec<ClientInfo>,
    /// Clients that left, in the order of their (first) event.
    pub(crate) leaves: Vec<ClientInfo>,
}

impl PresenceBatch {
    /// A batch of one event (batching off).
    fn single(client: &ClientInfo, join: bool) -> PresenceBatch {
        let mut batch = PresenceBatch::default();
        if join {
            batch.joins.push(client.clone());
        } else {
            batch.leaves.push(client.clone());
        }
        batch
    }
}

/// One client's events in the current window, folded.
#[derive(Debug)]
struct Change {
    client: ClientInfo,
    /// In presence before the window: its first event in the window was a leave.
    before: bool,
    /// In presence now: its last event was a join.
    after: bool,
}

/// A channel's events of the current window: one entry per client (not per event), so a
/// connection looping subscribe/unsubscribe costs a constant amount here.
#[derive(Debug, Default)]
struct Pending {
    changes: Vec<Change>,
    /// Client id → index in `changes`.
    index: HashMap<Arc<str>, usize>,
}

impl Pending {
    fn add(&mut self, client: &ClientInfo, join: bool) {
        match self.index.get(&client.client) {
            Some(&i) => {
                let change = &mut self.changes[i];
                change.after = join;
                // The latest name wins (the same connection always has the same user; this
                // only matters for a broker that reuses ids).
                change.client.user = client.user.clone();
            }
            None => {
                self.index.insert(client.client.clone(), self.changes.len());
                self.changes.push(Change {
                    client: client.clone(),
                    before: !join,
                    after: join,
                });
            }
        }
    }

    /// What changed over the window; `None` when everything cancelled out.
    fn into_batch(self) -> Option<PresenceBatch> {
        let mut batch = PresenceBatch::default();
        for change in self.changes {
            match (change.before, change.after) {
                (false, true) => batch.joins.push(change.client),
                (true, false) => batch.leaves.push(change.client),
                (false, false) | (true, true) => {}
            }
        }
        (!batch.joins.is_empty() || !batch.leaves.is_empty()).then_some(batch)
    }
}

/// What the batcher and its flusher task share.
#[derive(Debug)]
struct Shared {
    pending: Mutex<HashMap<Box<str>, Pending>>,
    /// Woken by the first event of a window, and by [`Batcher`]'s drop.
    wake: Notify,
    closed: AtomicBool,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<Box<str>, Pending>> {
        // The map is consistent between statements; a panic elsewhere must not stop presence.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every channel's batch of the window, emptying the window.
    fn take(&self) -> Vec<(Box<str>, PresenceBatch)> {
        let pending = std::mem::take(&mut *self.pending());
        pending
            .into_iter()
            .filter_map(|(channel, events)| Some((channel, events.into_batch()?)))
            .collect()
    }
}

/// Folds join/leave events per channel and flushes them every window (see the module docs).
/// Dropping it ends its flusher task (events still waiting are dropped with it).
#[derive(Debug)]
pub(crate) struct Batcher {
    shared: Arc<Shared>,
    /// Whether events wait for a window; false: [`Batcher::add`] returns each as a batch.
    batching: bool,
}

impl Batcher {
    /// A batcher flushing every `window` into `sink` (channel, batch) from a task on the
    /// current tokio runtime. `sink` returns false once nobody takes batches any more (the
    /// fan-out is gone): the task ends. A zero `window`, or no runtime to run the task on,
    /// turns batching off.
    pub(crate) fn new(
        window: Duration,
        sink: impl FnMut(Box<str>, PresenceBatch) -> bool + Send + 'static,
    ) -> Batcher {
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let runtime = tokio::runtime::Handle::try_current().ok();
        let batching = match runtime {
            Some(runtime) if !window.is_zero() => {
                runtime.spawn(flush_every(window, shared.clone(), sink));
                true
            }
            Some(_) | None => false,
        };
        Batcher { shared, batching }
    }

    /// Adds `client`'s join (`true`) or leave on `channel` to the window. Returns it as a batch
    /// of its own when batching is off: the caller pushes it at once.
    pub(crate) fn add(
        &self,
        channel: &str,
        client: &ClientInfo,
        join: bool,
    ) -> Option<PresenceBatch> {
        if !self.batching {
            return Some(PresenceBatch::single(client, join));
        }
        let first = {
            let mut pending = self.shared.pending();
            let first = pending.is_empty();
            match pending.get_mut(channel) {
                Some(events) => events.add(client, join),
                None => {
                    let mut events = Pending::default();
                    events.add(client, join);
                    pending.insert(channel.into(), events);
                }
            }
            first
        };
        if first {
            // A permit is stored if the task is not waiting yet (it is flushing): it then
            // starts the next window at once, and this event is in it or in the flush.
            self.shared.wake.notify_one();
        }
        None
    }

    /// Takes the window now (tests: no waiting for the timer).
    #[cfg(test)]
    pub(crate) fn take_now(&self) -> Vec<(Box<str>, PresenceBatch)> {
        self.shared.take()
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Release);
        self.shared.wake.notify_one();
    }
}

/// The flusher task: one window after the first event, every channel's batch goes to `sink`.
async fn flush_every(
    window: Duration,
    shared: Arc<Shared>,
    mut sink: impl FnMut(Box<str>, PresenceBatch) -> bool,
) {
    loop {
        shared.wake.notified().await;
        if shared.closed.load(Acquire) {
            return;
        }
        tokio::time::sleep(window).await;
        if shared.closed.load(Acquire) {
            return;
        }
        for (channel, batch) in shared.take() {
            if !sink(channel, batch) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> ClientInfo {
        ClientInfo {
            client: id.into(),
            user: format!("user-{id}").into(),
        }
    }

    fn ids(clients: &[ClientInfo]) -> Vec<&str> {
        clients.iter().map(|c| &*c.client).collect()
    }

    #[test]
    fn a_window_reports_only_what_changed() {
        let mut pending = Pending::default();
        pending.add(&client("a"), true);
        pending.add(&client("b"), true);
        // c was present before the window and leaves.
        pending.add(&client("c"), false);
        // d comes and goes: nobody hears of it.
        pending.add(&client("d"), true);
        pending.add(&client("d"), false);
        // e was present, resubscribes: present before and after.
        pending.add(&client("e"), false);
        pending.add(&client("e"), true);
        // f loops many times and ends subscribed.
        for _ in 0..1000 {
            pending.add(&client("f"), true);
            pending.add(&client("f"), false);
        }
        pending.add(&client("f"), true);
        assert_eq!(
            pending.changes.len(),
            6,
            "one entry per client, not per event"
        );
        let batch = pending.into_batch().unwrap();
        assert_eq!(ids(&batch.joins), ["a", "b", "f"]);
        assert_eq!(ids(&batch.leaves), ["c"]);
        assert_eq!(batch.joins[0].user.as_ref(), "user-a");

        let mut pending = Pending::default();
        pending.add(&client("x"), true);
        pending.add(&client("x"), false);
        assert_eq!(pending.into_batch(), None, "all cancelled: no push");
    }

    #[tokio::test]
    async fn events_wait_for_the_window_per_channel() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let batcher = Batcher::new(Duration::from_millis(20), move |channel, batch| {
            tx.send((channel, batch)).is_ok()
        });
        assert_eq!(batcher.add("a", &client("1"), true), None);
        assert_eq!(batcher.add("a", &client("2"), true), None);
        assert_eq!(batcher.add("b", &client("1"), true), None);
        let mut flushed = Vec::new();
        for _ in 0..2 {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a flush within 5 s")
                .expect("the task is running");
            flushed.push(got);
        }
        flushed.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(&*flushed[0].0, "a");
        assert_eq!(
            ids(&flushed[0].1.joins),
            ["1", "2"],
            "one batch, both joins"
        );
        assert_eq!(&*flushed[1].0, "b");
        // A later event starts another window.
        batcher.add("a", &client("1"), false);
        let (channel, batch) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a second flush within 5 s")
            .unwrap();
        assert_eq!((&*channel, ids(&batch.leaves)), ("a", vec!["1"]));
        // Dropping the batcher ends the task (it drops the sender).
        drop(batcher);
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the task ends within 5 s");
        assert!(end.is_none());
    }

    #[test]
    fn without_a_window_each_event_is_a_batch() {
        let batcher = Batcher::new(Duration::ZERO, |_, _| true);
        let batch = batcher.add("a", &client("1"), false).unwrap();
        assert_eq!(ids(&batch.leaves), ["1"]);
        assert!(batch.joins.is_empty());
        // No runtime here either: no task could flush, so no batching.
        let batcher = Batcher::new(Duration::from_millis(100), |_, _| true);
        assert!(batcher.add("a", &client("1"), true).is_some());
    }
}
