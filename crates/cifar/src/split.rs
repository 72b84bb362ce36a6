//! In-memory dataset splits.

use crate::format::IMAGE_BYTES;

/// One split (train or test) held in memory as raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// N×3×32×32 pixel bytes, NCHW.
    pub images: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u8>,
    /// Names of the classes, indexed by label.
    pub class_names: Vec<String>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 3072 bytes (3×32×32) of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The first `n` images (all of them when `n >= len`).
    pub fn take(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            images: self.images[..n * IMAGE_BYTES].to_vec(),
            labels: self.labels[..n].to_vec(),
            class_names: self.class_names.clone(),
        }
    }

    /// Number of images of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        // Sized to cover every label even if a hand-built split has labels
        // beyond its class names, so this never panics.
        let max_label = self.labels.iter().map(|&l| l as usize + 1).max();
        let mut counts = vec![0; self.num_classes().max(max_label.unwrap_or(0))];
        for &label in &self.labels {
            counts[label as usize] += 1;
        }
        counts
    }
}

/// A dataset: its training and test splits.
#[derive(Clone, Debug, PartialEq)]
pub struct Cifar {
    pub train: Split,
    pub test: Split,
}
