//! The fused sparse conv → relu → max-pool op and its slice kernels.

use super::*;

// The sparse twin of conv2d/fused.rs's op (see `conv2d_relu_pool_forward`
// there for the idea). It keeps only the pooled values and their argmaxes,
// so the two full-size tensors of the separate ops (the conv output and the
// relu output) are never allocated:
//
// ```text
// forward    y = conv(x, w ⊙ mask) + b;  r = relu(y);  pooled, arg = max_pool(r)
// backward   dY[arg[q]] = (pooled[q] > 0 ? dpooled[q] : 0)   (zeros elsewhere)
//            then dW (active taps), db and dx from dY, as conv2d_sparse's backward
// ```
//
// For stride 1 and a 2×2 pool (the LeNet), forward relu-pools each output
// channel's wide rows as the gather leaves them (`relu_pool_forward_wide`);
// other geometries run the sparse convolution of one chunk of images into
// scratch and pool it. For any stride-1 conv, backward never builds dY at
// all: each gradient task rebuilds the dY planes it reads from the pooled
// gradient (`Dy::Pooled`), and the weight tasks sum the bias gradient window
// by window. Other strides rebuild the whole dY once for the separate
// kernels. dx and dw are always bitwise those of conv2d_sparse → relu →
// max_pool2d; db is too for strides other than 1, and equals theirs to
// rounding for stride 1 (the sums run in another order), unless the op is
// asked for `BiasSum::Planes`: then each rebuilt plane is also summed whole
// in conv2d_backward_bias's order, and db is bitwise theirs as well.

