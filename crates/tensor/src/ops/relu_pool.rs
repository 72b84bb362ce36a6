//! relu followed by a 2×2, stride-2 max-pool, read straight from a conv
//! kernel's wide rows: the tail of the fused conv → relu → max-pool blocks
//! (dense in `conv2d.rs`, sparse in `sparse_conv2d.rs`), as one pass with an
//! AVX2 loop and its portable twin.
//!
//! The direct conv kernels leave an output plane (OH, OW) in rows of
//! `row_len` ≥ OW floats (`y[oy·row_len + ox]`, the input's row length), with
//! junk in the columns past OW. Copying those rows out, a relu pass and a
//! scalar pool cost about as much as the sparse convolution itself; here
//! one pass reads each pair of rows once and writes the pooled values and
//! argmaxes:
//!
//! ```text
//! pooled[py, px] = max(relu(y[2py, 2px]), relu(y[2py, 2px+1]),
//!                      relu(y[2py+1, 2px]), relu(y[2py+1, 2px+1]))
//! arg[py, px]    = the index oy·OW + ox of the winner in the (OH, OW) plane
//! ```
//!
//! The four candidates are scanned in that order with the rule of
//! [`crate::ops::pool::max_pool2d_plane`] (take a value if it is greater
//! than the best so far, or NaN), after relu as
//! [`crate::ops::elementwise::relu`] computes it, so pooled values and
//! argmaxes are bitwise those of relu → max_pool2d. The AVX2 loop does eight
//! windows at a time: two loads per row, split into even and odd columns.

use crate::ops::elementwise::relu;
use crate::ops::sparse_conv2d::KernelChoice;

/// Floats a wide buffer needs past its last row, so that the AVX2 loop may
/// read whole 16-float blocks (the lanes past the row's end are dropped).
pub const WIDE_SLACK: usize = 16;

/// Floats of `y` the pool reads: the 2·PH rows of `row_len`, the last one
/// to a whole 16-float block.
pub fn wide_len_read(row_len: usize, (oh, ow): (usize, usize)) -> usize {
    let (ph, pw) = (oh / 2, ow / 2);
    if ph == 0 || pw == 0 {
        return 0;
    }
    (2 * ph - 1) * row_len + pw.div_ceil(8) * 16
}

/// `pooled, arg = max_pool2d(relu(y), 2, 2)` for one plane of OH × OW values
/// held in rows of `row_len` floats (see the module doc). `pooled` and `arg`
/// are (OH/2, OW/2). The SIMD loop runs when the CPU has AVX2 and `y` has
/// [`wide_len_read`] floats (give it [`WIDE_SLACK`] floats past the last
/// row); otherwise the portable loop does.
pub fn relu_max_pool_2x2_rows(
    y: &[f32],
    row_len: usize,
    (oh, ow): (usize, usize),
    pooled: &mut [f32],
    arg: &mut [u32],
    k: KernelChoice,
) {
    let (ph, pw) = (oh / 2, ow / 2);
    assert!(
        row_len >= ow && oh * ow <= u32::MAX as usize,
        "relu_max_pool_2x2_rows: rows of {row_len} floats cannot hold a {oh}x{ow} plane"
    );
    let (pooled, arg) = (&mut pooled[..ph * pw], &mut arg[..ph * pw]);
    if ph == 0 || pw == 0 {
        return;
    }
    assert!(
        y.len() >= (oh - 1) * row_len + ow,
        "relu_max_pool_2x2_rows: {} floats cannot hold {oh} rows of {row_len}",
        y.len()
    );
    #[cfg(target_arch = "x86_64")]
    if k == KernelChoice::Best
        && is_x86_feature_detected!("avx2")
        && y.len() >= wide_len_read(row_len, (oh, ow))
    {
        // SAFETY: AVX2 is present (checked just above), y holds every float
        // the loop reads (checked just above), and pooled and arg hold
        // PH·PW values (sliced above).
        unsafe { relu_pool_avx2(y, row_len, ow, (ph, pw), pooled, arg) };
        return;
    }
    let _ = k;
    relu_pool_portable(y, row_len, ow, (ph, pw), pooled, arg);
}

/// The scan for one window: candidates in row-major order, each taken if
/// greater than the best so far or NaN (written with bit masks, as in
/// `max_pool2d_plane`, so that it compiles without branches).
#[inline(always)]
fn take(best: &mut f32, best_i: &mut u32, v: f32, i: u32) {
    let m = (((v > *best) | v.is_nan()) as u32).wrapping_neg();
    *best_i = (*best_i & !m) | (i & m);
    *best = f32::from_bits((best.to_bits() & !m) | (v.to_bits() & m));
}

fn relu_pool_portable(
    y: &[f32],
    rs: usize,
    ow: usize,
    (ph, pw): (usize, usize),
    pooled: &mut [f32],
    arg: &mut [u32],
) {
    for py in 0..ph {
        let top = &y[2 * py * rs..][..2 * pw];
        let bottom = &y[(2 * py + 1) * rs..][..2 * pw];
        for px in 0..pw {
            let i0 = (2 * py * ow + 2 * px) as u32;
            let (i1, w) = (i0 + 1, ow as u32);
            let (mut best, mut best_i) = (f32::NEG_INFINITY, i0);
            take(&mut best, &mut best_i, relu(top[2 * px]), i0);
            take(&mut best, &mut best_i, relu(top[2 * px + 1]), i1);
            take(&mut best, &mut best_i, relu(bottom[2 * px]), i0 + w);
            take(&mut best, &mut best_i, relu(bottom[2 * px + 1]), i1 + w);
            pooled[py * pw + px] = best;
            arg[py * pw + px] = best_i;
        }
    }
}

