//! DSConv2d: a convolution that keeps only some of its connections, and
//! updates which ones by a prune/grow rule ([`crate::rules`]).
//!
//! The layer holds three things: the forward pass, the mask, and the state
//! the rules read (accumulated Hebbian strength, the random stream).
//!
//! Life cycle:
//! 1. Construction draws Conv2d's weights; a rule with `Start::Random` then
//!    masks all but k2 random taps per group.
//! 2. Forward is Conv2d's on the masked weight, computed by the sparse
//!    kernels over the active taps only, or by the dense ones (see
//!    [`ConvPath`]).
//!    In training mode, while sampling is on and the rule reads strength,
//!    every `update_interval`-th forward pass (passes 0, N, 2N, …) adds that
//!    pass's strength to an accumulated, weight-shaped tensor (kept in f64,
//!    so coactivation counts stay exact however long the interval).
//! 3. [`DSConv2d::update`], called by the training loop on its own schedule,
//!    applies the rule to every group (by default every (out, in) kernel),
//!    then starts the accumulated strength again from zero (keeping the
//!    strength it read, for exports: [`DSConv2d::decided_strength`]).
//! 4. After every optimiser step, [`DSConv2d::enforce_mask`] sets masked
//!    weights and their momentum to exactly zero, so SGD cannot revive them.

use std::rc::Rc;

use tensor::nn::{Conv2d, Init, MaxPool2d};
use tensor::ops::conv2d::PoolOptions;
use tensor::ops::epilogue::BatchNormEval;
use tensor::ops::sparse_conv2d::{
    conv2d_sparse, conv2d_sparse_relu_max_pool2d_with, conv2d_sparse_then, sparse_pays, BiasSum,
    SparseLayout,
};
use tensor::optim::Sgd;
use tensor::{Conv2dOptions, Conv2dShape, Rng, Tensor};

pub use crate::dsconfig::{ConvPath, DSConfig, DSConfigError, PruneDims};
pub use crate::rules::ProgressStats;
use crate::rules::{update_group, Group, GrowInit, Start};
use crate::strength::{accumulate_strength, Measure};

/// Everything of the layer's state that is not a parameter, for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct DSConvState {
    pub mask: Vec<bool>,
    pub strength: Vec<f64>,
    pub strength_samples: u64,
    /// The strength the last update read, and its samples (empty and 0
    /// before the first update).
    pub decided_strength: Vec<f64>,
    pub decided_samples: u64,
    pub passes: u64,
    pub rng: [u64; 4],
}

