//! The sparse input and weight gradients, and where their tasks find dY.

use super::*;

/// dx[b, ci, iy, ix] = Σ w[o, c, ki, kj] · dy[b, o, oy, ox] over the active
/// taps that read (ci, iy, ix). OVERWRITES dx.
/// w is (O, C/groups, KH, KW), dy is (B, O, OH, OW), dx is (B, C, H, W).
pub fn sparse_conv2d_backward_input(
    s: &Conv2dShape,
    l: &SparseLayout,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    k: Isa,
) {
    let op = "sparse_conv2d_backward_input";
    l.check(op, s);
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dx", s.input_shape().iter().product(), dx.len());
    // The wide trick, each task laying out its images' dy.
    backward_input_wide(s, l, &l.plan(s), w, Dy::Plain(dy), dx, k);
}

/// Where the stride-1 backward kernels find dY. Each task lays out the
/// planes it needs in the wide layout ([`Plan::data_start`]) in its own
/// scratch, a plane at a time, while they are hot in cache: copied from a
/// plain (B, O, OH, OW) dY (the separate kernels), or rebuilt from the
/// fused op's pooled values, argmaxes and pooled gradient (each window's
/// gradient at its argmax), so that the fused op never writes a full-size
/// dY at all.
#[derive(Clone, Copy)]
pub(super) enum Dy<'a> {
    Plain(&'a [f32]),
    Pooled(PooledGrad<'a>),
    /// Planes laid out already, B·O of `q_plane` floats, which both
    /// gradients read in place ([`backward_both_wide`] lays out one
    /// image's and hands them on as a batch of one).
    Wide(&'a [f32]),
}

/// The fused op's saved tensors and pooled gradient, all (B, O, PH, PW).
#[derive(Clone, Copy)]
pub(super) struct PooledGrad<'a> {
    pub(super) pool: PoolOptions,
    pub(super) pooled: &'a [f32],
    pub(super) arg: &'a [u32],
    pub(super) dpooled: &'a [f32],
    /// How each plane's sum for the bias gradient is taken.
    pub(super) bias_sum: BiasSum,
}

impl Dy<'_> {
    /// Writes plane (b, oc) of dY into the OH data rows `rows` (OH·Wp
    /// floats, gap columns included; the zeros around them are the
    /// caller's) and, if `want_sum`, returns the plane's sum for the bias
    /// gradient: for a pooled dY the window gradients' sum (see
    /// [`relu_pool_grad_2x2_rows`]) or, with [`BiasSum::Planes`], the whole
    /// plane's in `conv2d_backward_bias`'s order; 0 for a plain dY (its bias
    /// gradient is the separate ops' business) or without `want_sum`.
    #[allow(clippy::too_many_arguments)] // the plane's coordinates and where it goes
    pub(super) fn plane_into(
        &self,
        s: &Conv2dShape,
        plan: &Plan,
        b: usize,
        oc: usize,
        rows: &mut [f32],
        want_sum: bool,
        k: Isa,
    ) -> f32 {
        let (o, oh, ow, wp) = (s.out_channels, s.out_h(), s.out_w(), plan.wp);
        match *self {
            Dy::Wide(all) => {
                let q = &all[(b * o + oc) * plan.q_plane + plan.data_start()..];
                rows[..oh * wp].copy_from_slice(&q[..oh * wp]);
                0.0
            }
            Dy::Plain(dy) => {
                let p = s.out_pixels();
                copy_rows(rows, wp, &dy[(b * o + oc) * p..][..p], ow, oh, ow, k);
                0.0
            }
            Dy::Pooled(g) => {
                let (ph, pw) = g.pool.pooled_size(s);
                let r = (b * o + oc) * ph * pw..(b * o + oc + 1) * ph * pw;
                // The weight-gradient tasks go through the images of one
                // channel, planes O·PH·PW apart: ask for the next image's
                // plane now, so that its loads are not waited for.
                if b + 1 < s.batch {
                    let next = r.start + o * ph * pw..r.end + o * ph * pw;
                    prefetch(&g.pooled[next.clone()]);
                    prefetch(&g.arg[next.clone()]);
                    prefetch(&g.dpooled[next]);
                }
                let (pooled, arg, dpooled) =
                    (&g.pooled[r.clone()], &g.arg[r.clone()], &g.dpooled[r]);
                if g.pool.kernel == (2, 2) && g.pool.stride == (2, 2) {
                    let windows =
                        relu_pool_grad_2x2_rows(pooled, arg, dpooled, (oh, ow), wp, rows, k);
                    return match (want_sum, g.bias_sum) {
                        (false, _) => 0.0,
                        (true, BiasSum::Windows) => windows,
                        (true, BiasSum::Planes) => plane_sum(rows, (oh, ow), wp, k),
                    };
                }
                // Any other pool: scatter each window's gradient to its
                // argmax a = oy·OW + ox, at a + oy·(Wp − OW) in the rows.
                // The argmax lies in the window's rows py·sy .. py·sy + KH;
                // its row within them is counted without a division.
                let (kh, sy) = (g.pool.kernel.0, g.pool.stride.0);
                let rows = &mut rows[..oh * wp];
                rows.fill(0.0);
                let mut sum = 0.0f32;
                for py in 0..ph {
                    for px in 0..pw {
                        let j = py * pw + px;
                        let a = arg[j] as usize;
                        let within = a - py * sy * ow;
                        let dy_row = (1..kh).filter(|&t| within >= t * ow).count();
                        // relu(y) > 0 exactly where y > 0, and the pooled
                        // value is relu(y) at the argmax.
                        let grad = crate::ops::elementwise::relu_grad(pooled[j], dpooled[j]);
                        rows[a + (py * sy + dy_row) * (wp - ow)] += grad;
                        sum += grad;
                    }
                }
                match (want_sum, g.bias_sum) {
                    (false, _) => 0.0,
                    (true, BiasSum::Windows) => sum,
                    (true, BiasSum::Planes) => plane_sum(rows, (oh, ow), wp, k),
                }
            }
        }
    }
}

