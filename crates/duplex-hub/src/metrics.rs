//! Counters and the fan-out histogram, rendered in the Prometheus text format (`GET /metrics`).
//!
//! Hot paths add to these once per batch or per publication, never per delivery, so shared
//! cache lines are not bounced for every message sent.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use duplex_proto::MessageBudget;

/// Upper bounds (seconds) of the fan-out latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// What a connection was accepted as: the `transport` label of
/// `duplex_hub_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket over an HTTP/1.1 upgrade (plain or TLS).
    H1,
    /// A WebSocket over an HTTP/2 extended CONNECT (RFC 8441).
    H2,
    /// An `/sse` stream (Server-Sent Events, over either HTTP version).
    Sse,
}

impl Transport {
    /// Every transport, in the order `/metrics` lists them.
    const ALL: [Transport; 3] = [Transport::H1, Transport::H2, Transport::Sse];

    /// The `transport` label value.
    fn label(self) -> &'static str {
        match self {
            Transport::H1 => "h1",
            Transport::H2 => "h2",
            Transport::Sse => "sse",
        }
    }

    /// The index of its counter in [`Metrics::accepted_total`].
    fn index(self) -> usize {
        match self {
            Transport::H1 => 0,
            Transport::H2 => 1,
            Transport::Sse => 2,
        }
    }
}

/// Why the hub refused (or, for history, dropped early) what a client asked for: the `reason`
/// label of `duplex_hub_refusals_total`. The message budget's refusals are counted by the
/// budget itself ([`MessageBudget::refusals`]) and shown under `message_budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A new channel over `max_channels` (publish or subscribe).
    ChannelLimit,
    /// Publications dropped from history before their time by the `history_bytes` budget.
    HistoryBudget,
    /// `POST /api/publish` over the per-address (or per-API-key) rate.
    HttpPublishRate,
    /// Subscribe or unsubscribe over the per-connection rate.
    SubscribeRate,
    /// A new connection (`/ws` or `/sse`) over the per-address rate.
    ConnectionRate,
    /// A rate-limited request from a new address while the limiter's table was full of
    /// active ones.
    LimiterFull,
    /// A publish (WebSocket or HTTP) refused because the fan-out queues held
    /// `fanout_queue_bytes` already (`overloaded`, HTTP 503).
    FanoutQueue,
    /// A presence push (a window of joins and leaves) dropped because the fan-out queues held
    /// `fanout_queue_bytes` already: presence pushes are best effort.
    FanoutQueuePresence,
}

impl Reason {
    /// Every reason counted here, in the order `/metrics` lists them.
    const ALL: [Reason; 8] = [
        Reason::ChannelLimit,
        Reason::HistoryBudget,
        Reason::HttpPublishRate,
        Reason::SubscribeRate,
        Reason::ConnectionRate,
        Reason::LimiterFull,
        Reason::FanoutQueue,
        Reason::FanoutQueuePresence,
    ];

    /// The `reason` label value.
    fn label(self) -> &'static str {
        match self {
            Reason::ChannelLimit => "channel_limit",
            Reason::HistoryBudget => "history_budget",
            Reason::HttpPublishRate => "http_publish_rate",
            Reason::SubscribeRate => "subscribe_rate",
            Reason::ConnectionRate => "connection_rate",
            Reason::LimiterFull => "limiter_full",
            Reason::FanoutQueue => "fanout_queue",
            Reason::FanoutQueuePresence => "fanout_queue_presence",
        }
    }

    /// The index of its counter in [`Metrics::refusals`].
    fn index(self) -> usize {
        match self {
            Reason::ChannelLimit => 0,
            Reason::HistoryBudget => 1,
            Reason::HttpPublishRate => 2,
            Reason::SubscribeRate => 3,
            Reason::ConnectionRate => 4,
            Reason::LimiterFull => 5,
            Reason::FanoutQueue => 6,
            Reason::FanoutQueuePresence => 7,
        }
    }
}

