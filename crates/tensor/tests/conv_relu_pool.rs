//! The fused conv2d → relu → max_pool2d op against the three separate ops
//! (bit for bit, values and every gradient, but for the bias gradient of
//! narrow layers, which is summed in another order: to rounding) and
//! against the naive oracle, over a table of geometries; and its
//! thread-count independence.

use tensor::ops::conv2d::*;
use tensor::{no_grad, Rng, Tensor};

struct Case {
    name: &'static str,
    input: [usize; 4],  // (B, C, H, W)
    weight: [usize; 4], // (O, C/groups, KH, KW)
    opts: Conv2dOptions,
    pool: PoolOptions,
    bias: bool,
    /// Whether the input needs a gradient (the first conv of a net: no).
    input_grad: bool,
}

const POOL2: PoolOptions = PoolOptions {
    kernel: (2, 2),
    stride: (2, 2),
};

fn case(name: &'static str, input: [usize; 4], weight: [usize; 4]) -> Case {
    Case {
        name,
        input,
        weight,
        opts: Conv2dOptions::default(),
        pool: POOL2,
        bias: true,
        input_grad: true,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            input_grad: false,
            ..case("lenet conv1, batch 3", [3, 3, 32, 32], [6, 3, 5, 5])
        },
        case("lenet conv2, several chunks", [7, 6, 14, 14], [16, 6, 5, 5]),
        Case {
            bias: false,
            ..case(
                "no bias, odd plane (pool drops a row)",
                [2, 3, 9, 8],
                [4, 3, 3, 2],
            )
        },
        Case {
            // The wide relu-pool path: two groups of 7 channels, more than
            // one register block of the direct kernel each.
            opts: Conv2dOptions {
                groups: 2,
                ..Conv2dOptions::default()
            },
            ..case("groups, 7 channels a group", [2, 4, 10, 12], [14, 2, 3, 3])
        },
        Case {
            pool: PoolOptions {
                kernel: (3, 2),
                stride: (1, 2),
            },
            ..case("overlapping pool windows", [2, 2, 8, 7], [3, 2, 2, 2])
        },
        Case {
            opts: Conv2dOptions {
                stride: (2, 1),
                padding: (1, 2),
                dilation: (1, 2),
                groups: 2,
            },
            ..case(
                "stride, padding, dilation, groups",
                [3, 4, 9, 10],
                [6, 2, 3, 2],
            )
        },
        Case {
            // Padded stride-1 layers with more than 8 output channels: the
            // input gradient as the forward convolution of dY with the
            // flipped kernel (direct for 16 input channels, packed for
            // 32), the weight gradient direct or packed.
            opts: Conv2dOptions {
                padding: (1, 1),
                ..Conv2dOptions::default()
            },
            ..case("padded 3x3, 16 channels", [2, 16, 8, 8], [12, 16, 3, 3])
        },
        Case {
            opts: Conv2dOptions {
                padding: (1, 1),
                ..Conv2dOptions::default()
            },
            ..case("padded 3x3, 32 channels", [2, 32, 6, 6], [10, 32, 3, 3])
        },
    ]
}

