//! conv2d: geometry, the fast kernels (forward by a direct wide-row kernel
//! for stride 1 and by im2col + GEMM otherwise; backward as two GEMMs), the
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
//! one GEMM with the group's weights viewed as a (O/g, Cg·KH·KW) matrix:
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

/// Per-axis options of a convolution; each pair is (y, x), i.e. (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

/// Everything a conv2d kernel needs to know about its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub opts: Conv2dOptions,
}

impl Conv2dShape {
    /// Checks that an input of shape `input` (B, C, H, W) and a weight of shape
    /// `weight` (O, C/groups, KH, KW) fit together under `opts`.
    pub fn new(input: &[usize], weight: &[usize], opts: Conv2dOptions) -> Result<Self, String> {
        if input.len() != 4 || weight.len() != 4 {
            return Err(format!(
                "conv2d: input must be (B, C, H, W) and weight (O, C/groups, KH, KW); got input {input:?}, weight {weight:?}"
            ));
        }
        let g = opts.groups;
        if g == 0
            || opts.stride.0 == 0
            || opts.stride.1 == 0
            || opts.dilation.0 == 0
            || opts.dilation.1 == 0
        {
            return Err(format!(
                "conv2d: groups, stride and dilation must be positive; got {opts:?}"
            ));
        }
        let s = Conv2dShape {
            batch: input[0],
            in_channels: input[1],
            in_h: input[2],
            in_w: input[3],
            out_channels: weight[0],
            kernel_h: weight[2],
            kernel_w: weight[3],
            opts,
        };
        if !s.in_channels.is_multiple_of(g)
            || !s.out_channels.is_multiple_of(g)
            || weight[1] * g != s.in_channels
        {
            return Err(format!(
                "conv2d: with groups={g}, input channels ({}) and output channels ({}) must divide by groups and weight dim 1 must be C/groups; got input {input:?}, weight {weight:?}",
                s.in_channels, s.out_channels
            ));
        }
        let eff_h = opts.dilation.0 * (s.kernel_h.max(1) - 1) + 1;
        let eff_w = opts.dilation.1 * (s.kernel_w.max(1) - 1) + 1;
        if s.kernel_h == 0
            || s.kernel_w == 0
            || s.in_h + 2 * opts.padding.0 < eff_h
            || s.in_w + 2 * opts.padding.1 < eff_w
        {
            return Err(format!(
                "conv2d: kernel {}x{} (dilated {eff_h}x{eff_w}) does not fit the padded input {}x{}; input {input:?}, weight {weight:?}, {opts:?}",
                s.kernel_h, s.kernel_w, s.in_h + 2 * opts.padding.0, s.in_w + 2 * opts.padding.1
            ));
        }
        Ok(s)
    }

    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.opts.padding.0 - self.opts.dilation.0 * (self.kernel_h - 1) - 1)
            / self.opts.stride.0
            + 1
    }
    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.opts.padding.1 - self.opts.dilation.1 * (self.kernel_w - 1) - 1)
            / self.opts.stride.1
            + 1
    }
    /// Input channels seen by one output channel (C / groups).
    pub fn group_in(&self) -> usize {
        self.in_channels / self.opts.groups
    }
    /// Output channels per group (O / groups).
    pub fn group_out(&self) -> usize {
        self.out_channels / self.opts.groups
    }
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.in_channels, self.in_h, self.in_w]
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.group_in(),
            self.kernel_h,
            self.kernel_w,
        ]
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_h(), self.out_w()]
    }
    /// Output pixels per channel of one image (OH·OW): the columns of one
    /// image's im2col matrix.
    pub fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Rows of one group's im2col matrix (C/groups · KH · KW): the length of
    /// one output channel's dot product.
    pub fn col_rows(&self) -> usize {
        self.group_in() * self.kernel_h * self.kernel_w
    }
    /// Floating-point operations of the forward pass (2 per multiply-add,
    /// bias not counted). Each of the two backward GEMMs costs the same.
    pub fn flops(&self) -> usize {
        2 * self.batch * self.out_channels * self.col_rows() * self.out_pixels()
    }
}

use crate::gemm::{gemm, Mat};
use crate::ops::relu_pool::{relu_max_pool_2x2_rows, WIDE_SLACK};
use crate::ops::sparse_conv2d::KernelChoice;
use rayon::prelude::*;
use std::cell::RefCell;

use crate::tensor::Tensor;

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

/// Runs `f` on `len` floats of the thread-local buffer `key`, grown as
/// needed and reused across calls; contents unspecified.
pub(crate) fn scratch_in<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        // Re-entered on this thread: fall back to a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

pub(crate) fn check_len(op: &str, what: &str, expected: usize, actual: usize) {
    assert_eq!(
        expected, actual,
        "{op}: {what} should have {expected} elements, got {actual}"
    );
}

// ---------------------------------------------------------------------------
// im2col / col2im
// ---------------------------------------------------------------------------

/// The output positions `o` in `0..out` whose input coordinate
/// `o·stride + k_off − pad` lies inside `0..len`, as a range.
fn valid_range(out: usize, len: usize, stride: usize, k_off: usize, pad: usize) -> (usize, usize) {
    // o·stride ≥ pad − k_off
    let lo = pad.saturating_sub(k_off).div_ceil(stride);
    // o·stride < len + pad − k_off
    let hi = (len + pad).saturating_sub(k_off).div_ceil(stride);
    let hi = hi.min(out);
    (lo.min(hi), hi)
}

