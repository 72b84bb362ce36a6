//! tensor: f32 tensors with define-by-run reverse-mode autograd, and the
//! layers, loss and optimiser needed to train a small CNN on CPU.
//!
//! How the files fit together:
//!
//! * [`tensor`]: the `Tensor` handle (contiguous row-major f32, NCHW images)
//!   and its leaf gradient.
//! * [`tape`]: the autograd tape. Every op pushes its backward closure; a
//!   backward pass is a reverse walk of the tape. [`no_grad`] records nothing.
//! * [`ops`]: the ops, one family per file (or directory), forward and
//!   backward side by side: `elementwise` (add, mul, relu, sigmoid),
//!   `matmul` (matmul, linear), `linear_small` (linear's products at
//!   batches of a few rows, without the GEMM's packing), `geometry` (the
//!   shapes of a convolution and a pool window), `conv_naive` (the
//!   convolution by its definition: the oracle), `scratch` (the kernels'
//!   thread-local scratch), `conv2d/` (a direct forward kernel for stride 1
//!   without dilation, unpadded or, for 8 to 16 input channels, on a
//!   padded copy; im2col and our own register-tile micro-kernel for the
//!   other forwards and for backward (but for narrow layers, whose
//!   gradients come from the sparse kernels with every tap active), and
//!   the fused conv → ReLU → max-pool), `pool` (max_pool2d, global average
//!   pool), `relu_pool` (relu and 2×2 max-pool straight from a conv
//!   kernel's wide rows, the tail of both fused blocks), `sparse_conv2d/`
//!   (direct convolution over the active taps of a masked weight, for
//!   sparse layers, and its fused block), `batch_norm` (BatchNorm2d's op,
//!   on the per-plane loops of `batch_norm_loops`, compiled for each
//!   instruction set), `residual` (the residual add + ReLU and the padding
//!   shortcut), `epilogue` (evaluation's batch norm,
//!   shortcut add and ReLU, applied by a convolution to its own output), `reduce` (sum, mean, and the fixed-order
//!   slice sums the others share), `shape` (reshape, flatten), `loss`
//!   (log_softmax, cross_entropy), and `test_values` (the unit tests'
//!   inputs). Each of `conv2d/` and `sparse_conv2d/`
//!   opens its `mod.rs` with a map of its files. The dependencies run one way: `conv2d/` uses
//!   `sparse_conv2d/`, both use `geometry`, `scratch`, `reduce`,
//!   `conv_naive` and `epilogue`.
//! * [`isa`]: the one place that decides which instruction set (portable,
//!   AVX2 + FMA, AVX-512) the SIMD loops use: the CPU's, capped by
//!   `HEBB_ISA`.
//! * [`awake`]: [`awake::with_pool_awake`], which keeps the pool's threads
//!   awake through a training step's many small parallel ops.
//! * [`buffers`]: recycled f32 and u32 buffers, so that a training step
//!   reuses the last step's memory instead of allocating (and zeroing) its
//!   own.
//! * [`gemm`]: the single matrix multiply everything calls, with transposes
//!   as strides.
//! * [`nn`]: Conv2d, Linear, MaxPool2d and BatchNorm2d layers, with
//!   PyTorch's default init (or Kaiming-normal, as the ResNets take).
//! * [`optim`]: SGD with momentum.
//! * [`rng`]: the seeded generator, whose state fits in a checkpoint.
//! * [`npy`]: `.npy` read/write, to take tensors into numpy.
//! * [`gradcheck`]: finite-difference checking of backward passes.
//!
//! Errors: an op given shapes that do not fit is a bug in the model, and
//! panics with a message naming the op and the shapes (as PyTorch raises);
//! anything read from outside (files) returns a `Result`.
//!
//! Determinism: every reduction runs in a fixed order that does not depend on
//! the number of rayon threads, so a seed gives bitwise-identical results.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod awake;
pub mod buffers;
pub mod gemm;
pub mod gradcheck;
pub mod isa;
pub mod nn;
pub mod npy;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod tape;
pub mod tensor;

pub use ops::conv2d::{Conv2dOptions, Conv2dShape};
pub use ops::sparse_conv2d::SparseLayout;
pub use rng::Rng;
pub use tape::{no_grad, Grads};
pub use tensor::Tensor;
