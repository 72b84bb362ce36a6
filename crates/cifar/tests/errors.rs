//! Every kind of bad input gives its own error variant and an actionable
//! message, never a panic.

mod common;

use std::fs;
use std::path::Path;

use cifar::{load_cifar10, load_cifar100, Cifar100Labels, CifarError, CIFAR10_RECORD_BYTES};
use common::*;

fn valid_dir(tmp: &TempDir) -> std::path::PathBuf {
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_files(&dir, &cifar10_fixture(2, 4, 3).files);
    dir
}

#[test]
fn nonexistent_path_is_missing_file_with_hint() {
    let err = load_cifar10(Path::new("/nonexistent/cifar-data")).unwrap_err();
    assert!(matches!(err, CifarError::MissingFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/cifar-data"), "{msg}");
    assert!(msg.contains("datasets/download_cifar10.sh"), "{msg}");
}

#[test]
fn directory_without_dataset_names_expected_location() {
    let tmp = TempDir::new("empty");
    let err = load_cifar10(tmp.path()).unwrap_err();
    match &err {
        CifarError::MissingFile { path, .. } => assert!(path.ends_with("cifar-10-batches-bin")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn missing_required_files() {
    for file in ["data_batch_1.bin", "test_batch.bin", "batches.meta.txt"] {
        let tmp = TempDir::new("missing");
        let dir = valid_dir(&tmp);
        fs::remove_file(dir.join(file)).unwrap();
        let err = load_cifar10(&dir).unwrap_err();
        match &err {
            CifarError::MissingFile { path, .. } => assert_eq!(path, &dir.join(file)),
            other => panic!("{file}: unexpected {other:?}"),
        }
        assert!(err.to_string().contains(file));
    }
}

#[test]
fn truncated_batch_is_bad_file_size() {
    let tmp = TempDir::new("size");
    let dir = valid_dir(&tmp);
    let path = dir.join("data_batch_2.bin");
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 100);
    let size = bytes.len() as u64;
    fs::write(&path, bytes).unwrap();
    let err = load_cifar10(&dir).unwrap_err();
    match &err {
        CifarError::BadFileSize {
            file,
            size: s,
            record_size,
        } => {
            assert!(file.ends_with("data_batch_2.bin"), "{file}");
            assert_eq!(*s, size);
            assert_eq!(*record_size, CIFAR10_RECORD_BYTES);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&size.to_string()) && msg.contains("3073"),
        "{msg}"
    );
}

#[test]
fn out_of_range_label_names_file_and_record() {
    let tmp = TempDir::new("label");
    let dir = valid_dir(&tmp);
    let path = dir.join("test_batch.bin");
    let mut bytes = fs::read(&path).unwrap();
    bytes[2 * CIFAR10_RECORD_BYTES] = 10;
    fs::write(&path, bytes).unwrap();
    let err = load_cifar10(&dir).unwrap_err();
    match &err {
        CifarError::BadLabel {
            file,
            record,
            label,
            num_classes,
        } => {
            assert!(file.ends_with("test_batch.bin"));
            assert_eq!((*record, *label, *num_classes), (2, 10, 10));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("record 2"));
}

#[test]
fn cifar100_checks_both_label_bytes() {
    let tmp = TempDir::new("c100label");
    let dir = tmp.path().join("cifar-100-binary");
    let (images, fine) = random_records(3, 100, 1);
    let mut coarse: Vec<u8> = fine.iter().map(|f| f / 5).collect();
    coarse[1] = 20; // out of range for the coarse labels, even when loading fine ones
    let names = |n: usize| (0..n).map(|i| format!("c{i}\n")).collect::<String>();
    write_files(
        &dir,
        &[
            ("train.bin".into(), cifar100_bytes(&images, &coarse, &fine)),
            ("test.bin".into(), cifar100_bytes(&images, &fine, &fine)),
            ("coarse_label_names.txt".into(), names(20).into_bytes()),
            ("fine_label_names.txt".into(), names(100).into_bytes()),
        ],
    );
    let err = load_cifar100(&dir, Cifar100Labels::Fine).unwrap_err();
    assert!(
        matches!(
            err,
            CifarError::BadLabel {
                record: 1,
                label: 20,
                num_classes: 20,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_meta_files() {
    let cases: [(&[u8], &str); 4] = [
        (b"", "no class names"),
        (b"\n\n\n", "no class names"),
        (b"a\nb\nc\n", "expected 10"),
        (b"\xff\xfe\n", "UTF-8"),
    ];
    for (contents, expected) in cases {
        let tmp = TempDir::new("meta");
        let dir = valid_dir(&tmp);
        fs::write(dir.join("batches.meta.txt"), contents).unwrap();
        let err = load_cifar10(&dir).unwrap_err();
        assert!(matches!(err, CifarError::BadMeta { .. }), "{err:?}");
        assert!(err.to_string().contains(expected), "{err}");
    }
    // A blank line between names is malformed too.
    let tmp = TempDir::new("meta-gap");
    let dir = valid_dir(&tmp);
    let mut names = CIFAR10_NAMES.to_vec();
    names.insert(3, "");
    fs::write(dir.join("batches.meta.txt"), meta_text(&names)).unwrap();
    let err = load_cifar10(&dir).unwrap_err();
    assert!(err.to_string().contains("line 4 is blank"), "{err}");
}

#[test]
fn archive_without_member_is_missing_member() {
    let tmp = TempDir::new("member");
    let mut files = cifar10_fixture(1, 2, 2).files;
    files.retain(|(name, _)| name != "test_batch.bin");
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    fs::write(&archive, tar_gz_of("cifar-10-batches-bin", &files)).unwrap();
    let err = load_cifar10(&archive).unwrap_err();
    match &err {
        CifarError::MissingMember { archive: a, member } => {
            assert_eq!(a, &archive);
            assert_eq!(member, "cifar-10-batches-bin/test_batch.bin");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn truncated_gzip_is_corrupt_archive() {
    let tmp = TempDir::new("gz");
    let bytes = tar_gz_of("cifar-10-batches-bin", &cifar10_fixture(1, 3, 2).files);
    let archive = tmp.path().join("a.tar.gz");
    for cut in [10, bytes.len() / 2, bytes.len() - 4] {
        fs::write(&archive, &bytes[..cut]).unwrap();
        let err = load_cifar10(&archive).unwrap_err();
        assert!(
            matches!(err, CifarError::CorruptArchive { .. }),
            "cut {cut}: {err:?}"
        );
        assert!(err.to_string().contains("a.tar.gz"));
    }
}

#[test]
fn not_gzip_is_corrupt_archive() {
    let tmp = TempDir::new("notgz");
    let archive = tmp.path().join("a.tar.gz");
    fs::write(&archive, b"this is not a gzip file at all").unwrap();
    let err = load_cifar10(&archive).unwrap_err();
    assert!(matches!(err, CifarError::CorruptArchive { .. }), "{err:?}");
}

#[test]
fn damaged_tar_header_is_corrupt_archive() {
    let tmp = TempDir::new("tarhdr");
    let files = cifar10_fixture(1, 2, 2).files;
    let mut entries = vec![];
    for (name, data) in &files {
        entries.push(Entry::file(&format!("cifar-10-batches-bin/{name}"), data));
    }
    let mut tar = tar_bytes(&entries);
    // The size field of the first header, changed without fixing the checksum.
    tar[130] = b'7';
    let archive = tmp.path().join("a.tar.gz");
    fs::write(&archive, gzip(&tar)).unwrap();
    let err = load_cifar10(&archive).unwrap_err();
    match &err {
        CifarError::CorruptArchive { detail, .. } => {
            assert!(detail.contains("checksum"), "{detail}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // A tar cut in the middle of a member, then correctly gzipped.
    let tar = tar_bytes(&entries);
    fs::write(&archive, gzip(&tar[..tar.len() / 2 + 7])).unwrap();
    let err = load_cifar10(&archive).unwrap_err();
    assert!(matches!(err, CifarError::CorruptArchive { .. }), "{err:?}");
}

#[test]
fn errors_are_std_errors() {
    let err: Box<dyn std::error::Error> =
        Box::new(load_cifar10(Path::new("/nonexistent")).unwrap_err());
    assert!(!err.to_string().is_empty());
}
