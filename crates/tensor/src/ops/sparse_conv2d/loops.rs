//! The inner loops every sparse kernel runs: gather-multiply-add and
//! multi-dot, portable, AVX2 and AVX-512.

use super::*;

#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `out[p] = init + Σ_t ws[t] · src[p + offs[t]]` for every p < out.len().
/// The heart of forward and input gradient.
pub(super) fn gather_fma(
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

/// AVX2 `gather_fma`: 64 outputs in eight registers, taps streamed through
/// them (one broadcast per tap, one load + FMA per tap and 8 outputs).
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
pub(super) unsafe fn gather_fma_avx512(
    src: &[f32],
    offs: &[usize],
    ws: &[f32],
    init: f32,
    out: &mut [f32],
) {
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
pub(super) fn multi_dot(a: &[f32], src: &[f32], offs: &[usize], out: &mut [f32], k: KernelChoice) {
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
pub(super) fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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
pub(super) fn sum8(v: [f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// AVX2 `multi_dot`: four taps at a time share each load of `a` (10 loads
/// per 8 FMAs instead of 16), with two accumulators per tap (16 floats a
/// step), so that eight independent FMA chains hide the FMA's latency. A
/// short last group repeats its last tap and drops the extra results, so
/// every tap is summed the same way.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `offs.len() == out.len()`, and
/// `offs[t] + a.len() <= src.len()` for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn multi_dot_avx2(a: &[f32], src: &[f32], offs: &[usize], out: &mut [f32]) {
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
