//! Sparse conv2d for masked weights: a direct convolution that visits only
//! the active taps of each kernel. Holds the tap lists ([`SparseLayout`]),
//! the slice-level kernels (forward, backward-input, backward-weight at the
//! active taps only), the SIMD inner loops with their portable twins, the
//! autograd op [`conv2d_sparse`], and the fused sparse conv → relu →
//! max-pool ([`conv2d_sparse_relu_max_pool2d`]) with its slice kernels. The
//! oracle is the dense naive convolution of `conv2d/` run on the masked
//! weight ([`SparseLayout::masked_weight`]).
//!
//! Layouts are those of `conv2d/`: x (B, C, H, W), w (O, C/groups, KH, KW),
//! y (B, O, OH, OW). The weights stay in the dense tensor; the layout only
//! says which of them count.
//!
//! # The "wide" trick (stride 1)
//!
//! Pad the input planes (only if the convolution pads) to Hp × Wp and index
//! the output with the input's row length Wp instead of OW: output pixel
//! (oy, ox) sits at p = oy·Wp + ox, and tap (c, ki, kj) reads the padded input
//! at p + off, with off = c·Hp·Wp + ki·dy·Wp + kj·dx the same for every pixel.
//! So one output plane of channel o is
//!
//! ```text
//! yw[p] = bias[o] + Σ_{active taps t of o} w_t · xp[p + off_t],  p < (OH−1)·Wp + OW
//! ```
//!
//! one long contiguous loop instead of OH short rows (10 floats in the LeNet's
//! second conv), at the price of Wp − OW wasted columns per row, dropped when
//! the rows are copied out. The inner loop keeps a block of up to 12 AVX
//! registers of outputs and streams the taps through it: one load and one
//! FMA per tap and vector, and one store per output.
//!
//! The input gradient is the same loop on the other side. Lay dy out with
//! the same row length Wp, its Wp − OW gap columns zero, and (KH−1)·dy zero
//! rows above and below (Hq = OH + 2(KH−1)·dy rows), after (KW−1)·dx leading
//! zeros: the gap after a row is both its right border and the next row's
//! left border. Each input plane c
//! then gathers from the (o, tap) entries that read it, the kernel flipped,
//! off = o·Q + (KH−1−ki)·dy·Wp + (KW−1−kj)·dx (Q floats per dy plane), and
//! comes out directly in the padded input's layout, Hp·Wp long. The weight
//! gradient of an active tap is a dot product of dy (laid out wide, with zeros
//! in the Wp − OW gap columns) with the shifted input. Each gradient task lays
//! out the dy planes it reads in its own scratch (`Dy`): copied from a plain
//! dy, or, in the fused op, rebuilt from the pooled gradient, so that no
//! full-size dy is ever written.
//!
//! A stride s > 1 becomes the same stride-1 loops on phase planes. Split the
//! padded input into its s·s phases, phase (a, b) holding the pixels
//! (s·i + a, s·j + b); a tap at padded offset (r, q) = (ki·dy, kj·dx) reads
//! phase (r mod s, q mod s) shifted by (r div s, q div s), so output pixel
//! (oy, ox) = p is again `p + off_t` in one long row of the phase planes'
//! row length (`layout::Plan`). The input gradient gathers each phase
//! plane from the taps of that phase, and merges the phases back into dx.
//!
//! # Work splitting and determinism
//!
//! Forward and input gradient split the batch into chunks of images, a pure
//! function of the shape and the number of active taps; images are
//! independent, so nothing is reduced across chunks. The weight gradient's
//! tasks are images too: each writes its image's dot product for every
//! active tap (its input read once, from cache), and a block of images is
//! then added into dW in image order, each tap one running sum, so it is
//! bitwise the same for any thread count.
//! Small problems run on the calling thread ([`SPARSE_PARALLEL_MIN_FLOPS`]).
//!
//! # Files
//!
//! * `layout.rs`: [`SparseLayout`], the tap lists built once per mask, and
//!   the per-input-size offsets of the wide trick.
//! * `loops.rs`: the inner loop of forward and input gradient,
//!   `gather_fma` (portable, AVX2 and AVX-512).
//! * `dots.rs`: the inner loop of the weight gradient, `multi_dot`
//!   (portable, AVX2 and AVX-512).
//! * `rows.rs`: the gather on rows of whole vectors (the ResNets' 32, 16
//!   and 8), `gather_fma_rows`, written straight into compact rows with no
//!   wide rows to copy out (AVX2 and AVX-512; the portable path keeps the
//!   wide loops).
//! * `row_dots.rs`: the weight gradient's dots on such rows,
//!   `multi_dot_rows`, over the rows' values only.
//! * `planes.rs`: the padded and phase-split planes the wide loops read,
//!   and the row copies in and out of the wide layouts (portable, AVX2
//!   and AVX-512).
//! * `columns.rs`: a stride-2 row split into its even and odd columns and
//!   merged back, for `planes.rs` (portable, AVX2 and AVX-512).
//! * `forward.rs`: [`sparse_conv2d_forward`], and [`sparse_conv2d_forward_then`]
//!   with evaluation's epilogue (`ops/epilogue.rs`).
//! * `backward.rs`: [`sparse_conv2d_backward_input`] and
//!   [`sparse_conv2d_backward_weight`], both at once for the autograd op
//!   (image by image), and `Dy`, where their tasks find dY.
//! * `fused.rs`: the fused conv → relu → max-pool op
//!   ([`conv2d_sparse_relu_max_pool2d`]) and its slice kernels.
//! * this file: the crossover rule, work splitting and scratch shared by
//!   all of them (with the active weights of a call,
//!   `with_active_weights`), the autograd op [`conv2d_sparse`], and
//!   evaluation's [`conv2d_sparse_then`].
//!
//! Shapes come from `ops/geometry.rs`, scratch from `ops/scratch.rs`, and
//! the oracle from `ops/conv_naive.rs`; nothing here depends on the dense
//! `conv2d/`, which calls these kernels for narrow layers.