/// # Safety
/// The CPU must support AVX2; `y` must hold [`wide_len_read`]`(rs, (2·ph, ow))`
/// floats, and `pooled` and `arg` ph·pw values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn relu_pool_avx2(
    y: &[f32],
    rs: usize,
    ow: usize,
    (ph, pw): (usize, usize),
    pooled: &mut [f32],
    arg: &mut [u32],
) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    // relu as the scalar one: v ≤ 0 (−0.0 included) gives +0.0, NaN stays.
    let relu8 = |v: __m256| _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v, zero), v);
    // 16 consecutive floats split into their even and odd columns.
    let split = |p: *const f32| {
        let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
        let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b); // a0 a2 b0 b2 | a4 a6 b4 b6
        let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
        let order = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        (relu8(order(even)), relu8(order(odd)))
    };
    // The scan's step for (value, index) pairs: b wins if b > a or b is NaN.
    let pick = |(a, ai): (__m256, __m256i), (b, bi): (__m256, __m256i)| {
        let m = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(b, a),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(b, b),
        );
        (
            _mm256_blendv_ps(a, b, m),
            _mm256_blendv_epi8(ai, bi, _mm256_castps_si256(m)),
        )
    };
    let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let (one, w) = (_mm256_set1_epi32(1), _mm256_set1_epi32(ow as i32));
    let yp = y.as_ptr();
    for py in 0..ph {
        for blk in 0..pw.div_ceil(8) {
            let c = 16 * blk; // first input column of the block
                              // SAFETY (caller): row 2py+1's block ends at
                              // (2py+1)·rs + 16·(blk+1) ≤ wide_len_read ≤ y.len().
            let (te, to) = split(yp.add(2 * py * rs + c));
            let (be, bo) = split(yp.add((2 * py + 1) * rs + c));
            let i0 = _mm256_add_epi32(_mm256_set1_epi32((2 * py * ow + c) as i32), lanes);
            let i1 = _mm256_add_epi32(i0, one);
            // The scan from −∞ takes the first relu value (never −∞), and
            // its step is associative (the result is the last NaN if there
            // is one, else the first maximum), so the four candidates can
            // be paired as a tree: half the dependent steps of the scan.
            let top = pick((te, i0), (to, i1));
            let bottom = pick((be, _mm256_add_epi32(i0, w)), (bo, _mm256_add_epi32(i1, w)));
            let (best, best_i) = pick(top, bottom);
            let at = py * pw + 8 * blk;
            let n = (pw - 8 * blk).min(8);
            if n == 8 {
                let (p8, a8) = (&mut pooled[at..at + 8], &mut arg[at..at + 8]);
                // SAFETY: p8 and a8 are 8 values long (sliced just above).
                _mm256_storeu_ps(p8.as_mut_ptr(), best);
                _mm256_storeu_si256(a8.as_mut_ptr().cast(), best_i);
            } else {
                // A short last block: through the stack, element by element
                // (a copy of run-time length would call memmove).
                let (mut vals, mut idxs) = ([0.0f32; 8], [0u32; 8]);
                _mm256_storeu_ps(vals.as_mut_ptr(), best);
                _mm256_storeu_si256(idxs.as_mut_ptr().cast(), best_i);
                let dst = pooled[at..at + n].iter_mut().zip(&mut arg[at..at + n]);
                for ((p, a), (&v, &i)) in dst.zip(vals.iter().zip(&idxs)) {
                    (*p, *a) = (v, i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pool::max_pool2d_plane;
    use crate::Rng;

    /// relu then max_pool2d_plane on the plane copied out of its rows.
    fn oracle(y: &[f32], rs: usize, (oh, ow): (usize, usize)) -> (Vec<f32>, Vec<u32>) {
        let mut plane = Vec::with_capacity(oh * ow);
        for oy in 0..oh {
            plane.extend(y[oy * rs..][..ow].iter().map(|&v| relu(v)));
        }
        let n = (oh / 2) * (ow / 2);
        let (mut p, mut a) = (vec![0.0; n], vec![0u32; n]);
        max_pool2d_plane(&plane, (oh, ow), (2, 2), (2, 2), &mut p, &mut a);
        (p, a)
    }

    #[test]
    fn both_loops_equal_relu_then_max_pool_bitwise() {
        let mut rng = Rng::seed(7);
        // Values with ties, zeros of both signs, NaNs and infinities, so
        // every branch of the scan is taken.
        let specials = [
            0.0,
            -0.0,
            1.0,
            1.0,
            f32::NAN,
            f32::INFINITY,
            -1.0,
            f32::NEG_INFINITY,
        ];
        for (oh, ow) in [
            (2, 2),
            (28, 28),
            (10, 10),
            (5, 7),
            (3, 17),
            (16, 32),
            (9, 33),
            (4, 2),
        ] {
            for extra in [0, 1, 4] {
                let rs = ow + extra;
                for slack in [0, WIDE_SLACK] {
                    let len = (oh - 1) * rs + ow + slack;
                    let y: Vec<f32> = (0..len)
                        .map(|i| {
                            if i % 5 == 0 {
                                specials[(i / 5) % specials.len()]
                            } else {
                                rng.uniform(-1.0, 1.0)
                            }
                        })
                        .collect();
                    let (want_p, want_a) = oracle(&y, rs, (oh, ow));
                    for k in [KernelChoice::Best, KernelChoice::Portable] {
                        let n = want_p.len();
                        let (mut p, mut a) = (vec![9.0; n], vec![9u32; n]);
                        relu_max_pool_2x2_rows(&y, rs, (oh, ow), &mut p, &mut a, k);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&p), bits(&want_p), "{oh}x{ow} rows {rs} {k:?}");
                        assert_eq!(a, want_a, "{oh}x{ow} rows {rs} {k:?}");
                    }
                }
            }
        }
    }
}
