//! The report tests' fixtures: metrics files as the cifar example writes
//! them (two modes × two seeds, one run interrupted and resumed), export
//! folders, an XML well-formedness check, and the page's charts by title.
//!
//! `cargo test` builds the examples before it runs the tests, so the
//! report's binary sits beside the test binaries.

#![allow(dead_code)] // each test file uses its own part

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hebbsparse::tensor::npy::write_npy;
use hebbsparse::tensor::tensor::Tensor;

pub fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("report{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} missing: run through `cargo test`",
        bin.display()
    );
    bin
}

/// A run of `mode` and `seed` with only its epochs' test accuracies
/// (`accs`, fractions) and, if `finished`, its summary line; labelled
/// `label` if given.
pub fn epoch_run(
    mode: &str,
    seed: u64,
    label: Option<&str>,
    accs: &[f64],
    finished: bool,
) -> String {
    let label = label.map_or(String::new(), |l| format!(",\"label\":\"{l}\""));
    let mut s = format!("{{\"type\":\"config\",\"mode\":\"{mode}\"{label},\"seed\":{seed}}}\n");
    for (i, a) in accs.iter().enumerate() {
        s += &format!(
            "{{\"type\":\"epoch\",\"epoch\":{},\"step\":{},\"test_accuracy\":{a}}}\n",
            i + 1,
            100 * (i + 1)
        );
    }
    if finished {
        let last = accs.last().unwrap();
        s += &format!("{{\"type\":\"summary\",\"mode\":\"{mode}\",\"test_accuracy\":{last}}}\n");
    }
    s
}

/// A fresh folder for one test's files, kept after the run for inspection.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn report(args: &[&Path], extra: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .args(extra)
        .output()
        .unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small deterministic generator for fixture noise, in [0, 1).
