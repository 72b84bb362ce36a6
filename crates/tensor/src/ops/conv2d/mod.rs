//! conv2d: geometry, the fast kernels (forward, for stride 1 with output
//! rows of whole vectors, by our own micro-kernel reading a padded copy of
//! the input; else by a direct wide-row kernel for stride 1 with no
//! padding or dilation, or with padding on 8 to 16 input channels, and
//! otherwise by im2col into packed panels and the same micro-kernel; the weight gradient by im2col and the same micro-kernel
//! (or a GEMM for layers of fewer than 16 output channels), the input
//! gradient of a padded stride-1 layer as a forward convolution and of
//! others by the micro-kernel (or a GEMM) and col2im; narrow stride-1
//! layers by the direct kernels of `sparse_conv2d/` with every tap active
//! ([`narrow_direct_backward`])), the
//! naive direct convolution kept as oracle, the autograd op, and the fused
//! conv2d → relu → max_pool2d op of a LeNet block.
//!
//! Layouts: input x is (B, C, H, W); weight w is (O, C/groups, KH, KW);
//! output y is (B, O, OH, OW). All contiguous, row-major.
//!
//! # How the fast kernels work
//!
//! For one image and one group g, im2col unrolls the input patches into a
//! matrix `cols` of shape (Cg·KH·KW, OH·OW), so that the convolution becomes
//! one matrix product with the group's weights viewed as a (O/g, Cg·KH·KW)
//! matrix (`packed.rs` writes `cols` straight into the panels its
//! micro-kernel reads):
//!
//! ```text
//! forward           y_b,g  = W_g · cols_b,g              (O/g, OH·OW)
//! backward weight   dW_g   = Σ_b dY_b,g · cols_b,gᵀ      (O/g, Cg·KH·KW)
//! backward input    dx_b,g = col2im(W_gᵀ · dY_b,g)       (Cg, H, W)
//! ```
//!
//! The batch is cut into chunks of [`images_per_chunk`] images, a pure
//! function of the shape. Chunks run in parallel on rayon when the whole op is
//! big enough ([`PARALLEL_MIN_FLOPS`], again a function of the shape only).
//! The weight gradient is the only reduction over the batch: each chunk
//! writes a partial dW and the partials are summed sequentially in chunk
//! order, so the result is bitwise the same for any number of threads.

//!
//! # Files
//!
//! * this file: work splitting, the autograd op (`Tensor::conv2d`,
//!   `Tensor::conv2d_relu_max_pool2d`), and evaluation's
//!   `Tensor::conv2d_then`. The geometry ([`Conv2dOptions`],
//!   [`Conv2dShape`], [`PoolOptions`]) lives in `ops/geometry.rs`, the
//!   scratch in `ops/scratch.rs`, the naive oracles in `ops/conv_naive.rs`
//!   (all re-exported here), shared with `sparse_conv2d/`, whose kernels
//!   this module calls for narrow layers (the dependency runs one way).
//! * `im2col.rs`: [`im2col`] and [`col2im`].
//! * `forward.rs`: [`conv2d_forward`], which picks the gathered product,
//!   the direct kernel or the packed product, and [`conv2d_forward_then`]
//!   with evaluation's epilogue (`ops/epilogue.rs`).
//! * `tile.rs`: the micro-kernel every product here runs on, an MR × NR
//!   tile in registers with A read through strides (AVX-512, AVX2,
//!   portable).
//! * `packed.rs`: the forward pass's product: weights packed once per
//!   call and im2col straight into panels.
//! * `gathered.rs`: the same product for stride-1 layers with B read from
//!   a padded copy of the input, no im2col (the same bits).
//! * `direct.rs`: the direct wide-row forward kernel (AVX-512, AVX2 +
//!   portable), and when it applies to a padded layer.
//! * `backward.rs`: the weight (and coactivation) and input gradients,
//!   and which kernel each layer takes.
//! * `backward_tiled.rs`: the weight gradient, and the strided layers'
//!   input gradient, on the micro-kernel with no GEMM library.
//! * `fused.rs`: the fused conv → relu → max-pool block
//!   ([`conv2d_relu_pool_forward`], [`conv2d_relu_pool_backward`]).

pub use crate::ops::geometry::{Conv2dOptions, Conv2dShape, PoolOptions};
pub use crate::ops::reduce::conv2d_backward_bias;
pub(crate) use crate::ops::scratch::{check_len, scratch_in};

