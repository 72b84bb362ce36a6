//! The fused sparse convolution + ReLU + max-pool (the LeNet's blocks)
//! against the separate ops and kernels, bit for bit, and against the
//! masked dense oracle; NaN through it; thread-count independence.

mod common;

use std::rc::Rc;
use tensor::isa::Isa;
use tensor::ops::conv2d::*;
use tensor::ops::sparse_conv2d::*;
use tensor::Tensor;

use common::*;

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
