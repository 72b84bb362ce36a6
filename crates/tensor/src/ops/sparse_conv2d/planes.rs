//! The planes the wide kernels read, and the row copies in and out of the
//! wide layouts: each input plane zero-padded ([`pad_planes`]) and, for a
//! stride of 2 or more, split into its phases ([`prepare_planes`]), and
//! back ([`unprepare_plane`]); a stride-2 row split into its even and odd
//! columns and merged back ([`split_columns`], [`merge_columns`]); short
//! rows copied between strides ([`copy_rows`]). Pure data movement: every
//! path writes the same bits. Each SIMD loop has its portable twin and is
//! tested against it on every instruction set this CPU has.

use super::layout::Plan;
use crate::isa::Isa;
use crate::ops::geometry::Conv2dShape;
use std::cell::RefCell;

/// The geometry of a buffer of prepared planes: which of its floats are
/// the zeros of the padding (and of the phases' ragged edges).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Geometry {
    channels: usize,
    in_hw: (usize, usize),
    padding: (usize, usize),
    stride: (usize, usize),
}

thread_local! {
    /// A task's prepared planes, and the geometry whose zeros they hold.
    static PLANES: RefCell<(Vec<f32>, Option<Geometry>)> = const { RefCell::new((Vec::new(), None)) };
}

/// Runs `f` on the planes of `x` (C', H, W) prepared for the wide loops
/// ([`prepare_planes`]), in this thread's buffer for them. The zeros are
/// written only when the buffer last held another geometry: a ResNet's
/// forward pass prepares one image per task, and writing the borders of
/// every plane of every image took two `memset` calls and a loop a plane
/// (4% of sparse evaluation); the convolutions of a stage share one
/// geometry.
pub(super) fn with_prepared_planes<R>(
    s: &Conv2dShape,
    plan: &Plan,
    x: &[f32],
    k: Isa,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    let channels = x.len() / (s.in_h * s.in_w);
    let geometry = Geometry {
        channels,
        in_hw: (s.in_h, s.in_w),
        padding: s.opts.padding,
        stride: s.opts.stride,
    };
    let len = channels * plan.plane();
    PLANES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut held) => {
            let (buf, held_geometry) = &mut *held;
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            let fresh = *held_geometry != Some(geometry);
            // Until the planes are written, the buffer's zeros are no
            // geometry's (a panic in between leaves it so).
            *held_geometry = None;
            prepare_planes(s, plan, x, &mut buf[..len], fresh, k);
            *held_geometry = Some(geometry);
            f(&buf[..len])
        }
        // Re-entered on this thread: a fresh buffer.
        Err(_) => {
            let mut buf = vec![0.0; len];
            prepare_planes(s, plan, x, &mut buf, true, k);
            f(&buf)
        }
    })
}

/// Copies the (C', H, W) planes of `x` into the middle of the zero-padded
/// (C', H + 2·py, W + 2·px) planes of `xp`. With `zero_borders` false the
/// zeros are left as they are: `xp` holds planes of this shape already,
/// from an earlier call on the same buffer (the images of a task after its
/// first), whose values went only into the middle. Writing the borders
/// for every image took two `memset` calls and a loop a plane, 4% of
/// sparse evaluation.
pub(super) fn pad_planes(
    x: &[f32],
    h: usize,
    w: usize,
    (py, px): (usize, usize),
    xp: &mut [f32],
    zero_borders: bool,
    k: Isa,
) {
    let (hp, wp) = (h + 2 * py, w + 2 * px);
    for (src, dst) in x.chunks_exact(h * w).zip(xp.chunks_exact_mut(hp * wp)) {
        copy_rows(&mut dst[py * wp + px..], wp, src, w, h, w, k);
        if !zero_borders {
            continue;
        }
        // Zeros only where no value went: the rows above and below, and
        // between rows the right border of one and the left of the next
        // (adjacent in memory), each value written once.
        dst[..py * wp + px].fill(0.0);
        for r in py..py + h {
            let gap = (r * wp + px + w)..((r + 1) * wp + px).min(hp * wp);
            for v in &mut dst[gap] {
                *v = 0.0;
            }
        }
        dst[(py + h) * wp..].fill(0.0);
    }
}

