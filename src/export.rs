//! Export of the sparse layers for study outside Rust: each DSConv2d's
//! weights, mask and Hebbian strength as `.npy`, and an `index.json`
//! naming the files with their shapes and the run's settings; and the way
//! back in, a mask made elsewhere loaded from such files ([`load_masks`]).
//!
//! ```text
//! DIR/index.json            {"step", "epoch", "label", "settings": {...}, "layers": [...]}
//! DIR/LAYER.weight.npy      (O, C, KH, KW) float32
//! DIR/LAYER.mask.npy        (O, C, KH, KW) float32, 1 = active
//! DIR/LAYER.strength.npy    (O, C, KH, KW) float32, Hebbian strength (below)
//! DIR/step-NNNNNNNNN/…      the same, right after the mask update at that step
//! ```
//!
//! LAYER is the sparse layer's name in the model (`conv1` in the LeNet,
//! `layer2.0.conv1` in a ResNet). The strength is what the layer has
//! accumulated since its last update; where it has accumulated nothing yet
//! (an export right after an update, or after the update window closed), it
//! is the strength the last update read, the one that decided it. Each
//! layer's entry in the index says which (`"strength_of"`: `"accumulating"`
//! or `"last update"`) and over how many sampled passes.
//!
//! An export is written into a temporary folder and moved into place, with
//! the index last, so a reader never finds an index that names files not
//! yet written. A folder that holds an export of a run with other settings
//! is refused before the run starts, unless the user asks to clear it.
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

use sparse_conv::{DSConv2d, Model};
use tensor::npy::{encode_npy, read_npy};
use tensor::optim::Sgd;

use crate::config::{json_key, Setting};

/// The sub-folder of `dir` that an export at a mask update goes to.
pub fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:09}"))
}

/// The `"settings": {…}` member of an index, exactly as [`export_layers`]
/// writes it.
fn settings_member(settings: &[(&str, Setting)]) -> String {
    let items: Vec<String> = settings
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(&json_key(k)), v.json()))
        .collect();
    format!("\"settings\": {{{}}}", items.join(", "))
}

/// The index files of the exports in `dir`: its own and its step folders'.
fn indexes(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    if dir.join("index.json").is_file() {
        found.push(dir.join("index.json"));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("step-") && e.path().join("index.json").is_file() {
                found.push(e.path().join("index.json"));
            }
        }
    }
    found.sort();
    found
}

/// Removes what an export writes in `dir`: its index and `.npy` files and
/// its step folders. Nothing else.
fn clear_export(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with("step-") && path.is_dir() {
            fs::remove_dir_all(&path)?;
        } else if name == "index.json" || name.ends_with(".npy") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Checks, before any data is loaded, that `dir` is or can be made a
/// folder we can write to. It is created if missing.
pub fn check_export_dir(dir: &Path) -> Result<(), String> {
    let at = |what: String| format!("--export {}: {what}", dir.display());
    if dir.exists() && !dir.is_dir() {
        return Err(at("it exists and is not a folder".into()));
    }
    fs::create_dir_all(dir).map_err(|e| at(format!("cannot create the folder: {e}")))?;
    let probe = dir.join(".write-test");
    fs::write(&probe, b"")
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| at(format!("cannot write there: {e}")))
}

