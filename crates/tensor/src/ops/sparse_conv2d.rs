//! Sparse conv2d for masked weights: a direct convolution that visits only
//! the active taps of each kernel. Holds the tap lists ([`SparseLayout`]),
//! the slice-level kernels (forward, backward-input, backward-weight at the
//! active taps only), the SIMD inner loops with their portable twins, the
//! autograd op [`conv2d_sparse`], and the fused sparse conv → relu →
//! max-pool ([`conv2d_sparse_relu_max_pool2d`]) with its slice kernels. The
//! oracle is the dense naive convolution of `conv2d.rs` run on the masked
//! weight ([`SparseLayout::masked_weight`]).
//!
//! Layouts are those of `conv2d.rs`: x (B, C, H, W), w (O, C/groups, KH, KW),
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
//! the rows are copied out. The inner loop keeps a block of 64 outputs in
//! eight AVX registers and streams the taps through it: one load and one FMA
//! per tap and 8 outputs, and one store per output.
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
//! Other strides take a plain row-by-row path (strided loads do not fit the
//! wide trick); it is correct for every geometry but not tuned.
//!
//! # Work splitting and determinism
//!
//! Forward and input gradient split the batch into chunks of images, a pure
//! function of the shape and the number of active taps; images are
//! independent, so nothing is reduced across chunks. The weight gradient is
//! split by output channel: each task owns the taps of one channel and sums
//! over the images in order, so it is bitwise the same for any thread count.
//! Small problems run on the calling thread ([`PARALLEL_MIN_FLOPS`]).

use crate::ops::conv2d::{
    check_len, conv2d_backward_bias, scratch_in as with_scratch, sum_lanes, Conv2dOptions,
    Conv2dShape, PoolOptions, PARALLEL_MIN_FLOPS,
};
use crate::ops::relu_pool::{relu_max_pool_2x2_rows, relu_pool_grad_2x2_rows, WIDE_SLACK};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// Density (active taps / all taps) above which the dense im2col + GEMM
/// kernels on the masked weight are faster than these, for a training step
/// (forward + both gradients), measured on the LeNet convolutions with
/// balanced masks: the second conv (6→16, 5×5 on 14×14) breaks even between
/// 52 % and 68 % at batch 4 and 64; the first (3→6 on 32×32) stays faster
/// sparse even at 100 %. Forward alone breaks even at about 70 % (conv1)
/// and 80 % (conv2). Below this value choose the sparse op. See
/// `docs/sparse-kernels.md` for the tables.
pub const SPARSE_CROSSOVER_DENSITY: f64 = 0.6;

/// Which inner loops to run, so that tests can check each against the
/// oracle. `Best` takes the widest the CPU has (checked at run time):
/// AVX-512 where a loop has an AVX-512 version, else AVX2 + FMA, else the
/// portable loops. `Avx2` stops at AVX2 + FMA (portable without them);
/// `Portable` forces the portable loops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelChoice {
    #[default]
    Best,
    Avx2,
    Portable,
}

impl KernelChoice {
    /// Every choice, for tests.
    pub const ALL: [KernelChoice; 3] = [
        KernelChoice::Best,
        KernelChoice::Avx2,
        KernelChoice::Portable,
    ];

    /// Whether the AVX2 + FMA loops may run (the CPU has them and the
    /// choice is not `Portable`).
    pub(crate) fn avx2(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self != KernelChoice::Portable {
            return has_avx2_fma();
        }
        false
    }

    /// Whether the AVX-512 loops may run: `Best`, on a CPU with AVX-512F
    /// (and AVX2 + FMA, which every such CPU has and the loops' short
    /// tails use).
    fn avx512(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == KernelChoice::Best {
            return is_x86_feature_detected!("avx512f") && has_avx2_fma();
        }
        false
    }
}

// ---------------------------------------------------------------------------
// The layout: tap lists, built once per mask
// ---------------------------------------------------------------------------

/// One active tap seen from one side of the convolution. In the per-output
/// lists `ch` is the input channel within the group; in the per-input lists
/// it is the output channel within the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tap {
    ch: usize,
    ki: usize,
    kj: usize,
    /// Index of the weight in the dense (O, C/g, KH, KW) tensor.
    wi: usize,
}

/// Input offsets of every tap for one input size (see the module doc).
#[derive(Debug)]
struct Plan {
    in_h: usize,
    in_w: usize,
    /// Padded input plane, Hp × Wp.
    hp: usize,
    wp: usize,
    /// dy padded for the input gradient: `lead` zeros, then Hq rows of
    /// Wp floats (OW values, then Wp − OW zeros); `q_plane` floats per
    /// output channel.
    lead: usize,
    q_plane: usize,
    /// Per entry of `by_output`: c·Hp·Wp + ki·dy·Wp + kj·dx.
    fwd_offs: Vec<usize>,
    /// Per entry of `by_input`: o·q_plane + (KH−1−ki)·dy·Wp + (KW−1−kj)·dx.
    bwd_offs: Vec<usize>,
}

/// Built from the mask once per mask change; weights stay in the dense
/// (O, C/g, KH, KW) tensor.
///
/// Holds, for each output channel, its active taps in (c, ki, kj) order (the
/// forward and weight-gradient lists), and for each input channel the
/// (o, ki, kj) taps that read it (the input-gradient list, so that each
/// task owns whole dx planes and never races). Offsets for a given input
/// size are computed on first use and cached; the layout is otherwise
/// immutable, so one `Rc<SparseLayout>` can be shared by forward and backward.
#[derive(Debug)]
pub struct SparseLayout {
    weight_shape: [usize; 4],
    opts: Conv2dOptions,
    /// Taps of output channel o are `by_output[out_start[o]..out_start[o + 1]]`.
    out_start: Vec<usize>,
    by_output: Vec<Tap>,
    /// Taps reading input channel ci are `by_input[in_start[ci]..in_start[ci + 1]]`.
    in_start: Vec<usize>,
    by_input: Vec<Tap>,
    /// Offsets per input size (H, W); a handful at most.
    plans: Mutex<Vec<Arc<Plan>>>,
}

