//! The gather of `loops.rs` on rows of whole vectors, written straight into
//! a compact (rows, len) plane (the weight gradient's dot products over
//! rows are in `row_dots.rs`).
//!
//! The wide trick computes an output plane as one long row of the input's
//! row length Wp, with Wp − OW junk columns per row, and then copies the OW
//! good ones of each row out. On the ResNets' maps (rows of 32, 16 and 8
//! floats, whole vectors) a register block can instead hold R rows of V
//! vectors: vector (r, v) reads the input at r·Wp + 16v + off_t and is
//! stored at r·OW + 16v. The junk columns are neither computed nor copied
//! (a sixteenth of the work on 32 × 32 maps, a fifth on 8 × 8 ones), and the
//! copy out of the wide rows, one of the bigger costs of a sparse step at
//! 10 % density, is gone. Each output is the same chain of FMAs as in
//! [`gather_fma`], bias first, then the taps in order, so the result is
//! bitwise the wide loop's.

use super::*;

/// How [`gather_fma_rows`] covers a row: `per_row` vectors of 16 floats
/// (AVX-512) or of 8 (AVX2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct RowVectors {
    pub(super) zmm: bool,
    pub(super) per_row: usize,
}

/// Vectors per row at most: rows of up to 64 floats with AVX-512, 32 with
/// AVX2. Longer rows gain little from skipping their few junk columns.
pub(super) const MAX_PER_ROW: usize = 4;

/// Registers of outputs per block, as in the wide loops.
const MAX_VECS: usize = 12;

/// Whether rows of `len` outputs are whole vectors on this ISA, and how
/// many; `None` sends the caller to the wide loop (the portable path
/// always, and rows such as the LeNet's 28, 24 or 10).
pub(super) fn row_vectors(len: usize, k: Isa) -> Option<RowVectors> {
    let fits = |lanes: usize| len > 0 && len.is_multiple_of(lanes) && len / lanes <= MAX_PER_ROW;
    let (zmm, lanes) = if k.avx512() && fits(16) {
        (true, 16)
    } else if k.avx2() && fits(8) {
        (false, 8)
    } else {
        return None;
    };
    // Three vectors a row are not among the block shapes below.
    let per_row = len / lanes;
    (per_row != 3).then_some(RowVectors { zmm, per_row })
}

/// `out[r·len + x] = init + Σ_t ws[t] · src[r·stride + x + offs[t]]` for
/// every row r < out.len() / len and x < len: [`gather_fma`] over rows
/// whose inputs lie `stride` floats apart, written compactly. `rv` comes
/// from [`row_vectors`] for this `len`.
#[allow(clippy::too_many_arguments)] // gather_fma's operands and the row geometry
pub(super) fn gather_fma_rows(
    src: &[f32],
    stride: usize,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
    len: usize,
    rv: RowVectors,
) {
    assert_eq!(
        offs.len(),
        ws.len(),
        "gather_fma_rows: one weight per offset"
    );
    let lanes = if rv.zmm { 16 } else { 8 };
    assert!(
        len == rv.per_row * lanes && len <= stride && out.len().is_multiple_of(len),
        "gather_fma_rows: rows of {len} in {stride}, {} outputs",
        out.len()
    );
    let rows = out.len() / len;
    if rows == 0 {
        return;
    }
    let reach = offs
        .iter()
        .max()
        .map_or(0, |&m| m + (rows - 1) * stride + len);
    assert!(
        reach <= src.len(),
        "gather_fma_rows: reads up to {reach}, source has {}",
        src.len()
    );
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    let max_rows = MAX_VECS / rv.per_row;
    let blocks = rows.div_ceil(max_rows);
    let (base, extra) = (rows / blocks, rows % blocks);
    let mut r0 = 0;
    for b in 0..blocks {
        let r = base + usize::from(b < extra);
        let block = block_kernel(rv, r);
        // SAFETY: rows r0..r0 + r < rows, so every load lies in
        // off + r·stride + (0..len) for some row r < rows, inside src by
        // the assert above, and every store in out (rows·len floats);
        // `row_vectors` handed out zmm only where AVX-512F is present and
        // ymm only where AVX2 and FMA are.
        unsafe {
            block(
                sp.add(r0 * stride),
                stride,
                offs,
                ws,
                init,
                op.add(r0 * len),
                len,
            )
        };
        r0 += r;
    }
}