/// The hub's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections: AtomicI64,
    /// Connections accepted, by [`Transport::index`] (`connections_total{transport}`).
    accepted_total: [AtomicU64; Transport::ALL.len()],
    /// Open `/sse` streams.
    pub(crate) sse_streams: AtomicI64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) subscriptions: AtomicI64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) publishes: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) http_requests: AtomicU64,
    pub(crate) command_errors: AtomicU64,
    /// Events queued for the fan-out threads and not yet fanned out.
    pub(crate) fanout_queued: AtomicI64,
    /// What those events hold, in bytes, as `fanout_queue_bytes` counts it (see fanout.rs).
    pub(crate) fanout_queued_bytes: AtomicI64,
    fanout: Histogram,
    /// Channels the memory broker holds.
    pub(crate) channels: AtomicI64,
    /// Bytes charged for the memory broker's history.
    pub(crate) history_bytes: AtomicI64,
    /// By [`Reason::index`] (`refusals_total{reason}`).
    refusals: [AtomicU64; Reason::ALL.len()],
    /// The WebSocket message budget every hub connection shares, once the hub made it.
    pub(crate) message_budget: OnceLock<MessageBudget>,
    // --- Broker (RedisBroker; MemoryBroker leaves them at zero) ---
    /// Broker commands that failed (connection errors, timeouts, server errors).
    pub(crate) broker_errors: AtomicU64,
    /// Broker connections re-established after a loss (command and pub/sub).
    pub(crate) broker_reconnects: AtomicU64,
    /// Publications this node missed on pub/sub and read back from history.
    pub(crate) broker_gaps_filled: AtomicU64,
    /// Publications this node missed that history no longer held (signalled as gaps).
    pub(crate) broker_gaps_lost: AtomicU64,
    broker_round_trip: Histogram,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Metrics {
    /// Counts a connection accepted as `transport` (a WebSocket, or an `/sse` stream).
    pub(crate) fn accepted(&self, transport: Transport) {
        self.accepted_total[transport.index()].fetch_add(1, Relaxed);
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> i64 {
        self.connections.load(Relaxed)
    }

    /// Open `/sse` streams.
    pub fn sse_streams(&self) -> i64 {
        self.sse_streams.load(Relaxed)
    }

    /// Active subscriptions.
    pub fn subscriptions(&self) -> i64 {
        self.subscriptions.load(Relaxed)
    }

    /// Publications accepted.
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Relaxed)
    }

    /// Pushes queued to subscribers.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Relaxed)
    }

    /// Connections closed as slow consumers.
    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.slow_consumers.load(Relaxed)
    }

    /// Pushes dropped because their queue overflowed.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Counts one refusal for `reason`.
    pub(crate) fn refused(&self, reason: Reason) {
        self.refused_n(reason, 1);
    }

    /// Counts `n` refusals for `reason`.
    pub(crate) fn refused_n(&self, reason: Reason, n: u64) {
        self.refusals[reason.index()].fetch_add(n, Relaxed);
    }

    /// Refusals counted under the `reason` label of `duplex_hub_refusals_total`
    /// (`channel_limit`, `history_budget`, `http_publish_rate`, `subscribe_rate`,
    /// `connection_rate`, `limiter_full`, `fanout_queue`, `fanout_queue_presence`,
    /// `message_budget`); `None` for another label.
    pub fn refusals(&self, reason: &str) -> Option<u64> {
        if reason == "message_budget" {
            return Some(self.message_budget.get().map_or(0, MessageBudget::refusals));
        }
        Reason::ALL
            .iter()
            .find(|r| r.label() == reason)
            .map(|r| self.refusals[r.index()].load(Relaxed))
    }

    /// Events waiting for a fan-out thread (publications, presence windows, and the shares of
    /// large channels handed between threads).
    pub fn fanout_queued(&self) -> i64 {
        self.fanout_queued.load(Relaxed)
    }

    /// Bytes those events hold, as the `fanout_queue_bytes` bound counts them.
    pub fn fanout_queued_bytes(&self) -> i64 {
        self.fanout_queued_bytes.load(Relaxed)
    }

    /// Channels the memory broker holds (0 with another broker).
    pub fn channels(&self) -> i64 {
        self.channels.load(Relaxed)
    }

    /// Bytes charged for the memory broker's history: publication data plus
    /// [`MemoryBroker::PER_PUBLICATION`](crate::MemoryBroker::PER_PUBLICATION) each (0 with another broker).
    pub fn history_bytes(&self) -> i64 {
        self.history_bytes.load(Relaxed)
    }

    /// Bytes partly received WebSocket messages hold now against the message budget.
    pub fn message_budget_held(&self) -> usize {
        self.message_budget.get().map_or(0, MessageBudget::held)
    }

    /// The budgets' gauges and the refusal counters, in the Prometheus text format.
    fn render_budgets(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP duplex_hub_refusals_total Requests refused by a budget or rate limit, by reason (history_budget: publications dropped from history early by the byte budget; fanout_queue_presence: presence pushes dropped while the fan-out queues were full; message_budget: connections closed with 1009/1013).\n# TYPE duplex_hub_refusals_total counter"
        );
        for reason in Reason::ALL {
            let _ = writeln!(
                out,
                "duplex_hub_refusals_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.refusals[reason.index()].load(Relaxed)
            );
        }
        let budget = self.message_budget.get();
        let _ = writeln!(
            out,
            "duplex_hub_refusals_total{{reason=\"message_budget\"}} {}",
            budget.map_or(0, MessageBudget::refusals)
        );
        for (name, help, value) in [
            (
                "channels",
                "Channels the memory broker holds (offsets, history, presence).",
                self.channels.load(Relaxed),
            ),
            (
                "history_bytes",
                "Bytes charged for the memory broker's history (data plus bookkeeping per publication).",
                self.history_bytes.load(Relaxed),
            ),
            (
                "message_budget_bytes",
                "Bytes partly received WebSocket messages hold against the message budget.",
                budget.map_or(0, |b| b.held() as i64),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP duplex_hub_{name} {help}\n# TYPE duplex_hub_{name} gauge\nduplex_hub_{name} {value}"
            );
        }
    }

    /// Records how long queueing one publication to every local subscriber took.
    pub(crate) fn observe_fanout(&self, elapsed: Duration, deliveries: usize) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| secs <= le) {
            self.fanout.buckets[i].fetch_add(1, Relaxed);
        }
        self.fanout.count.fetch_add(1, Relaxed);
        self.fanout
            .sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
        self.deliveries.fetch_add(deliveries as u64, Relaxed);
    }

    /// Records one broker command's round trip.
    pub(crate) fn observe_broker_round_trip(&self, elapsed: Duration) {
        self.broker_round_trip.observe(elapsed);
    }

    /// Broker commands that failed.
    pub fn broker_errors(&self) -> u64 {
        self.broker_errors.load(Relaxed)
    }

    /// Broker connections re-established.
    pub fn broker_reconnects(&self) -> u64 {
        self.broker_reconnects.load(Relaxed)
    }

    /// Publications missed on pub/sub and filled from history.
    pub fn broker_gaps_filled(&self) -> u64 {
        self.broker_gaps_filled.load(Relaxed)
    }

    /// Publications missed and lost (signalled to subscribers as gaps).
    pub fn broker_gaps_lost(&self) -> u64 {
        self.broker_gaps_lost.load(Relaxed)
    }

    /// The broker's metrics, in the Prometheus text format.
    fn render_broker(&self, out: &mut String) {
        let c = |a: &AtomicU64| a.load(Relaxed);
        for (name, help, value) in [
            (
                "broker_errors_total",
                "Broker commands that failed (connection errors, timeouts, server errors).",
                c(&self.broker_errors),
            ),
            (
                "broker_reconnects_total",
                "Broker connections re-established after a loss.",
                c(&self.broker_reconnects),
            ),
            (
                "broker_gaps_filled_total",
                "Publications missed on the broker's pub/sub and read back from history.",
                c(&self.broker_gaps_filled),
            ),
            (
                "broker_gaps_lost_total",
                "Publications missed that history no longer held (signalled to subscribers as gaps).",
                c(&self.broker_gaps_lost),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP duplex_hub_{name} {help}\n# TYPE duplex_hub_{name} counter\nduplex_hub_{name} {value}"
            );
        }
        self.broker_round_trip.render(
            out,
            "duplex_hub_broker_round_trip_seconds",
            "Round trip of one broker command (a publish is one).",
        );
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP duplex_hub_{name} {help}\n# TYPE duplex_hub_{name} {kind}\nduplex_hub_{name} {value}"
            );
        };
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        let g = |a: &AtomicI64| a.load(Relaxed).to_string();
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            g(&self.connections),
        );
        // One counter family, labelled by transport.
        let _ = writeln!(
            out,
            "# HELP duplex_hub_connections_total Connections accepted, by transport (h1: WebSocket over HTTP/1.1, h2: WebSocket over HTTP/2, sse: /sse streams).\n# TYPE duplex_hub_connections_total counter"
        );
        for transport in Transport::ALL {
            let _ = writeln!(
                out,
                "duplex_hub_connections_total{{transport=\"{}\"}} {}",
                transport.label(),
                c(&self.accepted_total[transport.index()]),
            );
        }
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP duplex_hub_{name} {help}\n# TYPE duplex_hub_{name} {kind}\nduplex_hub_{name} {value}"
            );
        };
        metric(
            "sse_streams",
            "gauge",
            "Open /sse streams (Server-Sent Events subscribers).",
            g(&self.sse_streams),
        );
        metric(
            "connections_refused_total",
            "counter",
            "WebSocket upgrades refused (auth, origin, connection limit).",
            c(&self.connections_refused),
        );
        metric(
            "subscriptions",
            "gauge",
            "Active channel subscriptions.",
            g(&self.subscriptions),
        );
        metric(
            "messages_in_total",
            "counter",
            "WebSocket messages received from clients.",
            c(&self.messages_in),
        );
        metric(
            "bytes_in_total",
            "counter",
            "Payload bytes of WebSocket messages received from clients.",
            c(&self.bytes_in),
        );
        metric(
            "messages_out_total",
            "counter",
            "WebSocket messages sent to clients (pushes and replies).",
            c(&self.messages_out),
        );
        metric(
            "bytes_out_total",
            "counter",
            "Frame bytes of WebSocket messages sent to clients (uncompressed size).",
            c(&self.bytes_out),
        );
        metric(
            "publishes_total",
            "counter",
            "Publications accepted (WebSocket and HTTP).",
            c(&self.publishes),
        );
        metric(
            "deliveries_total",
            "counter",
            "Pushes queued to subscribers (publications and presence events).",
            c(&self.deliveries),
        );
        metric(
            "slow_consumer_disconnects_total",
            "counter",
            "Connections closed with 1013 because their outbound queue overflowed.",
            c(&self.slow_consumers),
        );
        metric(
            "dropped_messages_total",
            "counter",
            "Pushes discarded because their connection's queue overflowed.",
            c(&self.dropped),
        );
        metric(
            "http_requests_total",
            "counter",
            "HTTP requests served (not counting WebSocket upgrades).",
            c(&self.http_requests),
        );
        metric(
            "command_errors_total",
            "counter",
            "WebSocket commands answered with an error.",
            c(&self.command_errors),
        );
        metric(
            "fanout_queued",
            "gauge",
            "Publications and presence events waiting for a fan-out thread.",
            g(&self.fanout_queued),
        );
        metric(
            "fanout_queued_bytes",
            "gauge",
            "Bytes the events waiting for a fan-out thread hold (bounded by fanout_queue_bytes).",
            g(&self.fanout_queued_bytes),
        );
        let name = "duplex_hub_fanout_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to queue one publication or presence event to every local subscriber.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (le, bucket) in BUCKETS.iter().zip(&self.fanout.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.fanout.count.load(Relaxed);
        let sum = self.fanout.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        self.render_budgets(&mut out);
        self.render_broker(&mut out);
        out
    }
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (le, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_fanout(Duration::from_micros(3), 10);
        m.observe_fanout(Duration::from_millis(2), 10);
        m.observe_fanout(Duration::from_secs(10), 10);
        let text = m.render();
        assert!(text.contains("duplex_hub_fanout_seconds_bucket{le=\"0.00001\"} 1\n"));
        assert!(text.contains("duplex_hub_fanout_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("duplex_hub_fanout_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("duplex_hub_fanout_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("duplex_hub_fanout_seconds_count 3\n"));
        assert!(text.contains("duplex_hub_deliveries_total 30\n"));
        m.fanout_queued.fetch_add(2, Relaxed);
        m.fanout_queued_bytes.fetch_add(300, Relaxed);
        let text = m.render();
        assert!(text.contains("duplex_hub_fanout_queued 2\n"));
        assert!(text.contains("duplex_hub_fanout_queued_bytes 300\n"));
    }

    #[test]
    fn refusals_are_rendered_by_reason() {
        let m = Metrics::default();
        m.refused(Reason::SubscribeRate);
        m.refused_n(Reason::HistoryBudget, 3);
        m.refused(Reason::FanoutQueue);
        m.channels.fetch_add(2, Relaxed);
        let text = m.render();
        assert!(text.contains("duplex_hub_refusals_total{reason=\"subscribe_rate\"} 1\n"));
        assert!(text.contains("duplex_hub_refusals_total{reason=\"history_budget\"} 3\n"));
        assert!(text.contains("duplex_hub_refusals_total{reason=\"message_budget\"} 0\n"));
        assert!(text.contains("duplex_hub_refusals_total{reason=\"fanout_queue\"} 1\n"));
        assert!(text.contains("duplex_hub_refusals_total{reason=\"fanout_queue_presence\"} 0\n"));
        assert!(text.contains("duplex_hub_channels 2\n"));
        assert_eq!(m.refusals("subscribe_rate"), Some(1));
        assert_eq!(m.refusals("message_budget"), Some(0));
        assert_eq!(m.refusals("nonsense"), None);
        for reason in Reason::ALL {
            assert_eq!(Reason::ALL[reason.index()], reason);
        }
    }

    #[test]
    fn broker_metrics_are_rendered() {
        let m = Metrics::default();
        m.observe_broker_round_trip(Duration::from_micros(300));
        m.broker_gaps_filled.fetch_add(4, Relaxed);
        let text = m.render();
        assert!(text.contains("duplex_hub_broker_round_trip_seconds_bucket{le=\"0.0001\"} 0\n"));
        assert!(text.contains("duplex_hub_broker_round_trip_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("duplex_hub_broker_round_trip_seconds_count 1\n"));
        assert!(text.contains("duplex_hub_broker_gaps_filled_total 4\n"));
        assert!(text.contains("duplex_hub_broker_gaps_lost_total 0\n"));
    }
}