thread_local! {
    /// One chunk's conv output (forward), or the whole batch's rebuilt dY
    /// (backward, on the calling thread); separate from `SCRATCH`, which the
    /// kernels called on that buffer take for themselves.
    static FUSED_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// pooled = max_pool2d(relu(conv(x, w ⊙ mask) + bias)), with each window's
/// argmax (an index into its (OH, OW) plane, as
/// [`crate::ops::pool::max_pool2d_plane`] picks it). OVERWRITES pooled and
/// arg, both (B, O, PH, PW). x is (B, C, H, W), w is (O, C/groups, KH, KW)
/// (entries outside the mask are ignored), bias is (O).
#[allow(clippy::too_many_arguments)] // the operands of three ops in one
pub fn sparse_conv2d_relu_pool_forward(
    s: &Conv2dShape,
    l: &SparseLayout,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pooled: &mut [f32],
    arg: Option<&mut [u32]>,
    k: Isa,
) {
    let op = "sparse_conv2d_relu_pool_forward";
    l.check(op, s);
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
    let per_image = o * ph * pw; // pooled values of one image
    if pp == 0 {
        return;
    }
    // The sparse forward's own chunks: a pure function of shape and taps.
    let ipc = images_per_chunk(s, l);
    let wide_pool = s.opts.stride == (1, 1) && pool.kernel == (2, 2) && pool.stride == (2, 2);
    let chunk = |ci: usize, (pooled_c, arg_c): (&mut [f32], &mut [u32])| {
        let b0 = ci * ipc;
        let nb = pooled_c.len() / per_image;
        if wide_pool {
            let x_c = &x[b0 * chw..(b0 + nb) * chw];
            let arg_c = want_arg.then_some(arg_c);
            relu_pool_forward_wide(s, l, x_c, w, bias, pooled_c, arg_c, k);
            return;
        }
        // The chunk as a batch of its own: the kernel keeps it in one piece
        // on this thread (its chunk size for nb ≤ ipc images is nb).
        let sc = Conv2dShape { batch: nb, ..*s };
        with_scratch(&FUSED_SCRATCH, nb * o * p, |y| {
            let x_c = &x[b0 * chw..(b0 + nb) * chw];
            sparse_conv2d_forward(&sc, l, x_c, w, bias, y, k); // (nb, O, OH, OW)
            for v in y.iter_mut() {
                *v = crate::ops::elementwise::relu(*v);
            }
            let planes = y.chunks_exact(p).zip(
                pooled_c
                    .chunks_exact_mut(ph * pw)
                    .zip(arg_c.chunks_exact_mut(ph * pw)),
            );
            for (yp, (pp, ap)) in planes {
                crate::ops::pool::max_pool2d_plane(yp, (oh, ow), pool.kernel, pool.stride, pp, ap);
            }
        });
    };
    let items = pooled
        .chunks_mut(ipc * per_image)
        .zip(arg.chunks_mut(ipc * per_image));
    if run_parallel(s, l) && s.batch > ipc {
        items
            .collect::<Vec<_>>()
            .into_par_iter()
            .enumerate()
            .for_each(|(ci, item)| chunk(ci, item));
    } else {
        items.enumerate().for_each(|(ci, item)| chunk(ci, item));
    }
}

/// The fused forward for stride 1 and a 2×2 pool, for the images of `x_c`:
/// each output channel's wide rows go from [`gather_fma`] straight into
/// [`relu_max_pool_2x2_rows`], with no full-size conv output, no copy of
/// the rows and no separate relu pass. The conv values are those of
/// [`sparse_conv2d_forward`] (the same calls), so the result is bitwise
/// the same as the general path.
#[allow(clippy::too_many_arguments)] // the fused op's operands
pub(super) fn relu_pool_forward_wide(
    s: &Conv2dShape,
    l: &SparseLayout,
    x_c: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pooled_c: &mut [f32],
    mut arg_c: Option<&mut [u32]>,
    k: Isa,
) {
    let plan = l.plan(s);
    let (c, hw) = (s.in_channels, s.in_h * s.in_w);
    let (cg, og) = (s.group_in(), s.group_out());
    let (oh, ow) = (s.out_h(), s.out_w());
    let q = (oh / 2) * (ow / 2); // pooled values per plane
    let padded = s.opts.padding != (0, 0);
    let pad_len = if padded { cg * plan.hp * plan.wp } else { 0 };
    let wide = (oh - 1) * plan.wp + ow;
    let max_taps = l.max_taps();
    with_scratch(&SCRATCH, pad_len + wide + WIDE_SLACK + max_taps, |buf| {
        let (xpad, rest) = buf.split_at_mut(pad_len); // (Cg, Hp, Wp)
        let (yw, ws) = rest.split_at_mut(wide + WIDE_SLACK);
        for (b, pooled_b) in pooled_c.chunks_exact_mut(s.out_channels * q).enumerate() {
            for g in 0..s.opts.groups {
                let x_bg = &x_c[(b * c + g * cg) * hw..][..cg * hw]; // (Cg, H, W)
                let src = if padded {
                    let first = b == 0 && g == 0; // writes the zero borders
                    pad_planes(x_bg, s.in_h, s.in_w, s.opts.padding, xpad, first, k);
                    &*xpad
                } else {
                    x_bg
                };
                for oc in g * og..(g + 1) * og {
                    let r = l.out_range(oc);
                    let ws = &mut ws[..r.len()];
                    for (wv, t) in ws.iter_mut().zip(&l.by_output[r.clone()]) {
                        *wv = w[t.wi];
                    }
                    let init = bias.map_or(0.0, |b| b[oc]);
                    gather_fma(src, &plan.fwd_offs[r], ws, init, &mut yw[..wide], k);
                    let plane = (b * s.out_channels + oc) * q;
                    let a_o = arg_c.as_deref_mut().map(|a| &mut a[plane..][..q]);
                    relu_max_pool_2x2_rows(
                        yw,
                        plan.wp,
                        (oh, ow),
                        &mut pooled_b[oc * q..][..q],
                        a_o,
                        k,
                    );
                }
            }
        }
    });
}

/// dY (B, O, OH, OW) of the fused op from the saved `pooled` values and
/// argmaxes and the pooled gradient `dpooled` (all (B, O, PH, PW)): each
/// pooled gradient scattered back to its argmax through relu's mask, in
/// the order max_pool2d's backward adds them. OVERWRITES dy, and `sums`
/// (B, O) with each dY plane's sum as [`conv2d_backward_bias`] takes it,
/// while the plane is still in cache. Planes are independent, so the chunks
/// of images may run in any order.
#[allow(clippy::too_many_arguments)] // three saved tensors and two outputs
pub(super) fn relu_pool_grad(
    s: &Conv2dShape,
    l: &SparseLayout,
    pool: PoolOptions,
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    dy: &mut [f32],
    sums: &mut [f32],
) {
    let (o, p) = (s.out_channels, s.out_pixels());
    let (ph, pw) = pool.pooled_size(s);
    let q = ph * pw; // pooled values per plane
    let planes_per_chunk = images_per_chunk(s, l) * o;
    let chunk = |ci: usize, (dy_c, sums_c): (&mut [f32], &mut [f32])| {
        let q0 = ci * planes_per_chunk * q;
        let planes = dy_c.chunks_exact_mut(p).zip(sums_c.iter_mut());
        for (i, (plane, sum)) in planes.enumerate() {
            let r = q0 + i * q..q0 + (i + 1) * q;
            plane.fill(0.0);
            for ((&v, &a), &d) in pooled[r.clone()]
                .iter()
                .zip(&arg[r.clone()])
                .zip(&dpooled[r])
            {
                // relu(y) > 0 exactly where y > 0, and the pooled value is
                // relu(y) at the argmax, so it stands in for y in relu's
                // gradient.
                plane[a as usize] += crate::ops::elementwise::relu_grad(v, d);
            }
            *sum = sum_lanes(plane);
        }
    };
    let (dy_len, sums_len) = (planes_per_chunk * p, planes_per_chunk);
    if run_parallel(s, l) && s.batch * o > planes_per_chunk {
        let items = dy.par_chunks_mut(dy_len).zip(sums.par_chunks_mut(sums_len));
        items.enumerate().for_each(|(ci, item)| chunk(ci, item));
    } else {
        let items = dy.chunks_mut(dy_len).zip(sums.chunks_mut(sums_len));
        items.enumerate().for_each(|(ci, item)| chunk(ci, item));
    }
}

/// db (O) = the plane sums (B, O) added image by image, as
/// [`conv2d_backward_bias`] adds them. OVERWRITES db.
pub(super) fn add_image_sums(sums: &[f32], db: &mut [f32]) {
    db.fill(0.0);
    for sums_b in sums.chunks_exact(db.len()) {
        db.iter_mut().zip(sums_b).for_each(|(d, s)| *d += s);
    }
}

/// db (O) of the stride-1 fused op when no weight gradient is wanted
/// (otherwise the weight tasks sum the planes as they go): the same plane
/// sums from [`Dy::plane_into`], added image by image. OVERWRITES db.
pub(super) fn bias_grad_pooled(s: &Conv2dShape, plan: &Plan, dy: Dy, db: &mut [f32], k: Isa) {
    let rows = s.out_h() * plan.wp;
    with_scratch(&SCRATCH, rows, |plane| {
        for (oc, d) in db.iter_mut().enumerate() {
            *d = (0..s.batch).fold(0.0, |acc, b| {
                acc + dy.plane_into(s, plan, b, oc, plane, true, k)
            });
        }
    });
}

/// Backward of [`sparse_conv2d_relu_pool_forward`] from the pooled gradient
/// `dpooled` and the saved `pooled` values and argmaxes (all (B, O, PH, PW)).
/// OVERWRITES each of dw (O, C/groups, KH, KW; exactly 0.0 at inactive taps),
/// db (O) and dx (B, C, H, W) that is given; pass `None` for gradients nobody
/// needs.
#[allow(clippy::too_many_arguments)] // the three optional gradients read best named
pub fn sparse_conv2d_relu_pool_backward(
    s: &Conv2dShape,
    l: &SparseLayout,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
    k: Isa,
) {
    sparse_conv2d_relu_pool_backward_with(
        s,
        l,
        pool,
        (x, w),
        (pooled, arg, dpooled),
        (dw, db, dx),
        BiasSum::Windows,
        k,
    )
}

/// How the fused backward sums dY for the bias gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BiasSum {
    /// Window by window, as the pooled gradient is scattered back (no pass
    /// over the zeros; equal to the separate ops' sum to rounding).
    #[default]
    Windows,
    /// Over each whole dY plane, in the order of the separate ops'
    /// `conv2d_backward_bias`: bitwise their bias gradient, at the price of
    /// one more pass over each plane the weight tasks rebuild.
    Planes,
}

