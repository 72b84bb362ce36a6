//! The notebook's network: conv 3→6 5×5 → ReLU → maxpool 2 → conv 6→16 5×5 →
//! ReLU → maxpool 2 → fc 400→120 → ReLU → 84 → ReLU → 10.
//!
//! The two convolutions are plain Conv2d in the dense model and DSConv2d in
//! every sparse mode; both are built from the same seeded stream in the same
//! order, so a dense and a sparse model of one seed start from the same
//! weights.

use tensor::nn::{Conv2d, Linear, MaxPool2d};
use tensor::optim::Sgd;
use tensor::{Conv2dOptions, Rng, Tensor};

use crate::dsconv::{DSConfig, DSConfigError, DSConv2d, PruneDims};
use crate::rules::{erk_densities, Allocation};

pub enum ConvLayer {
    Dense(Conv2d),
    /// Boxed: the sparse layer carries its mask state and is much larger.
    Sparse(Box<DSConv2d>),
}

impl ConvLayer {
    fn new(
        cin: usize,
        cout: usize,
        sparse: Option<DSConfig>,
        rng: &mut Rng,
    ) -> Result<ConvLayer, DSConfigError> {
        let opts = Conv2dOptions::default();
        Ok(match sparse {
            None => ConvLayer::Dense(Conv2d::new(cin, cout, (5, 5), opts, true, rng)),
            Some(cfg) => ConvLayer::Sparse(Box::new(DSConv2d::new(
                cin,
                cout,
                (5, 5),
                opts,
                true,
                cfg,
                rng,
            )?)),
        })
    }

    pub fn forward(&mut self, x: &Tensor) -> Tensor {
        match self {
            ConvLayer::Dense(c) => c.forward(x),
            ConvLayer::Sparse(c) => c.forward(x),
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        match self {
            ConvLayer::Dense(c) => c.parameters(),
            ConvLayer::Sparse(c) => c.parameters(),
        }
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
}

pub struct LeNet {
    pub conv1: ConvLayer,
    pub conv2: ConvLayer,
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
    pool: MaxPool2d,
}

impl LeNet {
    /// `sparse: None` builds the dense model; `Some(config)` makes both convs
    /// DSConv2d with that configuration.
    pub fn new(sparse: Option<DSConfig>, rng: &mut Rng) -> Result<LeNet, DSConfigError> {
        LeNet::with_allocation(sparse, Allocation::Uniform, rng)
    }

    /// As [`LeNet::new`], with the target density spread over the two convs
    /// by `allocation`. ERK gives each conv its own total fraction (and scales
    /// the keep fraction with it); it needs whole-layer groups.
    pub fn with_allocation(
        sparse: Option<DSConfig>,
        allocation: Allocation,
        rng: &mut Rng,
    ) -> Result<LeNet, DSConfigError> {
        let (c1, c2) = match (sparse, allocation) {
            (Some(c), Allocation::Erk) => {
                if c.prune_dims != PruneDims::Layer {
                    return Err(DSConfigError(
                        "ERK allocates density across whole layers: it needs layer prune dims"
                            .into(),
                    ));
                }
                let d = erk_densities(&[[6, 3, 5, 5], [16, 6, 5, 5]], c.total_fraction);
                let per_layer = |d: f64| DSConfig {
                    total_fraction: d,
                    keep_fraction: (c.keep_fraction * d / c.total_fraction).min(d),
                    ..c
                };
                (Some(per_layer(d[0])), Some(per_layer(d[1])))
            }
            _ => (sparse, sparse),
        };
        Ok(LeNet {
            conv1: ConvLayer::new(3, 6, c1, rng)?,
            conv2: ConvLayer::new(6, 16, c2, rng)?,
            fc1: Linear::new(16 * 5 * 5, 120, true, rng),
            fc2: Linear::new(120, 84, true, rng),
            fc3: Linear::new(84, 10, true, rng),
            pool: MaxPool2d::new(2),
        })
    }

    pub fn dense(rng: &mut Rng) -> LeNet {
        LeNet::new(None, rng).expect("the dense model has no sparse configuration to reject")
    }

    /// x is (B, 3, 32, 32); returns logits (B, 10).
    pub fn forward(&mut self, x: &Tensor) -> Tensor {
        // A conv block is one fused op where it can be (the same numbers as
        // the three ops).
        let pool = self.pool;
        let block = |conv: &mut ConvLayer, x: &Tensor| match conv {
            ConvLayer::Dense(c) => c.forward_relu_pool(x, &pool),
            ConvLayer::Sparse(c) => c.forward_relu_pool(x, &pool),
        };
        let h = block(&mut self.conv1, x); // (B, 6, 14, 14)
        let h = block(&mut self.conv2, &h); // (B, 16, 5, 5)
        let h = self.fc1.forward(&h.flatten()).relu(); // (B, 120)
        let h = self.fc2.forward(&h).relu(); // (B, 84)
        self.fc3.forward(&h) // (B, 10)
    }

    /// In parameter order: conv1 w, b, conv2 w, b, fc1 w, b, fc2 w, b, fc3 w, b.
    pub fn parameters(&self) -> Vec<Tensor> {
        [
            self.conv1.parameters(),
            self.conv2.parameters(),
            self.fc1.parameters(),
            self.fc2.parameters(),
            self.fc3.parameters(),
        ]
        .concat()
    }

    pub fn sparse_layers(&self) -> Vec<&DSConv2d> {
        [&self.conv1, &self.conv2]
            .into_iter()
            .filter_map(|c| c.sparse())
            .collect()
    }

    pub fn sparse_layers_mut(&mut self) -> Vec<&mut DSConv2d> {
        [&mut self.conv1, &mut self.conv2]
            .into_iter()
            .filter_map(|c| c.sparse_mut())
            .collect()
    }

    /// Training mode samples Hebbian strength; evaluation does not.
    pub fn set_training(&mut self, on: bool) {
        for l in self.sparse_layers_mut() {
            l.set_training(on);
        }
    }

    /// One SGD step on a batch: forward, cross-entropy, backward, step, and
    /// the sparse layers' masks held. Returns the loss. If the loss is NaN or
    /// infinite, nothing is updated (no backward, no step) and the loss is
    /// returned all the same, so the caller can stop before it spreads.
    pub fn train_step(&mut self, opt: &mut Sgd, x: &Tensor, labels: &[usize]) -> f32 {
        let loss = self.forward(x).cross_entropy(labels);
        let value = loss.item();
        if !value.is_finite() {
            tensor::tape::clear();
            return value;
        }
        opt.zero_grad();
        loss.backward();
        opt.step();
        for l in self.sparse_layers() {
            l.enforce_mask(opt);
        }
        value
    }
}
