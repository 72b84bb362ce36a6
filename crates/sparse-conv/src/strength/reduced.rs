//! f2b, reduced redundancy: the notebook's fix for f2's copies. A seen map
//! depends only on the input channel and the tap, not on the output channel,
//! so one grouped convolution with groups = C and KH·KW one-hot kernels per
//! channel extracts each input channel's KH·KW shifted views once,
//! (B, C·KH·KW, OH, OW). Every output channel o then reuses the views of its
//! group: connection (o, c, j, h) reads view (g·Cg + c, j, h).
//!
//! The notebook used this for correlation; it computes coactivation too.

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
    let taps = s.kernel_h * s.kernel_w;
    let input = seen_input(measure, x, threshold);

    // Input channel ci has output channels ci·KH·KW + t, t the tap (j·KW + h).
    let mut one_hot = vec![0.0f32; c_all * taps * taps]; // (C·KH·KW, 1, KH, KW)
    for (n, kernel) in one_hot.chunks_mut(taps).enumerate() {
        kernel[n % taps] = 1.0;
    }
    let views = Conv2dShape {
        out_channels: c_all * taps,
        opts: Conv2dOptions {
            groups: c_all,
            ..s.opts
        },
        ..*s
    };
    let mut seen = vec![0.0f32; batch * c_all * taps * pixels];
    conv2d_forward(&views, &input, &one_hot, None, &mut seen);

    let seen = activity(measure, seen, batch, None);
    let seen = Maps {
        data: &seen,
        channels: c_all * taps,
        pixels,
    };
    let out = activity(measure, y.to_vec(), batch, Some(threshold));
    let out = Maps {
        data: &out,
        channels: o_all,
        pixels,
    };
    let mut sums = Vec::new();
    for o in 0..o_all {
        let g = o / og;
        for c in 0..cg {
            for t in 0..taps {
                let view = (g * cg + c) * taps + t;
                let wi = (o * cg + c) * taps + t;
                acc[wi] += connection_strength(measure, seen, view, out, o, batch, &mut sums);
            }
        }
    }
}