/// Whether the kernels read `x` itself (stride 1, no padding) or planes
/// prepared from it by [`prepare_planes`].
pub(super) fn needs_planes(s: &Conv2dShape, plan: &Plan) -> bool {
    s.opts.padding != (0, 0) || plan.phases > 1
}

/// The planes the wide kernels read (see [`Plan`]): each (H, W) plane of
/// `x` zero-padded and, for a stride s > 1, split into its s·s phases,
/// (C', phases, Hp, Wp) in all. For stride 1 this is [`pad_planes`].
/// OVERWRITES xp; with `zero_borders` false, all but its zeros, which an
/// earlier call on the same buffer and shape wrote.
pub(super) fn prepare_planes(
    s: &Conv2dShape,
    plan: &Plan,
    x: &[f32],
    xp: &mut [f32],
    zero_borders: bool,
    k: Isa,
) {
    let (h, w, (py, px), (sy, sx)) = (s.in_h, s.in_w, s.opts.padding, s.opts.stride);
    if plan.phases == 1 {
        return pad_planes(x, h, w, (py, px), xp, zero_borders, k);
    }
    let (hp, wp) = (plan.hp, plan.wp);
    if zero_borders {
        xp.fill(0.0);
    }
    for (src, dst) in x.chunks_exact(h * w).zip(xp.chunks_exact_mut(plan.plane())) {
        for (iy, row) in src.chunks_exact(w).enumerate() {
            let (a, i) = ((iy + py) % sy, (iy + py) / sy);
            if sx == 2 {
                // Phases (a, 0) and (a, 1) are neighbours; the even columns
                // go to phase px mod 2 from column px/2, the odd ones to
                // the other from ⌈px/2⌉.
                let (p0, p1) = dst[2 * a * hp * wp..][..2 * hp * wp].split_at_mut(hp * wp);
                let (e, o) = if px.is_multiple_of(2) {
                    (p0, p1)
                } else {
                    (p1, p0)
                };
                let e = &mut e[i * wp + px / 2..][..w.div_ceil(2)];
                let o = &mut o[i * wp + px.div_ceil(2)..][..w / 2];
                split_columns(row, e, o, k);
                continue;
            }
            for b in 0..sx {
                // The columns ix with (ix + px) mod sx = b, from the first.
                let ix0 = (b + sx - px % sx) % sx;
                if ix0 >= w {
                    continue;
                }
                let dst_row = &mut dst[((a * sx + b) * hp + i) * wp..][..wp];
                let j0 = (ix0 + px) / sx;
                for (d, &v) in dst_row[j0..].iter_mut().zip(row[ix0..].iter().step_by(sx)) {
                    *d = v;
                }
            }
        }
    }
}

