//! A shutdown signal that costs nothing to poll while it has not fired.
//!
//! Every connection task waits for it beside its socket, so it is polled on every wake-up of
//! every connection. `tokio::sync::watch` takes a lock and re-registers on each poll (about 180
//! instructions per echoed message in the echo benchmark); this checks an atomic and keeps the
//! waker it registered the first time, re-registering only if the task's waker changed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
struct Inner {
    fired: AtomicBool,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
}

/// The sending side: [`Shutdown::fire`] wakes every [`Listener`].
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// A future that completes once the signal fires.
    pub fn listen(&self) -> Listener {
        Listener {
            inner: self.inner.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }

    /// Fires the signal: every listener, present and future, completes.
    pub fn fire(&self) {
        self.inner.fired.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut map = self
                .inner
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.drain().map(|(_, waker)| waker).collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Completes when the [`Shutdown`] it came from fires.
#[derive(Debug)]
pub struct Listener {
    inner: Arc<Inner>,
    id: u64,
    registered: Option<Waker>,
}

impl Future for Listener {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.id, waker.clone());
        self.registered = Some(waker);
        // Fired between the first check and the registration: `fire` may have drained already.
        if self.inner.fired.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.inner
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_every_listener_and_forgets_dropped_ones() {
        let shutdown = Shutdown::new();
        let waiting: Vec<_> = (0..10).map(|_| tokio::spawn(shutdown.listen())).collect();
        let dropped = shutdown.listen();
        let mut dropped = Box::pin(dropped);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(dropped.as_mut().poll(&mut cx).is_pending());
        drop(dropped);
        tokio::task::yield_now().await;
        assert_eq!(shutdown.inner.wakers.lock().unwrap().len(), 10);
        shutdown.fire();
        for task in waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .unwrap()
                .unwrap();
        }
        // A listener made after the fact completes at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), shutdown.listen())
            .await
            .unwrap();
    }
}
