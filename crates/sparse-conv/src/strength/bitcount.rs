//! Coactivation by bit counting.
//!
//! Coactivation only asks whether a unit is active, so each unit is one bit.
//! With stride 1 along x, the input unit a connection (c, u, v) sees at
//! output (i, j) is `X[c, h, j + offset]`, with
//! `h = i·s_y + u·d_y − p_y` and `offset = v·d_x − p_x`: along a row, every
//! connection reads the input row shifted by a constant. So if a whole row is
//! packed into one `u64` (bit w set iff the unit at column w is active),
//!
//! ```text
//! tap_bits  = row_bits[b, c, h] shifted right by offset (left if negative)
//! H[o,c,u,v] = Σ_{b,i} popcount(out_bits[b, o, i] & tap_bits)
//! ```
//!
//! counts one connection's coactivations along a whole output row with one
//! AND and one popcount. Padding is free: bits past the row's end are 0 and
//! the shift brings in 0s, rows outside the image are the word 0, and a mask
//! keeps only the out_w columns that exist. The cost is O·K·B·OH word
//! operations (K = Cg·KH·KW), against the GEMM's O·K·B·OH·OW multiply-adds;
//! less still, since rows narrower than 32 share a word (`word_layout`).
//!
//! In order: pack X and Y into words (`coactivation`, `pack`); then for each
//! (group, input channel c, kernel column v) shift the channel's rows once,
//! and for each kernel row u gather the tap words and count them against
//! every output channel of the group (`count_column`). Those tasks are
//! independent, so large layers run them on rayon; the counts are integers,
//! so any order gives the same, exact, result.
//!
//! It applies when stride_x = 1 and a row (input and output) fits in a word,
//! W ≤ 64 and OW ≤ 64; any stride_y, dilation, padding or groups. Other
//! geometries fall back to the GEMM of `fast.rs`, as does the correlation
//! measure, which needs values, not bits. The counts are integers, so both
//! paths give exactly the same numbers.

use super::{fast, Measure};
use rayon::prelude::*;
use tensor::Conv2dShape;

pub(super) fn accumulate(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    measure: Measure,
    threshold: f32,
    acc: &mut [f32],
) {
    match measure {
        Measure::Coactivation if applies(s) => coactivation(s, x, y, threshold, acc),
        // Correlation, or a row too wide for a word: the GEMM method.
        _ => fast::accumulate(s, x, y, measure, threshold, acc),
    }
}

/// Whether a row of input and of output fits in one `u64`, and one output
/// step along x is one input step (stride_x = 1), so a tap is a shift.
pub(super) fn applies(s: &Conv2dShape) -> bool {
    s.opts.stride.1 == 1 && s.in_w <= 64 && s.out_w() <= 64
}

fn coactivation(s: &Conv2dShape, x: &[f32], y: &[f32], threshold: f32, acc: &mut [f32]) {
    // Bit w of word (b, c, h) is [X[b, c, h, w] > θ].
    let row_bits: Vec<u64> = x.chunks(s.in_w).map(|row| pack(row, threshold)).collect();
    // Output rows, `lanes` to a word: output row i of plane (b, o) is lane
    // i % lanes of word (o, b, i / lanes), bit j of the lane [Y[b, o, i, j] > θ].
    // Ordered (o, b, ·), not (b, o, ·), so an output channel's words are
    // contiguous, like a tap's.
    let (batch, o_all, oh, ow) = (s.batch, s.out_channels, s.out_h(), s.out_w());
    let (lanes, words) = word_layout(s);
    let mut out_bits = vec![0u64; o_all * batch * words];
    for (bo, plane) in y.chunks(oh * ow).enumerate() {
        let (b, o) = (bo / o_all, bo % o_all);
        let dst = &mut out_bits[(o * batch + b) * words..][..words];
        for (word, rows) in dst.iter_mut().zip(plane.chunks(lanes * ow)) {
            for (lane, row) in rows.chunks(ow).enumerate() {
                *word |= pack(row, threshold) << (lane * ow);
            }
        }
    }
    count_all(s, &row_bits, &out_bits, acc);
}

