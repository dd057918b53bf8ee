//! Randomness from the operating system for the opening handshake's `Sec-WebSocket-Key`
//! (RFC 6455 section 4.1). Masking keys (section 5.3) come from duplex-proto's own OS-backed
//! pool ([`duplex_proto::os_mask_key`]), the default of every client `Connection`.

/// 16 random bytes for the `Sec-WebSocket-Key` header.
pub(crate) fn handshake_key() -> std::io::Result<[u8; 16]> {
    let mut key = [0; 16];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_keys_differ() {
        assert_ne!(handshake_key().unwrap(), handshake_key().unwrap());
    }
}
