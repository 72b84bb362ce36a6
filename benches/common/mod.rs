//! What several benches share: fixed pseudo-random data and best-of timing.
//! Each bench is its own crate and uses only part of this.
#![allow(dead_code)]

use std::time::Instant;

/// `n` values in [−1, 1) from a xorshift generator seeded with `seed`
/// (0 is taken as 1): the same data on every run.
pub fn data(n: usize, seed: u32) -> Vec<f32> {
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

/// Best of `runs` timings of `f` after one unmeasured call, in
/// milliseconds: the minimum is the number least disturbed by other work
/// on a shared machine.
pub fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}
