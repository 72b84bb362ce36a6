//! The sparse forward pass.

use super::*;

/// y = conv(x, w ⊙ mask) + bias over the active taps only. OVERWRITES y.
/// x is (B, C, H, W), w is (O, C/groups, KH, KW) (entries outside the mask
/// are ignored, whatever they hold), bias is (O), y is (B, O, OH, OW).
pub fn sparse_conv2d_forward(
    s: &Conv2dShape,
    l: &SparseLayout,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    k: Isa,
) {
    let op = "sparse_conv2d_forward";
    l.check(op, s);
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
    let (cg, og) = (s.group_in(), s.group_out());
    let (oh, ow) = (s.out_h(), s.out_w());
    let ipc = images_per_chunk(s, l);
    let parallel = run_parallel(s, l);
    let bias_of = |oc: usize| bias.map_or(0.0, |b| b[oc]);

    if s.opts.stride != (1, 1) {
        for_each_chunk(y, ipc * o * p, parallel, |chunk, y_chunk| {
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let b = chunk * ipc + i;
                forward_rows(s, l, &x[b * c * hw..][..c * hw], w, bias_of, y_b);
            }
        });
        return;
    }

    // Stride 1: the wide trick.
    let plan = l.plan(s);
    let padded = s.opts.padding != (0, 0);
    let pad_len = if padded { cg * plan.hp * plan.wp } else { 0 };
    let wide = (oh - 1) * plan.wp + ow; // yw[oy·Wp + ox]
    let max_taps = l.max_taps();
    for_each_chunk(y, ipc * o * p, parallel, |chunk, y_chunk| {
        with_scratch(&SCRATCH, pad_len + wide + max_taps, |buf| {
            let (xpad, rest) = buf.split_at_mut(pad_len); // (Cg, Hp, Wp)
            let (yw, ws) = rest.split_at_mut(wide);
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let b = chunk * ipc + i;
                for g in 0..s.opts.groups {
                    let x_bg = &x[(b * c + g * cg) * hw..][..cg * hw]; // (Cg, H, W)
                    let src = if padded {
                        pad_planes(x_bg, s.in_h, s.in_w, s.opts.padding, xpad, k);
                        &*xpad
                    } else {
                        x_bg
                    };
                    for oc in g * og..(g + 1) * og {
                        let r = l.out_range(oc);
                        let ws = &mut ws[..r.len()];
                        for (wv, t) in ws.iter_mut().zip(&l.by_output[r.clone()]) {
                            *wv = w[t.wi];
                        }
                        gather_fma(src, &plan.fwd_offs[r], ws, bias_of(oc), yw, k);
                        let y_o = &mut y_b[oc * p..(oc + 1) * p]; // (OH, OW)
                        copy_rows(y_o, ow, yw, plan.wp, oh, ow, k);
                    }
                }
            }
        });
    });
}

/// Forward for one image, any geometry, row by row: for each active tap,
/// add w · (the input row it reads) to each output row, over the columns
/// whose input lies inside the image. x_b is (C, H, W), y_b is (O, OH, OW).
pub(super) fn forward_rows(
    s: &Conv2dShape,
    l: &SparseLayout,
    x_b: &[f32],
    w: &[f32],
    bias_of: impl Fn(usize) -> f32,
    y_b: &mut [f32],
) {
    let (h, wd, oh, ow) = (s.in_h, s.in_w, s.out_h(), s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy, dx) = s.opts.dilation;
    let (cg, og) = (s.group_in(), s.group_out());
    for (oc, y_o) in y_b.chunks_exact_mut(oh * ow).enumerate() {
        y_o.fill(bias_of(oc));
        let g = oc / og;
        for t in &l.by_output[l.out_range(oc)] {
            let wv = w[t.wi];
            let plane = &x_b[(g * cg + t.ch) * h * wd..][..h * wd];
            let (oy0, oy1) = valid_range(oh, h, sy, t.ki * dy, py);
            let (ox0, ox1) = valid_range(ow, wd, sx, t.kj * dx, px);
            if ox0 == ox1 {
                continue;
            }
            for oy in oy0..oy1 {
                let iy = oy * sy + t.ki * dy - py;
                let ix0 = ox0 * sx + t.kj * dx - px;
                let src = plane[iy * wd + ix0..(iy + 1) * wd].iter().step_by(sx);
                for (yv, &xv) in y_o[oy * ow + ox0..oy * ow + ox1].iter_mut().zip(src) {
                    *yv += wv * xv;
                }
            }
        }
    }
}
