//! Errors, split by who is to blame.
//!
//! - [`ProtocolError`]: the peer broke RFC 6455 / RFC 7692. Each maps to exactly one close code
//!   ([`ProtocolError::close_code`]), and the [`Connection`](crate::Connection) has already queued
//!   that Close frame when it returns the error.
//! - [`UsageError`]: the caller asked for something the protocol does not allow. Nothing is sent.

use std::fmt;

use crate::close::CloseCode;

/// The peer violated the protocol. The connection is failed (RFC 6455 section 7.1.7).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A client sent an unmasked frame (section 5.1).
    UnmaskedFrame,
    /// A server sent a masked frame (section 5.1).
    MaskedFrame,
    /// RSV1, RSV2 or RSV3 was set without an extension that defines it (section 5.2).
    ReservedBits(u8),
    /// An opcode reserved for future use (0x3-0x7, 0xB-0xF) (section 5.2).
    ReservedOpcode(u8),
    /// A 64-bit payload length with its most significant bit set (section 5.2).
    InvalidLength,
    /// A control frame with FIN clear (section 5.5).
    FragmentedControlFrame,
    /// A control frame with more than 125 bytes of payload (section 5.5).
    ControlFrameTooLong(u64),
    /// A continuation frame with no message in progress (section 5.4).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message was in progress (section 5.4).
    ExpectedContinuation,
    /// A text message, or a close reason, that is not UTF-8 (section 8.1).
    InvalidUtf8,
    /// A close frame with a 1-byte payload (section 5.5.1).
    InvalidClosePayload,
    /// A close frame with a code that must not appear on the wire (section 7.4).
    InvalidCloseCode(u16),
    /// A frame larger than the configured `max_frame_size`.
    FrameTooLarge {
        /// Declared payload length.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message larger than the configured `max_message_size` (counted after inflating).
    MessageTooLarge {
        /// Size reached so far.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A compressed payload that does not inflate (RFC 7692 section 6.2).
    InvalidCompressedData,
    /// The message in progress would hold more than the shared
    /// [`MessageBudget`](crate::MessageBudget) has left (see [`crate::budget`]): 1009 when it
    /// alone is larger than the whole budget, else 1013 (try again later).
    OverBudget {
        /// Bytes the message would hold of the budget (what it holds past
        /// [`UNCHARGED`](crate::budget::UNCHARGED)).
        size: u64,
        /// The whole budget.
        budget: usize,
    },
    /// RSV1 on a control frame or on a continuation frame (RFC 7692 section 6).
    CompressedControlOrContinuation,
}

impl ProtocolError {
    /// The close code the connection is failed with (RFC 6455 section 7.4.1).
    pub fn close_code(&self) -> CloseCode {
        // Exhaustive on purpose: a new variant must choose its code here.
        match self {
            ProtocolError::UnmaskedFrame
            | ProtocolError::MaskedFrame
            | ProtocolError::ReservedBits(_)
            | ProtocolError::ReservedOpcode(_)
            | ProtocolError::InvalidLength
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::ControlFrameTooLong(_)
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::InvalidClosePayload
            | ProtocolError::InvalidCloseCode(_)
            | ProtocolError::CompressedControlOrContinuation => CloseCode::PROTOCOL_ERROR,
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            ProtocolError::OverBudget { size, budget } => {
                if *size > *budget as u64 {
                    CloseCode::MESSAGE_TOO_BIG
                } else {
                    CloseCode::TRY_AGAIN_LATER
                }
            }
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnmaskedFrame => f.write_str("client frame is not masked"),
            ProtocolError::MaskedFrame => f.write_str("server frame is masked"),
            ProtocolError::ReservedBits(bits) => write!(f, "reserved bits set: {bits:#05b}"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::InvalidLength => {
                f.write_str("64-bit payload length has its high bit set")
            }
            ProtocolError::FragmentedControlFrame => f.write_str("fragmented control frame"),
            ProtocolError::ControlFrameTooLong(n) => {
                write!(f, "control frame payload of {n} bytes (max 125)")
            }
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame without a message in progress")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new message started before the previous one finished")
            }
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 in text"),
            ProtocolError::InvalidClosePayload => f.write_str("close frame payload of 1 byte"),
            ProtocolError::InvalidCloseCode(c) => {
                write!(f, "close code {c} is not allowed on the wire")
            }
            ProtocolError::FrameTooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the limit of {max}")
            }
            ProtocolError::MessageTooLarge { size, max } => {
                write!(f, "message of {size}+ bytes exceeds the limit of {max}")
            }
            ProtocolError::InvalidCompressedData => {
                f.write_str("compressed payload does not inflate")
            }
            ProtocolError::OverBudget { size, budget } => write!(
                f,
                "message of {size}+ bytes does not fit the budget of {budget} for partial messages"
            ),
            ProtocolError::CompressedControlOrContinuation => {
                f.write_str("RSV1 set on a control or continuation frame")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The caller asked for something the protocol does not allow. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// The connection is closing or closed; no more data may be sent.
    Closed,
    /// A control frame payload (ping, pong, close code + reason) over 125 bytes.
    ControlPayloadTooLong(usize),
    /// A close code that may not be sent (1005, 1006, 1015, reserved ranges).
    InvalidCloseCode(u16),
    /// A whole message was sent while a fragmented one is still open, or a fragment continued
    /// a message of the other kind, or continued nothing.
    FragmentOrder,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::Closed => f.write_str("connection is closing or closed"),
            UsageError::ControlPayloadTooLong(n) => {
                write!(f, "control payload of {n} bytes (max 125)")
            }
            UsageError::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            UsageError::FragmentOrder => f.write_str("fragments out of order"),
        }
    }
}

impl std::error::Error for UsageError {}

/// Any error from [`Connection`](crate::Connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The peer broke the protocol; the matching Close frame is queued.
    Protocol(ProtocolError),
    /// The caller broke the call protocol; nothing was sent.
    Usage(UsageError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Usage(e) => write!(f, "usage error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Protocol(e) => Some(e),
            Error::Usage(e) => Some(e),
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Self {
        Error::Usage(e)
    }
}