/// Checks, before the run trains, that `dir` holds no export of a run with
/// other settings than `settings` (an earlier export of this run, resumed,
/// is fine). With `clear`, any export there is removed first.
pub fn claim_export_dir(
    dir: &Path,
    settings: &[(&str, Setting)],
    clear: bool,
) -> Result<(), String> {
    let at = |what: String| format!("--export {}: {what}", dir.display());
    if clear {
        return clear_export(dir).map_err(|e| at(format!("cannot clear it: {e}")));
    }
    let ours = settings_member(settings);
    for index in indexes(dir) {
        let text = fs::read_to_string(&index).unwrap_or_default();
        if !text.contains(&ours) {
            return Err(at(format!(
                "it holds the export of a run with other settings ({}); choose another \
                 folder, or add --export-clear to remove that export",
                index.display()
            )));
        }
    }
    Ok(())
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

/// The strength an export writes for `layer`, which it is, and over how
/// many passes (see the module docs).
fn strength_of(layer: &DSConv2d) -> (Vec<f32>, &'static str, u64) {
    let (decided, decided_samples) = layer.decided_strength();
    if layer.strength_samples() == 0 && !decided.is_empty() {
        let s = decided.iter().map(|&s| s as f32).collect();
        (s, "last update", decided_samples)
    } else {
        let s = layer.strength().iter().map(|&s| s as f32).collect();
        (s, "accumulating", layer.strength_samples())
    }
}

/// Writes `layers` (named by `names`) to `dir`, with an index that records
/// `settings` (option, value) and the position in training. The files are
/// made in a temporary folder inside `dir`'s parent folder (or inside `dir`
/// itself when `dir` exists) and moved into place, the index last.
pub fn export_layers(
    dir: &Path,
    names: &[&str],
    layers: &[&DSConv2d],
    (settings, label): (&[(&str, Setting)], &str),
    step: u64,
    epoch: usize,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(".export.tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let result = write_export(&tmp, names, layers, (settings, label), step, epoch)
        .and_then(|files| move_into(&tmp, dir, &files));
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// Writes the files into `tmp`; returns their names, the index last.
fn write_export(
    tmp: &Path,
    names: &[&str],
    layers: &[&DSConv2d],
    (settings, label): (&[(&str, Setting)], &str),
    step: u64,
    epoch: usize,
) -> io::Result<Vec<String>> {
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for (name, layer) in names.iter().zip(layers) {
        let w = layer.weight();
        let shape = w.shape().to_vec();
        let mask: Vec<f32> = layer.mask().iter().map(|&m| m as u8 as f32).collect();
        let (strength, source, samples) = strength_of(layer);
        for (what, data) in [
            ("weight", w.to_vec()),
            ("mask", mask),
            ("strength", strength),
        ] {
            let file = format!("{name}.{what}.npy");
            fs::write(tmp.join(&file), encode_npy(&data, &shape))?;
            files.push(file);
        }
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{{\"name\": {}, \"shape\": [{}], \"density\": {:.6}, \"active\": {}, \"weight\": {}, \"mask\": {}, \"strength\": {}, \"strength_of\": {}, \"strength_samples\": {samples}}}",
            json_str(name),
            dims.join(", "),
            layer.density(),
            layer.active(),
            json_str(&format!("{name}.weight.npy")),
            json_str(&format!("{name}.mask.npy")),
            json_str(&format!("{name}.strength.npy")),
            json_str(source),
        ));
    }
    let index = format!(
        "{{\"step\": {step}, \"epoch\": {epoch}, \"label\": {}, {}, \"layers\": [{}]}}\n",
        json_str(label),
        settings_member(settings),
        entries.join(", ")
    );
    fs::write(tmp.join("index.json"), index)?;
    files.push("index.json".into());
    Ok(files)
}

/// Moves `files` from `tmp` into `dir`, in order.
fn move_into(tmp: &Path, dir: &Path, files: &[String]) -> io::Result<()> {
    for f in files {
        fs::rename(tmp.join(f), dir.join(f))?;
    }
    Ok(())
}

/// Loads a mask for every sparse layer of `model` from `dir`, as an export
/// writes them (`LAYER.mask.npy`, 1 = active, the weight's shape), and sets
/// it with [`DSConv2d::set_mask`]: weights (and their momentum in `opt`)
/// become zero at inactive taps. A missing file or a wrong shape is an
/// error naming the file. Returns the overall density loaded.
pub fn load_masks(dir: &Path, model: &mut dyn Model, opt: &mut Sgd) -> Result<f64, String> {
    let (mut active, mut total) = (0usize, 0usize);
    for (name, layer) in model.sparse_layers_mut() {
        let path = dir.join(format!("{name}.mask.npy"));
        let t = read_npy(&path).map_err(|e| format!("--mask: {}: {e}", path.display()))?;
        if t.shape() != layer.weight().shape() {
            return Err(format!(
                "--mask: {} has shape {:?}, the layer {name} has weights of shape {:?}",
                path.display(),
                t.shape(),
                layer.weight().shape()
            ));
        }
        let mask: Vec<bool> = t.data().iter().map(|&v| v != 0.0).collect();
        active += mask.iter().filter(|&&m| m).count();
        total += mask.len();
        layer
            .set_mask(mask, Some(&mut *opt))
            .map_err(|e| format!("--mask: {name}: {e}"))?;
    }
    Ok(active as f64 / total.max(1) as f64)
}
