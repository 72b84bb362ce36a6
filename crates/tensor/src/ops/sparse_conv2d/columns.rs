//! A stride-2 row split into its even and odd columns, and merged back:
//! the column phases of a stride-2 convolution's input planes
//! (`planes.rs`), one permute per 16 columns (AVX-512) or 8 (AVX2), with a
//! portable twin. Pure data movement, tested against the definition on
//! every instruction set this CPU has.

use crate::isa::Isa;

/// even[t] = row[2t] and odd[t] = row[2t + 1]: the two column phases of a
/// stride-2 convolution's input row. Element by element, the compiler
/// leaves the strided reads scalar, and the two strided layers of a
/// ResNet-20 spent as long splitting their inputs as convolving them.
pub(super) fn split_columns(row: &[f32], even: &mut [f32], odd: &mut [f32], k: Isa) {
    let n = row.len();
    assert!(
        even.len() == n.div_ceil(2) && odd.len() == n / 2,
        "split_columns: {n} values into {} even and {} odd",
        even.len(),
        odd.len()
    );
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0; // pairs split so far
    #[cfg(target_arch = "x86_64")]
    {
        if k.avx512() {
            // SAFETY: AVX-512F is present (checked by `avx512`); the
            // lengths were asserted above.
            done = unsafe { split_columns_avx512(row, even, odd) };
        }
        if k.avx2() {
            let (r, e, o) = (&row[2 * done..], &mut even[done..], &mut odd[done..]);
            // SAFETY: AVX2 is present (checked by `avx2`); the tails keep
            // the asserted lengths.
            done += unsafe { split_columns_avx2(r, e, o) };
        }
    }
    let _ = k; // (unused off x86-64)
    for t in done..n / 2 {
        even[t] = row[2 * t];
        odd[t] = row[2 * t + 1];
    }
    if n % 2 == 1 {
        even[n / 2] = row[n - 1];
    }
}

/// row[2t] = even[t] and row[2t + 1] = odd[t]: the inverse of
/// [`split_columns`].
pub(super) fn merge_columns(even: &[f32], odd: &[f32], row: &mut [f32], k: Isa) {
    let n = row.len();
    assert!(
        even.len() == n.div_ceil(2) && odd.len() == n / 2,
        "merge_columns: {} even and {} odd values into {n}",
        even.len(),
        odd.len()
    );
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0; // pairs merged so far
    #[cfg(target_arch = "x86_64")]
    {
        if k.avx512() {
            // SAFETY: AVX-512F is present; the lengths were asserted above.
            done = unsafe { merge_columns_avx512(even, odd, row) };
        }
        if k.avx2() {
            let (e, o, r) = (&even[done..], &odd[done..], &mut row[2 * done..]);
            // SAFETY: AVX2 is present; the tails keep the asserted lengths.
            done += unsafe { merge_columns_avx2(e, o, r) };
        }
    }
    let _ = k; // (unused off x86-64)
    for t in done..n / 2 {
        row[2 * t] = even[t];
        row[2 * t + 1] = odd[t];
    }
    if n % 2 == 1 {
        row[n - 1] = even[n / 2];
    }
}

/// AVX-512 `split_columns` on blocks of 16 pairs; returns the pairs done.
///
/// # Safety
/// The CPU must support AVX-512F; even and odd hold at least
/// row.len() / 2 values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn split_columns_avx512(row: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    // Lane l of the result takes lane idx[l] of (lo, hi) as one 32-lane row.
    let idx_even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let idx_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut t = 0;
    while t + 16 <= pairs {
        // SAFETY: row[2t..2t + 32] lies within row (2t + 32 ≤ 2·pairs), and
        // even[t..t + 16], odd[t..t + 16] within theirs (t + 16 ≤ pairs).
        unsafe {
            let lo = _mm512_loadu_ps(row.as_ptr().add(2 * t));
            let hi = _mm512_loadu_ps(row.as_ptr().add(2 * t + 16));
            _mm512_storeu_ps(
                even.as_mut_ptr().add(t),
                _mm512_permutex2var_ps(lo, idx_even, hi),
            );
            _mm512_storeu_ps(
                odd.as_mut_ptr().add(t),
                _mm512_permutex2var_ps(lo, idx_odd, hi),
            );
        }
        t += 16;
    }
    t
}