impl Plan {
    /// dY laid out for the stride-1 wide kernels is one (B, O) plane after
    /// another, each `q_plane` floats: `lead` zeros, (KH−1)·dy zero rows,
    /// the OH rows of dY with the input's row length Wp (OW values, then
    /// Wp − OW zeros), and (KH−1)·dy zero rows. The Wp − OW zeros after a
    /// row serve as the right border of that row and the left border of the
    /// next (a read left of column 0 lands in the previous row's gap). The
    /// input gradient gathers from whole planes; the weight gradient reads
    /// the OH data rows, which start here.
    pub(super) fn data_start(&self) -> usize {
        self.lead + self.top * self.wp
    }
}

/// The input gradient with dY in the wide layout: each input plane (each
/// phase plane, for a stride s > 1) gathers, over the (o, tap) entries that
/// read it, the kernel flipped, and comes out in the prepared input's
/// layout, Hp·Wp long a phase (read back into dx without its border, and
/// the phases merged, unless the conv neither pads nor strides).
pub(super) fn backward_input_wide(
    s: &Conv2dShape,
    l: &SparseLayout,
    plan: &Plan,
    w: &[f32],
    dy: Dy,
    dx: &mut [f32],
    k: Isa,
) {
    let (c, hw, o) = (s.in_channels, s.in_h * s.in_w, s.out_channels);
    let og = s.group_out();
    let ipc = images_per_chunk(s, l);
    let (q_plane, start, rows) = (plan.q_plane, plan.data_start(), s.out_h() * plan.wp);
    let wis = plan.bwd_taps.iter().map(|&i| l.by_input[i].wi);
    with_active_weights(w, wis, |wb| {
        for_each_chunk(dx, ipc * c * hw, run_parallel(s, l), |chunk, dx_chunk| {
            with_scratch(&DY_SCRATCH, og * q_plane, |dyq_bg| {
                // (O/g, q_plane). The borders stay zero: each image writes only
                // the data rows.
                if !matches!(dy, Dy::Wide(_)) {
                    dyq_bg.fill(0.0);
                }
                for (i, dx_b) in dx_chunk.chunks_mut(c * hw).enumerate() {
                    let b = chunk * ipc + i;
                    for g in 0..s.opts.groups {
                        // The planes this group's inputs read.
                        let dyq_bg: &[f32] = match dy {
                            Dy::Wide(all) => &all[(b * o + g * og) * q_plane..][..og * q_plane],
                            _ => {
                                for (j, plane) in dyq_bg.chunks_exact_mut(q_plane).enumerate() {
                                    let plane = &mut plane[start..][..rows];
                                    dy.plane_into(s, plan, b, g * og + j, plane, false, k);
                                }
                                &*dyq_bg
                            }
                        };
                        input_group(s, plan, wb, dyq_bg, g, dx_b, k);
                    }
                }
            });
        });
    });
}