/// `dst.copy_from_slice(src)` for the short rows of im2col (often 10 to 28
/// floats). `copy_from_slice` of a run-time length calls `memmove`, whose call
/// overhead dominated im2col in profiles; fixed 8-float copies are inlined.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    if n < 8 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
        return;
    }
    let mut i = 0;
    while i + 8 <= n {
        dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
        i += 8;
    }
    if i < n {
        // The last 8, overlapping what was already copied.
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    }
}

/// im2col for one image and one group.
///
/// `x` is the group's slice of one image, (C/groups, H, W); for image b and
/// group g that is `x[(b·C + g·Cg)·H·W ..][.. Cg·H·W]`. `cols` is
/// (Cg·KH·KW, OH·OW) row-major: row `(c·KH + ki)·KW + kj`, column `oy·OW + ox`
/// holds `x[c, oy·sy + ki·dy − py, ox·sx + kj·dx − px]`, or 0 where that
/// falls in the padding.
pub fn im2col(s: &Conv2dShape, x: &[f32], cols: &mut [f32]) {
    check_len(
        "im2col",
        "x (one image, one group)",
        s.group_in() * s.in_h * s.in_w,
        x.len(),
    );
    check_len("im2col", "cols", s.col_rows() * s.out_pixels(), cols.len());
    im2col_strided(s, x, cols, s.out_pixels());
}

