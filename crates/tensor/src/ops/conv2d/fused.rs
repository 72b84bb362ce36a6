//! The fused conv2d → relu → max_pool2d block of a LeNet.

use super::*;

//
// A LeNet block is conv, bias, relu, max-pool. As three ops it writes the
// conv output (B, O, OH, OW) and the relu output, the two largest tensors of
// the network, and in backward builds two more of that size (the pool's
// scatter and the relu's mask). The fused op keeps one image's conv output
// in scratch, relu-pools it at once, and saves only the pooled values and the
// argmaxes; backward rebuilds dY from them:
//
// ```text
// forward    y = conv(x, w) + b;  r = relu(y);  pooled, arg = max_pool(r)
// backward   dY[arg[q]] += (pooled[q] > 0 ? dpooled[q] : 0)   (zeros elsewhere)
//            then dW, db and dx from dY exactly as conv2d's backward
// ```
//
// (relu(y) > 0 exactly where y > 0, and the argmax of a window is where its
// pooled value came from, so `pooled[q] > 0` is relu's mask at `arg[q]`.)
// The backward then calls the separate ops' gradients on that dY, so the
// fused op is bitwise equal to conv2d → relu → max_pool2d; the tests check
// that. One
// exception: narrow stride-1 layers ([`narrow_direct_backward`]) take their
// gradients from the sparse fused backward with every tap active, whose dW
// and dx are bitwise the separate ops' (which take the same route) but whose
// bias gradient sums window by window: equal to rounding.

/// Runs `f(index, item)` over `items`, in parallel if `parallel`. Items are
/// independent pieces of the output (one per chunk of images), so the result
/// does not depend on how rayon schedules them.
pub(super) fn for_each_item<T: Send>(
    items: Vec<T>,
    parallel: bool,
    f: impl Fn(usize, T) + Send + Sync,
) {
    if parallel {
        items.into_par_iter().enumerate().for_each(|(i, t)| f(i, t));
    } else {
        items.into_iter().enumerate().for_each(|(i, t)| f(i, t));
    }
}