/// Group g's input planes of one image, `dx_b` (C, H, W), from `dyq_bg`,
/// the group's O/g dY planes of that image laid out wide; `wb` holds the
/// active weights in the order of `plan.bwd_taps`.
fn input_group(
    s: &Conv2dShape,
    plan: &Plan,
    wb: &[f32],
    dyq_bg: &[f32],
    g: usize,
    dx_b: &mut [f32],
    k: Isa,
) {
    let (hw, cg) = (s.in_h * s.in_w, s.group_in());
    let padded = needs_planes(s, plan);
    let pplane = plan.hp * plan.wp; // one phase plane, [iy·Wp + ix]

    // Padded stride-1 planes whose rows are whole vectors go straight into
    // dx, without their border: dx[iy, ix] is the padded plane at
    // (iy + py)·Wp + ix + px.
    let (py, px) = s.opts.padding;
    let rv = (padded && plan.phases == 1)
        .then(|| row_vectors(s.in_w, k))
        .flatten();
    let dxw_len = if padded && rv.is_none() {
        plan.plane()
    } else {
        0
    };
    with_scratch(&SCRATCH, dxw_len, |dxw| {
        for ci in g * cg..(g + 1) * cg {
            // (H, W). One phase plane at a time; without padding or
            // stride the one plane is dx_c itself.
            let dx_c = &mut dx_b[ci * hw..(ci + 1) * hw];
            for ph in 0..plan.phases {
                let r = plan.bwd_range(ci * plan.phases + ph);
                let (offs, ws) = (&plan.bwd_offs[r.clone()], &wb[r]);
                if let Some(rv) = rv {
                    let src = &dyq_bg[py * plan.wp + px..];
                    gather_fma_rows(src, plan.wp, offs, ws, 0.0, dx_c, s.in_w, rv);
                    continue;
                }
                let out = if padded {
                    &mut dxw[ph * pplane..][..pplane]
                } else {
                    &mut *dx_c
                };
                gather_fma(dyq_bg, offs, ws, 0.0, out, k);
            }
            if padded && rv.is_none() {
                unprepare_plane(s, plan, dxw, dx_c, k);
            }
        }
    });
}

/// Both gradients of the autograd op from a plain dY, image by image: each
/// task lays out its image's dY planes wide in its own scratch, where they
/// stay in cache, and runs the input gradient's gathers and the weight
/// gradient's dot products over them ([`backward_weight_wide`]'s blocks
/// and order, so the same bits as the two kernels run one after the
/// other). No full-size wide dY is written.
#[allow(clippy::too_many_arguments)] // the operands and both outputs
pub(super) fn backward_both_wide(
    s: &Conv2dShape,
    l: &SparseLayout,
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dx: &mut [f32],
    k: Isa,
) {
    let dx_image = s.in_channels * s.in_h * s.in_w;
    let (o, q, start, rows) = (
        s.out_channels,
        plan.q_plane,
        plan.data_start(),
        s.out_h() * plan.wp,
    );
    let wis = plan.bwd_taps.iter().map(|&i| l.by_input[i].wi);
    with_active_weights(w, wis, |wb| {
        let image = |b: usize, x_b: &[f32], dots: &mut [f32], dx_b: &mut [f32]| {
            with_scratch(&DY_SCRATCH, o * q, |dyq| {
                dyq.fill(0.0);
                for (oc, plane) in dyq.chunks_exact_mut(q).enumerate() {
                    let plane = &mut plane[start..][..rows];
                    Dy::Plain(dy).plane_into(s, plan, b, oc, plane, false, k);
                }
                for g in 0..s.opts.groups {
                    let og = s.group_out();
                    input_group(s, plan, wb, &dyq[g * og * q..][..og * q], g, dx_b, k);
                }
                // The laid-out planes are image 0 of a one-image wide dY.
                weight_image(s, l, plan, &Dy::Wide(dyq), x_b, 0, dots, k);
            });
        };
        by_images(s, l, x, dw, None, Some((dx, dx_image)), &image);
    });
}