/// Narrow output rows share a word, so one AND + popcount handles several:
/// `lanes` = ⌊64 / OW⌋ rows of OW bits each, and `words` = ⌈OH / lanes⌉
/// words per output plane. (LeNet's 28-wide rows go two to a word, its
/// 10-wide rows six.)
fn word_layout(s: &Conv2dShape) -> (usize, usize) {
    let lanes = 64 / s.out_w();
    (lanes, s.out_h().div_ceil(lanes))
}

/// A row of at most 64 values as one word: bit w set iff value w > θ.
///
/// On x86_64 four values at a time: SSE2, part of every x86_64 CPU, compares
/// four floats in one instruction, and `movemask` turns the four results into
/// four bits. The rest of the row (and every row elsewhere) one at a time.
fn pack(row: &[f32], threshold: f32) -> u64 {
    let mut bits = 0;
    let mut w = 0; // the next column to pack
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_cmpgt_ps, _mm_loadu_ps, _mm_movemask_ps, _mm_set1_ps};
        for four in row.chunks_exact(4) {
            // SAFETY: SSE2 is always present on x86_64; `four` is 4 readable
            // floats, and loadu needs no alignment.
            let mask = unsafe {
                let above = _mm_cmpgt_ps(_mm_loadu_ps(four.as_ptr()), _mm_set1_ps(threshold));
                _mm_movemask_ps(above)
            };
            bits |= (mask as u64) << w;
            w += 4;
        }
    }
    for &v in &row[w..] {
        bits |= ((v > threshold) as u64) << w;
        w += 1;
    }
    bits
}

/// Below this many AND + popcounts, count on the calling thread. Measured on
/// two cores: at LeNet's batch 4 (about 25 000, 30 µs) rayon's fork/join
/// cost ate the gain; at batch 64 (about 400 000) it saved a fifth.
const PARALLEL_MIN_WORD_OPS: usize = 1 << 17;

/// Adds every connection's count into `acc`.
///
/// The work is cut into one task per (group, input channel, kernel column):
/// each counts the connections (o, c, ·, v) of its group's output channels
/// into its own small buffer, so tasks share nothing and can run on rayon
/// when there is enough work. The counts are integers, so the result is
/// the same on any number of threads.
fn count_all(s: &Conv2dShape, row_bits: &[u64], out_bits: &[u64], acc: &mut [f32]) {
    let (cg, og, kh, kw) = (s.group_in(), s.group_out(), s.kernel_h, s.kernel_w);
    let tasks = s.opts.groups * cg * kw;
    let count = |task: usize| {
        let (gc, v) = (task / kw, task % kw);
        count_column(s, row_bits, out_bits, gc / cg, gc % cg, v)
    };
    let (_, words) = word_layout(s);
    let word_ops = s.out_channels * cg * kh * kw * s.batch * words;
    let counts: Vec<Vec<u32>> = if word_ops >= PARALLEL_MIN_WORD_OPS {
        (0..tasks).into_par_iter().map(count).collect()
    } else {
        (0..tasks).map(count).collect()
    };
    for (task, column) in counts.iter().enumerate() {
        let (gc, v) = (task / kw, task % kw);
        let (g, c) = (gc / cg, gc % cg);
        // column is (o − g·Og, u)
        for (o, per_u) in (g * og..).zip(column.chunks(kh)) {
            for (u, &n) in per_u.iter().enumerate() {
                acc[((o * cg + c) * kh + u) * kw + v] += n as f32;
            }
        }
    }
}

