//! The sparse conv2d kernels against the dense naive convolution of the
//! masked weight, over a table of awkward geometries × masks (random at
//! densities 0 % to 100 %, and structured), with both the SIMD and the
//! portable inner loops; the autograd op against the dense op and finite
//! differences; thread-count independence; shape errors.

use std::rc::Rc;
use tensor::gradcheck::gradcheck;
use tensor::isa::Isa;
use tensor::ops::conv2d::*;
use tensor::ops::sparse_conv2d::*;
use tensor::{Rng as TRng, Tensor};

/// xorshift32, mapped to [-1, 1): reproducible data without dependencies.
struct Rng(u32);
impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    fn next(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
    /// Each entry active with probability `density`.
    fn mask(&mut self, n: usize, density: f64) -> Vec<bool> {
        (0..n)
            .map(|_| (self.next_u32() as f64 / u32::MAX as f64) < density)
            .collect()
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
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("plain 3x7x5", [1, 3, 7, 5], [4, 3, 3, 3]),
        case("batch 3, C != H != W", [3, 2, 9, 6], [5, 2, 3, 3]),
        case("non-square kernel 3x2", [2, 3, 7, 5], [5, 3, 3, 2]),
        case("non-square kernel 1x4", [2, 2, 5, 8], [3, 2, 1, 4]),
        Case {
            stride: (2, 2),
            ..case("stride 2", [2, 3, 9, 8], [4, 3, 3, 3])
        },
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
        Case {
            padding: (2, 2),
            ..case("padding 2, 5x5", [2, 2, 6, 7], [3, 2, 5, 5])
        },
        Case {
            dilation: (2, 2),
            ..case("dilation 2", [2, 3, 9, 8], [2, 3, 3, 2])
        },
        Case {
            dilation: (2, 1),
            padding: (1, 1),
            ..case("dilation (2,1) + padding", [2, 3, 9, 5], [2, 3, 3, 2])
        },
        Case {
            groups: 2,
            ..case("groups 2", [3, 4, 6, 7], [6, 2, 3, 3])
        },
        Case {
            groups: 3,
            ..case("groups 3", [1, 6, 5, 5], [3, 2, 2, 2])
        },
        Case {
            groups: 3,
            padding: (1, 0),
            ..case("groups 3 + padding", [2, 6, 6, 5], [6, 2, 3, 2])
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
        case("LeNet conv2 (batch 3)", [3, 6, 14, 14], [16, 6, 5, 5]),
        // Rows of whole vectors (8, 16, 32 floats), which the SIMD kernels
        // write straight into compact rows, strided and not.
        Case {
            padding: (1, 1),
            ..case("ResNet 3x3 on 8x8", [2, 4, 8, 8], [5, 4, 3, 3])
        },
        Case {
            padding: (1, 1),
            ..case("ResNet 3x3 on 16x16", [2, 3, 16, 16], [4, 3, 3, 3])
        },
        Case {
            padding: (1, 1),
            ..case("ResNet 3x3 on 32x32", [1, 2, 32, 32], [3, 2, 3, 3])
        },
        Case {
            padding: (1, 1),
            stride: (2, 2),
            ..case("ResNet 3x3 stride 2 on 32x32", [2, 3, 32, 32], [4, 3, 3, 3])
        },
        Case {
            padding: (1, 2),
            ..case("3x5 padding (1,2), 16 wide", [2, 2, 5, 16], [3, 2, 3, 5])
        },
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

/// `n_terms` is the length of the sums behind each value: rounding error
/// grows about as its square root.
fn assert_close(what: &str, got: &[f32], want: &[f32], n_terms: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = 1e-5 * (n_terms.max(1) as f32).sqrt();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = scale * w.abs().max(1.0);
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// Masks to try on a weight of shape [o, cg, kh, kw]: random at several
/// densities, and structured ones (k taps per kernel, whole filters, one tap
/// pattern for the whole layer).
fn masks(shape: [usize; 4], rng: &mut Rng) -> Vec<(String, Vec<bool>)> {
    let [o, cg, kh, kw] = shape;
    let taps = kh * kw;
    let n = o * cg * taps;
    let mut out = Vec::new();
    for d in [0.0, 0.04, 0.12, 0.5, 1.0] {
        out.push((format!("random {d}"), rng.mask(n, d)));
    }
    // Balanced: k of the taps of every (o, c) kernel, k = 12 % rounded up.
    let k = (taps * 12).div_ceil(100);
    let mut balanced = vec![false; n];
    for kernel in balanced.chunks_mut(taps) {
        let mut placed = 0;
        while placed < k {
            let t = rng.next_u32() as usize % taps;
            if !kernel[t] {
                kernel[t] = true;
                placed += 1;
            }
        }
    }
    out.push((format!("balanced {k} per kernel"), balanced));
    // Whole filters on and off: every other output channel.
    let filters: Vec<bool> = (0..n).map(|i| (i / (cg * taps)) % 2 == 0).collect();
    out.push(("every other filter".into(), filters));
    // One pattern for the whole layer: the kernel's corners and centre.
    let pattern = |ki: usize, kj: usize| {
        (ki == 0 || ki == kh - 1) && (kj == 0 || kj == kw - 1) || (ki == kh / 2 && kj == kw / 2)
    };
    let layer: Vec<bool> = (0..n).map(|i| pattern((i % taps) / kw, i % kw)).collect();
    out.push(("corners + centre everywhere".into(), layer));
    out
}

#[test]
fn kernels_match_the_masked_dense_oracle() {
    for (n, c) in cases().iter().enumerate() {
        let s = shape_of(c);
        let mut rng = Rng(0x9E37_79B9 ^ (n as u32 + 1));
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let bias = rng.vec(s.out_channels);
        let dy = rng.vec(s.output_shape().iter().product());
        for (mask_name, mask) in masks(s.weight_shape(), &mut rng) {
            let l = SparseLayout::new(s.weight_shape(), s.opts, &mask);
            assert_eq!(l.nnz(), mask.iter().filter(|&&m| m).count());
            assert_eq!(l.mask(), mask);
            let wm = l.masked_weight(&w);

            let mut y_ref = vec![0.0; dy.len()];
            conv2d_forward_naive(&s, &x, &wm, Some(&bias), &mut y_ref);
            let mut y_dense = vec![0.0; dy.len()];
            conv2d_forward(&s, &x, &wm, Some(&bias), &mut y_dense);
            let mut dx_ref = vec![0.0; x.len()];
            conv2d_backward_input_naive(&s, &wm, &dy, &mut dx_ref);
            let mut dw_ref = vec![0.0; w.len()];
            conv2d_backward_weight_naive(&s, &x, &dy, &mut dw_ref);

            for k in Isa::available() {
                let what = format!("{} / {mask_name} / {k:?}", c.name);
                // Outputs start as NaN to check that they are overwritten.
                let mut y = vec![f32::NAN; dy.len()];
                sparse_conv2d_forward(&s, &l, &x, &w, Some(&bias), &mut y, k);
                assert_close(&format!("{what}: forward"), &y, &y_ref, s.col_rows());
                assert_close(
                    &format!("{what}: forward vs dense"),
                    &y,
                    &y_dense,
                    s.col_rows(),
                );

                let mut y_nb = vec![f32::NAN; dy.len()];
                sparse_conv2d_forward(&s, &l, &x, &w, None, &mut y_nb, k);
                let p = s.out_pixels();
                for (i, (a, b)) in y_nb.iter().zip(&y).enumerate() {
                    let bo = bias[(i / p) % s.out_channels];
                    assert!(
                        (a + bo - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{what}: forward without bias [{i}]"
                    );
                }

                let mut dx = vec![f32::NAN; x.len()];
                sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut dx, k);
                let terms = s.out_channels * s.kernel_h * s.kernel_w;
                assert_close(&format!("{what}: backward_input"), &dx, &dx_ref, terms);

                let mut dw = vec![f32::NAN; w.len()];
                sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut dw, k);
                for (i, (&g, &m)) in dw.iter().zip(&mask).enumerate() {
                    if m {
                        let tol = 1e-5 * ((s.batch * p) as f32).sqrt() * dw_ref[i].abs().max(1.0);
                        assert!(
                            (g - dw_ref[i]).abs() <= tol,
                            "{what}: backward_weight[{i}]: got {g}, want {}",
                            dw_ref[i]
                        );
                    } else {
                        assert!(
                            g.to_bits() == 0,
                            "{what}: backward_weight[{i}] is {g} at an inactive tap"
                        );
                    }
                }
            }
        }
    }
}

/// Entries of w outside the mask are ignored, whatever they hold.
#[test]
fn inactive_weights_are_ignored() {
    let c = Case {
        padding: (1, 1),
        ..case("pad", [2, 3, 8, 7], [4, 3, 3, 3])
    };
    let s = shape_of(&c);
    let mut rng = Rng(31);
    let x = rng.vec(s.input_shape().iter().product());
    let w = rng.vec(s.weight_shape().iter().product());
    let dy = rng.vec(s.output_shape().iter().product());
    let mask = rng.mask(w.len(), 0.3);
    let l = SparseLayout::new(s.weight_shape(), s.opts, &mask);
    let garbage: Vec<f32> = w
        .iter()
        .zip(&mask)
        .map(|(&v, &m)| if m { v } else { 1e6 })
        .collect();
    for k in Isa::available() {
        let (mut y1, mut y2) = (vec![0.0; dy.len()], vec![0.0; dy.len()]);
        sparse_conv2d_forward(&s, &l, &x, &w, None, &mut y1, k);
        sparse_conv2d_forward(&s, &l, &x, &garbage, None, &mut y2, k);
        assert_eq!(y1, y2);
        let (mut d1, mut d2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut d1, k);
        sparse_conv2d_backward_input(&s, &l, &garbage, &dy, &mut d2, k);
        assert_eq!(d1, d2);
    }
}

#[test]
fn empty_mask_gives_bias_and_zero_gradients() {
    let s = shape_of(&case("empty", [2, 3, 8, 8], [4, 3, 5, 5]));
    let l = SparseLayout::new(s.weight_shape(), s.opts, &[false; 4 * 3 * 25]);
    assert_eq!((l.nnz(), l.density()), (0, 0.0));
    let mut rng = Rng(5);
    let x = rng.vec(s.input_shape().iter().product());
    let w = rng.vec(s.weight_shape().iter().product());
    let dy = rng.vec(s.output_shape().iter().product());
    let bias = [1.0, -2.0, 3.0, 0.5];
    let mut y = vec![f32::NAN; dy.len()];
    sparse_conv2d_forward(&s, &l, &x, &w, Some(&bias), &mut y, Isa::best());
    let p = s.out_pixels();
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, bias[(i / p) % 4]);
    }
    let mut dx = vec![f32::NAN; x.len()];
    sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut dx, Isa::best());
    assert!(dx.iter().all(|v| v.to_bits() == 0));
    let mut dw = vec![f32::NAN; w.len()];
    sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut dw, Isa::best());
    assert!(dw.iter().all(|v| v.to_bits() == 0));
}