/// Input sizes whose offsets are kept; older ones are dropped.
const MAX_PLANS: usize = 8;

impl SparseLayout {
    /// mask is weight-shaped (O·Cg·KH·KW), true = active.
    pub fn new(weight_shape: [usize; 4], opts: Conv2dOptions, mask: &[bool]) -> SparseLayout {
        let [o, cg, kh, kw] = weight_shape;
        let kk = cg * kh * kw;
        assert_eq!(
            mask.len(),
            o * kk,
            "SparseLayout::new: mask has {} entries for weight shape {weight_shape:?}",
            mask.len()
        );
        let g = opts.groups;
        assert!(
            g > 0 && o.is_multiple_of(g),
            "SparseLayout::new: {o} output channels do not split into {g} groups"
        );
        let og = o / g;
        let mut out_start = vec![0];
        let mut by_output = Vec::new();
        for oc in 0..o {
            for c in 0..cg {
                for ki in 0..kh {
                    for kj in 0..kw {
                        let wi = oc * kk + (c * kh + ki) * kw + kj;
                        if mask[wi] {
                            by_output.push(Tap { ch: c, ki, kj, wi });
                        }
                    }
                }
            }
            out_start.push(by_output.len());
        }
        let mut in_start = vec![0];
        let mut by_input = Vec::new();
        for ci in 0..cg * g {
            let (gi, c) = (ci / cg, ci % cg);
            for oo in 0..og {
                for ki in 0..kh {
                    for kj in 0..kw {
                        let wi = (gi * og + oo) * kk + (c * kh + ki) * kw + kj;
                        if mask[wi] {
                            by_input.push(Tap { ch: oo, ki, kj, wi });
                        }
                    }
                }
            }
            in_start.push(by_input.len());
        }
        SparseLayout {
            weight_shape,
            opts,
            out_start,
            by_output,
            in_start,
            by_input,
            plans: Mutex::new(Vec::new()),
        }
    }

    /// Number of active taps.
    pub fn nnz(&self) -> usize {
        self.by_output.len()
    }

    /// Active taps / all taps (0 for an empty weight).
    pub fn density(&self) -> f64 {
        self.nnz() as f64 / (self.weight_shape.iter().product::<usize>()).max(1) as f64
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        self.weight_shape
    }

    pub fn opts(&self) -> Conv2dOptions {
        self.opts
    }

    /// The weight-shaped mask back, true = active.
    pub fn mask(&self) -> Vec<bool> {
        let mut m = vec![false; self.weight_shape.iter().product()];
        for t in &self.by_output {
            m[t.wi] = true;
        }
        m
    }

    /// `w ⊙ mask`: the dense weight these kernels compute with, for oracles
    /// and for the dense fallback.
    pub fn masked_weight(&self, w: &[f32]) -> Vec<f32> {
        check_len(
            "SparseLayout::masked_weight",
            "w",
            self.weight_shape.iter().product(),
            w.len(),
        );
        let mut m = vec![0.0; w.len()];
        for t in &self.by_output {
            m[t.wi] = w[t.wi];
        }
        m
    }

    fn out_range(&self, oc: usize) -> std::ops::Range<usize> {
        self.out_start[oc]..self.out_start[oc + 1]
    }

    fn in_range(&self, ci: usize) -> std::ops::Range<usize> {
        self.in_start[ci]..self.in_start[ci + 1]
    }

    /// Most taps of any output channel and of any input channel.
    fn max_taps(&self) -> usize {
        let widest = |start: &[usize]| start.windows(2).map(|r| r[1] - r[0]).max().unwrap_or(0);
        widest(&self.out_start).max(widest(&self.in_start))
    }

    /// Panics unless `s` is the geometry this layout was built for.
    fn check(&self, op: &str, s: &Conv2dShape) {
        assert!(
            s.weight_shape() == self.weight_shape && s.opts == self.opts,
            "{op}: layout built for weight {:?} with {:?}, called with weight {:?} with {:?}",
            self.weight_shape,
            self.opts,
            s.weight_shape(),
            s.opts
        );
    }

    /// The offsets for the input size of `s`, computed once per size.
    fn plan(&self, s: &Conv2dShape) -> Arc<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.iter().find(|p| p.in_h == s.in_h && p.in_w == s.in_w) {
            return p.clone();
        }
        let (kh, kw) = (s.kernel_h, s.kernel_w);
        let (dy, dx) = s.opts.dilation;
        let hp = s.in_h + 2 * s.opts.padding.0;
        let wp = s.in_w + 2 * s.opts.padding.1;
        let hq = s.out_h() + 2 * (kh - 1) * dy;
        let lead = (kw - 1) * dx;
        let q_plane = lead + hq * wp;
        let fwd_offs = self
            .by_output
            .iter()
            .map(|t| t.ch * hp * wp + t.ki * dy * wp + t.kj * dx)
            .collect();
        let bwd_offs = self
            .by_input
            .iter()
            .map(|t| t.ch * q_plane + (kh - 1 - t.ki) * dy * wp + (kw - 1 - t.kj) * dx)
            .collect();
        let p = Arc::new(Plan {
            in_h: s.in_h,
            in_w: s.in_w,
            hp,
            wp,
            lead,
            q_plane,
            fwd_offs,
            bwd_offs,
        });
        if plans.len() == MAX_PLANS {
            plans.remove(0);
        }
        plans.push(p.clone());
        p
    }
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

/// Images per chunk: a pure function of the shape and the tap count.
fn images_per_chunk(s: &Conv2dShape, l: &SparseLayout) -> usize {
    let per_image = (2 * l.nnz() * s.out_pixels()).max(1);
    TASK_FLOPS.div_ceil(per_image).clamp(1, s.batch.max(1))
}

