//! f2, grouped: the notebook's one-convolution version of f1. Stack a copy of
//! the input channels of o's group for every output channel o, giving
//! (B, O·Cg, H, W), and convolve with groups = O·Cg: each stacked channel
//! gets its own KH·KW one-hot kernels. Output channel (o, c, j, h) of this
//! big convolution is then the seen map of connection (o, c, j, h), in
//! weight order, and is reduced against output channel o.
//!
//! One call instead of O·Cg·KH·KW, but every input channel is copied O/g
//! times and every seen map O/g times: the redundancy f2b removes.

use super::shared::{activity, connection_strength, seen_input, Maps};
use super::Measure;
use tensor::ops::conv2d::{conv2d_forward, Conv2dOptions};
use tensor::Conv2dShape;

pub(super) fn accumulate(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    measure: Measure,
    threshold: f32,
    acc: &mut [f32],
) {
    let (batch, c_all, o_all) = (s.batch, s.in_channels, s.out_channels);
    let (cg, og, pixels) = (s.group_in(), s.group_out(), s.out_pixels());
    let (hw, taps) = (s.in_h * s.in_w, s.kernel_h * s.kernel_w);
    let input = seen_input(measure, x, threshold);

    // stacked[b, o·Cg + c] = input[b, g(o)·Cg + c]
    let stacks = o_all * cg;
    let mut stacked = vec![0.0f32; batch * stacks * hw];
    for b in 0..batch {
        for o in 0..o_all {
            let src = &input[(b * c_all + (o / og) * cg) * hw..][..cg * hw];
            stacked[(b * stacks + o * cg) * hw..][..cg * hw].copy_from_slice(src);
        }
    }
    // Stacked channel r has output channels r·KH·KW + t, t the tap (j·KW + h),
    // each a kernel with a single 1 at tap t.
    let mut one_hot = vec![0.0f32; stacks * taps * taps]; // (O·Cg·KH·KW, 1, KH, KW)
    for (n, kernel) in one_hot.chunks_mut(taps).enumerate() {
        kernel[n % taps] = 1.0;
    }
    let big = Conv2dShape {
        in_channels: stacks,
        out_channels: stacks * taps,
        opts: Conv2dOptions {
            groups: stacks,
            ..s.opts
        },
        ..*s
    };
    let mut seen = vec![0.0f32; batch * stacks * taps * pixels];
    conv2d_forward(&big, &stacked, &one_hot, None, &mut seen);

    let seen = activity(measure, seen, batch, None);
    let seen = Maps {
        data: &seen,
        channels: stacks * taps,
        pixels,
    };
    let out = activity(measure, y.to_vec(), batch, Some(threshold));
    let out = Maps {
        data: &out,
        channels: o_all,
        pixels,
    };
    let mut sums = Vec::new();
    let per_output = cg * taps;
    for (wi, a) in acc.iter_mut().enumerate() {
        *a += connection_strength(measure, seen, wi, out, wi / per_output, batch, &mut sums);
    }
}
