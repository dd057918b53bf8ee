//! [`HubState`]: what every connection of one hub shares (configuration, broker, fan-out,
//! metrics, the shutdown signal and the registry of open sessions).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use duplex::WebSocketOptions;
use duplex_proto::extensions::deflate::DeflateConfig;
use tokio::sync::watch;

use crate::broker::{Broker, BrokerError};
use crate::config::HubConfig;
use crate::fanout::Fanout;
use crate::limit::AddressLimiter;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct HubState {
    pub(crate) config: HubConfig,
    pub(crate) broker: Arc<dyn Broker>,
    /// Set once [`Broker::start`] succeeded (server.rs retries it until then).
    pub(crate) broker_started: AtomicBool,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The outboxes of open WebSocket sessions, closed on shutdown.
    pub(crate) sessions: Mutex<HashMap<u64, Arc<Outbox>>>,
    /// Open WebSocket connections, for `max_connections`.
    pub(crate) websockets: AtomicUsize,
    pub(crate) next_conn: AtomicU64,
    /// The WebSocket settings, kept once for every connection (each `Connection` shares them).
    pub(crate) ws_config: duplex_proto::SharedConfig,
    pub(crate) ws_options: WebSocketOptions,
    pub(crate) deflate: Option<DeflateConfig>,
    /// `POST /api/publish` per client address or API key (`None`: no limit).
    pub(crate) http_publish_limit: Option<AddressLimiter>,
    /// New `/ws` and `/sse` connections per client address (`None`: no limit).
    pub(crate) connection_limit: Option<AddressLimiter>,
}

/// Keeps the open-WebSocket count (`max_connections`) while a connection lives.
#[derive(Debug)]
pub(crate) struct WebSocketSlot(Arc<HubState>);

impl WebSocketSlot {
    /// Takes a slot; the count before it was taken.
    pub(crate) fn take(hub: &Arc<HubState>) -> (WebSocketSlot, usize) {
        let open = hub.websockets.fetch_add(1, Ordering::Relaxed);
        (WebSocketSlot(hub.clone()), open)
    }
}

impl Drop for WebSocketSlot {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a WebSocket connection holds until it ends: its slot, and a sender of the hub's
/// graceful wait (which ends when the last one is dropped).
pub(crate) type ConnectionGuard = (WebSocketSlot, tokio::sync::mpsc::Sender<()>);

impl HubState {
    /// The broker, once it started; before that, [`BrokerError::Unavailable`] (commands get
    /// `broker_unavailable`, the HTTP API 503).
    pub(crate) fn broker(&self) -> Result<&dyn Broker, BrokerError> {
        if self.broker_started.load(Ordering::Acquire) {
            Ok(&*self.broker)
        } else {
            Err(BrokerError::Unavailable(
                "not connected yet (the hub keeps trying)".to_owned(),
            ))
        }
    }

    /// Whether the hub can serve broker commands now: started and reaching its backend
    /// (`/healthz`).
    pub(crate) fn broker_ready(&self) -> bool {
        self.broker_started.load(Ordering::Acquire) && self.broker.is_available()
    }

    /// Registers a session's outbox so shutdown reaches it. Returns false if the hub is
    /// already shutting down (the session should close at once).
    pub(crate) fn register_session(&self, conn: u64, outbox: &Arc<Outbox>) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(conn, outbox.clone());
        // Registered first, checked second: either this sees the flag or the shutdown task
        // sees the registration.
        !*self.shutdown.borrow()
    }

    pub(crate) fn unregister_session(&self, conn: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&conn);
    }
}
