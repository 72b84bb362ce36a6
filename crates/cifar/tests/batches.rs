//! Mini-batch iteration: ordering, determinism, resume, normalisation and
//! augmentation.

mod common;

use cifar::{
    augment_params, crop_flip, epoch_order, Batch, BatchConfig, Batches, Normalize, Split,
    CROP_PADDING, IMAGE_BYTES,
};
use common::*;

fn split(n: usize) -> Split {
    let (images, labels) = random_records(n, 10, 99);
    Split {
        images,
        labels,
        class_names: CIFAR10_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

fn cfg(batch_size: usize) -> BatchConfig {
    BatchConfig {
        batch_size,
        shuffle: true,
        seed: 42,
        normalize: Normalize::CIFAR10,
        augment: true,
        drop_last: false,
    }
}

fn all_indices(batches: Vec<Batch>) -> Vec<usize> {
    batches.into_iter().flat_map(|b| b.indices).collect()
}

#[test]
fn shuffle_is_a_deterministic_permutation_that_changes_per_epoch() {
    let data = split(103);
    let epoch0 = all_indices(Batches::new(&data, &cfg(10), 0).collect());
    let mut sorted = epoch0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..103).collect::<Vec<_>>());
    assert_ne!(epoch0, sorted, "shuffle left the order unchanged");

    assert_eq!(
        epoch0,
        all_indices(Batches::new(&data, &cfg(10), 0).collect())
    );
    assert_eq!(epoch0, epoch_order(103, true, 42, 0));
    assert_ne!(
        epoch0,
        all_indices(Batches::new(&data, &cfg(10), 1).collect())
    );
    let other_seed = BatchConfig {
        seed: 43,
        ..cfg(10)
    };
    assert_ne!(
        epoch0,
        all_indices(Batches::new(&data, &other_seed, 0).collect())
    );

    let unshuffled = BatchConfig {
        shuffle: false,
        ..cfg(10)
    };
    assert_eq!(
        all_indices(Batches::new(&data, &unshuffled, 5).collect()),
        sorted
    );
}

#[test]
fn batches_are_identical_when_repeated() {
    let data = split(40);
    let a: Vec<Batch> = Batches::new(&data, &cfg(16), 3).collect();
    let b: Vec<Batch> = Batches::new(&data, &cfg(16), 3).collect();
    assert_eq!(a, b);
}

#[test]
fn skip_to_equals_dropping_batches() {
    let data = split(57);
    let config = cfg(8);
    let full: Vec<Batch> = Batches::new(&data, &config, 7).collect();
    assert_eq!(full.len(), 8);
    for k in 0..=full.len() + 1 {
        let mut resumed = Batches::new(&data, &config, 7);
        resumed.skip_to(k);
        assert_eq!(resumed.len(), full.len().saturating_sub(k));
        let rest: Vec<Batch> = resumed.collect();
        assert_eq!(rest, full[k.min(full.len())..], "skip_to({k})");
    }
}

#[test]
fn batch_contents_match_labels_and_shape() {
    let data = split(21);
    let config = BatchConfig {
        augment: false,
        ..cfg(4)
    };
    for batch in Batches::new(&data, &config, 2) {
        assert_eq!(batch.x.len(), batch.len() * IMAGE_BYTES);
        for (j, &index) in batch.indices.iter().enumerate() {
            assert_eq!(batch.labels[j], data.labels[index] as usize);
            let mut expected = vec![0.0; IMAGE_BYTES];
            Normalize::CIFAR10.apply(data.image(index), &mut expected);
            assert_eq!(
                batch.x[j * IMAGE_BYTES..(j + 1) * IMAGE_BYTES],
                expected[..]
            );
        }
    }
}

#[test]
fn normalisation_known_answers() {
    let mut image = vec![0u8; IMAGE_BYTES];
    image[0] = 255; // red
    image[1024] = 51; // green
    image[2048 + 5] = 128; // blue
    let mut out = vec![0.0f32; IMAGE_BYTES];
    Normalize::HALF.apply(&image, &mut out);
    assert_eq!(out[0], 1.0);
    assert_eq!(out[1], -1.0);
    assert!((out[1024] - (0.2 - 0.5) / 0.5).abs() < 1e-6);
    assert!((out[2048 + 5] - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);

    Normalize::CIFAR10.apply(&image, &mut out);
    assert!((out[0] - (1.0 - 0.4914) / 0.2470).abs() < 1e-5);
    assert!((out[1] - (0.0 - 0.4914) / 0.2470).abs() < 1e-5);
    assert!((out[1024] - (0.2 - 0.4822) / 0.2435).abs() < 1e-5);
    assert!((out[1025] - (0.0 - 0.4822) / 0.2435).abs() < 1e-5);
    assert!((out[2048 + 5] - (128.0 / 255.0 - 0.4465) / 0.2616).abs() < 1e-5);
}

/// Distinct-ish values: channel, row and column all recoverable.
fn coded_image() -> Vec<u8> {
    let mut img = vec![0u8; IMAGE_BYTES];
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                // Never 0, so padding (0) is distinguishable from data.
                img[c * 1024 + y * 32 + x] = (1 + c * 80 + ((y * 32 + x) * 7) % 79) as u8;
            }
        }
    }
    img
}