/// The autograd op gives the dense op's output and gradients (dw masked).
#[test]
fn op_matches_dense_conv2d_of_the_masked_weight() {
    for c in [
        case("lenet2", [3, 6, 14, 14], [16, 6, 5, 5]),
        Case {
            stride: (2, 1),
            padding: (1, 2),
            groups: 2,
            ..case("mixed", [2, 4, 7, 9], [6, 2, 3, 3])
        },
    ] {
        let s = shape_of(&c);
        let mut rng = Rng(99);
        let mask = rng.mask(s.weight_shape().iter().product(), 0.12);
        let l = Rc::new(SparseLayout::new(s.weight_shape(), s.opts, &mask));
        let x =
            Tensor::from_vec(rng.vec(s.input_shape().iter().product()), &c.input).requires_grad();
        let w =
            Tensor::from_vec(rng.vec(s.weight_shape().iter().product()), &c.weight).requires_grad();
        let b = Tensor::from_vec(rng.vec(s.out_channels), &[s.out_channels]).requires_grad();
        let r = Tensor::from_vec(
            rng.vec(s.output_shape().iter().product()),
            &s.output_shape(),
        );

        conv2d_sparse(&x, &w, Some(&b), &l).mul(&r).sum().backward();
        let (gx, gw, gb) = (x.grad().unwrap(), w.grad().unwrap(), b.grad().unwrap());
        let y = tensor::no_grad(|| conv2d_sparse(&x, &w, Some(&b), &l)).to_vec();

        let (x2, b2) = (x.detach().requires_grad(), b.detach().requires_grad());
        let w2 = Tensor::from_vec(l.masked_weight(&w.to_vec()), &c.weight).requires_grad();
        let y2 = x2.conv2d(&w2, Some(&b2), s.opts);
        let y2v = y2.to_vec();
        y2.mul(&r).sum().backward();
        let terms = s.batch * s.out_pixels();
        assert_close(&format!("{}: y", c.name), &y, &y2v, s.col_rows());
        assert_close(&format!("{}: dx", c.name), &gx, &x2.grad().unwrap(), terms);
        assert_close(&format!("{}: db", c.name), &gb, &b2.grad().unwrap(), terms);
        let gw2: Vec<f32> = w2
            .grad()
            .unwrap()
            .iter()
            .zip(&mask)
            .map(|(&g, &m)| if m { g } else { 0.0 })
            .collect();
        assert_close(&format!("{}: dw", c.name), &gw, &gw2, terms);
        for (g, &m) in gw.iter().zip(&mask) {
            assert!(
                m || g.to_bits() == 0,
                "{}: dw nonzero at inactive tap",
                c.name
            );
        }
    }
}

