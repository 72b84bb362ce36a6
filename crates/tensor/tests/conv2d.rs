//! The fast conv2d kernels (im2col + GEMM) against the direct 7-loop
//! versions, over a table of awkward shapes; the direct backward against
//! finite differences of the direct forward; and thread-count independence.

use tensor::ops::conv2d::*;

/// xorshift32, mapped to [-1, 1): reproducible data without dependencies.
struct Rng(u32);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

struct Case {
    name: &'static str,
    input: [usize; 4],  // (B, C, H, W)
    weight: [usize; 4], // (O, C/groups, KH, KW)
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
    bias: bool,
}

const fn case(name: &'static str, input: [usize; 4], weight: [usize; 4]) -> Case {
    Case {
        name,
        input,
        weight,
        stride: (1, 1),
        padding: (0, 0),
        dilation: (1, 1),
        groups: 1,
        bias: true,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("plain 3x7x5", [1, 3, 7, 5], [4, 3, 3, 3]),
        Case {
            bias: false,
            ..case("no bias, batch 3", [3, 3, 7, 5], [2, 3, 3, 3])
        },
        case("non-square kernel 3x2", [2, 3, 7, 5], [5, 3, 3, 2]),
        Case {
            stride: (2, 1),
            ..case("stride (2,1)", [3, 2, 9, 6], [3, 2, 3, 2])
        },
        Case {
            stride: (1, 3),
            ..case("stride (1,3)", [2, 2, 6, 11], [3, 2, 2, 3])
        },
        Case {
            padding: (1, 2),
            ..case("padding (1,2)", [2, 3, 7, 5], [4, 3, 3, 2])
        },
        // Wide enough for the direct kernel on a padded copy (forward) and
        // on the padded dY with the flipped kernel (input gradient).
        Case {
            padding: (1, 1),
            bias: false,
            ..case("resnet 3x3 pad 1", [3, 16, 8, 8], [16, 16, 3, 3])
        },
        Case {
            padding: (1, 2),
            ..case("direct padded (1,2), uneven", [2, 9, 7, 6], [11, 9, 3, 3])
        },
        Case {
            padding: (2, 0),
            ..case(
                "direct padded to the kernel's edge",
                [2, 8, 5, 9],
                [8, 8, 3, 2],
            )
        },
        Case {
            dilation: (2, 1),
            ..case("dilation (2,1)", [2, 3, 9, 5], [2, 3, 3, 2])
        },
        Case {
            groups: 2,
            ..case("groups 2", [3, 4, 6, 7], [6, 2, 3, 3])
        },
        Case {
            groups: 3,
            bias: false,
            ..case("groups 3", [1, 6, 5, 5], [3, 2, 2, 2])
        },
        Case {
            stride: (2, 3),
            padding: (2, 1),
            dilation: (1, 2),
            groups: 3,
            ..case("everything at once", [3, 6, 11, 9], [9, 2, 3, 2])
        },
        Case {
            padding: (3, 3),
            ..case(
                "padding wider than kernel reach",
                [1, 1, 2, 3],
                [2, 1, 2, 2],
            )
        },
        case("1x1 kernel", [2, 5, 4, 3], [3, 5, 1, 1]),
        case("kernel covers input", [2, 2, 4, 3], [3, 2, 4, 3]),
        case("LeNet conv1 (batch 2)", [2, 3, 32, 32], [6, 3, 5, 5]),
        case(
            "LeNet conv2 (batch 5, chunked)",
            [5, 6, 14, 14],
            [16, 6, 5, 5],
        ),
    ]
}

