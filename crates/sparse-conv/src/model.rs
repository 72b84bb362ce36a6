//! The model API: what every network offers the training loop, the
//! checkpoint and the export, and how a network is chosen by name.
//!
//! A network is a tree of modules whose parameters and buffers have names,
//! spelled as PyTorch spells them (`layer2.0.conv1.weight`,
//! `bn1.running_mean`), so a checkpoint or an export is a set of named
//! tensors. Its sparse layers (the `DSConv2d`s) are listed with their
//! names too, for the mask updates and the export.
//!
//! To add a network: build it from [`ConvLayer`]s (dense or sparse, by the
//! [`Sparsity`] it is given), implement [`Model`], and give [`Arch`] a name
//! for it. docs/models.md walks through it.

use std::fmt;
use std::str::FromStr;

use tensor::nn::{Conv2d, Init};
use tensor::ops::epilogue::BatchNormEval;
use tensor::optim::Sgd;
use tensor::{Conv2dOptions, Rng, Tensor};

use crate::dsconv::{DSConfig, DSConfigError, DSConv2d, PruneDims};
use crate::lenet::LeNet;
use crate::resnet::{ResNet, ResNetConfig, Shortcut};
use crate::rules::{erk_densities, Allocation};

/// A network the training loop can run.
pub trait Model {
    /// The architecture's name, as `--model` spells it (`resnet20`).
    fn name(&self) -> String;

    /// (C, H, W) of one input image.
    fn input_shape(&self) -> [usize; 3];

    /// Outputs per image.
    fn num_classes(&self) -> usize;

    /// Logits (B, classes) of a (B, C, H, W) batch. In training mode batch
    /// norm normalises by the batch and sparse layers sample strength; in
    /// evaluation mode batch norm uses its running statistics.
    fn forward(&mut self, x: &Tensor) -> Tensor;

    /// Training or evaluation mode, for every module.
    fn set_training(&mut self, on: bool);

    /// Images per batch in evaluation. An image's logits do not depend on
    /// the batch (above 8 images: the training loop's `Trainer::logits`
    /// says why), so this is chosen for speed alone: enough images to
    /// amortise each op's fork/join, few enough that a layer's input and
    /// output stay in the cache for the next layer. The default suits
    /// networks whose activations are small, like the LeNet's (18 KiB an
    /// image at most).
    fn eval_batch_size(&self) -> usize {
        250
    }

    /// Every parameter with its name, in a fixed order: the optimiser's.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// Every buffer (state that is not trained, such as batch norm's running
    /// statistics) with its name.
    fn named_buffers(&self) -> Vec<(String, Tensor)>;

    /// The sparse layers with their names (`layer1.0.conv1`), in a fixed
    /// order.
    fn sparse_layers(&self) -> Vec<(String, &DSConv2d)>;

    fn sparse_layers_mut(&mut self) -> Vec<(String, &mut DSConv2d)>;

    /// The parameters alone, in [`Model::named_parameters`] order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// One SGD step on a batch: forward, cross-entropy, backward, step, and
    /// the sparse layers' masks held. Returns the loss. If the loss is NaN or
    /// infinite, nothing is updated (no backward, no step) and the loss is
    /// returned all the same, so the caller can stop before it spreads.
    fn train_step(&mut self, opt: &mut Sgd, x: &Tensor, labels: &[usize]) -> f32 {
        let loss = self.forward(x).cross_entropy(labels);
        let value = loss.item();
        if !value.is_finite() {
            tensor::tape::clear();
            return value;
        }
        opt.zero_grad();
        loss.backward();
        opt.step();
        for (_, l) in self.sparse_layers() {
            l.enforce_mask(opt);
        }
        value
    }
}

/// `prefix.name`, or `name` at the top level.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A convolution that is dense or sparse.
pub enum ConvLayer {
    Dense(Conv2d),
    /// Boxed: the sparse layer carries its mask state and is much larger.
    Sparse(Box<DSConv2d>),
}

/// What a [`ConvLayer`] is: its channels, kernel, geometry, bias and init.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub opts: Conv2dOptions,
    pub bias: bool,
    pub init: Init,
}

impl ConvSpec {
    /// The weight's shape (O, C/groups, KH, KW).
    pub fn weight_shape(&self) -> [usize; 4] {
        let cg = self.in_channels / self.opts.groups.max(1);
        [self.out_channels, cg, self.kernel.0, self.kernel.1]
    }
}

impl ConvLayer {
    /// Dense for `sparse: None`, else a DSConv2d with that configuration.
    /// Both draw the same weights from `rng`.
    pub fn new(
        spec: ConvSpec,
        sparse: Option<DSConfig>,
        rng: &mut Rng,
    ) -> Result<ConvLayer, DSConfigError> {
        let ConvSpec {
            in_channels: cin,
            out_channels: cout,
            kernel,
            opts,
            bias,
            init,
        } = spec;
        Ok(match sparse {
            None => ConvLayer::Dense(Conv2d::with_init(cin, cout, kernel, opts, bias, init, rng)),
            Some(cfg) => ConvLayer::Sparse(Box::new(DSConv2d::with_init(
                cin, cout, kernel, opts, bias, init, cfg, rng,
            )?)),
        })
    }

    pub fn forward(&mut self, x: &Tensor) -> Tensor {
        match self {
            ConvLayer::Dense(c) => c.forward(x),
            ConvLayer::Sparse(c) => c.forward(x),
        }
    }

