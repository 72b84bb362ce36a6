//! The backward passes: weight (and coactivation), input and bias gradients.

use super::backward_tiled::{
    input_cols_tiled, tiled_input_grad_applies, tiled_weight_grad_applies, weight_grad_tiled,
};
use super::*;

/// dw = Σ_b dY_b · cols_bᵀ, per group. OVERWRITES dw. Narrow stride-1
/// layers ([`narrow_direct_backward`]) run the direct kernels instead, and
/// other layers of 16 output channels a group or more the tile
/// micro-kernel (`backward_tiled.rs`; on ResNet-20's 16-channel layers
/// at batch 128 in 0.7× the time the direct kernels take with every tap
/// active, benches/resnet_conv.rs).
/// x is (B, C, H, W), dy is (B, O, OH, OW), dw is (O, C/groups, KH, KW).
///
/// On the GEMM, each chunk of images puts its im2col matrices side by side
/// in one wide (K, nb·P) matrix and copies its dY into (O/g, nb·P), so that
/// one GEMM with inner dimension nb·P yields the chunk's partial dW. On
/// either route the partials are then added in chunk order: bitwise
/// reproducible for any thread count.
pub fn conv2d_backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    if narrow_direct_backward(s) {
        // Every tap active: the direct kernels compute the dense gradient.
        with_full_layout(s, |l| {
            crate::ops::sparse_conv2d::sparse_conv2d_backward_weight(s, l, x, dy, dw, Isa::best())
        });
        return;
    }
    backward_weight_core(
        "conv2d_backward_weight",
        s,
        x,
        dy,
        dw,
        None::<fn(f32) -> f32>,
    );
}

/// Hebbian coactivation counts: the weight gradient of binarised activity.
/// OVERWRITES counts.
/// x is (B, C, H, W), y is (B, O, OH, OW), counts is (O, C/groups, KH, KW):
///
/// ```text
/// counts[o, c, ki, kj] = Σ_b Σ_{oy, ox} [y[b, o, oy, ox] > θ] · [x[b, g·Cg + c, iy, ix] > θ]
/// ```
///
/// over the taps that land inside the input. This is exactly
/// [`conv2d_backward_weight`] of `[x > θ]` and `[y > θ]`, computed by its
/// im2col kernels (the GEMM, or the tile micro-kernel for 16 output
/// channels a group and more) with the threshold applied on the way in, so it costs no more
/// than a weight gradient. Padded taps stay 0, i.e. inactive, even for a
/// negative θ. The counts are integers below 2^24, hence exact in f32 and
/// independent of the summation order.
pub fn conv2d_coactivation(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    threshold: f32,
    counts: &mut [f32],
) {
    let active = |v: f32| if v > threshold { 1.0 } else { 0.0 };
    backward_weight_core("conv2d_coactivation", s, x, y, counts, Some(active));
}

/// The im2col kernels of [`conv2d_backward_weight`]: the tile
/// micro-kernel for wide layers, else one GEMM per chunk. With `map`, it
/// is the weight gradient of `map(x)` and `map(dy)` instead: each chunk
/// maps its images' input planes into scratch before im2col (once per input
/// value, not once per kernel tap, and before im2col adds the padding,
/// which so stays 0), and maps dY while copying it into the wide matrix or
/// the panels.
pub(super) fn backward_weight_core(
    op: &str,
    s: &Conv2dShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    map: Option<impl Fn(f32) -> f32 + Sync>,
) {
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let ipc = images_per_chunk(s);
    let n_chunks = s.batch.div_ceil(ipc);
    if n_chunks == 0 || p == 0 {
        dw.fill(0.0);
        return;
    }
    if tiled_weight_grad_applies(s) {
        weight_grad_tiled(s, x, dy, dw, map.as_ref(), Isa::best());
        return;
    }
    let mapped_len = if map.is_some() { cg * hw } else { 0 };
    // The partial dW of chunk `chunk`, written into `part` (O, Cg·KH·KW).
    let partial = |chunk: usize, part: &mut [f32]| {
        let b0 = chunk * ipc;
        let nb = ipc.min(s.batch - b0);
        let n = nb * p; // columns of the wide matrices
        with_scratch(k * n + og * n + mapped_len, |buf| {
            let (cols, rest) = buf.split_at_mut(k * n); // (K, n)
            let (dy_g, x_mapped) = rest.split_at_mut(og * n); // (O/g, n) and (Cg, H, W)
            for g in 0..s.opts.groups {
                for i in 0..nb {
                    let b = b0 + i;
                    let x_bg = &x[(b * c + g * cg) * hw..][..cg * hw]; // (Cg, H, W)
                    let x_bg = match &map {
                        None => x_bg,
                        Some(f) => {
                            map_into(f, x_bg, x_mapped);
                            &*x_mapped
                        }
                    };
                    im2col_strided(s, x_bg, &mut cols[i * p..], n);
                    for oo in 0..og {
                        let src = &dy[(b * o + g * og + oo) * p..][..p];
                        let dst = &mut dy_g[oo * n + i * p..][..p];
                        match &map {
                            None => dst.copy_from_slice(src),
                            Some(f) => map_into(f, src, dst),
                        }
                    }
                }
                let dw_g = &mut part[g * og * k..(g + 1) * og * k]; // (O/g, K)
                let cols_t = Mat::row_major(cols, k, n).t(); // (n, K)
                gemm(1.0, Mat::row_major(dy_g, og, n), cols_t, 0.0, dw_g, k);
            }
        });
    };
    if n_chunks == 1 {
        partial(0, dw);
        return;
    }
    let wlen = dw.len();
    // Every chunk is overwritten whole (beta = 0 in each group's GEMM).
    let mut partials = crate::buffers::take(n_chunks * wlen);
    for_each_chunk(&mut partials, wlen, run_parallel(s), partial);
    // Fixed-order reduction: chunk 0, then + chunk 1, + chunk 2, ...
    dw.copy_from_slice(&partials[..wlen]);
    for part in partials[wlen..].chunks(wlen) {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += *v;
        }
    }
    crate::buffers::give(partials);
}

