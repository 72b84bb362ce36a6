//! The micro-kernel every dense product of this module runs on: one tile
//! of MR rows × NR columns of C, held in registers while the inner
//! dimension streams past.
//!
//! ```text
//! out[r·ldc + l] = start[r, l] + Σ_k a[arows.at(r, k)] · b[rows.at(k, l / lanes) + l % lanes]     r < MR, l < NR
//! ```
//!
//! A is read wherever [`ARows`] says (through strides, or gathered) and
//! B's row k as NR/lanes vectors wherever [`BRows`] says, so that one
//! kernel serves all its callers without copying an operand that is
//! already in a usable order:
//!
//! * the forward pass (`packed.rs`): A is a packed weight panel
//!   (`a_rs = 1, a_cs = MR`), B a packed im2col panel ([`Strided`], rows
//!   NR apart), and the tile starts at the bias;
//! * the forward pass of stride-1 layers (`gathered.rs`): A as above, B
//!   read from a padded copy of the input itself ([`Gathered`]: row k, a
//!   tap, at its offset, each vector at the offset of its output row);
//! * the weight gradient (`backward_tiled.rs`): A is MR rows of the im2col
//!   matrix read where they lie in the padded input ([`AGathered`]), B a
//!   panel of dY transposed, and the tile starts at what `out` already
//!   holds, so that image after image accumulates into it;
//! * the input gradient of strided layers (`backward_tiled.rs`): A is Wᵀ read
//!   in place (`a_rs = 1, a_cs = K`), B is dY itself (rows P apart).
//!
//! Per k: NR/lanes loads of B and MR broadcasts of A feed MR·NR/lanes FMAs
//! (AVX-512: 8 × 32 in 16 registers; AVX2 and the portable loop: 4 × 16).
//! Each output adds its K products in order, whatever the threads; the
//! SIMD kernels fuse each multiply-add, the portable one rounds twice.

use crate::isa::Isa;

/// Rows (MR) and columns (NR) of the micro-kernel's tile on `k`.
pub(super) fn tile(k: Isa) -> (usize, usize) {
    if k.avx512() {
        (8, 32)
    } else {
        (4, 16)
    }
}

/// The tile for products only 16 columns wide (the weight gradient of a
/// 16-channel layer), where [`tile`]'s 32 columns would be half zeros:
/// AVX-512 takes 16 × 16 (one load and 16 broadcasts feed 16 FMAs), the
/// others their usual 4 × 16.
pub(super) fn narrow_tile(k: Isa) -> (usize, usize) {
    if k.avx512() {
        (16, 16)
    } else {
        (4, 16)
    }
}

/// Where A's value (r, k) lies: `at(r, k)`.
pub(super) trait ARows: Copy {
    fn at(self, r: usize, k: usize) -> usize;
    /// One past the last value the tile reads from A over its `mr` rows and
    /// `kk` steps: the bound its loads are checked against.
    fn reach(self, mr: usize, kk: usize) -> usize;
}

/// A through strides: (r, k) at `r·rs + k·cs`.
impl ARows for (usize, usize) {
    #[inline(always)]
    fn at(self, r: usize, k: usize) -> usize {
        r * self.0 + k * self.1
    }
    fn reach(self, mr: usize, kk: usize) -> usize {
        match kk {
            0 => 0,
            _ => (mr - 1) * self.0 + (kk - 1) * self.1 + 1,
        }
    }
}

/// A gathered: (r, k) at `rows[r] + segs[k]`, the im2col matrix's row r
/// (a tap's offset in the padded input) at output pixel k (the pixel's
/// offset there), read in place. Made once per call ([`AGathered::new`],
/// which finds the largest pixel offset) and given each tile's rows
/// ([`AGathered::rows`]).
#[derive(Clone, Copy)]
pub(super) struct AGathered<'a> {
    rows: &'a [usize],
    segs: &'a [usize],
    max_seg: usize,
}

