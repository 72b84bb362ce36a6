//! The training checkpoint file: a small binary format, written atomically.
//!
//! ```text
//! magic    8 bytes  "HEBBCKPT"
//! version  u32      FORMAT_VERSION
//! length   u64      payload length in bytes
//! payload  …        written by `Trainer::save`, read by `Trainer::resume`
//! checksum u64      FNV-1a over the payload
//! ```
//! The payload, field by field (u64 unless said; a list is its length as a
//! u64, then its items):
//!
//! ```text
//! settings          string: every setting but --epochs, one "--option=value"
//!                   per line; must match on resume
//! epoch, batch_in_epoch, global_step, running_count, train_images
//! running_loss, train_seconds                          f64
//! eval_images (u64), eval_seconds (f64)
//! parameters        count, then each as a list of f32 (LeNet::parameters order)
//! momentum          per parameter: present (0/1), then a list of f32
//! sparse layers     count, then each: mask (list of u8), strength (list of
//!                   f64), strength_samples, passes, rng state (4 × u64)
//! ```
//!
//! All numbers are little-endian. A file with the wrong magic, version,
//! length or checksum is refused before any of it is used.
//!
//! Writing goes to `PATH.tmp`, is fsynced, then renamed over `PATH`, so a
//! crash mid-write leaves the previous checkpoint intact.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"HEBBCKPT";
pub const FORMAT_VERSION: u32 = 2;

/// FNV-1a, 64-bit: simple and enough to catch corruption (not tampering).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Appends little-endian fields to a payload.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn f64s(&mut self, v: &[f64]) {
        self.u64(v.len() as u64);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn bools(&mut self, v: &[bool]) {
        self.u64(v.len() as u64);
        self.buf.extend(v.iter().map(|&b| b as u8));
    }
}

/// Reads fields back, failing with a message instead of panicking when the
/// payload is shorter than its fields claim.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn short(what: &str) -> String {
    format!("checkpoint payload ends inside {what}")
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| short(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    pub fn f64(&mut self, what: &str) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn len(&mut self, what: &str, elem: usize) -> Result<usize, String> {
        let n = self.u64(what)? as usize;
        if n.checked_mul(elem)
            .is_none_or(|b| b > self.buf.len() - self.pos)
        {
            return Err(short(what));
        }
        Ok(n)
    }
    pub fn str(&mut self, what: &str) -> Result<String, String> {
        let n = self.len(what, 1)?;
        String::from_utf8(self.take(n, what)?.to_vec())
            .map_err(|_| format!("checkpoint {what} is not UTF-8"))
    }
    pub fn f32s(&mut self, what: &str) -> Result<Vec<f32>, String> {
        let n = self.len(what, 4)?;
        Ok(self
            .take(4 * n, what)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect())
    }
    pub fn f64s(&mut self, what: &str) -> Result<Vec<f64>, String> {
        let n = self.len(what, 8)?;
        Ok(self
            .take(8 * n, what)?
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect())
    }
    pub fn bools(&mut self, what: &str) -> Result<Vec<bool>, String> {
        let n = self.len(what, 1)?;
        Ok(self.take(n, what)?.iter().map(|&b| b != 0).collect())
    }
    pub fn finish(&self) -> Result<(), String> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(format!(
                "checkpoint payload has {} unread bytes",
                self.buf.len() - self.pos
            ))
        }
    }
}

/// Frames `payload` and writes it atomically to `path`. On failure the
/// temporary file is removed and the previous checkpoint, if any, is intact.
pub fn write_atomic(path: &Path, payload: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let result = write_then_rename(path, &tmp, payload);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `PATH.tmp`, where a checkpoint is written before it is renamed.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    tmp
}

fn write_then_rename(path: &Path, tmp: &Path, payload: &[u8]) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::other("it is a directory"));
    }
    {
        let mut f = File::create(tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&FORMAT_VERSION.to_le_bytes())?;
        f.write_all(&(payload.len() as u64).to_le_bytes())?;
        f.write_all(payload)?;
        f.write_all(&fnv1a(payload).to_le_bytes())?;
        f.sync_all()?;
    }
    fs::rename(tmp, path)?;
    // Make the rename itself durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Checks, before a run starts, that a checkpoint can be written at `path`:
/// not a directory, its folder exists, and a file can be made there. The
/// probe file is removed again.
pub fn check_writable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!(
            "{}: the folder {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    let probe = tmp_path(path);
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads and checks the frame; returns the payload.
pub fn read_checked(path: &Path) -> Result<Vec<u8>, String> {
    let bytes =
        fs::read(path).map_err(|e| format!("cannot read checkpoint {}: {e}", path.display()))?;
    let bad = |why: String| format!("{} is not a usable checkpoint: {why}", path.display());
    if bytes.len() < 28 || &bytes[..8] != MAGIC {
        return Err(bad("it does not start with the HEBBCKPT header".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads version {FORMAT_VERSION}"
        )));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    if bytes.len() != 20usize.saturating_add(len).saturating_add(8) {
        return Err(bad(format!(
            "the header says {len} payload bytes but the file has {} bytes (truncated?)",
            bytes.len()
        )));
    }
    let payload = &bytes[20..20 + len];
    let sum = u64::from_le_bytes(bytes[20 + len..].try_into().unwrap());
    if fnv1a(payload) != sum {
        return Err(bad(
            "the checksum does not match (the file is corrupt)".into()
        ));
    }
    Ok(payload.to_vec())
}