// ---------------------------------------------------------------------------
// Backward: weight, at the active taps only
// ---------------------------------------------------------------------------

/// dw[o, c, ki, kj] = Σ_{b, oy, ox} dy[b, o, oy, ox] · x[b, g·Cg + c, iy, ix]
/// at the active taps, and exactly 0.0 elsewhere. OVERWRITES dw.
/// x is (B, C, H, W), dy is (B, O, OH, OW), dw is (O, C/groups, KH, KW).
///
/// One task per image, each writing its taps' dot products; every tap then
/// sums its images in order: bitwise the same for any thread count.
pub fn sparse_conv2d_backward_weight(
    s: &Conv2dShape,
    l: &SparseLayout,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    k: Isa,
) {
    let op = "sparse_conv2d_backward_weight";
    l.check(op, s);
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
    // Dot products of wide dy rows with the shifted input.
    backward_weight_wide(s, l, &l.plan(s), x, Dy::Plain(dy), dw, None, k);
}

/// Images whose per-tap dot products [`backward_weight_wide`] holds at once
/// before adding them into dW: 16, enough to keep the threads busy between
/// two additions, or fewer where a block would pass 4 MB (a WideResNet's
/// 640-channel layers have millions of taps per image at high density).
/// Any block gives the same bits.
fn weight_images(per_image: usize) -> usize {
    ((1 << 20) / per_image.max(1)).clamp(2, 16)
}

/// The weight gradient with dY in the wide layout: per active tap, the dot
/// product of dY's data rows (zeros in the Wp − OW gap columns) with the
/// input planes shifted by the tap's offset. With `db`, also each
/// channel's sum of its dY planes (from [`Dy::plane_into`]) into db[oc].
///
/// The images are the tasks: each task prepares its image's input planes
/// and dY planes in its own scratch, where they stay in cache, and writes
/// the dot product of every active tap for that image (each image's input
/// is read once, however many output channels there are). A block of
/// images ([`weight_images`]) is then added into dW image by image, so every
/// tap sums its images in order: the bits do not depend on the blocks or
/// the threads.
#[allow(clippy::too_many_arguments)] // the operands and both outputs
pub(super) fn backward_weight_wide(
    s: &Conv2dShape,
    l: &SparseLayout,
    plan: &Plan,
    x: &[f32],
    dy: Dy,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    k: Isa,
) {
    let image = |b: usize, x_b: &[f32], out: &mut [f32], _: &mut [f32]| {
        weight_image(s, l, plan, &dy, x_b, b, out, k);
    };
    by_images(s, l, x, dw, db, None, &image);
}

/// An image's task for [`by_images`]: (b, its input, its dots and plane
/// sums, its dx or nothing).
type ImageTask<'a> = dyn Fn(usize, &[f32], &mut [f32], &mut [f32]) + Sync + 'a;

