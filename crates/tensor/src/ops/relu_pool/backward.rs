//! The gradient of relu → 2×2 max-pool back into the wide rows: each
//! window's gradient at its argmax, with the AVX-512 and AVX2 loops and
//! their portable twin.

use super::*;

/// Backward of [`relu_max_pool_2x2_rows`] for one plane: dY in rows of
/// `row_len` floats, from the saved pooled values and argmaxes and the pooled
/// gradient `dpooled` (all (OH/2, OW/2)). Each window's gradient, zero where
/// relu cut it (`pooled ≤ 0`), lands at its argmax; everything else is 0.
/// OVERWRITES `rows[..OH·row_len]`, gap columns and unpooled rows and
/// columns included. Returns the sum of the window gradients, for the bias
/// gradient: in window order on the portable loop, in eight lane sums on
/// the AVX2 and AVX-512 ones (bitwise the same; the portable sum agrees to
/// rounding, each deterministic).
pub fn relu_pool_grad_2x2_rows(
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    (oh, ow): (usize, usize),
    row_len: usize,
    rows: &mut [f32],
    k: Isa,
) -> f32 {
    let (ph, pw) = (oh / 2, ow / 2);
    let n = ph * pw;
    assert!(
        row_len >= ow && rows.len() >= oh * row_len,
        "relu_pool_grad_2x2_rows: {} floats cannot hold {oh} rows of {row_len} (OW {ow})",
        rows.len()
    );
    let (pooled, arg, dpooled) = (&pooled[..n], &arg[..n], &dpooled[..n]);
    let rows = &mut rows[..oh * row_len];
    #[cfg(target_arch = "x86_64")]
    if k.avx512() && oh * ow <= i32::MAX as usize {
        // SAFETY: AVX-512F is present (checked by `k.avx512()`); the slices
        // are sized as for the AVX2 loop below.
        return unsafe { unpool_avx512(pooled, arg, dpooled, ow, (ph, pw), row_len, rows) };
    }
    #[cfg(target_arch = "x86_64")]
    if k.avx2() && oh * ow <= i32::MAX as usize {
        // SAFETY: AVX2 is present (checked by `k.avx2()`); pooled, arg and
        // dpooled hold PH·PW values and rows OH·row_len floats (sliced
        // above), and plane indices fit in i32 (checked just above).
        return unsafe { unpool_avx2(pooled, arg, dpooled, ow, (ph, pw), row_len, rows) };
    }
    let _ = k;
    unpool_portable(pooled, arg, dpooled, ow, (ph, pw), row_len, rows)
}

/// relu's gradient at the pooled value v (which is relu(y) at the argmax,
/// so v > 0 exactly where y > 0), plus 0.0 so that −0.0 becomes +0.0 as
/// when it is added into a zeroed plane.
#[inline(always)]
fn window_grad(v: f32, d: f32) -> f32 {
    0.0 + crate::ops::elementwise::relu_grad(v, d)
}

fn unpool_portable(
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    ow: usize,
    (ph, pw): (usize, usize),
    rs: usize,
    rows: &mut [f32],
) -> f32 {
    let mut sum = 0.0f32;
    rows.fill(0.0);
    for py in 0..ph {
        for px in 0..pw {
            let j = py * pw + px;
            let g = window_grad(pooled[j], dpooled[j]);
            // The argmax, relative to the window's top-left corner: 0, 1,
            // OW or OW + 1.
            let r = arg[j] as usize - (2 * py * ow + 2 * px);
            let dy = (r >= ow) as usize;
            rows[(2 * py + dy) * rs + 2 * px + (r - dy * ow)] = g;
            sum += g;
        }
    }
    sum
}