fn shape_of(c: &Case) -> Conv2dShape {
    let opts = Conv2dOptions {
        stride: c.stride,
        padding: c.padding,
        dilation: c.dilation,
        groups: c.groups,
    };
    Conv2dShape::new(&c.input, &c.weight, opts).unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * (1.0 + w.abs());
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn fast_kernels_match_naive_on_case_table() {
    for (n, c) in cases().iter().enumerate() {
        let s = shape_of(c);
        let mut rng = Rng(0x9E37_79B9 ^ (n as u32 + 1));
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let bias = rng.vec(s.out_channels);
        let bias = c.bias.then_some(&bias[..]);
        let dy = rng.vec(s.output_shape().iter().product());
        let ylen = dy.len();

        // Outputs start as garbage (NaN) to check that they are overwritten.
        let (mut y, mut y_ref) = (vec![f32::NAN; ylen], vec![0.0; ylen]);
        conv2d_forward(&s, &x, &w, bias, &mut y);
        conv2d_forward_naive(&s, &x, &w, bias, &mut y_ref);
        assert_close(&format!("{}: forward", c.name), &y, &y_ref);

        let (mut dw, mut dw_ref) = (vec![f32::NAN; w.len()], vec![0.0; w.len()]);
        conv2d_backward_weight(&s, &x, &dy, &mut dw);
        conv2d_backward_weight_naive(&s, &x, &dy, &mut dw_ref);
        assert_close(&format!("{}: backward_weight", c.name), &dw, &dw_ref);

        let (mut dx, mut dx_ref) = (vec![f32::NAN; x.len()], vec![0.0; x.len()]);
        conv2d_backward_input(&s, &w, &dy, &mut dx);
        conv2d_backward_input_naive(&s, &w, &dy, &mut dx_ref);
        assert_close(&format!("{}: backward_input", c.name), &dx, &dx_ref);

        let mut db = vec![f32::NAN; s.out_channels];
        conv2d_backward_bias(&s, &dy, &mut db);
        let p = s.out_pixels();
        let db_ref: Vec<f32> = (0..s.out_channels)
            .map(|o| {
                (0..s.batch)
                    .map(|b| dy[(b * s.out_channels + o) * p..][..p].iter().sum::<f32>())
                    .sum()
            })
            .collect();
        assert_close(&format!("{}: backward_bias", c.name), &db, &db_ref);
    }
}

/// The naive backward kernels are the oracle, so check them against central
/// differences of the naive forward, with loss L = Σ y ⊙ dy.
#[test]
fn naive_backward_matches_finite_differences() {
    let c = Case {
        stride: (2, 1),
        padding: (1, 2),
        dilation: (1, 2),
        groups: 2,
        ..case("fd", [2, 4, 5, 6], [4, 2, 3, 2])
    };
    let s = shape_of(&c);
    let mut rng = Rng(12345);
    let x = rng.vec(s.input_shape().iter().product());
    let w = rng.vec(s.weight_shape().iter().product());
    let dy = rng.vec(s.output_shape().iter().product());
    let loss = |x: &[f32], w: &[f32]| -> f64 {
        let mut y = vec![0.0; dy.len()];
        conv2d_forward_naive(&s, x, w, None, &mut y);
        y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let mut dw = vec![0.0; w.len()];
    conv2d_backward_weight_naive(&s, &x, &dy, &mut dw);
    let mut dx = vec![0.0; x.len()];
    conv2d_backward_input_naive(&s, &w, &dy, &mut dx);
    let h = 1e-2f32; // the loss is linear in each argument: only rounding error
    for i in 0..w.len() {
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[i] += h;
        wm[i] -= h;
        let fd = (loss(&x, &wp) - loss(&x, &wm)) / (2.0 * h as f64);
        assert!(
            (fd - dw[i] as f64).abs() < 1e-3,
            "dw[{i}]: fd {fd}, naive {}",
            dw[i]
        );
    }
    for i in 0..x.len() {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd = (loss(&xp, &w) - loss(&xm, &w)) / (2.0 * h as f64);
        assert!(
            (fd - dx[i] as f64).abs() < 1e-3,
            "dx[{i}]: fd {fd}, naive {}",
            dx[i]
        );
    }
}

/// im2col followed by col2im multiplies each input element by the number of
/// patches that read it; on the LeNet shapes also check im2col against a
/// direct gather.
#[test]
fn im2col_is_a_gather_and_col2im_its_adjoint() {
    let c = Case {
        stride: (2, 1),
        padding: (1, 2),
        dilation: (2, 1),
        ..case("i2c", [1, 2, 7, 6], [1, 2, 2, 3])
    };
    let s = shape_of(&c);
    let mut rng = Rng(777);
    let x = rng.vec(2 * 7 * 6);
    let mut cols = vec![f32::NAN; s.col_rows() * s.out_pixels()];
    im2col(&s, &x, &mut cols);
    // Adjoint identity: <im2col(x), r> == <x, col2im(r)>.
    let r = rng.vec(cols.len());
    let mut back = vec![0.0; x.len()];
    col2im(&s, &r, &mut back);
    let lhs: f64 = cols.iter().zip(&r).map(|(a, b)| (*a * *b) as f64).sum();
    let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (*a * *b) as f64).sum();
    assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    // Direct gather.
    let (oh, ow) = (s.out_h(), s.out_w());
    for ci in 0..2 {
        for ki in 0..2 {
            for kj in 0..3 {
                let row = (ci * 2 + ki) * 3 + kj;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let iy = (oy * 2 + ki * 2) as isize - 1;
                        let ix = (ox + kj) as isize - 2;
                        let want = if (0..7).contains(&iy) && (0..6).contains(&ix) {
                            x[ci * 42 + iy as usize * 6 + ix as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(cols[row * oh * ow + oy * ow + ox], want);
                    }
                }
            }
        }
    }
}

/// im2col against a direct gather on "same" shapes (stride 1, output as
/// wide as the input), which im2col copies a block of rows at a time:
/// 3×3 and 5×5 kernels, a dilated one, kernels wider than the input, and
/// rows of 1 and 8.
#[test]
fn im2col_of_same_shapes_is_the_gather() {
    for (input, weight, padding, dilation) in [
        ([1, 2, 8, 8], [1, 2, 3, 3], (1, 1), (1, 1)),
        ([1, 3, 5, 16], [1, 3, 5, 5], (2, 2), (1, 1)),
        ([1, 1, 9, 7], [1, 1, 3, 3], (2, 2), (2, 2)),
        ([1, 2, 4, 3], [1, 2, 3, 7], (1, 3), (1, 1)),
        ([1, 1, 6, 1], [1, 1, 3, 3], (1, 1), (1, 1)),
    ] {
        let c = Case {
            padding,
            dilation,
            ..case("same", input, weight)
        };
        let s = shape_of(&c);
        assert_eq!(s.out_w(), s.in_w, "{input:?}: not a same shape");
        let mut rng = Rng(99);
        let x = rng.vec(input.iter().product());
        let mut cols = vec![f32::NAN; s.col_rows() * s.out_pixels()];
        im2col(&s, &x, &mut cols);
        let (h, w, oh, ow) = (s.in_h as isize, s.in_w as isize, s.out_h(), s.out_w());
        let (kh, kw) = (weight[2], weight[3]);
        for ci in 0..input[1] {
            for ki in 0..kh {
                for kj in 0..kw {
                    let row = (ci * kh + ki) * kw + kj;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let iy = (oy + ki * dilation.0) as isize - padding.0 as isize;
                            let ix = (ox + kj * dilation.1) as isize - padding.1 as isize;
                            let want = if (0..h).contains(&iy) && (0..w).contains(&ix) {
                                x[ci * (h * w) as usize + (iy * w + ix) as usize]
                            } else {
                                0.0
                            };
                            let got = cols[row * oh * ow + oy * ow + ox];
                            assert_eq!(got, want, "{input:?} {weight:?} row {row} ({oy}, {ox})");
                        }
                    }
                }
            }
        }
    }
}

