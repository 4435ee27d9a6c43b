//! splitmix64: a tiny, well-known counter-based generator, reproducible in any language and on
//! the GPU (`kernels/softmax_ce.cu` has the same mixing function). Dropout masks, the golden
//! test's initialiser and the tests' random inputs all come from it.

/// splitmix64's increment, the golden ratio in 64 bits.
pub const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The `k`-th output (`k ≥ 1`) of splitmix64 seeded with `state`: `mix(state + k·GAMMA)`, the same
/// as calling [`SplitMix64::next_u64`] `k` times from `SplitMix64(state)`.
pub fn splitmix64_output(state: u64, k: u64) -> u64 {
    let mut z = state.wrapping_add(k.wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sequential form of the generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        let z = splitmix64_output(self.0, 1);
        self.0 = self.0.wrapping_add(GAMMA);
        z
    }
    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// `n` draws uniform in `[lo, hi)`.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
