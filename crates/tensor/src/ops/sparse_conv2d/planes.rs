//! The planes the wide kernels read, and the row copies in and out of the
//! wide layouts: each input plane zero-padded ([`pad_planes`]) and, for a
//! stride of 2 or more, split into its phases ([`prepare_planes`], a
//! stride-2 row's columns by `columns.rs`), and back ([`unprepare_plane`]);
//! a thread's buffer of prepared planes that keeps its zeros
//! ([`with_prepared_planes`]); short rows copied between strides
//! ([`copy_rows`]). Pure data movement: every path writes the same bits.
//! The phase planes and the kept zeros are tested here on every
//! instruction set this CPU has, `copy_rows` through the kernels that use
//! it.

use super::columns::{merge_columns, split_columns};
use super::layout::Plan;
use crate::isa::Isa;
use crate::ops::geometry::Conv2dShape;
use std::cell::RefCell;

/// The geometry of a buffer of prepared planes: which of its floats are
/// the zeros of the padding (and of the phases' ragged edges). The plan's
/// plane sizes follow from the rest today; they are kept too, so that a
/// plan with slack in its rows could not reuse another's zeros.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Geometry {
    channels: usize,
    in_hw: (usize, usize),
    padding: (usize, usize),
    stride: (usize, usize),
    planes: (usize, usize, usize), // phases, Hp, Wp
}

/// A buffer of prepared planes, and the geometry whose zeros it holds.
type HeldPlanes = (Vec<f32>, Option<Geometry>);

thread_local! {
    /// A task's prepared planes.
    static PLANES: RefCell<HeldPlanes> = const { RefCell::new((Vec::new(), None)) };
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
        planes: (plan.phases, plan.hp, plan.wp),
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
/// first), whose values went only into the middle
/// ([`with_prepared_planes`]).
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

    /// The thread's buffer through changes of geometry (A, then B, then A
    /// again with other values, then A with another channel count): each
    /// time the planes a fresh zeroed buffer would hold.
    #[test]
    fn kept_zeros_follow_the_geometry() {
        use crate::ops::geometry::Conv2dOptions;
        let geometry = |c: usize, h: usize, stride: usize| {
            let opts = Conv2dOptions {
                stride: (stride, stride),
                padding: (1, 1),
                ..Conv2dOptions::default()
            };
            let s = Conv2dShape::new(&[1, c, h, h], &[4, c, 3, 3], opts).unwrap();
            let l = super::super::SparseLayout::new([4, c, 3, 3], opts, &vec![true; 36 * c]);
            (s, l.plan(&s))
        };
        let steps = [
            (2, 8, 1, 1.0),
            (3, 6, 2, 2.0),
            (2, 8, 1, 3.0),
            (4, 8, 1, 4.0),
            (2, 8, 1, 5.0),
        ];
        for k in Isa::available() {
            for (c, h, stride, base) in steps {
                let (s, plan) = geometry(c, h, stride);
                let x: Vec<f32> = ramp(c * h * h).iter().map(|v| v + base).collect();
                let mut want = vec![0.0; c * plan.plane()];
                prepare_planes(&s, &plan, &x, &mut want, true, k);
                let got = with_prepared_planes(&s, &plan, &x, k, |xp| xp.to_vec());
                assert_eq!(
                    got,
                    want,
                    "{c} channels {h}x{h} stride {stride} on {}",
                    k.name()
                );
            }
        }
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
