//! # duplex-proto
//!
//! The WebSocket protocol (RFC 6455) and permessage-deflate (RFC 7692) as a sans-IO state
//! machine: bytes in, events out; commands in, bytes out. No sockets, no async runtime, no clock
//! (time is passed in: [`Connection::poll_timeout`] / [`Connection::handle_timeout`]), and no
//! randomness but a client's masking keys (from the operating system by default, RFC 6455
//! section 5.3), so the same input always gives the same output and every rule can be tested
//! without a network.
#![doc = include_str!("../DESIGN.md")]

pub mod budget;
pub mod close;
pub mod config;
pub mod connection;
pub mod error;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod role;
pub mod utf8;

pub use budget::MessageBudget;
pub use close::{CloseCode, CloseFrame};
pub use config::{Config, Timers};
pub use connection::{
    Connection, Event, MaskKeySource, PreparedMessage, SharedConfig, State, Transmit, os_mask_key,
};
pub use error::{Error, ProtocolError, UsageError};
pub use frame::OpCode;
pub use message::{DataKind, Message, Utf8Bytes};
pub use role::Role;