    /// Evaluation's forward followed by a batch norm (→ + residual) (→
    /// relu), in one pass over the output ([`DSConv2d::forward_then`]).
    pub fn forward_then(
        &mut self,
        x: &Tensor,
        bn: &BatchNormEval,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Tensor {
        match self {
            ConvLayer::Dense(c) => {
                x.conv2d_then(&c.weight, c.bias.as_ref(), c.opts, bn, residual, relu)
            }
            ConvLayer::Sparse(c) => c.forward_then(x, bn, residual, relu),
        }
    }

    pub fn conv(&self) -> &Conv2d {
        match self {
            ConvLayer::Dense(c) => c,
            ConvLayer::Sparse(c) => &c.conv,
        }
    }

    /// `weight` and `bias` (if any) under `prefix`.
    pub fn named_parameters(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let c = self.conv();
        std::iter::once((join(prefix, "weight"), c.weight.clone()))
            .chain(c.bias.clone().map(|b| (join(prefix, "bias"), b)))
            .collect()
    }

    pub fn sparse(&self) -> Option<&DSConv2d> {
        match self {
            ConvLayer::Dense(_) => None,
            ConvLayer::Sparse(c) => Some(c),
        }
    }

    pub fn sparse_mut(&mut self) -> Option<&mut DSConv2d> {
        match self {
            ConvLayer::Dense(_) => None,
            ConvLayer::Sparse(c) => Some(c),
        }
    }

    pub fn set_training(&mut self, on: bool) {
        if let ConvLayer::Sparse(c) = self {
            c.set_training(on);
        }
    }
}

/// How a network's sparse layers are configured: the rule and strength
/// settings of `config`, with `config.total_fraction` the target density,
/// spread over the layers by `allocation`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sparsity {
    pub config: DSConfig,
    pub allocation: Allocation,
}

impl Sparsity {
    /// One configuration per sparse layer, for layers whose weights have
    /// `shapes`. Uniform allocation gives each layer the target itself; ERK
    /// gives each its own density so that the active weights over all of
    /// them are the target fraction, and scales the keep fraction with it.
    /// ERK ranks whole layers, so it needs `PruneDims::Layer`.
    pub fn layer_configs(&self, shapes: &[[usize; 4]]) -> Result<Vec<DSConfig>, DSConfigError> {
        let c = self.config;
        match self.allocation {
            Allocation::Uniform => Ok(vec![c; shapes.len()]),
            Allocation::Erk => {
                if c.prune_dims != PruneDims::Layer {
                    return Err(DSConfigError(
                        "ERK allocates density across whole layers: it needs layer prune dims"
                            .into(),
                    ));
                }
                let densities = erk_densities(shapes, c.total_fraction);
                Ok(densities
                    .into_iter()
                    .map(|d| DSConfig {
                        total_fraction: d,
                        keep_fraction: (c.keep_fraction * d / c.total_fraction).min(d),
                        ..c
                    })
                    .collect())
            }
        }
    }
}

/// A network by name: `lenet`, or `resnetN` for a CIFAR ResNet of depth
/// N = 6n + 2 (`resnet20`, `resnet32`, `resnet56`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    LeNet,
    ResNet { depth: usize },
}

impl Arch {
    pub fn name(self) -> String {
        match self {
            Arch::LeNet => "lenet".into(),
            Arch::ResNet { depth } => format!("resnet{depth}"),
        }
    }

    pub fn is_resnet(self) -> bool {
        matches!(self, Arch::ResNet { .. })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Arch, String> {
        if s == "lenet" {
            return Ok(Arch::LeNet);
        }
        let bad = || {
            format!(
                "unknown model {s:?}: expected lenet or resnetN with N = 6n + 2 \
                 (resnet20, resnet32, resnet56, …)"
            )
        };
        let depth: usize = s
            .strip_prefix("resnet")
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)?;
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            return Err(bad());
        }
        Ok(Arch::ResNet { depth })
    }
}

/// Everything that decides a network's architecture: the one to build, and
/// for the ResNets, the shortcut and which layers beyond the default ones
/// are sparse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub shortcut: Shortcut,
    /// Make the first convolution sparse too (ResNets; the LeNet's
    /// convolutions are always both sparse in a sparse mode).
    pub sparse_stem: bool,
    /// Make the 1×1 projection shortcuts sparse (`--shortcut b`).
    pub sparse_projection: bool,
    /// Make the classifier sparse (a 1×1 sparse convolution on the pooled
    /// features).
    pub sparse_classifier: bool,
}

impl ModelSpec {
    pub fn new(arch: Arch) -> ModelSpec {
        ModelSpec {
            arch,
            shortcut: Shortcut::A,
            sparse_stem: false,
            sparse_projection: false,
            sparse_classifier: false,
        }
    }

    /// The network, dense for `sparsity: None`, with 10 classes for
    /// CIFAR-10, its weights drawn from `rng`.
    pub fn build(
        &self,
        sparsity: Option<Sparsity>,
        rng: &mut Rng,
    ) -> Result<Box<dyn Model>, DSConfigError> {
        Ok(match self.arch {
            Arch::LeNet => {
                if self.sparse_stem || self.sparse_projection || self.sparse_classifier {
                    return Err(DSConfigError(
                        "the LeNet's two convolutions are its sparse layers; the stem, \
                         projection and classifier options are for the ResNets"
                            .into(),
                    ));
                }
                Box::new(LeNet::with_sparsity(sparsity, rng)?)
            }
            Arch::ResNet { depth } => Box::new(ResNet::new(
                &ResNetConfig {
                    depth,
                    num_classes: 10,
                    shortcut: self.shortcut,
                    sparse_stem: self.sparse_stem,
                    sparse_projection: self.sparse_projection,
                    sparse_classifier: self.sparse_classifier,
                },
                sparsity,
                rng,
            )?),
        })
    }
}