fn run_parallel(s: &Conv2dShape, l: &SparseLayout) -> bool {
    sparse_flops(s, l) >= PARALLEL_MIN_FLOPS
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
    /// Scratch of the calling thread for a whole padded batch (weight
    /// gradient with padding), separate so tasks run on this thread can
    /// still take `SCRATCH`.
    static BATCH_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Copies the (C', H, W) planes of `x` into the middle of the zeroed
/// (C', H + 2·py, W + 2·px) planes of `xp`.
fn pad_planes(x: &[f32], h: usize, w: usize, (py, px): (usize, usize), xp: &mut [f32]) {
    let (hp, wp) = (h + 2 * py, w + 2 * px);
    xp.fill(0.0);
    for (src, dst) in x.chunks_exact(h * w).zip(xp.chunks_exact_mut(hp * wp)) {
        for iy in 0..h {
            copy_row(&mut dst[(iy + py) * wp + px..][..w], &src[iy * w..][..w]);
        }
    }
}

/// `dst.copy_from_slice(src)` for the short rows copied in and out of the
/// wide layouts (10 to 32 floats in the LeNet): fixed 8-float copies are
/// inlined, where a run-time length would call `memmove` for each row.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        d.copy_from_slice(s);
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = *s;
    }
}

/// The output positions `o` in `0..out` whose input coordinate
/// `o·stride + k_off − pad` lies inside `0..len`, as a range.
fn valid_range(out: usize, len: usize, stride: usize, k_off: usize, pad: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(k_off).div_ceil(stride);
    let hi = (len + pad).saturating_sub(k_off).div_ceil(stride).min(out);
    (lo.min(hi), hi)
}

// ---------------------------------------------------------------------------
// Inner loops: gather-multiply-add and multi-dot, portable and AVX2
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `out[p] = init + Σ_t ws[t] · src[p + offs[t]]` for every p < out.len().
/// The heart of forward and input gradient.
fn gather_fma(
    src: &[f32],
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
    k: KernelChoice,
) {
    assert_eq!(offs.len(), ws.len(), "gather_fma: one weight per offset");
    let reach = offs.iter().max().map_or(0, |&m| m + out.len());
    assert!(
        reach <= src.len(),
        "gather_fma: reads up to {reach}, source has {}",
        src.len()
    );
    #[cfg(target_arch = "x86_64")]
    if k.avx512() {
        // SAFETY: AVX-512F, AVX2 and FMA are present (checked by
        // `avx512`); the bounds the function relies on were asserted above.
        unsafe { gather_fma_avx512(src, offs, ws, init, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k.avx2() {
        // SAFETY: AVX2 and FMA are present (checked by `avx2`); the bounds
        // the function relies on were asserted above.
        unsafe { gather_fma_avx2(src, offs, ws, init, out) };
        return;
    }
    let _ = k; // (unused off x86-64)
    gather_fma_portable(src, offs, ws, init, out);
}

/// Portable `gather_fma`: blocks of 16 outputs held in a local array, which
/// the compiler keeps in vector registers.
fn gather_fma_portable(src: &[f32], offs: &[usize], ws: &[f32], init: f32, out: &mut [f32]) {
    const LANES: usize = 16;
    let n = out.len();
    let mut blocks = out.chunks_exact_mut(LANES);
    for (bi, block) in (&mut blocks).enumerate() {
        let p = bi * LANES;
        let mut acc = [init; LANES];
        for (&off, &wv) in offs.iter().zip(ws) {
            let s = &src[off + p..off + p + LANES];
            for (a, &x) in acc.iter_mut().zip(s) {
                *a += wv * x;
            }
        }
        block.copy_from_slice(&acc);
    }
    let p0 = n - n % LANES;
    for (q, o) in blocks.into_remainder().iter_mut().enumerate() {
        let mut a = init;
        for (&off, &wv) in offs.iter().zip(ws) {
            a += wv * src[off + p0 + q];
        }
        *o = a;
    }
}

/// AVX2 `gather_fma`: 64 outputs in eight registers, taps streamed through
/// them (one broadcast per tap, one load + FMA per tap and 8 outputs).
///
/// # Safety
/// The CPU must support AVX2 and FMA, `offs.len() == ws.len()`, and
/// `offs[t] + out.len() <= src.len()` for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gather_fma_avx2(src: &[f32], offs: &[usize], ws: &[f32], init: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let sp = src.as_ptr();
    let op = out.as_mut_ptr();
    // 64 outputs from p, for p + 64 <= n.
    let block = |p: usize| {
        let mut a = [_mm256_set1_ps(init); 8];
        for (&off, &wv) in offs.iter().zip(ws) {
            let wv = _mm256_set1_ps(wv);
            for (j, aj) in a.iter_mut().enumerate() {
                // SAFETY: off + p + 8j + 8 <= off + n <= src.len().
                let x = unsafe { _mm256_loadu_ps(sp.add(off + p + 8 * j)) };
                *aj = _mm256_fmadd_ps(wv, x, *aj);
            }
        }
        for (j, aj) in a.iter().enumerate() {
            // SAFETY: p + 8j + 8 <= n = out.len().
            unsafe { _mm256_storeu_ps(op.add(p + 8 * j), *aj) };
        }
    };
    let mut p = 0;
    while p + 64 <= n {
        block(p);
        p += 64;
    }
    if p < n && n >= 64 {
        // The rest as one more block ending at n, overlapping the last:
        // every output is the same chain of FMAs wherever it is computed,
        // so the overlap rewrites the same bits, and the short tail does
        // not run as one latency-bound chain per 8 outputs.
        block(n - 64);
        return;
    }
    while p + 8 <= n {
        let mut a = _mm256_set1_ps(init);
        for (&off, &wv) in offs.iter().zip(ws) {
            // SAFETY: off + p + 8 <= off + n <= src.len().
            let x = unsafe { _mm256_loadu_ps(sp.add(off + p)) };
            a = _mm256_fmadd_ps(_mm256_set1_ps(wv), x, a);
        }
        // SAFETY: p + 8 <= n.
        unsafe { _mm256_storeu_ps(op.add(p), a) };
        p += 8;
    }
    for (q, o) in out.iter_mut().enumerate().skip(p) {
        let mut a = init;
        for (&off, &wv) in offs.iter().zip(ws) {
            a = wv.mul_add(src[off + q], a);
        }
        *o = a;
    }
}

/// AVX-512 `gather_fma`: 128 outputs in eight 16-lane registers, taps
/// streamed through them as in the AVX2 loop, so each output is the same
/// chain of FMAs and the result is bitwise the AVX2 loop's; half the
/// instructions per output. The rest of the outputs run as one more block
/// ending at n (overlapping), and planes under 256 outputs go to the AVX2
/// loop.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA, `offs.len() == ws.len()`,
/// and `offs[t] + out.len() <= src.len()` for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gather_fma_avx512(src: &[f32], offs: &[usize], ws: &[f32], init: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    if n < 256 {
        // Short planes (the LeNet's conv2, 136 and 196 outputs) would waste
        // much of a second 128-output block, and measured slower here than
        // the AVX2 loop's 64-output blocks. SAFETY: the caller's guarantees
        // are the AVX2 loop's.
        return unsafe { gather_fma_avx2(src, offs, ws, init, out) };
    }
    let sp = src.as_ptr();
    let op = out.as_mut_ptr();
    // 128 outputs from p, for p + 128 <= n.
    let block = |p: usize| {
        let mut a = [_mm512_set1_ps(init); 8];
        for (&off, &wv) in offs.iter().zip(ws) {
            let wv = _mm512_set1_ps(wv);
            for (j, aj) in a.iter_mut().enumerate() {
                // SAFETY: off + p + 16j + 16 <= off + n <= src.len().
                let x = unsafe { _mm512_loadu_ps(sp.add(off + p + 16 * j)) };
                *aj = _mm512_fmadd_ps(wv, x, *aj);
            }
        }
        for (j, aj) in a.iter().enumerate() {
            // SAFETY: p + 16j + 16 <= n = out.len().
            unsafe { _mm512_storeu_ps(op.add(p + 16 * j), *aj) };
        }
    };
    let mut p = 0;
    while p + 128 <= n {
        block(p);
        p += 128;
    }
    if p < n {
        block(n - 128);
    }
}

