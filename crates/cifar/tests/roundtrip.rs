//! Writing records and reading them back through every accepted path form.

mod common;

use std::fs;

use cifar::{load_cifar10, load_cifar100, Cifar, Cifar100Labels, IMAGE_BYTES};
use common::*;

fn check_cifar10(data: &Cifar, fx: &Cifar10Fixture) {
    assert_eq!(data.train.images, fx.train_images);
    assert_eq!(data.train.labels, fx.train_labels);
    assert_eq!(data.test.images, fx.test_images);
    assert_eq!(data.test.labels, fx.test_labels);
    assert_eq!(data.train.class_names, CIFAR10_NAMES);
    assert_eq!(data.test.num_classes(), 10);
}

#[test]
fn cifar10_directory_round_trip() {
    let tmp = TempDir::new("dir");
    let fx = cifar10_fixture(5, 7, 5);
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_files(&dir, &fx.files);
    check_cifar10(&load_cifar10(&dir).unwrap(), &fx);
    // The directory containing cifar-10-batches-bin works too.
    check_cifar10(&load_cifar10(tmp.path()).unwrap(), &fx);
}

#[test]
fn written_batch_reads_back() {
    let tmp = TempDir::new("writer");
    let dir = tmp.path().join("cifar-10-batches-bin");
    fs::create_dir_all(&dir).unwrap();
    let (images, labels) = random_records(9, 10, 3);
    write_batch(&dir.join("data_batch_1.bin"), &images, &labels);
    write_batch(
        &dir.join("test_batch.bin"),
        &images[..IMAGE_BYTES],
        &labels[..1],
    );
    fs::write(dir.join("batches.meta.txt"), meta_text(&CIFAR10_NAMES)).unwrap();
    let data = load_cifar10(&dir).unwrap();
    assert_eq!(data.train.images, images);
    assert_eq!(data.train.labels, labels);
    assert_eq!(data.test.len(), 1);
    assert_eq!(
        data.train.image(4),
        &images[4 * IMAGE_BYTES..5 * IMAGE_BYTES]
    );
    // Mismatched lengths are refused rather than written.
    assert!(cifar::write_cifar10_batch(&dir.join("x.bin"), &images, &labels[..3]).is_err());
}

#[test]
fn cifar10_optional_batches_in_order() {
    let tmp = TempDir::new("optional");
    let fx = cifar10_fixture(3, 4, 2);
    write_files(tmp.path(), &fx.files);
    let data = load_cifar10(tmp.path()).unwrap();
    assert_eq!(data.train.len(), 12);
    check_cifar10(&data, &fx);
}

#[test]
fn cifar10_archive_round_trip() {
    let tmp = TempDir::new("archive");
    let fx = cifar10_fixture(5, 6, 4);
    // Members in a shuffled order, with directory and unrelated entries and
    // a GNU long-name entry in between, as real archives may have.
    let mut entries = vec![
        Entry::dir("cifar-10-batches-bin/"),
        Entry::file(&format!("{}/readme.html", "x".repeat(120)), b"not data"),
    ];
    for i in [3, 0, 6, 2, 5, 1, 4] {
        let (name, data) = &fx.files[i];
        entries.push(Entry::file(&format!("cifar-10-batches-bin/{name}"), data));
    }
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    fs::write(&archive, gzip(&tar_bytes(&entries))).unwrap();
    check_cifar10(&load_cifar10(&archive).unwrap(), &fx);
    // A directory holding only the archive is accepted as well.
    check_cifar10(&load_cifar10(tmp.path()).unwrap(), &fx);
}

