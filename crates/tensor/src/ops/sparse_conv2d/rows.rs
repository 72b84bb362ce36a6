//! The inner loops of `loops.rs` on rows of whole vectors: the gather
//! written straight into a compact (rows, len) plane, and the weight
//! gradient's dot products over the rows' values only.
//!
//! The wide trick computes an output plane as one long row of the input's
//! row length Wp, with Wp − OW junk columns per row, and then copies the OW
//! good ones of each row out. On the ResNets' maps (rows of 32, 16 and 8
//! floats, whole vectors) a register block can instead hold R rows of V
//! vectors: vector (r, v) reads the input at r·Wp + 16v + off_t and is
//! stored at r·OW + 16v. The junk columns are neither computed nor copied
//! (a sixteenth of the work on 32 × 32 maps, a fifth on 8 × 8 ones), and the
//! copy out of the wide rows, one of the bigger costs of a sparse step at
//! 10 % density, is gone. Each output is the same chain of FMAs as in
//! [`gather_fma`], bias first, then the taps in order, so the result is
//! bitwise the wide loop's.
//!
//! The weight gradient's dot products over wide rows multiply the zeros of
//! the junk columns too, and end each tap's sum with a scalar tail (a wide
//! plane is 6 floats past a multiple of 8 on every ResNet map). Over rows
//! of whole vectors, [`multi_dot_rows`] reads only the values, with no tail,
//! and sums each tap's 16 lanes with vector adds. Its sums are not the wide
//! loop's bits (the lanes hold other products), but the same on AVX-512
//! and AVX2, whatever the threads.

use super::loops::tap_groups;
use super::*;

/// How [`gather_fma_rows`] covers a row: `per_row` vectors of 16 floats
/// (AVX-512) or of 8 (AVX2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct RowVectors {
    zmm: bool,
    per_row: usize,
}

/// Vectors per row at most: rows of up to 64 floats with AVX-512, 32 with
/// AVX2. Longer rows gain little from skipping their few junk columns.
const MAX_PER_ROW: usize = 4;

/// Registers of outputs per block, as in the wide loops.
const MAX_VECS: usize = 12;

/// Whether rows of `len` outputs are whole vectors on this ISA, and how
/// many; `None` sends the caller to the wide loop (the portable path
/// always, and rows such as the LeNet's 28, 24 or 10).
pub(super) fn row_vectors(len: usize, k: Isa) -> Option<RowVectors> {
    let fits = |lanes: usize| len > 0 && len.is_multiple_of(lanes) && len / lanes <= MAX_PER_ROW;
    let (zmm, lanes) = if k.avx512() && fits(16) {
        (true, 16)
    } else if k.avx2() && fits(8) {
        (false, 8)
    } else {
        return None;
    };
    // Three vectors a row are not among the block shapes below.
    let per_row = len / lanes;
    (per_row != 3).then_some(RowVectors { zmm, per_row })
}

/// [`row_vectors`] for the weight gradient's dot products, whose sums over
/// rows are other bits than over wide planes: only rows that every SIMD
/// ISA takes (up to 32 floats, AVX2's four vectors), so that AVX-512 and
/// AVX2 always run the same loop and give the same bits. (The gather's
/// results are the wide loop's bits either way.)
pub(super) fn dot_row_vectors(len: usize, k: Isa) -> Option<RowVectors> {
    row_vectors(len, k).filter(|_| len <= 8 * MAX_PER_ROW)
}