/// # Safety
/// The CPU must support AVX2; pooled, arg and dpooled must hold ph·pw
/// values, rows exactly (2·ph + the odd row, if any)·rs floats with
/// rs ≥ 2·pw (everything in it is written), and OH·OW must fit in i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unpool_avx2(
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    ow: usize,
    (ph, pw): (usize, usize),
    rs: usize,
    rows: &mut [f32],
) -> f32 {
    use std::arch::x86_64::*;
    let (zero, zero_i) = (_mm256_setzero_ps(), _mm256_setzero_si256());
    let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let (one, w, w1) = (
        _mm256_set1_epi32(1),
        _mm256_set1_epi32(ow as i32),
        _mm256_set1_epi32(ow as i32 + 1),
    );
    // (a, b) → the 16 floats a0 b0 a1 b1 … a7 b7, as two vectors.
    let interleave = |a: __m256, b: __m256| {
        let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        (
            _mm256_permute2f128_ps::<0x20>(lo, hi),
            _mm256_permute2f128_ps::<0x31>(lo, hi),
        )
    };
    // Eight floats at rows[at..], of which the first `n` (n ≥ 1; 8 if
    // larger) are the block's columns and the rest +0.0: stored whole (or
    // their low half) where that ends before `limit`, the extra zeros
    // landing on zeros or on rows this call writes later.
    let store8 = |rows: &mut [f32], at: usize, v: __m256, n: i32, limit: usize| {
        // SAFETY: the CPU has AVX2 (this function's contract); store_n
        // checks its own bounds.
        unsafe { store_n(rows, at, (n as usize).min(8), limit, _mm256_castps_si256(v)) }
    };
    // Zeros first (gap columns, the odd last row and every value no
    // window's gradient lands on), by vector stores: `fill` would call
    // memset, which costs more for planes this small. Then the blocks.
    let mut z = rows.chunks_exact_mut(8);
    for c in &mut z {
        // SAFETY: c is 8 floats.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), zero) };
    }
    z.into_remainder().fill(0.0);
    let mut acc = zero;
    for py in 0..ph {
        for blk in 0..pw.div_ceil(8) {
            let at = py * pw + 8 * blk;
            let n = (pw - 8 * blk).min(8) as i32;
            // The n windows of the block, zeros past them (at + n ≤ ph·pw).
            // SAFETY: the CPU has AVX2 (this function's contract); load_n
            // checks its own bounds.
            let (v, d, a) = unsafe {
                (
                    _mm256_castsi256_ps(load_n(pooled, at, n as usize)),
                    _mm256_castsi256_ps(load_n(dpooled, at, n as usize)),
                    load_n(arg, at, n as usize),
                )
            };
            // relu's gradient (lanes past n: v = 0, so g = 0), −0 → +0.
            let g = _mm256_add_ps(
                zero,
                _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v, zero), d),
            );
            acc = _mm256_add_ps(acc, g);
            let corner = _mm256_set1_epi32((2 * py * ow + 16 * blk) as i32);
            let r = _mm256_sub_epi32(a, _mm256_add_epi32(corner, lanes));
            let at_r = |m: __m256i| _mm256_and_ps(g, _mm256_castsi256_ps(_mm256_cmpeq_epi32(r, m)));
            let (t0, t1) = interleave(at_r(zero_i), at_r(one));
            let (b0, b1) = interleave(at_r(w), at_r(w1));
            // Columns 16·blk .. 16·blk + 2n of both rows, then zeros: the
            // lanes past 2n hold +0.0 (g is 0 past the n windows).
            // The top row's stores stay in the row: the bottom row's
            // earlier blocks are written already. The bottom row's may run
            // into the next pair, or the odd last row, written later.
            let (c, top, bottom) = (16 * blk, 2 * py * rs, (2 * py + 1) * rs);
            let end = rows.len();
            store8(rows, top + c, t0, 2 * n, bottom);
            if n > 4 {
                store8(rows, top + c + 8, t1, 2 * n - 8, bottom);
            }
            store8(rows, bottom + c, b0, 2 * n, end);
            if n > 4 {
                store8(rows, bottom + c + 8, b1, 2 * n - 8, end);
            }
        }
    }
    let mut l = [0.0f32; 8];
    // SAFETY: l is 8 floats.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// AVX-512 twin of `unpool_avx2`: sixteen windows at a time, interleaved
