//! Which Redis shard holds a channel: `jump(fnv1a64(channel name), shard count)`.
//!
//! Every node must put a channel on the same shard, whatever its process, platform or
//! version, so the function is pinned here (and by the test of known values below):
//!
//! - FNV-1a, 64 bits, over the channel name's UTF-8 bytes (offset basis 0xcbf29ce484222325,
//!   prime 0x100000001b3);
//! - then Lamping and Veach's jump consistent hash ("A Fast, Minimal Memory, Consistent Hash
//!   Algorithm", 2014) of that value into `shards` buckets, as Centrifugo does for its Redis
//!   shards: growing from n to n+1 shards moves only 1/(n+1) of the channels.
//!
//! The shard list's order is part of the configuration: every node must be given the same
//! URLs in the same order.

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Jump consistent hash: a bucket in `0..buckets` (0 when `buckets` is 0 or 1).
pub(crate) fn jump(mut key: u64, buckets: usize) -> usize {
    let buckets = i64::try_from(buckets).unwrap_or(i64::MAX);
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // The reference computes in doubles; so does this, bit for bit.
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    usize::try_from(b).unwrap_or(0)
}

/// The shard (index into the configured list of `shards`) that holds `channel`.
pub(crate) fn shard_of(channel: &str, shards: usize) -> usize {
    jump(fnv1a64(channel.as_bytes()), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite (Fowler, Noll, Vo).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pinned: changing any of these moves channels between shards on a running deployment
    /// (every node must agree). Computed with an independent implementation (Python).
    #[test]
    fn shard_of_known_channels_is_pinned() {
        let cases: [(&str, [usize; 5]); 6] = [
            ("", [0, 1, 1, 1, 1]),
            ("a", [0, 1, 2, 2, 2]),
            ("foobar", [0, 1, 1, 1, 5]),
            ("chat", [0, 0, 0, 4, 4]),
            ("news", [0, 1, 2, 3, 3]),
            ("room:42", [0, 1, 2, 2, 6]),
        ];
        for (channel, expected) in cases {
            let got = [1, 2, 3, 5, 10].map(|n| shard_of(channel, n));
            assert_eq!(got, expected, "{channel:?}");
        }
        assert_eq!(shard_of("chat", 0), 0);
    }

    #[test]
    fn jump_spreads_evenly_and_moves_little() {
        let names: Vec<String> = (0..10_000).map(|i| format!("channel-{i}")).collect();
        let mut counts = [0usize; 4];
        for name in &names {
            counts[shard_of(name, 4)] += 1;
        }
        for count in counts {
            assert!((2_000..3_000).contains(&count), "uneven: {counts:?}");
        }
        // 4 -> 5 shards: only the channels that go to the new shard move.
        for name in &names {
            let (before, after) = (shard_of(name, 4), shard_of(name, 5));
            assert!(
                after == before || after == 4,
                "{name} moved {before} -> {after}"
            );
        }
    }
}