/// pooled = max_pool2d(relu(conv2d(x, w) + bias)), with each window's argmax
/// (an index into its (OH, OW) plane, as [`crate::ops::pool::max_pool2d_plane`]
/// picks it). OVERWRITES pooled and arg, both (B, O, PH, PW). Without `arg`
/// (inference) the argmaxes are not kept, and the stride-1 2×2 path does
/// not compute them.
pub fn conv2d_relu_pool_forward(
    s: &Conv2dShape,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pooled: &mut [f32],
    arg: Option<&mut [u32]>,
) {
    let op = "conv2d_relu_pool_forward";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    if let Some(b) = bias {
        check_len(op, "bias", s.out_channels, b.len());
    }
    let pp = pool.output_shape(s).iter().product();
    check_len(op, "pooled", pp, pooled.len());
    // Without argmaxes the general path still needs somewhere to put them.
    let want_arg = arg.is_some();
    let mut own = crate::buffers::Recycled(Vec::new());
    let arg = match arg {
        Some(arg) => {
            check_len(op, "arg", pp, arg.len());
            arg
        }
        None => {
            own.0 = crate::buffers::take(pp);
            &mut own.0[..]
        }
    };
    let (chw, o, p) = (
        s.in_channels * s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (oh, ow) = (s.out_h(), s.out_w());
    let (ph, pw) = pool.pooled_size(s);
    let ipc = images_per_chunk(s);
    let per_image = o * ph * pw;
    let items: Vec<_> = pooled
        .chunks_mut(ipc * per_image)
        .zip(arg.chunks_mut(ipc * per_image))
        .collect();
    // Stride 1 with a 2×2 pool: the direct kernel's wide rows go straight
    // into the relu-pool, channel by channel (the same values, bitwise).
    let wide_pool = direct_applies(s) && pool.kernel == (2, 2) && pool.stride == (2, 2);
    let (cg, og, k, hw) = (s.group_in(), s.group_out(), s.col_rows(), s.in_h * s.in_w);
    let q = ph * pw;
    for_each_item(items, run_parallel(s), |chunk, (pooled_c, arg_c)| {
        if wide_pool {
            with_scratch(direct_scratch_len(s) + WIDE_SLACK, |scratch| {
                let images = pooled_c
                    .chunks_mut(per_image)
                    .zip(arg_c.chunks_mut(per_image));
                for (i, (pooled_b, arg_b)) in images.enumerate() {
                    let x_b = &x[(chunk * ipc + i) * chw..][..chw];
                    for g in 0..s.opts.groups {
                        let (pooled_g, arg_g) = (
                            &mut pooled_b[g * og * q..(g + 1) * og * q],
                            &mut arg_b[g * og * q..(g + 1) * og * q],
                        );
                        let mut emit = |o: usize, rows: &[f32]| {
                            let (p_o, a_o) =
                                (&mut pooled_g[o * q..][..q], &mut arg_g[o * q..][..q]);
                            relu_max_pool_2x2_rows(
                                rows,
                                s.in_w,
                                (oh, ow),
                                p_o,
                                want_arg.then_some(a_o),
                                Isa::best(),
                            );
                        };
                        forward_direct(
                            s,
                            &x_b[g * cg * hw..][..cg * hw],
                            &w[g * og * k..(g + 1) * og * k],
                            bias.map(|b| &b[g * og..(g + 1) * og]),
                            scratch,
                            crate::isa::Isa::best(),
                            &mut emit,
                        );
                    }
                }
            });
            return;
        }
        // One image's conv output y (O, OH, OW) after its im2col matrix.
        with_scratch(forward_scratch_len(s) + o * p, |buf| {
            let (scratch, y) = buf.split_at_mut(forward_scratch_len(s));
            let images = pooled_c
                .chunks_mut(per_image)
                .zip(arg_c.chunks_mut(per_image));
            for (i, (pooled_b, arg_b)) in images.enumerate() {
                let b = chunk * ipc + i;
                forward_image(s, &x[b * chw..][..chw], w, bias, scratch, y);
                for v in y.iter_mut() {
                    *v = crate::ops::elementwise::relu(*v);
                }
                let planes = y
                    .chunks(p)
                    .zip(pooled_b.chunks_mut(ph * pw).zip(arg_b.chunks_mut(ph * pw)));
                for (yp, (pp, ap)) in planes {
                    crate::ops::pool::max_pool2d_plane(
                        yp,
                        (oh, ow),
                        pool.kernel,
                        pool.stride,
                        pp,
                        ap,
                    );
                }
            }
        });
    });
}

/// Backward of [`conv2d_relu_pool_forward`] from the pooled gradient
/// `dpooled` and the saved `pooled` values and argmaxes (all (B, O, PH, PW)).
/// OVERWRITES each of dw (O, C/groups, KH, KW), db (O) and dx (B, C, H, W)
/// that is given; pass `None` for gradients nobody needs.
///
/// It rebuilds dY (B, O, OH, OW) from them and runs
/// [`conv2d_backward_weight`], [`conv2d_backward_bias`] and
/// [`conv2d_backward_input`] on it: the separate ops' bits. Narrow stride-1
/// layers ([`narrow_direct_backward`]) instead run the sparse fused
/// backward with every tap active, which never writes a full-size dY: the
/// same dW and dx bits, db equal to rounding.
#[allow(clippy::too_many_arguments)] // the three optional gradients read best named
pub fn conv2d_relu_pool_backward(
    s: &Conv2dShape,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
) {
    let op = "conv2d_relu_pool_backward";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    let pp: usize = pool.output_shape(s).iter().product();
    check_len(op, "pooled", pp, pooled.len());
    check_len(op, "arg", pp, arg.len());
    check_len(op, "dpooled", pp, dpooled.len());
    if let Some(dw) = &dw {
        check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
    }
    if let Some(db) = &db {
        check_len(op, "db", s.out_channels, db.len());
    }
    if let Some(dx) = &dx {
        check_len(op, "dx", s.input_shape().iter().product(), dx.len());
    }
    if narrow_direct_backward(s) {
        // Every tap active: the direct kernels compute the dense gradients.
        with_full_layout(s, |l| {
            crate::ops::sparse_conv2d::sparse_conv2d_relu_pool_backward(
                s,
                l,
                pool,
                x,
                w,
                pooled,
                arg,
                dpooled,
                dw,
                db,
                dx,
                Isa::best(),
            )
        });
        return;
    }
    // dY (B, O, OH, OW): each window's gradient at its argmax, through
    // relu's mask, added in the order the separate ops add it; then the
    // separate ops' own gradients, so that every bit is theirs.
    let (o, p) = (s.out_channels, s.out_pixels());
    let (ph, pw) = pool.pooled_size(s);
    let per_image = o * ph * pw; // pooled values of one image
    let mut dy = crate::buffers::take(s.batch * o * p);
    let image = |(b, dy_b): (usize, &mut [f32])| {
        dy_b.fill(0.0);
        let q0 = b * per_image;
        let (pv, av, dv) = (
            &pooled[q0..][..per_image],
            &arg[q0..][..per_image],
            &dpooled[q0..][..per_image],
        );
        for (oo, plane) in dy_b.chunks_mut(p).enumerate() {
            let r = oo * ph * pw..(oo + 1) * ph * pw;
            for ((&v, &a), &d) in pv[r.clone()].iter().zip(&av[r.clone()]).zip(&dv[r]) {
                plane[a as usize] += crate::ops::elementwise::relu_grad(v, d);
            }
        }
    };
    if run_parallel(s) {
        dy.par_chunks_mut(o * p).enumerate().for_each(image);
    } else {
        dy.chunks_mut(o * p).enumerate().for_each(image);
    }
    if let Some(dw) = dw {
        conv2d_backward_weight(s, x, &dy, dw);
    }
    if let Some(db) = db {
        conv2d_backward_bias(s, &dy, db);
    }
    if let Some(dx) = dx {
        conv2d_backward_input(s, w, &dy, dx);
    }
    crate::buffers::give(dy);
}

/// Whether the fused backward of this shape runs on the direct (sparse)
/// kernels with every tap active instead of im2col + GEMM: stride 1 and at
/// most [`SPARSE_ALWAYS_MAX_OUT_CHANNELS`] output channels per group. The
/// GEMMs of the weight and input gradients have one row (or column) per
/// output channel, and with a few of them most of each 16-wide block of the
/// GEMM's micro-kernel is wasted, while the direct kernels cost the same per
/// tap whatever the channel count: on the LeNet's first conv (6 output
/// channels) they take the dense training step from 3.35 ms to about
/// 2.7 ms at batch 64 (docs/benchmarks.md).
///
/// [`SPARSE_ALWAYS_MAX_OUT_CHANNELS`]: crate::ops::sparse_conv2d::SPARSE_ALWAYS_MAX_OUT_CHANNELS
pub fn narrow_direct_backward(s: &Conv2dShape) -> bool {
    s.opts.stride == (1, 1)
        && s.group_out() <= crate::ops::sparse_conv2d::SPARSE_ALWAYS_MAX_OUT_CHANNELS
}

thread_local! {
    /// The all-active layouts of the shapes this thread has run through
    /// [`narrow_direct_backward`], built once each (a network has few; at
    /// most `MAX_FULL_LAYOUTS` are kept).
    static FULL_LAYOUTS: RefCell<Vec<std::rc::Rc<crate::ops::sparse_conv2d::SparseLayout>>> =
        const { RefCell::new(Vec::new()) };
}

/// `f` with the layout of `s`'s weight with every tap active. The list is
/// not borrowed while `f` runs, so `f` may wait on the pool and run other
/// work that comes back here.
pub(super) fn with_full_layout<R>(
    s: &Conv2dShape,
    f: impl FnOnce(&crate::ops::sparse_conv2d::SparseLayout) -> R,
) -> R {
    use crate::ops::sparse_conv2d::SparseLayout;
    let shape = s.weight_shape();
    /// Layouts kept per thread; the oldest goes first.
    const MAX_FULL_LAYOUTS: usize = 8;
    let layout = FULL_LAYOUTS.with(|cell| {
        let mut layouts = cell.borrow_mut();
        let found = layouts
            .iter()
            .find(|l| l.weight_shape() == shape && l.opts() == s.opts);
        match found {
            Some(l) => l.clone(),
            None => {
                let mask = vec![true; shape.iter().product()];
                let l = std::rc::Rc::new(SparseLayout::new(shape, s.opts, &mask));
                if layouts.len() == MAX_FULL_LAYOUTS {
                    layouts.remove(0);
                }
                layouts.push(l.clone());
                l
            }
        }
    });
    f(&layout)
}
