//! The grid: `key=v1,v2,...` words, each a cifar option and the values it
//! takes, and the runs they make (the cartesian product), each with a name
//! and a label.
//!
//! The order of the runs is fixed: the keys as written, the first varying
//! slowest and the last fastest, like nested loops. `mode=static,set
//! seed=0,1` gives `mode-static_seed-0`, `mode-static_seed-1`,
//! `mode-set_seed-0`, `mode-set_seed-1`, and a run's place in that order is
//! its Slurm array index.

use std::collections::BTreeSet;

/// One key of the grid and the values it takes, in the order written.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// The grid as written: its keys in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub axes: Vec<Axis>,
}

/// One point of the grid: a value for each key, in the grid's key order.
pub type Point = Vec<(String, String)>;

/// The longest run name; a file name has at most 255 bytes on common file
/// systems, and the name is also part of every path of the run.
const MAX_NAME: usize = 200;

impl Grid {
    /// Parses `--grid` words. Each argument may hold several words separated
    /// by white space, so `--grid 'mode=a,b seed=0,1'` and `--grid mode=a,b
    /// --grid seed=0,1` are the same grid.
    pub fn parse(specs: &[String]) -> Result<Grid, String> {
        let mut axes: Vec<Axis> = Vec::new();
        for word in specs.iter().flat_map(|s| s.split_whitespace()) {
            let axis = parse_word(word)?;
            if axes.iter().any(|a| a.key == axis.key) {
                return Err(format!(
                    "--grid: the key '{}' is given twice; list all its values once, \
                     as {}=A,B,...",
                    axis.key, axis.key
                ));
            }
            axes.push(axis);
        }
        if axes.is_empty() {
            return Err("--grid is empty: give at least one KEY=V1,V2,... word".into());
        }
        Ok(Grid { axes })
    }

    /// The grid written back as one `--grid` argument.
    pub fn spec(&self) -> String {
        let words: Vec<String> = self
            .axes
            .iter()
            .map(|a| format!("{}={}", a.key, a.values.join(",")))
            .collect();
        words.join(" ")
    }

    /// Every point of the grid, in the fixed order (the last key fastest).
    pub fn points(&self) -> Vec<Point> {
        let mut points: Vec<Point> = vec![Vec::new()];
        for axis in &self.axes {
            points = points
                .into_iter()
                .flat_map(|p| {
                    axis.values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.push((axis.key.clone(), v.clone()));
                        q
                    })
                })
                .collect();
        }
        points
    }

    /// The names of all points, checked to be distinct and short enough.
    pub fn names(&self) -> Result<Vec<String>, String> {
        let points = self.points();
        let names: Vec<String> = points.iter().map(name).collect();
        for (i, n) in names.iter().enumerate() {
            if n.len() > MAX_NAME {
                return Err(format!(
                    "--grid: the run name {n} is longer than {MAX_NAME} characters; \
                     use shorter values"
                ));
            }
            if let Some(j) = names[..i].iter().position(|m| m == n) {
                return Err(format!(
                    "--grid: the values {} and {} both give the run name {n} (each \
                     character other than letters, digits, '.', '+' and '-' becomes '-')",
                    describe(&points[j]),
                    describe(&points[i])
                ));
            }
        }
        Ok(names)
    }
}

/// One `key=v1,v2` word.
fn parse_word(word: &str) -> Result<Axis, String> {
    let Some((key, list)) = word.split_once('=') else {
        return Err(format!(
            "--grid: '{word}' is not KEY=V1,V2,... (a cifar option without its '--', \
             an '=', and its values separated by commas)"
        ));
    };
    if let Some(bare) = key.strip_prefix('-') {
        return Err(format!(
            "--grid: write the key '{key}' without dashes, as {}={list}",
            bare.trim_start_matches('-')
        ));
    }
    let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !key_ok {
        return Err(format!(
            "--grid: '{key}' in '{word}' is not an option name (lower-case letters, \
             digits and '-', as in batch-size)"
        ));
    }
    let values: Vec<String> = list.split(',').map(str::to_string).collect();
    if values.iter().any(String::is_empty) {
        return Err(format!(
            "--grid: '{word}' has an empty value; give {key}=V1,V2,... with no empty \
             item between the commas"
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(v) = values.iter().find(|v| !seen.insert(v.as_str())) {
        return Err(format!("--grid: '{word}' lists the value '{v}' twice"));
    }
    Ok(Axis {
        key: key.to_string(),
        values,
    })
}

/// A value made safe for a file name: letters, digits, '.', '+' and '-'
/// stay, anything else (a '/' in a path, a space) becomes '-'.
fn safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A run's name: `key-value` for each key, joined by '_', as in
/// `mode-set_seed-1`. It names the run's folder, so it is safe for a file
/// name (and never `.` or `..`, since a key starts it).
pub fn name(point: &Point) -> String {
    let parts: Vec<String> = point
        .iter()
        .map(|(k, v)| format!("{k}-{}", safe(v)))
        .collect();
    parts.join("_")
}

/// A run's label for the report, which groups runs by it: the grid's
/// values other than the seed (`mode=set density=0.1`), so that the seeds
/// of one configuration form one group. `None` when the seed is the only
/// key: every run is then the same configuration, and the cifar example's
/// own label (the mode) serves.
pub fn label(point: &Point) -> Option<String> {
    let parts: Vec<String> = point
        .iter()
        .filter(|(k, _)| k != "seed")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// A point as `key=value` words, for messages.
fn describe(point: &Point) -> String {
    let parts: Vec<String> = point.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(" ")
}
