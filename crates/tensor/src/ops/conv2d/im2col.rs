//! im2col and col2im: image patches as the columns of a matrix, and back.

use super::*;

/// The output positions `o` in `0..out` whose input coordinate
/// `o·stride + k_off − pad` lies inside `0..len`, as a range.
pub(super) fn valid_range(
    out: usize,
    len: usize,
    stride: usize,
    k_off: usize,
    pad: usize,
) -> (usize, usize) {
    // o·stride ≥ pad − k_off
    let lo = pad.saturating_sub(k_off).div_ceil(stride);
    // o·stride < len + pad − k_off
    let hi = (len + pad).saturating_sub(k_off).div_ceil(stride);
    let hi = hi.min(out);
    (lo.min(hi), hi)
}

/// `dst.copy_from_slice(src)` for the short rows of im2col (often 10 to 28
/// floats). `copy_from_slice` of a run-time length calls `memmove`, whose call
/// overhead dominated im2col in profiles; fixed 8-float copies are inlined.
#[inline(always)]
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    if n < 8 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
        return;
    }
    let mut i = 0;
    while i + 8 <= n {
        dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
        i += 8;
    }
    if i < n {
        // The last 8, overlapping what was already copied.
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    }
}

/// im2col for one image and one group.
///
/// `x` is the group's slice of one image, (C/groups, H, W); for image b and
/// group g that is `x[(b·C + g·Cg)·H·W ..][.. Cg·H·W]`. `cols` is
/// (Cg·KH·KW, OH·OW) row-major: row `(c·KH + ki)·KW + kj`, column `oy·OW + ox`
/// holds `x[c, oy·sy + ki·dy − py, ox·sx + kj·dx − px]`, or 0 where that
/// falls in the padding.
pub fn im2col(s: &Conv2dShape, x: &[f32], cols: &mut [f32]) {
    check_len(
        "im2col",
        "x (one image, one group)",
        s.group_in() * s.in_h * s.in_w,
        x.len(),
    );
    check_len("im2col", "cols", s.col_rows() * s.out_pixels(), cols.len());
    im2col_strided(s, x, cols, s.out_pixels());
}

/// [`im2col`] writing row r of the matrix at `cols[r·ld ..][.. OH·OW]`, so
/// that several images can sit side by side in one wide matrix.
pub(super) fn im2col_strided(s: &Conv2dShape, x: &[f32], cols: &mut [f32], ld: usize) {
    im2col_rows(s, x, 0..s.out_h(), cols, ld);
}

