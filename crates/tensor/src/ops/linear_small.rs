//! The linear layer's three products at small batches (a few rows), written
//! out instead of handed to the GEMM.
//!
//! At batch 4 the LeNet's fc1 multiplies a 4 × 400 input by a 120 × 400
//! weight. A general GEMM first packs both operands into its own panels;
//! here that packing reads and writes the whole weight, which costs as much
//! as the product itself, twice a step (forward and input gradient). With
//! so few rows nothing needs packing: the rows of x and dY stay in L1, and
//! each weight row is read once, straight from the tensor.
//!
//! ```text
//! forward   y[m, o]  = Σ_k x[m, k] · W[o, k]  + b[o]   dot products along k
//! input     dx[m, k] += Σ_o dY[m, o] · W[o, k]          weight rows, scaled
//! weight    dW[o, k] += Σ_m dY[m, o] · x[m, k]          input rows, scaled
//! ```
//!
//! Each output value is summed in an order fixed by the shapes alone, and a
//! row's forward and input gradient by its own values only (not the batch's
//! other rows). The forward and the input gradient run on the calling
//! thread: the products are small, a few hundred thousand FMAs. The weight
//! gradient, which writes the whole of dW, runs in blocks of output rows on
//! the pool (`WEIGHT_GRAD_TASK_MACS` per block at least); every value is
//! still one row's sum, so the split changes no bits.
//!
//! The AVX2 + FMA loops and their portable twins use the same summation
//! orders; the twins round each product before adding it (no FMA), so they
//! agree to rounding. Both are tested against the GEMM.

use crate::isa::Isa;

/// Batches of at most this many rows take these loops; larger ones the
/// GEMM, whose packing pays for itself from about here on (see
/// docs/benchmarks.md).
pub const SMALL_BATCH_ROWS: usize = 8;

/// y (M, O) = x (M, K) · Wᵀ + b, with W (O, K). OVERWRITES y.
///
/// y[m, o] is an 8-lane dot product over k (lane j takes k ≡ j mod 8, the
/// lanes added as ((0+4)+(1+5))+((2+6)+(3+7))), the last K mod 8 terms
/// added in order, then `b[o]`.
pub fn linear_forward_small(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    (m, k, o): (usize, usize, usize),
    y: &mut [f32],
    kc: Isa,
) {
    let (x, w, y) = (&x[..m * k], &w[..o * k], &mut y[..m * o]);
    if let Some(b) = b {
        assert_eq!(b.len(), o, "linear: bias of {} for {o} outputs", b.len());
    }
    if k == 0 || o == 0 {
        // Empty sums: y is the bias (or zeros).
        for yr in y.chunks_mut(o.max(1)) {
            yr.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = b.map_or(0.0, |b| b[i]));
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if kc.avx2() {
        // SAFETY: AVX2 and FMA are present (checked by `kc.avx2()`); the
        // slices are sliced above to the shapes the loop indexes.
        return unsafe { forward_avx2(x, w, b, (m, k, o), y) };
    }
    let _ = kc;
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(o)) {
        for (oi, (wr, yv)) in w.chunks_exact(k).zip(yr.iter_mut()).enumerate() {
            let mut lanes = [0.0f32; 8];
            let (x8, w8) = (xr.chunks_exact(8), wr.chunks_exact(8));
            let (xt, wt) = (x8.remainder(), w8.remainder());
            for (xs, ws) in x8.zip(w8) {
                for j in 0..8 {
                    lanes[j] += xs[j] * ws[j];
                }
            }
            let mut s = add_lanes(&lanes);
            for (a, c) in xt.iter().zip(wt) {
                s += a * c;
            }
            *yv = s + b.map_or(0.0, |b| b[oi]);
        }
    }
}

/// dx (M, K) += dY (M, O) · W, with W (O, K): each dx[m, k] summed over o
/// in order, then added in.
pub fn linear_backward_input_small(
    dy: &[f32],
    w: &[f32],
    (m, k, o): (usize, usize, usize),
    dx: &mut [f32],
    kc: Isa,
) {
    let (dy, w, dx) = (&dy[..m * o], &w[..o * k], &mut dx[..m * k]);
    if k == 0 || o == 0 {
        return; // nothing to add
    }
    #[cfg(target_arch = "x86_64")]
    if kc.avx2() {
        // SAFETY: AVX2 and FMA are present; the slices are sliced above.
        return unsafe { backward_input_avx2(dy, w, (m, k, o), dx) };
    }
    let _ = kc;
    let mut acc = vec![0.0f32; k];
    for (dyr, dxr) in dy.chunks_exact(o).zip(dx.chunks_exact_mut(k)) {
        acc.fill(0.0);
        for (&g, wr) in dyr.iter().zip(w.chunks_exact(k)) {
            acc.iter_mut().zip(wr).for_each(|(a, &wv)| *a += g * wv);
        }
        dxr.iter_mut().zip(&acc).for_each(|(d, a)| *d += a);
    }
}

