//! Loader for the CIFAR-10 and CIFAR-100 *binary versions*
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>), plus the mini-batch
//! iterator the training code uses.
//!
//! How the files fit together:
//! - `load.rs` turns the path the user gives (the `.tar.gz`, the data
//!   directory, or a directory containing either) into a [`Cifar`], with
//!   warnings for the optional training batches it did not find
//!   ([`load_cifar10_with_warnings`]);
//! - `format.rs` knows the record layout (label byte(s) + 3×32×32 pixels),
//!   parses batch and class-name files, and writes CIFAR-10 batches;
//! - `tar.rs` streams members out of a gzipped tar without touching disk;
//! - `split.rs` holds the in-memory [`Split`]s;
//! - `batch.rs` shuffles, augments and normalises into f32 [`Batch`]es,
//!   deterministically in `(seed, epoch, position)` so training can resume
//!   mid-epoch;
//! - `error.rs` is the single [`CifarError`] every bad input maps to: the
//!   loader never panics on file contents.
//!
//! ```no_run
//! use cifar::{load_cifar10, BatchConfig, Batches};
//! let data = load_cifar10(std::path::Path::new("data")).unwrap();
//! let cfg = BatchConfig { batch_size: 64, augment: true, ..BatchConfig::default() };
//! for batch in Batches::new(&data.train, &cfg, 0) {
//!     assert_eq!(batch.x.len(), batch.labels.len() * 3 * 32 * 32);
//! }
//! ```

mod batch;
mod error;
mod format;
mod load;
mod split;
mod tar;

pub use batch::{
    augment_params, crop_flip, epoch_order, Batch, BatchConfig, Batches, Normalize, CROP_PADDING,
};
pub use error::CifarError;
pub use format::{
    write_cifar10_batch, CHANNELS, CIFAR100_RECORD_BYTES, CIFAR10_RECORD_BYTES, HEIGHT,
    IMAGE_BYTES, WIDTH,
};
pub use load::{load_cifar10, load_cifar100, load_cifar10_with_warnings, Cifar100Labels, Loaded};
pub use split::{Cifar, Split};