impl<'a> AGathered<'a> {
    pub(super) fn new(segs: &'a [usize]) -> AGathered<'a> {
        let max_seg = segs.iter().copied().max().unwrap_or(0);
        AGathered {
            rows: &[],
            segs,
            max_seg,
        }
    }

    pub(super) fn rows(self, rows: &'a [usize]) -> AGathered<'a> {
        AGathered { rows, ..self }
    }
}

impl ARows for AGathered<'_> {
    #[inline(always)]
    fn at(self, r: usize, k: usize) -> usize {
        self.rows[r] + self.segs[k]
    }
    fn reach(self, mr: usize, kk: usize) -> usize {
        // Every pixel, not just the first kk: a bound at least as high.
        let row = self.rows[..mr].iter().max();
        match kk {
            0 => 0,
            _ => row.map_or(0, |r| r + self.max_seg + 1),
        }
    }
}

/// Where B's row k lies: its NR values as vectors of `lanes` (the ISA's
/// width), vector v from `at(k, v, lanes)` on.
pub(super) trait BRows: Copy {
    fn at(self, k: usize, v: usize, lanes: usize) -> usize;
    /// One past the last value the tile reads from B, over its `kk` rows of
    /// `nv` vectors: the bound its loads are checked against.
    fn reach(self, kk: usize, nv: usize, lanes: usize) -> usize;
}

/// Rows `rs` floats apart, each NR contiguous values (a packed panel:
/// `rs = NR`; a row-major matrix read in place: its row length).
#[derive(Clone, Copy)]
pub(super) struct Strided(pub(super) usize);

impl BRows for Strided {
    #[inline(always)]
    fn at(self, k: usize, v: usize, lanes: usize) -> usize {
        k * self.0 + v * lanes
    }
    fn reach(self, kk: usize, nv: usize, lanes: usize) -> usize {
        if kk == 0 {
            0
        } else {
            (kk - 1) * self.0 + nv * lanes
        }
    }
}

/// Row k at `offs[k]`, its vector v at `segs[v]` from there (at most two
/// vectors a row): the taps of a convolution read from its padded input.
/// Made once per call ([`Gathered::new`], which finds the largest offset
/// for the bound check) and moved from tile to tile ([`Gathered::at`]).
#[derive(Clone, Copy)]
pub(super) struct Gathered<'a> {
    offs: &'a [usize],
    max_off: usize,
    segs: [usize; 2],
}

impl<'a> Gathered<'a> {
    pub(super) fn new(offs: &'a [usize]) -> Gathered<'a> {
        let max_off = offs.iter().copied().max().unwrap_or(0);
        Gathered {
            offs,
            max_off,
            segs: [0; 2],
        }
    }

    /// The rows for a tile whose vectors start `segs` after each row's
    /// offset.
    pub(super) fn at(self, segs: [usize; 2]) -> Gathered<'a> {
        Gathered { segs, ..self }
    }
}

impl BRows for Gathered<'_> {
    #[inline(always)]
    fn at(self, k: usize, v: usize, _lanes: usize) -> usize {
        self.offs[k] + self.segs[v]
    }
    fn reach(self, kk: usize, nv: usize, lanes: usize) -> usize {
        // Every offset, not just the first kk: a bound at least as high.
        match kk {
            0 => 0,
            _ => self.max_off + self.segs[..nv].iter().max().unwrap_or(&0) + lanes,
        }
    }
}

/// Where a tile's sums start.
#[derive(Clone, Copy)]
pub(super) enum Start<'a> {
    /// Row r starts at `init[r]` (the bias, or 0); MR values.
    Rows(&'a [f32]),
    /// Each output starts at the value `out` holds.
    Out,
}

/// The floats per vector of B on `k` (16, or 8 for AVX2 and the portable
/// loop, which reads B as AVX2 does).
pub(super) fn lanes(k: Isa) -> usize {
    if k.avx512() {
        16
    } else {
        8
    }
}