pub struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        (hebbsparse::tensor::rng::splitmix64(&mut self.0) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub const STEPS_PER_EPOCH: u64 = 1000;
pub const EPOCHS: u64 = 3;

/// The metrics lines of one run as the cifar example writes them. With
/// `interrupt_at`, the run stops there and is resumed from the checkpoint
/// before it, repeating some steps.
pub fn run_lines(mode: &str, seed: u64, interrupt_at: Option<u64>) -> String {
    run_lines_with(
        mode,
        seed,
        interrupt_at,
        &[("conv1", 450.0), ("conv2", 2400.0)],
    )
}

/// [`run_lines`] for sparse layers of the given names and sizes.
pub fn run_lines_with(
    mode: &str,
    seed: u64,
    interrupt_at: Option<u64>,
    layers: &[(&str, f64)],
) -> String {
    let mut noise = Noise(seed * 7919 + mode.len() as u64);
    let sparse = mode != "dense";
    let skill = if mode == "hebbian" { 0.44 } else { 0.40 };
    let config = |resumed: bool| {
        format!(
            r#"{{"type":"config","mode":"{mode}","seed":{seed},"epochs":{EPOCHS},"batch_size":4,"lr":0.001,"momentum":0.9,"train_images":4000,"test_images":1000,"resumed":{resumed}}}"#
        )
    };
    let mut out = config(false) + "\n";
    let mut step = 250;
    let mut resumed = false;
    while step <= EPOCHS * STEPS_PER_EPOCH {
        if Some(step) == interrupt_at && !resumed {
            // Killed here; the checkpoint was 500 steps earlier.
            resumed = true;
            out += &config(true);
            out.push('\n');
            step -= 500;
            continue;
        }
        let epoch = (step - 1) / STEPS_PER_EPOCH + 1;
        let loss = 1.25 + 1.05 * (-(step as f64) / 900.0).exp() + 0.08 * noise.next();
        let _ = writeln!(
            out,
            r#"{{"type":"log","epoch":{epoch},"batch":{},"step":{step},"loss":{loss:.6}}}"#,
            step - (epoch - 1) * STEPS_PER_EPOCH
        );
        if sparse && step % 500 == 0 {
            for &(layer, total) in layers {
                let target = (0.12f64 * total).round();
                let (dropped, regrown, revived) = if step == 500 {
                    (total - target, 0.0, 0.0)
                } else {
                    let d = (0.08 * target * (1.0 + noise.next())).round();
                    let rv = (0.3 * d * noise.next()).round();
                    (d, d - rv, rv)
                };
                let _ = writeln!(
                    out,
                    r#"{{"type":"progress","step":{step},"epoch":{epoch},"layer":"{layer}","kept":{},"revived":{revived},"regrown":{regrown},"dropped":{dropped},"reset":{},"active":{target},"total":{total}}}"#,
                    target - revived - regrown,
                    (regrown / 4.0).floor()
                );
            }
        }
        if step % STEPS_PER_EPOCH == 0 {
            let acc = skill * (1.0 - 0.5 / epoch as f64) + 0.02 * noise.next();
            let _ = writeln!(
                out,
                r#"{{"type":"epoch","epoch":{epoch},"step":{step},"test_accuracy":{acc:.4},"unknown_key":[1,2]}}"#
            );
        }
        step += 250;
    }
    out += r#"{"type":"checkpoint_saved","path":"x"}"#;
    out.push('\n');
    let acc = skill * (1.0 - 0.5 / EPOCHS as f64) + 0.02 * noise.next();
    let density = if sparse {
        format!("[{}]", vec!["0.12"; layers.len()].join(","))
    } else {
        "[]".to_string()
    };
    let _ = writeln!(
        out,
        r#"{{"type":"summary","mode":"{mode}","seed":{seed},"epochs":{EPOCHS},"batch_size":4,"steps":{},"test_accuracy":{acc:.4},"per_class_accuracy":[0.4,0.5,0.3,0.2,0.3,0.4,0.5,0.5,0.6,0.5],"conv_density":{density},"train_images_per_second":{:.1},"eval_images_per_second":20000.0,"train_seconds":{:.2}}}"#,
        EPOCHS * STEPS_PER_EPOCH,
        5900.0 + 300.0 * noise.next(),
        17.0 + noise.next()
    );
    out
}

/// Writes hebbian.jsonl (both seeds in sequence, seed 1 interrupted and
/// resumed) and random.jsonl into `dir`.
pub fn write_metrics(dir: &Path) -> Vec<PathBuf> {
    let hebbian = dir.join("hebbian.jsonl");
    let random = dir.join("random.jsonl");
    std::fs::write(
        &hebbian,
        run_lines("hebbian", 0, None) + &run_lines("hebbian", 1, Some(1500)),
    )
    .unwrap();
    std::fs::write(
        &random,
        run_lines("random", 0, None) + &run_lines("random", 1, None),
    )
    .unwrap();
    vec![hebbian, random]
}

/// An export folder like `--export DIR` writes: conv1 [6,3,5,5] and conv2
/// [16,6,5,5] with about 12% of taps active, the centre taps more often.
pub fn write_export(dir: &Path) {
    write_export_of(dir, &[("conv1", [6, 3, 5, 5]), ("conv2", [16, 6, 5, 5])]);
}

/// An export of the given layers (square kernels), the centre taps active
/// more often.
pub fn write_export_of(dir: &Path, shapes: &[(&str, [usize; 4])]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut noise = Noise(42);
    let mut layers = Vec::new();
    for &(name, shape) in shapes {
        let n: usize = shape.iter().product();
        let k = shape[3];
        let mid = (k / 2) as i32;
        let mut mask = vec![0f32; n];
        let mut weight = vec![0f32; n];
        for i in 0..n {
            let (ki, kj) = ((i / k) % k, i % k);
            let centre = 2 * mid - (ki as i32 - mid).abs() - (kj as i32 - mid).abs();
            let p = 0.04 + 0.05 * centre.max(0) as f64;
            mask[i] = f32::from(noise.next() < p);
            weight[i] = (noise.next() - 0.5) as f32 * 0.4;
        }
        for (kind, values) in [("weight", &weight), ("mask", &mask), ("strength", &weight)] {
            let t = Tensor::from_vec(values.clone(), &shape);
            write_npy(dir.join(format!("{name}.{kind}.npy")), &t).unwrap();
        }
        let density = mask.iter().sum::<f32>() / n as f32;
        layers.push(format!(
            r#"{{"name":"{name}","shape":{shape:?},"density":{density},"weight":"{name}.weight.npy","mask":"{name}.mask.npy","strength":"{name}.strength.npy"}}"#
        ));
    }
    let index = format!(
        r#"{{"step":3000,"epoch":3,"settings":{{"mode":"hebbian","seed":"0","epochs":"3"}},"layers":[{}]}}"#,
        layers.join(",")
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
}

/// Checks that `xml` is one well-formed element: tags balance and nest,
/// attributes are quoted and unique, `&` starts a known entity, no stray `<`.
pub fn check_well_formed(xml: &str) -> Result<(), String> {
    fn check_entities(text: &str) -> Result<(), String> {
        let mut rest = text;
        while let Some(i) = rest.find('&') {
            rest = &rest[i + 1..];
            let end = rest.find(';').ok_or("'&' without ';'")?;
            let name = &rest[..end];
            let ok = matches!(name, "amp" | "lt" | "gt" | "quot" | "apos")
                || name
                    .strip_prefix("#x")
                    .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
                || name
                    .strip_prefix('#')
                    .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(format!("unknown entity &{name};"));
            }
        }
        Ok(())
    }
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
            && s.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
    };
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut rest = xml.trim();
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            check_entities(rest)?;
            if !stack.is_empty() || rest.trim().is_empty() {
                break;
            }
            return Err(format!("text outside the root: {rest:.40}"));
        };
        let text = &rest[..lt];
        check_entities(text)?;
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("text outside the root: {text:.40}"));
        }
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unclosed comment")?;
            rest = &after[end + 3..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("</") {
            let end = after.find('>').ok_or("unclosed end tag")?;
            let name = after[..end].trim_end();
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            rest = &after[end + 1..];
            continue;
        }
        // A start tag: name, then name="value" pairs, then > or />.
        let body = &rest[1..];
        let name_end = body
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .ok_or("unclosed start tag")?;
        let name = &body[..name_end];
        if !is_name(name) {
            return Err(format!("bad tag name {name:?}"));
        }
        if stack.is_empty() {
            roots += 1;
            if roots > 1 {
                return Err("more than one root element".into());
            }
        }
        let mut attrs = &body[name_end..];
        let mut seen = Vec::new();
        loop {
            attrs = attrs.trim_start();
            if let Some(after) = attrs.strip_prefix("/>") {
                rest = after;
                break;
            }
            if let Some(after) = attrs.strip_prefix('>') {
                stack.push(name);
                rest = after;
                break;
            }
            let eq = attrs
                .find('=')
                .ok_or(format!("<{name}>: attribute without '='"))?;
            let attr = attrs[..eq].trim();
            if !is_name(attr) {
                return Err(format!("<{name}>: bad attribute name {attr:?}"));
            }
            if seen.contains(&attr) {
                return Err(format!("<{name}>: duplicate attribute {attr}"));
            }
            seen.push(attr);
            let value = attrs[eq + 1..].trim_start();
            let quote = value
                .chars()
                .next()
                .filter(|&q| q == '"' || q == '\'')
                .ok_or(format!("<{name}>: unquoted value of {attr}"))?;
            let close = value[1..]
                .find(quote)
                .ok_or(format!("<{name}>: unterminated value of {attr}"))?;
            let v = &value[1..1 + close];
            if v.contains('<') {
                return Err(format!("<{name}>: '<' in the value of {attr}"));
            }
            check_entities(v)?;
            attrs = &value[close + 2..];
        }
    }
    match (stack.last(), roots) {
        (Some(open), _) => Err(format!("<{open}> never closed")),
        (None, 0) => Err("no element".into()),
        _ => Ok(()),
    }
}