/// A block kernel: R rows of V vectors from `src`, rows `stride` apart, to
/// `out`, rows `len` apart.
type Block = unsafe fn(*const f32, usize, &[usize], &[f32], f32, *mut f32, usize);

/// The block kernel for `r` rows of `rv.per_row` vectors (at most
/// [`MAX_VECS`] vectors in all).
fn block_kernel(rv: RowVectors, r: usize) -> Block {
    #[cfg(target_arch = "x86_64")]
    {
        if rv.zmm {
            return match (rv.per_row, r) {
                (1, 1) => block_avx512::<1, 1>,
                (1, 2) => block_avx512::<1, 2>,
                (1, 3) => block_avx512::<1, 3>,
                (1, 4) => block_avx512::<1, 4>,
                (1, 5) => block_avx512::<1, 5>,
                (1, 6) => block_avx512::<1, 6>,
                (1, 7) => block_avx512::<1, 7>,
                (1, 8) => block_avx512::<1, 8>,
                (1, 9) => block_avx512::<1, 9>,
                (1, 10) => block_avx512::<1, 10>,
                (1, 11) => block_avx512::<1, 11>,
                (1, 12) => block_avx512::<1, 12>,
                (2, 1) => block_avx512::<2, 1>,
                (2, 2) => block_avx512::<2, 2>,
                (2, 3) => block_avx512::<2, 3>,
                (2, 4) => block_avx512::<2, 4>,
                (2, 5) => block_avx512::<2, 5>,
                (2, 6) => block_avx512::<2, 6>,
                (4, 1) => block_avx512::<4, 1>,
                (4, 2) => block_avx512::<4, 2>,
                (4, 3) => block_avx512::<4, 3>,
                _ => unreachable!("no block of {r} rows of {} vectors", rv.per_row),
            };
        }
        match (rv.per_row, r) {
            (1, 1) => block_avx2::<1, 1>,
            (1, 2) => block_avx2::<1, 2>,
            (1, 3) => block_avx2::<1, 3>,
            (1, 4) => block_avx2::<1, 4>,
            (1, 5) => block_avx2::<1, 5>,
            (1, 6) => block_avx2::<1, 6>,
            (1, 7) => block_avx2::<1, 7>,
            (1, 8) => block_avx2::<1, 8>,
            (1, 9) => block_avx2::<1, 9>,
            (1, 10) => block_avx2::<1, 10>,
            (1, 11) => block_avx2::<1, 11>,
            (1, 12) => block_avx2::<1, 12>,
            (2, 1) => block_avx2::<2, 1>,
            (2, 2) => block_avx2::<2, 2>,
            (2, 3) => block_avx2::<2, 3>,
            (2, 4) => block_avx2::<2, 4>,
            (2, 5) => block_avx2::<2, 5>,
            (2, 6) => block_avx2::<2, 6>,
            (4, 1) => block_avx2::<4, 1>,
            (4, 2) => block_avx2::<4, 2>,
            (4, 3) => block_avx2::<4, 3>,
            _ => unreachable!("no block of {r} rows of {} vectors", rv.per_row),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("row_vectors hands out no rows off x86-64 ({rv:?}, {r})")
}

/// R rows of V 8-float vectors: per tap, one broadcast, and one load and
/// one FMA per vector.
///
/// # Safety
/// AVX2 and FMA; `offs.len() == ws.len()`; for every t and row r < R,
/// src + offs[t] + r·stride .. + 8V is readable, and out + r·len .. + 8V
/// writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const V: usize, const R: usize>(
    src: *const f32,
    stride: usize,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: *mut f32,
    len: usize,
) {
    use std::arch::x86_64::*;
    let mut a = [[_mm256_set1_ps(init); V]; R];
    for (&off, &wv) in offs.iter().zip(ws) {
        let wv = _mm256_set1_ps(wv);
        for (r, ar) in a.iter_mut().enumerate() {
            // SAFETY: the caller's bounds: row r of the tap's input.
            let s = unsafe { src.add(off + r * stride) };
            for (j, aj) in ar.iter_mut().enumerate() {
                // SAFETY: 8j + 8 <= 8V.
                *aj = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(s.add(8 * j)) }, *aj);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (j, aj) in ar.iter().enumerate() {
            // SAFETY: the caller's bounds: out + r·len + 8V is writable.
            unsafe { _mm256_storeu_ps(out.add(r * len + 8 * j), *aj) };
        }
    }
}

/// As [`block_avx2`] with 16-float vectors.
///
/// # Safety
/// AVX-512F; otherwise as [`block_avx2`] with 16V for 8V.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512<const V: usize, const R: usize>(
    src: *const f32,
    stride: usize,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: *mut f32,
    len: usize,
) {
    use std::arch::x86_64::*;
    let mut a = [[_mm512_set1_ps(init); V]; R];
    for (&off, &wv) in offs.iter().zip(ws) {
        let wv = _mm512_set1_ps(wv);
        for (r, ar) in a.iter_mut().enumerate() {
            // SAFETY: the caller's bounds: row r of the tap's input.
            let s = unsafe { src.add(off + r * stride) };
            for (j, aj) in ar.iter_mut().enumerate() {
                // SAFETY: 16j + 16 <= 16V.
                *aj = _mm512_fmadd_ps(wv, unsafe { _mm512_loadu_ps(s.add(16 * j)) }, *aj);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (j, aj) in ar.iter().enumerate() {
            // SAFETY: the caller's bounds: out + r·len + 16V is writable.
            unsafe { _mm512_storeu_ps(out.add(r * len + 16 * j), *aj) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On every ISA that takes rows, for row lengths and row counts around
    /// the block shapes: the rows' outputs are bitwise the wide loop's on
    /// the same ISA, copied out of its wide rows, and nothing outside the
    /// plane is written.
    #[test]
    fn rows_give_the_wide_loops_bits() {
        let src: Vec<f32> = (0..6000)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let mut covered = 0;
        for k in Isa::available() {
            for len in [8, 16, 24, 32, 48, 64] {
                let Some(rv) = row_vectors(len, k) else {
                    continue;
                };
                for (rows, gap) in [(1, 0), (2, 2), (5, 2), (7, 3), (8, 2), (13, 1), (32, 2)] {
                    let stride = len + gap;
                    for taps in [0, 1, 9, 23] {
                        let offs: Vec<usize> = (0..taps).map(|t| (t * 131) % 700).collect();
                        let ws: Vec<f32> = (0..taps).map(|t| 0.3 - 0.07 * t as f32).collect();
                        let wide = (rows - 1) * stride + len;
                        let mut yw = vec![0.0; wide];
                        gather_fma(&src, &offs, &ws, 0.5, &mut yw, k);
                        let mut want = vec![0.0; rows * len];
                        copy_rows(&mut want, len, &yw, stride, rows, len, k);
                        let mut got = vec![f32::NAN; rows * len + 40];
                        got[rows * len..].fill(7.0);
                        gather_fma_rows(
                            &src,
                            stride,
                            &offs,
                            &ws,
                            0.5,
                            &mut got[..rows * len],
                            len,
                            rv,
                        );
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got[..rows * len]),
                            bits(&want),
                            "{k:?} len {len} rows {rows} stride {stride} taps {taps}"
                        );
                        assert!(
                            got[rows * len..].iter().all(|&v| v == 7.0),
                            "wrote past out"
                        );
                        covered += 1;
                    }
                }
            }
        }
        // Off x86-64, or with the portable path forced, no ISA takes rows.
        if Isa::available().iter().any(|k| k.avx2()) {
            assert!(covered > 0);
        }
    }

    /// Which rows go to which vectors: whole vectors only, at most four a
    /// row and never three, and none on the portable path.
    #[test]
    fn row_vectors_take_whole_vectors_only() {
        for k in Isa::available() {
            for len in 0..80 {
                match row_vectors(len, k) {
                    None => {}
                    Some(rv) => {
                        let lanes = if rv.zmm { 16 } else { 8 };
                        assert_eq!(rv.per_row * lanes, len, "{k:?} {len}");
                        assert!(matches!(rv.per_row, 1 | 2 | 4), "{k:?} {len}");
                        assert!(k.avx2(), "{k:?} took rows of {len}");
                    }
                }
            }
        }
    }
}
