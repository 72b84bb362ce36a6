//! The CIFAR ResNets of He et al. (2016, §4.2): ResNet-(6n+2), dense or with
//! sparse 3×3 convolutions.
//!
//! ```text
//! conv1  3→16, 3×3, pad 1 → bn1 → relu                       (B, 16, 32, 32)
//! layer1 n basic blocks, 16 channels                          (B, 16, 32, 32)
//! layer2 n basic blocks, 32 channels, the first of stride 2   (B, 32, 16, 16)
//! layer3 n basic blocks, 64 channels, the first of stride 2   (B, 64,  8,  8)
//! global average pool → fc 64→classes                         (B, classes)
//!
//! basic block: out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
//! ```
//!
//! The convolutions have no bias (the batch norm after each has one). When
//! a block halves the map and doubles the channels, its shortcut is either
//! He et al.'s parameter-free "option A" (every other pixel, zero channels
//! on each side; the default, as in their CIFAR experiments) or "option B",
//! a 1×1 convolution of stride 2 and a batch norm. Weights are drawn
//! Kaiming-normal (fan_in, gain √2), batch norm starts at γ = 1, β = 0.
//!
//! Names are PyTorch's for the usual CIFAR ResNet code:
//! `layer2.0.conv1.weight`, `layer2.0.bn1.running_mean`,
//! `layer2.0.shortcut.0.weight` (option B), `fc.weight`. ResNet-20 has
//! 269,722 parameters with option A.
//!
//! Sparse: every 3×3 convolution but the stem is a DSConv2d. The stem, the
//! projections and the classifier stay dense unless [`ResNetConfig`] says
//! otherwise (the field's default: they are small, and the stem sees only 3
//! input channels).

use std::str::FromStr;

use tensor::nn::{BatchNorm2d, Init, Linear};
use tensor::{tape, Conv2dOptions, Rng, Tensor};

use crate::dsconv::{DSConfig, DSConfigError, DSConv2d};
use crate::model::{join, ConvLayer, ConvSpec, Model, Sparsity};

/// The shortcut of a block that changes the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// Subsample and zero-pad the channels: no parameters (the default).
    A,
    /// A 1×1 convolution of the block's stride, then batch norm.
    B,
}

impl Shortcut {
    pub fn name(self) -> &'static str {
        match self {
            Shortcut::A => "a",
            Shortcut::B => "b",
        }
    }
}