/// dW (O, K) += dY (M, O)ᵀ · x (M, K): each dW[o, k] summed over m in
/// order, then added in.
pub fn linear_backward_weight_small(
    dy: &[f32],
    x: &[f32],
    shape: (usize, usize, usize),
    dw: &mut [f32],
    kc: Isa,
) {
    weight_grad::<true>(dy, x, shape, dw, kc)
}

/// dW (O, K) = dY (M, O)ᵀ · x (M, K), as [`linear_backward_weight_small`]
/// would add it to zeros (each sum is added to +0.0, so a −0.0 sum becomes
/// +0.0 there too): the same bits without zeroing dW first and reading it
/// back. OVERWRITES dw. At batch 4, fc1's gradient is 192 KB, and those two
/// passes over it cost about as much as the product.
pub fn linear_weight_grad_small(
    dy: &[f32],
    x: &[f32],
    shape: (usize, usize, usize),
    dw: &mut [f32],
    kc: Isa,
) {
    weight_grad::<false>(dy, x, shape, dw, kc)
}

/// `ADD`: dW += the sums; otherwise dW = 0.0 + the sums.
fn weight_grad<const ADD: bool>(
    dy: &[f32],
    x: &[f32],
    (m, k, o): (usize, usize, usize),
    dw: &mut [f32],
    kc: Isa,
) {
    let (dy, x, dw) = (&dy[..m * o], &x[..m * k], &mut dw[..o * k]);
    if k == 0 || o == 0 {
        return; // nothing to write
    }
    if m == 0 {
        // An empty batch: every sum is empty. dW may be a recycled buffer
        // holding another tensor's values, so it is written, not skipped.
        if !ADD {
            dw.fill(0.0);
        }
        return;
    }
    // Rows of dW are independent: large layers run in blocks of rows on
    // the pool (fc1's 120 rows at batch 4: 6 blocks), which changes no
    // value. The work is mostly writing dW, which the other thread of a
    // batch-4 step would otherwise leave to this one.
    let rows = (WEIGHT_GRAD_TASK_MACS / (m * k)).max(1);
    let block = |(i, dw_blk): (usize, &mut [f32])| {
        weight_grad_rows::<ADD>(dy, x, (m, k, o), i * rows, dw_blk, kc)
    };
    if rows < o {
        use rayon::prelude::*;
        dw.par_chunks_mut(rows * k).enumerate().for_each(block);
    } else {
        block((0, dw));
    }
}

/// Multiply-adds a block of [`weight_grad`]'s rows holds at least.
const WEIGHT_GRAD_TASK_MACS: usize = 1 << 15;

/// Rows o0.. of dW, in `dw` (whole rows of K).
fn weight_grad_rows<const ADD: bool>(
    dy: &[f32],
    x: &[f32],
    (m, k, o): (usize, usize, usize),
    o0: usize,
    dw: &mut [f32],
    kc: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if kc.avx2() {
        // SAFETY: AVX2 and FMA are present; dy is M·O, x M·K floats (sliced
        // by the caller) and dw whole rows of K from row o0 < O.
        return unsafe { backward_weight_avx2::<ADD>(dy, x, (m, k, o), o0, dw) };
    }
    let _ = kc;
    for (i, dwr) in dw.chunks_exact_mut(k).enumerate() {
        let oi = o0 + i;
        for (kk, d) in dwr.iter_mut().enumerate() {
            let mut s = 0.0f32;
            for mi in 0..m {
                s += dy[mi * o + oi] * x[mi * k + kk];
            }
            *d = if ADD { *d } else { 0.0 } + s;
        }
    }
}