/// The columns of [`im2col`] for the output rows `rows` only (the pixels
/// `rows.start·OW .. rows.end·OW`), row r of the matrix written at
/// `cols[r·ld ..][.. rows.len()·OW]`: a block of the matrix small enough
/// to stay in cache while it is used.
fn im2col_rows(
    s: &Conv2dShape,
    x: &[f32],
    rows: std::ops::Range<usize>,
    cols: &mut [f32],
    ld: usize,
) {
    let (h, w, ow) = (s.in_h, s.in_w, s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy, dx) = s.opts.dilation;
    let (a, b) = (rows.start, rows.end.min(s.out_h()));
    let p = (b - a) * ow;
    let mut r = 0;
    for c in 0..s.group_in() {
        let plane = &x[c * h * w..(c + 1) * h * w]; // (H, W)
        for ki in 0..s.kernel_h {
            // Output rows lo..hi read inside the input; the rest are padding.
            let (lo, hi) = valid_range(s.out_h(), h, sy, ki * dy, py);
            let (lo, hi) = (lo.clamp(a, b), hi.clamp(a, b));
            for kj in 0..s.kernel_w {
                let (ox0, ox1) = valid_range(ow, w, sx, kj * dx, px);
                let row = &mut cols[r * ld..r * ld + p]; // (rows, OW)
                r += 1;
                row[..(lo - a) * ow].fill(0.0);
                row[(hi - a) * ow..].fill(0.0);
                if sy == 1 && sx == 1 && ow == w && lo < hi {
                    // "Same" padding: the rows lo..hi are the input's rows,
                    // shifted by kj·dx − px columns, in one copy.
                    let iy0 = lo + ki * dy - py;
                    let n = (hi - lo) * w;
                    let src = &plane[iy0 * w..iy0 * w + n];
                    let dst = &mut row[(lo - a) * w..(hi - a) * w];
                    shifted_rows(src, dst, w, kj * dx, px);
                    continue;
                }
                for j in lo..hi {
                    let iy = j * sy + ki * dy - py;
                    let src = &plane[iy * w..(iy + 1) * w];
                    let dst = &mut row[(j - a) * ow..(j - a + 1) * ow];
                    dst[..ox0].fill(0.0);
                    dst[ox1..].fill(0.0);
                    if ox0 == ox1 {
                        continue;
                    }
                    // Input column of output column ox0.
                    let ix0 = ox0 * sx + kj * dx - px;
                    if sx == 1 {
                        copy_short(&mut dst[ox0..ox1], &src[ix0..ix0 + (ox1 - ox0)]);
                    } else {
                        for (d, s) in dst[ox0..ox1].iter_mut().zip(src[ix0..].iter().step_by(sx)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// Rows of `w` floats from `src` into `dst`, each shifted left by
/// `right − left` columns (right by `left − right`), the columns that fall
/// outside the row zero: dst[j·w + x] = src[j·w + x + right − left] where
/// that column lies in 0..w, else 0. One contiguous copy for all the rows
/// (the values that cross into a neighbouring row are then zeroed), where a
/// copy per row of 8 to 32 floats cost more in calls than in copying.
pub(super) fn shifted_rows(src: &[f32], dst: &mut [f32], w: usize, right: usize, left: usize) {
    let n = dst.len();
    assert!(
        src.len() == n && n.is_multiple_of(w),
        "shifted_rows: lengths"
    );
    if right >= left {
        let k = (right - left).min(n);
        dst[..n - k].copy_from_slice(&src[k..]);
        for r in dst.chunks_exact_mut(w) {
            let k = k.min(w);
            r[w - k..].fill(0.0);
        }
    } else {
        let k = (left - right).min(n);
        dst[k..].copy_from_slice(&src[..n - k]);
        for r in dst.chunks_exact_mut(w) {
            r[..k.min(w)].fill(0.0);
        }
    }
}

/// col2im for one image and one group: the adjoint of [`im2col`]. ADDS each
/// entry of `cols` (Cg·KH·KW, OH·OW) into the input position it was read
/// from; entries that came from padding are dropped. `dx` is the group's
/// slice of one image, (C/groups, H, W).
pub fn col2im(s: &Conv2dShape, cols: &[f32], dx: &mut [f32]) {
    check_len("col2im", "cols", s.col_rows() * s.out_pixels(), cols.len());
    check_len(
        "col2im",
        "dx (one image, one group)",
        s.group_in() * s.in_h * s.in_w,
        dx.len(),
    );
    let (h, w, oh, ow) = (s.in_h, s.in_w, s.out_h(), s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy, dxl) = s.opts.dilation;
    let p = oh * ow;
    let mut r = 0;
    for c in 0..s.group_in() {
        let plane = &mut dx[c * h * w..(c + 1) * h * w]; // (H, W)
        for ki in 0..s.kernel_h {
            let (oy0, oy1) = valid_range(oh, h, sy, ki * dy, py);
            for kj in 0..s.kernel_w {
                let (ox0, ox1) = valid_range(ow, w, sx, kj * dxl, px);
                let row = &cols[r * p..(r + 1) * p]; // (OH, OW)
                r += 1;
                if ox0 == ox1 {
                    continue;
                }
                for oy in oy0..oy1 {
                    let iy = oy * sy + ki * dy - py;
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let src = &row[oy * ow + ox0..oy * ow + ox1];
                    let ix0 = ox0 * sx + kj * dxl - px;
                    if sx == 1 {
                        for (d, v) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[ix0..].iter_mut().step_by(sx).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}
