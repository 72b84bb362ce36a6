//! Copies of the dataset that are not whole: an empty batch file, a path
//! that is neither a directory nor an archive, training batches missing.
//! Each must be refused with a message naming the file, or (for optional
//! batches) loaded with a warning that says what is missing.

mod common;

use std::fs;
use std::path::Path;

use cifar::{load_cifar10, load_cifar10_with_warnings, CifarError};
use common::*;

#[test]
fn an_empty_test_batch_is_refused_naming_the_file() {
    let tmp = TempDir::new("empty-test");
    let dir = tmp.path().join("cifar-10-batches-bin");
    let mut files = cifar10_fixture(2, 3, 2).files;
    for (name, bytes) in &mut files {
        if name == "test_batch.bin" {
            bytes.clear();
        }
    }
    write_files(&dir, &files);
    let err = load_cifar10(&dir).unwrap_err();
    match &err {
        CifarError::EmptyFile { file } => assert!(file.ends_with("test_batch.bin"), "{file}"),
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("test_batch.bin") && msg.contains("empty"),
        "{msg}"
    );

    // The same inside an archive: the message names the member.
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    fs::write(&archive, tar_gz_of("cifar-10-batches-bin", &files)).unwrap();
    let msg = load_cifar10(&archive).unwrap_err().to_string();
    assert!(
        msg.contains("cifar-10-binary.tar.gz:cifar-10-batches-bin/test_batch.bin"),
        "{msg}"
    );
}

#[test]
fn an_empty_training_batch_is_refused_too() {
    let tmp = TempDir::new("empty-train");
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_files(&dir, &cifar10_fixture(3, 3, 2).files);
    fs::write(dir.join("data_batch_2.bin"), b"").unwrap();
    let err = load_cifar10(&dir).unwrap_err();
    assert!(
        matches!(&err, CifarError::EmptyFile { file } if file.ends_with("data_batch_2.bin")),
        "{err:?}"
    );
}

/// `--data /dev/zero` exists, but is a device: the message says so instead
/// of calling it missing.
#[cfg(unix)]
#[test]
fn a_device_is_neither_a_directory_nor_an_archive() {
    let path = Path::new("/dev/zero");
    if !path.exists() {
        std::io::Write::write_all(&mut std::io::stderr(), b"skipped: no /dev/zero here\n").unwrap();
        return;
    }
    let err = load_cifar10(path).unwrap_err();
    assert!(
        matches!(err, CifarError::NotFileOrDirectory { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("/dev/zero"), "{msg}");
    assert!(msg.contains("character device"), "{msg}");
    assert!(msg.contains("not a directory or a .tar.gz file"), "{msg}");
    assert!(!msg.contains("missing"), "{msg}");
    // A path that is really not there is still "missing".
    let err = load_cifar10(Path::new("/nonexistent/cifar")).unwrap_err();
    assert!(err.to_string().starts_with("missing file"), "{err}");
}

#[test]
fn a_missing_training_batch_is_a_warning_naming_it() {
    let tmp = TempDir::new("gap");
    let dir = tmp.path().join("cifar-10-batches-bin");
    let fx = cifar10_fixture(5, 4, 2);
    write_files(&dir, &fx.files);

    // All five: nothing to say.
    let loaded = load_cifar10_with_warnings(&dir).unwrap();
    assert_eq!(loaded.data.train.len(), 20);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
    let loaded = load_cifar10_with_warnings(&dir).unwrap();
    assert_eq!(loaded.data.train.len(), 16);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert!(w.contains("data_batch_3.bin is missing"), "{w}");
    assert!(w.contains(&dir.display().to_string()), "{w}");
    assert!(w.contains("4 of the 5 training batches (16 images)"), "{w}");
    // load_cifar10 gives the same data.
    assert_eq!(load_cifar10(&dir).unwrap(), loaded.data);

    // Two missing, from an archive.
    let files: Vec<_> = fx
        .files
        .iter()
        .filter(|(n, _)| n != "data_batch_3.bin" && n != "data_batch_5.bin")
        .cloned()
        .collect();
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    fs::write(&archive, tar_gz_of("cifar-10-batches-bin", &files)).unwrap();
    let loaded = load_cifar10_with_warnings(&archive).unwrap();
    let w = &loaded.warnings[0];
    assert!(
        w.contains("data_batch_3.bin, data_batch_5.bin are missing from"),
        "{w}"
    );
    assert!(w.contains("cifar-10-binary.tar.gz"), "{w}");
    assert!(w.contains("3 of the 5 training batches (12 images)"), "{w}");
}

/// The bundled sample holds data_batch_1.bin only, and says so.
#[test]
fn the_bundled_sample_warns_that_it_is_one_batch() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/cifar10-sample");
    let loaded = load_cifar10_with_warnings(&path).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0].contains("1 of the 5 training batches (1000 images)"),
        "{}",
        loaded.warnings[0]
    );
}
