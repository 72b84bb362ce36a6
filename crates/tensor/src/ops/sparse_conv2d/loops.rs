//! The inner loop of the forward pass and the input gradient:
//! gather-multiply-add, portable, AVX2 and AVX-512.

use super::*;

/// `out[p] = init + Σ_t ws[t] · src[p + offs[t]]` for every p < out.len().
/// The heart of forward and input gradient.
pub(super) fn gather_fma(
    src: &[f32],
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
    k: Isa,
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
pub(super) fn gather_fma_portable(
    src: &[f32],
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
) {
    pub(super) const LANES: usize = 16;
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

/// How a plane of `n` outputs is cut into register blocks, for vectors of
/// `lanes` floats and blocks of at most `max_vecs` vectors: the
/// ⌈n / lanes⌉ vectors are shared out as evenly as possible, so that no
/// block is a short, latency-bound chain (a lone vector waits 4 cycles per
/// tap on its one FMA chain) and no block computes outputs past the end.
/// Yields (first output, vectors) per block; the last block is moved back
/// to end at n, so when n is not a whole number of vectors it recomputes up
/// to `lanes − 1` outputs of its neighbour. Every output is the same chain
/// of FMAs wherever it is computed, so the overlap rewrites the same bits.
/// A plane that would be one block and is not a whole number of vectors is
/// cut in two, so that the last block fits. Needs n ≥ lanes ≥ 1 and
/// max_vecs ≥ 1.
pub(super) fn register_blocks(
    n: usize,
    lanes: usize,
    max_vecs: usize,
) -> impl Iterator<Item = (usize, usize)> {
    assert!(
        n >= lanes && lanes >= 1 && max_vecs >= 1,
        "register_blocks: {n} outputs, {lanes} lanes"
    );
    let vecs = n.div_ceil(lanes);
    let mut blocks = vecs.div_ceil(max_vecs);
    if blocks == 1 && vecs * lanes > n {
        blocks = 2; // vecs ≥ 2 here, since n > lanes
    }
    let (base, extra) = (vecs / blocks, vecs % blocks);
    (0..blocks).scan(0, move |first_vec, b| {
        let v = base + usize::from(b < extra);
        let p = (*first_vec * lanes).min(n - v * lanes);
        *first_vec += v;
        Some((p, v))
    })
}

/// AVX2 `gather_fma`: a block of up to 12 vectors of 8 outputs held in
/// registers, taps streamed through them (one broadcast per tap, one load
/// and one FMA per tap and 8 outputs), blocks cut by [`register_blocks`].
/// The LeNet's second conv has wide planes of 136 outputs: two blocks of 9
/// and 8 vectors, where blocks of a fixed 64 outputs would compute 192.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `offs.len() == ws.len()`, and
/// `offs[t] + out.len() <= src.len()` for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gather_fma_avx2(
    src: &[f32],
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
) {
    let n = out.len();
    if n < 8 {
        for (q, o) in out.iter_mut().enumerate() {
            let mut a = init;
            for (&off, &wv) in offs.iter().zip(ws) {
                a = wv.mul_add(src[off + q], a);
            }
            *o = a;
        }
        return;
    }
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    for (p, v) in register_blocks(n, 8, 12) {
        // SAFETY (every arm): the block's outputs p..p + 8v lie in 0..n, so
        // its loads lie in off..off + n of src; the features are this
        // function's.
        unsafe {
            match v {
                1 => gather_block_avx2::<1>(sp, offs, ws, init, op, p),
                2 => gather_block_avx2::<2>(sp, offs, ws, init, op, p),
                3 => gather_block_avx2::<3>(sp, offs, ws, init, op, p),
                4 => gather_block_avx2::<4>(sp, offs, ws, init, op, p),
                5 => gather_block_avx2::<5>(sp, offs, ws, init, op, p),
                6 => gather_block_avx2::<6>(sp, offs, ws, init, op, p),
                7 => gather_block_avx2::<7>(sp, offs, ws, init, op, p),
                8 => gather_block_avx2::<8>(sp, offs, ws, init, op, p),
                9 => gather_block_avx2::<9>(sp, offs, ws, init, op, p),
                10 => gather_block_avx2::<10>(sp, offs, ws, init, op, p),
                11 => gather_block_avx2::<11>(sp, offs, ws, init, op, p),
                _ => gather_block_avx2::<12>(sp, offs, ws, init, op, p),
            }
        }
    }
}

/// One register block of the AVX2 gather: outputs p..p + 8V.
///
/// # Safety
/// AVX2 and FMA; `offs.len() == ws.len()`; for every t, src + offs[t] + p
/// .. + 8V is readable, and out + p .. + 8V writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn gather_block_avx2<const V: usize>(
    src: *const f32,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: *mut f32,
    p: usize,
) {
    use std::arch::x86_64::*;
    let mut a = [_mm256_set1_ps(init); V];
    for (&off, &wv) in offs.iter().zip(ws) {
        let wv = _mm256_set1_ps(wv);
        // SAFETY: the caller's bounds: src + off + p + 8V is readable.
        let s = unsafe { src.add(off + p) };
        for (j, aj) in a.iter_mut().enumerate() {
            // SAFETY: 8j + 8 <= 8V.
            *aj = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(s.add(8 * j)) }, *aj);
        }
    }
    for (j, aj) in a.iter().enumerate() {
        // SAFETY: the caller's bounds: out + p + 8V is writable.
        unsafe { _mm256_storeu_ps(out.add(p + 8 * j), *aj) };
    }
}

