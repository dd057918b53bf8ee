//! Which end of the connection we are, and the rules that follow from it (RFC 6455 section 5.1, 5.3).

/// The side of the connection this endpoint plays.
///
/// A client masks every frame it sends and requires unmasked frames from the server; a server
/// does the opposite. Receiving a frame with the wrong mask bit fails the connection with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The endpoint that sent the opening handshake request.
    Client,
    /// The endpoint that answered it.
    Server,
}

impl Role {
    /// Whether frames sent by this role carry a masking key.
    pub const fn masks_outgoing(self) -> bool {
        matches!(self, Role::Client)
    }

    /// Whether frames received by this role must carry a masking key.
    pub const fn requires_masked_incoming(self) -> bool {
        matches!(self, Role::Server)
    }
}