/// The weight and bias gradients are reductions over the batch; they must not
/// depend on how rayon splits the work.
#[test]
fn backward_is_bitwise_independent_of_thread_count() {
    let s = Conv2dShape::new(&[32, 6, 14, 14], &[16, 6, 5, 5], Conv2dOptions::default()).unwrap();
    assert!(
        s.batch > 2 * images_per_chunk(&s),
        "batch must span several chunks"
    );
    let mut rng = Rng(4242);
    let x = rng.vec(s.input_shape().iter().product());
    let w = rng.vec(s.weight_shape().iter().product());
    let dy = rng.vec(s.output_shape().iter().product());
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut dw = vec![0.0; w.len()];
            conv2d_backward_weight(&s, &x, &dy, &mut dw);
            let mut db = vec![0.0; s.out_channels];
            conv2d_backward_bias(&s, &dy, &mut db);
            let mut dx = vec![0.0; x.len()];
            conv2d_backward_input(&s, &w, &dy, &mut dx);
            let mut y = vec![0.0; dy.len()];
            conv2d_forward(&s, &x, &w, None, &mut y);
            [dw, db, dx, y].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        let many = run(threads);
        for (what, (a, b)) in ["dw", "db", "dx", "y"].iter().zip(one.iter().zip(&many)) {
            assert!(a == b, "{what} differs between 1 and {threads} threads");
        }
    }
}