#[test]
fn op_passes_gradcheck() {
    for (c, density) in [
        (case("plain", [2, 3, 6, 5], [4, 3, 3, 3]), 0.4),
        (
            Case {
                stride: (2, 1),
                padding: (1, 1),
                dilation: (1, 2),
                groups: 2,
                ..case("mixed", [2, 4, 7, 8], [4, 2, 3, 2])
            },
            0.5,
        ),
        (
            Case {
                padding: (2, 1),
                ..case("padded 5x5", [1, 2, 6, 6], [3, 2, 5, 5])
            },
            0.12,
        ),
    ] {
        let s = shape_of(&c);
        let mut rng = Rng(2024);
        let mask = rng.mask(s.weight_shape().iter().product(), density);
        let l = Rc::new(SparseLayout::new(s.weight_shape(), s.opts, &mask));
        let mut trng = TRng::seed(7);
        let x = Tensor::uniform(&c.input, -1.0, 1.0, &mut trng).requires_grad();
        let w = Tensor::uniform(&c.weight, -1.0, 1.0, &mut trng).requires_grad();
        let b = Tensor::uniform(&[s.out_channels], -1.0, 1.0, &mut trng).requires_grad();
        let f = |t: &[Tensor]| conv2d_sparse(&t[0], &t[1], Some(&t[2]), &l);
        // Relative error, as in tests/autograd.rs: 1% off would fail.
        if let Err(e) = gradcheck(&f, &[x, w, b], 1e-2, 3e-3) {
            panic!("{}: {e}", c.name);
        }
    }
}

/// Forward, input and weight gradients must not depend on how rayon splits
/// the work: compared bit for bit across 1, 2 and 3 threads, on shapes big
/// enough to run in parallel (stride 1 with and without padding, and the
/// strided path).
#[test]
fn kernels_are_bitwise_independent_of_thread_count() {
    for c in [
        case("lenet2 batch 32", [32, 6, 14, 14], [16, 6, 5, 5]),
        Case {
            padding: (2, 2),
            ..case("lenet1 padded batch 8", [8, 3, 32, 32], [6, 3, 5, 5])
        },
        Case {
            stride: (2, 2),
            ..case("strided batch 16", [16, 6, 30, 30], [16, 6, 5, 5])
        },
    ] {
        let s = shape_of(&c);
        let mut rng = Rng(4242);
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let dy = rng.vec(s.output_shape().iter().product());
        let bias = rng.vec(s.out_channels);
        let mask = rng.mask(w.len(), 0.5);
        let l = SparseLayout::new(s.weight_shape(), s.opts, &mask);
        assert!(
            2 * s.batch * l.nnz() * s.out_pixels() >= SPARSE_PARALLEL_MIN_FLOPS,
            "{}: too small to run in parallel",
            c.name
        );
        for k in Isa::available() {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut y = vec![0.0; dy.len()];
                    sparse_conv2d_forward(&s, &l, &x, &w, Some(&bias), &mut y, k);
                    let mut dx = vec![0.0; x.len()];
                    sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut dx, k);
                    let mut dw = vec![0.0; w.len()];
                    sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut dw, k);
                    [y, dx, dw].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                let many = run(threads);
                for (what, (a, b)) in ["y", "dx", "dw"].iter().zip(one.iter().zip(&many)) {
                    assert!(
                        a == b,
                        "{} / {k:?}: {what} differs between 1 and {threads} threads",
                        c.name
                    );
                }
            }
        }
    }
}

