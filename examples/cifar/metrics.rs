//! The metrics file: one JSON object per line, appended and flushed as it
//! happens, so an interrupted or killed run keeps every line so far, and
//! several runs can share one file (the report reads them all).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use hebbsparse::config::{json_key, TrainConfig};
use serde_json::{Map, Value};

pub struct Metrics {
    file: Option<File>,
    path: PathBuf,
}

impl Metrics {
    /// Opens `path` for appending (made if missing); `None` writes nothing.
    pub fn open(path: Option<&Path>) -> Result<Metrics, String> {
        let file = match path {
            Some(p) if p.is_dir() => {
                return Err(format!(
                    "--metrics: {} is a directory, not a file",
                    p.display()
                ))
            }
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("--metrics: cannot open {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(Metrics {
            file,
            path: path.map(Path::to_path_buf).unwrap_or_default(),
        })
    }

    /// Appends one line. The line is written in one `write` call, so a full
    /// disk cannot leave half of it between two whole ones.
    pub fn line(&mut self, v: Value) -> Result<(), String> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let mut text = v.to_string();
        text.push('\n');
        f.write_all(text.as_bytes())
            .and_then(|_| f.flush())
            .map_err(|e| format!("cannot write metrics to {}: {e}", self.path.display()))
    }
}

/// The run's settings as JSON, keyed as [`json_key`] says, each a number, a
/// boolean or a string as its type is.
pub fn settings_json(config: &TrainConfig, train_len: usize) -> Map<String, Value> {
    config
        .settings(train_len)
        .into_iter()
        .map(|(k, v)| {
            let value = serde_json::from_str(&v.json()).unwrap_or(Value::String(v.to_string()));
            (json_key(k), value)
        })
        .collect()
}
