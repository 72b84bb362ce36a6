//! sparse-conv: Hebbian connection strength, and DSConv2d, the dynamic sparse
//! convolution that prunes and regrows its connections by that strength.
//!
//! How the files fit together:
//!
//! * [`strength`]: the strength measures (coactivation, correlation), with the
//!   notebook's four implementations kept for study and a fast one, the
//!   default, which is one conv weight-gradient GEMM.
//! * [`dsconv`]: the `DSConv2d` layer: samples strength during training,
//!   prunes and regrows per kernel in `progress_connections`, and holds its
//!   mask through every optimiser step.
//! * [`lenet`]: the notebook's LeNet, with dense or DSConv2d convolutions.
pub mod dsconv;
pub mod lenet;
pub mod strength;

pub use dsconv::{DSConfig, DSConv2d, ProgressStats, PruneDims, Regrow, Selection};
pub use lenet::LeNet;