/// One layout serves several input sizes (offsets are cached per size).
#[test]
fn one_layout_serves_several_input_sizes() {
    let mut rng = Rng(17);
    let opts = Conv2dOptions {
        padding: (1, 1),
        ..Conv2dOptions::default()
    };
    let mask = rng.mask(4 * 2 * 9, 0.3);
    let l = SparseLayout::new([4, 2, 3, 3], opts, &mask);
    for (h, w) in [(5, 6), (9, 4), (5, 6), (12, 12)] {
        let s = Conv2dShape::new(&[2, 2, h, w], &[4, 2, 3, 3], opts).unwrap();
        let x = rng.vec(s.input_shape().iter().product());
        let wt = rng.vec(s.weight_shape().iter().product());
        let mut y = vec![0.0; s.output_shape().iter().product()];
        sparse_conv2d_forward(&s, &l, &x, &wt, None, &mut y, Isa::best());
        let mut y_ref = vec![0.0; y.len()];
        conv2d_forward_naive(&s, &x, &l.masked_weight(&wt), None, &mut y_ref);
        assert_close(&format!("{h}x{w}"), &y, &y_ref, 18);
    }
}

#[test]
#[should_panic(
    expected = "conv2d_sparse: weight [4, 3, 3, 3] but the layout was built for [4, 3, 5, 5]"
)]
fn op_names_a_weight_that_does_not_fit_the_layout() {
    let l = Rc::new(SparseLayout::new(
        [4, 3, 5, 5],
        Conv2dOptions::default(),
        &[true; 300],
    ));
    let x = Tensor::zeros(&[1, 3, 8, 8]);
    let w = Tensor::zeros(&[4, 3, 3, 3]);
    conv2d_sparse(&x, &w, None, &l);
}

#[test]
#[should_panic(expected = "conv2d_sparse: conv2d: with groups=1")]
fn op_names_an_input_that_does_not_fit() {
    let l = Rc::new(SparseLayout::new(
        [4, 3, 3, 3],
        Conv2dOptions::default(),
        &[true; 108],
    ));
    conv2d_sparse(
        &Tensor::zeros(&[1, 2, 8, 8]),
        &Tensor::zeros(&[4, 3, 3, 3]),
        None,
        &l,
    );
}

#[test]
#[should_panic(expected = "SparseLayout::new: mask has 10 entries for weight shape [4, 3, 3, 3]")]
fn layout_names_a_mask_of_the_wrong_length() {
    SparseLayout::new([4, 3, 3, 3], Conv2dOptions::default(), &[true; 10]);
}

#[test]
#[should_panic(expected = "sparse_conv2d_forward: layout built for weight")]
fn kernels_name_a_layout_for_other_options() {
    let s = Conv2dShape::new(&[1, 1, 4, 4], &[1, 1, 3, 3], Conv2dOptions::default()).unwrap();
    let opts = Conv2dOptions {
        stride: (2, 2),
        ..Conv2dOptions::default()
    };
    let l = SparseLayout::new([1, 1, 3, 3], opts, &[true; 9]);
    let mut y = vec![0.0; 4];
    sparse_conv2d_forward(&s, &l, &[0.0; 16], &[0.0; 9], None, &mut y, Isa::best());
}

/// The AVX-512 loops run each output's FMAs in the same order as the AVX2
/// loops: forward, input gradient and weight gradient agree bit for bit, so
/// results do not depend on which of the two a CPU has. Only where this
/// process may run both (a CPU with AVX-512, `HEBB_ISA` not capping it);
/// elsewhere the test says it skipped.
#[test]
fn avx512_and_avx2_loops_agree_bitwise() {
    if !Isa::available().contains(&Isa::Avx512) {
        eprintln!("skipped: AVX-512 is not available here ({:?})", Isa::best());
        return;
    }
    for (name, input, weight) in [
        ("LeNet conv1", [3, 3, 32, 32], [6, 3, 5, 5]),
        ("LeNet conv2", [3, 6, 14, 14], [16, 6, 5, 5]),
        ("narrow plane", [2, 2, 9, 11], [3, 2, 3, 3]),
    ] {
        let c = case(name, input, weight);
        let s = shape_of(&c);
        let mut rng = Rng(99);
        let mask = rng.mask(s.weight_shape().iter().product(), 0.12);
        let l = SparseLayout::new(s.weight_shape(), s.opts, &mask);
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let dy = rng.vec(s.output_shape().iter().product());
        let run = |k: Isa| {
            let mut y = vec![0.0; dy.len()];
            sparse_conv2d_forward(&s, &l, &x, &w, None, &mut y, k);
            let mut dx = vec![0.0; x.len()];
            sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut dx, k);
            let mut dw = vec![0.0; w.len()];
            sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut dw, k);
            (y, dx, dw)
        };
        let (best, avx2) = (run(Isa::Avx512), run(Isa::Avx2));
        assert_bitwise(&format!("{name}: forward"), &best.0, &avx2.0);
        assert_bitwise(&format!("{name}: input gradient"), &best.1, &avx2.1);
        assert_bitwise(&format!("{name}: weight gradient"), &best.2, &avx2.2);
    }
}

