//! hebbsparse: Hebbian dynamic sparse convolutional networks, on CPU, in pure Rust.
//!
//! This root crate re-exports the workspace's three crates so that the
//! top-level `examples/`, `tests/` and `benches/` can reach all of them, and
//! holds the training loop the CIFAR example runs:
//!
//! * [`tensor`]: the tensor and autograd engine (im2col conv, pooling, linear,
//!   SGD with momentum, cross-entropy).
//! * [`sparse_conv`]: Hebbian connection strength and the `DSConv2d` layer.
//! * [`cifar`]: the CIFAR-10/100 binary loader.
//! * [`config`]: a run's settings: the network, the mode (dense or a preset
//!   prune/grow rule), the recipe's numbers, every part of the rule, and
//!   the list a checkpoint must match.
//! * [`recipe`]: the named recipes (`notebook`, `sample`, `resnet`) and each
//!   network's defaults for its sparse layers.
//! * [`train`]: the resumable training loop over any network of the model
//!   API, its events, evaluation and summary.
//! * [`checkpoint`]: the checkpoint file format (named tensors, written
//!   atomically); [`state`] maps a model and its optimiser to those names.
//! * [`export`]: the sparse layers' weights, masks and strength as `.npy`
//!   files with a JSON index, for study in numpy or in the report.
pub mod checkpoint;
pub mod config;
pub mod export;
pub mod recipe;
pub mod state;
pub mod train;

pub use cifar;
pub use sparse_conv;
pub use tensor;