/// `out[r·len + x] = init + Σ_t ws[t] · src[r·stride + x + offs[t]]` for
/// every row r < out.len() / len and x < len: [`gather_fma`] over rows
/// whose inputs lie `stride` floats apart, written compactly. `rv` comes
/// from [`row_vectors`] for this `len`.
#[allow(clippy::too_many_arguments)] // gather_fma's operands and the row geometry
pub(super) fn gather_fma_rows(
    src: &[f32],
    stride: usize,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
    len: usize,
    rv: RowVectors,
) {
    assert_eq!(
        offs.len(),
        ws.len(),
        "gather_fma_rows: one weight per offset"
    );
    let lanes = if rv.zmm { 16 } else { 8 };
    assert!(
        len == rv.per_row * lanes && len <= stride && out.len().is_multiple_of(len),
        "gather_fma_rows: rows of {len} in {stride}, {} outputs",
        out.len()
    );
    let rows = out.len() / len;
    if rows == 0 {
        return;
    }
    let reach = offs
        .iter()
        .max()
        .map_or(0, |&m| m + (rows - 1) * stride + len);
    assert!(
        reach <= src.len(),
        "gather_fma_rows: reads up to {reach}, source has {}",
        src.len()
    );
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    let max_rows = MAX_VECS / rv.per_row;
    let blocks = rows.div_ceil(max_rows);
    let (base, extra) = (rows / blocks, rows % blocks);
    let mut r0 = 0;
    for b in 0..blocks {
        let r = base + usize::from(b < extra);
        let block = block_kernel(rv, r);
        // SAFETY: rows r0..r0 + r < rows, so every load lies in
        // off + r·stride + (0..len) for some row r < rows, inside src by
        // the assert above, and every store in out (rows·len floats);
        // `row_vectors` handed out zmm only where AVX-512F is present and
        // ymm only where AVX2 and FMA are.
        unsafe {
            block(
                sp.add(r0 * stride),
                stride,
                offs,
                ws,
                init,
                op.add(r0 * len),
                len,
            )
        };
        r0 += r;
    }
}

/// A block kernel: R rows of V vectors from `src`, rows `stride` apart, to
/// `out`, rows `len` apart.
type Block = unsafe fn(*const f32, usize, &[usize], &[f32], f32, *mut f32, usize);

