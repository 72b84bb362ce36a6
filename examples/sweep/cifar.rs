//! The cifar example as the sweep sees it: where its binary is, which
//! options it takes (read from its `--help`, so that a misspelt key fails
//! before any run starts, not in each of a hundred runs), and how a grid
//! value becomes its options.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::grid::Grid;

/// What follows an option on the command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arity {
    /// A switch such as `--sparse-stem`: on when given, off when not.
    Switch,
    /// A value that must follow, as in `--mode set`.
    Value,
    /// A value that may follow, as in `--augment` or `--augment false`.
    OptionalValue,
}

/// Options the sweep gives each run itself, and why none can be given to it.
const OWNED: [(&str, &str); 7] = [
    ("metrics", "each run writes DIR/runs/NAME/metrics.jsonl"),
    ("checkpoint", "each run saves DIR/runs/NAME/checkpoint.ckpt"),
    ("resume", "the sweep resumes a run from its own checkpoint"),
    ("label", "the sweep labels each run with its grid values"),
    ("export", "every run would write the same folder"),
    ("help", "a run would only print its help"),
    ("version", "a run would only print its version"),
];

/// The cifar binary and the long options it takes.
pub struct Cifar {
    options: BTreeMap<String, Arity>,
    /// alias → the option it stands for (`total-fraction` → `density`).
    aliases: BTreeMap<String, String>,
}

/// The cifar binary: `--cifar PATH`, else the one beside this executable
/// (cargo builds both into the same `examples/` folder).
pub fn locate(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable's folder ({e}); give --cifar PATH"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!("cifar{}", std::env::consts::EXE_SUFFIX)))
}

impl Cifar {
    /// Runs `cifar --help` and reads its options.
    pub fn read(path: &Path) -> Result<Cifar, String> {
        let out = Command::new(path).arg("--help").output().map_err(|e| {
            format!(
                "cannot run the cifar example at {}: {e}; build it with `cargo build \
                 --release --examples`, or give its path with --cifar",
                path.display()
            )
        })?;
        let help = String::from_utf8_lossy(&out.stdout);
        let cifar = parse_help(&help);
        if !out.status.success() || !cifar.options.contains_key("mode") {
            return Err(format!(
                "{} --help did not list the cifar example's options; is it the cifar \
                 example? (give its path with --cifar)",
                path.display()
            ));
        }
        Ok(cifar)
    }

    /// The option a name stands for: itself, or the option it is an alias of.
    fn canonical<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.options.contains_key(name) {
            return Some(name);
        }
        self.aliases.get(name).map(String::as_str)
    }

    /// A name as an option the sweep accepts from the user, or why not.
    fn accept<'a>(&'a self, name: &'a str, place: &str) -> Result<(&'a str, Arity), String> {
        let Some(canon) = self.canonical(name) else {
            return Err(format!(
                "{place}: the cifar example has no option --{name} (see its --help)"
            ));
        };
        if let Some((_, why)) = OWNED
            .iter()
            .find(|(o, _)| canon == *o || canon.starts_with(&format!("{o}-")))
        {
            return Err(format!(
                "{place}: --{name} is set by the sweep, not by you ({why})"
            ));
        }
        Ok((canon, self.options[canon]))
    }

    /// Checks every key of the grid, and that a switch takes only true and
    /// false.
    pub fn check_grid(&self, grid: &Grid) -> Result<(), String> {
        let mut seen: Vec<&str> = Vec::new();
        for axis in &grid.axes {
            let (canon, arity) = self.accept(&axis.key, "--grid")?;
            if seen.contains(&canon) {
                return Err(format!(
                    "--grid: --{} and one of its aliases are both keys",
                    canon
                ));
            }
            seen.push(canon);
            if arity == Arity::Switch {
                if let Some(v) = axis
                    .values
                    .iter()
                    .find(|v| !matches!(v.as_str(), "true" | "false"))
                {
                    return Err(format!(
                        "--grid: --{} is a switch, so its values are true (given) and false \
                         (left out), not '{v}'",
                        axis.key
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the options given to every run: each a cifar option, none of
    /// those the sweep sets, none also a key of the grid.
    pub fn check_base(&self, base: &[String], grid: &Grid) -> Result<(), String> {
        let place = "the options after --";
        let keys: Vec<&str> = grid
            .axes
            .iter()
            .filter_map(|a| self.canonical(&a.key))
            .collect();
        let mut i = 0;
        while i < base.len() {
            let token = &base[i];
            i += 1;
            let Some(long) = token.strip_prefix("--") else {
                return Err(format!(
                    "{place}: '{token}' is not an option (each is --NAME, then its value \
                     if it takes one)"
                ));
            };
            let (name, inline_value) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let (canon, arity) = self.accept(name, place)?;
            if keys.contains(&canon) {
                return Err(format!(
                    "{place}: --{name} is also a key of the grid; give it in one place"
                ));
            }
            let next_is_value = base.get(i).is_some_and(|n| !n.starts_with("--"));
            match arity {
                _ if inline_value => {}
                Arity::Value if base.get(i).is_none() => {
                    return Err(format!("{place}: --{name} needs a value"));
                }
                Arity::Value => i += 1,
                Arity::OptionalValue if next_is_value => i += 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// The cifar options one grid value makes: `--key value`, or for a
    /// switch `--key` when true and nothing when false.
    pub fn grid_args(&self, key: &str, value: &str) -> Vec<String> {
        let arity = self
            .canonical(key)
            .and_then(|c| self.options.get(c).copied());
        match (arity, value) {
            (Some(Arity::Switch), "true") => vec![format!("--{key}")],
            (Some(Arity::Switch), _) => Vec::new(),
            _ => vec![format!("--{key}"), value.to_string()],
        }
    }
}

/// Reads the long options out of clap's help: a line that starts (indented
/// less than a description) with `-x, --name` or `--name`, then ` <VALUE>`,
/// ` [<VALUE>]` or nothing; and the `[alias: --other]` or `[aliases: ...]`
/// of the option last named.
fn parse_help(help: &str) -> Cifar {
    let mut options = BTreeMap::new();
    let mut aliases = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        if indent < 8 && text.starts_with('-') {
            // `-h, --help`: the long name follows the short one.
            let long = match text.find("--") {
                Some(at) if text[..at].trim_end().ends_with(',') || at == 0 => &text[at + 2..],
                _ => continue,
            };
            let end = long
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(long.len());
            let (name, rest) = long.split_at(end);
            let arity = if rest.starts_with(" <") {
                Arity::Value
            } else if rest.starts_with(" [<") {
                Arity::OptionalValue
            } else {
                Arity::Switch
            };
            options.insert(name.to_string(), arity);
            current = Some(name.to_string());
        }
        for tag in ["[alias: ", "[aliases: "] {
            let Some(at) = line.find(tag) else { continue };
            let list = &line[at + tag.len()..];
            let list = &list[..list.find(']').unwrap_or(list.len())];
            if let Some(option) = &current {
                for alias in list.split(',') {
                    let alias = alias.trim().trim_start_matches('-');
                    aliases.insert(alias.to_string(), option.clone());
                }
            }
        }
    }
    Cifar { options, aliases }
}