// ---------------------------------------------------------------------------
// The fused sparse conv2d → relu → max_pool2d
// ---------------------------------------------------------------------------

/// The fused op's geometries at batch b: the two LeNet blocks, a strided
/// conv with overlapping 3x3 pool windows, and a padded, grouped conv with a
/// non-square pool.
fn fused_cases(b: usize) -> Vec<(Case, PoolOptions)> {
    let pool = |k, s| PoolOptions {
        kernel: k,
        stride: s,
    };
    vec![
        (
            case("LeNet conv1", [b, 3, 32, 32], [6, 3, 5, 5]),
            pool((2, 2), (2, 2)),
        ),
        (
            case("LeNet conv2", [b, 6, 14, 14], [16, 6, 5, 5]),
            pool((2, 2), (2, 2)),
        ),
        (
            Case {
                stride: (2, 2),
                ..case("stride 2, overlapping pool", [b, 3, 17, 15], [5, 3, 3, 3])
            },
            pool((3, 3), (2, 2)),
        ),
        (
            Case {
                padding: (2, 1),
                groups: 2,
                ..case("padding (2,1), groups 2", [b, 4, 9, 11], [6, 2, 3, 3])
            },
            pool((3, 2), (2, 1)),
        ),
        (
            // Stride 1 with a 2x2 pool takes the wide relu-pool path; here
            // with padding, dilation, groups and odd output sides (the last
            // row and column are not pooled).
            Case {
                padding: (1, 2),
                dilation: (2, 1),
                groups: 2,
                ..case(
                    "wide pool: padding, dilation, odd sides",
                    [b, 4, 9, 10],
                    [6, 2, 3, 3],
                )
            },
            pool((2, 2), (2, 2)),
        ),
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The fused op's bias gradient: for stride 1 it sums each plane window by
/// window (the values that flow), the separate ops sum the whole plane in
/// lanes, so the two agree to rounding; otherwise bit for bit.
fn assert_db(what: &str, s: &Conv2dShape, got: &[f32], want: &[f32]) {
    if s.opts.stride == (1, 1) {
        assert_close(what, got, want, s.batch * s.out_pixels());
    } else {
        assert_bitwise(what, got, want);
    }
}

fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

/// The fused op gives conv2d_sparse → relu → max_pool2d's values and the
/// gradients of x and w bit for bit, and the bias gradient bit for bit or,
/// for stride 1, to rounding ([`assert_db`]), under a random upstream
/// gradient; with `BiasSum::Planes`, the bias gradient bit for bit too.
#[test]
fn fused_op_matches_the_separate_ops() {
    for batch in [1, 3, 8] {
        for (c, pool) in fused_cases(batch) {
            let s = shape_of(&c);
            for density in [0.12, 0.5] {
                let name = format!("{} b{batch} {density}", c.name);
                let mut rng = Rng(1234 + batch as u32);
                let mask = rng.mask(s.weight_shape().iter().product(), density);
                let l = Rc::new(SparseLayout::new(s.weight_shape(), s.opts, &mask));
                let x = Tensor::from_vec(rng.vec(s.input_shape().iter().product()), &c.input);
                let w = Tensor::from_vec(rng.vec(s.weight_shape().iter().product()), &c.weight);
                let b = Tensor::from_vec(rng.vec(s.out_channels), &[s.out_channels]);
                let out_shape = pool.output_shape(&s);
                let r = Tensor::from_vec(rng.vec(out_shape.iter().product()), &out_shape);

                // Returns the output and the gradients of x, w and b: the
                // fused op with either bias sum, or the three ops.
                let run = |fused: Option<BiasSum>| {
                    let (x, w, b) = (
                        x.detach().requires_grad(),
                        w.detach().requires_grad(),
                        b.detach().requires_grad(),
                    );
                    let y = match fused {
                        Some(sum) => {
                            conv2d_sparse_relu_max_pool2d_with(&x, &w, Some(&b), &l, pool, sum)
                        }
                        None => conv2d_sparse(&x, &w, Some(&b), &l)
                            .relu()
                            .max_pool2d(pool.kernel, pool.stride),
                    };
                    assert_eq!(y.shape(), out_shape, "{name}: output shape");
                    let yv = y.to_vec();
                    y.mul(&r).sum().backward();
                    [yv, x.grad().unwrap(), w.grad().unwrap(), b.grad().unwrap()]
                };
                let (fused, separate) = (run(Some(BiasSum::Windows)), run(None));
                for (what, (f, sep)) in ["y", "dx", "dw"].iter().zip(fused.iter().zip(&separate)) {
                    assert_bitwise(&format!("{name}: {what}"), f, sep);
                }
                assert_db(&format!("{name}: db"), &s, &fused[3], &separate[3]);
                // Summed over the planes, the bias gradient too is bitwise.
                let planes = run(Some(BiasSum::Planes));
                for (what, (f, sep)) in ["y", "dx", "dw", "db"]
                    .iter()
                    .zip(planes.iter().zip(&separate))
                {
                    assert_bitwise(&format!("{name}: {what} (plane sums)"), f, sep);
                }
                // Also when only the bias wants a gradient (its own path).
                let bias_only = |fused: Option<BiasSum>| {
                    let b = b.detach().requires_grad();
                    let (x, w) = (x.detach(), w.detach());
                    let y = match fused {
                        Some(sum) => {
                            conv2d_sparse_relu_max_pool2d_with(&x, &w, Some(&b), &l, pool, sum)
                        }
                        None => conv2d_sparse(&x, &w, Some(&b), &l)
                            .relu()
                            .max_pool2d(pool.kernel, pool.stride),
                    };
                    y.mul(&r).sum().backward();
                    b.grad().unwrap()
                };
                assert_bitwise(
                    &format!("{name}: db alone (plane sums)"),
                    &bias_only(Some(BiasSum::Planes)),
                    &bias_only(None),
                );
                // The pooled values are not all zero, and some gradient flows.
                assert!(fused[0].iter().any(|&v| v > 0.0), "{name}: all pooled ≤ 0");
                assert!(fused[2].iter().any(|&v| v != 0.0), "{name}: dw all zero");
                for (g, &m) in fused[2].iter().zip(&mask) {
                    assert!(m || g.to_bits() == 0, "{name}: dw nonzero at inactive tap");
                }
            }
        }
    }
}

/// The slice kernels with both inner loops: forward against the separate
/// slice kernels (bitwise, argmaxes included) and the masked dense oracle
/// (values, to rounding); backward against the separate kernels, bitwise,
/// with each gradient optional.
#[test]
fn fused_kernels_match_the_separate_kernels_and_the_oracle() {
    for (c, pool) in fused_cases(3) {
        let s = shape_of(&c);
        let mut rng = Rng(77);
        let mask = rng.mask(s.weight_shape().iter().product(), 0.3);
        let l = SparseLayout::new(s.weight_shape(), s.opts, &mask);
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let bias = rng.vec(s.out_channels);
        let (oh, ow) = (s.out_h(), s.out_w());
        let n_out: usize = pool.output_shape(&s).iter().product();
        let dpooled = rng.vec(n_out);
        let (want_pooled, _) = sparse_conv2d_relu_pool_naive(&s, &l, pool, &x, &w, Some(&bias));
        for k in Isa::available() {
            let name = format!("{} / {k:?}", c.name);
            // Separate: conv, relu, pool; pool's scatter, relu's mask, conv's backward.
            let mut y = vec![0.0; s.output_shape().iter().product()];
            sparse_conv2d_forward(&s, &l, &x, &w, Some(&bias), &mut y, k);
            let r: Vec<f32> = y
                .iter()
                .map(|&v| tensor::ops::elementwise::relu(v))
                .collect();
            let (mut sep_pooled, mut sep_arg) = (vec![0.0; n_out], vec![0u32; n_out]);
            tensor::ops::pool::max_pool2d_forward(
                &r,
                (oh, ow),
                pool.kernel,
                pool.stride,
                &mut sep_pooled,
                &mut sep_arg,
            );
            let mut dr = vec![0.0; y.len()];
            tensor::ops::pool::max_pool2d_backward(
                &dpooled,
                &sep_arg,
                oh * ow,
                pool.output_shape(&s)[2] * pool.output_shape(&s)[3],
                &mut dr,
            );
            let dy: Vec<f32> = dr
                .iter()
                .zip(&y)
                .map(|(&d, &v)| tensor::ops::elementwise::relu_grad(v, d))
                .collect();
            let mut sep_dw = vec![0.0; w.len()];
            sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut sep_dw, k);
            let mut sep_db = vec![0.0; s.out_channels];
            conv2d_backward_bias(&s, &dy, &mut sep_db);
            let mut sep_dx = vec![0.0; x.len()];
            sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut sep_dx, k);

            let (mut pooled, mut arg) = (vec![f32::NAN; n_out], vec![u32::MAX; n_out]);
            sparse_conv2d_relu_pool_forward(
                &s,
                &l,
                pool,
                &x,
                &w,
                Some(&bias),
                &mut pooled,
                Some(&mut arg),
                k,
            );
            assert_bitwise(&format!("{name}: pooled"), &pooled, &sep_pooled);
            assert_eq!(arg, sep_arg, "{name}: argmaxes");
            // Inference: no argmaxes asked for, the same values.
            let mut pooled_only = vec![f32::NAN; n_out];
            sparse_conv2d_relu_pool_forward(
                &s,
                &l,
                pool,
                &x,
                &w,
                Some(&bias),
                &mut pooled_only,
                None,
                k,
            );
            assert_bitwise(
                &format!("{name}: pooled, no argmaxes"),
                &pooled_only,
                &pooled,
            );
            assert_close(
                &format!("{name}: pooled vs oracle"),
                &pooled,
                &want_pooled,
                s.col_rows(),
            );

            let (mut dw, mut db, mut dx) = (
                vec![f32::NAN; w.len()],
                vec![f32::NAN; s.out_channels],
                vec![f32::NAN; x.len()],
            );
            sparse_conv2d_relu_pool_backward(
                &s,
                &l,
                pool,
                &x,
                &w,
                &pooled,
                &arg,
                &dpooled,
                Some(&mut dw),
                Some(&mut db),
                Some(&mut dx),
                k,
            );
            assert_bitwise(&format!("{name}: dw"), &dw, &sep_dw);
            assert_db(&format!("{name}: db"), &s, &db, &sep_db);
            assert_bitwise(&format!("{name}: dx"), &dx, &sep_dx);
            // Only dx wanted.
            let mut dx_only = vec![f32::NAN; x.len()];
            sparse_conv2d_relu_pool_backward(
                &s,
                &l,
                pool,
                &x,
                &w,
                &pooled,
                &arg,
                &dpooled,
                None,
                None,
                Some(&mut dx_only),
                k,
            );
            assert_bitwise(&format!("{name}: dx alone"), &dx_only, &sep_dx);
            // Only db wanted: the same sums as alongside dw.
            let mut db_only = vec![f32::NAN; s.out_channels];
            sparse_conv2d_relu_pool_backward(
                &s,
                &l,
                pool,
                &x,
                &w,
                &pooled,
                &arg,
                &dpooled,
                None,
                Some(&mut db_only),
                None,
                k,
            );
            assert_bitwise(&format!("{name}: db alone"), &db_only, &db);
        }
    }
}

