//! Random identifiers: a broker's stream epochs and the hub's client ids.
//!
//! Both are 16 lowercase hex digits (64 bits) from the operating system's random source, so a
//! client cannot guess another client's id, and an epoch from before a restart is not reused.

/// A new stream epoch: names one life of a channel's offsets (see [`crate::StreamPosition`]).
pub(crate) fn epoch() -> String {
    random_hex()
}

/// A new client id: names one connection in presence (`"client"`).
pub(crate) fn client_id() -> std::sync::Arc<str> {
    random_hex().into()
}

/// 8 random bytes as hex. Should the OS source fail (it does not on supported systems), the
/// clock's nanoseconds still make a restart's epoch differ from the one before.
fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_sixteen_hex_digits_and_differ() {
        let ids: HashSet<String> = (0..1000)
            .map(|i| {
                if i % 2 == 0 {
                    epoch()
                } else {
                    client_id().to_string()
                }
            })
            .collect();
        assert_eq!(ids.len(), 1000, "1000 draws of 64 random bits repeated one");
        for id in &ids {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }
}