/// by two-source permutes, with masked loads and stores. The window sum
/// runs in the AVX2 loop's eight lanes and order (each 16-window block adds
/// its two 8-window halves in turn), so both return the same bits.
///
/// # Safety
/// As `unpool_avx2`, with AVX-512F (and AVX for the eight-lane sum).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx")]
unsafe fn unpool_avx512(
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    ow: usize,
    (ph, pw): (usize, usize),
    rs: usize,
    rows: &mut [f32],
) -> f32 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    let lanes2 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    // (a, b) → a0 b0 a1 b1 … a7 b7 and a8 b8 … a15 b15.
    let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
    let interleave = |a: __m512, b: __m512| {
        (
            _mm512_permutex2var_ps(a, lo_idx, b),
            _mm512_permutex2var_ps(a, hi_idx, b),
        )
    };
    let (one, w, w1) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(ow as i32),
        _mm512_set1_epi32(ow as i32 + 1),
    );
    let mask = |k: usize| -> __mmask16 { ((1u32 << k.min(16)) - 1) as __mmask16 };
    let mut acc = _mm256_setzero_ps();
    for py in 0..ph {
        let (top, bottom) = rows[2 * py * rs..][..2 * rs].split_at_mut(rs);
        let (tp, bp) = (top.as_mut_ptr(), bottom.as_mut_ptr());
        for blk in 0..pw.div_ceil(16) {
            let at = py * pw + 16 * blk;
            let n = (pw - 16 * blk).min(16);
            let keep = mask(n);
            // SAFETY: lanes past n are masked off and not read; the first n
            // lie inside the ph·pw values (at + n ≤ ph·pw).
            let (v, d, a) = unsafe {
                (
                    _mm512_maskz_loadu_ps(keep, pooled.as_ptr().add(at)),
                    _mm512_maskz_loadu_ps(keep, dpooled.as_ptr().add(at)),
                    _mm512_maskz_loadu_epi32(keep, arg.as_ptr().add(at).cast()),
                )
            };
            // relu's gradient (masked-off lanes: v = 0, so g = 0), −0 → +0.
            let g = _mm512_add_ps(
                zero,
                _mm512_maskz_mov_ps(!_mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, zero), d),
            );
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(g));
            if n > 8 {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(g)));
                acc = _mm256_add_ps(acc, hi);
            }
            let corner = _mm512_set1_epi32((2 * py * ow + 32 * blk) as i32);
            let r = _mm512_sub_epi32(a, _mm512_add_epi32(corner, lanes2));
            let at_r = |m: __m512i| _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(r, m), g);
            let (t0, t1) = interleave(at_r(_mm512_setzero_si512()), at_r(one));
            let (b0, b1) = interleave(at_r(w), at_r(w1));
            // Columns 32·blk .. 32·blk + 2n of both rows.
            let c = 32 * blk;
            let (m0, m1) = (mask(2 * n), mask((2 * n).saturating_sub(16)));
            // SAFETY: only columns below 2·pw ≤ rs are written (the masks),
            // inside the rs-float rows; c + 16 is formed with wrapping_add
            // and written through only when some lane of m1 is on (then
            // c + 16 < 2·pw).
            unsafe {
                _mm512_mask_storeu_ps(tp.add(c), m0, t0);
                _mm512_mask_storeu_ps(bp.add(c), m0, b0);
                _mm512_mask_storeu_ps(tp.wrapping_add(c + 16), m1, t1);
                _mm512_mask_storeu_ps(bp.wrapping_add(c + 16), m1, b1);
            }
        }
        // The gap columns 2·pw..rs: zeros.
        let mut c = 2 * pw;
        while c < rs {
            let m = mask(rs - c);
            // SAFETY: the m lanes from c lie in the row (c + m ≤ rs).
            unsafe {
                _mm512_mask_storeu_ps(tp.add(c), m, zero);
                _mm512_mask_storeu_ps(bp.add(c), m, zero);
            }
            c += 16;
        }
    }
    rows[2 * ph * rs..].fill(0.0);
    let mut l = [0.0f32; 8];
    // SAFETY: `l` holds exactly 8 floats.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}