/// [`im2col`] writing row r of the matrix at `cols[r·ld ..][.. OH·OW]`, so
/// that several images can sit side by side in one wide matrix.
fn im2col_strided(s: &Conv2dShape, x: &[f32], cols: &mut [f32], ld: usize) {
    let (h, w, oh, ow) = (s.in_h, s.in_w, s.out_h(), s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy, dx) = s.opts.dilation;
    let p = oh * ow;
    let mut r = 0;
    for c in 0..s.group_in() {
        let plane = &x[c * h * w..(c + 1) * h * w]; // (H, W)
        for ki in 0..s.kernel_h {
            // Output rows lo..hi read inside the input; the rest are padding.
            let (lo, hi) = valid_range(oh, h, sy, ki * dy, py);
            for kj in 0..s.kernel_w {
                let (ox0, ox1) = valid_range(ow, w, sx, kj * dx, px);
                let row = &mut cols[r * ld..r * ld + p]; // (rows, OW)
                r += 1;
                row[..lo * ow].fill(0.0);
                row[hi * ow..].fill(0.0);
                for j in lo..hi {
                    let iy = j * sy + ki * dy - py;
                    let src = &plane[iy * w..(iy + 1) * w];
                    let dst = &mut row[j * ow..(j + 1) * ow];
                    dst[..ox0].fill(0.0);
                    dst[ox1..].fill(0.0);
                    if ox0 == ox1 {
                        continue;
                    }
                    // Input column of output column ox0.
                    let ix0 = ox0 * sx + kj * dx - px;
                    if sx == 1 {
                        copy_short(&mut dst[ox0..ox1], &src[ix0..ix0 + (ox1 - ox0)]);
                    } else {
                        for (d, s) in dst[ox0..ox1].iter_mut().zip(src[ix0..].iter().step_by(sx)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// col2im for one image and one group: the adjoint of [`im2col`]. ADDS each
/// entry of `cols` (Cg·KH·KW, OH·OW) into the input position it was read
/// from; entries that came from padding are dropped. `dx` is the group's
/// slice of one image, (C/groups, H, W).
pub fn col2im(s: &Conv2dShape, cols: &[f32], dx: &mut [f32]) {
    check_len("col2im", "cols", s.col_rows() * s.out_pixels(), cols.len());
    check_len(
        "col2im",
        "dx (one image, one group)",
        s.group_in() * s.in_h * s.in_w,
        dx.len(),
    );
    let (h, w, oh, ow) = (s.in_h, s.in_w, s.out_h(), s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy, dxl) = s.opts.dilation;
    let p = oh * ow;
    let mut r = 0;
    for c in 0..s.group_in() {
        let plane = &mut dx[c * h * w..(c + 1) * h * w]; // (H, W)
        for ki in 0..s.kernel_h {
            let (oy0, oy1) = valid_range(oh, h, sy, ki * dy, py);
            for kj in 0..s.kernel_w {
                let (ox0, ox1) = valid_range(ow, w, sx, kj * dxl, px);
                let row = &cols[r * p..(r + 1) * p]; // (OH, OW)
                r += 1;
                if ox0 == ox1 {
                    continue;
                }
                for oy in oy0..oy1 {
                    let iy = oy * sy + ki * dy - py;
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let src = &row[oy * ow + ox0..oy * ow + ox1];
                    let ix0 = ox0 * sx + kj * dxl - px;
                    if sx == 1 {
                        for (d, v) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[ix0..].iter_mut().step_by(sx).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

/// y = conv(x, w) + bias (PyTorch conv2d: cross-correlation). Overwrites y.
/// x is (B, C, H, W), w is (O, C/groups, KH, KW), bias is (O), y is (B, O, OH, OW).
pub fn conv2d_forward(s: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let op = "conv2d_forward";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "y", s.output_shape().iter().product(), y.len());
    if let Some(b) = bias {
        check_len(op, "bias", s.out_channels, b.len());
    }
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let ipc = images_per_chunk(s);
    for_each_chunk(y, ipc * o * p, run_parallel(s), |chunk, y_chunk| {
        // y_chunk is (nb, O, P), images chunk·ipc ..
        with_scratch(forward_scratch_len(s), |scratch| {
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let b = chunk * ipc + i;
                forward_image(s, &x[b * c * hw..][..c * hw], w, bias, scratch, y_b);
            }
        });
    });
}

/// Scratch floats [`forward_image`] needs: an im2col matrix, or the direct
/// path's buffers.
fn forward_scratch_len(s: &Conv2dShape) -> usize {
    let gemm_path = s.col_rows() * s.out_pixels();
    if direct_applies(s) {
        gemm_path.max(direct_scratch_len(s))
    } else {
        gemm_path
    }
}

/// The forward pass of one image, x_b (C, H, W) → y_b (O, OH, OW), group by
/// group: by the direct kernel when it applies (stride 1, no padding or
/// dilation: both LeNet convolutions), else im2col into `cols` and
/// y_g = W_g · cols + bias by GEMM. `scratch` holds
/// [`forward_scratch_len`] floats.
fn forward_image(
    s: &Conv2dShape,
    x_b: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    scratch: &mut [f32],
    y_b: &mut [f32],
) {
    let (hw, p) = (s.in_h * s.in_w, s.out_pixels());
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let direct = direct_applies(s);
    for g in 0..s.opts.groups {
        let x_bg = &x_b[g * cg * hw..][..cg * hw]; // (Cg, H, W)
        let w_g = &w[g * og * k..(g + 1) * og * k]; // (O/g, K)
        let bias_g = bias.map(|b| &b[g * og..(g + 1) * og]);
        let y_bg = &mut y_b[g * og * p..(g + 1) * og * p]; // (O/g, P)
        if direct {
            let mut emit = copy_planes(s, y_bg);
            forward_direct(s, x_bg, w_g, bias_g, scratch, Kernel::best(), &mut emit);
            continue;
        }
        let cols = &mut scratch[..k * p];
        im2col_strided(s, x_bg, cols, p); // (K, P)
                                          // The bias goes in as C with beta = 1, so the GEMM adds it.
        let beta = match bias_g {
            Some(bias_g) => {
                for (row, &bv) in y_bg.chunks_mut(p).zip(bias_g) {
                    row.fill(bv);
                }
                1.0
            }
            None => 0.0,
        };
        let w_g = Mat::row_major(w_g, og, k);
        gemm(1.0, w_g, Mat::row_major(cols, k, p), beta, y_bg, p);
    }
}

// ---------------------------------------------------------------------------
// Direct forward, stride 1: "wide rows"
// ---------------------------------------------------------------------------
//
// With stride 1 and no padding, index the output by the input's row length
// W instead of OW: output pixel (oy, ox) sits at q = oy·W + ox, and kernel
// tap t = (c, ki, kj) reads x at q + off_t, off_t = c·H·W + ki·W + kj, the
// same offset for every pixel. So, per output channel o,
//
// ```text
// yw[o, q] = bias[o] + Σ_t w[o, t] · x[q + off_t],   q < L = (OH − 1)·W + OW
// ```
//
// is one long contiguous loop per tap, and the W − OW columns at the end of
// each wide row are junk, dropped when the rows are copied out. The kernel
// keeps a block of DIRECT_CO channels × DIRECT_PX pixels in registers and
// streams the taps through it: per tap, two loads of x and DIRECT_CO
// broadcast weights feed 2·DIRECT_CO vector FMAs. No im2col matrix and no
// GEMM packing: on the LeNet shapes the GEMM path spent more time copying
// (im2col, then matrixmultiply's packing of it) than multiplying, and its
// 16-row micro-kernel wasted 10 of 16 rows on conv1's 6 output channels.
//
// The sum runs in the order of the naive oracle (bias, then taps in (c, ki,
// kj) order). The AVX2 kernel fuses each multiply-add (one rounding), the
// portable one rounds twice; both are tested against the oracle.

/// Output channels per register block.
const DIRECT_CO: usize = 6;
/// Pixels per register block (two 8-lane vectors).
const DIRECT_PX: usize = 16;

/// Which inner loop the direct kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA (x86-64 only; callers check the CPU first).
    Avx2Fma,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernel::Avx2Fma;
            }
        }
        Kernel::Portable
    }
}

/// Whether the direct kernel handles this geometry.
fn direct_applies(s: &Conv2dShape) -> bool {
    s.opts.stride == (1, 1) && s.opts.dilation == (1, 1) && s.opts.padding == (0, 0)
}

/// Wide output length L, rounded up to whole pixel blocks.
fn direct_wide_len(s: &Conv2dShape) -> usize {
    ((s.out_h() - 1) * s.in_w + s.out_w()).div_ceil(DIRECT_PX) * DIRECT_PX
}

/// Scratch of [`forward_direct`]: the padded input, the weights in tap-major
/// blocks, and one block of wide output rows.
fn direct_scratch_len(s: &Conv2dShape) -> usize {
    let k = s.col_rows();
    let blocks = s.group_out().div_ceil(DIRECT_CO);
    s.group_in() * s.in_h * s.in_w
        + DIRECT_PX
        + blocks * k * DIRECT_CO
        + DIRECT_CO * direct_wide_len(s)
}

/// y_g = conv(x_g, w_g) + bias_g for one image and one group by wide rows
/// (see above). x_bg is (Cg, H, W), w_g is (O/g, Cg·KH·KW). Each output
/// channel o's plane is handed to `emit(o, rows)` as wide rows of W floats
/// (`rows[oy·W + ox]`, at least (OH−1)·W + OW of them, junk past OW in each
/// row): [`copy_planes`] copies them out, the fused block relu-pools them
/// in place. Needs [`direct_applies`].
fn forward_direct(
    s: &Conv2dShape,
    x_bg: &[f32],
    w_g: &[f32],
    bias_g: Option<&[f32]>,
    scratch: &mut [f32],
    kernel: Kernel,
    emit: &mut dyn FnMut(usize, &[f32]),
) {
    let (h, w) = (s.in_h, s.in_w);
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let lw = direct_wide_len(s);
    let blocks = og.div_ceil(DIRECT_CO);
    let (xp, rest) = scratch.split_at_mut(cg * h * w + DIRECT_PX);
    let (wt, rest) = rest.split_at_mut(blocks * k * DIRECT_CO);
    let yw = rest; // DIRECT_CO·lw floats, then any slack the caller gave
                   // x with DIRECT_PX zeros after it: the last pixel block reads past L.
    xp[..cg * h * w].copy_from_slice(x_bg);
    xp[cg * h * w..].fill(0.0);
    // Weights tap-major per block of channels, wt[block][t][o], zeros for
    // the channels past O/g in the last block.
    for (blk, wb) in wt.chunks_mut(k * DIRECT_CO).enumerate() {
        for (t, row) in wb.chunks_mut(DIRECT_CO).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let o = blk * DIRECT_CO + j;
                *v = if o < og { w_g[o * k + t] } else { 0.0 };
            }
        }
    }
    // Tap offsets, (c, ki, kj) order.
    let mut offs = Vec::with_capacity(k);
    for c in 0..cg {
        for ki in 0..s.kernel_h {
            for kj in 0..s.kernel_w {
                offs.push(c * h * w + ki * w + kj);
            }
        }
    }
    for blk in 0..blocks {
        let mut init = [0.0f32; DIRECT_CO];
        for (j, v) in init.iter_mut().enumerate() {
            let o = blk * DIRECT_CO + j;
            *v = match bias_g {
                Some(b) if o < og => b[o],
                _ => 0.0,
            };
        }
        let wb = &wt[blk * k * DIRECT_CO..][..k * DIRECT_CO];
        for q0 in (0..lw).step_by(DIRECT_PX) {
            let mut acc = [[0.0f32; DIRECT_PX]; DIRECT_CO];
            wide_block(kernel, xp, &offs, wb, &init, q0, &mut acc);
            for (j, a) in acc.iter().enumerate() {
                yw[j * lw + q0..][..DIRECT_PX].copy_from_slice(a);
            }
        }
        // Channel j's rows run on into the next channel's (junk to it).
        for j in 0..DIRECT_CO.min(og - blk * DIRECT_CO) {
            emit(blk * DIRECT_CO + j, &yw[j * lw..]);
        }
    }
}

/// The `emit` of [`forward_direct`] that copies the valid OW columns of each
/// wide row into y_bg (O/g, OH, OW).
fn copy_planes<'a>(s: &Conv2dShape, y_bg: &'a mut [f32]) -> impl FnMut(usize, &[f32]) + 'a {
    let (oh, ow, w) = (s.out_h(), s.out_w(), s.in_w);
    move |o, rows| {
        for oy in 0..oh {
            y_bg[(o * oh + oy) * ow..][..ow].copy_from_slice(&rows[oy * w..][..ow]);
        }
    }
}

/// One register block: acc[j][i] = init[j] + Σ_t wb[t][j] · x[off_t + q0 + i].
fn wide_block(
    kernel: Kernel,
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; DIRECT_PX]; DIRECT_CO],
) {
    assert!(wb.len() >= offs.len() * DIRECT_CO, "wide_block: weights");
    let reach = offs.iter().max().map_or(0, |m| m + q0 + DIRECT_PX);
    assert!(reach <= x.len(), "wide_block: reads past x");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => {
            assert!(
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                "wide_block: this CPU has no AVX2/FMA"
            );
            // SAFETY: the CPU has AVX2 and FMA (checked above), and every
            // load stays below `reach` ≤ x.len() and `offs.len()·DIRECT_CO`
            // ≤ wb.len() (asserted above).
            unsafe { wide_block_avx2(x, offs, wb, init, q0, acc) }
        }
        _ => wide_block_portable(x, offs, wb, init, q0, acc),
    }
}

