//! The forward pass of stride-1 layers as the packed product of
//! `packed.rs` with no im2col matrix: B is read from a zero-padded copy of
//! the input itself.
//!
//! Row k = (c, ki, kj) of im2col's matrix, at output pixel q = (oy, ox), is
//! the padded input at c·Hp·Wp + (oy + ki·dy)·Wp + ox + kj·dx. With stride 1,
//! pixels that follow each other in an output row follow each other in the
//! padded input, so a vector of B (`lanes` pixels of one output row) is one
//! load from
//!
//! ```text
//! xp + offs[k] + segs[v],   offs[k] = c·Hp·Wp + ki·dy·Wp + kj·dx,   segs[v] = oy_v·Wp + ox_v
//! ```
//!
//! where (oy_v, ox_v) is the first pixel of the tile's vector v
//! ([`super::tile::Gathered`]). The tile then sums the same products in the
//! same order as from im2col's panels, on the same values (the padding's
//! zeros included): the same bits, without writing and reading back a
//! K × P matrix per image (K = 9·C, 9 times the input). Output rows must be
//! whole vectors and the output whole tiles of pixels (the ResNets' 32×32
//! and 16×16 maps; their 8×8 maps, rows of half a vector on AVX-512, keep
//! the panels).

use super::forward::pad_into;
use super::packed::pack_groups;
use super::tile::{kernel, lanes, tile, Gathered, Start};
use super::*;

/// Whether [`forward_gathered`] runs this layer on `k`: stride 1, output
/// rows whole vectors, and the output whole tiles of pixels.
pub(super) fn gathered_applies(s: &Conv2dShape, k: Isa) -> bool {
    let (_, nr) = tile(k);
    let (ow, p) = (s.out_w(), s.out_pixels());
    s.opts.stride == (1, 1) && p > 0 && ow.is_multiple_of(lanes(k)) && p.is_multiple_of(nr)
}

/// The gathered forward pass: the same contract, and the same bits, as
/// `forward_packed`. OVERWRITES y.
pub(super) fn forward_gathered(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    epi: Option<&Epilogue>,
    k: Isa,
) {
    let (mr, nr) = tile(k);
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, kk, groups) = (s.group_in(), s.group_out(), s.col_rows(), s.opts.groups);
    let ((py, px), (dy, dx)) = (s.opts.padding, s.opts.dilation);
    let (hp, wp, ow) = (s.in_h + 2 * py, s.in_w + 2 * px, s.out_w());
    // The weights of every group, packed once for the whole batch.
    let (a, a_len) = pack_groups(s, w, mr);
    // Row k of B, in im2col's (c, ki, kj) order.
    let mut offs = Vec::with_capacity(kk);
    for ci in 0..cg {
        for ki in 0..s.kernel_h {
            for kj in 0..s.kernel_w {
                offs.push(ci * hp * wp + ki * dy * wp + kj * dx);
            }
        }
    }
    let (lanes, taps) = (lanes(k), Gathered::new(&offs));
    // The padded input offset of the pixel q of the output.
    let seg = |q: usize| (q / ow) * wp + q % ow;
    let ipc = images_per_chunk(s);
    for_each_chunk(y, ipc * o * p, run_parallel(s), |chunk, y_chunk| {
        with_scratch(cg * hp * wp, |xp| {
            let mut spill = [0f32; 8 * 32]; // a tile of fewer rows
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let img = chunk * ipc + i;
                for g in 0..groups {
                    pad_into(s, &x[(img * c + g * cg) * hw..][..cg * hw], xp);
                    let a_g = &a[g * a_len..][..a_len];
                    let y_bg = &mut y_b[g * og * p..][..og * p];
                    for q0 in (0..p).step_by(nr) {
                        let rows = taps.at([seg(q0), seg(q0 + lanes)]);
                        for ib in 0..og.div_ceil(mr) {
                            let tile_rows = mr.min(og - ib * mr);
                            let mut init = [0f32; 8];
                            if let Some(bv) = bias {
                                init[..tile_rows]
                                    .copy_from_slice(&bv[g * og + ib * mr..][..tile_rows]);
                            }
                            let a_i = &a_g[ib * kk * mr..][..kk * mr];
                            let full = tile_rows == mr;
                            let (out, ldc) = match full {
                                true => (&mut y_bg[ib * mr * p + q0..], p),
                                false => (&mut spill[..], nr),
                            };
                            let start = Start::Rows(&init);
                            kernel(k, (mr, nr), kk, a_i, (1, mr), xp, rows, start, out, ldc);
                            for r in (0..tile_rows).filter(|_| !full) {
                                let dst = &mut y_bg[(ib * mr + r) * p + q0..][..nr];
                                dst.copy_from_slice(&spill[r * nr..][..nr]);
                            }
                        }
                    }
                }
                if let Some(e) = epi {
                    e.apply(img, y_b, k);
                }
            }
        });
    });
    crate::buffers::give(a);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values::values;

    /// On every ISA where it applies: bitwise the packed product's output
    /// (im2col's panels), for the ResNets' stride-1 layers, a 5×5 kernel
    /// with padding 2, a dilated one, an unpadded one, groups, output
    /// channels that are not whole tiles, and no bias.
    #[test]
    fn gathered_forward_is_bitwise_the_packed_one() {
        // Input and weight shapes, padding, dilation, groups.
        type Case = ([usize; 4], [usize; 4], usize, usize, usize);
        let cases: [Case; 7] = [
            ([2, 16, 32, 32], [16, 16, 3, 3], 1, 1, 1),
            ([2, 32, 16, 16], [32, 32, 3, 3], 1, 1, 1),
            ([1, 64, 16, 16], [64, 64, 3, 3], 1, 1, 1),
            ([2, 3, 16, 16], [10, 3, 5, 5], 2, 1, 1),
            ([1, 4, 16, 16], [8, 4, 3, 3], 2, 2, 1),
            ([1, 5, 18, 18], [6, 5, 3, 3], 0, 1, 1),
            ([1, 8, 16, 16], [12, 4, 3, 3], 1, 1, 2),
        ];
        let mut compared = 0;
        for (i, (input, weight, pad, dil, groups)) in cases.into_iter().enumerate() {
            let opts = Conv2dOptions {
                padding: (pad, pad),
                dilation: (dil, dil),
                groups,
                ..Conv2dOptions::default()
            };
            let s = Conv2dShape::new(&input, &weight, opts).unwrap();
            let x = values(input.iter().product(), 3 + i as u32);
            let w = values(weight.iter().product(), 5 + i as u32);
            let bias = values(weight[0], 7 + i as u32);
            for k in Isa::available()
                .into_iter()
                .filter(|&k| gathered_applies(&s, k))
            {
                for b in [Some(&bias[..]), None] {
                    let n = s.output_shape().iter().product();
                    let (mut want, mut got) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                    super::super::packed::forward_packed(&s, &x, &w, b, &mut want, None, k);
                    forward_gathered(&s, &x, &w, b, &mut got, None, k);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(g, e)| g.to_bits() == e.to_bits());
                    assert!(same, "case {i} {k:?} bias {}", b.is_some());
                    compared += 1;
                }
            }
        }
        // Every case on every ISA (all are whole rows of 8 and of 16).
        assert_eq!(compared, 7 * 2 * Isa::available().len(), "cases compared");
    }
}
