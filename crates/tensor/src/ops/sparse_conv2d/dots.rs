//! The inner loop of the weight gradient: multi-dot, one dot product per
//! tap sharing each load of dY, portable, AVX2 and AVX-512.

use super::*;

/// `out[t] = Σ_p a[p] · src[p + offs[t]]` over p < a.len(): one dot product
/// per tap, the heart of the weight gradient.
pub(super) fn multi_dot(a: &[f32], src: &[f32], offs: &[usize], out: &mut [f32], k: Isa) {
    assert_eq!(offs.len(), out.len(), "multi_dot: one output per offset");
    let reach = offs.iter().max().map_or(0, |&m| m + a.len());
    assert!(
        reach <= src.len(),
        "multi_dot: reads up to {reach}, source has {}",
        src.len()
    );
    #[cfg(target_arch = "x86_64")]
    if k.avx512() {
        // SAFETY: AVX-512F, AVX2 and FMA are present (checked by `avx512`);
        // the bounds the function relies on were asserted above.
        unsafe { multi_dot_avx512(a, src, offs, out) };
        return;
    }
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

/// AVX2 `multi_dot`: up to four taps at a time share each load of `a` (10
/// loads per 8 FMAs instead of 16), with two accumulators per tap (16 floats
/// a step), so that up to eight independent FMA chains hide the FMA's
/// latency. The taps are cut into groups as evenly as possible
/// ([`tap_groups`]): the LeNet's 9 taps per output channel are three groups
/// of 3, not 4, 4 and a group of 1 that would do the work of 4.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `offs.len() == out.len()`, and
/// `offs[t] + a.len() <= src.len()` for every t.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn multi_dot_avx2(a: &[f32], src: &[f32], offs: &[usize], out: &mut [f32]) {
    for r in tap_groups(offs.len(), 4) {
        let (o, d) = (&offs[r.clone()], &mut out[r]);
        // SAFETY (every arm): the caller's guarantees, for a subset of taps.
        unsafe {
            match o.len() {
                1 => multi_dot_group_avx2::<1>(a, src, o, d),
                2 => multi_dot_group_avx2::<2>(a, src, o, d),
                3 => multi_dot_group_avx2::<3>(a, src, o, d),
                _ => multi_dot_group_avx2::<4>(a, src, o, d),
            }
        }
    }
}

/// The taps 0..t cut into ⌈t / max⌉ groups of as even a size as possible,
/// in order.
pub(super) fn tap_groups(t: usize, max: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let groups = t.div_ceil(max);
    let base = t.checked_div(groups).unwrap_or(0);
    let extra = t.checked_rem(groups).unwrap_or(0);
    (0..groups).scan(0, move |start, g| {
        let len = base + usize::from(g < extra);
        let r = *start..*start + len;
        *start += len;
        Some(r)
    })
}

/// One group of G taps of the AVX2 `multi_dot`.
///
/// # Safety
/// As `multi_dot_avx2`, with `offs.len() == out.len() == G`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn multi_dot_group_avx2<const G: usize>(
    a: &[f32],
    src: &[f32],
    offs: &[usize],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = a.len();
    let (ap, sp) = (a.as_ptr(), src.as_ptr());
    let o: [usize; G] = std::array::from_fn(|t| offs[t]);
    let mut acc = [_mm256_setzero_ps(); G];
    let mut acc_hi = [_mm256_setzero_ps(); G];
    let mut p = 0;
    while p + 16 <= n {
        // SAFETY: p + 16 <= n = a.len().
        let (a0, a1) = unsafe { (_mm256_loadu_ps(ap.add(p)), _mm256_loadu_ps(ap.add(p + 8))) };
        for ((s, s_hi), &off) in acc.iter_mut().zip(acc_hi.iter_mut()).zip(&o) {
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
        for (s, &off) in acc.iter_mut().zip(&o) {
            // SAFETY: off + p + 8 <= off + n <= src.len().
            let x = unsafe { _mm256_loadu_ps(sp.add(off + p)) };
            *s = _mm256_fmadd_ps(av, x, *s);
        }
        p += 8;
    }
    for (s, s_hi) in acc.iter_mut().zip(&acc_hi) {
        *s = _mm256_add_ps(*s, *s_hi);
    }
    for ((s, &off), d) in acc.iter().zip(&o).zip(out.iter_mut()) {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds exactly 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *s) };
        let mut tail = 0.0f32;
        for q in p..n {
            tail = a[q].mul_add(src[off + q], tail);
        }
        *d = sum8(lanes) + tail;
    }
}

/// AVX-512 `multi_dot`, bitwise the AVX2 loop's: lane j of one 16-lane
/// accumulator is lane j of the AVX2 loop's `acc` (j < 8) or `acc_hi`
/// (j ≥ 8), fed the same products in the same order; the step of 8 that
/// the AVX2 loop adds to `acc` alone is a masked FMA on the low 8 lanes; and
/// the halves are combined and summed as there. Up to eight taps at a time
/// share each load of `a` (9 loads per 8 FMAs of 16 lanes), in groups cut
/// as evenly as possible ([`tap_groups`]: the LeNet's 9 taps are 5 and 4,
/// its 18 three groups of 6). Each tap's sum is its own, so the grouping
/// changes no bit.
///
/// # Safety
/// As `multi_dot_avx2`, with AVX-512F as well.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn multi_dot_avx512(a: &[f32], src: &[f32], offs: &[usize], out: &mut [f32]) {
    for r in tap_groups(offs.len(), 8) {
        let (o, d) = (&offs[r.clone()], &mut out[r]);
        // SAFETY (every arm): the caller's guarantees, for a subset of taps.
        unsafe {
            match o.len() {
                1 => multi_dot_group_avx512::<1>(a, src, o, d),
                2 => multi_dot_group_avx512::<2>(a, src, o, d),
                3 => multi_dot_group_avx512::<3>(a, src, o, d),
                4 => multi_dot_group_avx512::<4>(a, src, o, d),
                5 => multi_dot_group_avx512::<5>(a, src, o, d),
                6 => multi_dot_group_avx512::<6>(a, src, o, d),
                7 => multi_dot_group_avx512::<7>(a, src, o, d),
                _ => multi_dot_group_avx512::<8>(a, src, o, d),
            }
        }
    }
}