/// NaN goes through the fused op as through relu (relu(NaN) = NaN) and
/// max_pool2d (a NaN wins its window): same values, argmaxes and gradients.
#[test]
fn fused_op_propagates_nan_like_the_separate_ops() {
    let (c, pool) = fused_cases(2).swap_remove(1); // LeNet conv2
    let s = shape_of(&c);
    let mut rng = Rng(5);
    let mask = rng.mask(s.weight_shape().iter().product(), 0.12);
    let l = Rc::new(SparseLayout::new(s.weight_shape(), s.opts, &mask));
    let mut xv = rng.vec(s.input_shape().iter().product());
    xv[3 * 14 + 5] = f32::NAN; // image 0, channel 0
    let x = Tensor::from_vec(xv, &c.input);
    let w = Tensor::from_vec(rng.vec(s.weight_shape().iter().product()), &c.weight).requires_grad();
    // One graph at a time: backward consumes the tape.
    let fused = conv2d_sparse_relu_max_pool2d(&x, &w, None, &l, pool);
    let fv = fused.to_vec();
    fused.sum().backward();
    let gf = w.grad().unwrap();
    w.zero_grad();
    let separate = conv2d_sparse(&x, &w, None, &l)
        .relu()
        .max_pool2d(pool.kernel, pool.stride);
    let sv = separate.to_vec();
    separate.sum().backward();
    assert!(fv.iter().any(|v| v.is_nan()), "no NaN came through");
    assert!(fv.iter().any(|v| !v.is_nan()), "NaN everywhere");
    assert_eq!(bits(&fv), bits(&sv));
    assert!(gf.iter().any(|v| v.is_nan()), "no NaN in dw");
    assert_eq!(bits(&gf), bits(&w.grad().unwrap()));
}