/// The inverse of [`prepare_planes`] for one channel: the (H, W) plane
/// `dst` read back out of its prepared planes `src` (phases·Hp·Wp),
/// dropping the padding. OVERWRITES dst.
pub(super) fn unprepare_plane(s: &Conv2dShape, plan: &Plan, src: &[f32], dst: &mut [f32], k: Isa) {
    let (h, w, (py, px), (sy, sx)) = (s.in_h, s.in_w, s.opts.padding, s.opts.stride);
    let (hp, wp) = (plan.hp, plan.wp);
    if plan.phases == 1 {
        return copy_rows(dst, w, &src[py * wp + px..], wp, h, w, k);
    }
    for (iy, row) in dst.chunks_exact_mut(w).enumerate() {
        let (a, i) = ((iy + py) % sy, (iy + py) / sy);
        if sx == 2 {
            // As in `prepare_planes`.
            let (p0, p1) = src[2 * a * hp * wp..][..2 * hp * wp].split_at(hp * wp);
            let (e, o) = if px.is_multiple_of(2) {
                (p0, p1)
            } else {
                (p1, p0)
            };
            let e = &e[i * wp + px / 2..][..w.div_ceil(2)];
            let o = &o[i * wp + px.div_ceil(2)..][..w / 2];
            merge_columns(e, o, row, k);
            continue;
        }
        for b in 0..sx {
            let ix0 = (b + sx - px % sx) % sx;
            if ix0 >= w {
                continue;
            }
            let src_row = &src[((a * sx + b) * hp + i) * wp..][..wp];
            let j0 = (ix0 + px) / sx;
            for (d, &v) in row[ix0..].iter_mut().step_by(sx).zip(&src_row[j0..]) {
                *d = v;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Splitting a row into its even and odd columns, and merging them back
// ---------------------------------------------------------------------------

/// even[t] = row[2t] and odd[t] = row[2t + 1]: the two column phases of a
/// stride-2 convolution's input row. Element by element, the compiler
/// leaves the strided reads scalar, and the two strided layers of a
/// ResNet-20 spent as long splitting their inputs as convolving them.
pub(super) fn split_columns(row: &[f32], even: &mut [f32], odd: &mut [f32], k: Isa) {
    let n = row.len();
    assert!(
        even.len() == n.div_ceil(2) && odd.len() == n / 2,
        "split_columns: {n} values into {} even and {} odd",
        even.len(),
        odd.len()
    );
    let mut done = 0; // pairs split so far
    #[cfg(target_arch = "x86_64")]
    {
        if k.avx512() {
            // SAFETY: AVX-512F is present (checked by `avx512`); the
            // lengths were asserted above.
            done = unsafe { split_columns_avx512(row, even, odd) };
        }
        if k.avx2() {
            let (r, e, o) = (&row[2 * done..], &mut even[done..], &mut odd[done..]);
            // SAFETY: AVX2 is present (checked by `avx2`); the tails keep
            // the asserted lengths.
            done += unsafe { split_columns_avx2(r, e, o) };
        }
    }
    let _ = k; // (unused off x86-64)
    for t in done..n / 2 {
        even[t] = row[2 * t];
        odd[t] = row[2 * t + 1];
    }
    if n % 2 == 1 {
        even[n / 2] = row[n - 1];
    }
}

/// row[2t] = even[t] and row[2t + 1] = odd[t]: the inverse of
/// [`split_columns`].
pub(super) fn merge_columns(even: &[f32], odd: &[f32], row: &mut [f32], k: Isa) {
    let n = row.len();
    assert!(
        even.len() == n.div_ceil(2) && odd.len() == n / 2,
        "merge_columns: {} even and {} odd values into {n}",
        even.len(),
        odd.len()
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if k.avx512() {
            // SAFETY: AVX-512F is present; the lengths were asserted above.
            done = unsafe { merge_columns_avx512(even, odd, row) };
        }
        if k.avx2() {
            let (e, o, r) = (&even[done..], &odd[done..], &mut row[2 * done..]);
            // SAFETY: AVX2 is present; the tails keep the asserted lengths.
            done += unsafe { merge_columns_avx2(e, o, r) };
        }
    }
    let _ = k; // (unused off x86-64)
    for t in done..n / 2 {
        row[2 * t] = even[t];
        row[2 * t + 1] = odd[t];
    }
    if n % 2 == 1 {
        row[n - 1] = even[n / 2];
    }
}

/// AVX-512 `split_columns` on blocks of 16 pairs; returns the pairs done.
///
/// # Safety
/// The CPU must support AVX-512F; even and odd hold at least
/// row.len() / 2 values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn split_columns_avx512(row: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    // Lane l of the result takes lane idx[l] of (lo, hi) as one 32-lane row.
    let idx_even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let idx_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut t = 0;
    while t + 16 <= pairs {
        // SAFETY: row[2t..2t + 32] lies within row (2t + 32 ≤ 2·pairs), and
        // even[t..t + 16], odd[t..t + 16] within theirs (t + 16 ≤ pairs).
        unsafe {
            let lo = _mm512_loadu_ps(row.as_ptr().add(2 * t));
            let hi = _mm512_loadu_ps(row.as_ptr().add(2 * t + 16));
            _mm512_storeu_ps(
                even.as_mut_ptr().add(t),
                _mm512_permutex2var_ps(lo, idx_even, hi),
            );
            _mm512_storeu_ps(
                odd.as_mut_ptr().add(t),
                _mm512_permutex2var_ps(lo, idx_odd, hi),
            );
        }
        t += 16;
    }
    t
}

/// AVX2 `split_columns` on blocks of 8 pairs; returns the pairs done.
///
/// # Safety
/// As [`split_columns_avx512`], with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn split_columns_avx2(row: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    let mut t = 0;
    while t + 8 <= pairs {
        // SAFETY: as in the AVX-512 loop, with blocks of 16 floats.
        unsafe {
            let a = _mm256_loadu_ps(row.as_ptr().add(2 * t)); // a0 … a7
            let b = _mm256_loadu_ps(row.as_ptr().add(2 * t + 8)); // b0 … b7
                                                                  // Within each 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6], and the odd ones.
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            // 64-bit lanes in the order 0, 2, 1, 3: [a0 a2 a4 a6 b0 b2 b4 b6].
            let e = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e));
            let o = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o));
            _mm256_storeu_ps(even.as_mut_ptr().add(t), _mm256_castpd_ps(e));
            _mm256_storeu_ps(odd.as_mut_ptr().add(t), _mm256_castpd_ps(o));
        }
        t += 8;
    }
    t
}

