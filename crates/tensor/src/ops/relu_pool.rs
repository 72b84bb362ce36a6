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

use crate::isa::Isa;
use crate::ops::elementwise::relu;

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

// ---------------------------------------------------------------------------
// Backward: the gradient back into the wide rows
// ---------------------------------------------------------------------------

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
