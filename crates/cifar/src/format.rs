//! The CIFAR binary record layout: parsing batch files and class-name files,
//! and writing CIFAR-10 batch files.
//!
//! A record is `label_bytes` label bytes followed by one 32×32 image stored
//! as three row-major planes (R, G, B). That plane order is already NCHW, so
//! pixels are copied without any reordering.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::error::CifarError;

pub const CHANNELS: usize = 3;
pub const HEIGHT: usize = 32;
pub const WIDTH: usize = 32;
/// Bytes of one image (3×32×32).
pub const IMAGE_BYTES: usize = CHANNELS * HEIGHT * WIDTH;
/// Bytes of one CIFAR-10 record: one label byte and the image.
pub const CIFAR10_RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Bytes of one CIFAR-100 record: coarse and fine label bytes and the image.
pub const CIFAR100_RECORD_BYTES: usize = 2 + IMAGE_BYTES;

/// How to read the labels of one record layout.
pub(crate) struct RecordLayout {
    /// Label bytes before the pixels.
    pub label_bytes: usize,
    /// Which label byte becomes `Split::labels`.
    pub label_index: usize,
    /// Exclusive upper bound of each label byte, checked for all of them so
    /// that a corrupt record is caught even in the labels not kept.
    pub label_limits: &'static [usize],
}

impl RecordLayout {
    pub fn record_bytes(&self) -> usize {
        self.label_bytes + IMAGE_BYTES
    }
}

/// Appends the records of one whole batch file to `images` and `labels`.
/// `file` names the source in error messages. An empty file is an error.
pub(crate) fn parse_records(
    file: &str,
    bytes: &[u8],
    layout: &RecordLayout,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<(), CifarError> {
    let record_bytes = layout.record_bytes();
    if bytes.is_empty() {
        // Zero records is a whole number of them, but no dataset ships an
        // empty batch: it is a copy that stopped short (or a full disk).
        return Err(CifarError::EmptyFile {
            file: file.to_string(),
        });
    }
    let n = bytes.len() / record_bytes;
    if n * record_bytes != bytes.len() {
        return Err(CifarError::BadFileSize {
            file: file.to_string(),
            size: bytes.len() as u64,
            record_size: record_bytes,
        });
    }
    images.reserve(n * IMAGE_BYTES);
    labels.reserve(n);
    for (record, chunk) in bytes.chunks_exact(record_bytes).enumerate() {
        for (&label, &limit) in chunk[..layout.label_bytes].iter().zip(layout.label_limits) {
            if label as usize >= limit {
                return Err(CifarError::BadLabel {
                    file: file.to_string(),
                    record,
                    label,
                    num_classes: limit,
                });
            }
        }
        labels.push(chunk[layout.label_index]);
        images.extend_from_slice(&chunk[layout.label_bytes..]);
    }
    Ok(())
}

/// Parses a class-names file: one name per line, trailing blank lines allowed.
pub(crate) fn parse_class_names(
    file: &str,
    bytes: &[u8],
    expected: usize,
) -> Result<Vec<String>, CifarError> {
    let bad = |detail: String| CifarError::BadMeta {
        file: file.to_string(),
        detail,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
    let mut names: Vec<String> = text.lines().map(|line| line.trim().to_string()).collect();
    while names.last().is_some_and(|name| name.is_empty()) {
        names.pop();
    }
    if names.is_empty() {
        return Err(bad("it holds no class names".to_string()));
    }
    if let Some(line) = names.iter().position(|name| name.is_empty()) {
        return Err(bad(format!("line {} is blank", line + 1)));
    }
    if names.len() != expected {
        return Err(bad(format!(
            "expected {expected} class names, found {}",
            names.len()
        )));
    }
    Ok(names)
}

/// Writes `labels.len()` CIFAR-10 records. `images` is N×3×32×32 bytes, the
/// same layout as `Split::images`.
pub fn write_cifar10_batch(path: &Path, images: &[u8], labels: &[u8]) -> io::Result<()> {
    if images.len() != labels.len() * IMAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} image bytes do not match {} labels ({} bytes each)",
                images.len(),
                labels.len(),
                IMAGE_BYTES
            ),
        ));
    }
    let mut out = BufWriter::new(File::create(path)?);
    for (label, image) in labels.iter().zip(images.chunks_exact(IMAGE_BYTES)) {
        out.write_all(&[*label])?;
        out.write_all(image)?;
    }
    out.flush()
}