use crate::gemm::{gemm, Mat};
use crate::isa::Isa;
use crate::ops::epilogue::{eval_output, BatchNormEval, Epilogue};
use crate::ops::relu_pool::{relu_max_pool_2x2_rows, WIDE_SLACK};
use rayon::prelude::*;
use std::cell::RefCell;

use crate::tensor::Tensor;

mod backward;
mod backward_tiled;
mod direct;
mod forward;
mod fused;
mod gathered;
mod im2col;
mod packed;
mod tile;

pub use crate::ops::conv_naive::{
    conv2d_backward_input_naive, conv2d_backward_weight_naive, conv2d_forward_naive,
    conv2d_relu_pool_naive,
};
pub use backward::{conv2d_backward_input, conv2d_backward_weight, conv2d_coactivation};
pub use direct::conv2d_forward_direct;
pub use forward::{conv2d_forward, conv2d_forward_then};
pub use fused::{conv2d_relu_pool_backward, conv2d_relu_pool_forward, narrow_direct_backward};
pub use im2col::{col2im, im2col};

use direct::{
    copy_planes, direct_applies, direct_padded_applies, direct_scratch_len, forward_direct,
    padded_shape,
};
use forward::{forward_image, forward_scratch_len};
use fused::with_full_layout;
use gathered::{forward_gathered, gathered_applies};
use im2col::{copy_short, im2col_strided};
use packed::{forward_image_packed, forward_packed, packed_applies, packed_scratch_len};

// ---------------------------------------------------------------------------
// Work splitting
// ---------------------------------------------------------------------------

/// A chunk holds enough images that its im2col matrix is about this many
/// columns wide (one image if a single image already has more). For the
/// LeNet's second conv (100 output pixels) that is 2 images, so batch 4
/// splits into two equal chunks; wider chunks measured no faster.
pub const CHUNK_COLUMNS: usize = 200;

/// Below this many forward flops an op runs on the calling thread: a rayon
/// fork/join costs a few microseconds, more than splitting tiny work saves.
pub const PARALLEL_MIN_FLOPS: usize = 1 << 20;

/// Images per chunk of work. A pure function of the shape (never of the
/// thread count), so chunked reductions are reproducible.
pub fn images_per_chunk(s: &Conv2dShape) -> usize {
    CHUNK_COLUMNS
        .div_ceil(s.out_pixels().max(1))
        .clamp(1, s.batch.max(1))
}