impl FromStr for Shortcut {
    type Err = String;
    fn from_str(s: &str) -> Result<Shortcut, String> {
        match s {
            "a" | "A" => Ok(Shortcut::A),
            "b" | "B" => Ok(Shortcut::B),
            _ => Err(format!(
                "unknown shortcut {s:?}: expected a (subsample and zero-pad) or b (1x1 projection)"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// 6n + 2: n blocks per stage.
    pub depth: usize,
    pub num_classes: usize,
    pub shortcut: Shortcut,
    pub sparse_stem: bool,
    pub sparse_projection: bool,
    pub sparse_classifier: bool,
}

impl ResNetConfig {
    fn blocks_per_stage(&self) -> usize {
        (self.depth - 2) / 6
    }

    /// Each block's (in channels, out channels, stride), stage by stage.
    fn blocks(&self) -> [Vec<(usize, usize, usize)>; 3] {
        let n = self.blocks_per_stage();
        let stage = |cin: usize, cout: usize, stride: usize| {
            (0..n)
                .map(|i| {
                    if i == 0 {
                        (cin, cout, stride)
                    } else {
                        (cout, cout, 1)
                    }
                })
                .collect()
        };
        [stage(16, 16, 1), stage(16, 32, 2), stage(32, 64, 2)]
    }

    /// The weight shapes of the sparse layers, in construction order: what
    /// the density is spread over.
    pub fn sparse_shapes(&self) -> Vec<[usize; 4]> {
        let mut v = Vec::new();
        if self.sparse_stem {
            v.push([16, 3, 3, 3]);
        }
        for stage in self.blocks() {
            for (cin, cout, stride) in stage {
                v.push([cout, cin, 3, 3]);
                v.push([cout, cout, 3, 3]);
                if self.projects(cin, cout, stride) && self.sparse_projection {
                    v.push([cout, cin, 1, 1]);
                }
            }
        }
        if self.sparse_classifier {
            v.push([self.num_classes, 64, 1, 1]);
        }
        v
    }

    fn projects(&self, cin: usize, cout: usize, stride: usize) -> bool {
        self.shortcut == Shortcut::B && (cin != cout || stride != 1)
    }
}

fn conv3x3(cin: usize, cout: usize, stride: usize) -> ConvSpec {
    ConvSpec {
        in_channels: cin,
        out_channels: cout,
        kernel: (3, 3),
        opts: Conv2dOptions {
            stride: (stride, stride),
            padding: (1, 1),
            ..Conv2dOptions::default()
        },
        bias: false,
        init: Init::KaimingNormal,
    }
}

/// The layers are built in one order, each sparse one taking the next
/// configuration.
struct Builder<'a> {
    configs: std::vec::IntoIter<DSConfig>,
    dense: bool,
    rng: &'a mut Rng,
}

impl Builder<'_> {
    fn conv(&mut self, spec: ConvSpec, sparse: bool) -> Result<ConvLayer, DSConfigError> {
        let cfg = if sparse && !self.dense {
            Some(
                self.configs
                    .next()
                    .expect("one configuration per sparse layer"),
            )
        } else {
            None
        };
        ConvLayer::new(spec, cfg, self.rng)
    }
}

enum BlockShortcut {
    Identity,
    Pad { stride: usize, pad: usize },
    Projection { conv: ConvLayer, bn: BatchNorm2d },
}

struct BasicBlock {
    conv1: ConvLayer,
    bn1: BatchNorm2d,
    conv2: ConvLayer,
    bn2: BatchNorm2d,
    shortcut: BlockShortcut,
}

impl BasicBlock {
    fn new(
        (cin, cout, stride): (usize, usize, usize),
        cfg: &ResNetConfig,
        b: &mut Builder,
    ) -> Result<BasicBlock, DSConfigError> {
        let conv1 = b.conv(conv3x3(cin, cout, stride), true)?;
        let conv2 = b.conv(conv3x3(cout, cout, 1), true)?;
        let shortcut = if cin == cout && stride == 1 {
            BlockShortcut::Identity
        } else if cfg.shortcut == Shortcut::A {
            assert!(
                cout >= cin && (cout - cin) % 2 == 0,
                "option A pads the channels evenly"
            );
            BlockShortcut::Pad {
                stride,
                pad: (cout - cin) / 2,
            }
        } else {
            let spec = ConvSpec {
                kernel: (1, 1),
                opts: Conv2dOptions {
                    stride: (stride, stride),
                    ..Conv2dOptions::default()
                },
                ..conv3x3(cin, cout, stride)
            };
            BlockShortcut::Projection {
                conv: b.conv(spec, cfg.sparse_projection)?,
                bn: BatchNorm2d::new(cout),
            }
        };
        Ok(BasicBlock {
            conv1,
            bn1: BatchNorm2d::new(cout),
            conv2,
            bn2: BatchNorm2d::new(cout),
            shortcut,
        })
    }

    fn forward(&mut self, x: &Tensor) -> Tensor {
        let h = self.bn1.forward_relu(&self.conv1.forward(x));
        let h = self.bn2.forward(&self.conv2.forward(&h));
        let s = match &mut self.shortcut {
            BlockShortcut::Identity => x.clone(),
            BlockShortcut::Pad { stride, pad } => x.shortcut_pad(*stride, *pad),
            BlockShortcut::Projection { conv, bn } => bn.forward(&conv.forward(x)),
        };
        h.add_relu(&s)
    }

    /// Evaluation's [`forward`](Self::forward): each convolution applies
    /// the batch norm, shortcut and ReLU that follow it to its own output
    /// while it is in cache ([`ConvLayer::forward_then`]), bitwise the same
    /// output in fewer passes over memory.
    fn forward_eval(&mut self, x: &Tensor) -> Tensor {
        // Every layer's mode is set together (`set_training`).
        debug_assert!(!self.bn1.training && !self.bn2.training);
        let h = self
            .conv1
            .forward_then(x, &self.bn1.eval_affine(), None, true);
        let s = match &mut self.shortcut {
            BlockShortcut::Identity => x.clone(),
            BlockShortcut::Pad { stride, pad } => x.shortcut_pad(*stride, *pad),
            BlockShortcut::Projection { conv, bn } => {
                conv.forward_then(x, &bn.eval_affine(), None, false)
            }
        };
        self.conv2
            .forward_then(&h, &self.bn2.eval_affine(), Some(&s), true)
    }

    /// (name, conv, batch norm) of each conv + bn pair, in order.
    fn pairs(&self) -> Vec<(&'static str, &'static str, &ConvLayer, &BatchNorm2d)> {
        let mut v = vec![
            ("conv1", "bn1", &self.conv1, &self.bn1),
            ("conv2", "bn2", &self.conv2, &self.bn2),
        ];
        if let BlockShortcut::Projection { conv, bn } = &self.shortcut {
            v.push(("shortcut.0", "shortcut.1", conv, bn));
        }
        v
    }

    fn convs_mut(&mut self) -> Vec<(&'static str, &mut ConvLayer)> {
        let mut v = vec![("conv1", &mut self.conv1), ("conv2", &mut self.conv2)];
        if let BlockShortcut::Projection { conv, .. } = &mut self.shortcut {
            v.push(("shortcut.0", conv));
        }
        v
    }

    fn set_training(&mut self, on: bool) {
        self.bn1.training = on;
        self.bn2.training = on;
        if let BlockShortcut::Projection { bn, .. } = &mut self.shortcut {
            bn.training = on;
        }
        for (_, c) in self.convs_mut() {
            c.set_training(on);
        }
    }
}

/// The last layer: a Linear, or, when sparse, a 1×1 DSConv2d on the
/// pooled features seen as (B, 64, 1, 1) images.
enum Classifier {
    Dense(Linear),
    Sparse(Box<DSConv2d>),
}

pub struct ResNet {
    config: ResNetConfig,
    conv1: ConvLayer,
    bn1: BatchNorm2d,
    /// layer1, layer2, layer3.
    stages: [Vec<BasicBlock>; 3],
    fc: Classifier,
}

/// `weight`, `bias` of a batch norm under `prefix`.
fn bn_parameters(prefix: &str, bn: &BatchNorm2d) -> [(String, Tensor); 2] {
    [
        (join(prefix, "weight"), bn.weight.clone()),
        (join(prefix, "bias"), bn.bias.clone()),
    ]
}

fn bn_buffers(prefix: &str, bn: &BatchNorm2d) -> [(String, Tensor); 3] {
    [
        (join(prefix, "running_mean"), bn.running_mean.clone()),
        (join(prefix, "running_var"), bn.running_var.clone()),
        (
            join(prefix, "num_batches_tracked"),
            bn.num_batches_tracked.clone(),
        ),
    ]
}

impl ResNet {
    /// A ResNet of `config`, dense for `sparsity: None`.
    pub fn new(
        config: &ResNetConfig,
        sparsity: Option<Sparsity>,
        rng: &mut Rng,
    ) -> Result<ResNet, DSConfigError> {
        let cfg = *config;
        if cfg.depth < 8 || !(cfg.depth - 2).is_multiple_of(6) || cfg.num_classes == 0 {
            return Err(DSConfigError(format!(
                "a CIFAR ResNet has depth 6n + 2 (8, 14, 20, …) and at least one class, got depth {} and {} classes",
                cfg.depth, cfg.num_classes
            )));
        }
        let configs = match sparsity {
            Some(s) => s.layer_configs(&cfg.sparse_shapes())?,
            None => Vec::new(),
        };
        let mut b = Builder {
            configs: configs.into_iter(),
            dense: sparsity.is_none(),
            rng,
        };
        let conv1 = b.conv(conv3x3(3, 16, 1), cfg.sparse_stem)?;
        let mut stages: [Vec<BasicBlock>; 3] = Default::default();
        for (stage, blocks) in stages.iter_mut().zip(cfg.blocks()) {
            for shape in blocks {
                stage.push(BasicBlock::new(shape, &cfg, &mut b)?);
            }
        }
        let fc = if cfg.sparse_classifier && !b.dense {
            let spec = ConvSpec {
                in_channels: 64,
                out_channels: cfg.num_classes,
                kernel: (1, 1),
                opts: Conv2dOptions::default(),
                bias: true,
                init: Init::KaimingNormal,
            };
            match b.conv(spec, true)? {
                ConvLayer::Sparse(c) => Classifier::Sparse(c),
                ConvLayer::Dense(_) => unreachable!("a sparse layer was asked for"),
            }
        } else {
            Classifier::Dense(Linear::with_init(
                64,
                cfg.num_classes,
                true,
                Init::KaimingNormal,
                b.rng,
            ))
        };
        Ok(ResNet {
            config: cfg,
            conv1,
            bn1: BatchNorm2d::new(16),
            stages,
            fc,
        })
    }

    /// Evaluation's forward pass, which [`Model::forward`] takes when the
    /// network is not training and the tape is not recording: every
    /// convolution applies the batch norm, shortcut and ReLU after it
    /// (`BasicBlock::forward_eval`), bitwise the logits of the separate
    /// ops. Panics in training mode or while the tape records.
    pub fn forward_eval(&mut self, x: &Tensor) -> Tensor {
        assert!(
            !self.bn1.training,
            "ResNet::forward_eval: evaluation mode only"
        );
        let mut h = self
            .conv1
            .forward_then(x, &self.bn1.eval_affine(), None, true); // (B, 16, 32, 32)
        for block in self.stages.iter_mut().flatten() {
            h = block.forward_eval(&h); // … (B, 64, 8, 8)
        }
        self.classify(&h)
    }

    /// Global average pooling and the classifier: (B, 64, 8, 8) → (B, classes).
    fn classify(&mut self, h: &Tensor) -> Tensor {
        let h = h.global_avg_pool2d(); // (B, 64)
        match &mut self.fc {
            Classifier::Dense(fc) => fc.forward(&h), // (B, classes)
            Classifier::Sparse(fc) => {
                let b = h.shape()[0];
                let y = fc.forward(&h.reshape(&[b, 64, 1, 1]));
                y.reshape(&[b, self.config.num_classes])
            }
        }
    }

    fn blocks(&self) -> impl Iterator<Item = (String, &BasicBlock)> {
        self.stages.iter().enumerate().flat_map(|(s, blocks)| {
            blocks
                .iter()
                .enumerate()
                .map(move |(i, b)| (format!("layer{}.{i}", s + 1), b))
        })
    }
}

impl Model for ResNet {
    fn name(&self) -> String {
        format!("resnet{}", self.config.depth)
    }

    fn input_shape(&self) -> [usize; 3] {
        [3, 32, 32]
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn forward(&mut self, x: &Tensor) -> Tensor {
        // Evaluation applies each batch norm, shortcut and ReLU in the
        // convolution before it (the same bits, fewer passes over memory).
        if !self.bn1.training && !tape::is_recording() {
            return self.forward_eval(x);
        }
        let mut h = self.bn1.forward_relu(&self.conv1.forward(x)); // (B, 16, 32, 32)
        for block in self.stages.iter_mut().flatten() {
            h = block.forward(&h); // … (B, 64, 8, 8)
        }
        self.classify(&h)
    }

    /// An activation of the first stage is 64 KiB an image: at 32 images
    /// a layer's input and output (4 MiB together) stay in the last-level
    /// cache, where at 250 (32 MiB) they went through memory. Evaluation ran
    /// 1.1× (dense) to 1.2× (sparse) faster (docs/benchmarks.md).
    fn eval_batch_size(&self) -> usize {
        32
    }

    fn set_training(&mut self, on: bool) {
        self.conv1.set_training(on);
        self.bn1.training = on;
        for block in self.stages.iter_mut().flatten() {
            block.set_training(on);
        }
        if let Classifier::Sparse(fc) = &mut self.fc {
            fc.set_training(on);
        }
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = self.conv1.named_parameters("conv1");
        v.extend(bn_parameters("bn1", &self.bn1));
        for (prefix, block) in self.blocks() {
            for (conv, bn, c, b) in block.pairs() {
                v.extend(c.named_parameters(&join(&prefix, conv)));
                v.extend(bn_parameters(&join(&prefix, bn), b));
            }
        }
        let (w, b) = match &self.fc {
            Classifier::Dense(fc) => (fc.weight.clone(), fc.bias.clone()),
            Classifier::Sparse(fc) => (fc.conv.weight.clone(), fc.conv.bias.clone()),
        };
        v.push(("fc.weight".into(), w));
        v.extend(b.map(|b| ("fc.bias".into(), b)));
        v
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = bn_buffers("bn1", &self.bn1).to_vec();
        for (prefix, block) in self.blocks() {
            for (_, bn, _, b) in block.pairs() {
                v.extend(bn_buffers(&join(&prefix, bn), b));
            }
        }
        v
    }

    fn sparse_layers(&self) -> Vec<(String, &DSConv2d)> {
        let mut v: Vec<(String, &DSConv2d)> = Vec::new();
        v.extend(self.conv1.sparse().map(|l| ("conv1".to_string(), l)));
        for (prefix, block) in self.blocks() {
            for (conv, _, c, _) in block.pairs() {
                v.extend(c.sparse().map(|l| (join(&prefix, conv), l)));
            }
        }
        if let Classifier::Sparse(fc) = &self.fc {
            v.push(("fc".into(), fc));
        }
        v
    }

    fn sparse_layers_mut(&mut self) -> Vec<(String, &mut DSConv2d)> {
        let mut v: Vec<(String, &mut DSConv2d)> = Vec::new();
        v.extend(self.conv1.sparse_mut().map(|l| ("conv1".to_string(), l)));
        for (s, blocks) in self.stages.iter_mut().enumerate() {
            for (i, block) in blocks.iter_mut().enumerate() {
                let prefix = format!("layer{}.{i}", s + 1);
                for (conv, c) in block.convs_mut() {
                    v.extend(c.sparse_mut().map(|l| (join(&prefix, conv), l)));
                }
            }
        }
        if let Classifier::Sparse(fc) = &mut self.fc {
            v.push(("fc".into(), &mut **fc));
        }
        v
    }
}
