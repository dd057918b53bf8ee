//! Extension negotiation (RFC 6455 section 9).