/// `out[t] = Σ_p a[p] · src[p + offs[t]]` over p < a.len(): one dot product
/// per tap, the heart of the weight gradient.
fn multi_dot(a: &[f32], src: &[f32], offs: &[usize], out: &mut [f32], k: KernelChoice) {
    assert_eq!(offs.len(), out.len(), "multi_dot: one output per offset");
    let reach = offs.iter().max().map_or(0, |&m| m + a.len());
    assert!(
        reach <= src.len(),
        "multi_dot: reads up to {reach}, source has {}",
        src.len()
    );
    #[cfg(target_arch = "x86_64")]
    if k.avx2() {
        // SAFETY: AVX2 and FMA are present (checked by `avx2`); the bounds
        // the function relies on were asserted above.
        unsafe { multi_dot_avx2(a, src, offs, out) };
        return;
    }
    let _ = k; // (unused off x86-64)
    for (&off, o) in offs.iter().zip(out.iter_mut()) {
        *o = dot_portable(a, &src[off..off + a.len()]);
    }
}

/// Dot product in 8 interleaved lanes (so the compiler vectorises it),
/// combined in a fixed order, plus the tail.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x8, y8) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x8).zip(y8) {
            *s += x * y;
        }
    }
    let mut tail = 0.0;
    for (&x, &y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    sum8(acc) + tail
}

