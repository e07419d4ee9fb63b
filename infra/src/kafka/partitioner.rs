//! Kafka's default partitioner for keyed records, as the Java client implements it
//! (`Utils.toPositive(Utils.murmur2(key)) % numPartitions`; librdkafka's `murmur2_random`).
//! librdkafka's own default (`consistent_random`, CRC32) would disagree, which is why every
//! producer of the platform sets `partitioner=murmur2_random` and the writer checks keys.

/// Java's `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions` (> 0), as every Kafka client computes
/// it by default. Returns 0 when `partitions` is not positive.
pub fn partition_for(customer_key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    (murmur2(customer_key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_java() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), *expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_is_positive_and_in_range() {
        // "foobar" hashes negative: toPositive masks the sign bit, it does not negate.
        assert_eq!(
            partition_for(b"foobar", 12),
            ((-790_332_482i32) & 0x7fff_ffff) % 12
        );
        for i in 0..1000u32 {
            let p = partition_for(&i.to_le_bytes(), 12);
            assert!((0..12).contains(&p));
        }
        assert_eq!(partition_for(b"x", 0), 0);
    }
}
