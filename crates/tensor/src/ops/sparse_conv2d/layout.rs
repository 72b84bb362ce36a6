//! The tap lists of a mask, and the offsets of the wide trick.

use super::*;

/// One active tap seen from one side of the convolution. In the per-output
/// lists `ch` is the input channel within the group; in the per-input lists
/// it is the output channel within the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tap {
    pub(super) ch: usize,
    pub(super) ki: usize,
    pub(super) kj: usize,
    /// Index of the weight in the dense (O, C/g, KH, KW) tensor.
    pub(super) wi: usize,
}

/// Input offsets of every tap for one input size (see the module doc).
///
/// With stride s > 1 the padded input is split into s·s phase planes,
/// phase (a, b) holding the pixels (s·i + a, s·j + b); a tap whose padded
/// row offset is r = ki·dy reads phase r mod s at row shift r div s (the
/// same for columns), so the strided convolution becomes stride-1 wide
/// loops over the phase planes. With stride 1 there is one phase, the
/// padded plane itself.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) in_h: usize,
    pub(super) in_w: usize,
    /// Phases per input channel: sy·sx (1 for stride 1).
    pub(super) phases: usize,
    /// One phase plane, Hp × Wp: the padded input plane for stride 1,
    /// ⌈(H + 2·py)/sy⌉ × ⌈(W + 2·px)/sx⌉ otherwise. Wp is the row length of
    /// every wide layout.
    pub(super) hp: usize,
    pub(super) wp: usize,
    /// dy padded for the input gradient: `lead` zeros, then rows of Wp
    /// floats (OW values, then Wp − OW zeros); `q_plane` floats per output
    /// channel.
    pub(super) lead: usize,
    pub(super) q_plane: usize,
    /// Zero rows of the dy layout above its data rows.
    pub(super) top: usize,
    /// Per entry of `by_output`: the offset of the tap's first read in the
    /// input's prepared planes, (c·phases + phase)·Hp·Wp + (row shift)·Wp +
    /// (column shift).
    pub(super) fwd_offs: Vec<usize>,
    /// The entries of `by_input` grouped by (input channel, phase), each
    /// group in `by_input` order: `bwd_taps[bwd_start[ci·phases + ph]..
    /// bwd_start[ci·phases + ph + 1]]` index `by_input`, and `bwd_offs` is
    /// each one's o·q_plane + (top − row shift)·Wp + (lead − column shift).
    pub(super) bwd_taps: Vec<usize>,
    pub(super) bwd_start: Vec<usize>,
    pub(super) bwd_offs: Vec<usize>,
}

impl Plan {
    /// Floats of one input channel's prepared planes: phases·Hp·Wp.
    pub(super) fn plane(&self) -> usize {
        self.phases * self.hp * self.wp
    }

    /// The (input channel, phase) group `i = ci·phases + ph` of the
    /// backward lists.
    pub(super) fn bwd_range(&self, i: usize) -> std::ops::Range<usize> {
        self.bwd_start[i]..self.bwd_start[i + 1]
    }
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
    pub(super) weight_shape: [usize; 4],
    pub(super) opts: Conv2dOptions,
    /// Taps of output channel o are `by_output[out_start[o]..out_start[o + 1]]`.
    pub(super) out_start: Vec<usize>,
    pub(super) by_output: Vec<Tap>,
    /// Taps reading input channel ci are `by_input[in_start[ci]..in_start[ci + 1]]`.
    pub(super) in_start: Vec<usize>,
    pub(super) by_input: Vec<Tap>,
    /// Offsets per input size (H, W); a handful at most.
    pub(super) plans: Mutex<Vec<Arc<Plan>>>,
}

/// Input sizes whose offsets are kept; older ones are dropped.
pub(super) const MAX_PLANS: usize = 8;

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

    pub(super) fn out_range(&self, oc: usize) -> std::ops::Range<usize> {
        self.out_start[oc]..self.out_start[oc + 1]
    }

    pub(super) fn in_range(&self, ci: usize) -> std::ops::Range<usize> {
        self.in_start[ci]..self.in_start[ci + 1]
    }

    /// Most taps of any output channel and of any input channel.
    pub(super) fn max_taps(&self) -> usize {
        let widest = |start: &[usize]| start.windows(2).map(|r| r[1] - r[0]).max().unwrap_or(0);
        widest(&self.out_start).max(widest(&self.in_start))
    }

    /// Panics unless `s` is the geometry this layout was built for.
    pub(super) fn check(&self, op: &str, s: &Conv2dShape) {
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
    pub(super) fn plan(&self, s: &Conv2dShape) -> Arc<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.iter().find(|p| p.in_h == s.in_h && p.in_w == s.in_w) {
            return p.clone();
        }
        let (kh, kw) = (s.kernel_h, s.kernel_w);
        let (dy, dx) = s.opts.dilation;
        let (sy, sx) = s.opts.stride;
        let phases = sy * sx;
        let hp = (s.in_h + 2 * s.opts.padding.0).div_ceil(sy);
        let wp = (s.in_w + 2 * s.opts.padding.1).div_ceil(sx);
        // A tap's phase and its row and column shifts within the phase.
        let phase_of = |ki: usize, kj: usize| (ki * dy % sy) * sx + kj * dx % sx;
        let shifts = |ki: usize, kj: usize| (ki * dy / sy, kj * dx / sx);
        let (top, lead) = shifts(kh - 1, kw - 1);
        // `top` zero rows, the OH data rows, and zero rows down to the last
        // row any phase plane's gather reads (top + Hp rows in all).
        let q_plane = lead + (top + s.out_h().max(hp)) * wp;
        let fwd_offs = self
            .by_output
            .iter()
            .map(|t| {
                let (ri, rj) = shifts(t.ki, t.kj);
                (t.ch * phases + phase_of(t.ki, t.kj)) * hp * wp + ri * wp + rj
            })
            .collect();
        let cin = self.in_start.len() - 1;
        let mut bwd_taps = Vec::with_capacity(self.by_input.len());
        let mut bwd_start = vec![0];
        for ci in 0..cin {
            for ph in 0..phases {
                let r = self.in_range(ci);
                let taps = &self.by_input[r.clone()];
                bwd_taps.extend(
                    r.zip(taps)
                        .filter(|(_, t)| phase_of(t.ki, t.kj) == ph)
                        .map(|(i, _)| i),
                );
                bwd_start.push(bwd_taps.len());
            }
        }
        let bwd_offs = bwd_taps
            .iter()
            .map(|&i| {
                let t = &self.by_input[i];
                let (ri, rj) = shifts(t.ki, t.kj);
                t.ch * q_plane + (top - ri) * wp + (lead - rj)
            })
            .collect();
        let p = Arc::new(Plan {
            in_h: s.in_h,
            in_w: s.in_w,
            phases,
            hp,
            wp,
            lead,
            q_plane,
            top,
            fwd_offs,
            bwd_taps,
            bwd_start,
            bwd_offs,
        });
        if plans.len() == MAX_PLANS {
            plans.remove(0);
        }
        plans.push(p.clone());
        p
    }
}