use crate::isa::Isa;
use crate::ops::epilogue::{eval_output, BatchNormEval};
use crate::ops::geometry::{Conv2dOptions, Conv2dShape, PoolOptions};
use crate::ops::reduce::{conv2d_backward_bias, sum_lanes};
use crate::ops::relu_pool::{relu_max_pool_2x2_rows, relu_pool_grad_2x2_rows, WIDE_SLACK};
use crate::ops::scratch::{check_len, scratch_in as with_scratch};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

mod backward;
mod columns;
mod dots;
mod forward;
mod fused;
mod layout;
mod loops;
mod planes;
mod row_dots;
mod rows;

pub use backward::{sparse_conv2d_backward_input, sparse_conv2d_backward_weight};
pub use forward::{sparse_conv2d_forward, sparse_conv2d_forward_then};
pub use fused::{
    conv2d_sparse_relu_max_pool2d, conv2d_sparse_relu_max_pool2d_with,
    sparse_conv2d_relu_pool_backward, sparse_conv2d_relu_pool_backward_with,
    sparse_conv2d_relu_pool_forward, sparse_conv2d_relu_pool_naive, BiasSum,
};
pub use layout::SparseLayout;

use backward::{backward_both_wide, backward_input_wide, backward_weight_wide, Dy, PooledGrad};
use dots::multi_dot;
use layout::Plan;
use loops::gather_fma;
use planes::{
    copy_rows, needs_planes, pad_planes, prepare_planes, unprepare_plane, with_prepared_planes,
};
use row_dots::{dot_row_vectors, multi_dot_rows};
use rows::{gather_fma_rows, row_vectors};

/// The density (active taps / all taps) below which these kernels beat the
/// dense ones on the masked weight for a training step (forward and both
/// gradients), for a layer of `weights` weights per group, `strided` or
/// not: a line in log₂(weights), lower by 0.1 for a strided layer, fitted
/// to the break-evens measured at batch 128 on ResNet-20's 3×3 layers
/// (`RESNET_CONV_CROSSOVER=1 cargo bench --bench resnet_conv`, two runs
/// against the dense kernels: the gathered product forward and the tiled
/// weight gradient; docs/sparse-kernels.md) and on the LeNet's second conv
/// at batch 4 and 64:
///
/// ```text
/// layer (O·Cg·KH·KW weights)       measured break-even   this rule
/// LeNet conv2 16·6·5·5  (2,400)    0.68 – 1.0            0.66
/// 16→16 3×3, 32×32      (2,304)    0.61 – 0.63           0.66
/// 16→32 3×3 stride 2    (4,608)    0.49 – 0.59           0.50
/// 32→32 3×3, 16×16      (9,216)    0.53 – 0.61           0.54
/// 32→64 3×3 stride 2   (18,432)    0.34                  0.38
/// 64→64 3×3, 8×8       (36,864)    0.41                  0.42
/// ```
///
/// The gain falls as layers grow: the dense kernels reuse each loaded
/// input across many output channels, while the sparse loops reuse nothing
/// across output channels. A strided layer crosses lower: the sparse loops
/// run on its phase planes, a quarter of the pixels each, and the dense
/// product is as fast on it as on any other. The break-evens move with the
/// machine's load and with the dense kernels (before the dense ResNet
/// layers got their own kernels they were 0.66 to 0.95 for the smaller
/// layers); the rule sits within 0.05 of every range. Since the weight
/// gradient goes by images, one run measured 0.51, 0.51, 0.48, 0.30 and
/// 0.38 for the five ResNet layers: the rule is 0.15 high on 16→16 and
/// 0.08 on 32→64, where a layer in between runs sparse a little slower
/// than dense would. Every density ERK gives ResNet-20 at 10 % or 5 % lies
/// well below. The result is clamped to [0.2, 1].
pub fn sparse_crossover_density(weights: usize, strided: bool) -> f64 {
    let line = 1.33 - 0.06 * (weights.max(1) as f64).log2();
    (line - if strided { 0.1 } else { 0.0 }).clamp(0.2, 1.0)
}