fn wide_block_portable(
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; DIRECT_PX]; DIRECT_CO],
) {
    for (a, &v) in acc.iter_mut().zip(init) {
        *a = [v; DIRECT_PX];
    }
    for (&off, wt) in offs.iter().zip(wb.chunks_exact(DIRECT_CO)) {
        let xs: &[f32; DIRECT_PX] = x[off + q0..][..DIRECT_PX].try_into().unwrap();
        for (a, &wv) in acc.iter_mut().zip(wt) {
            for (a, &xv) in a.iter_mut().zip(xs) {
                *a += wv * xv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wide_block_avx2(
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; DIRECT_PX]; DIRECT_CO],
) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_setzero_ps(); DIRECT_CO];
    let mut hi = [_mm256_setzero_ps(); DIRECT_CO];
    for j in 0..DIRECT_CO {
        lo[j] = _mm256_set1_ps(init[j]);
        hi[j] = lo[j];
    }
    let (xp, wp) = (x.as_ptr(), wb.as_ptr());
    for (t, &off) in offs.iter().enumerate() {
        // SAFETY (caller): off + q0 + 16 ≤ x.len(), (t + 1)·DIRECT_CO ≤ wb.len().
        let x0 = _mm256_loadu_ps(xp.add(off + q0));
        let x1 = _mm256_loadu_ps(xp.add(off + q0 + 8));
        for j in 0..DIRECT_CO {
            let wv = _mm256_broadcast_ss(&*wp.add(t * DIRECT_CO + j));
            lo[j] = _mm256_fmadd_ps(wv, x0, lo[j]);
            hi[j] = _mm256_fmadd_ps(wv, x1, hi[j]);
        }
    }
    for j in 0..DIRECT_CO {
        _mm256_storeu_ps(acc[j].as_mut_ptr(), lo[j]);
        _mm256_storeu_ps(acc[j].as_mut_ptr().add(8), hi[j]);
    }
}

