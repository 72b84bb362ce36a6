//! f1, single-unit: what the notebook did first. For every connection
//! (o, c, j, h), build a weight with a single 1 at that tap and convolve the
//! input with it: the result is the input this one connection sees at every
//! output position (its "seen map"). Compare it with output channel o and
//! sum. O·Cg·KH·KW full convolutions, each over all C input channels though
//! only one matters: slow on purpose, kept to show where the notebook started
//! and to time against.

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
    let (batch, c_all, kh, kw) = (s.batch, s.in_channels, s.kernel_h, s.kernel_w);
    let (cg, og, pixels) = (s.group_in(), s.group_out(), s.out_pixels());
    let input = seen_input(measure, x, threshold);
    let out = activity(measure, y.to_vec(), batch, Some(threshold));
    let out = Maps {
        data: &out,
        channels: s.out_channels,
        pixels,
    };
    // One output channel reading every input channel, same stride, padding
    // and dilation: with a one-hot weight it copies out one tap's view.
    let single = Conv2dShape {
        out_channels: 1,
        opts: Conv2dOptions {
            groups: 1,
            ..s.opts
        },
        ..*s
    };
    let mut one_hot = vec![0.0f32; c_all * kh * kw]; // (1, C, KH, KW)
    let mut seen = vec![0.0f32; batch * pixels]; // (B, 1, OH, OW)
    let mut sums = Vec::new();
    for o in 0..s.out_channels {
        let g = o / og;
        for c in 0..cg {
            for j in 0..kh {
                for h in 0..kw {
                    let tap = ((g * cg + c) * kh + j) * kw + h;
                    one_hot[tap] = 1.0;
                    conv2d_forward(&single, &input, &one_hot, None, &mut seen);
                    one_hot[tap] = 0.0;
                    let seen_activity = activity(measure, seen.clone(), batch, None);
                    let seen_maps = Maps {
                        data: &seen_activity,
                        channels: 1,
                        pixels,
                    };
                    let wi = ((o * cg + c) * kh + j) * kw + h;
                    acc[wi] += connection_strength(measure, seen_maps, 0, out, o, batch, &mut sums);
                }
            }
        }
    }
}
