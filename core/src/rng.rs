//! A small seeded generator (SplitMix64) that gives the same numbers on every platform,
//! for noise initialisation and synthetic test weights.

/// SplitMix64 (Steele, Lea and Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_in_range() {
        let a: Vec<f32> = (0..100)
            .scan(SplitMix64::new(7), |r, _| Some(r.next_f32()))
            .collect();
        let b: Vec<f32> = (0..100)
            .scan(SplitMix64::new(7), |r, _| Some(r.next_f32()))
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (0.0..1.0).contains(v)));
        let c: Vec<f32> = (0..100)
            .scan(SplitMix64::new(8), |r, _| Some(r.next_f32()))
            .collect();
        assert_ne!(a, c);
    }
}
