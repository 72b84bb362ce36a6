//! DSConv2d: a convolution whose connections are pruned and regrown by their
//! accumulated Hebbian strength.
//!
//! Life cycle:
//! 1. Forward is exactly Conv2d's. In training mode, every `update_interval`-th
//!    forward pass (passes 0, N, 2N, …) also adds that pass's strength to an
//!    accumulated, weight-shaped strength tensor.
//! 2. [`DSConv2d::progress_connections`], called by the training loop on its
//!    own schedule, ranks the connections of every group (by default every
//!    (out, in) kernel) by accumulated strength: the top k1 are kept, the next
//!    k2 − k1 are regrown with fresh values, the rest are pruned (zeroed and
//!    masked). The accumulated strength is then reset.
//! 3. After every optimiser step, [`DSConv2d::enforce_mask`] sets masked
//!    weights and their momentum to exactly zero, so SGD cannot revive them.
//!
//! The `Random` selection ranks at random instead (the notebook's
//! `prune_randomly` baseline); `Static` fixes a random mask with k2 connections
//! per group at construction and never changes it.

use std::fmt;

use tensor::nn::{kaiming_uniform_bound, Conv2d, DEFAULT_KAIMING_A};
use tensor::optim::Sgd;
use tensor::{Conv2dOptions, Conv2dShape, Rng, Tensor};

use crate::strength::{accumulate_strength, StrengthConfig};

/// Which connections are ranked against each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneDims {
    /// Each (out, in) kernel of KH·KW taps: the notebook's choice.
    Kernel,
    /// Each output filter, all its C/groups·KH·KW taps.
    Filter,
    /// The whole layer.
    Layer,
}

/// How `progress_connections` chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// By accumulated Hebbian strength.
    Hebbian,
    /// At random, with the same counts (the notebook's `prune_randomly`).
    Random,
    /// A random mask fixed at construction; progress does nothing.
    Static,
}

/// What a regrown connection starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regrow {
    /// Uniform in ±1/√fan_in: the distribution the layer was initialised from
    /// (PyTorch's kaiming-uniform with a = √5).
    Kaiming,
    /// Zero; it becomes trainable again but starts from nothing.
    Zero,
}

/// The layer's settings; `Default` gives the notebook's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DSConfig {
    /// k1 = max(⌊keep_fraction · n⌋, 1) strongest connections are kept.
    pub keep_fraction: f64,
    /// k2 = max(⌊total_fraction · n⌋, 1) connections are active after progress.
    pub total_fraction: f64,
    pub prune_dims: PruneDims,
    /// Strength is sampled on every `update_interval`-th training forward pass.
    pub update_interval: u64,
    pub strength: StrengthConfig,
    pub regrow: Regrow,
    pub selection: Selection,
}

impl Default for DSConfig {
    fn default() -> Self {
        DSConfig {
            keep_fraction: 0.10,
            total_fraction: 0.15,
            prune_dims: PruneDims::Kernel,
            update_interval: 20,
            strength: StrengthConfig::default(),
            regrow: Regrow::Kaiming,
            selection: Selection::Hebbian,
        }
    }
}

/// What one progress step did, summed over the layer's groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressStats {
    /// Among the top k1: connections that were active and keep their weight.
    pub kept: usize,
    /// Among the top k1: connections that were pruned before and come back
    /// with a fresh value (their strength does not depend on their weight).
    pub revived: usize,
    /// The next k2 − k1: re-initialised (fresh value or zero).
    pub regrown: usize,
    /// Connections active before and pruned now.
    pub dropped: usize,
    /// Active connections after the step.
    pub active: usize,
    /// All connections of the layer.
    pub total: usize,
}

/// Everything of the layer's state that is not a parameter, for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct DSConvState {
    pub mask: Vec<bool>,
    pub strength: Vec<f32>,
    pub strength_samples: u64,
    pub passes: u64,
    pub rng: [u64; 4],
}