/// `dst[i] = f(src[i])`.
pub(super) fn map_into(f: impl Fn(f32) -> f32, src: &[f32], dst: &mut [f32]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d = f(*v);
    }
}

// ---------------------------------------------------------------------------
// Backward: input
// ---------------------------------------------------------------------------

/// The forward convolution whose output is this one's input gradient:
/// stride 1, no dilation, one group, padding (as the ResNets' 3×3 layers
/// have; an unpadded layer such as the LeNet's keeps the GEMM and col2im,
/// which the fused block's backward matches bit for bit) below the
/// kernel's size. dY (B, O, OH, OW) is its input, padded by (KH − 1 − py,
/// KW − 1 − px), and the flipped (C, O, KH, KW) kernel its weight. The
/// forward pass then runs it on its direct kernel (narrow layers) or its
/// packed product, neither of which needs col2im.
fn transposed_shape(s: &Conv2dShape) -> Option<Conv2dShape> {
    let (py, px) = s.opts.padding;
    let fits = s.opts.stride == (1, 1)
        && s.opts.dilation == (1, 1)
        && s.opts.groups == 1
        && (py, px) != (0, 0)
        && py < s.kernel_h
        && px < s.kernel_w;
    if !fits {
        return None;
    }
    let opts = Conv2dOptions {
        padding: (s.kernel_h - 1 - py, s.kernel_w - 1 - px),
        ..s.opts
    };
    Conv2dShape::new(
        &[s.batch, s.out_channels, s.out_h(), s.out_w()],
        &[s.in_channels, s.out_channels, s.kernel_h, s.kernel_w],
        opts,
    )
    .ok()
}

/// dx = col2im(W_gᵀ · dY_b,g) for every image b and group g. OVERWRITES dx.
/// Narrow stride-1 layers ([`narrow_direct_backward`]) run the direct
/// kernels instead, and other padded stride-1 layers of one group the
/// forward convolution of dY with the flipped kernel (`transposed_shape`).
/// The product runs on the tile micro-kernel where K and P are whole tiles
/// (`backward_tiled.rs`), else on the GEMM.
/// w is (O, C/groups, KH, KW), dy is (B, O, OH, OW), dx is (B, C, H, W).
/// Images are independent, so there is no cross-chunk reduction.
pub fn conv2d_backward_input(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let op = "conv2d_backward_input";
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dx", s.input_shape().iter().product(), dx.len());
    if narrow_direct_backward(s) {
        // Every tap active: the direct kernels compute the dense gradient.
        with_full_layout(s, |l| {
            crate::ops::sparse_conv2d::sparse_conv2d_backward_input(s, l, w, dy, dx, Isa::best())
        });
        return;
    }
    if let Some(st) = transposed_shape(s) {
        // A stride-1 convolution's input gradient is the convolution of dY,
        // padded by KH − 1 − py, with the kernel flipped and its in and out
        // channels swapped: the forward pass's kernels, direct included.
        let (kh, kw) = (s.kernel_h, s.kernel_w);
        let (o, c) = (s.out_channels, s.in_channels);
        let mut wt = crate::buffers::take(w.len()); // overwritten whole
        for oc in 0..o {
            for ci in 0..c {
                for ki in 0..kh {
                    for kj in 0..kw {
                        let from = ((oc * c + ci) * kh + ki) * kw + kj;
                        let to = ((ci * o + oc) * kh + (kh - 1 - ki)) * kw + (kw - 1 - kj);
                        wt[to] = w[from];
                    }
                }
            }
        }
        conv2d_forward(&st, dy, &wt, None, dx);
        crate::buffers::give(wt);
        return;
    }
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let ipc = images_per_chunk(s);
    let isa = Isa::best();
    let tiled = tiled_input_grad_applies(s, isa);
    for_each_chunk(dx, ipc * c * hw, run_parallel(s), |chunk, dx_chunk| {
        // dx_chunk is (nb, C, H, W), images chunk·ipc ..
        dx_chunk.fill(0.0);
        with_scratch(k * p, |dcols| {
            for (i, dx_b) in dx_chunk.chunks_mut(c * hw).enumerate() {
                let b = chunk * ipc + i;
                for g in 0..s.opts.groups {
                    let w_g = &w[g * og * k..(g + 1) * og * k]; // (O/g, K)
                    let dy_bg = &dy[(b * o + g * og) * p..][..og * p]; // (O/g, P)
                    if tiled {
                        input_cols_tiled(w_g, dy_bg, (k, og, p), dcols, isa);
                    } else {
                        let (w_g, dy_bg) =
                            (Mat::row_major(w_g, og, k), Mat::row_major(dy_bg, og, p));
                        gemm(1.0, w_g.t(), dy_bg, 0.0, dcols, p); // (K, P)
                    }
                    col2im(s, dcols, &mut dx_b[g * cg * hw..(g + 1) * cg * hw]);
                }
            }
        });
    });
}

// ---------------------------------------------------------------------------
// Backward: bias
// ---------------------------------------------------------------------------
