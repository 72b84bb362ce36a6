//! relu → 2×2 max-pool over wide rows: the AVX-512 and AVX2 loops and
//! their portable twin.

use super::*;
use crate::ops::elementwise::relu;

/// `pooled, arg = max_pool2d(relu(y), 2, 2)` for one plane of OH × OW values
/// held in rows of `row_len` floats (see the module doc). `pooled` and `arg`
/// are (OH/2, OW/2); without `arg` (inference, where no backward will ask
/// for them) the argmaxes are not computed, which saves about a third of
/// the work. The AVX-512 loop runs when `k` allows it (see
/// [`Isa`]) and the CPU has it, for any `y` (its masked loads read
/// nothing past the rows); else the AVX2 loop, when `k` allows AVX2, the
/// CPU has it and `y` has [`wide_len_read`] floats (give it [`WIDE_SLACK`]
/// floats past the last row); otherwise the portable loop.
pub fn relu_max_pool_2x2_rows(
    y: &[f32],
    row_len: usize,
    (oh, ow): (usize, usize),
    pooled: &mut [f32],
    arg: Option<&mut [u32]>,
    k: Isa,
) {
    let (ph, pw) = (oh / 2, ow / 2);
    assert!(
        row_len >= ow && oh * ow <= u32::MAX as usize,
        "relu_max_pool_2x2_rows: rows of {row_len} floats cannot hold a {oh}x{ow} plane"
    );
    let pooled = &mut pooled[..ph * pw];
    let arg = arg.map(|a| &mut a[..ph * pw]);
    if ph == 0 || pw == 0 {
        return;
    }
    assert!(
        y.len() >= (oh - 1) * row_len + ow,
        "relu_max_pool_2x2_rows: {} floats cannot hold {oh} rows of {row_len}",
        y.len()
    );
    #[cfg(target_arch = "x86_64")]
    if k.avx512() {
        // SAFETY: AVX-512F is present (checked by `k.avx512()`); the loop
        // reads only the first 2·PW floats of rows 0..2·PH, which lie in y
        // (checked above: 2·PH ≤ OH, 2·PW ≤ OW), and pooled and arg hold
        // PH·PW values (sliced above).
        match arg {
            Some(arg) => unsafe { relu_pool_avx512::<true>(y, row_len, ow, (ph, pw), pooled, arg) },
            None => unsafe { relu_pool_avx512::<false>(y, row_len, ow, (ph, pw), pooled, &mut []) },
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k.avx2() && y.len() >= wide_len_read(row_len, (oh, ow)) {
        // SAFETY: AVX2 is present (checked by `k.avx2()`), y holds every
        // float the loop reads (checked just above), and pooled and arg hold
        // PH·PW values (sliced above).
        match arg {
            Some(arg) => unsafe { relu_pool_avx2::<true>(y, row_len, ow, (ph, pw), pooled, arg) },
            None => unsafe { relu_pool_avx2::<false>(y, row_len, ow, (ph, pw), pooled, &mut []) },
        }
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
    mut arg: Option<&mut [u32]>,
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
            if let Some(arg) = arg.as_deref_mut() {
                arg[py * pw + px] = best_i;
            }
        }
    }
}

/// `ARG`: also compute the argmaxes (else `arg` is not touched and may be
/// empty).
///
/// # Safety
/// The CPU must support AVX2; `y` must hold [`wide_len_read`]`(rs, (2·ph, ow))`
/// floats, `pooled` ph·pw values, and `arg` ph·pw values if `ARG`. (Exactly
/// those: partial blocks may write junk past their windows up to the end
/// of `pooled` and `arg`, for later blocks to overwrite.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn relu_pool_avx2<const ARG: bool>(
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
    let split = |p: &[f32]| {
        let p = &p[..16];
        // SAFETY: p is 16 floats: two vectors of 8.
        let (a, b) = unsafe {
            (
                _mm256_loadu_ps(p.as_ptr()),
                _mm256_loadu_ps(p.as_ptr().add(8)),
            )
        };
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
        let best = _mm256_blendv_ps(a, b, m);
        if ARG {
            (best, _mm256_blendv_epi8(ai, bi, _mm256_castps_si256(m)))
        } else {
            (best, ai)
        }
    };
    let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let (one, w) = (_mm256_set1_epi32(1), _mm256_set1_epi32(ow as i32));
    for py in 0..ph {
        for blk in 0..pw.div_ceil(8) {
            let c = 16 * blk; // first input column of the block
                              // Row 2py+1's block ends at (2py+1)·rs + 16·(blk+1), which the
                              // caller's wide_len_read keeps inside y; `split` checks it.
            let (te, to) = split(&y[2 * py * rs + c..]);
            let (be, bo) = split(&y[(2 * py + 1) * rs + c..]);
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
            // All 8 lanes where they fit: those past the n windows land on
            // windows further on in the plane, which later blocks
            // overwrite (blocks run in increasing order).
            // SAFETY: the CPU has AVX2 (this function's contract).
            unsafe { store_n(pooled, at, n, pooled.len(), _mm256_castps_si256(best)) };
            if ARG {
                // SAFETY: as above.
                unsafe { store_n(arg, at, n, arg.len(), best_i) };
            }
        }
    }
}

