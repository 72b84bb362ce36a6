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
//!                   per line (the network among them); must match on resume
//! epoch, batch_in_epoch, global_step, running_count, train_images
//! running_loss, train_seconds                          f64
//! eval_images (u64), eval_seconds (f64)
//! last_update_step  0 for none, else 1 + the step
//! tensors           count, then each a named tensor:
//!                     name (string), dtype (0 f32, 1 f64, 2 u8, 3 u64),
//!                     shape (list of u64), values (list of dtype)
//! ```
//!
//! The tensors are named as PyTorch names a model's state
//! (`layer2.0.conv1.weight`, `layer2.0.bn1.running_mean`), plus
//! `momentum.NAME` for each parameter's SGD momentum, and for each sparse
//! layer `LAYER.mask`, `LAYER.strength`, `LAYER.strength_samples`,
//! `LAYER.passes` and `LAYER.rng` (see `Trainer::save`). Resuming asks for
//! each name the model has and refuses a missing, unexpected or mis-shaped
//! tensor, naming it.
//!
//! All numbers are little-endian. A file with the wrong magic, version,
//! length or checksum is refused before any of it is used; version 2, which
//! stored the LeNet's parameters by position, is refused with a message
//! that says so.
//!
//! Writing goes to `PATH.tmp`, is fsynced, then renamed over `PATH`, so a
//! crash mid-write leaves the previous checkpoint intact.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"HEBBCKPT";
pub const FORMAT_VERSION: u32 = 3;

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
    /// Named tensors written so far.
    pub tensors: u64,
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

/// The values of a named tensor, by element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    U64(Vec<u64>),
}

impl Values {
    fn dtype(&self) -> u64 {
        match self {
            Values::F32(_) => 0,
            Values::F64(_) => 1,
            Values::U8(_) => 2,
            Values::U64(_) => 3,
        }
    }

    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::U8(v) => v.len(),
            Values::U64(v) => v.len(),
        }
    }

    fn type_name(&self) -> &'static str {
        ["f32", "f64", "u8", "u64"][self.dtype() as usize]
    }
}

impl Writer {
    /// A named tensor: name, dtype, shape, values.
    pub fn tensor(&mut self, name: &str, shape: &[usize], values: &Values) {
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "checkpoint tensor {name}: values do not fill shape {shape:?}"
        );
        self.tensors += 1;
        self.str(name);
        self.u64(values.dtype());
        self.u64(shape.len() as u64);
        for &d in shape {
            self.u64(d as u64);
        }
        match values {
            Values::F32(v) => self.f32s(v),
            Values::F64(v) => self.f64s(v),
            Values::U8(v) => {
                self.u64(v.len() as u64);
                self.buf.extend_from_slice(v);
            }
            Values::U64(v) => {
                self.u64(v.len() as u64);
                for x in v {
                    self.buf.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
}

/// The named tensors of a checkpoint, taken out one by one by name; what
/// is left at the end was not expected.
pub struct Tensors {
    map: BTreeMap<String, (Vec<usize>, Values)>,
}

impl Tensors {
    /// Reads `count` named tensors.
    pub fn read(r: &mut Reader) -> Result<Tensors, String> {
        let count = r.u64("tensor count")?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let name = r.str("tensor name")?;
            let dtype = r.u64("tensor dtype")?;
            let ndim = r.u64("tensor shape")?;
            if ndim > 8 {
                return Err(format!("tensor {name} claims {ndim} dimensions"));
            }
            let shape = (0..ndim)
                .map(|_| r.u64("tensor shape").map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let what = format!("tensor {name}");
            let values = match dtype {
                0 => Values::F32(r.f32s(&what)?),
                1 => Values::F64(r.f64s(&what)?),
                2 => Values::U8(r.bytes(&what)?),
                3 => Values::U64(r.u64s(&what)?),
                _ => return Err(format!("tensor {name} has unknown dtype {dtype}")),
            };
            if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(values.len()) {
                return Err(format!(
                    "tensor {name} has {} values for shape {shape:?}",
                    values.len()
                ));
            }
            if map.insert(name.clone(), (shape, values)).is_some() {
                return Err(format!("tensor {name} appears twice"));
            }
        }
        Ok(Tensors { map })
    }

    /// Takes the tensor `name`, which must have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Values, String> {
        let (saved, values) = self
            .map
            .remove(name)
            .ok_or_else(|| format!("tensor {name} is missing from the checkpoint"))?;
        if saved != shape {
            return Err(format!(
                "tensor {name} has shape {saved:?} in the checkpoint, the model wants {shape:?}"
            ));
        }
        Ok(values)
    }

    /// Whether a tensor of this name is there (for optional state, such as
    /// momentum before the first step).
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn take_f32(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        match self.take(name, shape)? {
            Values::F32(v) => Ok(v),
            v => Err(wrong_type(name, "f32", &v)),
        }
    }

    pub fn take_f64(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>, String> {
        match self.take(name, shape)? {
            Values::F64(v) => Ok(v),
            v => Err(wrong_type(name, "f64", &v)),
        }
    }

    pub fn take_u8(&mut self, name: &str, shape: &[usize]) -> Result<Vec<u8>, String> {
        match self.take(name, shape)? {
            Values::U8(v) => Ok(v),
            v => Err(wrong_type(name, "u8", &v)),
        }
    }

    pub fn take_u64(&mut self, name: &str, shape: &[usize]) -> Result<Vec<u64>, String> {
        match self.take(name, shape)? {
            Values::U64(v) => Ok(v),
            v => Err(wrong_type(name, "u64", &v)),
        }
    }

    /// Fails, naming them, if any tensors were not taken.
    pub fn finish(self) -> Result<(), String> {
        if self.map.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.map.keys().map(|k| k.as_str()).collect();
        Err(format!(
            "the checkpoint holds tensors this model does not have: {}",
            names.join(", ")
        ))
    }
}

fn wrong_type(name: &str, want: &str, got: &Values) -> String {
    format!(
        "tensor {name} holds {} values, the model wants {want}",
        got.type_name()
    )
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
    pub fn bytes(&mut self, what: &str) -> Result<Vec<u8>, String> {
        let n = self.len(what, 1)?;
        Ok(self.take(n, what)?.to_vec())
    }
    pub fn u64s(&mut self, what: &str) -> Result<Vec<u64>, String> {
        let n = self.len(what, 8)?;
        Ok(self
            .take(8 * n, what)?
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
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
    if version == 2 {
        return Err(bad(format!(
            "format version 2, from an earlier hebbsparse that stored the LeNet's \
             parameters by position; this build reads version {FORMAT_VERSION} (named \
             tensors, any network) and cannot continue that run: start it again"
        )));
    }
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