#[test]
fn crop_flip_identity_shift_and_flip() {
    let img = coded_image();
    let mut out = vec![0u8; IMAGE_BYTES];

    crop_flip(&img, 0, 0, false, &mut out);
    assert_eq!(out, img);

    crop_flip(&img, 0, 0, true, &mut out);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(out[c * 1024 + y * 32 + x], img[c * 1024 + y * 32 + 31 - x]);
            }
        }
    }

    // Shift down-right by (2, 3): the crop's top-left is padding.
    crop_flip(&img, -2, -3, false, &mut out);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let got = out[c * 1024 + y * 32 + x];
                if y < 2 || x < 3 {
                    assert_eq!(got, 0, "padding at c{c} y{y} x{x}");
                } else {
                    assert_eq!(got, img[c * 1024 + (y - 2) * 32 + (x - 3)]);
                }
            }
        }
    }

    // Shift up-left by 4 with a flip.
    crop_flip(&img, 4, 4, true, &mut out);
    for y in 0..32 {
        for x in 0..32 {
            let (sy, sx) = (y + 4, 31 - x + 4);
            let expected = if sy < 32 && sx < 32 {
                img[sy * 32 + sx]
            } else {
                0
            };
            assert_eq!(out[y * 32 + x], expected, "y{y} x{x}");
        }
    }
}

#[test]
fn augmentation_params_cover_range_and_are_pure() {
    let mut shifts = std::collections::HashSet::new();
    let mut flips = [0usize; 2];
    for position in 0..2000 {
        let (dy, dx, flip) = augment_params(1, 2, position);
        assert!((-CROP_PADDING..=CROP_PADDING).contains(&dy));
        assert!((-CROP_PADDING..=CROP_PADDING).contains(&dx));
        shifts.insert((dy, dx));
        flips[flip as usize] += 1;
        assert_eq!((dy, dx, flip), augment_params(1, 2, position));
    }
    assert_eq!(shifts.len(), 81);
    assert!(flips[0] > 800 && flips[1] > 800, "{flips:?}");
    assert_ne!(
        (0..50).map(|p| augment_params(1, 2, p)).collect::<Vec<_>>(),
        (0..50).map(|p| augment_params(1, 3, p)).collect::<Vec<_>>()
    );
}

#[test]
fn augmented_batches_use_padding_value() {
    let data = split(30);
    let config = cfg(30);
    let batch = Batches::new(&data, &config, 0).next().unwrap();
    assert_eq!(batch.x.len(), 30 * IMAGE_BYTES);
    let padded_red = (0.0 - Normalize::CIFAR10.mean[0]) / Normalize::CIFAR10.std[0];
    for (position, &index) in batch.indices.iter().enumerate() {
        let (dy, dx, flip) = augment_params(config.seed, 0, position as u64);
        let mut cropped = vec![0u8; IMAGE_BYTES];
        crop_flip(data.image(index), dy, dx, flip, &mut cropped);
        let mut expected = vec![0.0; IMAGE_BYTES];
        Normalize::CIFAR10.apply(&cropped, &mut expected);
        let got = &batch.x[position * IMAGE_BYTES..(position + 1) * IMAGE_BYTES];
        assert_eq!(got, &expected[..]);
        if dy < 0 {
            // Top row comes from the zero padding.
            assert!(got[..32].iter().all(|&v| v == padded_red));
        }
    }
}

#[test]
fn drop_last_counts() {
    let data = split(50);
    let keep = BatchConfig {
        drop_last: false,
        ..cfg(16)
    };
    let drop = BatchConfig {
        drop_last: true,
        ..cfg(16)
    };
    let kept: Vec<Batch> = Batches::new(&data, &keep, 0).collect();
    assert_eq!(Batches::new(&data, &keep, 0).num_batches(), 4);
    assert_eq!(
        kept.iter().map(Batch::len).collect::<Vec<_>>(),
        [16, 16, 16, 2]
    );
    let dropped: Vec<Batch> = Batches::new(&data, &drop, 0).collect();
    assert_eq!(Batches::new(&data, &drop, 0).num_batches(), 3);
    assert_eq!(dropped.len(), 3);
    assert!(dropped.iter().all(|b| b.len() == 16));
    // Evenly divisible: no difference.
    let exact = split(48);
    assert_eq!(Batches::new(&exact, &keep, 0).count(), 3);
    assert_eq!(Batches::new(&exact, &drop, 0).count(), 3);
    // Empty split: no batches.
    let empty = split(0);
    assert_eq!(Batches::new(&empty, &keep, 0).count(), 0);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn epoch_order_is_a_permutation(len in 0usize..300, seed: u64, epoch: u64) {
            let mut order = epoch_order(len, true, seed, epoch);
            prop_assert_eq!(&order, &epoch_order(len, true, seed, epoch));
            order.sort_unstable();
            prop_assert_eq!(order, (0..len).collect::<Vec<_>>());
        }

        #[test]
        fn resume_matches_uninterrupted(
            len in 1usize..40,
            batch_size in 1usize..12,
            drop_last: bool,
            seed: u64,
            epoch in 0u64..100,
            k in 0usize..12,
        ) {
            let data = split(len);
            let config = BatchConfig { batch_size, drop_last, seed, ..cfg(batch_size) };
            let full: Vec<Batch> = Batches::new(&data, &config, epoch).collect();
            let mut resumed = Batches::new(&data, &config, epoch);
            resumed.skip_to(k);
            let rest: Vec<Batch> = resumed.collect();
            prop_assert_eq!(rest, full.into_iter().skip(k).collect::<Vec<_>>());
        }
    }
}