/// AVX-512 `merge_columns` on blocks of 16 pairs; returns the pairs done.
///
/// # Safety
/// The CPU must support AVX-512F; even and odd hold at least
/// row.len() / 2 values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn merge_columns_avx512(even: &[f32], odd: &[f32], row: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    // Lanes 0–15 are even's, 16–31 odd's.
    let idx_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let idx_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let mut t = 0;
    while t + 16 <= pairs {
        // SAFETY: as in `split_columns_avx512`, reads and writes swapped.
        unsafe {
            let e = _mm512_loadu_ps(even.as_ptr().add(t));
            let o = _mm512_loadu_ps(odd.as_ptr().add(t));
            _mm512_storeu_ps(
                row.as_mut_ptr().add(2 * t),
                _mm512_permutex2var_ps(e, idx_lo, o),
            );
            _mm512_storeu_ps(
                row.as_mut_ptr().add(2 * t + 16),
                _mm512_permutex2var_ps(e, idx_hi, o),
            );
        }
        t += 16;
    }
    t
}

/// AVX2 `merge_columns` on blocks of 8 pairs; returns the pairs done.
///
/// # Safety
/// As [`merge_columns_avx512`], with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn merge_columns_avx2(even: &[f32], odd: &[f32], row: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    let mut t = 0;
    while t + 8 <= pairs {
        // SAFETY: as in `split_columns_avx2`, reads and writes swapped.
        unsafe {
            let e = _mm256_loadu_ps(even.as_ptr().add(t));
            let o = _mm256_loadu_ps(odd.as_ptr().add(t));
            let lo = _mm256_unpacklo_ps(e, o); // [e0 o0 e1 o1 | e4 o4 e5 o5]
            let hi = _mm256_unpackhi_ps(e, o); // [e2 o2 e3 o3 | e6 o6 e7 o7]
            let first = _mm256_permute2f128_ps::<0x20>(lo, hi); // the low halves
            let second = _mm256_permute2f128_ps::<0x31>(lo, hi); // the high halves
            _mm256_storeu_ps(row.as_mut_ptr().add(2 * t), first);
            _mm256_storeu_ps(row.as_mut_ptr().add(2 * t + 8), second);
        }
        t += 8;
    }
    t
}

// ---------------------------------------------------------------------------
// Row copies in and out of the wide layouts
// ---------------------------------------------------------------------------