/// Output channels per group up to which the sparse kernels are used at
/// every density, 100 % included: the im2col + GEMM backward multiplies by a
/// matrix with one row per output channel, and the GEMM's 16-row blocks
/// waste most of their work on a few rows; the LeNet's first conv (6 output
/// channels) trained 1.7× to 1.95× faster on the sparse kernels at 100 %.
/// The dense conv now takes such a layer's gradients from these same kernels
/// ([`narrow_direct_backward`](crate::ops::conv2d::narrow_direct_backward)),
/// so at 100 % the two paths differ only in their forward kernel.
pub const SPARSE_ALWAYS_MAX_OUT_CHANNELS: usize = 8;

/// Whether a layer with this weight shape, options and density runs faster
/// on the sparse kernels than on the dense ones, for a training step: narrow
/// layers always, others below [`sparse_crossover_density`].
pub fn sparse_pays(weight_shape: [usize; 4], opts: Conv2dOptions, density: f64) -> bool {
    let g = opts.groups.max(1);
    let per_group = weight_shape.iter().product::<usize>() / g;
    let strided = opts.stride != (1, 1);
    weight_shape[0] / g <= SPARSE_ALWAYS_MAX_OUT_CHANNELS
        || density < sparse_crossover_density(per_group, strided)
}

// ---------------------------------------------------------------------------
// Work splitting and scratch
// ---------------------------------------------------------------------------

/// A chunk of images holds at least this many sparse flops, so that a rayon
/// task is worth its fork/join (a few microseconds).
const TASK_FLOPS: usize = 1 << 18;

/// Forward flops over the active taps only (2 per multiply-add).
fn sparse_flops(s: &Conv2dShape, l: &SparseLayout) -> usize {
    2 * s.batch * l.nnz() * s.out_pixels()
}

/// Images per chunk: a pure function of the shape and the tap count. At
/// least two chunks (for batches of two or more), so that a small batch
/// still gives the pool's second thread something to do.
fn images_per_chunk(s: &Conv2dShape, l: &SparseLayout) -> usize {
    let per_image = (2 * l.nnz() * s.out_pixels()).max(1);
    TASK_FLOPS
        .div_ceil(per_image)
        .clamp(1, s.batch.div_ceil(2).max(1))
}

/// Sparse ops of at least this many flops run on the pool. Lower than the
/// dense kernels' [`PARALLEL_MIN_FLOPS`](crate::ops::conv2d::PARALLEL_MIN_FLOPS): the sparse LeNet convolutions at
/// batch 4 (2–3·10⁵ flops) gain from the second thread once the training
/// loop keeps it awake ([`crate::awake`]).
pub const SPARSE_PARALLEL_MIN_FLOPS: usize = 1 << 16;

fn run_parallel(s: &Conv2dShape, l: &SparseLayout) -> bool {
    sparse_flops(s, l) >= SPARSE_PARALLEL_MIN_FLOPS
}