/// Coactivation is the weight gradient of binarised activity, computed by the
/// same kernel with the threshold applied while gathering: it must equal
/// `conv2d_backward_weight` of `[x > θ]` and `[y > θ]` bit for bit, padded
/// taps counting as inactive even when θ < 0 (θ = −2 makes every real unit
/// active, so the counts are then the numbers of in-bounds taps).
#[test]
fn coactivation_is_the_weight_gradient_of_binarised_activity() {
    let binarise = |v: &[f32], t: f32| -> Vec<f32> {
        v.iter().map(|&a| if a > t { 1.0 } else { 0.0 }).collect()
    };
    let lenet = case("lenet2, several chunks", [5, 6, 14, 14], [16, 6, 5, 5]);
    let mut table = cases();
    table.push(lenet);
    for (n, c) in table.iter().enumerate() {
        let s = shape_of(c);
        let mut rng = Rng(777 + n as u32);
        let x = rng.vec(s.input_shape().iter().product());
        let y = rng.vec(s.output_shape().iter().product());
        for threshold in [0.0, 0.3, -0.5, -2.0] {
            let what = format!("{} at threshold {threshold}", c.name);
            let (ax, ay) = (binarise(&x, threshold), binarise(&y, threshold));
            let mut want = vec![f32::NAN; s.weight_shape().iter().product()];
            conv2d_backward_weight(&s, &ax, &ay, &mut want);
            let mut got = vec![f32::NAN; want.len()];
            conv2d_coactivation(&s, &x, &y, threshold, &mut got);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            assert!(bits(&got) == bits(&want), "{what}: {got:?} vs {want:?}");
            // And both are the direct count.
            let mut naive = vec![0.0; want.len()];
            conv2d_backward_weight_naive(&s, &ax, &ay, &mut naive);
            assert_eq!(got, naive, "{what}: against the direct count");
        }
    }
}

#[test]
#[should_panic(expected = "conv2d_forward: y should have")]
fn wrong_output_length_is_named() {
    let s = Conv2dShape::new(&[1, 1, 4, 4], &[1, 1, 3, 3], Conv2dOptions::default()).unwrap();
    let mut y = vec![0.0; 5];
    conv2d_forward(&s, &[0.0; 16], &[0.0; 9], None, &mut y);
}

/// The direct (wide-row) forward kernel, portable and AVX2 + FMA, against
/// the naive convolution on every stride-1 geometry it takes: odd channel
/// counts (blocks of 6 with a ragged last one), groups, 1x1 and full-plane
/// kernels, planes shorter than one 16-pixel block.
#[test]
fn direct_forward_kernels_match_naive() {
    let geometries: [([usize; 4], [usize; 4], usize); 8] = [
        ([2, 3, 32, 32], [6, 3, 5, 5], 1),
        ([3, 6, 14, 14], [16, 6, 5, 5], 1),
        ([1, 2, 5, 7], [7, 2, 3, 2], 1),
        ([2, 4, 6, 5], [6, 2, 2, 3], 2),
        ([1, 3, 4, 4], [13, 3, 1, 1], 1),
        ([1, 2, 3, 3], [5, 2, 3, 3], 1),
        ([2, 1, 2, 9], [1, 1, 2, 9], 1),
        // Wide rows of several 32-pixel blocks (the AVX-512 loop's).
        ([2, 8, 34, 34], [7, 8, 3, 3], 1),
    ];
    let kernels = tensor::isa::Isa::available();
    for (input, weight, groups) in geometries {
        let opts = Conv2dOptions {
            groups,
            ..Conv2dOptions::default()
        };
        let s = Conv2dShape::new(&input, &weight, opts).unwrap();
        let mut rng = Rng(7 + input.iter().sum::<usize>() as u32);
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let b = rng.vec(s.out_channels);
        let mut want = vec![0.0; s.output_shape().iter().product()];
        conv2d_forward_naive(&s, &x, &w, Some(&b), &mut want);
        let mut results = Vec::new();
        for &kernel in &kernels {
            let mut got = vec![f32::NAN; want.len()];
            conv2d_forward_direct(&s, &x, &w, Some(&b), &mut got, kernel);
            assert_close(&format!("{input:?} {weight:?} {kernel:?}"), &got, &want);
            results.push(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        // Where both run, the AVX-512 blocks give the AVX2 blocks' bits.
        if let [_, avx2, avx512] = &results[..] {
            assert!(
                avx2 == avx512,
                "{input:?} {weight:?}: AVX-512 and AVX2 differ"
            );
        }
        // The public forward takes the direct path for these geometries.
        let mut fast = vec![f32::NAN; want.len()];
        conv2d_forward(&s, &x, &w, Some(&b), &mut fast);
        let mut best = vec![0.0; want.len()];
        conv2d_forward_direct(&s, &x, &w, Some(&b), &mut best, tensor::isa::Isa::best());
        assert!(
            fast.iter()
                .zip(&best)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{input:?}: conv2d_forward is not the direct kernel"
        );
    }
}
