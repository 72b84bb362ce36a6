//! Finding a dataset on disk (archive, data directory, or a directory that
//! contains either) and loading it into `Cifar`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::CifarError;
use crate::format::{parse_class_names, parse_records, RecordLayout, IMAGE_BYTES};
use crate::split::{Cifar, Split};
use crate::tar::read_gz_members;

/// Which CIFAR-100 label becomes `Split::labels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar100Labels {
    /// The 20 superclasses.
    Coarse,
    /// The 100 classes.
    Fine,
}

/// Everything that differs between CIFAR-10 and CIFAR-100 on disk.
struct Dataset {
    dir_name: &'static str,
    archive_name: &'static str,
    /// Training batches in order; the first `required_train` must exist.
    train_files: &'static [&'static str],
    required_train: usize,
    test_file: &'static str,
    meta_file: &'static str,
    num_classes: usize,
    layout: RecordLayout,
    hint: &'static str,
}

const CIFAR10_HINT: &str = "download CIFAR-10 with datasets/download_cifar10.sh, then pass \
    cifar-10-binary.tar.gz, the cifar-10-batches-bin directory, or the directory containing it";
const CIFAR100_HINT: &str = "download https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz, \
    then pass the archive, the cifar-100-binary directory, or the directory containing it";

/// A loaded dataset, and what the loader noticed that did not stop it but
/// that the user should be told: each warning is one sentence naming the
/// files concerned, ready to print.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub data: Cifar,
    /// Training batches that were absent (CIFAR-10's `data_batch_2..5.bin`
    /// are optional), with how many training images that leaves.
    pub warnings: Vec<String>,
}

/// Loads CIFAR-10 from `cifar-10-binary.tar.gz`, the `cifar-10-batches-bin`
/// directory, or a directory containing either. `data_batch_1.bin`,
/// `test_batch.bin` and `batches.meta.txt` are required; whichever of
/// `data_batch_2..5.bin` exist are appended to the training split in order,
/// and [`Loaded::warnings`] names the ones that do not (a partial copy of
/// the full dataset would otherwise train on fewer images without a word).
/// Empty batch files are refused.
pub fn load_cifar10_with_warnings(path: &Path) -> Result<Loaded, CifarError> {
    let dataset = Dataset {
        dir_name: "cifar-10-batches-bin",
        archive_name: "cifar-10-binary.tar.gz",
        train_files: &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
        required_train: 1,
        test_file: "test_batch.bin",
        meta_file: "batches.meta.txt",
        num_classes: 10,
        layout: RecordLayout {
            label_bytes: 1,
            label_index: 0,
            label_limits: &[10],
        },
        hint: CIFAR10_HINT,
    };
    load(&dataset, path)
}

/// [`load_cifar10_with_warnings`] without the warnings. A program that
/// trains on what it loads should show the user those warnings instead.
pub fn load_cifar10(path: &Path) -> Result<Cifar, CifarError> {
    load_cifar10_with_warnings(path).map(|loaded| loaded.data)
}

/// Loads CIFAR-100 from `cifar-100-binary.tar.gz`, the `cifar-100-binary`
/// directory, or a directory containing either, keeping the coarse or the
/// fine labels. Both label bytes of every record are validated.
pub fn load_cifar100(path: &Path, labels: Cifar100Labels) -> Result<Cifar, CifarError> {
    let (label_index, meta_file, num_classes) = match labels {
        Cifar100Labels::Coarse => (0, "coarse_label_names.txt", 20),
        Cifar100Labels::Fine => (1, "fine_label_names.txt", 100),
    };
    let dataset = Dataset {
        dir_name: "cifar-100-binary",
        archive_name: "cifar-100-binary.tar.gz",
        train_files: &["train.bin"],
        required_train: 1,
        test_file: "test.bin",
        meta_file,
        num_classes,
        layout: RecordLayout {
            label_bytes: 2,
            label_index,
            label_limits: &[20, 100],
        },
        hint: CIFAR100_HINT,
    };
    // CIFAR-100 has no optional files, so nothing to warn about.
    load(&dataset, path).map(|loaded| loaded.data)
}

/// Where the files come from once the user's path is resolved.
enum Source {
    Dir(PathBuf),
    /// The archive's path and the wanted members already read from it.
    Archive(PathBuf, HashMap<String, Vec<u8>>),
}

/// A file read from a source, with the name to use in error messages.
struct FileBytes {
    name: String,
    bytes: Vec<u8>,
}

