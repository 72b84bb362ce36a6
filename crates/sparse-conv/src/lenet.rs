//! The notebook's network: conv 3→6 5×5 → ReLU → maxpool 2 → conv 6→16 5×5 →
//! ReLU → maxpool 2 → fc 400→120 → ReLU → 84 → ReLU → 10.
//!
//! The two convolutions are plain Conv2d in the dense model and DSConv2d in
//! every sparse mode; both are built from the same seeded stream in the same
//! order, so a dense and a sparse model of one seed start from the same
//! weights. Every layer has PyTorch's default initialisation.

use tensor::nn::{Init, Linear, MaxPool2d};
use tensor::{Conv2dOptions, Rng, Tensor};

use crate::dsconv::{DSConfig, DSConfigError, DSConv2d};
use crate::model::{ConvLayer, ConvSpec, Model, Sparsity};
use crate::rules::Allocation;

pub struct LeNet {
    pub conv1: ConvLayer,
    pub conv2: ConvLayer,
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
    pool: MaxPool2d,
}

fn conv5x5(cin: usize, cout: usize) -> ConvSpec {
    ConvSpec {
        in_channels: cin,
        out_channels: cout,
        kernel: (5, 5),
        opts: Conv2dOptions::default(),
        bias: true,
        init: Init::Default,
    }
}

impl LeNet {
    /// `sparse: None` builds the dense model; `Some(config)` makes both convs
    /// DSConv2d with that configuration.
    pub fn new(sparse: Option<DSConfig>, rng: &mut Rng) -> Result<LeNet, DSConfigError> {
        let sparsity = sparse.map(|config| Sparsity {
            config,
            allocation: Allocation::Uniform,
        });
        LeNet::with_sparsity(sparsity, rng)
    }

    /// As [`LeNet::new`], with the target density spread over the two convs
    /// as `sparsity` says (ERK gives each conv its own density).
    pub fn with_sparsity(
        sparsity: Option<Sparsity>,
        rng: &mut Rng,
    ) -> Result<LeNet, DSConfigError> {
        let specs = [conv5x5(3, 6), conv5x5(6, 16)];
        let configs: Vec<Option<DSConfig>> = match sparsity {
            Some(s) => {
                let shapes: Vec<[usize; 4]> = specs.iter().map(|c| c.weight_shape()).collect();
                s.layer_configs(&shapes)?.into_iter().map(Some).collect()
            }
            None => vec![None, None],
        };
        Ok(LeNet {
            conv1: ConvLayer::new(specs[0], configs[0], rng)?,
            conv2: ConvLayer::new(specs[1], configs[1], rng)?,
            fc1: Linear::new(16 * 5 * 5, 120, true, rng),
            fc2: Linear::new(120, 84, true, rng),
            fc3: Linear::new(84, 10, true, rng),
            pool: MaxPool2d::new(2),
        })
    }

    pub fn dense(rng: &mut Rng) -> LeNet {
        LeNet::new(None, rng).expect("the dense model has no sparse configuration to reject")
    }
}

impl Model for LeNet {
    fn name(&self) -> String {
        "lenet".into()
    }

    fn input_shape(&self) -> [usize; 3] {
        [3, 32, 32]
    }

    fn num_classes(&self) -> usize {
        10
    }

    /// x is (B, 3, 32, 32); returns logits (B, 10).
    fn forward(&mut self, x: &Tensor) -> Tensor {
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

    /// Training mode samples Hebbian strength; evaluation does not.
    fn set_training(&mut self, on: bool) {
        self.conv1.set_training(on);
        self.conv2.set_training(on);
    }

    /// conv1 w, b, conv2 w, b, fc1 w, b, fc2 w, b, fc3 w, b.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = self.conv1.named_parameters("conv1");
        v.extend(self.conv2.named_parameters("conv2"));
        for (name, fc) in [("fc1", &self.fc1), ("fc2", &self.fc2), ("fc3", &self.fc3)] {
            v.push((format!("{name}.weight"), fc.weight.clone()));
            v.extend(fc.bias.clone().map(|b| (format!("{name}.bias"), b)));
        }
        v
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn sparse_layers(&self) -> Vec<(String, &DSConv2d)> {
        [("conv1", &self.conv1), ("conv2", &self.conv2)]
            .into_iter()
            .filter_map(|(n, c)| c.sparse().map(|l| (n.to_string(), l)))
            .collect()
    }

    fn sparse_layers_mut(&mut self) -> Vec<(String, &mut DSConv2d)> {
        [("conv1", &mut self.conv1), ("conv2", &mut self.conv2)]
            .into_iter()
            .filter_map(|(n, c)| c.sparse_mut().map(|l| (n.to_string(), l)))
            .collect()
    }
}