#[derive(Debug, Clone, PartialEq)]
pub struct DSConfigError(pub String);

impl fmt::Display for DSConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DSConv2d: {}", self.0)
    }
}

impl std::error::Error for DSConfigError {}

pub struct DSConv2d {
    pub conv: Conv2d,
    pub config: DSConfig,
    /// Weight-shaped; false means pruned (the weight is held at zero).
    mask: Vec<bool>,
    /// Weight-shaped accumulated strength since the last progress step.
    strength: Vec<f32>,
    strength_samples: u64,
    /// Training forward passes so far; decides which are sampled.
    passes: u64,
    training: bool,
    /// The layer's own stream: tie-breaks, regrowth values, random masks.
    rng: Rng,
    history: Vec<ProgressStats>,
}

impl DSConv2d {
    /// A DSConv2d with Conv2d's parameters and initialisation, drawn from
    /// `rng` exactly as `Conv2d::new` draws them (so a dense and a sparse net
    /// built from the same seed start from the same weights). The layer's own
    /// random stream is forked from `rng` without advancing it.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        opts: Conv2dOptions,
        bias: bool,
        config: DSConfig,
        rng: &mut Rng,
    ) -> Result<DSConv2d, DSConfigError> {
        let c = config;
        if !(c.keep_fraction > 0.0
            && c.keep_fraction <= c.total_fraction
            && c.total_fraction <= 1.0)
        {
            return Err(DSConfigError(format!(
                "want 0 < keep_fraction ≤ total_fraction ≤ 1, got {} and {}",
                c.keep_fraction, c.total_fraction
            )));
        }
        if c.update_interval == 0 {
            return Err(DSConfigError("update_interval must be at least 1".into()));
        }
        if in_channels == 0 || out_channels == 0 || kernel.0 == 0 || kernel.1 == 0 {
            return Err(DSConfigError(format!(
                "channels and kernel sizes must be at least 1, got {in_channels} in, {out_channels} out, kernel {kernel:?}"
            )));
        }
        if opts.groups == 0
            || !in_channels.is_multiple_of(opts.groups)
            || !out_channels.is_multiple_of(opts.groups)
        {
            return Err(DSConfigError(format!(
                "{in_channels} in and {out_channels} out channels do not divide into {} groups",
                opts.groups
            )));
        }
        let own_rng = rng.fork(0xD5C0);
        let conv = Conv2d::new(in_channels, out_channels, kernel, opts, bias, rng);
        let n = conv.weight.numel();
        let mut layer = DSConv2d {
            conv,
            config,
            mask: vec![true; n],
            strength: vec![0.0; n],
            strength_samples: 0,
            passes: 0,
            training: true,
            rng: own_rng,
            history: Vec::new(),
        };
        if config.selection == Selection::Static {
            // The fixed mask: k2 random connections per group, from the start.
            // It is made by the same random selection a progress step uses,
            // but it is the layer's starting point, not a step of its history.
            layer.select(Ranking::Random);
            layer.history.clear();
        }
        Ok(layer)
    }

    pub fn weight(&self) -> &Tensor {
        &self.conv.weight
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        self.conv.parameters()
    }

    /// Training mode samples strength; inference mode does no strength work.
    pub fn set_training(&mut self, on: bool) {
        self.training = on;
    }

    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Conv2d's forward. In training mode it counts the pass, and on a
    /// sampled pass of a Hebbian layer it also accumulates strength.
    pub fn forward(&mut self, x: &Tensor) -> Tensor {
        let y = self.conv.forward(x);
        if self.training {
            let hebbian = self.config.selection == Selection::Hebbian;
            // An empty batch has no activity to measure.
            let sampled = self.passes.is_multiple_of(self.config.update_interval);
            if hebbian && sampled && y.numel() > 0 {
                let s = Conv2dShape::new(x.shape(), self.conv.weight.shape(), self.conv.opts)
                    .expect("conv2d accepted these shapes");
                accumulate_strength(
                    &s,
                    &x.data(),
                    &y.data(),
                    &self.config.strength,
                    &mut self.strength,
                )
                .expect("strength of a forward pass that just ran");
                self.strength_samples += 1;
            }
            self.passes += 1;
        }
        y
    }

    /// Connections per group, and k1, k2 for that group size.
    pub fn group_sizes(&self) -> (usize, usize, usize) {
        let [_, cg, kh, kw]: [usize; 4] = self.conv.weight.shape().try_into().unwrap();
        let n = match self.config.prune_dims {
            PruneDims::Kernel => kh * kw,
            PruneDims::Filter => cg * kh * kw,
            PruneDims::Layer => self.mask.len(),
        };
        // The small epsilon keeps ⌊0.1·10⌋ = 1 even if 0.1·10 rounds below 1.
        let k = |f: f64| (((f * n as f64) + 1e-9).floor() as usize).clamp(1, n);
        (
            n,
            k(self.config.keep_fraction),
            k(self.config.total_fraction),
        )
    }

    /// The progress step of the layer's selection mode (see the module docs).
    /// Pass the optimiser so that re-initialised and pruned connections start
    /// from zero momentum.
    pub fn progress_connections(&mut self, opt: Option<&mut Sgd>) -> ProgressStats {
        match self.config.selection {
            Selection::Hebbian => self.select_and_reset(Ranking::Strength, opt),
            Selection::Random => self.select_and_reset(Ranking::Random, opt),
            Selection::Static => {
                let active = self.density_count();
                ProgressStats {
                    kept: active,
                    active,
                    total: self.mask.len(),
                    ..Default::default()
                }
            }
        }
    }

    /// The notebook's baseline: the same counts as a progress step, chosen at
    /// random.
    pub fn prune_randomly(&mut self, opt: Option<&mut Sgd>) -> ProgressStats {
        self.select_and_reset(Ranking::Random, opt)
    }

    /// Selects, then zeroes the momentum of every connection that was pruned
    /// or given a fresh value: a new weight starts with no velocity.
    fn select_and_reset(&mut self, ranking: Ranking, opt: Option<&mut Sgd>) -> ProgressStats {
        let (stats, fresh) = self.select(ranking);
        if let Some(opt) = opt {
            if let Some(buf) = opt.momentum_buffer_mut(&self.conv.weight) {
                for &i in &fresh {
                    buf[i] = 0.0;
                }
            }
            self.enforce_mask(opt);
        }
        stats
    }

    /// Ranks every group and applies keep / regrow / prune. Returns the
    /// stats and the indices that got a fresh value.
    fn select(&mut self, ranking: Ranking) -> (ProgressStats, Vec<usize>) {
        let (n, k1, k2) = self.group_sizes();
        let bound = kaiming_uniform_bound(self.conv.fan_in(), DEFAULT_KAIMING_A);
        let mut stats = ProgressStats {
            total: self.mask.len(),
            ..Default::default()
        };
        let mut w = self.conv.weight.data_mut();
        let mut order: Vec<(f32, u64, usize)> = Vec::with_capacity(n);
        let mut fresh = Vec::new();
        for (g, (wg, (mg, sg))) in w
            .chunks_mut(n)
            .zip(self.mask.chunks_mut(n).zip(self.strength.chunks(n)))
            .enumerate()
        {
            // Rank by strength, strongest first; ties (and the Random ranking,
            // where every strength counts as equal) are broken by a random key
            // from the layer's seeded stream, then by index.
            order.clear();
            for (i, &strength) in sg.iter().enumerate() {
                let s = match ranking {
                    Ranking::Strength => strength,
                    Ranking::Random => 0.0,
                };
                order.push((s, self.rng.next_u64(), i));
            }
            order.sort_unstable_by(|a, b| {
                b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
            });
            for (rank, &(_, _, i)) in order.iter().enumerate() {
                let was_active = mg[i];
                if rank < k1 {
                    if was_active {
                        stats.kept += 1;
                    } else {
                        // Pruned before, so its weight is 0, yet strong: strength
                        // does not depend on the weight. It comes back as a
                        // regrown connection does.
                        wg[i] = fresh_value(self.config.regrow, bound, &mut self.rng);
                        fresh.push(g * n + i);
                        stats.revived += 1;
                    }
                    mg[i] = true;
                } else if rank < k2 {
                    // The notebook's rule: this band is re-initialised even if
                    // it was active, so it starts over from a fresh value.
                    wg[i] = fresh_value(self.config.regrow, bound, &mut self.rng);
                    mg[i] = true;
                    fresh.push(g * n + i);
                    stats.regrown += 1;
                } else {
                    if was_active {
                        stats.dropped += 1;
                    }
                    wg[i] = 0.0;
                    mg[i] = false;
                }
            }
        }
        drop(w);
        stats.active = self.density_count();
        self.strength.iter_mut().for_each(|s| *s = 0.0);
        self.strength_samples = 0;
        self.history.push(stats);
        (stats, fresh)
    }

    /// Sets masked weights, and their momentum in `opt`, to exactly zero. Call
    /// after every optimiser step.
    pub fn enforce_mask(&self, opt: &mut Sgd) {
        let mut w = self.conv.weight.data_mut();
        for (wi, &m) in w.iter_mut().zip(&self.mask) {
            if !m {
                *wi = 0.0;
            }
        }
        drop(w);
        if let Some(buf) = opt.momentum_buffer_mut(&self.conv.weight) {
            for (b, &m) in buf.iter_mut().zip(&self.mask) {
                if !m {
                    *b = 0.0;
                }
            }
        }
    }

    /// Weight-shaped mask: true where the connection is active.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }

    fn density_count(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }

    /// Fraction of connections active.
    pub fn density(&self) -> f64 {
        self.density_count() as f64 / self.mask.len() as f64
    }

    /// Accumulated strength since the last progress step, weight-shaped.
    pub fn strength(&self) -> &[f32] {
        &self.strength
    }

    /// How many passes have been added into [`DSConv2d::strength`].
    pub fn strength_samples(&self) -> u64 {
        self.strength_samples
    }

    /// Training forward passes seen (in every selection mode).
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// One entry per progress step that changed the mask (Hebbian or Random
    /// selection, and each `prune_randomly`); a Static layer's stays empty.
    /// Not part of [`DSConvState`]: after a resume it starts empty again.
    pub fn history(&self) -> &[ProgressStats] {
        &self.history
    }

    pub fn state(&self) -> DSConvState {
        DSConvState {
            mask: self.mask.clone(),
            strength: self.strength.clone(),
            strength_samples: self.strength_samples,
            passes: self.passes,
            rng: self.rng.state(),
        }
    }

    pub fn restore(&mut self, state: DSConvState) -> Result<(), DSConfigError> {
        let n = self.mask.len();
        if state.mask.len() != n || state.strength.len() != n {
            return Err(DSConfigError(format!(
                "saved state has {} mask and {} strength values, the layer has {n} weights",
                state.mask.len(),
                state.strength.len()
            )));
        }
        self.mask = state.mask;
        self.strength = state.strength;
        self.strength_samples = state.strength_samples;
        self.passes = state.passes;
        self.rng = Rng::from_state(state.rng);
        Ok(())
    }
}

/// The value a regrown or revived connection starts from.
fn fresh_value(regrow: Regrow, bound: f32, rng: &mut Rng) -> f32 {
    match regrow {
        Regrow::Kaiming => rng.uniform(-bound, bound),
        Regrow::Zero => 0.0,
    }
}

#[derive(Clone, Copy)]
enum Ranking {
    Strength,
    Random,
}
