//! Operations. Each file holds one family of ops, with each op's forward and
//! backward written side by side.
pub mod batch_norm;
mod batch_norm_loops;
pub mod conv2d;
pub mod conv_naive;
pub mod elementwise;
pub mod epilogue;
pub mod geometry;
pub mod linear_small;
pub mod loss;
pub mod matmul;
pub mod pool;
pub mod reduce;
pub mod relu_pool;
pub mod residual;
pub mod scratch;
pub mod shape;
pub mod sparse_conv2d;
#[cfg(test)]
mod test_values;
