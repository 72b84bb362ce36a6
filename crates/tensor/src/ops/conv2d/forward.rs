//! The forward pass: the gathered product of `gathered.rs`, the direct
//! kernel image by image, or the packed product of `packed.rs`.

use super::*;
use crate::isa::Isa;
use crate::ops::epilogue::Epilogue;

/// y = conv(x, w) + bias (PyTorch conv2d: cross-correlation). Overwrites y.
/// x is (B, C, H, W), w is (O, C/groups, KH, KW), bias is (O), y is (B, O, OH, OW).
pub fn conv2d_forward(s: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    conv2d_forward_then(s, x, w, bias, y, None);
}

/// [`conv2d_forward`], then the epilogue on each image's output as soon as
/// it is written ([`crate::ops::epilogue`]). Overwrites y.
pub fn conv2d_forward_then(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    epi: Option<&Epilogue>,
) {
    let op = "conv2d_forward";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "y", s.output_shape().iter().product(), y.len());
    if let Some(b) = bias {
        check_len(op, "bias", s.out_channels, b.len());
    }
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    if let Some(e) = epi {
        e.check(op, o, y.len());
    }
    let isa = Isa::best();
    if gathered_applies(s, isa) {
        // Stride 1, rows of whole vectors: the micro-kernel reading a
        // padded copy of the input (gathered.rs).
        return forward_gathered(s, x, w, bias, y, epi, isa);
    }
    if packed_applies(s) {
        // im2col into packed panels and our own micro-kernel (packed.rs).
        return forward_packed(s, x, w, bias, y, epi, isa);
    }
    let ipc = images_per_chunk(s);
    for_each_chunk(y, ipc * o * p, run_parallel(s), |chunk, y_chunk| {
        // y_chunk is (nb, O, P), images chunk·ipc ..
        with_scratch(forward_scratch_len(s), |scratch| {
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let b = chunk * ipc + i;
                forward_image(s, &x[b * c * hw..][..c * hw], w, bias, scratch, y_b);
                if let Some(e) = epi {
                    e.apply(b, y_b, isa);
                }
            }
        });
    });
}

/// Scratch floats [`forward_image`] needs: an im2col matrix, or the direct
/// path's buffers.
pub(super) fn forward_scratch_len(s: &Conv2dShape) -> usize {
    if packed_applies(s) {
        return packed_scratch_len(s, Isa::best());
    }
    if direct_applies(s) {
        (s.col_rows() * s.out_pixels()).max(direct_scratch_len(s))
    } else {
        let sp = padded_shape(s);
        sp.group_in() * sp.in_h * sp.in_w + direct_scratch_len(&sp)
    }
}

/// The forward pass of one image, x_b (C, H, W) → y_b (O, OH, OW), group by
/// group: by the direct kernel when it applies (stride 1, no padding or
/// dilation: both LeNet convolutions; or on a padded copy of a narrow
/// layer's input), else by the packed product of `packed.rs`. `scratch`
/// holds [`forward_scratch_len`] floats.
pub(super) fn forward_image(
    s: &Conv2dShape,
    x_b: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    scratch: &mut [f32],
    y_b: &mut [f32],
) {
    if packed_applies(s) {
        return forward_image_packed(s, x_b, w, bias, scratch, y_b, Isa::best());
    }
    let (hw, p) = (s.in_h * s.in_w, s.out_pixels());
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let direct = direct_applies(s);
    for g in 0..s.opts.groups {
        let x_bg = &x_b[g * cg * hw..][..cg * hw]; // (Cg, H, W)
        let w_g = &w[g * og * k..(g + 1) * og * k]; // (O/g, K)
        let bias_g = bias.map(|b| &b[g * og..(g + 1) * og]);
        let y_bg = &mut y_b[g * og * p..(g + 1) * og * p]; // (O/g, P)
        if direct {
            let mut emit = copy_planes(s, y_bg);
            forward_direct(
                s,
                x_bg,
                w_g,
                bias_g,
                scratch,
                crate::isa::Isa::best(),
                &mut emit,
            );
            continue;
        }
        // The input padded by hand, then the direct kernel on it.
        let sp = padded_shape(s);
        let (xpad, rest) = scratch.split_at_mut(cg * sp.in_h * sp.in_w);
        pad_into(s, x_bg, xpad);
        let mut emit = copy_planes(&sp, y_bg);
        forward_direct(&sp, xpad, w_g, bias_g, rest, Isa::best(), &mut emit);
    }
}

/// The (Cg, H, W) planes of `x` zero-padded into (Cg, H + 2·py, W + 2·px).
/// OVERWRITES xp.
pub(super) fn pad_into(s: &Conv2dShape, x: &[f32], xp: &mut [f32]) {
    let (h, w, (py, px)) = (s.in_h, s.in_w, s.opts.padding);
    let wp = w + 2 * px;
    for (src, dst) in x
        .chunks_exact(h * w)
        .zip(xp.chunks_exact_mut((h + 2 * py) * wp))
    {
        // Each value is written once: the rows above and below are zeroed
        // whole, the rows between get their borders and their values.
        let (top, rest) = dst.split_at_mut(py * wp);
        top.fill(0.0);
        let (mid, bottom) = rest.split_at_mut(h * wp);
        bottom.fill(0.0);
        for (row, d) in src.chunks_exact(w).zip(mid.chunks_exact_mut(wp)) {
            d[..px].fill(0.0);
            copy_short(&mut d[px..px + w], row);
            d[px + w..].fill(0.0);
        }
    }
}