/// AVX-512 twin of `relu_pool_avx2`: sixteen windows at a time, the even
/// and odd columns split by one two-source permute each, and masked loads
/// and stores in place of the AVX2 loop's slack and partial stores (masked
/// moves are cheap wherever AVX-512 is). Bitwise the same pooled values and
/// argmaxes.
///
/// # Safety
/// The CPU must support AVX-512F; `y` must hold the first 2·pw floats of
/// rows 0..2·ph of `rs` floats, `pooled` ph·pw values, and `arg` ph·pw
/// values if `ARG`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn relu_pool_avx512<const ARG: bool>(
    y: &[f32],
    rs: usize,
    ow: usize,
    (ph, pw): (usize, usize),
    pooled: &mut [f32],
    arg: &mut [u32],
) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    // relu as the scalar one: v ≤ 0 (−0.0 included) gives +0.0, NaN stays.
    let relu16 = |v: __m512| _mm512_maskz_mov_ps(!_mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, zero), v);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    // The first 2n ≤ 32 floats from p, split into even and odd columns;
    // lanes past them read nothing and hold 0.
    let split = |p: *const f32, n: usize| {
        let m = if 2 * n >= 32 {
            u32::MAX
        } else {
            (1u32 << (2 * n)) - 1
        };
        // SAFETY (caller): the 2n floats from p lie in y; masked-off lanes
        // are not accessed, and p + 16 is only formed, not read, when no
        // lane of the second load is on.
        let (a, b) = unsafe {
            (
                _mm512_maskz_loadu_ps(m as __mmask16, p),
                _mm512_maskz_loadu_ps((m >> 16) as __mmask16, p.wrapping_add(16)),
            )
        };
        (
            relu16(_mm512_permutex2var_ps(a, even, b)),
            relu16(_mm512_permutex2var_ps(a, odd, b)),
        )
    };
    // The scan's step for (value, index) pairs: b wins if b > a or b is NaN.
    let pick = |(a, ai): (__m512, __m512i), (b, bi): (__m512, __m512i)| {
        let m = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, a) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(b, b);
        let best = _mm512_mask_blend_ps(m, a, b);
        if ARG {
            (best, _mm512_mask_blend_epi32(m, ai, bi))
        } else {
            (best, ai)
        }
    };
    let (one, w) = (_mm512_set1_epi32(1), _mm512_set1_epi32(ow as i32));
    let yp = y.as_ptr();
    for py in 0..ph {
        for blk in 0..pw.div_ceil(16) {
            let c = 32 * blk; // first input column of the block
            let n = (pw - 16 * blk).min(16); // windows in the block
            let (te, to) = split(yp.wrapping_add(2 * py * rs + c), n);
            let (be, bo) = split(yp.wrapping_add((2 * py + 1) * rs + c), n);
            let i0 = _mm512_add_epi32(_mm512_set1_epi32((2 * py * ow + c) as i32), even);
            let i1 = _mm512_add_epi32(i0, one);
            let top = pick((te, i0), (to, i1));
            let bottom = pick((be, _mm512_add_epi32(i0, w)), (bo, _mm512_add_epi32(i1, w)));
            let (best, best_i) = pick(top, bottom);
            let at = py * pw + 16 * blk;
            let keep = ((1u32 << n) - 1) as __mmask16;
            // SAFETY: only the first n lanes are written, and at + n ≤
            // ph·pw ≤ pooled.len() (and arg.len() if ARG).
            unsafe { _mm512_mask_storeu_ps(pooled.as_mut_ptr().add(at), keep, best) };
            if ARG {
                // SAFETY: as above.
                unsafe { _mm512_mask_storeu_epi32(arg.as_mut_ptr().add(at).cast(), keep, best_i) };
            }
        }
    }
}
