//! The weight gradient's dot products on rows of whole vectors (the
//! ResNets' 32, 16 and 8), over the rows' values only, with dY read at its
//! own row stride.
//!
//! The weight gradient's dot products over wide rows multiply the zeros of
//! the junk columns too, and end each tap's sum with a scalar tail (a wide
//! plane is 6 floats past a multiple of 8 on every ResNet map). Over rows
//! of whole vectors, [`multi_dot_rows`] reads only the values, with no tail,
//! and sums each tap's 16 lanes with vector adds. Its sums are not the wide
//! loop's bits (the lanes hold other products), but the same on AVX-512
//! and AVX2, whatever the threads.

use super::dots::tap_groups;
use super::rows::{RowVectors, MAX_PER_ROW};
use super::*;

/// [`row_vectors`] for the weight gradient's dot products, whose sums over
/// rows are other bits than over wide planes: only rows that every SIMD
/// ISA takes (up to 32 floats, AVX2's four vectors), so that AVX-512 and
/// AVX2 always run the same loop and give the same bits. (The gather's
/// results are the wide loop's bits either way.)
pub(super) fn dot_row_vectors(len: usize, k: Isa) -> Option<RowVectors> {
    row_vectors(len, k).filter(|_| len <= 8 * MAX_PER_ROW)
}

/// `out[t] = Σ_{r < rows, x < len} a[r·a_stride + x] · src[offs[t] + r·stride + x]`:
/// [`multi_dot`] over `rows` rows of `len` values, rows `a_stride` apart in
/// `a` and `stride` apart in `src`, skipping what lies between (so a plain
/// dY, rows `len` apart, is read where it lies). Element x of a row goes
/// to lane x mod 16 of the tap's accumulator (rows in order); the 16 lanes
/// are then summed as the wide loop sums its own (`lanes[j] + lanes[j + 8]`,
/// then [`sum8`](super::dots::sum8)'s tree). `rv` comes from
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

/// The sum of 8 lanes in [`sum8`](super::dots::sum8)'s order, with vector
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
                super::super::dots::sum8(v).to_bits(),
                "{v:?}"
            );
        }
    }
}