/// Whether to run the chunks in parallel; again only a function of the shape.
fn run_parallel(s: &Conv2dShape) -> bool {
    s.flops() >= PARALLEL_MIN_FLOPS && s.batch > images_per_chunk(s)
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
    if parallel {
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
    /// Per-thread scratch for im2col matrices, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` floats with unspecified contents.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    scratch_in(&SCRATCH, len, f)
}

// ---------------------------------------------------------------------------
// The op on the tape: forward runs `conv2d_forward` (direct or im2col +
// GEMM), backward `conv2d_backward_weight` and `conv2d_backward_input` (two
// GEMMs, or the direct kernels for narrow layers), skipping whichever
// gradient nobody needs (e.g. the input image's).
// ---------------------------------------------------------------------------

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

impl Tensor {
    /// 2-D convolution (PyTorch's cross-correlation) of x (B, C, H, W) with
    /// weight (O, C/groups, KH, KW) and an optional bias (O).
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: Conv2dOptions) -> Tensor {
        let s =
            Conv2dShape::new(self.shape(), weight.shape(), opts).unwrap_or_else(|e| panic!("{e}"));
        if let Some(b) = bias {
            assert_eq!(
                b.shape(),
                [s.out_channels],
                "conv2d: bias {:?} for {} output channels",
                b.shape(),
                s.out_channels
            );
        }
        let out_shape = s.output_shape();
        let mut y = crate::buffers::take(out_shape.iter().product());
        conv2d_forward(
            &s,
            &self.data(),
            &weight.data(),
            bias.map(|b| b.data()).as_deref().map(|v| &v[..]),
            &mut y,
        );
        let (x, w, b) = (self.clone(), weight.clone(), bias.cloned());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(y, &out_shape, &inputs, move |dy, grads| {
            if w.needs_grad() {
                let mut dw = crate::buffers::take(w.numel());
                conv2d_backward_weight(&s, &x.data(), dy, &mut dw);
                grads.add_owned(&w, dw);
            }
            if x.needs_grad() {
                let mut dx = crate::buffers::take(x.numel());
                conv2d_backward_input(&s, &w.data(), dy, &mut dx);
                grads.add_owned(&x, dx);
            }
            if let Some(b) = &b {
                grads.accumulate(b, |gb| {
                    let mut db = vec![0.0; s.out_channels];
                    conv2d_backward_bias(&s, dy, &mut db);
                    add_into(gb, &db);
                });
            }
        })
    }

    /// Evaluation's `conv2d` → batch norm (→ + residual) (→ relu) in one
    /// pass over the output ([`crate::ops::epilogue`]): bitwise the
    /// separate ops' output. Panics if the tape is recording.
    pub fn conv2d_then(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
        bn: &BatchNormEval,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Tensor {
        let s =
            Conv2dShape::new(self.shape(), weight.shape(), opts).unwrap_or_else(|e| panic!("{e}"));
        let (x, w, b) = (self.data(), weight.data(), bias.map(|b| b.data()));
        let b = b.as_deref().map(|v| &v[..]);
        eval_output(
            "conv2d_then",
            &s.output_shape(),
            bn,
            residual,
            relu,
            |y, e| {
                conv2d_forward_then(&s, &x, &w, b, y, Some(e));
            },
        )
    }

    /// `max_pool2d(relu(conv2d(x, weight, bias)))` as one op (see
    /// [`conv2d_relu_pool_forward`]): the same values and gradients, bit for
    /// bit (but for the bias gradient of narrow layers, equal to rounding:
    /// see [`narrow_direct_backward`]), without the two full-size
    /// intermediate tensors.
    pub fn conv2d_relu_max_pool2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
        pool: PoolOptions,
    ) -> Tensor {
        let s =
            Conv2dShape::new(self.shape(), weight.shape(), opts).unwrap_or_else(|e| panic!("{e}"));
        if let Some(b) = bias {
            assert_eq!(
                b.shape(),
                [s.out_channels],
                "conv2d_relu_max_pool2d: bias {:?} for {} output channels",
                b.shape(),
                s.out_channels
            );
        }
        let out_shape = pool.output_shape(&s);
        let n_out = out_shape.iter().product();
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        // Backward needs the argmaxes and the pooled values; find them and
        // keep a copy only if it will run.
        let tracked = crate::tape::is_recording() && inputs.iter().any(|t| t.needs_grad());
        // Both overwritten whole.
        let mut pooled = crate::buffers::take(n_out);
        let mut arg = crate::buffers::Recycled(if tracked {
            crate::buffers::take(n_out)
        } else {
            Vec::new()
        });
        conv2d_relu_pool_forward(
            &s,
            pool,
            &self.data(),
            &weight.data(),
            bias.map(|b| b.data()).as_deref().map(|v| &v[..]),
            &mut pooled,
            tracked.then_some(&mut arg[..]),
        );
        let saved = crate::buffers::Recycled::copy_of(if tracked { &pooled } else { &[] });
        let (x, w, b) = (self.clone(), weight.clone(), bias.cloned());
        Tensor::from_op(pooled, &out_shape, &inputs, move |dpooled, grads| {
            let mut dw = w.needs_grad().then(|| crate::buffers::take(w.numel()));
            let mut db = b
                .as_ref()
                .filter(|b| b.needs_grad())
                .map(|_| vec![0.0; s.out_channels]);
            let mut dx = x.needs_grad().then(|| crate::buffers::take(x.numel()));
            conv2d_relu_pool_backward(
                &s,
                pool,
                &x.data(),
                &w.data(),
                &saved,
                &arg,
                dpooled,
                dw.as_deref_mut(),
                db.as_deref_mut(),
                dx.as_deref_mut(),
            );
            if let Some(dw) = dw {
                grads.add_owned(&w, dw);
            }
            if let (Some(b), Some(db)) = (&b, db) {
                // Added into zeros, as conv2d's op does (so a −0 sum
                // becomes +0 in both).
                grads.accumulate(b, |gb| add_into(gb, &db));
            }
            if let Some(dx) = dx {
                grads.add_owned(&x, dx);
            }
        })
    }
}