/// [`conv2d_forward`] on one chosen direct kernel, sequentially, for tests
/// and benchmarks. Panics unless the geometry is stride 1 without padding
/// or dilation, or if the CPU lacks the kernel's instructions.
pub fn conv2d_forward_direct(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    kernel: Kernel,
) {
    let op = "conv2d_forward_direct";
    assert!(
        direct_applies(s),
        "{op}: needs stride 1, no padding or dilation; got {:?}",
        s.opts
    );
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "y", s.output_shape().iter().product(), y.len());
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let mut scratch = vec![0.0; direct_scratch_len(s)];
    for (b, y_b) in y.chunks_mut(o * p).enumerate() {
        for g in 0..s.opts.groups {
            forward_direct(
                s,
                &x[(b * c + g * cg) * hw..][..cg * hw],
                &w[g * og * k..(g + 1) * og * k],
                bias.map(|v| &v[g * og..(g + 1) * og]),
                &mut scratch,
                kernel,
                &mut copy_planes(s, &mut y_b[g * og * p..(g + 1) * og * p]),
            );
        }
    }
}

/// The direct convolution, seven nested loops: documentation and test oracle.
pub fn conv2d_forward_naive(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let op = "conv2d_forward_naive";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "y", s.output_shape().iter().product(), y.len());
    let (oh, ow) = (s.out_h(), s.out_w());
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |bias| bias[o]);
                    for_each_tap(s, o, oy, ox, |ci, iy, ix, wi| {
                        acc += x[idx4(s.input_shape(), b, ci, iy, ix)] * w[wi];
                    });
                    y[idx4(s.output_shape(), b, o, oy, ox)] = acc;
                }
            }
        }
    }
}

/// Row-major index of (a, b, c, d) in a 4-d array of shape `dims`.
fn idx4(dims: [usize; 4], a: usize, b: usize, c: usize, d: usize) -> usize {
    ((a * dims[1] + b) * dims[2] + c) * dims[3] + d
}