fn load(dataset: &Dataset, path: &Path) -> Result<Loaded, CifarError> {
    let mut source = open(dataset, path)?;
    let meta = read(dataset, &mut source, dataset.meta_file)?
        .ok_or_else(|| missing(dataset, &source, dataset.meta_file))?;
    let class_names = parse_class_names(&meta.name, &meta.bytes, dataset.num_classes)?;

    let mut train_files = Vec::new();
    let mut absent = Vec::new();
    for (i, file) in dataset.train_files.iter().enumerate() {
        match read(dataset, &mut source, file)? {
            Some(loaded) => train_files.push(loaded),
            None if i < dataset.required_train => return Err(missing(dataset, &source, file)),
            None => absent.push(*file),
        }
    }
    let train = parse_split(dataset, &train_files, &class_names)?;
    drop(train_files);
    let test_file = read(dataset, &mut source, dataset.test_file)?
        .ok_or_else(|| missing(dataset, &source, dataset.test_file))?;
    let test = parse_split(dataset, &[test_file], &class_names)?;
    let mut warnings = Vec::new();
    if !absent.is_empty() {
        let present = dataset.train_files.len() - absent.len();
        warnings.push(format!(
            "{} {} missing from {}: training on {present} of the {} training batches \
             ({} images)",
            absent.join(", "),
            if absent.len() == 1 { "is" } else { "are" },
            source_name(&source),
            dataset.train_files.len(),
            train.len()
        ));
    }
    Ok(Loaded {
        data: Cifar { train, test },
        warnings,
    })
}

/// The directory or archive the files come from, for messages.
fn source_name(source: &Source) -> String {
    match source {
        Source::Dir(dir) => dir.display().to_string(),
        Source::Archive(archive, _) => archive.display().to_string(),
    }
}

fn parse_split(
    dataset: &Dataset,
    files: &[FileBytes],
    class_names: &[String],
) -> Result<Split, CifarError> {
    // Sized once up front: growing a 150 MB buffer file by file would copy it
    // several times over.
    let records: usize = files
        .iter()
        .map(|f| f.bytes.len() / dataset.layout.record_bytes())
        .sum();
    let mut split = Split {
        images: Vec::with_capacity(records * IMAGE_BYTES),
        labels: Vec::with_capacity(records),
        class_names: class_names.to_vec(),
    };
    for file in files {
        parse_records(
            &file.name,
            &file.bytes,
            &dataset.layout,
            &mut split.images,
            &mut split.labels,
        )?;
    }
    Ok(split)
}

fn all_files(dataset: &Dataset) -> Vec<&'static str> {
    let mut files = dataset.train_files.to_vec();
    files.push(dataset.test_file);
    files.push(dataset.meta_file);
    files
}

fn member_name(dataset: &Dataset, file: &str) -> String {
    format!("{}/{}", dataset.dir_name, file)
}

/// Accepts the archive, the data directory, or a directory containing either.
fn open(dataset: &Dataset, path: &Path) -> Result<Source, CifarError> {
    if path.is_file() {
        let wanted: Vec<String> = all_files(dataset)
            .iter()
            .map(|file| member_name(dataset, file))
            .collect();
        let members = read_gz_members(path, &wanted)?;
        return Ok(Source::Archive(path.to_path_buf(), members));
    }
    if !path.is_dir() {
        // Either nothing is there, or something that is neither a file nor
        // a directory (`--data /dev/zero`): say which.
        return Err(match fs::metadata(path) {
            Ok(meta) => CifarError::NotFileOrDirectory {
                path: path.to_path_buf(),
                kind: file_kind(&meta.file_type()),
                hint: dataset.hint.to_string(),
            },
            Err(_) => CifarError::MissingFile {
                path: path.to_path_buf(),
                hint: dataset.hint.to_string(),
            },
        });
    }
    let is_data_dir = path
        .file_name()
        .is_some_and(|name| name == dataset.dir_name)
        || all_files(dataset)
            .iter()
            .any(|file| path.join(file).exists());
    if is_data_dir {
        return Ok(Source::Dir(path.to_path_buf()));
    }
    let inner = path.join(dataset.dir_name);
    if inner.is_dir() {
        return Ok(Source::Dir(inner));
    }
    let archive = path.join(dataset.archive_name);
    if archive.is_file() {
        return open(dataset, &archive);
    }
    Err(CifarError::MissingFile {
        path: inner,
        hint: dataset.hint.to_string(),
    })
}

/// What a path that is neither a file nor a directory is, for messages.
fn file_kind(kind: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_fifo() {
            return "a named pipe";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    let _ = kind;
    "a special file"
}

/// Reads one dataset file; `None` when it does not exist.
fn read(
    dataset: &Dataset,
    source: &mut Source,
    file: &str,
) -> Result<Option<FileBytes>, CifarError> {
    match source {
        Source::Dir(dir) => {
            let path = dir.join(file);
            match fs::read(&path) {
                Ok(bytes) => Ok(Some(FileBytes {
                    name: path.display().to_string(),
                    bytes,
                })),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(CifarError::Io { path, source }),
            }
        }
        Source::Archive(archive, members) => {
            let member = member_name(dataset, file);
            // Taken out of the map so the raw bytes are freed once parsed.
            Ok(members.remove(&member).map(|bytes| FileBytes {
                name: format!("{}:{}", archive.display(), member),
                bytes,
            }))
        }
    }
}

fn missing(dataset: &Dataset, source: &Source, file: &str) -> CifarError {
    match source {
        Source::Dir(dir) => CifarError::MissingFile {
            path: dir.join(file),
            hint: dataset.hint.to_string(),
        },
        Source::Archive(archive, _) => CifarError::MissingMember {
            archive: archive.clone(),
            member: member_name(dataset, file),
        },
    }
}