/// One group of G taps of the AVX-512 `multi_dot`.
///
/// # Safety
/// As `multi_dot_avx512`, with `offs.len() == out.len() == G`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn multi_dot_group_avx512<const G: usize>(
    a: &[f32],
    src: &[f32],
    offs: &[usize],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = a.len();
    let (ap, sp) = (a.as_ptr(), src.as_ptr());
    const LOW8: __mmask16 = 0x00ff;
    let o: [usize; G] = std::array::from_fn(|t| offs[t]);
    let mut acc = [_mm512_setzero_ps(); G];
    let mut p = 0;
    while p + 16 <= n {
        // SAFETY: p + 16 <= n = a.len().
        let av = unsafe { _mm512_loadu_ps(ap.add(p)) };
        for (s, &off) in acc.iter_mut().zip(&o) {
            // SAFETY: off + p + 16 <= off + n <= src.len().
            let x = unsafe { _mm512_loadu_ps(sp.add(off + p)) };
            *s = _mm512_fmadd_ps(av, x, *s);
        }
        p += 16;
    }
    if p + 8 <= n {
        // SAFETY: the 8 lanes read lie below p + 8 <= n (and off + n <=
        // src.len()); the upper lanes are masked off, not read.
        let av = unsafe { _mm512_maskz_loadu_ps(LOW8, ap.add(p)) };
        for (s, &off) in acc.iter_mut().zip(&o) {
            // SAFETY: as above.
            let x = unsafe { _mm512_maskz_loadu_ps(LOW8, sp.add(off + p)) };
            *s = _mm512_mask3_fmadd_ps(av, x, *s, LOW8);
        }
        p += 8;
    }
    for ((s, &off), d) in acc.iter().zip(&o).zip(out.iter_mut()) {
        let mut l = [0.0f32; 16];
        // SAFETY: `l` holds exactly 16 floats.
        unsafe { _mm512_storeu_ps(l.as_mut_ptr(), *s) };
        // The AVX2 loop's acc + acc_hi, then its sum and tail.
        let lanes: [f32; 8] = std::array::from_fn(|j| l[j] + l[j + 8]);
        let mut tail = 0.0f32;
        for q in p..n {
            tail = a[q].mul_add(src[off + q], tail);
        }
        *d = sum8(lanes) + tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// multi_dot on every loop against a scalar f64 dot, at lengths around
    /// the loops' steps and tap counts around their groups; the AVX-512 and
    /// AVX2 loops bitwise equal.
    #[test]
    fn multi_dots_match_the_scalar_dot_at_every_length() {
        let src: Vec<f32> = (0..900)
            .map(|i| ((i * 53 % 97) as f32) / 40.0 - 1.2)
            .collect();
        let a: Vec<f32> = (0..400)
            .map(|i| ((i * 29 % 89) as f32) / 30.0 - 1.5)
            .collect();
        for taps in [1, 3, 4, 5, 8, 9, 17] {
            let offs: Vec<usize> = (0..taps).map(|t| (t * 37) % 300).collect();
            for n in (0..70).chain([136, 196, 391, 400]) {
                let a = &a[..n];
                let mut results = Vec::new();
                for k in Isa::available() {
                    let mut out = vec![f32::NAN; taps];
                    multi_dot(a, &src, &offs, &mut out, k);
                    for (t, (&g, &off)) in out.iter().zip(&offs).enumerate() {
                        let want: f64 = (0..n).map(|p| a[p] as f64 * src[off + p] as f64).sum();
                        assert!(
                            (g as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "n {n} taps {taps} {k:?} tap {t}: {g} vs {want}"
                        );
                    }
                    results.push(out);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                if let [_, avx2, avx512] = &results[..] {
                    assert_eq!(bits(avx512), bits(avx2), "n {n} taps {taps}");
                }
            }
        }
    }

    /// Tap groups cover 0..t in order, each 1..=max long, as even as can be.
    #[test]
    fn tap_groups_are_even_and_cover_every_tap() {
        for max in [1, 4, 8] {
            for t in 0..100 {
                let groups: Vec<_> = tap_groups(t, max).collect();
                assert_eq!(groups.len(), t.div_ceil(max));
                let mut next = 0;
                for r in &groups {
                    assert_eq!(r.start, next);
                    assert!((1..=max).contains(&r.len()), "t {t} max {max}: {r:?}");
                    next = r.end;
                }
                assert_eq!(next, t);
                let (lo, hi) = groups.iter().fold((usize::MAX, 0), |(lo, hi), r| {
                    (lo.min(r.len()), hi.max(r.len()))
                });
                assert!(groups.is_empty() || hi - lo <= 1, "t {t} max {max}");
            }
        }
        assert_eq!(
            tap_groups(9, 8).map(|r| r.len()).collect::<Vec<_>>(),
            [5, 4]
        );
    }
}
