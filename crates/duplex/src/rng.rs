//! Randomness from the operating system: masking keys (RFC 6455 section 5.3) and handshake keys
//! (section 4.1).
//!
//! Clients mask every frame with a fresh, unpredictable 4-byte key. Asking the kernel for 4
//! bytes per frame would cost one syscall per frame, so keys come from a thread-local pool
//! refilled 256 bytes at a time.

use std::cell::RefCell;

const POOL_SIZE: usize = 256;

struct Pool {
    bytes: [u8; POOL_SIZE],
    pos: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { bytes: [0; POOL_SIZE], pos: POOL_SIZE })
    };
}

/// A masking key from the operating system's generator, for
/// [`Connection::set_mask_key_source`](duplex_proto::Connection::set_mask_key_source).
///
/// # Panics
///
/// If the operating system's random generator fails, which leaves no safe way to mask.
pub(crate) fn mask_key() -> [u8; 4] {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.pos + 4 > POOL_SIZE {
            getrandom::fill(&mut pool.bytes).expect("the OS random generator failed");
            pool.pos = 0;
        }
        let pos = pool.pos;
        pool.pos += 4;
        let mut key = [0; 4];
        key.copy_from_slice(&pool.bytes[pos..pos + 4]);
        // Never hand out the same bytes twice.
        pool.bytes[pos..pos + 4].fill(0);
        key
    })
}

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
    fn mask_keys_vary_across_refills() {
        let keys: Vec<[u8; 4]> = (0..200).map(|_| mask_key()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        // 200 draws of 32 random bits: a collision is astronomically unlikely.
        assert_eq!(distinct.len(), keys.len());
    }
}
