//! relu followed by a 2×2, stride-2 max-pool, read straight from a conv
//! kernel's wide rows: the tail of the fused conv → relu → max-pool blocks
//! (dense in `conv2d/fused.rs`, sparse in `sparse_conv2d/fused.rs`), as one
//! pass with AVX-512 and AVX2 loops (bitwise the same) and their portable
//! twin.
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

//!
//! # Files
//!
//! * `forward.rs`: [`relu_max_pool_2x2_rows`], its AVX-512 and AVX2 loops
//!   and their portable twin.
//! * `backward.rs`: [`relu_pool_grad_2x2_rows`], the gradient back into
//!   the wide rows, with the same three loops.
//! * this file: the wide rows' sizes and the AVX2 loops' partial vectors,
//!   which both use.

mod backward;
mod forward;

pub use backward::relu_pool_grad_2x2_rows;
pub use forward::relu_max_pool_2x2_rows;

use crate::isa::Isa;

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

// Partial vectors for the AVX2 loops' last blocks. `_mm256_maskload_ps`
// and `_mm256_maskstore_ps` would do, but on some CPUs (AMD's) a masked
// move costs many times a plain one; these take a plain one where all 8
// lanes fit in the slice, and go through the stack only at its very end.

/// The 32-bit lane types the partial moves take: every bit pattern is a
/// value of each, so a store of any vector's lanes is sound.
trait Lane32: Copy + Default {}
impl Lane32 for f32 {}
impl Lane32 for u32 {}

/// The 32-bit values `src[at..at + n]` (n ≤ 8) in the low lanes, zeros
/// above.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_n<T: Lane32>(src: &[T], at: usize, n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    const { assert!(std::mem::size_of::<T>() == 4) };
    if at + 8 <= src.len() {
        let count = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), count);
        // SAFETY: src[at..at + 8] is 8 values of 4 bytes (checked).
        let v = unsafe { _mm256_loadu_si256(src[at..at + 8].as_ptr().cast()) };
        _mm256_and_si256(v, keep)
    } else {
        let mut t = [T::default(); 8];
        // Element by element: a copy of n values would be a call to memcpy.
        for (i, v) in t.iter_mut().enumerate() {
            if i < n {
                *v = src[at + i];
            }
        }
        // SAFETY: t is 8 values of 4 bytes.
        unsafe { _mm256_loadu_si256(t.as_ptr().cast()) }
    }
}

/// Writes the low `n` lanes of `v` (n ≤ 8) to `dst[at..at + n]`, and
/// where they fit before `limit` (≤ dst.len()) some lanes after them too:
/// all 8, or for n ≤ 4 the low 4. The caller passes a `limit` up to which
/// such extra values are overwritten later or harmless.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_n<T: Lane32>(
    dst: &mut [T],
    at: usize,
    n: usize,
    limit: usize,
    v: std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    const { assert!(std::mem::size_of::<T>() == 4) };
    if at + 8 <= limit.min(dst.len()) {
        // SAFETY: dst[at..at + 8] is 8 values of 4 bytes (checked).
        unsafe { _mm256_storeu_si256(dst[at..at + 8].as_mut_ptr().cast(), v) };
    } else if n <= 4 && at + 4 <= limit.min(dst.len()) {
        // SAFETY: as above, for 4 values.
        unsafe {
            _mm_storeu_si128(
                dst[at..at + 4].as_mut_ptr().cast(),
                _mm256_castsi256_si128(v),
            )
        };
    } else {
        let mut t = [T::default(); 8];
        // SAFETY: t is 8 values of 4 bytes.
        unsafe { _mm256_storeu_si256(t.as_mut_ptr().cast(), v) };
        for (i, &v) in t.iter().enumerate() {
            if i < n {
                dst[at + i] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::relu;
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
            (4, 70),
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
                    for k in Isa::available() {
                        let n = want_p.len();
                        let (mut p, mut a) = (vec![9.0; n], vec![9u32; n]);
                        relu_max_pool_2x2_rows(&y, rs, (oh, ow), &mut p, Some(&mut a), k);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&p), bits(&want_p), "{oh}x{ow} rows {rs} {k:?}");
                        assert_eq!(a, want_a, "{oh}x{ow} rows {rs} {k:?}");
                        // Without argmaxes: the same values.
                        let mut p = vec![9.0; n];
                        relu_max_pool_2x2_rows(&y, rs, (oh, ow), &mut p, None, k);
                        assert_eq!(bits(&p), bits(&want_p), "{oh}x{ow} rows {rs} {k:?}, no arg");
                    }
                }
            }
        }
    }

    /// The backward against max_pool2d's scatter and relu's mask on a plain
    /// plane, laid out in the rows: the same dY bit for bit, zeros in the
    /// gaps, and the sum to rounding.
    #[test]
    fn grad_equals_the_pool_scatter_through_relu() {
        let mut rng = Rng::seed(8);
        for (oh, ow) in [
            (2, 2),
            (28, 28),
            (10, 10),
            (5, 7),
            (3, 17),
            (16, 32),
            (9, 33),
            (4, 70),
            (4, 2),
            (6, 3),
            (7, 4),
        ] {
            for rs in [ow, ow + 3, ow + 21] {
                let y: Vec<f32> = (0..(oh - 1) * rs + ow)
                    .map(|i| {
                        if i % 7 == 0 {
                            0.0
                        } else {
                            rng.uniform(-1.0, 1.0)
                        }
                    })
                    .collect();
                let (pooled, arg) = oracle(&y, rs, (oh, ow));
                let dp: Vec<f32> = (0..pooled.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let mut plane = vec![0.0f32; oh * ow];
                for ((&v, &a), &d) in pooled.iter().zip(&arg).zip(&dp) {
                    plane[a as usize] += crate::ops::elementwise::relu_grad(v, d);
                }
                let want_sum: f32 = plane.iter().sum();
                let mut sums = Vec::new();
                for k in Isa::available() {
                    let mut rows = vec![f32::NAN; oh * rs + 5];
                    let sum =
                        relu_pool_grad_2x2_rows(&pooled, &arg, &dp, (oh, ow), rs, &mut rows, k);
                    for oy in 0..oh {
                        for ox in 0..rs {
                            let got = rows[oy * rs + ox];
                            let want = if ox < ow { plane[oy * ow + ox] } else { 0.0 };
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{oh}x{ow} rows {rs} {k:?} ({oy}, {ox})"
                            );
                        }
                    }
                    assert!(
                        rows[oh * rs..].iter().all(|v| v.is_nan()),
                        "wrote past the rows"
                    );
                    assert!(
                        (sum - want_sum).abs() <= 1e-5 * (oh * ow) as f32,
                        "{k:?}: sum {sum}, want {want_sum}"
                    );
                    sums.push(sum.to_bits());
                }
                // The AVX-512 loop sums in the AVX2 loop's lanes and order.
                if let [_, avx2, avx512] = sums[..] {
                    assert_eq!(avx512, avx2, "{oh}x{ow} rows {rs}: AVX-512 and AVX2 sums");
                }
            }
        }
    }
}
