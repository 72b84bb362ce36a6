//! Helpers shared by the integration tests: scratch directories, synthetic
//! records, and a small tar/gzip writer to build archives in memory.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cifar::{write_cifar10_batch, IMAGE_BYTES};
use flate2::write::GzEncoder;
use flate2::Compression;

pub const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Dataset files: name within the data directory, and contents.
pub type Files = Vec<(String, Vec<u8>)>;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("cifar-test-{}-{}-{}", std::process::id(), tag, n));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Tiny deterministic generator for test data (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `n` random images and labels below `num_classes`.
pub fn random_records(n: usize, num_classes: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(seed | 1);
    let images = (0..n * IMAGE_BYTES).map(|_| rng.next_u64() as u8).collect();
    let labels = (0..n).map(|_| rng.below(num_classes) as u8).collect();
    (images, labels)
}

/// Raw CIFAR-10 batch bytes.
pub fn cifar10_bytes(images: &[u8], labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (l, img) in labels.iter().zip(images.chunks_exact(IMAGE_BYTES)) {
        out.push(*l);
        out.extend_from_slice(img);
    }
    out
}

/// Raw CIFAR-100 batch bytes.
pub fn cifar100_bytes(images: &[u8], coarse: &[u8], fine: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for ((c, f), img) in coarse
        .iter()
        .zip(fine)
        .zip(images.chunks_exact(IMAGE_BYTES))
    {
        out.push(*c);
        out.push(*f);
        out.extend_from_slice(img);
    }
    out
}

pub fn meta_text(names: &[&str]) -> Vec<u8> {
    format!("{}\n\n", names.join("\n")).into_bytes()
}

/// A small CIFAR-10: its files (member name under cifar-10-batches-bin/ and
/// bytes) and the expected train/test contents.
pub struct Cifar10Fixture {
    pub files: Vec<(String, Vec<u8>)>,
    pub train_images: Vec<u8>,
    pub train_labels: Vec<u8>,
    pub test_images: Vec<u8>,
    pub test_labels: Vec<u8>,
}

/// `train_batches` data batches of `per_batch` records, and a test batch.
pub fn cifar10_fixture(train_batches: usize, per_batch: usize, test: usize) -> Cifar10Fixture {
    let mut fx = Cifar10Fixture {
        files: vec![("batches.meta.txt".into(), meta_text(&CIFAR10_NAMES))],
        train_images: Vec::new(),
        train_labels: Vec::new(),
        test_images: Vec::new(),
        test_labels: Vec::new(),
    };
    for b in 0..train_batches {
        let (images, labels) = random_records(per_batch, 10, 100 + b as u64);
        fx.files.push((
            format!("data_batch_{}.bin", b + 1),
            cifar10_bytes(&images, &labels),
        ));
        fx.train_images.extend_from_slice(&images);
        fx.train_labels.extend_from_slice(&labels);
    }
    let (images, labels) = random_records(test, 10, 7);
    fx.files
        .push(("test_batch.bin".into(), cifar10_bytes(&images, &labels)));
    fx.test_images = images;
    fx.test_labels = labels;
    fx
}

/// Writes `files` into `dir` (created if needed).
pub fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Writes data via the crate's own writer, to test it too.
pub fn write_batch(path: &Path, images: &[u8], labels: &[u8]) {
    write_cifar10_batch(path, images, labels).unwrap();
}

/// One tar entry.
pub struct Entry {
    pub name: String,
    pub data: Vec<u8>,
    pub typeflag: u8,
    /// Emit a GNU 'L' entry even for a short name, with a decoy in the header.
    pub force_long_name: bool,
}

impl Entry {
    pub fn file(name: &str, data: &[u8]) -> Entry {
        Entry {
            name: name.to_string(),
            data: data.to_vec(),
            typeflag: b'0',
            force_long_name: false,
        }
    }

    pub fn long_named(name: &str, data: &[u8]) -> Entry {
        Entry {
            force_long_name: true,
            ..Entry::file(name, data)
        }
    }

    pub fn dir(name: &str) -> Entry {
        Entry {
            name: name.to_string(),
            data: Vec::new(),
            typeflag: b'5',
            force_long_name: false,
        }
    }
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{:0width$o}", value, width = digits);
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn header(name: &[u8], size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let text = format!("{:06o}\0 ", sum);
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.resize(out.len() + pad, 0);
}

/// An uncompressed tar. Names over 100 bytes get a GNU 'L' long-name entry.
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut short_name = e.name.as_bytes();
        if e.name.len() > 100 || e.force_long_name {
            let mut long = e.name.as_bytes().to_vec();
            long.push(0);
            out.extend_from_slice(&header(b"././@LongLink", long.len() as u64, b'L'));
            push_padded(&mut out, &long);
            if e.force_long_name {
                short_name = b"decoy-short-name";
            }
        }
        out.extend_from_slice(&header(short_name, e.data.len() as u64, e.typeflag));
        push_padded(&mut out, &e.data);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Members `<dir>/<name>` for each file, gzipped tar.
pub fn tar_gz_of(dir: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![Entry::dir(&format!("{dir}/"))];
    for (name, data) in files {
        entries.push(Entry::file(&format!("{dir}/{name}"), data));
    }
    gzip(&tar_bytes(&entries))
}
