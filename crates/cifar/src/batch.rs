//! Mini-batches for training: deterministic shuffling, augmentation and
//! normalisation to f32.
//!
//! Everything random here is a pure function of `(seed, epoch, position in
//! the epoch)`, never of how many batches were drawn before. That is what lets
//! a run resumed from a mid-epoch checkpoint (`Batches::skip_to`) see exactly
//! the batches an uninterrupted run would have seen.

use crate::format::{CHANNELS, HEIGHT, IMAGE_BYTES, WIDTH};
use crate::split::Split;
use rayon::prelude::*;

/// Per-channel normalisation: `(x / 255 - mean[c]) / std[c]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// Maps [0, 255] onto [-1, 1]; the reference notebook's default.
    pub const HALF: Normalize = Normalize {
        mean: [0.5, 0.5, 0.5],
        std: [0.5, 0.5, 0.5],
    };
    /// The usual CIFAR-10 training-set channel statistics.
    pub const CIFAR10: Normalize = Normalize {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2470, 0.2435, 0.2616],
    };

    /// One lookup table per channel: 256 possible inputs, so each pixel costs
    /// a load instead of a subtract and a divide.
    fn table(&self) -> [[f32; 256]; CHANNELS] {
        let mut table = [[0.0; 256]; CHANNELS];
        for (c, channel) in table.iter_mut().enumerate() {
            for (v, out) in channel.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        table
    }

    /// Normalises one 3×32×32 image into `out` (3072 floats).
    pub fn apply(&self, image: &[u8], out: &mut [f32]) {
        normalize_with(&self.table(), image, out);
    }
}

fn normalize_with(table: &[[f32; 256]; CHANNELS], image: &[u8], out: &mut [f32]) {
    let plane = HEIGHT * WIDTH;
    for c in 0..CHANNELS {
        let src = &image[c * plane..(c + 1) * plane];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = table[c][s as usize];
        }
    }
}

#[derive(Clone, Debug)]
pub struct BatchConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub normalize: Normalize,
    /// Random crop with 4 px zero padding, and random horizontal flip.
    pub augment: bool,
    /// Leave out the last batch when it would be smaller than `batch_size`.
    pub drop_last: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            batch_size: 128,
            shuffle: true,
            seed: 0,
            normalize: Normalize::HALF,
            augment: false,
            drop_last: false,
        }
    }
}

/// One mini-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// B×3×32×32, normalised.
    pub x: Vec<f32>,
    pub labels: Vec<usize>,
    /// Index in the split of each image, for tracing a batch back to data.
    pub indices: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The padding of the random crop, in pixels.
pub const CROP_PADDING: i32 = 4;

/// Iterator over one epoch's batches of a split.
pub struct Batches<'a> {
    split: &'a Split,
    cfg: BatchConfig,
    epoch: u64,
    order: Vec<usize>,
    next: usize,
    num_batches: usize,
    table: [[f32; 256]; CHANNELS],
}