/// Copies `rows` rows of `len` floats from `src`, whose rows start
/// `src_stride` floats apart, to `dst`, whose rows start `dst_stride` apart:
/// the short rows in and out of the wide layouts (10 to 32 floats in the
/// LeNet). Row by row, `copy_from_slice` would call `memmove` for each.
pub(super) fn copy_rows(
    dst: &mut [f32],
    dst_stride: usize,
    src: &[f32],
    src_stride: usize,
    rows: usize,
    len: usize,
    k: Isa,
) {
    if rows == 0 || len == 0 {
        return;
    }
    let ends_inside = |stride: usize, n: usize| {
        (rows - 1)
            .checked_mul(stride)
            .and_then(|e| e.checked_add(len))
            .is_some_and(|e| e <= n)
    };
    assert!(
        len <= src_stride.min(dst_stride)
            && ends_inside(src_stride, src.len())
            && ends_inside(dst_stride, dst.len()),
        "copy_rows: {rows} rows of {len} out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if k.avx512() {
        // SAFETY: AVX-512F is present (checked by `avx512`); the bounds the
        // function relies on were asserted above.
        unsafe { copy_rows_avx512(dst, dst_stride, src, src_stride, rows, len) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k.avx2() {
        // SAFETY: AVX2 is present (checked by `avx2`); the bounds the
        // function relies on were asserted above.
        unsafe { copy_rows_avx2(dst, dst_stride, src, src_stride, rows, len) };
        return;
    }
    let _ = k; // (unused off x86-64)
    for r in 0..rows {
        let (d, s) = (
            &mut dst[r * dst_stride..][..len],
            &src[r * src_stride..][..len],
        );
        let mut d8 = d.chunks_exact_mut(8);
        let mut s8 = s.chunks_exact(8);
        for (d, s) in (&mut d8).zip(&mut s8) {
            d.copy_from_slice(s);
        }
        for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
            *d = *s;
        }
    }
}

/// AVX2 `copy_rows`: 8 floats per load and store; the last 1 to 7 of each
/// row as the row's last 8 again (rows shorter than 8: a masked load and
/// store). The loop over rows is the inner
/// one: a row-by-row copy loop is a pattern the compiler replaces with a
/// call to `memcpy`, which costs more than the copy for rows this short.
///
/// # Safety
/// The CPU must support AVX2; `len` ≤ both strides, and the last row ends
/// inside both slices: `(rows − 1)·stride + len ≤ len()` for each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_rows_avx2(
    dst: &mut [f32],
    dst_stride: usize,
    src: &[f32],
    src_stride: usize,
    rows: usize,
    len: usize,
) {
    use std::arch::x86_64::*;
    let (full, rem) = (len - len % 8, len % 8);
    let (dp, sp) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY (both loops): every access lies in the first `len` floats of
    // a row r < rows, which the caller guarantees are inside both slices;
    // masked-off lanes are not accessed.
    for i in (0..full).step_by(8) {
        for r in 0..rows {
            unsafe {
                let v = _mm256_loadu_ps(sp.add(r * src_stride + i));
                _mm256_storeu_ps(dp.add(r * dst_stride + i), v);
            }
        }
    }
    if rem > 0 && len >= 8 {
        // The last 8 of each row again, overlapping the copied ones with the
        // same values: a masked store is exact too, but on some CPUs (AMD's)
        // it costs ten times more.
        for r in 0..rows {
            unsafe {
                let v = _mm256_loadu_ps(sp.add(r * src_stride + len - 8));
                _mm256_storeu_ps(dp.add(r * dst_stride + len - 8), v);
            }
        }
    } else if rem > 0 {
        // Lane i is copied iff i < rem (mask lanes have their sign bit set).
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lane);
        for r in 0..rows {
            unsafe {
                let v = _mm256_maskload_ps(sp.add(r * src_stride + full), mask);
                _mm256_maskstore_ps(dp.add(r * dst_stride + full), mask, v);
            }
        }
    }
}