/// One MR × NR tile (see the module's formula; [`tile`] or
/// [`narrow_tile`]) over `kk` steps of the inner dimension, A read where
/// `arows` says (strides `(rs, cs)`, or [`AGathered`]) and B's rows where
/// `rows` says.
#[allow(clippy::too_many_arguments)] // the formula's operands, one each
pub(super) fn kernel(
    k: Isa,
    (mr, nr): (usize, usize),
    kk: usize,
    a: &[f32],
    arows: impl ARows,
    b: &[f32],
    rows: impl BRows,
    start: Start,
    out: &mut [f32],
    ldc: usize,
) {
    assert!(
        (mr, nr) == tile(k) || (mr, nr) == narrow_tile(k),
        "tile kernel: no {mr} × {nr} tile on {k:?}"
    );
    let lanes = lanes(k);
    assert!(
        (kk == 0
            || (a.len() >= arows.reach(mr, kk) && b.len() >= rows.reach(kk, nr / lanes, lanes)))
            && out.len() >= (mr - 1) * ldc + nr
            && ldc >= nr,
        "tile kernel: operands too short"
    );
    let init = match start {
        Start::Rows(init) => Some(&init[..mr]),
        Start::Out => None,
    };
    #[cfg(target_arch = "x86_64")]
    if k.avx512() {
        let (a, b, out) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        // SAFETY: AVX-512F is present (checked by `avx512`); the bounds
        // the kernel relies on were asserted above for its tile, 8 × 32
        // (two vectors a row) or 16 × 16 (one).
        unsafe {
            if nr == 32 {
                kernel_avx512::<8, 2, _, _>(kk, (a, arows), (b, rows), init, out, ldc)
            } else {
                kernel_avx512::<16, 1, _, _>(kk, (a, arows), (b, rows), init, out, ldc)
            }
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k.avx2() {
        // SAFETY: AVX2 and FMA are present (checked by `avx2`); the bounds
        // were asserted above for its tile (4 × 16).
        unsafe {
            kernel_avx2(
                kk,
                (a.as_ptr(), arows),
                (b.as_ptr(), rows),
                init,
                out.as_mut_ptr(),
                ldc,
            )
        };
        return;
    }
    kernel_portable(kk, (a, arows), (b, rows), init, out, ldc);
}

/// The portable tile, 4 × 16, in local arrays the compiler keeps in
/// vector registers; each product rounded, then added.
fn kernel_portable(
    kk: usize,
    (a, arows): (&[f32], impl ARows),
    (b, rows): (&[f32], impl BRows),
    init: Option<&[f32]>,
    out: &mut [f32],
    ldc: usize,
) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0f32; NR]; MR];
    for (r, row) in acc.iter_mut().enumerate() {
        match init {
            Some(init) => *row = [init[r]; NR],
            None => row.copy_from_slice(&out[r * ldc..r * ldc + NR]),
        }
    }
    for kc in 0..kk {
        // B as AVX2 reads it: two vectors of 8.
        let bk: [f32; NR] = std::array::from_fn(|l| b[rows.at(kc, l / 8, 8) + l % 8]);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = a[arows.at(r, kc)];
            for (c, &bv) in row.iter_mut().zip(&bk) {
                *c += av * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        out[r * ldc..r * ldc + NR].copy_from_slice(row);
    }
}

/// The AVX2 tile, 4 rows × 16 columns in 8 registers.
///
/// # Safety
/// AVX2 and FMA; a + arows.at(r, k) is readable for r < 4, k < kk;
/// b + rows.at(k, v, 8) + 8 for k < kk, v < 2, and out + r·ldc + 16 is readable and writable for
/// r < 4.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(
    kk: usize,
    (a, arows): (*const f32, impl ARows),
    (b, rows): (*const f32, impl BRows),
    init: Option<&[f32]>,
    out: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let mut acc: [[__m256; 2]; 4] = std::array::from_fn(|r| match init {
        Some(init) => [_mm256_set1_ps(init[r]); 2],
        // SAFETY: the caller's bound: out + r·ldc + 16 is readable.
        None => unsafe {
            [
                _mm256_loadu_ps(out.add(r * ldc)),
                _mm256_loadu_ps(out.add(r * ldc + 8)),
            ]
        },
    });
    for kc in 0..kk {
        // SAFETY: kc < kk: both vectors of row kc are inside.
        let (b0, b1) = unsafe {
            (
                _mm256_loadu_ps(b.add(rows.at(kc, 0, 8))),
                _mm256_loadu_ps(b.add(rows.at(kc, 1, 8))),
            )
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: r < 4 and kc < kk: the caller's bound on a.
            let av = _mm256_set1_ps(unsafe { *a.add(arows.at(r, kc)) });
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: the caller's bound: out + r·ldc + 16 is writable.
        unsafe {
            _mm256_storeu_ps(out.add(r * ldc), row[0]);
            _mm256_storeu_ps(out.add(r * ldc + 8), row[1]);
        }
    }
}

