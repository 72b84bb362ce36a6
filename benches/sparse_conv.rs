//! Placeholder, replaced by the sparse-kernel benchmarks.
fn main() {}