fn data(shape: &[usize], seed: u64) -> Vec<f32> {
    let mut r = Rng::seed(seed);
    (0..shape.iter().product())
        .map(|_| r.uniform(-1.0, 1.0))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Output and gradients (x, w, b) of `r · block(x)`, summed, where block is
/// fused or the three separate ops.
fn run(c: &Case, fused: bool, x_data: &[f32]) -> [Vec<f32>; 4] {
    let x = Tensor::from_vec(x_data.to_vec(), &c.input);
    let x = if c.input_grad { x.requires_grad() } else { x };
    let w = Tensor::from_vec(data(&c.weight, 2), &c.weight).requires_grad();
    let b = Tensor::from_vec(data(&[c.weight[0]], 3), &[c.weight[0]]).requires_grad();
    let b = c.bias.then_some(&b);
    let out = if fused {
        x.conv2d_relu_max_pool2d(&w, b, c.opts, c.pool)
    } else {
        x.conv2d(&w, b, c.opts)
            .relu()
            .max_pool2d(c.pool.kernel, c.pool.stride)
    };
    let r = Tensor::from_vec(data(out.shape(), 4), out.shape());
    out.mul(&r).sum().backward();
    let grad = |t: &Tensor| t.grad().unwrap_or_default();
    [
        out.to_vec(),
        grad(&x),
        grad(&w),
        b.map(grad).unwrap_or_default(),
    ]
}

#[test]
fn fused_equals_separate_ops_bit_for_bit() {
    for c in cases() {
        // Random inputs, and inputs whose conv outputs are mostly negative:
        // whole windows relu to 0 (ties at 0, gradient blocked).
        for (shift, seed) in [(0.0, 1), (-0.8, 5)] {
            let x: Vec<f32> = data(&c.input, seed).iter().map(|v| v + shift).collect();
            let fused = run(&c, true, &x);
            let separate = run(&c, false, &x);
            // Narrow stride-1 layers take their gradients from the direct
            // kernels, both fused and separate; there the fused op sums the
            // bias gradient window by window (see the sparse fused op), so
            // it is equal to rounding, and everything else bit for bit.
            let s = Conv2dShape::new(&c.input, &c.weight, c.opts).unwrap();
            let direct = narrow_direct_backward(&s);
            for (i, (what, (a, b))) in ["output", "dx", "dw", "db"]
                .iter()
                .zip(fused.iter().zip(&separate))
                .enumerate()
            {
                if i != 3 || !direct {
                    assert!(
                        bits(a) == bits(b),
                        "{} (shift {shift}): {what} differs from conv2d → relu → max_pool2d",
                        c.name
                    );
                } else {
                    assert_eq!(a.len(), b.len(), "{}: {what}", c.name);
                    for (j, (u, v)) in a.iter().zip(b).enumerate() {
                        assert!(
                            (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                            "{} (shift {shift}): {what}[{j}] {u} vs {v}",
                            c.name
                        );
                    }
                }
            }
            assert_eq!(fused[1].is_empty(), !c.input_grad, "{}", c.name);
            assert!(fused[0].contains(&0.0) || shift == 0.0);
        }
    }
}

#[test]
fn fused_forward_matches_the_naive_oracle() {
    for c in cases() {
        let s = Conv2dShape::new(&c.input, &c.weight, c.opts).unwrap();
        let (x, w, b) = (
            data(&c.input, 1),
            data(&c.weight, 2),
            data(&[c.weight[0]], 3),
        );
        let bias = c.bias.then_some(&b[..]);
        let n: usize = c.pool.output_shape(&s).iter().product();
        let (mut pooled, mut arg) = (vec![0.0; n], vec![0u32; n]);
        conv2d_relu_pool_forward(&s, c.pool, &x, &w, bias, &mut pooled, Some(&mut arg));
        let (want, want_arg) = conv2d_relu_pool_naive(&s, c.pool, &x, &w, bias);
        for (i, (g, e)) in pooled.iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{}: pooled[{i}] {g} vs {e}",
                c.name
            );
        }
        // Argmaxes can differ only where two values tie to within rounding.
        let differ = arg.iter().zip(&want_arg).filter(|(a, b)| a != b).count();
        assert!(
            differ * 50 <= n,
            "{}: {differ} of {n} argmaxes differ",
            c.name
        );
    }
}

#[test]
fn no_grad_records_nothing_and_gives_the_same_values() {
    let c = &cases()[1];
    let x = Tensor::from_vec(data(&c.input, 1), &c.input);
    let w = Tensor::from_vec(data(&c.weight, 2), &c.weight).requires_grad();
    let recorded = x.conv2d_relu_max_pool2d(&w, None, c.opts, c.pool);
    tensor::tape::clear();
    let before = tensor::tape::len();
    let inferred = no_grad(|| x.conv2d_relu_max_pool2d(&w, None, c.opts, c.pool));
    assert_eq!(tensor::tape::len(), before);
    assert_eq!(bits(&recorded.to_vec()), bits(&inferred.to_vec()));
}

/// dW and db are reductions over the batch: they must not depend on how rayon
/// splits the chunks.
#[test]
fn fused_backward_is_bitwise_independent_of_thread_count() {
    let s = Conv2dShape::new(&[32, 6, 14, 14], &[16, 6, 5, 5], Conv2dOptions::default()).unwrap();
    assert!(s.batch > 2 * images_per_chunk(&s));
    let x = data(&s.input_shape(), 11);
    let w = data(&s.weight_shape(), 12);
    let b = data(&[16], 13);
    let n: usize = POOL2.output_shape(&s).iter().product();
    let dp = data(&[n], 14);
    let go = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (mut pooled, mut arg) = (vec![0.0; n], vec![0u32; n]);
            conv2d_relu_pool_forward(&s, POOL2, &x, &w, Some(&b), &mut pooled, Some(&mut arg));
            let (mut dw, mut db, mut dx) = (vec![0.0; w.len()], vec![0.0; 16], vec![0.0; x.len()]);
            conv2d_relu_pool_backward(
                &s,
                POOL2,
                &x,
                &w,
                &pooled,
                &arg,
                &dp,
                Some(&mut dw),
                Some(&mut db),
                Some(&mut dx),
            );
            [pooled, dw, db, dx].map(|v| bits(&v))
        })
    };
    let one = go(1);
    for threads in [2, 3] {
        assert!(
            one == go(threads),
            "results differ between 1 and {threads} threads"
        );
    }
}
