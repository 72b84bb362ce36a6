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
//! * [`train`]: the resumable training loop, its settings (the notebook's
//!   recipe and the rule presets) and its events; [`checkpoint`] is its file
//!   format.
//! * [`export`]: the sparse layers' weights, masks and strength as `.npy`
//!   files with a JSON index, for study in numpy or in the report.
pub mod checkpoint;
pub mod export;
pub mod train;

pub use cifar;
pub use sparse_conv;
pub use tensor;
