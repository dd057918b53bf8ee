//! Payload masking (RFC 6455 section 5.3).
//!
//! Masking XORs every payload byte with `key[i % 4]`, so applying it twice is the identity.
//! [`apply_mask`] is the entry point; [`apply_mask_scalar`] is the byte-by-byte reference the fast
//! paths are tested against for every length and offset.
//!
//! The fast path XORs 32-byte blocks with a 32-byte key, a loop the compiler turns into vector
//! instructions. Built for baseline x86-64 that means SSE2 (16 bytes at a time); on x86-64 the
//! same loop is also compiled with AVX2 enabled and chosen at run time when the CPU has it. That
//! choice is the only `unsafe` in the crate: calling a function compiled for a CPU feature is
//! sound only once the feature was detected.

/// XORs `buf` with the masking `key`, as if `buf` started `offset` bytes into the payload.
///
/// `offset` lets a frame's payload be unmasked piece by piece as it arrives.
///
/// ```
/// use duplex_proto::mask::apply_mask;
/// let key = [1, 2, 3, 4];
/// let mut data = *b"hello world";
/// apply_mask(&mut data, key, 0);
/// assert_ne!(&data, b"hello world");
/// // Unmask in two pieces: the second starts 5 bytes into the payload.
/// let (a, b) = data.split_at_mut(5);
/// apply_mask(a, key, 0);
/// apply_mask(b, key, 5);
/// assert_eq!(&data, b"hello world");
/// ```
#[inline(always)]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < 128 {
        // Short payloads (the common case): building the 32-byte key costs more than it saves.
        return apply_mask_words(buf, rotate_key(key, offset));
    }
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= 256 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: `apply_mask_avx2` only requires AVX2, which was just detected on this CPU.
        #[expect(
            unsafe_code,
            reason = "calls a target_feature function; AVX2 was detected"
        )]
        unsafe {
            return apply_mask_avx2(buf, key, offset);
        }
    }
    apply_mask_blocks(buf, key, offset);
}

/// [`apply_mask`] for a whole payload (offset 0), inlined where short payloads are the rule:
/// no key rotation, and the short cases without a call.
///
/// ```
/// use duplex_proto::mask::{apply_mask, apply_mask_from_start};
/// let key = [9, 8, 7, 6];
/// let mut a = *b"twenty bytes of text";
/// let mut b = a;
/// apply_mask_from_start(&mut a, key);
/// apply_mask(&mut b, key, 0);
/// assert_eq!(a, b);
/// ```
#[inline]
pub fn apply_mask_from_start(buf: &mut [u8], key: [u8; 4]) {
    if buf.len() < 128 {
        return apply_mask_words(buf, key);
    }
    apply_mask(buf, key, 0);
}

/// [`apply_mask_blocks`] compiled with AVX2: 32 bytes per instruction instead of 16.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[expect(
    unsafe_code,
    reason = "a target_feature function is unsafe to call: callers check AVX2 first"
)]
unsafe fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
    apply_mask_blocks(buf, key, offset);
}

/// The byte-by-byte reference implementation.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(i + offset) & 3];
    }
}

