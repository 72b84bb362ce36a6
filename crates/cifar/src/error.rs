//! The one error type of the crate. Every message names the file (or archive
//! member) at fault and, where there is one, the next thing the user can do.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum CifarError {
    /// A file or directory the dataset needs is not there.
    MissingFile { path: PathBuf, hint: String },
    /// The file exists but could not be read.
    Io { path: PathBuf, source: io::Error },
    /// The path exists but is neither a directory nor a regular file (a
    /// device such as `/dev/zero`, a pipe, a socket), so it can hold
    /// neither the data directory nor the archive.
    NotFileOrDirectory {
        path: PathBuf,
        kind: &'static str,
        hint: String,
    },
    /// A batch file with no records at all.
    EmptyFile { file: String },
    /// A batch file whose length is not a whole number of records.
    BadFileSize {
        file: String,
        size: u64,
        record_size: usize,
    },
    /// A record whose label byte is not a valid class index.
    BadLabel {
        file: String,
        record: usize,
        label: u8,
        num_classes: usize,
    },
    /// The gzip or tar stream is truncated or damaged.
    CorruptArchive { archive: PathBuf, detail: String },
    /// The archive is readable but lacks a member the dataset needs.
    MissingMember { archive: PathBuf, member: String },
    /// A class-names file that is empty, not UTF-8 or has the wrong number of names.
    BadMeta { file: String, detail: String },
}

impl fmt::Display for CifarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CifarError::MissingFile { path, hint } => {
                write!(f, "missing file {}: {}", path.display(), hint)
            }
            CifarError::NotFileOrDirectory { path, kind, hint } => write!(
                f,
                "{} is {kind}, not a directory or a .tar.gz file: {hint}",
                path.display()
            ),
            CifarError::EmptyFile { file } => write!(
                f,
                "{file} is empty (0 bytes, no images): the copy of the dataset is \
                 incomplete; download or extract it again"
            ),
            CifarError::Io { path, source } => {
                write!(f, "cannot read {}: {}", path.display(), source)
            }
            CifarError::BadFileSize {
                file,
                size,
                record_size,
            } => write!(
                f,
                "{file} is {size} bytes, not a whole number of {record_size}-byte records \
                 (the file is truncated or not a CIFAR binary batch)"
            ),
            CifarError::BadLabel {
                file,
                record,
                label,
                num_classes,
            } => write!(
                f,
                "{file}: record {record} has label {label}, outside 0..{num_classes} \
                 (the file is corrupt or belongs to another dataset)"
            ),
            CifarError::CorruptArchive { archive, detail } => write!(
                f,
                "{} is not a readable .tar.gz archive ({detail}); if it is the dataset \
                 archive, it is truncated or corrupt: download it again",
                archive.display()
            ),
            CifarError::MissingMember { archive, member } => write!(
                f,
                "{} has no member {member}; is it the binary version of the dataset?",
                archive.display()
            ),
            CifarError::BadMeta { file, detail } => {
                write!(f, "invalid class-names file {file}: {detail}")
            }
        }
    }
}

impl std::error::Error for CifarError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CifarError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