/// Forward and all three gradients of the fused kernels are bit for bit the
/// same on 1, 2 and 3 threads, on shapes big enough to run in parallel.
#[test]
fn fused_kernels_are_bitwise_independent_of_thread_count() {
    let pool2 = PoolOptions {
        kernel: (2, 2),
        stride: (2, 2),
    };
    for (c, pool) in [
        (
            case("lenet2 batch 32", [32, 6, 14, 14], [16, 6, 5, 5]),
            pool2,
        ),
        (
            Case {
                padding: (2, 2),
                ..case("lenet1 padded batch 8", [8, 3, 32, 32], [6, 3, 5, 5])
            },
            pool2,
        ),
        (
            Case {
                stride: (2, 2),
                ..case("strided batch 16", [16, 6, 30, 30], [16, 6, 5, 5])
            },
            PoolOptions {
                kernel: (3, 3),
                stride: (2, 2),
            },
        ),
    ] {
        let s = shape_of(&c);
        let mut rng = Rng(4343);
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let bias = rng.vec(s.out_channels);
        let n_out: usize = pool.output_shape(&s).iter().product();
        let dpooled = rng.vec(n_out);
        let mask = rng.mask(w.len(), 0.5);
        let l = SparseLayout::new(s.weight_shape(), s.opts, &mask);
        assert!(
            2 * s.batch * l.nnz() * s.out_pixels() >= SPARSE_PARALLEL_MIN_FLOPS,
            "{}: too small to run in parallel",
            c.name
        );
        let k = Isa::best();
        let run = |threads: usize| {
            let tp = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            tp.install(|| {
                let (mut pooled, mut arg) = (vec![0.0; n_out], vec![0u32; n_out]);
                sparse_conv2d_relu_pool_forward(
                    &s,
                    &l,
                    pool,
                    &x,
                    &w,
                    Some(&bias),
                    &mut pooled,
                    Some(&mut arg),
                    k,
                );
                let (mut dw, mut db, mut dx) = (
                    vec![0.0; w.len()],
                    vec![0.0; s.out_channels],
                    vec![0.0; x.len()],
                );
                sparse_conv2d_relu_pool_backward(
                    &s,
                    &l,
                    pool,
                    &x,
                    &w,
                    &pooled,
                    &arg,
                    &dpooled,
                    Some(&mut dw),
                    Some(&mut db),
                    Some(&mut dx),
                    k,
                );
                (bits(&pooled), arg, [bits(&dw), bits(&db), bits(&dx)])
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            let many = run(threads);
            assert!(
                one.0 == many.0,
                "{}: pooled differs, 1 vs {threads} threads",
                c.name
            );
            assert!(
                one.1 == many.1,
                "{}: arg differs, 1 vs {threads} threads",
                c.name
            );
            for (what, (a, b)) in ["dw", "db", "dx"].iter().zip(one.2.iter().zip(&many.2)) {
                assert!(a == b, "{}: {what} differs, 1 vs {threads} threads", c.name);
            }
        }
    }
}

/// Which layers `--conv-path auto` sends to the sparse kernels: narrow ones
/// at any density, the others below the crossover.
#[test]
fn sparse_pays_for_narrow_layers_always_and_others_below_the_crossover() {
    let plain = Conv2dOptions::default();
    let pad1 = Conv2dOptions {
        padding: (1, 1),
        ..plain
    };
    let stride2 = Conv2dOptions {
        stride: (2, 2),
        ..pad1
    };
    // The LeNet's first conv (6 output channels), even dense.
    assert!(sparse_pays([6, 3, 5, 5], plain, 1.0));
    // Its second (16 output channels): at 12 %, not at 100 %.
    assert!(sparse_pays([16, 6, 5, 5], plain, 0.12));
    assert!(!sparse_pays([16, 6, 5, 5], plain, 1.0));
    let c = sparse_crossover_density(16 * 6 * 5 * 5, false);
    assert!((0.6..1.0).contains(&c), "{c}");
    assert!(!sparse_pays([16, 6, 5, 5], plain, c));
    // ResNet-20's layers: sparse at every ERK density of --density 0.1,
    // dense at 60 % for the 64-channel layer, whose break-even is lower,
    // and at 50 % for the strided 32→64 one, lower still.
    for (shape, opts, erk) in [
        ([16, 16, 3, 3], pad1, 0.314),
        ([32, 16, 3, 3], stride2, 0.223),
        ([32, 32, 3, 3], pad1, 0.145),
        ([64, 32, 3, 3], stride2, 0.105),
        ([64, 64, 3, 3], pad1, 0.069),
    ] {
        assert!(sparse_pays(shape, opts, erk), "{shape:?}");
    }
    assert!(!sparse_pays([64, 64, 3, 3], pad1, 0.6));
    assert!(!sparse_pays([64, 32, 3, 3], stride2, 0.5));
    assert!(sparse_pays([16, 16, 3, 3], pad1, 0.6));
    // Bigger layers cross lower, and strided ones lower than unstrided.
    assert!(sparse_crossover_density(36_864, false) < sparse_crossover_density(2_304, false));
    assert!(sparse_crossover_density(4_608, true) < sparse_crossover_density(4_608, false));
    // Output channels count per group.
    let groups2 = Conv2dOptions { groups: 2, ..plain };
    assert!(sparse_pays([16, 3, 5, 5], groups2, 1.0));
}

/// The ResNets' layer shapes (3×3, padding 1, stride 1 and 2, 16 to 64
/// channels, maps of 32×32 down to 8×8, a small batch) with random masks
/// from 2 % to 100 %: the sparse kernels agree with the dense kernels on the
/// masked weight within 1e-5 relative (of each output's scale), for the
/// forward pass, the input gradient and the weight gradient at the active
/// taps.
#[test]
fn resnet_shapes_agree_with_the_dense_kernels() {
    let shapes: [([usize; 4], [usize; 4], usize); 5] = [
        ([2, 16, 32, 32], [16, 16, 3, 3], 1),
        ([2, 16, 32, 32], [32, 16, 3, 3], 2),
        ([2, 32, 16, 16], [32, 32, 3, 3], 1),
        ([2, 32, 16, 16], [64, 32, 3, 3], 2),
        ([2, 64, 8, 8], [64, 64, 3, 3], 1),
    ];
    let mut rng = Rng(2024);
    for (input, weight, stride) in shapes {
        let opts = Conv2dOptions {
            stride: (stride, stride),
            padding: (1, 1),
            ..Conv2dOptions::default()
        };
        let s = Conv2dShape::new(&input, &weight, opts).unwrap();
        let x = rng.vec(s.input_shape().iter().product());
        let w = rng.vec(s.weight_shape().iter().product());
        let dy = rng.vec(s.output_shape().iter().product());
        for density in [0.02, 0.1, 0.3, 0.5, 1.0] {
            let mask = rng.mask(w.len(), density);
            let l = SparseLayout::new(s.weight_shape(), opts, &mask);
            let wm = l.masked_weight(&w);
            let what = format!("{input:?} {weight:?} stride {stride} at {density}");
            let (mut y, mut y_dense) = (vec![0.0; dy.len()], vec![0.0; dy.len()]);
            sparse_conv2d_forward(&s, &l, &x, &w, None, &mut y, Isa::best());
            conv2d_forward(&s, &x, &wm, None, &mut y_dense);
            close_rel(&format!("{what}: forward"), &y, &y_dense);
            let (mut dx, mut dx_dense) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut dx, Isa::best());
            conv2d_backward_input(&s, &wm, &dy, &mut dx_dense);
            close_rel(&format!("{what}: input gradient"), &dx, &dx_dense);
            let (mut dw, mut dw_dense) = (vec![0.0; w.len()], vec![0.0; w.len()]);
            sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut dw, Isa::best());
            conv2d_backward_weight(&s, &x, &dy, &mut dw_dense);
            let active: Vec<f32> = dw_dense
                .iter()
                .zip(&mask)
                .map(|(&g, &m)| if m { g } else { 0.0 })
                .collect();
            close_rel(&format!("{what}: weight gradient"), &dw, &active);
        }
    }
}

/// Every value within 1e-5 of the largest magnitude of `want` (both sides
/// sum the same products in different orders).
fn close_rel(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}