/// AVX-512 `gather_fma`: blocks of up to 12 vectors of 16 outputs, cut by
/// [`register_blocks`] as in the AVX2 loop, which streams the taps through
/// each output in the same order: the result is bitwise the AVX2 loop's,
/// with half the instructions per output. Planes under 128 outputs go to
/// the AVX2 loop, whose 8-float vectors waste less of them.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA, `offs.len() == ws.len()`,
/// and `offs[t] + out.len() <= src.len()` for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn gather_fma_avx512(
    src: &[f32],
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
) {
    let n = out.len();
    if n < AVX512_MIN_OUTPUTS {
        // SAFETY: the caller's guarantees are the AVX2 loop's.
        return unsafe { gather_fma_avx2(src, offs, ws, init, out) };
    }
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    for (p, v) in register_blocks(n, 16, 12) {
        // SAFETY (every arm): as in the AVX2 loop, with 16-float vectors.
        unsafe {
            match v {
                1 => gather_block_avx512::<1>(sp, offs, ws, init, op, p),
                2 => gather_block_avx512::<2>(sp, offs, ws, init, op, p),
                3 => gather_block_avx512::<3>(sp, offs, ws, init, op, p),
                4 => gather_block_avx512::<4>(sp, offs, ws, init, op, p),
                5 => gather_block_avx512::<5>(sp, offs, ws, init, op, p),
                6 => gather_block_avx512::<6>(sp, offs, ws, init, op, p),
                7 => gather_block_avx512::<7>(sp, offs, ws, init, op, p),
                8 => gather_block_avx512::<8>(sp, offs, ws, init, op, p),
                9 => gather_block_avx512::<9>(sp, offs, ws, init, op, p),
                10 => gather_block_avx512::<10>(sp, offs, ws, init, op, p),
                11 => gather_block_avx512::<11>(sp, offs, ws, init, op, p),
                _ => gather_block_avx512::<12>(sp, offs, ws, init, op, p),
            }
        }
    }
}

/// Planes shorter than this go from the AVX-512 gather to the AVX2 one.
const AVX512_MIN_OUTPUTS: usize = 128;

/// One register block of the AVX-512 gather: outputs p..p + 16V.
///
/// # Safety
/// AVX-512F; `offs.len() == ws.len()`; for every t, src + offs[t] + p
/// .. + 16V is readable, and out + p .. + 16V writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn gather_block_avx512<const V: usize>(
    src: *const f32,
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: *mut f32,
    p: usize,
) {
    use std::arch::x86_64::*;
    let mut a = [_mm512_set1_ps(init); V];
    for (&off, &wv) in offs.iter().zip(ws) {
        let wv = _mm512_set1_ps(wv);
        // SAFETY: the caller's bounds: src + off + p + 16V is readable.
        let s = unsafe { src.add(off + p) };
        for (j, aj) in a.iter_mut().enumerate() {
            // SAFETY: 16j + 16 <= 16V.
            *aj = _mm512_fmadd_ps(wv, unsafe { _mm512_loadu_ps(s.add(16 * j)) }, *aj);
        }
    }
    for (j, aj) in a.iter().enumerate() {
        // SAFETY: the caller's bounds: out + p + 16V is writable.
        unsafe { _mm512_storeu_ps(out.add(p + 16 * j), *aj) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks of every plane length cover it exactly once or more, in
    /// order, never past its end, with 1 to max vectors each.
    #[test]
    fn register_blocks_cover_the_plane_and_stay_inside() {
        for (lanes, max) in [(8, 12), (16, 12), (8, 1), (16, 3)] {
            for n in lanes..1200 {
                let mut covered = 0;
                for (p, v) in register_blocks(n, lanes, max) {
                    assert!((1..=max).contains(&v), "n {n}: {v} vectors");
                    assert!(p + v * lanes <= n, "n {n}: block at {p} of {v} overruns");
                    assert!(p <= covered, "n {n}: gap before {p}");
                    covered = p + v * lanes;
                }
                assert_eq!(covered, n, "n {n}, {lanes} lanes");
            }
        }
    }

    /// Every gather against the scalar sum, for plane lengths on both sides
    /// of each loop's block sizes; the SIMD loops bitwise equal to each
    /// other, and none writing past `out` (a sentinel follows it).
    #[test]
    fn gathers_match_the_scalar_sum_at_every_length() {
        let offs = [0usize, 3, 17, 40, 41];
        let ws = [0.5f32, -1.25, 2.0, 0.75, -0.5];
        let src: Vec<f32> = (0..1400)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        for n in (1..300).chain([891, 892, 1024, 1300]) {
            let want: Vec<f64> = (0..n)
                .map(|p| {
                    let taps = offs.iter().zip(&ws);
                    0.25 + taps
                        .map(|(&o, &w)| w as f64 * src[o + p] as f64)
                        .sum::<f64>()
                })
                .collect();
            let mut results = Vec::new();
            for k in Isa::available() {
                let mut buf = vec![f32::NAN; n + 32];
                buf[n..].fill(7.0);
                gather_fma(&src, &offs, &ws, 0.25, &mut buf[..n], k);
                assert!(
                    buf[n..].iter().all(|&v| v == 7.0),
                    "n {n} {k:?}: wrote past out"
                );
                for (p, (&g, &w)) in buf.iter().zip(&want).enumerate() {
                    assert!((g as f64 - w).abs() < 1e-5, "n {n} {k:?} p {p}: {g} vs {w}");
                }
                results.push(buf);
            }
            // Where both run: the AVX-512 loop gives the AVX2 loop's bits.
            if let [_, avx2, avx512] = &results[..] {
                assert!(
                    avx512
                        .iter()
                        .zip(avx2)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "n {n}: AVX-512 and AVX2 differ"
                );
            }
        }
    }
}