/// Fixed-order sum of 8 lanes.
fn sum8(v: [f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// AVX2 `multi_dot`: four taps at a time share each load of `a` (10 loads
/// per 8 FMAs instead of 16), with two accumulators per tap (16 floats a
/// step), so that eight independent FMA chains hide the FMA's latency. A
/// short last group repeats its first tap and drops the extra results, so
/// every tap is summed the same way.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `offs.len() == out.len()`, and
/// `offs[t] + a.len() <= src.len()` for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multi_dot_avx2(a: &[f32], src: &[f32], offs: &[usize], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = a.len();
    let (ap, sp) = (a.as_ptr(), src.as_ptr());
    for (offs4, out4) in offs.chunks(4).zip(out.chunks_mut(4)) {
        let o4 = [0, 1, 2, 3].map(|t| offs4[t.min(offs4.len() - 1)]);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_hi = [_mm256_setzero_ps(); 4];
        let mut p = 0;
        while p + 16 <= n {
            // SAFETY: p + 16 <= n = a.len().
            let (a0, a1) = unsafe { (_mm256_loadu_ps(ap.add(p)), _mm256_loadu_ps(ap.add(p + 8))) };
            for ((s, s_hi), &off) in acc.iter_mut().zip(acc_hi.iter_mut()).zip(&o4) {
                // SAFETY: off + p + 16 <= off + n <= src.len().
                let (x0, x1) = unsafe {
                    (
                        _mm256_loadu_ps(sp.add(off + p)),
                        _mm256_loadu_ps(sp.add(off + p + 8)),
                    )
                };
                *s = _mm256_fmadd_ps(a0, x0, *s);
                *s_hi = _mm256_fmadd_ps(a1, x1, *s_hi);
            }
            p += 16;
        }
        if p + 8 <= n {
            // SAFETY: p + 8 <= n = a.len().
            let av = unsafe { _mm256_loadu_ps(ap.add(p)) };
            for (s, &off) in acc.iter_mut().zip(&o4) {
                // SAFETY: off + p + 8 <= off + n <= src.len().
                let x = unsafe { _mm256_loadu_ps(sp.add(off + p)) };
                *s = _mm256_fmadd_ps(av, x, *s);
            }
            p += 8;
        }
        for (s, s_hi) in acc.iter_mut().zip(&acc_hi) {
            *s = _mm256_add_ps(*s, *s_hi);
        }
        for ((s, &off), o) in acc.iter().zip(&o4).zip(out4.iter_mut()) {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` holds exactly 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *s) };
            let mut tail = 0.0f32;
            for q in p..n {
                tail = a[q].mul_add(src[off + q], tail);
            }
            *o = sum8(lanes) + tail;
        }
    }
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

/// y = conv(x, w ⊙ mask) + bias over the active taps only. OVERWRITES y.
/// x is (B, C, H, W), w is (O, C/groups, KH, KW) (entries outside the mask
/// are ignored, whatever they hold), bias is (O), y is (B, O, OH, OW).
pub fn sparse_conv2d_forward(
    s: &Conv2dShape,
    l: &SparseLayout,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    k: KernelChoice,
) {
    let op = "sparse_conv2d_forward";
    l.check(op, s);
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
    let (cg, og) = (s.group_in(), s.group_out());
    let (oh, ow) = (s.out_h(), s.out_w());
    let ipc = images_per_chunk(s, l);
    let parallel = run_parallel(s, l);
    let bias_of = |oc: usize| bias.map_or(0.0, |b| b[oc]);

    if s.opts.stride != (1, 1) {
        for_each_chunk(y, ipc * o * p, parallel, |chunk, y_chunk| {
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let b = chunk * ipc + i;
                forward_rows(s, l, &x[b * c * hw..][..c * hw], w, bias_of, y_b);
            }
        });
        return;
    }

    // Stride 1: the wide trick.
    let plan = l.plan(s);
    let padded = s.opts.padding != (0, 0);
    let pad_len = if padded { cg * plan.hp * plan.wp } else { 0 };
    let wide = (oh - 1) * plan.wp + ow; // yw[oy·Wp + ox]
    let max_taps = l.max_taps();
    for_each_chunk(y, ipc * o * p, parallel, |chunk, y_chunk| {
        with_scratch(&SCRATCH, pad_len + wide + max_taps, |buf| {
            let (xpad, rest) = buf.split_at_mut(pad_len); // (Cg, Hp, Wp)
            let (yw, ws) = rest.split_at_mut(wide);
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let b = chunk * ipc + i;
                for g in 0..s.opts.groups {
                    let x_bg = &x[(b * c + g * cg) * hw..][..cg * hw]; // (Cg, H, W)
                    let src = if padded {
                        pad_planes(x_bg, s.in_h, s.in_w, s.opts.padding, xpad);
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
                        gather_fma(src, &plan.fwd_offs[r], ws, bias_of(oc), yw, k);
                        let y_o = &mut y_b[oc * p..(oc + 1) * p]; // (OH, OW)
                        for (oy, row) in y_o.chunks_exact_mut(ow).enumerate() {
                            copy_row(row, &yw[oy * plan.wp..][..ow]);
                        }
                    }
                }
            }
        });
    });
}

/// Forward for one image, any geometry, row by row: for each active tap,
/// add w · (the input row it reads) to each output row, over the columns
/// whose input lies inside the image. x_b is (C, H, W), y_b is (O, OH, OW).
fn forward_rows(
    s: &Conv2dShape,
    l: &SparseLayout,
    x_b: &[f32],
    w: &[f32],
    bias_of: impl Fn(usize) -> f32,
    y_b: &mut [f32],
) {
    let (h, wd, oh, ow) = (s.in_h, s.in_w, s.out_h(), s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy, dx) = s.opts.dilation;
    let (cg, og) = (s.group_in(), s.group_out());
    for (oc, y_o) in y_b.chunks_exact_mut(oh * ow).enumerate() {
        y_o.fill(bias_of(oc));
        let g = oc / og;
        for t in &l.by_output[l.out_range(oc)] {
            let wv = w[t.wi];
            let plane = &x_b[(g * cg + t.ch) * h * wd..][..h * wd];
            let (oy0, oy1) = valid_range(oh, h, sy, t.ki * dy, py);
            let (ox0, ox1) = valid_range(ow, wd, sx, t.kj * dx, px);
            if ox0 == ox1 {
                continue;
            }
            for oy in oy0..oy1 {
                let iy = oy * sy + t.ki * dy - py;
                let ix0 = ox0 * sx + t.kj * dx - px;
                let src = plane[iy * wd + ix0..(iy + 1) * wd].iter().step_by(sx);
                for (yv, &xv) in y_o[oy * ow + ox0..oy * ow + ox1].iter_mut().zip(src) {
                    *yv += wv * xv;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Backward: input
// ---------------------------------------------------------------------------

/// dx[b, ci, iy, ix] = Σ w[o, c, ki, kj] · dy[b, o, oy, ox] over the active
/// taps that read (ci, iy, ix). OVERWRITES dx.
/// w is (O, C/groups, KH, KW), dy is (B, O, OH, OW), dx is (B, C, H, W).
pub fn sparse_conv2d_backward_input(
    s: &Conv2dShape,
    l: &SparseLayout,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    k: KernelChoice,
) {
    let op = "sparse_conv2d_backward_input";
    l.check(op, s);
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dx", s.input_shape().iter().product(), dx.len());
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let ipc = images_per_chunk(s, l);
    let parallel = run_parallel(s, l);

    if s.opts.stride != (1, 1) {
        for_each_chunk(dx, ipc * c * hw, parallel, |chunk, dx_chunk| {
            for (i, dx_b) in dx_chunk.chunks_mut(c * hw).enumerate() {
                let b = chunk * ipc + i;
                backward_input_rows(s, l, w, &dy[b * o * p..][..o * p], dx_b);
            }
        });
        return;
    }

    // Stride 1: the wide trick, each task laying out its images' dy.
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
enum Dy<'a> {
    Plain(&'a [f32]),
    Pooled(PooledGrad<'a>),
}

/// The fused op's saved tensors and pooled gradient, all (B, O, PH, PW).
#[derive(Clone, Copy)]
struct PooledGrad<'a> {
    pool: PoolOptions,
    pooled: &'a [f32],
    arg: &'a [u32],
    dpooled: &'a [f32],
}

impl Dy<'_> {
    /// Writes plane (b, oc) of dY into the OH data rows `rows` (OH·Wp
    /// floats, gap columns included; the zeros around them are the
    /// caller's) and returns the plane's sum for the bias gradient: the
    /// window gradients' sum for a pooled dY (see
    /// [`relu_pool_grad_2x2_rows`]), 0 for a plain one (its bias gradient is
    /// the separate ops' business).
    fn plane_into(
        &self,
        s: &Conv2dShape,
        plan: &Plan,
        b: usize,
        oc: usize,
        rows: &mut [f32],
        k: KernelChoice,
    ) -> f32 {
        let (o, oh, ow, wp) = (s.out_channels, s.out_h(), s.out_w(), plan.wp);
        match *self {
            Dy::Plain(dy) => {
                let p = s.out_pixels();
                for (oy, row) in dy[(b * o + oc) * p..][..p].chunks_exact(ow).enumerate() {
                    copy_row(&mut rows[oy * wp..][..ow], row);
                }
                0.0
            }
            Dy::Pooled(g) => {
                let (ph, pw) = g.pool.pooled_size(s);
                let r = (b * o + oc) * ph * pw..(b * o + oc + 1) * ph * pw;
                let (pooled, arg, dpooled) =
                    (&g.pooled[r.clone()], &g.arg[r.clone()], &g.dpooled[r]);
                if g.pool.kernel == (2, 2) && g.pool.stride == (2, 2) {
                    return relu_pool_grad_2x2_rows(pooled, arg, dpooled, (oh, ow), wp, rows, k);
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
                sum
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
    fn data_start(&self, s: &Conv2dShape) -> usize {
        self.lead + (s.kernel_h - 1) * s.opts.dilation.0 * self.wp
    }
}

/// The stride-1 input gradient with dY in the wide layout: each input plane
/// gathers, over the (o, tap) entries that read it, the kernel flipped, and
/// comes out in the padded input's layout, Hp·Wp long (copied into dx
/// without its border if the conv pads).
fn backward_input_wide(
    s: &Conv2dShape,
    l: &SparseLayout,
    plan: &Plan,
    w: &[f32],
    dy: Dy,
    dx: &mut [f32],
    k: KernelChoice,
) {
    let (c, hw, wd) = (s.in_channels, s.in_h * s.in_w, s.in_w);
    let (cg, og) = (s.group_in(), s.group_out());
    let ipc = images_per_chunk(s, l);
    let (py, px) = s.opts.padding;
    let padded = (py, px) != (0, 0);
    let dxw_len = if padded { plan.hp * plan.wp } else { 0 }; // dxw[iy·Wp + ix]
    let max_taps = l.max_taps();
    let (q_plane, start, rows) = (plan.q_plane, plan.data_start(s), s.out_h() * plan.wp);
    for_each_chunk(dx, ipc * c * hw, run_parallel(s, l), |chunk, dx_chunk| {
        with_scratch(&SCRATCH, og * q_plane + dxw_len + max_taps, |buf| {
            let (dyq_bg, rest) = buf.split_at_mut(og * q_plane); // (O/g, q_plane)
            let (dxw, ws) = rest.split_at_mut(dxw_len);
            // The borders stay zero: each image writes only the data rows.
            dyq_bg.fill(0.0);
            for (i, dx_b) in dx_chunk.chunks_mut(c * hw).enumerate() {
                let b = chunk * ipc + i;
                for g in 0..s.opts.groups {
                    // The planes this group's inputs read.
                    for (j, plane) in dyq_bg.chunks_exact_mut(q_plane).enumerate() {
                        dy.plane_into(s, plan, b, g * og + j, &mut plane[start..][..rows], k);
                    }
                    let dyq_bg = &*dyq_bg;
                    for ci in g * cg..(g + 1) * cg {
                        let r = l.in_range(ci);
                        let dx_c = &mut dx_b[ci * hw..(ci + 1) * hw]; // (H, W)
                        if r.is_empty() {
                            dx_c.fill(0.0);
                            continue;
                        }
                        let ws = &mut ws[..r.len()];
                        for (wv, t) in ws.iter_mut().zip(&l.by_input[r.clone()]) {
                            *wv = w[t.wi];
                        }
                        if !padded {
                            // Hp × Wp is H × W: write the plane in place.
                            gather_fma(dyq_bg, &plan.bwd_offs[r], ws, 0.0, dx_c, k);
                            continue;
                        }
                        gather_fma(dyq_bg, &plan.bwd_offs[r], ws, 0.0, dxw, k);
                        for (iy, row) in dx_c.chunks_exact_mut(wd).enumerate() {
                            copy_row(row, &dxw[(iy + py) * plan.wp + px..][..wd]);
                        }
                    }
                }
            }
        });
    });
}

/// Input gradient for one image, any geometry: the transpose of
/// [`forward_rows`], scattering w · dy rows into dx rows. One task owns the
/// whole image, so the scatter cannot race. dy_b is (O, OH, OW), dx_b is
/// (C, H, W).
fn backward_input_rows(
    s: &Conv2dShape,
    l: &SparseLayout,
    w: &[f32],
    dy_b: &[f32],
    dx_b: &mut [f32],
) {
    let (h, wd, oh, ow) = (s.in_h, s.in_w, s.out_h(), s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy, dx) = s.opts.dilation;
    let (cg, og) = (s.group_in(), s.group_out());
    dx_b.fill(0.0);
    for (oc, dy_o) in dy_b.chunks_exact(oh * ow).enumerate() {
        let g = oc / og;
        for t in &l.by_output[l.out_range(oc)] {
            let wv = w[t.wi];
            let plane = &mut dx_b[(g * cg + t.ch) * h * wd..][..h * wd];
            let (oy0, oy1) = valid_range(oh, h, sy, t.ki * dy, py);
            let (ox0, ox1) = valid_range(ow, wd, sx, t.kj * dx, px);
            if ox0 == ox1 {
                continue;
            }
            for oy in oy0..oy1 {
                let iy = oy * sy + t.ki * dy - py;
                let ix0 = ox0 * sx + t.kj * dx - px;
                let dst = plane[iy * wd + ix0..(iy + 1) * wd].iter_mut().step_by(sx);
                for (d, &gv) in dst.zip(&dy_o[oy * ow + ox0..oy * ow + ox1]) {
                    *d += wv * gv;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Backward: weight, at the active taps only
// ---------------------------------------------------------------------------

/// dw[o, c, ki, kj] = Σ_{b, oy, ox} dy[b, o, oy, ox] · x[b, g·Cg + c, iy, ix]
/// at the active taps, and exactly 0.0 elsewhere. OVERWRITES dw.
/// x is (B, C, H, W), dy is (B, O, OH, OW), dw is (O, C/groups, KH, KW).
///
/// One task per output channel, summing over the images in order: bitwise
/// the same for any thread count.
pub fn sparse_conv2d_backward_weight(
    s: &Conv2dShape,
    l: &SparseLayout,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    k: KernelChoice,
) {
    let op = "sparse_conv2d_backward_weight";
    l.check(op, s);
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "dw", s.weight_shape().iter().product(), dw.len());
    let kk = s.group_in() * s.kernel_h * s.kernel_w; // weights per output channel
    let parallel = run_parallel(s, l);

    if s.opts.stride != (1, 1) {
        for_each_chunk(dw, kk, parallel, |oc, dw_o| {
            backward_weight_rows(s, l, x, dy, oc, dw_o);
        });
        return;
    }

    // Stride 1: dot products of wide dy rows with the shifted input.
    backward_weight_wide(s, l, &l.plan(s), x, Dy::Plain(dy), dw, None, k);
}

/// The stride-1 weight gradient with dY in the wide layout: per active tap,
/// the dot product of dY's data rows (zeros in the Wp − OW gap columns)
/// with the input shifted by the tap's offset. One task per output channel:
/// it lays out its channel's dY plane of each image in turn and sums over
/// the images in order. With `db`, the task also adds up its planes' sums
/// (from [`Dy::plane_into`]) into db[oc], image by image.
#[allow(clippy::too_many_arguments)] // the operands and both outputs
fn backward_weight_wide(
    s: &Conv2dShape,
    l: &SparseLayout,
    plan: &Plan,
    x: &[f32],
    dy: Dy,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    k: KernelChoice,
) {
    let c = s.in_channels;
    let (cg, og) = (s.group_in(), s.group_out());
    let kk = cg * s.kernel_h * s.kernel_w; // weights per output channel
    let rows = s.out_h() * plan.wp; // dY's data rows, gap columns included
    let wide = rows - (plan.wp - s.out_w()); // up to the last value
    let plane_p = plan.hp * plan.wp;
    let padded = s.opts.padding != (0, 0);
    let pad_len = if padded { s.batch * c * plane_p } else { 0 };
    let max_taps = l.max_taps();
    let mut sums = vec![0.0f32; if db.is_some() { s.out_channels } else { 0 }];
    with_scratch(&BATCH_SCRATCH, pad_len, |xpad| {
        // The whole batch padded once, shared by the channel tasks.
        let xs: &[f32] = if padded {
            pad_planes(x, s.in_h, s.in_w, s.opts.padding, xpad);
            xpad
        } else {
            x
        };
        let channel = |oc: usize, dw_o: &mut [f32], db_o: Option<&mut f32>| {
            dw_o.fill(0.0);
            let r = l.out_range(oc);
            let g = oc / og;
            let taps = &l.by_output[r.clone()];
            let offs = &plan.fwd_offs[r];
            if taps.is_empty() && db_o.is_none() {
                return;
            }
            with_scratch(&SCRATCH, rows + max_taps, |buf| {
                let (dyw, dots) = buf.split_at_mut(rows);
                let dots = &mut dots[..taps.len()];
                // Gap columns stay zero for a plain dY (only values are
                // copied); a pooled dY writes whole rows.
                dyw.fill(0.0);
                let mut sum = 0.0f32;
                for b in 0..s.batch {
                    sum += dy.plane_into(s, plan, b, oc, dyw, k);
                    if taps.is_empty() {
                        continue;
                    }
                    let x_bg = &xs[(b * c + g * cg) * plane_p..][..cg * plane_p];
                    multi_dot(&dyw[..wide], x_bg, offs, dots, k);
                    for (t, &d) in taps.iter().zip(dots.iter()) {
                        dw_o[t.wi - oc * kk] += d;
                    }
                }
                if let Some(db_o) = db_o {
                    *db_o = sum;
                }
            });
        };
        let parallel = run_parallel(s, l);
        if sums.is_empty() {
            for_each_chunk(dw, kk, parallel, |oc, dw_o| channel(oc, dw_o, None));
        } else if parallel {
            let items = dw.par_chunks_mut(kk).zip(sums.par_iter_mut());
            items
                .enumerate()
                .for_each(|(oc, (dw_o, db_o))| channel(oc, dw_o, Some(db_o)));
        } else {
            let items = dw.chunks_mut(kk).zip(sums.iter_mut());
            items
                .enumerate()
                .for_each(|(oc, (dw_o, db_o))| channel(oc, dw_o, Some(db_o)));
        }
    });
    if let Some(db) = db {
        db.copy_from_slice(&sums);
    }
}

/// Weight gradient of output channel `oc`'s active taps, any geometry,
/// written into its (C/g, KH, KW) slice `dw_o` (zeros elsewhere).
fn backward_weight_rows(
    s: &Conv2dShape,
    l: &SparseLayout,
    x: &[f32],
    dy: &[f32],
    oc: usize,
    dw_o: &mut [f32],
) {
    let (c, h, wd, o) = (s.in_channels, s.in_h, s.in_w, s.out_channels);
    let (oh, ow) = (s.out_h(), s.out_w());
    let (sy, sx) = s.opts.stride;
    let (py, px) = s.opts.padding;
    let (dy_, dx_) = s.opts.dilation;
    let (cg, og) = (s.group_in(), s.group_out());
    let kk = dw_o.len();
    let g = oc / og;
    dw_o.fill(0.0);
    for t in &l.by_output[l.out_range(oc)] {
        let (oy0, oy1) = valid_range(oh, h, sy, t.ki * dy_, py);
        let (ox0, ox1) = valid_range(ow, wd, sx, t.kj * dx_, px);
        let mut acc = 0.0f32;
        if ox0 < ox1 {
            for b in 0..s.batch {
                let plane = &x[(b * c + g * cg + t.ch) * h * wd..][..h * wd];
                let dy_bo = &dy[(b * o + oc) * oh * ow..][..oh * ow];
                for oy in oy0..oy1 {
                    let iy = oy * sy + t.ki * dy_ - py;
                    let ix0 = ox0 * sx + t.kj * dx_ - px;
                    let src = plane[iy * wd + ix0..(iy + 1) * wd].iter().step_by(sx);
                    for (&gv, &xv) in dy_bo[oy * ow + ox0..oy * ow + ox1].iter().zip(src) {
                        acc += gv * xv;
                    }
                }
            }
        }
        dw_o[t.wi - oc * kk] = acc;
    }
}

// ---------------------------------------------------------------------------
// The op on the tape
// ---------------------------------------------------------------------------

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
        KernelChoice::Best,
    );
    let (xc, wc, bc, l) = (x.clone(), w.clone(), bias.cloned(), layout.clone());
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Tensor::from_op(y, &out_shape, &inputs, move |dy, grads| {
        if wc.needs_grad() {
            let mut dw = crate::buffers::take(wc.numel());
            sparse_conv2d_backward_weight(&s, &l, &xc.data(), dy, &mut dw, KernelChoice::Best);
            grads.add_owned(&wc, dw);
        }
        if xc.needs_grad() {
            let mut dx = crate::buffers::take(xc.numel());
            sparse_conv2d_backward_input(&s, &l, &wc.data(), dy, &mut dx, KernelChoice::Best);
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

// ---------------------------------------------------------------------------
// Fused sparse conv2d → relu → max_pool2d
// ---------------------------------------------------------------------------
//
// The sparse twin of conv2d.rs's fused op (see `conv2d_relu_pool_forward`
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
// channel's wide rows as the gather leaves them (`relu_pool_forward_wide`),
// and backward never builds dY at all: each gradient task rebuilds the dY
// planes it reads from the pooled gradient (`Dy::Pooled`), and the weight
// tasks sum the bias gradient window by window. dx and dw are bitwise those
// of conv2d_sparse → relu → max_pool2d; db equals theirs to rounding (the
// sums run in another order). Other geometries run the sparse convolution of
// one chunk of images into scratch and pool it, and rebuild the whole dY once
// for the separate kernels: bitwise equal to the separate ops throughout.

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
    k: KernelChoice,
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
fn relu_pool_forward_wide(
    s: &Conv2dShape,
    l: &SparseLayout,
    x_c: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pooled_c: &mut [f32],
    mut arg_c: Option<&mut [u32]>,
    k: KernelChoice,
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
                    pad_planes(x_bg, s.in_h, s.in_w, s.opts.padding, xpad);
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
fn relu_pool_grad(
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
fn add_image_sums(sums: &[f32], db: &mut [f32]) {
    db.fill(0.0);
    for sums_b in sums.chunks_exact(db.len()) {
        db.iter_mut().zip(sums_b).for_each(|(d, s)| *d += s);
    }
}

/// db (O) of the stride-1 fused op when no weight gradient is wanted
/// (otherwise the weight tasks sum the planes as they go): the same plane
/// sums from [`Dy::plane_into`], added image by image. OVERWRITES db.
fn bias_grad_pooled(s: &Conv2dShape, plan: &Plan, dy: Dy, db: &mut [f32], k: KernelChoice) {
    let rows = s.out_h() * plan.wp;
    with_scratch(&SCRATCH, rows, |plane| {
        for (oc, d) in db.iter_mut().enumerate() {
            *d = (0..s.batch).fold(0.0, |acc, b| acc + dy.plane_into(s, plan, b, oc, plane, k));
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
    k: KernelChoice,
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
            add_image_sums(sums, db);
        }
        if let Some(dx) = dx {
            sparse_conv2d_backward_input(s, l, w, dy, dx, k);
        }
    });
}

/// The definition, from the dense naive kernels on the masked weight
/// ([`crate::ops::conv2d::conv2d_relu_pool_naive`]). Returns (pooled, arg);
/// the test oracle.
pub fn sparse_conv2d_relu_pool_naive(
    s: &Conv2dShape,
    l: &SparseLayout,
    pool: PoolOptions,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<u32>) {
    crate::ops::conv2d::conv2d_relu_pool_naive(s, pool, x, &l.masked_weight(w), bias)
}

/// max_pool2d(relu(conv2d_sparse(x, w, bias, layout))) without the
/// full-size intermediates: the same values and gradients, bit for bit, as
/// the three ops one after the other. Backward gives dx, dw at the active
/// taps only (exactly 0.0 elsewhere) and dbias, as [`conv2d_sparse`] does.
pub fn conv2d_sparse_relu_max_pool2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    layout: &Rc<SparseLayout>,
    pool: PoolOptions,
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
        KernelChoice::Best,
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
        sparse_conv2d_relu_pool_backward(
            &s,
            &l,
            pool,
            &xc.data(),
            &wc.data(),
            &saved,
            &arg,
            dpooled,
            dw.as_deref_mut(),
            db.as_deref_mut(),
            dx.as_deref_mut(),
            KernelChoice::Best,
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
