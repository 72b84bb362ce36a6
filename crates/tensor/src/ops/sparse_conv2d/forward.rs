//! The sparse forward pass.

use super::*;
use crate::ops::epilogue::Epilogue;

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
    sparse_conv2d_forward_then(s, l, x, w, bias, y, None, k);
}

/// [`sparse_conv2d_forward`], then the epilogue on each image's output as
/// soon as it is written ([`crate::ops::epilogue`]). OVERWRITES y.
#[allow(clippy::too_many_arguments)] // the operands and the epilogue
pub fn sparse_conv2d_forward_then(
    s: &Conv2dShape,
    l: &SparseLayout,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    epi: Option<&Epilogue>,
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
    if let Some(e) = epi {
        e.check(op, s.out_channels, y.len());
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

    // The wide trick, on the padded (and for stride > 1 phase-split) planes.
    let plan = l.plan(s);
    let padded = needs_planes(s, &plan);
    // Rows of whole vectors go straight into y; others through wide rows.
    let rv = row_vectors(ow, k);
    let wide = if rv.is_some() {
        0
    } else {
        (oh - 1) * plan.wp + ow
    }; // yw[oy·Wp + ox]
    with_active_weights(w, l.by_output.iter().map(|t| t.wi), |wv| {
        // Group g of image b: its output planes y_g (O/g, OH, OW) from
        // its input planes `src` (prepared, if the conv pads or strides).
        let group = |src: &[f32], b: usize, g: usize, y_g: &mut [f32], yw: &mut [f32]| {
            for (j, y_o) in y_g.chunks_exact_mut(p).enumerate() {
                let oc = g * og + j; // y_o: (OH, OW)
                let r = l.out_range(oc);
                let (offs, ws, init) = (&plan.fwd_offs[r.clone()], &wv[r], bias_of(oc));
                if let Some(rv) = rv {
                    gather_fma_rows(src, plan.wp, offs, ws, init, y_o, ow, rv);
                } else {
                    gather_fma(src, offs, ws, init, yw, k);
                    copy_rows(y_o, ow, yw, plan.wp, oh, ow, k);
                }
                if let Some(e) = epi {
                    e.apply_plane(b, oc, y_o, k); // while the plane is in L1
                }
            }
        };
        for_each_chunk(y, ipc * o * p, parallel, |chunk, y_chunk| {
            with_scratch(&SCRATCH, wide, |yw| {
                for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                    let b = chunk * ipc + i;
                    for (g, y_g) in y_b.chunks_mut(og * p).enumerate() {
                        let x_bg = &x[(b * c + g * cg) * hw..][..cg * hw]; // (Cg, H, W)
                        if padded {
                            with_prepared_planes(s, &plan, x_bg, k, |src| {
                                group(src, b, g, y_g, yw)
                            });
                        } else {
                            group(x_bg, b, g, y_g, yw);
                        }
                    }
                }
            });
        });
    });
}
