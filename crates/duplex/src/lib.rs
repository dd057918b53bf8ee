//! # duplex
//!
//! WebSocket client and server for tokio, driving the sans-IO [`duplex_proto`] core.