/// For output channel o at output position (oy, ox), calls
/// `f(input channel, iy, ix, weight index)` for every kernel tap that lands
/// inside the input (taps in the padding contribute zero).
fn for_each_tap(
    s: &Conv2dShape,
    o: usize,
    oy: usize,
    ox: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let g = o / s.group_out();
    for c in 0..s.group_in() {
        for ki in 0..s.kernel_h {
            for kj in 0..s.kernel_w {
                let iy = (oy * s.opts.stride.0 + ki * s.opts.dilation.0) as isize
                    - s.opts.padding.0 as isize;
                let ix = (ox * s.opts.stride.1 + kj * s.opts.dilation.1) as isize
                    - s.opts.padding.1 as isize;
                if iy < 0 || ix < 0 || iy >= s.in_h as isize || ix >= s.in_w as isize {
                    continue;
                }
                let wi = idx4(s.weight_shape(), o, c, ki, kj);
                f(g * s.group_in() + c, iy as usize, ix as usize, wi);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Backward: weight
// ---------------------------------------------------------------------------

/// dw = Σ_b dY_b · cols_bᵀ, per group. OVERWRITES dw.
/// x is (B, C, H, W), dy is (B, O, OH, OW), dw is (O, C/groups, KH, KW).
///
/// Each chunk of images puts its im2col matrices side by side in one wide
/// (K, nb·P) matrix and copies its dY into (O/g, nb·P), so that one GEMM with
/// inner dimension nb·P yields the chunk's partial dW. The partials are then
/// added in chunk order: bitwise reproducible for any thread count.
pub fn conv2d_backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    backward_weight_core(
        "conv2d_backward_weight",
        s,
        x,
        dy,
        dw,
        None::<fn(f32) -> f32>,
    );
}

/// Hebbian coactivation counts: the weight gradient of binarised activity.
/// OVERWRITES counts.
/// x is (B, C, H, W), y is (B, O, OH, OW), counts is (O, C/groups, KH, KW):
///
/// ```text
/// counts[o, c, ki, kj] = Σ_b Σ_{oy, ox} [y[b, o, oy, ox] > θ] · [x[b, g·Cg + c, iy, ix] > θ]
/// ```
///
/// over the taps that land inside the input. This is exactly
/// [`conv2d_backward_weight`] of `[x > θ]` and `[y > θ]`, computed by the
/// same kernel with the threshold applied on the way in, so it costs no more
/// than a weight gradient. Padded taps stay 0, i.e. inactive, even for a
/// negative θ. The counts are integers below 2^24, hence exact in f32 and
/// independent of the summation order.
pub fn conv2d_coactivation(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    threshold: f32,
    counts: &mut [f32],
) {
    let active = |v: f32| if v > threshold { 1.0 } else { 0.0 };
    backward_weight_core("conv2d_coactivation", s, x, y, counts, Some(active));
}

/// The kernel of [`conv2d_backward_weight`]. With `map`, it is the weight
/// gradient of `map(x)` and `map(dy)` instead: each chunk maps its images'
/// input planes into scratch before im2col (once per input value, not once
/// per kernel tap, and before im2col adds the padding, which so stays 0), and
/// maps dY while copying it into the wide matrix.
fn backward_weight_core(
    op: &str,
    s: &Conv2dShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    map: Option<impl Fn(f32) -> f32 + Sync>,
) {
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let ipc = images_per_chunk(s);
    let n_chunks = s.batch.div_ceil(ipc);
    if n_chunks == 0 || p == 0 {
        dw.fill(0.0);
        return;
    }
    let mapped_len = if map.is_some() { cg * hw } else { 0 };
    // The partial dW of chunk `chunk`, written into `part` (O, Cg·KH·KW).
    let partial = |chunk: usize, part: &mut [f32]| {
        let b0 = chunk * ipc;
        let nb = ipc.min(s.batch - b0);
        let n = nb * p; // columns of the wide matrices
        with_scratch(k * n + og * n + mapped_len, |buf| {
            let (cols, rest) = buf.split_at_mut(k * n); // (K, n)
            let (dy_g, x_mapped) = rest.split_at_mut(og * n); // (O/g, n) and (Cg, H, W)
            for g in 0..s.opts.groups {
                for i in 0..nb {
                    let b = b0 + i;
                    let x_bg = &x[(b * c + g * cg) * hw..][..cg * hw]; // (Cg, H, W)
                    let x_bg = match &map {
                        None => x_bg,
                        Some(f) => {
                            map_into(f, x_bg, x_mapped);
                            &*x_mapped
                        }
                    };
                    im2col_strided(s, x_bg, &mut cols[i * p..], n);
                    for oo in 0..og {
                        let src = &dy[(b * o + g * og + oo) * p..][..p];
                        let dst = &mut dy_g[oo * n + i * p..][..p];
                        match &map {
                            None => dst.copy_from_slice(src),
                            Some(f) => map_into(f, src, dst),
                        }
                    }
                }
                let dw_g = &mut part[g * og * k..(g + 1) * og * k]; // (O/g, K)
                let cols_t = Mat::row_major(cols, k, n).t(); // (n, K)
                gemm(1.0, Mat::row_major(dy_g, og, n), cols_t, 0.0, dw_g, k);
            }
        });
    };
    if n_chunks == 1 {
        partial(0, dw);
        return;
    }
    let wlen = dw.len();
    let mut partials = vec![0.0f32; n_chunks * wlen];
    for_each_chunk(&mut partials, wlen, run_parallel(s), partial);
    // Fixed-order reduction: chunk 0, then + chunk 1, + chunk 2, ...
    dw.copy_from_slice(&partials[..wlen]);
    for part in partials[wlen..].chunks(wlen) {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += *v;
        }
    }
}

/// `dst[i] = f(src[i])`.
fn map_into(f: impl Fn(f32) -> f32, src: &[f32], dst: &mut [f32]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d = f(*v);
    }
}

/// Direct dw[o, c, ki, kj] = Σ_{b, oy, ox} dy[b, o, oy, ox] · x[b, g·Cg + c, iy, ix].
pub fn conv2d_backward_weight_naive(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let op = "conv2d_backward_weight_naive";
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
    dw.fill(0.0);
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..s.out_h() {
                for ox in 0..s.out_w() {
                    let d = dy[idx4(s.output_shape(), b, o, oy, ox)];
                    for_each_tap(s, o, oy, ox, |ci, iy, ix, wi| {
                        dw[wi] += d * x[idx4(s.input_shape(), b, ci, iy, ix)];
                    });
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Backward: input
// ---------------------------------------------------------------------------

/// dx = col2im(W_gᵀ · dY_b,g) for every image b and group g. OVERWRITES dx.
/// w is (O, C/groups, KH, KW), dy is (B, O, OH, OW), dx is (B, C, H, W).
/// Images are independent, so there is no cross-chunk reduction.
pub fn conv2d_backward_input(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let op = "conv2d_backward_input";
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dx", s.input_shape().iter().product(), dx.len());
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let ipc = images_per_chunk(s);
    for_each_chunk(dx, ipc * c * hw, run_parallel(s), |chunk, dx_chunk| {
        // dx_chunk is (nb, C, H, W), images chunk·ipc ..
        dx_chunk.fill(0.0);
        with_scratch(k * p, |dcols| {
            for (i, dx_b) in dx_chunk.chunks_mut(c * hw).enumerate() {
                let b = chunk * ipc + i;
                for g in 0..s.opts.groups {
                    let w_g = Mat::row_major(&w[g * og * k..(g + 1) * og * k], og, k);
                    let dy_bg = Mat::row_major(&dy[(b * o + g * og) * p..][..og * p], og, p);
                    gemm(1.0, w_g.t(), dy_bg, 0.0, dcols, p); // (K, P)
                    col2im(s, dcols, &mut dx_b[g * cg * hw..(g + 1) * cg * hw]);
                }
            }
        });
    });
}

/// Direct dx[b, ci, iy, ix] = Σ w[o, c, ki, kj] · dy[b, o, oy, ox] over the
/// taps that read (ci, iy, ix).
pub fn conv2d_backward_input_naive(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let op = "conv2d_backward_input_naive";
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dx", s.input_shape().iter().product(), dx.len());
    dx.fill(0.0);
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..s.out_h() {
                for ox in 0..s.out_w() {
                    let d = dy[idx4(s.output_shape(), b, o, oy, ox)];
                    for_each_tap(s, o, oy, ox, |ci, iy, ix, wi| {
                        dx[idx4(s.input_shape(), b, ci, iy, ix)] += w[wi] * d;
                    });
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Backward: bias
// ---------------------------------------------------------------------------

/// `db[o] = Σ_{b, oy, ox} dy[b, o, oy, ox]`. OVERWRITES db.
/// dy is (B, O, OH, OW), db is (O). Sequential, in a fixed order (b, then
/// the pixels of each (b, o) plane in 8 interleaved lanes): it is a few
/// microseconds of memory traffic, not worth a thread.
pub fn conv2d_backward_bias(s: &Conv2dShape, dy: &[f32], db: &mut [f32]) {
    let op = "conv2d_backward_bias";
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "db", s.out_channels, db.len());
    let (o, p) = (s.out_channels, s.out_pixels());
    db.fill(0.0);
    for b in 0..s.batch {
        for (oo, d) in db.iter_mut().enumerate() {
            *d += sum_lanes(&dy[(b * o + oo) * p..][..p]);
        }
    }
}

/// Sum of `v` with 8 independent accumulators (so the compiler can
/// vectorise), combined in a fixed order.
pub(crate) fn sum_lanes(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += *x;
        }
    }
    let tail: f32 = it.remainder().iter().sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

// ---------------------------------------------------------------------------
// Fused conv2d → relu → max_pool2d
// ---------------------------------------------------------------------------
//
// A LeNet block is conv, bias, relu, max-pool. As three ops it writes the
// conv output (B, O, OH, OW) and the relu output, the two largest tensors of
// the network, and in backward builds two more of that size (the pool's
// scatter and the relu's mask). The fused op keeps one image's conv output
// in scratch, relu-pools it at once, and saves only the pooled values and the
// argmaxes; backward rebuilds dY chunk by chunk in scratch from them:
//
// ```text
// forward    y = conv(x, w) + b;  r = relu(y);  pooled, arg = max_pool(r)
// backward   dY[arg[q]] += (pooled[q] > 0 ? dpooled[q] : 0)   (zeros elsewhere)
//            then dW, db and dx from dY exactly as conv2d's backward
// ```
//
// (relu(y) > 0 exactly where y > 0, and the argmax of a window is where its
// pooled value came from, so `pooled[q] > 0` is relu's mask at `arg[q]`.)
// Every floating-point operation is the one the three separate ops perform,
// in the same order (same GEMM shapes, same chunks), so the fused op is
// bitwise equal to conv2d → relu → max_pool2d; the tests check that.

/// A max-pool window and its stride, each (y, x); no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
}

impl PoolOptions {
    /// The pooled plane (PH, PW) of the conv output plane (OH, OW); panics
    /// naming the shapes if the window does not fit.
    pub fn pooled_size(&self, s: &Conv2dShape) -> (usize, usize) {
        let (oh, ow) = (s.out_h(), s.out_w());
        let (k, st) = (self.kernel, self.stride);
        assert!(
            k.0 >= 1 && k.1 >= 1 && st.0 >= 1 && st.1 >= 1 && oh >= k.0 && ow >= k.1,
            "conv2d_relu_max_pool2d: pool {self:?} does not fit the {oh}x{ow} conv output"
        );
        crate::ops::pool::pooled_size((oh, ow), k, st)
    }

    /// (B, O, PH, PW).
    pub fn output_shape(&self, s: &Conv2dShape) -> [usize; 4] {
        let (ph, pw) = self.pooled_size(s);
        [s.batch, s.out_channels, ph, pw]
    }
}

/// Runs `f(index, item)` over `items`, in parallel if `parallel`. Items are
/// independent pieces of the output (one per chunk of images), so the result
/// does not depend on how rayon schedules them.
fn for_each_item<T: Send>(items: Vec<T>, parallel: bool, f: impl Fn(usize, T) + Send + Sync) {
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
                                KernelChoice::Best,
                            );
                        };
                        forward_direct(
                            s,
                            &x_b[g * cg * hw..][..cg * hw],
                            &w[g * og * k..(g + 1) * og * k],
                            bias.map(|b| &b[g * og..(g + 1) * og]),
                            scratch,
                            Kernel::best(),
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
/// Each chunk of images rebuilds its dY in scratch, as the (O, nb·OH·OW)
/// matrix that [`conv2d_backward_weight`] multiplies, and then does that
/// function's dW GEMM, [`conv2d_backward_input`]'s GEMM and col2im per image,
/// and [`conv2d_backward_bias`]'s per-plane sums. dW partials and bias sums
/// are added in chunk and image order afterwards.
#[allow(clippy::too_many_arguments)] // the three optional gradients read best named
pub fn conv2d_relu_pool_backward(
    s: &Conv2dShape,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    pooled: &[f32],
    arg: &[u32],
    dpooled: &[f32],
    mut dw: Option<&mut [f32]>,
    mut db: Option<&mut [f32]>,
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
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let (ph, pw) = pool.pooled_size(s);
    let per_image = o * ph * pw; // pooled values of one image
    let ipc = images_per_chunk(s);
    let n_chunks = s.batch.div_ceil(ipc);
    let wlen = w.len();
    if n_chunks == 0 || p == 0 {
        dw.iter_mut().for_each(|d| d.fill(0.0));
        db.iter_mut().for_each(|d| d.fill(0.0));
        if let Some(dx) = dx {
            dx.fill(0.0);
        }
        return;
    }
    // Per chunk: its partial dW (O, K) if wanted, then the per-image bias
    // sums (nb, O) if wanted.
    let (want_w, want_b) = (dw.is_some(), db.is_some());
    let part_len = if want_w { wlen } else { 0 } + if want_b { ipc * o } else { 0 };
    let mut partials = vec![0.0f32; n_chunks * part_len];
    let dx_chunks: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(ipc * c * hw).map(Some).collect(),
        None => (0..n_chunks).map(|_| None).collect(),
    };
    let parts: Vec<&mut [f32]> = if part_len == 0 {
        (0..n_chunks).map(|_| &mut [][..]).collect()
    } else {
        partials.chunks_mut(part_len).collect()
    };
    let items: Vec<_> = parts.into_iter().zip(dx_chunks).collect();
    for_each_item(items, run_parallel(s), |chunk, (part, dx_c)| {
        let b0 = chunk * ipc;
        let nb = ipc.min(s.batch - b0);
        let n = nb * p; // columns of the wide matrices
                        // dY (O, n), then im2col (K, n) for dW, reused as (K, P) for dx.
        with_scratch(o * n + k * n, |buf| {
            let (dy, cols) = buf.split_at_mut(o * n);
            // dY: the pooled gradient scattered back to its argmax, through
            // relu's mask, in the order the separate ops add it.
            dy.fill(0.0);
            for i in 0..nb {
                let q0 = (b0 + i) * per_image;
                let (pv, av, dv) = (
                    &pooled[q0..][..per_image],
                    &arg[q0..][..per_image],
                    &dpooled[q0..][..per_image],
                );
                for oo in 0..o {
                    let plane = &mut dy[oo * n + i * p..][..p]; // (OH, OW)
                    let r = oo * ph * pw..(oo + 1) * ph * pw;
                    for ((&v, &a), &d) in pv[r.clone()].iter().zip(&av[r.clone()]).zip(&dv[r]) {
                        plane[a as usize] += crate::ops::elementwise::relu_grad(v, d);
                    }
                }
            }
            let (part_w, part_b) = part.split_at_mut(if want_w { wlen } else { 0 });
            if want_b {
                // As conv2d_backward_bias: one sum per (image, channel) plane.
                for i in 0..nb {
                    for oo in 0..o {
                        part_b[i * o + oo] = sum_lanes(&dy[oo * n + i * p..][..p]);
                    }
                }
            }
            if want_w {
                // As backward_weight_core: dW_g = dY_g · colsᵀ.
                for g in 0..s.opts.groups {
                    for i in 0..nb {
                        let x_bg = &x[((b0 + i) * c + g * cg) * hw..][..cg * hw];
                        im2col_strided(s, x_bg, &mut cols[i * p..], n);
                    }
                    let dy_g = Mat::row_major(&dy[g * og * n..(g + 1) * og * n], og, n);
                    let cols_t = Mat::row_major(cols, k, n).t(); // (n, K)
                    gemm(
                        1.0,
                        dy_g,
                        cols_t,
                        0.0,
                        &mut part_w[g * og * k..][..og * k],
                        k,
                    );
                }
            }
            if let Some(dx_c) = dx_c {
                // As conv2d_backward_input: dx_b,g = col2im(W_gᵀ · dY_b,g).
                dx_c.fill(0.0);
                let dcols = &mut cols[..k * p];
                for (i, dx_b) in dx_c.chunks_mut(c * hw).enumerate() {
                    for g in 0..s.opts.groups {
                        let w_g = Mat::row_major(&w[g * og * k..(g + 1) * og * k], og, k);
                        let dy_bg = Mat {
                            data: &dy[g * og * n + i * p..],
                            rows: og,
                            cols: p,
                            row_stride: n,
                            col_stride: 1,
                        };
                        gemm(1.0, w_g.t(), dy_bg, 0.0, dcols, p); // (K, P)
                        col2im(s, dcols, &mut dx_b[g * cg * hw..(g + 1) * cg * hw]);
                    }
                }
            }
        });
    });
    // Fixed-order reductions: chunk 0, + chunk 1, ...; image 0, + image 1, ...
    let parts = partials.chunks(part_len.max(1)).take(n_chunks);
    if let Some(dw) = dw {
        for (i, part) in parts.clone().enumerate() {
            if i == 0 {
                dw.copy_from_slice(&part[..wlen]);
            } else {
                add_into(dw, &part[..wlen]);
            }
        }
    }
    if let Some(db) = db {
        db.fill(0.0);
        let off = if want_w { wlen } else { 0 };
        for (chunk, part) in parts.enumerate() {
            let nb = ipc.min(s.batch - chunk * ipc);
            for sums in part[off..].chunks(o).take(nb) {
                add_into(db, sums);
            }
        }
    }
}

/// The definition, from the naive kernels: conv2d_forward_naive, relu, then
/// max-pooling each plane. Returns (pooled, arg); the test oracle.
pub fn conv2d_relu_pool_naive(
    s: &Conv2dShape,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<u32>) {
    let mut y = vec![0.0; s.output_shape().iter().product()];
    conv2d_forward_naive(s, x, w, bias, &mut y);
    let r: Vec<f32> = y
        .iter()
        .map(|&v| crate::ops::elementwise::relu(v))
        .collect();
    let pp = pool.output_shape(s).iter().product();
    let (mut pooled, mut arg) = (vec![0.0; pp], vec![0u32; pp]);
    crate::ops::pool::max_pool2d_forward(
        &r,
        (s.out_h(), s.out_w()),
        pool.kernel,
        pool.stride,
        &mut pooled,
        &mut arg,
    );
    (pooled, arg)
}

// ---------------------------------------------------------------------------
// The op on the tape: forward runs the im2col kernel, backward the two
// backward GEMMs, skipping whichever gradient nobody needs (e.g. the input
// image's).
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

    /// `max_pool2d(relu(conv2d(x, weight, bias)))` as one op (see
    /// [`conv2d_relu_pool_forward`]): the same values and gradients, bit for
    /// bit, without the two full-size intermediate tensors.
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