/// Calls `f(chunk_index, chunk)` for each `chunk_len`-sized piece of `data`,
/// in parallel if `parallel`.
fn for_each_chunk<F>(data: &mut [f32], chunk_len: usize, parallel: bool, f: F)
where
    F: Fn(usize, &mut [f32]) + Send + Sync,
{
    if data.is_empty() || chunk_len == 0 {
        return;
    }
    if parallel && data.len() > chunk_len {
        data.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

thread_local! {
    /// Per-task scratch (padded planes, wide rows), reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Scratch of the calling thread for the weight gradient's block of
    /// per-image dot products, separate so tasks run on this thread can
    /// still take `SCRATCH`.
    static BATCH_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A task's dY planes laid out wide (the input gradient, and both
    /// gradients at once), separate so the kernels it calls can still
    /// take `SCRATCH`.
    static DY_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's copy of a call's active weights
    /// ([`with_active_weights`]).
    static WEIGHTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the active weights `w[wi]`, in the order of `wis` (a tap
/// list's): read once per call, so that the gathers of every image and
/// channel find a channel's weights side by side. Read once per image and
/// channel instead, they took 6% of sparse evaluation.
fn with_active_weights<R>(
    w: &[f32],
    wis: impl ExactSizeIterator<Item = usize>,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    with_scratch(&WEIGHTS, wis.len(), |buf| {
        for (v, wi) in buf.iter_mut().zip(wis) {
            *v = w[wi];
        }
        f(buf)
    })
}

// ---------------------------------------------------------------------------
// The op on the tape
// ---------------------------------------------------------------------------

/// Evaluation's [`conv2d_sparse`] → batch norm (→ + residual) (→ relu) in
/// one pass over the output ([`crate::ops::epilogue`]): bitwise the
/// separate ops' output. Panics if the tape is recording.
pub fn conv2d_sparse_then(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    layout: &Rc<SparseLayout>,
    bn: &BatchNormEval,
    residual: Option<&Tensor>,
    relu: bool,
) -> Tensor {
    let s = Conv2dShape::new(x.shape(), w.shape(), layout.opts)
        .unwrap_or_else(|e| panic!("conv2d_sparse_then: {e}"));
    let (xd, wd, b) = (x.data(), w.data(), bias.map(|b| b.data()));
    let b = b.as_deref().map(|v| &v[..]);
    let out_shape = s.output_shape();
    eval_output(
        "conv2d_sparse_then",
        &out_shape,
        bn,
        residual,
        relu,
        |y, e| {
            sparse_conv2d_forward_then(&s, layout, &xd, &wd, b, y, Some(e), Isa::best());
        },
    )
}

/// y = conv2d(x, w ⊙ mask) + bias, computed only over active taps. Autograd op: backward gives dx (full) and
/// dw ONLY at active positions (exactly 0.0 elsewhere), and dbias. Panics with a clear message on shape mismatch, like conv2d.
///
/// The convolution options (stride, padding, dilation, groups) are the
/// layout's.
pub fn conv2d_sparse(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    layout: &Rc<SparseLayout>,
) -> Tensor {
    assert_eq!(
        w.shape(),
        layout.weight_shape,
        "conv2d_sparse: weight {:?} but the layout was built for {:?}",
        w.shape(),
        layout.weight_shape
    );
    let s = Conv2dShape::new(x.shape(), w.shape(), layout.opts)
        .unwrap_or_else(|e| panic!("conv2d_sparse: {e}"));
    if let Some(b) = bias {
        assert_eq!(
            b.shape(),
            [s.out_channels],
            "conv2d_sparse: bias {:?} for {} output channels",
            b.shape(),
            s.out_channels
        );
    }
    let out_shape = s.output_shape();
    let mut y = crate::buffers::take(out_shape.iter().product());
    sparse_conv2d_forward(
        &s,
        layout,
        &x.data(),
        &w.data(),
        bias.map(|b| b.data()).as_deref().map(|v| &v[..]),
        &mut y,
        Isa::best(),
    );
    let (xc, wc, bc, l) = (x.clone(), w.clone(), bias.cloned(), layout.clone());
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Tensor::from_op(y, &out_shape, &inputs, move |dy, grads| {
        let k = Isa::best();
        if wc.needs_grad() && xc.needs_grad() {
            // Both gradients, image by image, from one wide layout of
            // each image's dY.
            let plan = l.plan(&s);
            let (mut dw, mut dx) = (
                crate::buffers::take(wc.numel()),
                crate::buffers::take(xc.numel()),
            );
            let (x, w) = (&xc.data(), &wc.data());
            backward_both_wide(&s, &l, &plan, x, w, dy, &mut dw, &mut dx, k);
            grads.add_owned(&wc, dw);
            grads.add_owned(&xc, dx);
        } else if wc.needs_grad() {
            let mut dw = crate::buffers::take(wc.numel());
            sparse_conv2d_backward_weight(&s, &l, &xc.data(), dy, &mut dw, k);
            grads.add_owned(&wc, dw);
        } else if xc.needs_grad() {
            let mut dx = crate::buffers::take(xc.numel());
            sparse_conv2d_backward_input(&s, &l, &wc.data(), dy, &mut dx, k);
            grads.add_owned(&xc, dx);
        }
        if let Some(b) = &bc {
            grads.accumulate(b, |gb| {
                let mut db = vec![0.0; s.out_channels];
                conv2d_backward_bias(&s, dy, &mut db);
                for (g, d) in gb.iter_mut().zip(&db) {
                    *g += d;
                }
            });
        }
    })
}