impl<'a> Batches<'a> {
    /// # Panics
    /// If `cfg.batch_size` is 0.
    pub fn new(split: &'a Split, cfg: &BatchConfig, epoch: u64) -> Batches<'a> {
        assert!(
            cfg.batch_size > 0,
            "BatchConfig::batch_size must be positive"
        );
        let n = split.len();
        let num_batches = if cfg.drop_last {
            n / cfg.batch_size
        } else {
            n.div_ceil(cfg.batch_size)
        };
        Batches {
            split,
            cfg: cfg.clone(),
            epoch,
            order: epoch_order(n, cfg.shuffle, cfg.seed, epoch),
            next: 0,
            num_batches,
            table: cfg.normalize.table(),
        }
    }

    /// Batches in the whole epoch, including any already taken.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Makes the next batch returned the one at `batch_index` (0-based within
    /// the epoch). Past the end, the iterator is simply exhausted.
    pub fn skip_to(&mut self, batch_index: usize) {
        self.next = batch_index.min(self.num_batches);
    }

    fn make_batch(&self, batch_index: usize) -> Batch {
        let start = batch_index * self.cfg.batch_size;
        let end = (start + self.cfg.batch_size).min(self.order.len());
        let size = end - start;
        let indices = self.order[start..end].to_vec();
        let labels = indices
            .iter()
            .map(|&i| self.split.labels[i] as usize)
            .collect();
        // Overwritten whole below; the last batch's buffer if it came back.
        let mut x = tensor::buffers::take(size * IMAGE_BYTES);
        // Images are independent (each a pure function of its position), so
        // they are converted in parallel, in chunks: the same bytes for any
        // number of threads.
        const IMAGES_PER_TASK: usize = 16;
        x.par_chunks_mut(IMAGES_PER_TASK * IMAGE_BYTES)
            .enumerate()
            .for_each(|(task, xs)| {
                let mut cropped = [0u8; IMAGE_BYTES];
                for (i, out) in xs.chunks_exact_mut(IMAGE_BYTES).enumerate() {
                    let position = start + task * IMAGES_PER_TASK + i;
                    let image = self.split.image(self.order[position]);
                    if self.cfg.augment {
                        let (dy, dx, flip) =
                            augment_params(self.cfg.seed, self.epoch, position as u64);
                        crop_flip(image, dy, dx, flip, &mut cropped);
                        normalize_with(&self.table, &cropped, out);
                    } else {
                        normalize_with(&self.table, image, out);
                    }
                }
            });
        Batch { x, labels, indices }
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.num_batches {
            return None;
        }
        let batch = self.make_batch(self.next);
        self.next += 1;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.num_batches - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// The order in which an epoch visits the images: `0..len`, or a
/// Fisher–Yates shuffle that depends only on `(seed, epoch)`.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = SplitMix64(hash3(seed, epoch, u64::MAX));
        for i in (1..len).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// The crop shifts and flip for the image at `position` in an epoch.
/// Shifts are in `-CROP_PADDING..=CROP_PADDING`.
pub fn augment_params(seed: u64, epoch: u64, position: u64) -> (i32, i32, bool) {
    let r = hash3(seed, epoch, position);
    let span = (2 * CROP_PADDING + 1) as u64;
    let dy = ((r & 0xffff_ffff) % span) as i32 - CROP_PADDING;
    let dx = (((r >> 32) & 0x7fff_ffff) % span) as i32 - CROP_PADDING;
    let flip = r >> 63 == 1;
    (dy, dx, flip)
}

/// Random-crop-with-padding and flip of one 3×32×32 image, as a shift:
/// `out[c][y][x] = src[c][y + dy][x' + dx]` with `x' = 31 - x` when flipped
/// and `x` otherwise, and 0 where that falls outside the image (the zero
/// padding). A 32×32 crop at offset (4+dy, 4+dx) of the image padded by 4 is
/// the same thing; `dy = dx = 0` without flip returns the image unchanged.
pub fn crop_flip(src: &[u8], dy: i32, dx: i32, flip: bool, out: &mut [u8]) {
    let (h, w) = (HEIGHT as i32, WIDTH as i32);
    for c in 0..CHANNELS {
        let plane = c * HEIGHT * WIDTH;
        for y in 0..h {
            let sy = y + dy;
            let row = plane + (y * w) as usize;
            for x in 0..w {
                let fx = if flip { w - 1 - x } else { x };
                let sx = fx + dx;
                out[row + x as usize] = if (0..h).contains(&sy) && (0..w).contains(&sx) {
                    src[plane + (sy * w + sx) as usize]
                } else {
                    0
                };
            }
        }
    }
}

/// A hash of three keys: each key, offset by splitmix64's increment, folded
/// in through splitmix64's output mix.
fn hash3(a: u64, b: u64, c: u64) -> u64 {
    use tensor::rng::{splitmix64_mix as mix, SPLITMIX64_GAMMA as GOLDEN};
    mix(mix(mix(a.wrapping_add(GOLDEN)) ^ b.wrapping_add(GOLDEN)) ^ c.wrapping_add(GOLDEN))
}

/// A splitmix64 stream (the workspace's one implementation, in
/// `tensor::rng`): tiny, fast, and fully specified, so orders never change
/// with a dependency upgrade.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        tensor::rng::splitmix64(&mut self.0)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2^-32 for any
    /// dataset size).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// Epoch orders and augmentations are part of a run's identity (a resumed
    /// run must see the images it would have seen): these values must never
    /// change, whatever the implementation of the generator underneath.
    #[test]
    fn orders_and_augmentations_are_pinned() {
        assert_eq!(
            epoch_order(20, true, 42, 3),
            [14, 1, 7, 13, 8, 10, 16, 12, 9, 17, 4, 6, 0, 3, 2, 18, 5, 15, 19, 11]
        );
        assert_eq!(
            (0..6).map(|p| augment_params(7, 1, p)).collect::<Vec<_>>(),
            [
                (-3, 2, false),
                (0, 3, true),
                (-2, -2, true),
                (2, 4, true),
                (-3, 4, false),
                (-3, -3, false)
            ]
        );
        assert_eq!(
            [hash3(0, 0, 0), hash3(1, 2, 3), hash3(u64::MAX, 5, u64::MAX)],
            [
                18_152_189_527_315_630_385,
                12_799_061_345_140_080_112,
                4_584_746_877_243_715_815
            ]
        );
    }
}
