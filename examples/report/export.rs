//! Export folders: what the cifar example writes with `--export DIR`, an
//! `index.json` naming one weight, mask and strength `.npy` file per conv
//! layer. The report needs each layer's mask (and weight, for colour).

use std::path::{Path, PathBuf};

use hebbsparse::tensor::npy::read_npy;
use serde_json::Value;

/// One conv layer of an export: shape [O, C, KH, KW] and its values, C order.
pub struct Layer {
    pub name: String,
    pub shape: [usize; 4],
    /// 1.0 where a connection is active; all ones for a dense layer.
    pub mask: Vec<f32>,
    pub weight: Option<Vec<f32>>,
}

impl Layer {
    /// For each tap (ki, kj), the fraction of the layer's O×C kernels in
    /// which it is active, row-major KH×KW.
    pub fn tap_frequency(&self) -> Vec<f64> {
        let [o, c, kh, kw] = self.shape;
        let taps = kh * kw;
        let mut counts = vec![0usize; taps];
        for kernel in self.mask.chunks_exact(taps) {
            for (n, &m) in counts.iter_mut().zip(kernel) {
                if m != 0.0 {
                    *n += 1;
                }
            }
        }
        let kernels = (o * c).max(1) as f64;
        counts.iter().map(|&n| n as f64 / kernels).collect()
    }

    pub fn density(&self) -> f64 {
        let active = self.mask.iter().filter(|&&m| m != 0.0).count();
        active as f64 / self.mask.len().max(1) as f64
    }

    /// How the active taps spread over the input channels and the kernel
    /// positions (see [`Spread`]).
    pub fn spread(&self) -> Spread {
        let [o, c, kh, kw] = self.shape;
        let taps = kh * kw;
        // Active taps per (output, input) kernel, and per input channel.
        let per_kernel: Vec<usize> = self
            .mask
            .chunks_exact(taps)
            .map(|k| k.iter().filter(|&&m| m != 0.0).count())
            .collect();
        let mut per_input = vec![0usize; c];
        for (i, &n) in per_kernel.iter().enumerate() {
            per_input[i % c] += n;
        }
        let read = per_kernel.iter().filter(|&&n| n > 0).count();
        let active: usize = per_input.iter().sum();
        per_input.sort_unstable_by(|a, b| b.cmp(a));
        let quarter: usize = per_input[..c.div_ceil(4)].iter().sum();
        let centre = (kh / 2) * kw + kw / 2;
        let at_centre = self
            .mask
            .chunks_exact(taps)
            .filter(|k| k[centre] != 0.0)
            .count();
        let share = |n: usize| n as f64 / active.max(1) as f64;
        Spread {
            reach: read as f64 / (o * c).max(1) as f64,
            uniform_reach: 1.0 - (1.0 - self.density()).powi(taps as i32),
            busiest_quarter: share(quarter),
            unread_inputs: per_input.iter().filter(|&&n| n == 0).count(),
            centre: share(at_centre),
        }
    }
}

/// Where a layer's active taps sit: whether a rule spreads its connections
/// over the inputs as a uniformly drawn mask does, or gathers them on some
/// input channels (a Hebbian score grows where units are often active) or
/// kernel positions.
pub struct Spread {
    /// The share of the (output, input) kernels with an active tap: on
    /// average, the share of its input channels a filter reads.
    pub reach: f64,
    /// The same for a mask drawn uniformly at the layer's density, about
    /// 1 − (1 − density)^(KH·KW).
    pub uniform_reach: f64,
    /// The share of the active taps on the busiest quarter of the input
    /// channels (a little over a quarter, for a uniform mask).
    pub busiest_quarter: f64,
    /// Input channels no active tap reads: features the layer ignores.
    pub unread_inputs: usize,
    /// The share of the active taps at the kernel's centre (1/(KH·KW) for a
    /// uniform mask).
    pub centre: f64,
}

pub struct Export {
    pub dir: PathBuf,
    pub step: Option<u64>,
    pub epoch: Option<u64>,
    pub mode: Option<String>,
    pub seed: Option<u64>,
    pub layers: Vec<Layer>,
    /// How many `step-NNNNNNNNN` snapshot folders sit beside index.json.
    pub snapshots: usize,
}

/// Reads a `.npy` file named by the index and checks it is weight-shaped.
fn read_array(dir: &Path, file: &str, shape: [usize; 4]) -> Result<Vec<f32>, String> {
    let path = dir.join(file);
    let t = read_npy(&path).map_err(|e| e.to_string())?;
    if t.shape() != shape {
        return Err(format!(
            "{}: shape {:?}, but index.json says {:?}",
            path.display(),
            t.shape(),
            shape
        ));
    }
    Ok(t.to_vec())
}

pub fn read_export(dir: &Path) -> Result<Export, String> {
    let index_path = dir.join("index.json");
    let at = index_path.display().to_string();
    let content =
        std::fs::read_to_string(&index_path).map_err(|e| format!("cannot read {at}: {e}"))?;
    let index: Value =
        serde_json::from_str(&content).map_err(|e| format!("{at}: malformed JSON: {e}"))?;
    let settings = index.get("settings");
    let mut layers = Vec::new();
    let entries = index
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{at}: no \"layers\" list"))?;
    for (i, entry) in entries.iter().enumerate() {
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}: layer {i} has no \"name\""))?
            .to_string();
        let dims: Vec<usize> = entry
            .get("shape")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        let shape: [usize; 4] = dims
            .try_into()
            .map_err(|_| format!("{at}: layer {name}: \"shape\" is not [O, C, KH, KW]"))?;
        if shape.contains(&0) {
            return Err(format!("{at}: layer {name}: empty shape {shape:?}"));
        }
        let file = |key: &str| entry.get(key).and_then(Value::as_str);
        let mask = match file("mask") {
            Some(f) => read_array(dir, f, shape)?,
            None => vec![1.0; shape.iter().product()],
        };
        let weight = match file("weight") {
            Some(f) => Some(read_array(dir, f, shape)?),
            None => None,
        };
        layers.push(Layer {
            name,
            shape,
            mask,
            weight,
        });
    }
    let snapshots = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
                .count()
        })
        .unwrap_or(0);
    Ok(Export {
        dir: dir.to_path_buf(),
        step: index.get("step").and_then(Value::as_u64),
        epoch: index.get("epoch").and_then(Value::as_u64),
        // The run's label (older exports: none), else its mode.
        mode: index
            .get("label")
            .or_else(|| settings.and_then(|s| s.get("label").or_else(|| s.get("mode"))))
            .and_then(Value::as_str)
            .map(str::to_string),
        // Settings may hold numbers as numbers or as their CLI text.
        seed: settings.and_then(|s| s.get("seed")).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
        }),
        layers,
        snapshots,
    })
}
