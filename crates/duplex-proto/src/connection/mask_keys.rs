//! Where a client's masking keys come from (RFC 6455 section 5.3: "unpredictable").
//!
//! By default, from the operating system's generator: asking the kernel for 4 bytes per frame
//! would cost a system call per frame, so keys come from a thread-local pool refilled 256 bytes
//! at a time. The only other built-in source is a deterministic sequence that a test must ask
//! for by name.

use std::cell::RefCell;

/// Where a client's masking keys come from: a function returning a fresh key per call.
///
/// The default is [`os_mask_key`]; set another with
/// [`Connection::set_mask_key_source`](super::Connection::set_mask_key_source).
pub type MaskKeySource = fn() -> [u8; 4];

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

/// A masking key from the operating system's generator (the default [`MaskKeySource`]).
///
/// # Panics
///
/// If the operating system's random generator fails, which leaves no safe way to mask.
pub fn os_mask_key() -> [u8; 4] {
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

/// Predictable keys, for tests that compare wire bytes across runs: a SplitMix64 walk shared by
/// every connection using it. Never for a client on the open web.
pub(super) fn deterministic_mask_key() -> [u8; 4] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let bytes = (z ^ (z >> 31)).to_le_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_keys_vary_across_refills() {
        let keys: Vec<[u8; 4]> = (0..200).map(|_| os_mask_key()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        // 200 draws of 32 random bits: a collision is astronomically unlikely (~5e-6).
        assert_eq!(distinct.len(), keys.len());
    }
}