#[test]
fn archive_long_member_name_is_used() {
    let tmp = TempDir::new("longname");
    let fx = cifar10_fixture(1, 3, 2);
    // Each member's name only in a GNU 'L' entry (the header holds a decoy),
    // some with a leading "./" as `tar -C . -cz` writes them.
    let mut entries = Vec::new();
    for (i, (name, data)) in fx.files.iter().enumerate() {
        let prefix = if i % 2 == 0 { "./" } else { "" };
        entries.push(Entry::long_named(
            &format!("{prefix}cifar-10-batches-bin/{name}"),
            data,
        ));
    }
    let archive = tmp.path().join("data.tar.gz");
    fs::write(&archive, gzip(&tar_bytes(&entries))).unwrap();
    check_cifar10(&load_cifar10(&archive).unwrap(), &fx);
}

fn cifar100_files(n_train: usize, n_test: usize) -> (Files, [Vec<u8>; 6]) {
    let (train_images, train_fine) = random_records(n_train, 100, 11);
    let train_coarse: Vec<u8> = train_fine.iter().map(|f| f / 5).collect();
    let (test_images, test_fine) = random_records(n_test, 100, 12);
    let test_coarse: Vec<u8> = test_fine.iter().map(|f| f / 5).collect();
    let coarse_names: Vec<String> = (0..20).map(|i| format!("super{i}")).collect();
    let fine_names: Vec<String> = (0..100).map(|i| format!("class{i}")).collect();
    let refs = |v: &[String]| -> Vec<u8> { format!("{}\n", v.join("\n")).into_bytes() };
    let files = vec![
        (
            "train.bin".to_string(),
            cifar100_bytes(&train_images, &train_coarse, &train_fine),
        ),
        (
            "test.bin".to_string(),
            cifar100_bytes(&test_images, &test_coarse, &test_fine),
        ),
        ("coarse_label_names.txt".to_string(), refs(&coarse_names)),
        ("fine_label_names.txt".to_string(), refs(&fine_names)),
    ];
    (
        files,
        [
            train_images,
            train_coarse,
            train_fine,
            test_images,
            test_coarse,
            test_fine,
        ],
    )
}

#[test]
fn cifar100_directory_and_archive_round_trip() {
    let tmp = TempDir::new("c100");
    let (files, [train_images, train_coarse, train_fine, test_images, test_coarse, test_fine]) =
        cifar100_files(13, 6);
    let dir = tmp.path().join("cifar-100-binary");
    write_files(&dir, &files);
    let archive = tmp.path().join("c100.tar.gz");
    fs::write(&archive, tar_gz_of("cifar-100-binary", &files)).unwrap();

    for path in [dir.as_path(), tmp.path(), archive.as_path()] {
        let fine = load_cifar100(path, Cifar100Labels::Fine).unwrap();
        assert_eq!(fine.train.images, train_images);
        assert_eq!(fine.train.labels, train_fine);
        assert_eq!(fine.test.images, test_images);
        assert_eq!(fine.test.labels, test_fine);
        assert_eq!(fine.train.num_classes(), 100);
        assert_eq!(fine.train.class_names[42], "class42");

        let coarse = load_cifar100(path, Cifar100Labels::Coarse).unwrap();
        assert_eq!(coarse.train.labels, train_coarse);
        assert_eq!(coarse.test.labels, test_coarse);
        assert_eq!(coarse.test.num_classes(), 20);
    }
}

#[test]
fn split_helpers() {
    let (images, labels) = random_records(20, 10, 5);
    let split = cifar::Split {
        images: images.clone(),
        labels: labels.clone(),
        class_names: CIFAR10_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(split.len(), 20);
    assert!(!split.is_empty());
    let counts = split.class_counts();
    assert_eq!(counts.len(), 10);
    assert_eq!(counts.iter().sum::<usize>(), 20);
    for (class, &count) in counts.iter().enumerate() {
        assert_eq!(
            count,
            labels.iter().filter(|&&l| l as usize == class).count()
        );
    }
    let first = split.take(3);
    assert_eq!(first.len(), 3);
    assert_eq!(first.images, images[..3 * IMAGE_BYTES]);
    assert_eq!(first.class_names, split.class_names);
    assert_eq!(split.take(100).len(), 20);
    assert!(split.take(0).is_empty());
}