/// The weight gradient's driver: runs `image` on every image, a block at
/// a time (in parallel when the op is big enough), each writing its taps'
/// dot products (and, with `db`, its planes' sums) into the block and,
/// with `dx` ((dx, floats per image)), its part of dx; then adds the
/// block into dW (and db) image by image.
fn by_images(
    s: &Conv2dShape,
    l: &SparseLayout,
    x: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<(&mut [f32], usize)>,
    image: &ImageTask,
) {
    let o = s.out_channels;
    let kk = s.group_in() * s.kernel_h * s.kernel_w; // weights per output channel
    let taps = l.by_output.len();
    // Per image: the taps' dot products, then (with db) the planes' sums.
    let per_image = taps + if db.is_some() { o } else { 0 };
    let x_image = s.in_channels * s.in_h * s.in_w;
    let parallel = run_parallel(s, l);
    let mut sums = vec![0.0f32; if db.is_some() { o } else { 0 }];
    dw.fill(0.0);
    let (mut dx, dx_image) = match dx {
        Some((dx, n)) => (Some(dx), n),
        None => (None, 0),
    };
    if per_image == 0 && dx.is_none() {
        return; // no active tap, and no bias gradient asked for
    }
    let images = weight_images(per_image.max(1));
    // At least one float per image, so that the block splits into images
    // even without a tap.
    let stride = per_image.max(1);
    with_scratch(&BATCH_SCRATCH, images.min(s.batch) * stride, |block| {
        for b0 in (0..s.batch).step_by(images) {
            let n = images.min(s.batch - b0);
            let block = &mut block[..n * stride];
            let dx_block: &mut [f32] = match dx.as_deref_mut() {
                Some(dx) => &mut dx[b0 * dx_image..(b0 + n) * dx_image],
                None => &mut [],
            };
            let task = |(i, (out, dx_b)): (usize, (&mut [f32], &mut [f32]))| {
                let b = b0 + i;
                image(b, &x[b * x_image..][..x_image], &mut out[..per_image], dx_b);
            };
            let none = |(i, out): (usize, &mut [f32])| task((i, (out, &mut [][..])));
            match (parallel, dx_block.is_empty()) {
                (true, false) => {
                    let parts = block.par_chunks_mut(stride);
                    let dx_parts = dx_block.par_chunks_mut(dx_image);
                    parts.zip(dx_parts).enumerate().for_each(task);
                }
                (true, true) => block.par_chunks_mut(stride).enumerate().for_each(none),
                (false, false) => {
                    let parts = block.chunks_mut(stride);
                    let dx_parts = dx_block.chunks_mut(dx_image);
                    parts.zip(dx_parts).enumerate().for_each(task);
                }
                (false, true) => block.chunks_mut(stride).enumerate().for_each(none),
            }
            // Each output channel adds its taps' dots image by image (the
            // channels apart on the pool: they share nothing).
            let block = &*block;
            for_each_chunk(dw, kk, parallel, |oc, dw_o| {
                let r = l.out_range(oc);
                for dots in block.chunks_exact(stride) {
                    for (t, &d) in l.by_output[r.clone()].iter().zip(&dots[r.clone()]) {
                        dw_o[t.wi - oc * kk] += d;
                    }
                }
            });
            for dots in block.chunks_exact(stride) {
                for (sum, &d) in sums.iter_mut().zip(&dots[taps..per_image]) {
                    *sum += d;
                }
            }
        }
    });
    if let Some(db) = db {
        db.copy_from_slice(&sums);
    }
}

/// One task of [`backward_weight_wide`]: image b's dot product for every
/// active tap, into out[..taps] in `by_output`'s order, and with a bias
/// gradient wanted (out longer than that), its dY planes' sums after them.
/// `x_b` is the image's (C, H, W) input.
#[allow(clippy::too_many_arguments)] // the operands, the image and its outputs
fn weight_image(
    s: &Conv2dShape,
    l: &SparseLayout,
    plan: &Plan,
    dy: &Dy,
    x_b: &[f32],
    b: usize,
    out: &mut [f32],
    k: Isa,
) {
    let (c, o) = (s.in_channels, s.out_channels);
    let (q, start) = (plan.q_plane, plan.data_start());
    let rows = s.out_h() * plan.wp; // dY's data rows, gap columns included
    let wide = rows - (plan.wp - s.out_w()); // up to the last value
    let (dots, plane_sums) = out.split_at_mut(l.by_output.len());
    let want_sum = !plane_sums.is_empty();
    // Rows of whole vectors: dot products over their values only.
    let rv = dot_row_vectors(s.out_w(), k);
    // On rows, a plain dY is read where it lies (rows OW apart): the dot
    // products skip the gap columns that the wide layout would add.
    let in_place = rv.is_some() && matches!(dy, Dy::Plain(_)) && !want_sum;
    let plane_p = plan.plane();
    let padded = needs_planes(s, plan);
    // A laid-out or in-place dY is read where it is; others are laid out
    // here, every channel of the image.
    let own = if matches!(dy, Dy::Wide(_)) || in_place {
        0
    } else {
        o * rows
    };
    let pad = if padded { c * plane_p } else { 0 };
    with_scratch(&SCRATCH, pad + own, |buf| {
        let (xpad, dyw) = buf.split_at_mut(pad);
        let xs: &[f32] = if padded {
            let one = Conv2dShape { batch: 1, ..*s };
            prepare_planes(&one, plan, x_b, xpad, true, k);
            xpad
        } else {
            x_b
        };
        // Gap columns stay zero for a plain dY (only values are copied); a
        // pooled dY writes whole rows.
        dyw.fill(0.0);
        for (oc, plane) in dyw.chunks_exact_mut(rows).enumerate() {
            if l.out_range(oc).is_empty() && !want_sum {
                continue;
            }
            let plane_sum = dy.plane_into(s, plan, b, oc, plane, want_sum, k);
            if want_sum {
                plane_sums[oc] = plane_sum;
            }
        }
        let p = s.out_pixels();
        let dy_plane = |oc: usize| -> &[f32] {
            match dy {
                Dy::Wide(all) => &all[(b * o + oc) * q + start..][..wide],
                Dy::Plain(plain) if in_place => &plain[(b * o + oc) * p..][..p],
                _ => &dyw[oc * rows..][..wide],
            }
        };
        let dy_stride = if in_place { s.out_w() } else { plan.wp };
        tap_dots(s, l, plan, xs, &dy_plane, dy_stride, dots, k);
    });
}