/// Eight bytes at a time, then four, then the last bytes one by one, for a payload that starts
/// at a multiple of 4 bytes into the masking (callers rotate the key to where it starts).
#[inline]
fn apply_mask_words(buf: &mut [u8], key: [u8; 4]) {
    let len = buf.len();
    let k32 = u32::from_ne_bytes(key);
    let k64 = (u64::from(k32) << 32) | u64::from(k32);
    let mut i = 0;
    while i + 8 <= len {
        let word: [u8; 8] = buf[i..i + 8].try_into().expect("8 bytes");
        buf[i..i + 8].copy_from_slice(&(u64::from_ne_bytes(word) ^ k64).to_ne_bytes());
        i += 8;
    }
    if i + 4 <= len {
        let word: [u8; 4] = buf[i..i + 4].try_into().expect("4 bytes");
        buf[i..i + 4].copy_from_slice(&(u32::from_ne_bytes(word) ^ k32).to_ne_bytes());
        i += 4;
    }
    // At most 3 bytes left, starting at a multiple of 4: the key from its first byte.
    for (byte, k) in buf[i..].iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// 32-byte blocks against a 32-byte key rotated to `offset`: every block starts a multiple of 4
/// bytes after `buf[0]`, so one key fits all. Inlined into both callers so each is vectorized
/// for its own target features.
#[inline(always)]
fn apply_mask_blocks(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let rotated = rotate_key(key, offset);
    let mut key32 = [0u8; 32];
    for k in key32.chunks_exact_mut(4) {
        k.copy_from_slice(&rotated);
    }
    let buf = if buf.len() >= WIDE_FROM {
        // 128 bytes per round (four vector registers with AVX2): the loop's own instructions
        // are then a quarter of what one register per round costs.
        let mut key128 = [0u8; 128];
        for k in key128.chunks_exact_mut(32) {
            k.copy_from_slice(&key32);
        }
        let mut wide = buf.chunks_exact_mut(128);
        for block in &mut wide {
            for (b, k) in block.iter_mut().zip(key128.iter()) {
                *b ^= k;
            }
        }
        wide.into_remainder()
    } else {
        buf
    };
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for (b, k) in block.iter_mut().zip(key32.iter()) {
            *b ^= k;
        }
    }
    apply_mask_scalar(blocks.into_remainder(), rotated, 0);
}

/// From this size on, [`apply_mask_blocks`] takes 128-byte rounds (building their key costs
/// more than it saves on shorter payloads).
const WIDE_FROM: usize = 512;

/// The key as seen from `offset` bytes into the payload.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let o = offset & 3;
    [key[o], key[(o + 1) & 3], key[(o + 2) & 3], key[(o + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_path_matches_scalar_for_every_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in [
            0, 1, 15, 16, 31, 32, 33, 255, 256, 257, 1000, 511, 512, 513, 2207, 4099,
        ] {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
                let mut slow = data.clone();
                apply_mask_scalar(&mut slow, key, offset);
                let mut blocks = data.clone();
                apply_mask_blocks(&mut blocks, key, offset);
                assert_eq!(blocks, slow, "blocks, len {len} offset {offset}");
                let mut words = data.clone();
                apply_mask_words(&mut words, rotate_key(key, offset));
                assert_eq!(words, slow, "words, len {len} offset {offset}");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    let mut avx2 = data.clone();
                    // SAFETY: AVX2 was detected.
                    #[expect(unsafe_code, reason = "tests the AVX2 path against the scalar one")]
                    unsafe {
                        apply_mask_avx2(&mut avx2, key, offset)
                    };
                    assert_eq!(avx2, slow, "avx2, len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn from_start_matches_scalar_for_every_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..300 {
            let data: Vec<u8> = (0..len).map(|i| (i * 11 + 1) as u8).collect();
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask_from_start(&mut fast, key);
            apply_mask_scalar(&mut slow, key, 0);
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn fast_path_matches_scalar_for_every_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..300 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = data.clone();
                let mut slow = data.clone();
                apply_mask(&mut fast, key, offset);
                apply_mask_scalar(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn rfc6455_section_5_7_masked_hello() {
        // "Hello" masked with 37 fa 21 3d is 7f 9f 4d 51 58.
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    proptest! {
        #[test]
        fn masking_twice_is_identity(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                     key in any::<[u8; 4]>(), offset in 0usize..16) {
            let mut buf = data.clone();
            apply_mask(&mut buf, key, offset);
            apply_mask(&mut buf, key, offset);
            prop_assert_eq!(buf, data);
        }

        #[test]
        fn split_unmasking_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..512),
                                        key in any::<[u8; 4]>(), split in 0usize..512) {
            let split = split.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            prop_assert_eq!(whole, parts);
        }
    }
}
