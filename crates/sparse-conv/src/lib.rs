//! sparse-conv: Hebbian connection strength, and DSConv2d, the dynamic sparse
//! convolution that prunes and regrows its connections by that strength.
//!
//! How the files fit together:
//!
//! * [`strength`]: the strength measures (coactivation, correlation), with the
//!   notebook's four implementations kept for study, a general fast one
//!   (one conv weight-gradient GEMM) and the default, a bit-counting one
//!   that gives the same coactivation counts faster.
//! * [`dsconfig`]: a DSConv2d's settings ([`DSConfig`]: counts, groups,
//!   strength, rule, kernels) and their error.
//! * [`dsconv`]: the `DSConv2d` layer: its forward pass, its mask, and the
//!   state the rules read (strength sampled during training, a seeded
//!   stream); it holds the mask through every optimiser step.
//! * [`rules`]: the prune/grow rules a mask update applies per group: the
//!   notebook's, Hebbian growth, SET, RigL, random and static masks; the
//!   drop-fraction schedule, the update window, ERK density allocation.
//! * [`model`]: the model API every network implements ([`Model`]: forward
//!   in training and evaluation, named parameters and buffers, named sparse
//!   layers), the dense-or-sparse [`model::ConvLayer`], how the density is
//!   spread over the sparse layers ([`model::Sparsity`]), and networks by
//!   name ([`model::Arch`], [`model::ModelSpec`]).
//! * [`lenet`]: the notebook's LeNet, with dense or DSConv2d convolutions.
//! * [`resnet`]: the CIFAR ResNets (ResNet-20/32/56, …), with BatchNorm,
//!   residual blocks, and dense or DSConv2d 3×3 convolutions.
pub mod dsconfig;
pub mod dsconv;
pub mod lenet;
pub mod model;
pub mod resnet;
pub mod rules;
pub mod strength;

pub use dsconv::{ConvPath, DSConfig, DSConv2d, PruneDims};
pub use lenet::LeNet;
pub use model::{Arch, Model, ModelSpec, Sparsity};
pub use resnet::{ResNet, ResNetConfig, Shortcut};
pub use rules::{ProgressStats, Rule};