pub struct DSConv2d {
    pub conv: Conv2d,
    pub config: DSConfig,
    /// How the weights were drawn; grown taps with `GrowInit::Kaiming` are
    /// drawn the same way.
    init: Init,
    /// Weight-shaped; false means pruned (the weight is held at zero).
    mask: Vec<bool>,
    /// Weight-shaped accumulated strength since the last update.
    strength: Vec<f64>,
    /// The strength the last update read (kept for study: exports at an
    /// update write it), and how many passes it summed.
    decided_strength: Vec<f64>,
    decided_samples: u64,
    /// One sampled pass's strength, before it is added to `strength`.
    scratch: Vec<f32>,
    strength_samples: u64,
    /// Training forward passes so far; decides which are sampled.
    passes: u64,
    training: bool,
    /// Off once the rule's update window has closed: nothing will read the
    /// strength any more, so it is not sampled.
    sampling: bool,
    /// The layer's own stream: tie-breaks, grown values, random masks.
    rng: Rng,
    /// The sparse kernels' tap lists, built from the mask on the first sparse
    /// forward after the mask changed.
    layout: Option<Rc<SparseLayout>>,
    /// The next training forward uses the dense kernels, so the weight
    /// gradient is dense (for gradient growth); off again after the update.
    dense_grad: bool,
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
        let init = Init::Default;
        DSConv2d::with_init(
            in_channels,
            out_channels,
            kernel,
            opts,
            bias,
            init,
            config,
            rng,
        )
    }

    /// As [`DSConv2d::new`], with the weights drawn by `init`, as
    /// `Conv2d::with_init` draws them.
    #[allow(clippy::too_many_arguments)]
    pub fn with_init(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        opts: Conv2dOptions,
        bias: bool,
        init: Init,
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
        c.rule.validate().map_err(DSConfigError)?;
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
        let conv = Conv2d::with_init(in_channels, out_channels, kernel, opts, bias, init, rng);
        let n = conv.weight.numel();
        let mut layer = DSConv2d {
            conv,
            config,
            init,
            mask: vec![true; n],
            strength: vec![0.0; n],
            decided_strength: Vec::new(),
            decided_samples: 0,
            scratch: Vec::new(),
            strength_samples: 0,
            passes: 0,
            training: true,
            sampling: true,
            rng: own_rng,
            layout: None,
            dense_grad: false,
        };
        if config.rule.start == Start::Random {
            layer.mask_at_random();
        }
        Ok(layer)
    }

    /// The starting mask of `Start::Random`: k2 taps per group chosen at
    /// random (by random keys, as an update breaks ties), the rest zeroed.
    fn mask_at_random(&mut self) {
        self.layout = None;
        let (n, _, k2) = self.group_sizes();
        let mut w = self.conv.weight.data_mut();
        for (wg, mg) in w.chunks_mut(n).zip(self.mask.chunks_mut(n)) {
            let mut order: Vec<(u64, usize)> = (0..n).map(|i| (self.rng.next_u64(), i)).collect();
            order.sort_unstable();
            for (rank, &(_, i)) in order.iter().enumerate() {
                mg[i] = rank < k2;
                if !mg[i] {
                    wg[i] = 0.0;
                }
            }
        }
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

    /// Turns strength sampling off (once no update will read it) or on.
    /// Passes are counted either way.
    pub fn set_sampling(&mut self, on: bool) {
        self.sampling = on;
    }

    /// Whether the next forward runs the sparse kernels.
    pub fn uses_sparse_path(&self) -> bool {
        let sparse = match self.config.path {
            ConvPath::Auto => {
                let shape: [usize; 4] = self.conv.weight.shape().try_into().expect("4-d");
                sparse_pays(shape, self.conv.opts, self.density())
            }
            ConvPath::Sparse => true,
            ConvPath::Dense => false,
        };
        sparse && !(self.dense_grad && self.training)
    }

    /// Asks for a dense weight gradient from the next training step (the
    /// update after it grows by gradient); steps that do not ask pay nothing.
    pub fn set_dense_grad(&mut self, on: bool) {
        self.dense_grad = on;
    }

    /// Whether the next training forward pass samples strength.
    fn samples_next_pass(&self) -> bool {
        self.training
            && self.sampling
            && self.config.rule.uses_strength()
            && self.passes.is_multiple_of(self.config.update_interval)
    }

    /// `pool(relu(forward(x)))`, the LeNet's conv block, as one fused op
    /// that never builds the full-size conv and ReLU outputs (the same
    /// numbers). A pass that samples strength needs the conv's output
    /// itself. On the sparse kernels it computes it once more off the tape
    /// (`no_grad`; the same values as the fused op's conv), samples from
    /// that, and trains through the fused op with the separate ops' bias
    /// sum ([`BiasSum::Planes`]), so every value and gradient is bitwise
    /// what the three ops give, at about half their cost. On the dense
    /// kernels it runs the three ops.
    pub fn forward_relu_pool(&mut self, x: &Tensor, pool: &MaxPool2d) -> Tensor {
        let mut bias_sum = BiasSum::Windows;
        if self.samples_next_pass() {
            if !self.uses_sparse_path() {
                return pool.forward(&self.forward(x).relu());
            }
            let y = tensor::no_grad(|| self.conv_output(x));
            // An empty batch has no activity to measure.
            if y.numel() > 0 {
                self.sample_strength(x, &y);
            }
            bias_sum = BiasSum::Planes;
        }
        let opts = PoolOptions {
            kernel: pool.kernel,
            stride: pool.stride,
        };
        let y = if self.uses_sparse_path() {
            let layout = self.layout();
            conv2d_sparse_relu_max_pool2d_with(
                x,
                &self.conv.weight,
                self.conv.bias.as_ref(),
                &layout,
                opts,
                bias_sum,
            )
        } else {
            let (w, b) = (&self.conv.weight, self.conv.bias.as_ref());
            x.conv2d_relu_max_pool2d(w, b, self.conv.opts, opts)
        };
        if self.training {
            self.passes += 1;
        }
        y
    }

    /// The sparse kernels' tap lists, built on first use after a mask change.
    fn layout(&mut self) -> Rc<SparseLayout> {
        let (shape, opts, mask) = (self.conv.weight.shape(), self.conv.opts, &self.mask);
        self.layout
            .get_or_insert_with(|| {
                let shape: [usize; 4] = shape.try_into().expect("a conv weight is 4-d");
                Rc::new(SparseLayout::new(shape, opts, mask))
            })
            .clone()
    }

    /// Conv2d's forward on the masked weight. In training mode it counts the
    /// pass, and on a sampled pass of a rule that reads strength it also
    /// accumulates strength.
    pub fn forward(&mut self, x: &Tensor) -> Tensor {
        let y = self.conv_output(x);
        if self.training {
            let sampled = self.passes.is_multiple_of(self.config.update_interval);
            // An empty batch has no activity to measure.
            if self.sampling && self.config.rule.uses_strength() && sampled && y.numel() > 0 {
                self.sample_strength(x, &y);
            }
            self.passes += 1;
        }
        y
    }

    /// Evaluation's [`forward`](Self::forward) followed by the batch norm,
    /// shortcut and ReLU, which the kernels apply to their own output
    /// ([`tensor::ops::epilogue`]). Panics in training mode.
    pub fn forward_then(
        &mut self,
        x: &Tensor,
        bn: &BatchNormEval,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Tensor {
        assert!(!self.training, "DSConv2d::forward_then: evaluation only");
        let layout = self.uses_sparse_path().then(|| self.layout());
        let (w, b) = (&self.conv.weight, self.conv.bias.as_ref());
        match layout {
            Some(layout) => conv2d_sparse_then(x, w, b, &layout, bn, residual, relu),
            None => x.conv2d_then(w, b, self.conv.opts, bn, residual, relu),
        }
    }

    /// The conv on the masked weight, on the path this layer uses.
    fn conv_output(&mut self, x: &Tensor) -> Tensor {
        if self.uses_sparse_path() {
            let layout = self.layout();
            conv2d_sparse(x, &self.conv.weight, self.conv.bias.as_ref(), &layout)
        } else {
            self.conv.forward(x)
        }
    }

    /// Adds one pass's strength to the accumulated strength.
    fn sample_strength(&mut self, x: &Tensor, y: &Tensor) {
        let s = Conv2dShape::new(x.shape(), self.conv.weight.shape(), self.conv.opts)
            .expect("conv2d accepted these shapes");
        let (x, y) = (x.data(), y.data());
        // Coactivation counts are integers computed in f32, exact below 2^24:
        // a pass counts at most B·OH·OW per tap, so a batch that could reach
        // 2^24 is counted in slices of images. Correlation is a mean over the
        // batch, not a count, and is computed whole.
        let per_image = s.out_pixels().max(1);
        let images = match self.config.strength.measure {
            Measure::Coactivation => ((1usize << 24) / per_image).clamp(1, s.batch),
            Measure::Correlation => s.batch,
        };
        let (x_img, y_img) = (x.len() / s.batch, y.len() / s.batch);
        for b0 in (0..s.batch).step_by(images) {
            let nb = images.min(s.batch - b0);
            let sub = Conv2dShape { batch: nb, ..s };
            self.scratch.clear();
            self.scratch.resize(self.strength.len(), 0.0);
            accumulate_strength(
                &sub,
                &x[b0 * x_img..(b0 + nb) * x_img],
                &y[b0 * y_img..(b0 + nb) * y_img],
                &self.config.strength,
                &mut self.scratch,
            )
            .expect("strength of a forward pass that just ran");
            for (a, &v) in self.strength.iter_mut().zip(&self.scratch) {
                *a += v as f64;
            }
        }
        self.strength_samples += 1;
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

    /// Taps each group replaces at `step` of `total_steps`: the rule's drop
    /// fraction of k2, rounded.
    pub fn drop_count(&self, step: u64, total_steps: u64) -> usize {
        let (_, k1, k2) = self.group_sizes();
        let notebook = (k2 - k1) as f64 / k2 as f64;
        let f = self
            .config
            .rule
            .drop_fraction_at(notebook, step, total_steps);
        ((f * k2 as f64).round() as usize).min(k2)
    }

    /// Whether the update at the end of the next step needs the dense weight
    /// gradient (gradient growth).
    pub fn needs_dense_grad(&self) -> bool {
        self.config.rule.uses_gradient()
    }

    /// A mask update by the layer's rule, as at `step` of `total_steps`.
    /// Pass the optimiser so that new and pruned taps start from zero
    /// momentum. Gradient growth reads the weight's gradient, which must be
    /// that of the step just taken.
    pub fn update(&mut self, opt: Option<&mut Sgd>, step: u64, total_steps: u64) -> ProgressStats {
        let (n, _, k2) = self.group_sizes();
        let n_drop = self.drop_count(step, total_steps);
        let rule = self.config.rule;
        let (layer_init, fan_in) = (self.init, self.conv.fan_in());
        let mut init = |rng: &mut Rng| match rule.grow_init {
            GrowInit::Kaiming => layer_init.draw(fan_in, rng),
            GrowInit::Zero => 0.0,
        };
        let grad = if rule.uses_gradient() {
            let g = self.conv.weight.grad();
            Some(g.unwrap_or_else(|| vec![0.0; self.mask.len()]))
        } else {
            None
        };
        let mut stats = ProgressStats::default();
        let mut fresh = Vec::new();
        let mut fresh_group = Vec::new();
        let mut w = self.conv.weight.data_mut();
        for (gi, (wg, mg)) in w.chunks_mut(n).zip(self.mask.chunks_mut(n)).enumerate() {
            let group = Group {
                weight: wg,
                mask: mg,
                strength: &self.strength[gi * n..(gi + 1) * n],
                grad: grad.as_ref().map(|g| &g[gi * n..(gi + 1) * n]),
            };
            fresh_group.clear();
            let s = update_group(
                &rule,
                group,
                k2,
                n_drop,
                &mut self.rng,
                &mut init,
                &mut fresh_group,
            );
            fresh.extend(fresh_group.iter().map(|&i| gi * n + i));
            stats.add(&s);
        }
        drop(w);
        self.layout = None;
        self.dense_grad = false;
        // The strength that decided this update is kept for study; the
        // next update reads only what is sampled from now on.
        if self.config.rule.uses_strength() {
            let n = self.strength.len();
            let mut fresh = std::mem::take(&mut self.decided_strength);
            fresh.clear();
            fresh.resize(n, 0.0);
            self.decided_strength = std::mem::replace(&mut self.strength, fresh);
            self.decided_samples = std::mem::take(&mut self.strength_samples);
        }
        if let Some(opt) = opt {
            // A new weight starts with no velocity.
            if let Some(buf) = opt.momentum_buffer_mut(&self.conv.weight) {
                for &i in &fresh {
                    buf[i] = 0.0;
                }
            }
            self.enforce_mask(opt);
        }
        stats
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

    /// Active connections.
    pub fn active(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }

    /// Fraction of connections active.
    pub fn density(&self) -> f64 {
        self.active() as f64 / self.mask.len() as f64
    }

    /// Accumulated strength since the last update, weight-shaped.
    pub fn strength(&self) -> &[f64] {
        &self.strength
    }

    /// How many passes have been added into [`DSConv2d::strength`].
    pub fn strength_samples(&self) -> u64 {
        self.strength_samples
    }

    /// The strength the last update read, weight-shaped (empty before the
    /// first update of a rule that reads strength), and its sample count.
    pub fn decided_strength(&self) -> (&[f64], u64) {
        (&self.decided_strength, self.decided_samples)
    }

    /// Training forward passes seen.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    pub fn state(&self) -> DSConvState {
        DSConvState {
            mask: self.mask.clone(),
            strength: self.strength.clone(),
            strength_samples: self.strength_samples,
            decided_strength: self.decided_strength.clone(),
            decided_samples: self.decided_samples,
            passes: self.passes,
            rng: self.rng.state(),
        }
    }

    /// Puts back a state saved by [`DSConv2d::state`], keeping the
    /// invariants of [`DSConv2d::set_mask`].
    pub fn restore(
        &mut self,
        state: DSConvState,
        opt: Option<&mut Sgd>,
    ) -> Result<(), DSConfigError> {
        let n = self.mask.len();
        let decided = state.decided_strength.len();
        if state.strength.len() != n || (decided != 0 && decided != n) {
            return Err(DSConfigError(format!(
                "saved state has {} and {decided} strength values, the layer has {n} weights",
                state.strength.len()
            )));
        }
        self.set_mask(state.mask, opt)?;
        self.strength = state.strength;
        self.strength_samples = state.strength_samples;
        self.decided_strength = state.decided_strength;
        self.decided_samples = state.decided_samples;
        self.passes = state.passes;
        self.rng = Rng::from_state(state.rng);
        Ok(())
    }

    /// Replaces the mask (one entry per weight, true = active), for a mask
    /// made elsewhere: the weights at inactive taps, and their momentum in
    /// `opt`, become zero, and the sparse kernels' layout is rebuilt on the
    /// next forward, so the sparse and dense paths agree at once. Active
    /// taps keep their weights.
    pub fn set_mask(
        &mut self,
        mask: Vec<bool>,
        opt: Option<&mut Sgd>,
    ) -> Result<(), DSConfigError> {
        let n = self.mask.len();
        if mask.len() != n {
            return Err(DSConfigError(format!(
                "a mask of {} values for a layer of {n} weights (shape {:?})",
                mask.len(),
                self.conv.weight.shape()
            )));
        }
        self.mask = mask;
        self.layout = None;
        match opt {
            Some(opt) => self.enforce_mask(opt),
            None => {
                let mut w = self.conv.weight.data_mut();
                for (wi, &m) in w.iter_mut().zip(&self.mask) {
                    if !m {
                        *wi = 0.0;
                    }
                }
            }
        }
        Ok(())
    }
}