/// The AVX-512 tile, MR rows × NV vectors of 16 columns in MR·NV
/// registers: 8 × 32 or 16 × 16.
///
/// # Safety
/// AVX-512F; a + arows.at(r, k) is readable for r < MR, k < kk;
/// b + rows.at(k, v, 16) + 16 for k < kk, v < NV; init (if any) holds MR values, and
/// out + r·ldc + 16·NV is readable and writable for r < MR.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const MR: usize, const NV: usize, A: ARows, B: BRows>(
    kk: usize,
    (a, arows): (*const f32, A),
    (b, rows): (*const f32, B),
    init: Option<&[f32]>,
    out: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let mut acc: [[__m512; NV]; MR] = std::array::from_fn(|r| match init {
        Some(init) => [_mm512_set1_ps(init[r]); NV],
        // SAFETY: the caller's bound: out + r·ldc + 16·NV is readable.
        None => std::array::from_fn(|v| unsafe { _mm512_loadu_ps(out.add(r * ldc + 16 * v)) }),
    });
    for kc in 0..kk {
        // SAFETY: kc < kk: every vector of row kc is inside.
        let bv: [__m512; NV] =
            std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b.add(rows.at(kc, v, 16))) });
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: r < MR and kc < kk: the caller's bound on a.
            let av = _mm512_set1_ps(unsafe { *a.add(arows.at(r, kc)) });
            for (c, &bc) in row.iter_mut().zip(&bv) {
                *c = _mm512_fmadd_ps(av, bc, *c);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, &c) in row.iter().enumerate() {
            // SAFETY: the caller's bound: out + r·ldc + 16·NV is writable.
            unsafe { _mm512_storeu_ps(out.add(r * ldc + 16 * v), c) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ISA's tile against the formula, for both strides of A and
    /// both starts, with operands just long enough (the assert's bounds).
    #[test]
    fn tiles_match_the_formula() {
        for (k, (mr, nr)) in Isa::available()
            .into_iter()
            .flat_map(|k| [(k, tile(k)), (k, narrow_tile(k))])
        {
            let kk = 7;
            for (a_rs, a_cs) in [(1, mr), (kk + 3, 1)] {
                let a_len = (mr - 1) * a_rs + (kk - 1) * a_cs + 1;
                let a: Vec<f32> = (0..a_len).map(|i| (i % 13) as f32 * 0.25 - 1.0).collect();
                let b_rs = nr + 3;
                let b_len = (kk - 1) * b_rs + nr;
                let b: Vec<f32> = (0..b_len).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect();
                let ldc = nr + 5;
                let init: Vec<f32> = (0..mr).map(|r| r as f32 * 0.5 - 2.0).collect();
                let before: Vec<f32> = (0..(mr - 1) * ldc + nr).map(|i| i as f32).collect();
                for start in [Start::Rows(&init), Start::Out] {
                    let mut out = before.clone();
                    kernel(
                        k,
                        (mr, nr),
                        kk,
                        &a,
                        (a_rs, a_cs),
                        &b,
                        Strided(b_rs),
                        start,
                        &mut out,
                        ldc,
                    );
                    for r in 0..mr {
                        for l in 0..nr {
                            let mut want = match start {
                                Start::Rows(init) => init[r],
                                Start::Out => before[r * ldc + l],
                            };
                            for kc in 0..kk {
                                want += a[r * a_rs + kc * a_cs] * b[kc * b_rs + l];
                            }
                            let got = out[r * ldc + l];
                            // Small integers and quarters: exact either way.
                            assert_eq!(got, want, "{k:?} a strides {a_rs}/{a_cs} ({r}, {l})");
                        }
                    }
                }
            }
        }
    }
}