/// AVX-512 `copy_rows`: as the AVX2 loop with 16 floats per load and
/// store; the masked ones cost no more than plain ones here (28 floats, a
/// row of the LeNet's first conv, are one plain and one masked copy).
///
/// # Safety
/// As `copy_rows_avx2`, with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows_avx512(
    dst: &mut [f32],
    dst_stride: usize,
    src: &[f32],
    src_stride: usize,
    rows: usize,
    len: usize,
) {
    use std::arch::x86_64::*;
    let (full, rem) = (len - len % 16, len % 16);
    let (dp, sp) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY (both loops): as in the AVX2 loop.
    for i in (0..full).step_by(16) {
        for r in 0..rows {
            unsafe {
                let v = _mm512_loadu_ps(sp.add(r * src_stride + i));
                _mm512_storeu_ps(dp.add(r * dst_stride + i), v);
            }
        }
    }
    if rem > 0 {
        let mask: __mmask16 = (1 << rem) - 1; // lanes 0..rem
        for r in 0..rows {
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, sp.add(r * src_stride + full));
                _mm512_mask_storeu_ps(dp.add(r * dst_stride + full), mask, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values 0, 1, 2, …: where each lands shows the permutation.
    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn split_and_merge_columns_match_the_definition_on_every_path() {
        for n in 0..80 {
            let row = ramp(n);
            let even: Vec<f32> = row.iter().copied().step_by(2).collect();
            let odd: Vec<f32> = row.iter().copied().skip(1).step_by(2).collect();
            for k in Isa::available() {
                let (mut e, mut o) = (vec![-1.0; n.div_ceil(2)], vec![-1.0; n / 2]);
                split_columns(&row, &mut e, &mut o, k);
                assert_eq!((&e, &o), (&even, &odd), "split {n} on {}", k.name());
                let mut back = vec![-1.0; n];
                merge_columns(&even, &odd, &mut back, k);
                assert_eq!(back, row, "merge {n} on {}", k.name());
            }
        }
    }

    #[test]
    #[should_panic(expected = "split_columns")]
    fn split_columns_rejects_wrong_lengths() {
        let (mut e, mut o) = (vec![0.0; 3], vec![0.0; 3]);
        split_columns(&ramp(7), &mut e, &mut o, Isa::best());
    }

    /// The prepared planes of a stride-2 layer, and back, against the
    /// element-by-element definition, for both paddings' parities.
    #[test]
    fn stride_two_planes_round_trip_on_every_path() {
        use crate::ops::geometry::Conv2dOptions;
        for (h, w, pad) in [(32, 32, 1), (16, 16, 1), (9, 7, 2), (8, 11, 0), (5, 3, 3)] {
            let opts = Conv2dOptions {
                stride: (2, 2),
                padding: (pad, pad),
                ..Conv2dOptions::default()
            };
            let s = Conv2dShape::new(&[1, 2, h, w], &[3, 2, 3, 3], opts).unwrap();
            let plan = super::super::SparseLayout::new([3, 2, 3, 3], opts, &[true; 54]).plan(&s);
            let x: Vec<f32> = ramp(2 * h * w).iter().map(|v| v + 1.0).collect(); // no zeros
            let mut want = vec![0.0; 2 * plan.plane()];
            for (c, iy, ix) in
                (0..2).flat_map(|c| (0..h).flat_map(move |y| (0..w).map(move |x| (c, y, x))))
            {
                let (ry, rx) = (iy + pad, ix + pad);
                let phase = (ry % 2) * 2 + rx % 2;
                let at = ((c * 4 + phase) * plan.hp + ry / 2) * plan.wp + rx / 2;
                want[at] = x[(c * h + iy) * w + ix];
            }
            for k in Isa::available() {
                let mut xp = vec![-1.0; 2 * plan.plane()];
                prepare_planes(&s, &plan, &x, &mut xp, true, k);
                assert_eq!(xp, want, "{h}x{w} pad {pad} on {}", k.name());
                // Another image into the same buffer, its zeros kept.
                let x2: Vec<f32> = x.iter().map(|v| v + 1000.0).collect();
                prepare_planes(&s, &plan, &x2, &mut xp, false, k);
                let want2: Vec<f32> = want
                    .iter()
                    .map(|&v| if v == 0.0 { 0.0 } else { v + 1000.0 })
                    .collect();
                assert_eq!(
                    xp,
                    want2,
                    "a second image, {h}x{w} pad {pad} on {}",
                    k.name()
                );
                prepare_planes(&s, &plan, &x, &mut xp, false, k);
                for c in 0..2 {
                    let mut back = vec![-1.0; h * w];
                    unprepare_plane(
                        &s,
                        &plan,
                        &xp[c * plan.plane()..][..plan.plane()],
                        &mut back,
                        k,
                    );
                    assert_eq!(
                        back,
                        x[c * h * w..][..h * w],
                        "back {h}x{w} pad {pad} on {}",
                        k.name()
                    );
                }
            }
        }
    }
}