/// The block kernel for `r` rows of `rv.per_row` vectors (at most
/// [`MAX_VECS`] vectors in all).
fn block_kernel(rv: RowVectors, r: usize) -> Block {
    #[cfg(target_arch = "x86_64")]
    {
        if rv.zmm {
            return match (rv.per_row, r) {
                (1, 1) => block_avx512::<1, 1>,
                (1, 2) => block_avx512::<1, 2>,
                (1, 3) => block_avx512::<1, 3>,
                (1, 4) => block_avx512::<1, 4>,
                (1, 5) => block_avx512::<1, 5>,
                (1, 6) => block_avx512::<1, 6>,
                (1, 7) => block_avx512::<1, 7>,
                (1, 8) => block_avx512::<1, 8>,
                (1, 9) => block_avx512::<1, 9>,
                (1, 10) => block_avx512::<1, 10>,
                (1, 11) => block_avx512::<1, 11>,
                (1, 12) => block_avx512::<1, 12>,
                (2, 1) => block_avx512::<2, 1>,
                (2, 2) => block_avx512::<2, 2>,
                (2, 3) => block_avx512::<2, 3>,
                (2, 4) => block_avx512::<2, 4>,
                (2, 5) => block_avx512::<2, 5>,
                (2, 6) => block_avx512::<2, 6>,
                (4, 1) => block_avx512::<4, 1>,
                (4, 2) => block_avx512::<4, 2>,
                (4, 3) => block_avx512::<4, 3>,
                _ => unreachable!("no block of {r} rows of {} vectors", rv.per_row),
            };
        }
        match (rv.per_row, r) {
            (1, 1) => block_avx2::<1, 1>,
            (1, 2) => block_avx2::<1, 2>,
            (1, 3) => block_avx2::<1, 3>,
            (1, 4) => block_avx2::<1, 4>,
            (1, 5) => block_avx2::<1, 5>,
            (1, 6) => block_avx2::<1, 6>,
            (1, 7) => block_avx2::<1, 7>,
            (1, 8) => block_avx2::<1, 8>,
            (1, 9) => block_avx2::<1, 9>,
            (1, 10) => block_avx2::<1, 10>,
            (1, 11) => block_avx2::<1, 11>,
            (1, 12) => block_avx2::<1, 12>,
            (2, 1) => block_avx2::<2, 1>,
            (2, 2) => block_avx2::<2, 2>,
            (2, 3) => block_avx2::<2, 3>,
            (2, 4) => block_avx2::<2, 4>,
            (2, 5) => block_avx2::<2, 5>,
            (2, 6) => block_avx2::<2, 6>,
            (4, 1) => block_avx2::<4, 1>,
            (4, 2) => block_avx2::<4, 2>,
            (4, 3) => block_avx2::<4, 3>,
            _ => unreachable!("no block of {r} rows of {} vectors", rv.per_row),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("row_vectors hands out no rows off x86-64 ({rv:?}, {r})")
}

/// R rows of V 8-float vectors: per tap, one broadcast, and one load and
/// one FMA per vector.
///
/// # Safety
/// AVX2 and FMA; `offs.len() == ws.len()`; for every t and row r < R,
/// src + offs[t] + r·stride .. + 8V is readable, and out + r·len .. + 8V
/// writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const V: usize, const R: usize>(
    src: *const f32,
    stride: usize,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: *mut f32,
    len: usize,
) {
    use std::arch::x86_64::*;
    let mut a = [[_mm256_set1_ps(init); V]; R];
    for (&off, &wv) in offs.iter().zip(ws) {
        let wv = _mm256_set1_ps(wv);
        for (r, ar) in a.iter_mut().enumerate() {
            // SAFETY: the caller's bounds: row r of the tap's input.
            let s = unsafe { src.add(off + r * stride) };
            for (j, aj) in ar.iter_mut().enumerate() {
                // SAFETY: 8j + 8 <= 8V.
                *aj = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(s.add(8 * j)) }, *aj);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (j, aj) in ar.iter().enumerate() {
            // SAFETY: the caller's bounds: out + r·len + 8V is writable.
            unsafe { _mm256_storeu_ps(out.add(r * len + 8 * j), *aj) };
        }
    }
}

/// As [`block_avx2`] with 16-float vectors.
///
/// # Safety
/// AVX-512F; otherwise as [`block_avx2`] with 16V for 8V.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512<const V: usize, const R: usize>(
    src: *const f32,
    stride: usize,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: *mut f32,
    len: usize,
) {
    use std::arch::x86_64::*;
    let mut a = [[_mm512_set1_ps(init); V]; R];
    for (&off, &wv) in offs.iter().zip(ws) {
        let wv = _mm512_set1_ps(wv);
        for (r, ar) in a.iter_mut().enumerate() {
            // SAFETY: the caller's bounds: row r of the tap's input.
            let s = unsafe { src.add(off + r * stride) };
            for (j, aj) in ar.iter_mut().enumerate() {
                // SAFETY: 16j + 16 <= 16V.
                *aj = _mm512_fmadd_ps(wv, unsafe { _mm512_loadu_ps(s.add(16 * j)) }, *aj);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (j, aj) in ar.iter().enumerate() {
            // SAFETY: the caller's bounds: out + r·len + 16V is writable.
            unsafe { _mm512_storeu_ps(out.add(r * len + 16 * j), *aj) };
        }
    }
}

/// `out[t] = Σ_{r < rows, x < len} a[r·a_stride + x] · src[offs[t] + r·stride + x]`:
/// [`multi_dot`] over `rows` rows of `len` values, rows `a_stride` apart in
/// `a` and `stride` apart in `src`, skipping what lies between (so a plain
/// dY, rows `len` apart, is read where it lies). Element x of a row goes
/// to lane x mod 16 of the tap's accumulator (rows in order); the 16 lanes
/// are then summed as the wide loop sums its own (`lanes[j] + lanes[j + 8]`,
/// then [`sum8`](super::loops::sum8)'s tree). `rv` comes from
/// [`row_vectors`] for this `len`.
#[allow(clippy::too_many_arguments)] // multi_dot's operands and the row geometry
pub(super) fn multi_dot_rows(
    a: &[f32],
    a_stride: usize,
    src: &[f32],
    offs: &[usize],
    out: &mut [f32],
    stride: usize,
    len: usize,
    rows: usize,
    rv: RowVectors,
) {
    assert_eq!(
        offs.len(),
        out.len(),
        "multi_dot_rows: one output per offset"
    );
    let lanes = if rv.zmm { 16 } else { 8 };
    assert!(
        len == rv.per_row * lanes && len <= stride && len <= a_stride,
        "multi_dot_rows: rows of {len} in {stride} and {a_stride}"
    );
    if rows == 0 {
        out.fill(0.0);
        return;
    }
    let a_span = (rows - 1) * a_stride + len;
    let reach = offs
        .iter()
        .max()
        .map_or(0, |&m| m + (rows - 1) * stride + len);
    assert!(
        a_span <= a.len() && reach <= src.len(),
        "multi_dot_rows: reads {a_span} of {} and up to {reach} of {}",
        a.len(),
        src.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        // Rows of 8 take the AVX2 loop on either ISA (`row_vectors`).
        let (group, zmm) = if rv.zmm { (8, true) } else { (4, false) };
        for r in tap_groups(offs.len(), group) {
            let (o, d) = (&offs[r.clone()], &mut out[r]);
            let geom = (a_stride, stride, len, rows);
            // SAFETY (every arm): the bounds were asserted above for every
            // tap; `row_vectors` handed out zmm only where AVX-512F is
            // present and ymm only where AVX2 and FMA are, and rows of 8
            // come from either, both with AVX2.
            unsafe {
                match (zmm, o.len()) {
                    (true, 1) => dot_rows_avx512::<1>(a, src, o, d, geom),
                    (true, 2) => dot_rows_avx512::<2>(a, src, o, d, geom),
                    (true, 3) => dot_rows_avx512::<3>(a, src, o, d, geom),
                    (true, 4) => dot_rows_avx512::<4>(a, src, o, d, geom),
                    (true, 5) => dot_rows_avx512::<5>(a, src, o, d, geom),
                    (true, 6) => dot_rows_avx512::<6>(a, src, o, d, geom),
                    (true, 7) => dot_rows_avx512::<7>(a, src, o, d, geom),
                    (true, _) => dot_rows_avx512::<8>(a, src, o, d, geom),
                    (false, 1) => dot_rows_avx2::<1>(a, src, o, d, geom),
                    (false, 2) => dot_rows_avx2::<2>(a, src, o, d, geom),
                    (false, 3) => dot_rows_avx2::<3>(a, src, o, d, geom),
                    (false, _) => dot_rows_avx2::<4>(a, src, o, d, geom),
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("row_vectors hands out no rows off x86-64 ({rv:?})")
}

/// The sum of 8 lanes in [`sum8`](super::loops::sum8)'s order, with vector
/// adds: ((v0 + v4) + (v1 + v5)) + ((v2 + v6) + (v3 + v7)), each add the
/// same rounding as there.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn sum8_avx(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    // (v0 + v4, v1 + v5, v2 + v6, v3 + v7)
    let u = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    // (u0 + u1, _, u2 + u3, _): movehdup gives (u1, u1, u3, u3)
    let w = _mm_add_ps(u, _mm_movehdup_ps(u));
    // (u0 + u1) + (u2 + u3)
    _mm_cvtss_f32(_mm_add_ss(w, _mm_movehl_ps(w, w)))
}

/// G taps of [`multi_dot_rows`] on 8-float vectors: lanes 0..8 (`lo`) and
/// 8..16 (`hi`) of the 16-lane sums kept apart, each load of `a` shared by
/// the G taps.
///
/// # Safety
/// AVX2 and FMA; `offs.len() == out.len() == G`; with (a_stride, stride,
/// len, rows) = `geom`, len a multiple of 8, (rows − 1)·a_stride + len ≤
/// a.len() and offs[t] + (rows − 1)·stride + len ≤ src.len() for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2<const G: usize>(
    a: &[f32],
    src: &[f32],
    offs: &[usize],
    out: &mut [f32],
    (a_stride, stride, len, rows): (usize, usize, usize, usize),
) {
    use std::arch::x86_64::*;
    let (ap, sp) = (a.as_ptr(), src.as_ptr());
    let o: [usize; G] = std::array::from_fn(|t| offs[t]);
    let mut lo = [_mm256_setzero_ps(); G];
    let mut hi = [_mm256_setzero_ps(); G];
    // SAFETY (every load): with q = r·a_stride + x, p = r·stride + x and
    // x + 8 <= len (x + 16 for the pair), q + 8 <= (rows − 1)·a_stride +
    // len <= a.len(), and off + p + 8 <= src.len(), the caller's bounds.
    for r in 0..rows {
        let mut x = 0;
        while x + 16 <= len {
            let (p, q) = (r * stride + x, r * a_stride + x);
            let (a0, a1) = unsafe { (_mm256_loadu_ps(ap.add(q)), _mm256_loadu_ps(ap.add(q + 8))) };
            for ((l, h), &off) in lo.iter_mut().zip(hi.iter_mut()).zip(&o) {
                let (x0, x1) = unsafe {
                    (
                        _mm256_loadu_ps(sp.add(off + p)),
                        _mm256_loadu_ps(sp.add(off + p + 8)),
                    )
                };
                *l = _mm256_fmadd_ps(a0, x0, *l);
                *h = _mm256_fmadd_ps(a1, x1, *h);
            }
            x += 16;
        }
        if x < len {
            // The last 8 of a row of 8, 24, ... go to the low lanes.
            let (p, q) = (r * stride + x, r * a_stride + x);
            let a0 = unsafe { _mm256_loadu_ps(ap.add(q)) };
            for (l, &off) in lo.iter_mut().zip(&o) {
                let x0 = unsafe { _mm256_loadu_ps(sp.add(off + p)) };
                *l = _mm256_fmadd_ps(a0, x0, *l);
            }
        }
    }
    for ((l, h), d) in lo.iter().zip(&hi).zip(out.iter_mut()) {
        *d = sum8_avx(_mm256_add_ps(*l, *h));
    }
}

/// G taps of [`multi_dot_rows`] on 16-float vectors, bitwise
/// [`dot_rows_avx2`]: lane j of one accumulator is lane j of its `lo`
/// (j < 8) or `hi` (j ≥ 8), fed the same products in the same order.
///
/// # Safety
/// AVX-512F; as [`dot_rows_avx2`], with len a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_rows_avx512<const G: usize>(
    a: &[f32],
    src: &[f32],
    offs: &[usize],
    out: &mut [f32],
    (a_stride, stride, len, rows): (usize, usize, usize, usize),
) {
    use std::arch::x86_64::*;
    let (ap, sp) = (a.as_ptr(), src.as_ptr());
    let o: [usize; G] = std::array::from_fn(|t| offs[t]);
    let mut acc = [_mm512_setzero_ps(); G];
    for r in 0..rows {
        for x in (0..len).step_by(16) {
            let (p, q) = (r * stride + x, r * a_stride + x);
            // SAFETY: q + 16 <= (rows − 1)·a_stride + len <= a.len().
            let av = unsafe { _mm512_loadu_ps(ap.add(q)) };
            for (s, &off) in acc.iter_mut().zip(&o) {
                // SAFETY: off + p + 16 <= src.len(), the caller's bound.
                let xv = unsafe { _mm512_loadu_ps(sp.add(off + p)) };
                *s = _mm512_fmadd_ps(av, xv, *s);
            }
        }
    }
    for (s, d) in acc.iter().zip(out.iter_mut()) {
        // The upper 8 lanes, through the AVX-512F extract of 4 doubles.
        let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*s)));
        let halves = _mm256_add_ps(_mm512_castps512_ps256(*s), upper);
        *d = sum8_avx(halves);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// multi_dot_rows on every ISA that takes rows against a scalar f64
    /// sum over the rows' values, at row lengths, row counts and tap counts
    /// around the blocks; AVX-512 and AVX2 bitwise equal.
    #[test]
    fn row_dots_match_the_scalar_sum() {
        let src: Vec<f32> = (0..6000)
            .map(|i| ((i * 53 % 97) as f32) / 40.0 - 1.2)
            .collect();
        let a: Vec<f32> = (0..3000)
            .map(|i| ((i * 29 % 89) as f32) / 30.0 - 1.5)
            .collect();
        for len in [8, 16, 32, 64] {
            for (rows, gap) in [(1, 0), (3, 2), (8, 2), (13, 5), (32, 2)] {
                // a's rows are packed (plain dY) or as far apart as src's.
                let stride = len + gap;
                let a_stride = if rows % 2 == 0 { len } else { stride };
                for taps in [1, 3, 4, 5, 8, 9, 17] {
                    let offs: Vec<usize> = (0..taps).map(|t| (t * 37) % 300).collect();
                    let mut results = Vec::new();
                    for k in Isa::available() {
                        let Some(rv) = row_vectors(len, k) else {
                            continue;
                        };
                        // The weight gradient takes rows on every SIMD ISA
                        // or on none.
                        let simd = k.avx2();
                        assert_eq!(
                            dot_row_vectors(len, k).is_some(),
                            simd && len <= 32,
                            "{k:?} {len}"
                        );
                        let mut out = vec![f32::NAN; taps];
                        multi_dot_rows(&a, a_stride, &src, &offs, &mut out, stride, len, rows, rv);
                        for (t, (&g, &off)) in out.iter().zip(&offs).enumerate() {
                            let want: f64 = (0..rows)
                                .flat_map(|r| (0..len).map(move |x| (r, x)))
                                .map(|(r, x)| {
                                    let (p, q) = (r * stride + x, r * a_stride + x);
                                    a[q] as f64 * src[off + p] as f64
                                })
                                .sum();
                            assert!(
                                (g as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "{k:?} len {len} rows {rows} taps {taps} tap {t}: {g} vs {want}"
                            );
                        }
                        results.push((k, out));
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    if let [(_, first), rest @ ..] = &results[..] {
                        for (k, other) in rest {
                            assert_eq!(bits(other), bits(first), "{k:?} len {len} taps {taps}");
                        }
                    }
                }
            }
        }
    }

    /// The vector sum of 8 lanes is the scalar tree's, bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sum8_avx_is_sum8() {
        if !Isa::available().iter().any(|k| k.avx2()) {
            return;
        }
        let mut x = 0x9e37_79b9u32;
        for _ in 0..1000 {
            let v: [f32; 8] = std::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 10f32.powi((x % 7) as i32 - 3)
            });
            // SAFETY: AVX2 is present (checked above); `v` holds 8 floats.
            let got = unsafe { sum8_avx(std::arch::x86_64::_mm256_loadu_ps(v.as_ptr())) };
            assert_eq!(
                got.to_bits(),
                super::super::loops::sum8(v).to_bits(),
                "{v:?}"
            );
        }
    }

    /// On every ISA that takes rows, for row lengths and row counts around
    /// the block shapes: the rows' outputs are bitwise the wide loop's on
    /// the same ISA, copied out of its wide rows, and nothing outside the
    /// plane is written.
    #[test]
    fn rows_give_the_wide_loops_bits() {
        let src: Vec<f32> = (0..6000)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let mut covered = 0;
        for k in Isa::available() {
            for len in [8, 16, 24, 32, 48, 64] {
                let Some(rv) = row_vectors(len, k) else {
                    continue;
                };
                for (rows, gap) in [(1, 0), (2, 2), (5, 2), (7, 3), (8, 2), (13, 1), (32, 2)] {
                    let stride = len + gap;
                    for taps in [0, 1, 9, 23] {
                        let offs: Vec<usize> = (0..taps).map(|t| (t * 131) % 700).collect();
                        let ws: Vec<f32> = (0..taps).map(|t| 0.3 - 0.07 * t as f32).collect();
                        let wide = (rows - 1) * stride + len;
                        let mut yw = vec![0.0; wide];
                        gather_fma(&src, &offs, &ws, 0.5, &mut yw, k);
                        let mut want = vec![0.0; rows * len];
                        copy_rows(&mut want, len, &yw, stride, rows, len, k);
                        let mut got = vec![f32::NAN; rows * len + 40];
                        got[rows * len..].fill(7.0);
                        gather_fma_rows(
                            &src,
                            stride,
                            &offs,
                            &ws,
                            0.5,
                            &mut got[..rows * len],
                            len,
                            rv,
                        );
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got[..rows * len]),
                            bits(&want),
                            "{k:?} len {len} rows {rows} stride {stride} taps {taps}"
                        );
                        assert!(
                            got[rows * len..].iter().all(|&v| v == 7.0),
                            "wrote past out"
                        );
                        covered += 1;
                    }
                }
            }
        }
        // Off x86-64, or with the portable path forced, no ISA takes rows.
        if Isa::available().iter().any(|k| k.avx2()) {
            assert!(covered > 0);
        }
    }

    /// Which rows go to which vectors: whole vectors only, at most four a
    /// row and never three, and none on the portable path.
    #[test]
    fn row_vectors_take_whole_vectors_only() {
        for k in Isa::available() {
            for len in 0..80 {
                match row_vectors(len, k) {
                    None => {}
                    Some(rv) => {
                        let lanes = if rv.zmm { 16 } else { 8 };
                        assert_eq!(rv.per_row * lanes, len, "{k:?} {len}");
                        assert!(matches!(rv.per_row, 1 | 2 | 4), "{k:?} {len}");
                        assert!(k.avx2(), "{k:?} took rows of {len}");
                    }
                }
            }
        }
    }
}