/// The 8 lanes of a dot product, added as the AVX2 loop adds them.
fn add_lanes(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// Rows of x (or dY) taken together in the AVX2 loops: 4 rows × 2 outputs
/// (or 2 vectors) make 8 accumulators, and every weight load serves 4 rows.
const ROWS: usize = 4;

/// # Safety
/// The CPU must support AVX2 and FMA; x is M·K, w O·K and y M·O floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    (m, k, o): (usize, usize, usize),
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k8 = k - k % 8;
    let hsum = |v: __m256| {
        let mut l = [0.0f32; 8];
        // SAFETY: l is 8 floats.
        unsafe { _mm256_storeu_ps(l.as_mut_ptr(), v) };
        add_lanes(&l)
    };
    for r0 in (0..m).step_by(ROWS) {
        let rows = (m - r0).min(ROWS);
        let xr = |r: usize| &x[(r0 + r.min(rows - 1)) * k..][..k];
        let xs = [xr(0), xr(1), xr(2), xr(3)];
        // Two outputs at a time (the last one twice if O is odd): each x
        // load serves both.
        for o0 in (0..o).step_by(2) {
            let o1 = (o0 + 1).min(o - 1);
            let (w0, w1) = (&w[o0 * k..][..k], &w[o1 * k..][..k]);
            let mut acc = [[_mm256_setzero_ps(); ROWS]; 2];
            for kk in (0..k8).step_by(8) {
                // SAFETY: kk + 8 ≤ k8 ≤ k, the length of w0, w1 and xs[r].
                let wv = unsafe {
                    [
                        _mm256_loadu_ps(w0.as_ptr().add(kk)),
                        _mm256_loadu_ps(w1.as_ptr().add(kk)),
                    ]
                };
                for r in 0..ROWS {
                    // SAFETY: as above.
                    let xv = unsafe { _mm256_loadu_ps(xs[r].as_ptr().add(kk)) };
                    acc[0][r] = _mm256_fmadd_ps(xv, wv[0], acc[0][r]);
                    acc[1][r] = _mm256_fmadd_ps(xv, wv[1], acc[1][r]);
                }
            }
            for (j, (oi, wr)) in [(o0, w0), (o1, w1)].into_iter().enumerate() {
                for r in 0..rows {
                    let mut s = hsum(acc[j][r]);
                    for kk in k8..k {
                        s = xs[r][kk].mul_add(wr[kk], s);
                    }
                    y[(r0 + r) * o + oi] = s + b.map_or(0.0, |b| b[oi]);
                }
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; dy is M·O, w O·K and dx M·K floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // oi indexes the weight rows and each row of dY
unsafe fn backward_input_avx2(
    dy: &[f32],
    w: &[f32],
    (m, k, o): (usize, usize, usize),
    dx: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k16 = k - k % 16;
    for r0 in (0..m).step_by(ROWS) {
        let rows = (m - r0).min(ROWS);
        let gr = |r: usize| &dy[(r0 + r.min(rows - 1)) * o..][..o];
        let gs = [gr(0), gr(1), gr(2), gr(3)];
        for kk in (0..k16).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
            for oi in 0..o {
                // SAFETY: kk + 16 ≤ k16 ≤ k, inside weight row oi.
                let (w0, w1) = unsafe {
                    let p = w.as_ptr().add(oi * k + kk);
                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                };
                for r in 0..ROWS {
                    let g = _mm256_set1_ps(gs[r][oi]);
                    acc[r][0] = _mm256_fmadd_ps(g, w0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(g, w1, acc[r][1]);
                }
            }
            for (r, a) in acc.iter().enumerate().take(rows) {
                let d = &mut dx[(r0 + r) * k + kk..][..16];
                // SAFETY: d is 16 floats: p0 and p1 each start 8 of them.
                unsafe {
                    let (p0, p1) = (d.as_mut_ptr(), d.as_mut_ptr().add(8));
                    _mm256_storeu_ps(p0, _mm256_add_ps(_mm256_loadu_ps(p0), a[0]));
                    _mm256_storeu_ps(p1, _mm256_add_ps(_mm256_loadu_ps(p1), a[1]));
                }
            }
        }
        // Then 8 columns, if K mod 16 ≥ 8: the same sums, one vector wide.
        let k8 = k - k % 8;
        if k16 < k8 {
            let mut acc = [_mm256_setzero_ps(); ROWS];
            for oi in 0..o {
                // SAFETY: k16 + 8 = k8 ≤ k, inside weight row oi.
                let w0 = unsafe { _mm256_loadu_ps(w.as_ptr().add(oi * k + k16)) };
                for r in 0..ROWS {
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(gs[r][oi]), w0, acc[r]);
                }
            }
            for (r, a) in acc.iter().enumerate().take(rows) {
                let d = &mut dx[(r0 + r) * k + k16..][..8];
                // SAFETY: d is 8 floats.
                unsafe {
                    _mm256_storeu_ps(
                        d.as_mut_ptr(),
                        _mm256_add_ps(_mm256_loadu_ps(d.as_ptr()), *a),
                    )
                };
            }
        }
        // The last K mod 8 columns, one at a time, in the same order.
        for kk in k8..k {
            for r in 0..rows {
                let mut s = 0.0f32;
                for oi in 0..o {
                    s = gs[r][oi].mul_add(w[oi * k + kk], s);
                }
                dx[(r0 + r) * k + kk] += s;
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; dy is M·O and x M·K floats, and dw
/// whole rows of K floats, rows o0.. of dW (o0 + rows ≤ O).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_weight_avx2<const ADD: bool>(
    dy: &[f32],
    x: &[f32],
    (m, k, o): (usize, usize, usize),
    o0: usize,
    dw: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k32 = k - k % 32;
    for (i, dwr) in dw.chunks_exact_mut(k).enumerate() {
        let oi = o0 + i;
        debug_assert!(oi < o);
        for kk in (0..k32).step_by(32) {
            let mut acc = [_mm256_setzero_ps(); 4];
            for mi in 0..m {
                let g = _mm256_set1_ps(dy[mi * o + oi]);
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: kk + 8j + 8 ≤ k32 ≤ k, inside row mi of x.
                    let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(mi * k + kk + 8 * j)) };
                    *a = _mm256_fmadd_ps(g, v, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let d = &mut dwr[kk + 8 * j..][..8];
                // SAFETY: d is 8 floats.
                let old = if ADD {
                    unsafe { _mm256_loadu_ps(d.as_ptr()) }
                } else {
                    _mm256_setzero_ps()
                };
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(d.as_mut_ptr(), _mm256_add_ps(old, *a)) };
            }
        }
        // Then 8 columns at a time, and the last K mod 8 one at a time:
        // the same sums.
        let k8 = k - k % 8;
        for kk in (k32..k8).step_by(8) {
            let mut acc = _mm256_setzero_ps();
            for mi in 0..m {
                let g = _mm256_set1_ps(dy[mi * o + oi]);
                // SAFETY: kk + 8 ≤ k8 ≤ k, inside row mi of x.
                let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(mi * k + kk)) };
                acc = _mm256_fmadd_ps(g, v, acc);
            }
            let d = &mut dwr[kk..][..8];
            // SAFETY: d is 8 floats.
            let old = if ADD {
                unsafe { _mm256_loadu_ps(d.as_ptr()) }
            } else {
                _mm256_setzero_ps()
            };
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(d.as_mut_ptr(), _mm256_add_ps(old, acc)) };
        }
        for kk in k8..k {
            let mut s = 0.0f32;
            for mi in 0..m {
                s = dy[mi * o + oi].mul_add(x[mi * k + kk], s);
            }
            dwr[kk] = if ADD { dwr[kk] } else { 0.0 } + s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::{gemm_naive, Mat};

    /// Sums of up to 400 terms near 1 in another order: 1e-4 relative.
    fn close(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// All three products against the textbook GEMM, for 1 to 8 rows and
    /// widths that leave every tail (K mod 8, mod 16, mod 32) non-empty or
    /// empty, on both paths; and each forward row the same bits whatever
    /// the rows around it.
    #[test]
    fn small_products_match_the_gemm() {
        let mut rng = crate::Rng::seed(3);
        for (k, o) in [
            (400, 120),
            (120, 84),
            (84, 10),
            (37, 5),
            (32, 3),
            (7, 9),
            (19, 1),
        ] {
            for m in 1..=SMALL_BATCH_ROWS {
                let mut v = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
                let (x, w, b, dy, dx0, dw0) =
                    (v(m * k), v(o * k), v(o), v(m * o), v(m * k), v(o * k));
                let mut want_y = vec![0.0; m * o];
                for r in 0..m {
                    want_y[r * o..(r + 1) * o].copy_from_slice(&b);
                }
                let (xm, wm) = (Mat::row_major(&x, m, k), Mat::row_major(&w, o, k));
                gemm_naive(1.0, xm, wm.t(), 1.0, &mut want_y, o);
                let mut want_dx = dx0.clone();
                gemm_naive(1.0, Mat::row_major(&dy, m, o), wm, 1.0, &mut want_dx, k);
                let mut want_dw = dw0.clone();
                gemm_naive(1.0, Mat::row_major(&dy, m, o).t(), xm, 1.0, &mut want_dw, k);
                for kc in Isa::available() {
                    let what = format!("m {m} k {k} o {o} {kc:?}");
                    let mut y = vec![f32::NAN; m * o];
                    linear_forward_small(&x, &w, Some(&b), (m, k, o), &mut y, kc);
                    close(&y, &want_y, &format!("y {what}"));
                    // Each row alone: the same bits as inside the batch.
                    for r in 0..m {
                        let mut y1 = vec![0.0; o];
                        let xr = &x[r * k..(r + 1) * k];
                        linear_forward_small(xr, &w, Some(&b), (1, k, o), &mut y1, kc);
                        let yr = &y[r * o..(r + 1) * o];
                        let same = y1.iter().zip(yr).all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(same, "{what} row {r}");
                    }
                    // Without a bias: the same values less the bias.
                    let mut yn = vec![f32::NAN; m * o];
                    linear_forward_small(&x, &w, None, (m, k, o), &mut yn, kc);
                    let less: Vec<f32> = want_y
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v - b[i % o])
                        .collect();
                    close(&yn, &less, &format!("y without bias {what}"));
                    let mut dx = dx0.clone();
                    linear_backward_input_small(&dy, &w, (m, k, o), &mut dx, kc);
                    close(&dx, &want_dx, &format!("dx {what}"));
                    // Written whole: the bits of the sum added to zeros.
                    let mut dw_zero = vec![0.0; o * k];
                    linear_backward_weight_small(&dy, &x, (m, k, o), &mut dw_zero, kc);
                    let mut dw_new = vec![f32::NAN; o * k];
                    linear_weight_grad_small(&dy, &x, (m, k, o), &mut dw_new, kc);
                    let same = dw_new
                        .iter()
                        .zip(&dw_zero)
                        .all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "dw written whole {what}");
                    let mut dw = dw0.clone();
                    linear_backward_weight_small(&dy, &x, (m, k, o), &mut dw, kc);
                    close(&dw, &want_dw, &format!("dw {what}"));
                }
            }
        }
    }

    /// Empty layers (no inputs or no outputs): y is the bias, and the
    /// gradients are left as they were, on both paths.
    #[test]
    fn empty_layers_are_no_work() {
        for kc in Isa::available() {
            let mut y = vec![f32::NAN; 6];
            linear_forward_small(&[], &[], Some(&[1.0, 2.0]), (3, 0, 2), &mut y, kc);
            assert_eq!(y, [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
            let mut y = vec![f32::NAN; 6];
            linear_forward_small(&[], &[], None, (3, 0, 2), &mut y, kc);
            assert_eq!(y, [0.0; 6]);
            linear_forward_small(&[1.0; 6], &[], None, (3, 2, 0), &mut [], kc);
            let mut dx = vec![5.0; 6];
            linear_backward_input_small(&[], &[], (3, 2, 0), &mut dx, kc);
            assert_eq!(dx, [5.0; 6]);
            linear_backward_weight_small(&[1.0; 6], &[], (3, 0, 2), &mut [], kc);
        }
    }

    /// An empty batch (no rows): the weight gradient is all zeros when
    /// written whole (its buffer may hold anything), left as it was when
    /// added into, and dx has no elements.
    #[test]
    fn an_empty_batch_has_a_zero_weight_gradient() {
        for kc in Isa::available() {
            let mut dw = vec![f32::NAN; 6];
            linear_weight_grad_small(&[], &[], (0, 3, 2), &mut dw, kc);
            assert_eq!(dw, [0.0; 6], "{kc:?}");
            let mut dw = vec![5.0; 6];
            linear_backward_weight_small(&[], &[], (0, 3, 2), &mut dw, kc);
            assert_eq!(dw, [5.0; 6], "{kc:?}");
            linear_backward_input_small(&[], &[1.0; 6], (0, 3, 2), &mut [], kc);
            linear_forward_small(&[], &[1.0; 6], None, (0, 3, 2), &mut [], kc);
        }
    }
}