/// Every `<svg …>…</svg>` block of the page, in order.
pub fn svg_blocks(html: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..].find("</svg>").expect("<svg> without </svg>") + start + 6;
        blocks.push(&rest[start..end]);
        rest = &rest[end..];
    }
    blocks
}

/// The page of `files` (and `extra` options) as a string; the run must
/// succeed.
pub fn page_of(dir: &Path, files: &[PathBuf], extra: &[&str]) -> (String, Output) {
    let html_path = dir.join("r.html");
    let out = Command::new(example())
        .args(files)
        .args(extra)
        .arg("-o")
        .arg(&html_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    (std::fs::read_to_string(&html_path).unwrap(), out)
}

/// The `<svg>` block of `html` titled `title`.
pub fn chart<'a>(html: &'a str, title: &str) -> &'a str {
    let needle = format!("<title>{title}</title>");
    svg_blocks(html)
        .into_iter()
        .find(|b| b.contains(&needle))
        .unwrap_or_else(|| panic!("no chart titled {title:?}"))
}

/// The y tick labels of a chart: the texts right-aligned left of the axis.
pub fn y_ticks(svg: &str) -> Vec<String> {
    svg.split(r#"text-anchor="end">"#)
        .skip(1)
        .filter_map(|t| t.split_once("</text>").map(|(v, _)| v.to_string()))
        .filter(|v| v.parse::<f64>().is_ok())
        .collect()
}
