//! Test inputs for the kernels' unit tests: a fixed xorshift sequence,
//! so that a failing case can be rerun with the same numbers.

/// `n` values in [-1, 1), a function of `seed` only.
pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}
