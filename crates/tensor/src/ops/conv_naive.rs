//! The convolution by its definition: nested loops over every output, tap
//! and image, for the forward pass, both gradients and the fused conv →
//! relu → max-pool block. Documentation, and the oracle every fast kernel,
//! dense or sparse, is tested against (a sparse kernel runs them on its
//! masked weight).

use crate::ops::geometry::{Conv2dShape, PoolOptions};
use crate::ops::scratch::check_len;

/// The direct convolution, seven nested loops: documentation and test oracle.
pub fn conv2d_forward_naive(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let op = "conv2d_forward_naive";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "y", s.output_shape().iter().product(), y.len());
    let (oh, ow) = (s.out_h(), s.out_w());
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |bias| bias[o]);
                    for_each_tap(s, o, oy, ox, |ci, iy, ix, wi| {
                        acc += x[idx4(s.input_shape(), b, ci, iy, ix)] * w[wi];
                    });
                    y[idx4(s.output_shape(), b, o, oy, ox)] = acc;
                }
            }
        }
    }
}

/// Direct dw[o, c, ki, kj] = Σ_{b, oy, ox} dy[b, o, oy, ox] · x[b, g·Cg + c, iy, ix].
pub fn conv2d_backward_weight_naive(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let op = "conv2d_backward_weight_naive";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
    dw.fill(0.0);
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..s.out_h() {
                for ox in 0..s.out_w() {
                    let d = dy[idx4(s.output_shape(), b, o, oy, ox)];
                    for_each_tap(s, o, oy, ox, |ci, iy, ix, wi| {
                        dw[wi] += d * x[idx4(s.input_shape(), b, ci, iy, ix)];
                    });
                }
            }
        }
    }
}

/// Direct dx[b, ci, iy, ix] = Σ w[o, c, ki, kj] · dy[b, o, oy, ox] over the
/// taps that read (ci, iy, ix).
pub fn conv2d_backward_input_naive(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let op = "conv2d_backward_input_naive";
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dx", s.input_shape().iter().product(), dx.len());
    dx.fill(0.0);
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..s.out_h() {
                for ox in 0..s.out_w() {
                    let d = dy[idx4(s.output_shape(), b, o, oy, ox)];
                    for_each_tap(s, o, oy, ox, |ci, iy, ix, wi| {
                        dx[idx4(s.input_shape(), b, ci, iy, ix)] += w[wi] * d;
                    });
                }
            }
        }
    }
}

/// The definition, from the naive kernels: conv2d_forward_naive, relu, then
/// max-pooling each plane. Returns (pooled, arg); the test oracle.
pub fn conv2d_relu_pool_naive(
    s: &Conv2dShape,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<u32>) {
    let mut y = vec![0.0; s.output_shape().iter().product()];
    conv2d_forward_naive(s, x, w, bias, &mut y);
    let r: Vec<f32> = y
        .iter()
        .map(|&v| crate::ops::elementwise::relu(v))
        .collect();
    let pp = pool.output_shape(s).iter().product();
    let (mut pooled, mut arg) = (vec![0.0; pp], vec![0u32; pp]);
    crate::ops::pool::max_pool2d_forward(
        &r,
        (s.out_h(), s.out_w()),
        pool.kernel,
        pool.stride,
        &mut pooled,
        &mut arg,
    );
    (pooled, arg)
}

/// Row-major index of (a, b, c, d) in a 4-d array of shape `dims`.
pub(crate) fn idx4(dims: [usize; 4], a: usize, b: usize, c: usize, d: usize) -> usize {
    ((a * dims[1] + b) * dims[2] + c) * dims[3] + d
}

/// For output channel o at output position (oy, ox), calls
/// `f(input channel, iy, ix, weight index)` for every kernel tap that lands
/// inside the input (taps in the padding contribute zero).
pub(crate) fn for_each_tap(
    s: &Conv2dShape,
    o: usize,
    oy: usize,
    ox: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let g = o / s.group_out();
    for c in 0..s.group_in() {
        for ki in 0..s.kernel_h {
            for kj in 0..s.kernel_w {
                let iy = (oy * s.opts.stride.0 + ki * s.opts.dilation.0) as isize
                    - s.opts.padding.0 as isize;
                let ix = (ox * s.opts.stride.1 + kj * s.opts.dilation.1) as isize
                    - s.opts.padding.1 as isize;
                if iy < 0 || ix < 0 || iy >= s.in_h as isize || ix >= s.in_w as isize {
                    continue;
                }
                let wi = idx4(s.weight_shape(), o, c, ki, kj);
                f(g * s.group_in() + c, iy as usize, ix as usize, wi);
            }
        }
    }
}