/// The counts of connections (o, c, u, v) of group g for one input channel c
/// and kernel column v, all o of the group and all u, as (o − g·Og, u).
///
/// Why two versions: on x86_64 the default compilation target predates the
/// `popcnt` instruction, so `u64::count_ones` becomes a dozen bit-twiddling
/// operations. Nearly every x86_64 CPU has `popcnt`, so we check at run time
/// (a cached flag) and, if it is there, run the same loop compiled with it.
fn count_column(
    s: &Conv2dShape,
    row_bits: &[u64],
    out_bits: &[u64],
    g: usize,
    c: usize,
    v: usize,
) -> Vec<u32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU supports popcnt, just checked.
        return unsafe { count_column_popcnt(s, row_bits, out_bits, g, c, v) };
    }
    count_column_portable(s, row_bits, out_bits, g, c, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn count_column_popcnt(
    s: &Conv2dShape,
    row_bits: &[u64],
    out_bits: &[u64],
    g: usize,
    c: usize,
    v: usize,
) -> Vec<u32> {
    count_column_portable(s, row_bits, out_bits, g, c, v)
}

/// The counting loop itself. `inline(always)` so that `count_column_popcnt`
/// gets its own copy, compiled with popcnt.
#[inline(always)]
fn count_column_portable(
    s: &Conv2dShape,
    row_bits: &[u64],
    out_bits: &[u64],
    g: usize,
    c: usize,
    v: usize,
) -> Vec<u32> {
    let (batch, h_in) = (s.batch, s.in_h);
    let (oh, ow) = (s.out_h(), s.out_w());
    let (og, kh) = (s.group_out(), s.kernel_h);
    let (stride_y, dilation, padding) = (s.opts.stride.0, s.opts.dilation, s.opts.padding);
    let column_mask = if ow == 64 { !0 } else { (1u64 << ow) - 1 };
    let (lanes, words) = word_layout(s);
    let channel = g * s.group_in() + c;

    // Column j of an output row sees column j + offset of its input row
    // through kernel column v. Shift every input row of the channel
    // accordingly, once for all kernel rows u.
    let offset = (v * dilation.1) as isize - padding.1 as isize;
    let mut shifted = vec![0u64; batch * h_in];
    for (b, dst) in shifted.chunks_mut(h_in).enumerate() {
        let src = &row_bits[(b * s.in_channels + channel) * h_in..][..h_in];
        for (d, &row) in dst.iter_mut().zip(src) {
            *d = shift(row, offset) & column_mask;
        }
    }

    let mut counts = vec![0u32; og * kh]; // (o − g·Og, u)
    let mut tap_bits = vec![0u64; batch * words]; // laid out like an output plane
    for u in 0..kh {
        // Output row i sees input row i·s_y + u·d_y − p_y; rows outside the
        // image (vertical padding) see nothing.
        let first_row = (u * dilation.0) as isize - padding.0 as isize;
        for (taps, rows) in tap_bits.chunks_mut(words).zip(shifted.chunks(h_in)) {
            let mut h = first_row;
            for (k, tap) in taps.iter_mut().enumerate() {
                let mut word = 0;
                for lane in 0..lanes.min(oh - k * lanes) {
                    if let Some(&row) = usize::try_from(h).ok().and_then(|h| rows.get(h)) {
                        word |= row << (lane * ow);
                    }
                    h += stride_y as isize;
                }
                *tap = word;
            }
        }
        for o in 0..og {
            let out = &out_bits[(g * og + o) * batch * words..][..batch * words];
            counts[o * kh + u] = out
                .iter()
                .zip(&tap_bits)
                .map(|(&a, &t)| (a & t).count_ones())
                .sum();
        }
    }
    counts
}

/// Moves bit `j + offset` to bit j; bits shifted in are 0, and a shift by 64
/// or more leaves nothing.
fn shift(row: u64, offset: isize) -> u64 {
    let amount = offset.unsigned_abs().try_into().unwrap_or(u32::MAX);
    if offset >= 0 {
        row.checked_shr(amount).unwrap_or(0)
    } else {
        row.checked_shl(amount).unwrap_or(0)
    }
}
