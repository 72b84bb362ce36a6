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
//! * [`train`]: the notebook's recipe as a resumable training loop;
//!   [`checkpoint`] is its file format.
pub mod checkpoint;
pub mod train;

pub use cifar;
pub use sparse_conv;
pub use tensor;