/// The gradients a backward may write: (dw, db, dx), each if wanted.
pub type Grads<'a> = (
    Option<&'a mut [f32]>,
    Option<&'a mut [f32]>,
    Option<&'a mut [f32]>,
);

/// [`sparse_conv2d_relu_pool_backward`] with the bias sum chosen.
#[allow(clippy::too_many_arguments)]
pub fn sparse_conv2d_relu_pool_backward_with(
    s: &Conv2dShape,
    l: &SparseLayout,
    pool: PoolOptions,
    (x, w): (&[f32], &[f32]),
    (pooled, arg, dpooled): (&[f32], &[u32], &[f32]),
    (dw, db, dx): Grads<'_>,
    bias_sum: BiasSum,
    k: Isa,
) {
    let op = "sparse_conv2d_relu_pool_backward";
    l.check(op, s);
    let pp: usize = pool.output_shape(s).iter().product();
    check_len(op, "pooled", pp, pooled.len());
    check_len(op, "arg", pp, arg.len());
    check_len(op, "dpooled", pp, dpooled.len());
    // The kernels check x, w and the gradients.
    if let Some(db) = &db {
        check_len(op, "db", s.out_channels, db.len());
    }
    let o = s.out_channels;
    if s.opts.stride == (1, 1) {
        // No full-size dY: each task of the two gradients rebuilds the
        // planes it reads from the pooled gradient, in its own scratch.
        let plan = l.plan(s);
        let dy = Dy::Pooled(PooledGrad {
            pool,
            pooled,
            arg,
            dpooled,
            bias_sum,
        });
        let weight_and_bias = || match dw {
            Some(dw) => {
                check_len(op, "x", s.input_shape().iter().product(), x.len());
                check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
                backward_weight_wide(s, l, &plan, x, dy, dw, db, k);
            }
            None => {
                if let Some(db) = db {
                    bias_grad_pooled(s, &plan, dy, db, k);
                }
            }
        };
        let input = || {
            if let Some(dx) = dx {
                check_len(op, "w", s.weight_shape().iter().product(), w.len());
                check_len(op, "dx", s.input_shape().iter().product(), dx.len());
                backward_input_wide(s, l, &plan, w, dy, dx, k);
            }
        };
        // The two are independent. Side by side, the pool's threads go from
        // one to the other without falling asleep in between; small ones
        // run here, one after the other.
        if run_parallel(s, l) {
            rayon::join(weight_and_bias, input);
        } else {
            weight_and_bias();
            input();
        }
        return;
    }
    let n_dy = s.output_shape().iter().product();
    with_scratch(&FUSED_SCRATCH, n_dy + s.batch * o, |buf| {
        let (dy, sums) = buf.split_at_mut(n_dy); // (B, O, OH, OW), (B, O)
        relu_pool_grad(s, l, pool, pooled, arg, dpooled, dy, sums);
        if let Some(dw) = dw {
            sparse_conv2d_backward_weight(s, l, x, dy, dw, k);
        }
        if let Some(db) = db {
            match bias_sum {
                BiasSum::Windows => add_image_sums(sums, db),
                BiasSum::Planes => conv2d_backward_bias(s, dy, db),
            }
        }
        if let Some(dx) = dx {
            sparse_conv2d_backward_input(s, l, w, dy, dx, k);
        }
    });
}