/// AVX2 `split_columns` on blocks of 8 pairs; returns the pairs done.
///
/// # Safety
/// As [`split_columns_avx512`], with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn split_columns_avx2(row: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    let mut t = 0;
    while t + 8 <= pairs {
        // SAFETY: as in the AVX-512 loop, with blocks of 16 floats.
        unsafe {
            let a = _mm256_loadu_ps(row.as_ptr().add(2 * t)); // a0 … a7
            let b = _mm256_loadu_ps(row.as_ptr().add(2 * t + 8)); // b0 … b7

            // Within each 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6], and
            // the odd ones.
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            // 64-bit lanes in the order 0, 2, 1, 3: [a0 a2 a4 a6 b0 b2 b4 b6].
            let e = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e));
            let o = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o));
            _mm256_storeu_ps(even.as_mut_ptr().add(t), _mm256_castpd_ps(e));
            _mm256_storeu_ps(odd.as_mut_ptr().add(t), _mm256_castpd_ps(o));
        }
        t += 8;
    }
    t
}

/// AVX-512 `merge_columns` on blocks of 16 pairs; returns the pairs done.
///
/// # Safety
/// The CPU must support AVX-512F; even and odd hold at least
/// row.len() / 2 values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn merge_columns_avx512(even: &[f32], odd: &[f32], row: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    // Lanes 0–15 are even's, 16–31 odd's.
    let idx_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let idx_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let mut t = 0;
    while t + 16 <= pairs {
        // SAFETY: as in `split_columns_avx512`, reads and writes swapped.
        unsafe {
            let e = _mm512_loadu_ps(even.as_ptr().add(t));
            let o = _mm512_loadu_ps(odd.as_ptr().add(t));
            _mm512_storeu_ps(
                row.as_mut_ptr().add(2 * t),
                _mm512_permutex2var_ps(e, idx_lo, o),
            );
            _mm512_storeu_ps(
                row.as_mut_ptr().add(2 * t + 16),
                _mm512_permutex2var_ps(e, idx_hi, o),
            );
        }
        t += 16;
    }
    t
}

/// AVX2 `merge_columns` on blocks of 8 pairs; returns the pairs done.
///
/// # Safety
/// As [`merge_columns_avx512`], with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn merge_columns_avx2(even: &[f32], odd: &[f32], row: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let pairs = row.len() / 2;
    let mut t = 0;
    while t + 8 <= pairs {
        // SAFETY: as in `split_columns_avx2`, reads and writes swapped.
        unsafe {
            let e = _mm256_loadu_ps(even.as_ptr().add(t));
            let o = _mm256_loadu_ps(odd.as_ptr().add(t));
            let lo = _mm256_unpacklo_ps(e, o); // [e0 o0 e1 o1 | e4 o4 e5 o5]
            let hi = _mm256_unpackhi_ps(e, o); // [e2 o2 e3 o3 | e6 o6 e7 o7]
            let first = _mm256_permute2f128_ps::<0x20>(lo, hi); // the low halves
            let second = _mm256_permute2f128_ps::<0x31>(lo, hi); // the high halves
            _mm256_storeu_ps(row.as_mut_ptr().add(2 * t), first);
            _mm256_storeu_ps(row.as_mut_ptr().add(2 * t + 8), second);
        }
        t += 8;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values 0, 1, 2, …: where each lands shows the permutation.
    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn split_and_merge_columns_match_the_definition_on_every_path() {
        for n in 0..80 {
            let row = ramp(n);
            let even: Vec<f32> = row.iter().copied().step_by(2).collect();
            let odd: Vec<f32> = row.iter().copied().skip(1).step_by(2).collect();
            for k in Isa::available() {
                let (mut e, mut o) = (vec![-1.0; n.div_ceil(2)], vec![-1.0; n / 2]);
                split_columns(&row, &mut e, &mut o, k);
                assert_eq!((&e, &o), (&even, &odd), "split {n} on {}", k.name());
                let mut back = vec![-1.0; n];
                merge_columns(&even, &odd, &mut back, k);
                assert_eq!(back, row, "merge {n} on {}", k.name());
            }
        }
    }

    #[test]
    #[should_panic(expected = "split_columns")]
    fn split_columns_rejects_wrong_lengths() {
        let (mut e, mut o) = (vec![0.0; 3], vec![0.0; 3]);
        split_columns(&ramp(7), &mut e, &mut o, Isa::best());
    }
}