/// The dot products of one image's every active tap (into `dots`, in
/// `by_output`'s order) of its dY planes (`dy_plane(oc)`, rows `dy_stride`
/// apart on rows of whole vectors, wide otherwise) with its prepared input
/// planes `xs`.
#[allow(clippy::too_many_arguments)] // the image's operands and its output
fn tap_dots<'a>(
    s: &Conv2dShape,
    l: &SparseLayout,
    plan: &Plan,
    xs: &[f32],
    dy_plane: &dyn Fn(usize) -> &'a [f32],
    dy_stride: usize,
    dots: &mut [f32],
    k: Isa,
) {
    let (cg, og) = (s.group_in(), s.group_out());
    let plane_p = plan.plane();
    let rv = dot_row_vectors(s.out_w(), k);
    // When the image's input planes outgrow L1 (32 KB), they go a few
    // channels at a time (about 12 KB), each chunk meeting every output
    // channel while it sits in L1 beside their dY planes, instead of each
    // output channel reading all of them in turn. A tap's dot product is
    // its own whatever the order, so no bit changes.
    let chunk = if cg * plane_p <= 8192 {
        cg
    } else {
        (3072 / plane_p).clamp(1, cg)
    };
    for c0 in (0..cg).step_by(chunk) {
        let c1 = (c0 + chunk).min(cg);
        for oc in 0..s.out_channels {
            let r = l.out_range(oc);
            let taps = &l.by_output[r.clone()];
            // The taps of channels c0..c1 (sorted by channel).
            let lo = taps.partition_point(|t| t.ch < c0);
            let hi = taps.partition_point(|t| t.ch < c1);
            if lo == hi {
                continue;
            }
            let x_g = &xs[(oc / og) * cg * plane_p..][..cg * plane_p];
            let offs = &plan.fwd_offs[r.start + lo..r.start + hi];
            let d = &mut dots[r.start + lo..r.start + hi];
            if let Some(rv) = rv {
                let (ow, oh) = (s.out_w(), s.out_h());
                multi_dot_rows(dy_plane(oc), dy_stride, x_g, offs, d, plan.wp, ow, oh, rv);
            } else {
                multi_dot(dy_plane(oc), x_g, offs, d, k);
            }
        }
    }
}

/// Asks the CPU to bring `v` into the cache (no effect on results; nothing
/// off x86-64).
fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(v);
        let p = v.as_ptr().cast::<i8>();
        for off in (0..bytes).step_by(64) {
            // SAFETY: SSE is part of x86-64; a prefetch reads nothing into
            // the program and cannot fault, and p + off is inside v.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

thread_local! {
    /// One dY plane, contiguous, for [`plane_sum`].
    static PLANE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The sum of the (OH, OW) plane held in `rows` (rows `wp` floats apart),
/// taken as [`conv2d_backward_bias`] sums a plain plane, so the same bits.
fn plane_sum(rows: &[f32], (oh, ow): (usize, usize), wp: usize, k: Isa) -> f32 {
    with_scratch(&PLANE, oh * ow, |plane| {
        copy_rows(plane, ow, rows, wp, oh, ow, k);
        sum_lanes(plane)
    })
}
