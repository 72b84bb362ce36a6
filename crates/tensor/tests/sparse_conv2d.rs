//! The sparse conv2d kernels against the dense naive convolution of the
//! masked weight, over a table of awkward geometries × masks (random at
//! densities 0 % to 100 %, and structured), with both the SIMD and the
//! portable inner loops; the autograd op against the dense op and finite
//! differences; thread-count independence; shape errors. The fused
//! convolution + ReLU + max-pool is tested in `sparse_conv2d_fused.rs`.

mod common;

use std::rc::Rc;
use tensor::gradcheck::gradcheck;
use tensor::isa::Isa;
use tensor::ops::conv2d::*;
use tensor::ops::sparse_conv2d::*;
use tensor::{Rng as TRng, Tensor};

use common::*;

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