/// The definition, from the dense naive kernels on the masked weight
/// ([`crate::ops::conv_naive::conv2d_relu_pool_naive`]). Returns (pooled, arg);
/// the test oracle.
pub fn sparse_conv2d_relu_pool_naive(
    s: &Conv2dShape,
    l: &SparseLayout,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<u32>) {
    crate::ops::conv_naive::conv2d_relu_pool_naive(s, pool, x, &l.masked_weight(w), bias)
}

/// max_pool2d(relu(conv2d_sparse(x, w, bias, layout))) without the
/// full-size intermediates: the same values, dx and dw, bit for bit, as the
/// three ops one after the other, and the same dbias (bit for bit, or for a
/// stride-1 conv to rounding: see the comment at the top of this file; bit
/// for bit always with [`conv2d_sparse_relu_max_pool2d_with`] and
/// [`BiasSum::Planes`]).
/// Backward gives dx, dw at the active taps only (exactly 0.0 elsewhere) and
/// dbias, as [`conv2d_sparse`] does.
pub fn conv2d_sparse_relu_max_pool2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    layout: &Rc<SparseLayout>,
    pool: PoolOptions,
) -> Tensor {
    conv2d_sparse_relu_max_pool2d_with(x, w, bias, layout, pool, BiasSum::Windows)
}

