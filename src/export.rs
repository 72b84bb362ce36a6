//! Export of the sparse layers for study outside Rust: each DSConv2d's
//! weights, mask and accumulated strength as `.npy`, and an `index.json`
//! naming the files with their shapes and the run's settings.
//!
//! ```text
//! DIR/index.json            {"step", "epoch", "settings": {...}, "layers": [...]}
//! DIR/LAYER.weight.npy      (O, C, KH, KW) float32
//! DIR/LAYER.mask.npy        (O, C, KH, KW) float32, 1 = active
//! DIR/LAYER.strength.npy    (O, C, KH, KW) float32, accumulated since the last update
//! ```
//!
//! LAYER is the sparse layer's name in the model (`conv1` in the LeNet,
//! `layer2.0.conv1` in a ResNet).
//!
//! In numpy:
//!
//! ```text
//! import json, numpy as np
//! idx = json.load(open("DIR/index.json"))
//! for layer in idx["layers"]:
//!     mask = np.load("DIR/" + layer["mask"])
//!     print(layer["name"], mask.shape, mask.mean())
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sparse_conv::DSConv2d;
use tensor::npy::encode_npy;

use crate::config::{json_key, Setting};

/// The sub-folder of `dir` that an export at a mask update goes to.
pub fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:09}"))
}

/// Checks, before a run starts, that `dir` is or can be made a folder we can
/// write to. It is created if missing.
pub fn check_export_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "--export {}: it exists and is not a folder",
            dir.display()
        ));
    }
    fs::create_dir_all(dir)
        .map_err(|e| format!("--export {}: cannot create the folder: {e}", dir.display()))?;
    let probe = dir.join(".write-test");
    fs::write(&probe, b"")
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("--export {}: cannot write there: {e}", dir.display()))
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `layers` (named by `names`) to `dir`, with an index that records
/// `settings` (option, value) and the position in training. Files are
/// written whole and renamed into place, so a reader never sees half a file.
pub fn export_layers(
    dir: &Path,
    names: &[&str],
    layers: &[&DSConv2d],
    settings: &[(&str, Setting)],
    step: u64,
    epoch: usize,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut entries = Vec::new();
    for (name, layer) in names.iter().zip(layers) {
        let w = layer.weight();
        let shape = w.shape().to_vec();
        let mask: Vec<f32> = layer.mask().iter().map(|&m| m as u8 as f32).collect();
        let strength: Vec<f32> = layer.strength().iter().map(|&s| s as f32).collect();
        let files = [
            ("weight", w.to_vec()),
            ("mask", mask),
            ("strength", strength),
        ];
        for (what, data) in &files {
            write_whole(
                &dir.join(format!("{name}.{what}.npy")),
                &encode_npy(data, &shape),
            )?;
        }
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{{\"name\": {}, \"shape\": [{}], \"density\": {:.6}, \"active\": {}, \"weight\": {}, \"mask\": {}, \"strength\": {}, \"strength_samples\": {}}}",
            json_str(name),
            dims.join(", "),
            layer.density(),
            layer.active(),
            json_str(&format!("{name}.weight.npy")),
            json_str(&format!("{name}.mask.npy")),
            json_str(&format!("{name}.strength.npy")),
            layer.strength_samples()
        ));
    }
    let settings: Vec<String> = settings
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(&json_key(k)), v.json()))
        .collect();
    let index = format!(
        "{{\"step\": {step}, \"epoch\": {epoch}, \"settings\": {{{}}}, \"layers\": [{}]}}\n",
        settings.join(", "),
        entries.join(", ")
    );
    write_whole(&dir.join("index.json"), index.as_bytes())
}

fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = crate::checkpoint::tmp_path(path);
    let result = fs::write(&tmp, bytes).and_then(|_| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