/// [`conv2d_sparse_relu_max_pool2d`] with the bias gradient's sum chosen:
/// with [`BiasSum::Planes`] every value and gradient is bitwise the three
/// separate ops'.
pub fn conv2d_sparse_relu_max_pool2d_with(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    layout: &Rc<SparseLayout>,
    pool: PoolOptions,
    bias_sum: BiasSum,
) -> Tensor {
    let op = "conv2d_sparse_relu_max_pool2d";
    assert_eq!(
        w.shape(),
        layout.weight_shape,
        "{op}: weight {:?} but the layout was built for {:?}",
        w.shape(),
        layout.weight_shape
    );
    let s =
        Conv2dShape::new(x.shape(), w.shape(), layout.opts).unwrap_or_else(|e| panic!("{op}: {e}"));
    if let Some(b) = bias {
        assert_eq!(
            b.shape(),
            [s.out_channels],
            "{op}: bias {:?} for {} output channels",
            b.shape(),
            s.out_channels
        );
    }
    let out_shape = pool.output_shape(&s);
    let n_out = out_shape.iter().product();
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    // Backward needs the argmaxes and the pooled values; find them and keep
    // a copy only if it will run.
    let tracked = crate::tape::is_recording() && inputs.iter().any(|t| t.needs_grad());
    // Both overwritten whole.
    let mut pooled = crate::buffers::take(n_out);
    let mut arg = crate::buffers::Recycled(if tracked {
        crate::buffers::take(n_out)
    } else {
        Vec::new()
    });
    sparse_conv2d_relu_pool_forward(
        &s,
        layout,
        pool,
        &x.data(),
        &w.data(),
        bias.map(|b| b.data()).as_deref().map(|v| &v[..]),
        &mut pooled,
        tracked.then_some(&mut arg[..]),
        Isa::best(),
    );
    let saved = crate::buffers::Recycled::copy_of(if tracked { &pooled } else { &[] });
    let (xc, wc, bc, l) = (x.clone(), w.clone(), bias.cloned(), layout.clone());
    Tensor::from_op(pooled, &out_shape, &inputs, move |dpooled, grads| {
        let mut dw = wc.needs_grad().then(|| crate::buffers::take(wc.numel()));
        let mut db = bc
            .as_ref()
            .filter(|b| b.needs_grad())
            .map(|_| vec![0.0; s.out_channels]);
        let mut dx = xc.needs_grad().then(|| crate::buffers::take(xc.numel()));
        sparse_conv2d_relu_pool_backward_with(
            &s,
            &l,
            pool,
            (&xc.data(), &wc.data()),
            (&saved, &arg, dpooled),
            (dw.as_deref_mut(), db.as_deref_mut(), dx.as_deref_mut()),
            bias_sum,
            Isa::best(),
        );
        if let Some(dw) = dw {
            grads.add_owned(&wc, dw);
        }
        if let (Some(b), Some(db)) = (&bc, db) {
            // Added into the gradient as conv2d_sparse adds its bias sums.
            grads.accumulate(b, |gb| {
                for (g, d) in gb.iter_mut().zip(&db) {
                    *g += d;
                }
            });
        }
        if let Some(dx) = dx {
            grads.add_owned(&xc, dx);
        }
    })
}
