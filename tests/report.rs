//! The report example end to end: fixture metrics files (two modes × two
//! seeds, one run interrupted and resumed) and a fixture export folder go in,
//! one HTML page comes out, and every chart in it must be well-formed XML
//! with the expected titles and kernel counts. Then the bad inputs: a missing
//! file, a malformed line, no runs, bad options.
//!
//! `cargo test` builds the examples before it runs the tests, so the binary
//! sits beside the test binaries.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hebbsparse::tensor::npy::write_npy;
use hebbsparse::tensor::tensor::Tensor;

fn example() -> PathBuf {
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

/// A fresh folder for one test's files, kept after the run for inspection.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn report(args: &[&Path], extra: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small deterministic generator for fixture noise, in [0, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        (hebbsparse::tensor::rng::splitmix64(&mut self.0) >> 11) as f64 / (1u64 << 53) as f64
    }
}

const STEPS_PER_EPOCH: u64 = 1000;
const EPOCHS: u64 = 3;

/// The metrics lines of one run as the cifar example writes them. With
/// `interrupt_at`, the run stops there and is resumed from the checkpoint
/// before it, repeating some steps.
fn run_lines(mode: &str, seed: u64, interrupt_at: Option<u64>) -> String {
    run_lines_with(
        mode,
        seed,
        interrupt_at,
        &[("conv1", 450.0), ("conv2", 2400.0)],
    )
}

/// [`run_lines`] for sparse layers of the given names and sizes.
fn run_lines_with(
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
fn write_metrics(dir: &Path) -> Vec<PathBuf> {
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
fn write_export(dir: &Path) {
    write_export_of(dir, &[("conv1", [6, 3, 5, 5]), ("conv2", [16, 6, 5, 5])]);
}

/// An export of the given layers (square kernels), the centre taps active
/// more often.
fn write_export_of(dir: &Path, shapes: &[(&str, [usize; 4])]) {
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
fn check_well_formed(xml: &str) -> Result<(), String> {
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
fn svg_blocks(html: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..].find("</svg>").expect("<svg> without </svg>") + start + 6;
        blocks.push(&rest[start..end]);
        rest = &rest[end..];
    }
    blocks
}

#[test]
fn the_checker_rejects_broken_xml() {
    assert!(check_well_formed(r#"<svg a="1"><g><rect/></g><text>a &amp; b</text></svg>"#).is_ok());
    for bad in [
        "<svg><g></svg>",
        "<svg><text>a & b</text></svg>",
        "<svg><text>a < b</text></svg>",
        r#"<svg a=1></svg>"#,
        r#"<svg a="1" a="2"></svg>"#,
        r#"<svg a="x<y"></svg>"#,
        "<svg></svg><svg></svg>",
        "<svg>",
        "<svg></g>",
    ] {
        assert!(check_well_formed(bad).is_err(), "accepted {bad}");
    }
}

#[test]
fn a_report_of_two_modes_two_seeds_and_an_export() {
    let dir = scratch("full");
    let files = write_metrics(&dir);
    let export = dir.join("export");
    write_export(&export);
    let html_path = dir.join("report.html");
    let out = Command::new(example())
        .args(&files)
        .arg("--export")
        .arg(&export)
        .arg("-o")
        .arg(&html_path)
        .args(["--title", "Fixture <runs> & more"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(&html_path).unwrap();

    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<h1>Fixture &lt;runs&gt; &amp; more</h1>"));
    // Self-contained: nothing to fetch (the SVG namespace is a name, not a link).
    for outside in ["<script", "<link", "src=", "url(", "@import"] {
        assert!(!html.contains(outside), "the page has {outside}");
    }
    assert_eq!(
        html.matches("http").count(),
        html.matches("http://www.w3.org/2000/svg").count()
    );
    // The resumed run is one run, not two.
    assert!(html.contains("4 runs in 2 groups"), "{html:.600}");

    let blocks = svg_blocks(&html);
    for (i, svg) in blocks.iter().enumerate() {
        if let Err(e) = check_well_formed(svg) {
            panic!("<svg> block {i} is not well-formed XML: {e}\n{svg:.300}");
        }
    }
    let titled = |title: &str| -> &str {
        let needle = format!("<title>{title}</title>");
        blocks
            .iter()
            .find(|b| b.contains(&needle))
            .unwrap_or_else(|| panic!("no chart titled {title:?}"))
    };
    for title in [
        "Training loss",
        "Test accuracy per mode",
        "Test accuracy per epoch",
        "Connection changes: conv1 (hebbian)",
        "Connection changes: conv2 (hebbian)",
        "Connection changes: conv1 (random)",
        "Turnover (random)",
        "Turnover (hebbian)",
    ] {
        titled(title);
    }
    // A mean line and a min–max band per mode in the loss chart.
    let loss = titled("Training loss");
    assert_eq!(
        loss.matches("<polyline points").count(),
        2 + 1,
        "2 lines + axes"
    );
    assert_eq!(loss.matches("<polygon").count(), 2);
    // One bar per mode, one dot per seed.
    let bars = titled("Test accuracy per mode");
    assert_eq!(bars.matches("<title>seed ").count(), 4);

    let conv1 = titled("Active taps: conv1 (6×3 kernels of 5×5)");
    let conv2 = titled("Active taps: conv2 (16×6 kernels of 5×5)");
    assert_eq!(conv1.matches(r#"class="kernel""#).count(), 6 * 3);
    assert_eq!(conv2.matches(r#"class="kernel""#).count(), 16 * 6);
    assert_eq!(html.matches(r#"class="kernel""#).count(), 6 * 3 + 16 * 6);
    assert_eq!(
        titled("Tap frequency: conv1")
            .matches(r#"class="tap""#)
            .count(),
        25
    );
    assert_eq!(
        titled("Tap frequency: conv2")
            .matches(r#"class="tap""#)
            .count(),
        25
    );

    assert!(
        html.contains("hebbian, seed 0, epoch 3, step 3000"),
        "export header"
    );

    // The summary table: both modes, accuracy as mean ± std, density in %.
    assert!(html.contains("<th>test accuracy</th>"));
    assert!(html.contains("12.0% / 12.0%"), "conv density column");
    assert!(html.matches(" ± ").count() >= 2);
}

#[test]
fn labels_group_runs_and_are_escaped() {
    let dir = scratch("labels");
    let file = dir.join("m.jsonl");
    let lines = [
        r#"{"type":"config","mode":"hebbian","seed":0,"label":"k<2 & \"corr\""}"#,
        r#"{"type":"log","epoch":1,"batch":10,"step":10,"loss":2.2}"#,
        r#"{"type":"log","epoch":1,"batch":20,"step":20,"loss":null}"#,
        r#"{"type":"epoch","epoch":1,"step":20,"test_accuracy":0.2}"#,
        r#"{"type":"config","mode":"hebbian","seed":0}"#,
        r#"{"type":"log","epoch":1,"batch":10,"step":10,"loss":2.1}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let html_path = dir.join("r.html");
    let out = report(&[&file, Path::new("-o"), &html_path], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.contains("2 runs in 2 groups"));
    assert!(html.contains("k&lt;2 &amp; &quot;corr&quot;"));
    for svg in svg_blocks(&html) {
        check_well_formed(svg).unwrap();
    }
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(example()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in ["METRICS", "--export", "--output", "-o", "--title"] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn bad_usage_exits_with_code_2() {
    for args in [
        &[][..],
        &["--no-such-option", "m.jsonl"],
        &["m.jsonl", "--export"],
    ] {
        let out = Command::new(example()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("error"), "{args:?}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let dir = scratch("missing");
    let missing = dir.join("no-such.jsonl");
    let out = report(&[&missing, Path::new("-o"), &dir.join("r.html")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such.jsonl"), "{}", stderr(&out));
    assert!(!dir.join("r.html").exists());
}

#[test]
fn a_malformed_line_is_named_by_file_and_line() {
    let dir = scratch("malformed");
    let file = dir.join("bad.jsonl");
    let good = run_lines("hebbian", 0, None);
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(2, r#"{"type":"log","step":30,"loss":2.0"#);
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = report(&[&file, Path::new("-o"), &dir.join("r.html")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:3", file.display())), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Valid JSON, but a known line type missing what it needs.
    std::fs::write(&file, "{\"type\":\"log\",\"loss\":2.0}\n").unwrap();
    let out = report(&[&file, Path::new("-o"), &dir.join("r.html")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad.jsonl:1") && err.contains("step"), "{err}");
}

#[test]
fn no_runs_at_all_is_an_error() {
    let dir = scratch("empty");
    let file = dir.join("empty.jsonl");
    std::fs::write(
        &file,
        "{\"type\":\"config\",\"mode\":\"dense\",\"seed\":0}\n\n{\"type\":\"future\",\"x\":1}\n",
    )
    .unwrap();
    let out = report(&[&file, Path::new("-o"), &dir.join("r.html")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no runs"), "{}", stderr(&out));
}

#[test]
fn a_broken_export_names_the_file() {
    let dir = scratch("export");
    let files = write_metrics(&dir);
    let export = dir.join("export");
    write_export(&export);
    std::fs::remove_file(export.join("conv2.mask.npy")).unwrap();
    let out = report(
        &[
            &files[0],
            Path::new("--export"),
            &export,
            Path::new("-o"),
            &dir.join("r.html"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("conv2.mask.npy"), "{}", stderr(&out));
}

#[test]
fn svg_dir_writes_each_chart_as_a_standalone_file() {
    let dir = scratch("svgs");
    let files = write_metrics(&dir);
    let svgs = dir.join("svgs");
    let out = Command::new(example())
        .args(&files)
        .arg("-o")
        .arg(dir.join("r.html"))
        .arg("--svg-dir")
        .arg(&svgs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(dir.join("r.html")).unwrap();
    let names: Vec<String> = std::fs::read_dir(&svgs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), svg_blocks(&html).len(), "{names:?}");
    assert!(
        names.contains(&"training-loss.svg".to_string()),
        "{names:?}"
    );
    for n in &names {
        let svg = std::fs::read_to_string(svgs.join(n)).unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        check_well_formed(&svg).unwrap_or_else(|e| panic!("{n}: {e}"));
    }
}

/// The committed study: real metrics files and a real export, as the cifar
/// example wrote them.
#[test]
fn the_report_runs_on_the_committed_study() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/study");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("metrics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("notebook-")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 30, "10 modes × 3 seeds");
    let dir = scratch("study");
    let out = Command::new(example())
        .args(&files)
        .arg("--export")
        .arg(root.join("exports/notebook-hebbian-0"))
        .arg("-o")
        .arg(dir.join("study.html"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("30 runs in 10 groups, 1 export"));
    let html = std::fs::read_to_string(dir.join("study.html")).unwrap();
    let blocks = svg_blocks(&html);
    assert!(blocks.len() > 20, "{} charts", blocks.len());
    for svg in blocks {
        check_well_formed(svg).unwrap();
    }
}

/// The page of `files` (and `extra` options) as a string; the run must
/// succeed.
fn page_of(dir: &Path, files: &[PathBuf], extra: &[&str]) -> (String, Output) {
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
fn chart<'a>(html: &'a str, title: &str) -> &'a str {
    let needle = format!("<title>{title}</title>");
    svg_blocks(html)
        .into_iter()
        .find(|b| b.contains(&needle))
        .unwrap_or_else(|| panic!("no chart titled {title:?}"))
}

/// The y tick labels of a chart: the texts right-aligned left of the axis.
fn y_ticks(svg: &str) -> Vec<String> {
    svg.split(r#"text-anchor="end">"#)
        .skip(1)
        .filter_map(|t| t.split_once("</text>").map(|(v, _)| v.to_string()))
        .filter(|v| v.parse::<f64>().is_ok())
        .collect()
}

#[test]
fn a_torn_last_line_is_skipped_with_a_warning() {
    let dir = scratch("torn");
    let file = dir.join("torn.jsonl");
    let good = run_lines("hebbian", 0, None);
    let lines = good.lines().count();
    // A run killed mid-write: the last line stops halfway, with or without
    // a newline after it.
    for tail in ["", "\n"] {
        std::fs::write(
            &file,
            format!("{good}{{\"type\":\"log\",\"epoch\":3,\"st{tail}"),
        )
        .unwrap();
        let (html, out) = page_of(&dir, std::slice::from_ref(&file), &[]);
        let err = stderr(&out);
        assert!(err.contains("warning"), "{err}");
        assert!(err.contains(&format!("torn.jsonl:{}", lines + 1)), "{err}");
        assert!(html.contains("1 run in 1 group"), "{html:.400}");
    }
    // The same line anywhere but last is still an error.
    std::fs::write(&file, format!("{{\"type\":\"log\",\"st\n{good}")).unwrap();
    let out = report(&[&file, Path::new("-o"), &dir.join("r.html")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("torn.jsonl:1"), "{}", stderr(&out));
}

#[test]
fn many_groups_turn_their_labels_and_few_do_not() {
    let dir = scratch("labels-turned");
    let modes = [
        "dense",
        "hebbian",
        "hebbian-grow",
        "hebbian-grow-corr",
        "hebbian-stop0.75",
        "hebbian-zero-stop0.75",
        "random",
        "rigl",
        "set",
        "static",
    ];
    let file = dir.join("all.jsonl");
    let all: String = modes.iter().map(|m| run_lines(m, 0, None)).collect();
    std::fs::write(&file, all).unwrap();
    let (html, _) = page_of(&dir, std::slice::from_ref(&file), &[]);
    let bars = chart(&html, "Test accuracy per mode");
    for m in modes {
        assert!(
            bars.contains(&format!(r#"rotate(-40)" text-anchor="end">{m}</text>"#)),
            "{m} not turned"
        );
    }
    // The turned labels get room of their own: the chart grows below.
    let height = |svg: &str| -> f64 {
        let h = svg.split_once("height=\"").unwrap().1;
        h[..h.find('"').unwrap()].parse().unwrap()
    };
    assert!(height(bars) > 340.0 + 60.0, "{}", height(bars));

    let (html, _) = page_of(&dir, &write_metrics(&dir), &[]);
    let bars = chart(&html, "Test accuracy per mode");
    assert!(!bars.contains("rotate(-40)"));
    assert_eq!(height(bars), 340.0);
}

#[test]
fn accuracy_charts_share_a_scale_from_zero_with_a_chance_line() {
    let dir = scratch("chance");
    let (html, _) = page_of(&dir, &write_metrics(&dir), &[]);
    let bars = chart(&html, "Test accuracy per mode");
    let epochs = chart(&html, "Test accuracy per epoch");
    assert_eq!(y_ticks(bars), y_ticks(epochs));
    assert_eq!(y_ticks(bars)[0], "0");
    for svg in [bars, epochs] {
        assert!(svg.contains(">chance 10%</text>"), "{svg:.300}");
    }
    // 100 classes (CIFAR-100's fine labels): chance is 1%.
    let file = dir.join("c100.jsonl");
    let per_class = vec!["0.5"; 100].join(",");
    let text = run_lines("dense", 0, None).replace(
        r#""per_class_accuracy":[0.4,0.5,0.3,0.2,0.3,0.4,0.5,0.5,0.6,0.5]"#,
        &format!(r#""per_class_accuracy":[{per_class}]"#),
    );
    std::fs::write(&file, text).unwrap();
    let (html, _) = page_of(&dir, std::slice::from_ref(&file), &[]);
    assert!(chart(&html, "Test accuracy per mode").contains(">chance 1%</text>"));
}

#[test]
fn mask_updates_are_marked_on_the_loss_and_accuracy_charts() {
    let dir = scratch("updates");
    let (html, _) = page_of(&dir, &write_metrics(&dir), &[]);
    // The fixture updates every 500 steps up to 3000, in both sparse modes.
    let loss = chart(&html, "Training loss");
    assert_eq!(loss.matches(r#"<g class="event">"#).count(), 6);
    assert!(loss.contains("<title>mask update at step 500: hebbian, random</title>"));
    assert!(loss.contains(">mask update</text>"));
    // On the epoch axis (1,000 steps an epoch) the same six.
    let epochs = chart(&html, "Test accuracy per epoch");
    assert_eq!(epochs.matches(r#"<g class="event">"#).count(), 6);
    // A dense run alone has no updates to mark.
    let file = dir.join("dense.jsonl");
    std::fs::write(&file, run_lines("dense", 0, None)).unwrap();
    let (html, _) = page_of(&dir, std::slice::from_ref(&file), &[]);
    assert!(!chart(&html, "Training loss").contains("mask update"));
}

/// SET, RigL and Hebbian growth regrow exactly as many connections as they
/// drop, so the two series coincide; both must still show.
#[test]
fn regrown_and_dropped_are_drawn_apart_when_equal() {
    let dir = scratch("equal");
    let file = dir.join("set.jsonl");
    let mut text = String::new();
    for line in run_lines("set", 0, None).lines() {
        if line.contains(r#""type":"progress""#) {
            // regrown = dropped, nothing revived.
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let dropped = v["dropped"].as_f64().unwrap();
            let mut v = v.clone();
            v["regrown"] = dropped.into();
            v["revived"] = 0.0.into();
            text += &v.to_string();
        } else {
            text += line;
        }
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let (html, _) = page_of(&dir, std::slice::from_ref(&file), &[]);
    let changes = chart(&html, "Connection changes: conv2 (set)");
    let lines: Vec<&str> = changes
        .split("<polyline ")
        .skip(1)
        .map(|p| &p[..p.find("/>").unwrap()])
        .filter(|p| !p.contains("#333333")) // the axes
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // Same points, different strokes: a wide pale line under a dashed one.
    let points = |p: &str| p.split('"').nth(1).unwrap().to_string();
    assert_eq!(points(lines[0]), points(lines[1]));
    assert!(lines[0].contains(r#"stroke-width="5""#) && lines[0].contains("stroke-opacity"));
    assert!(lines[1].contains("stroke-dasharray"));
    // And different markers: round ones for dropped, square for regrown.
    assert_eq!(changes.matches("<title>conv2 dropped at step").count(), 6);
    assert_eq!(changes.matches("<title>conv2 regrown at step").count(), 6);
    assert!(changes.contains(r#"r="5.5""#));
}

#[test]
fn kernel_grids_have_a_colour_scale() {
    let dir = scratch("scale");
    let export = dir.join("export");
    write_export(&export);
    let (html, _) = page_of(
        &dir,
        &write_metrics(&dir),
        &["--export", export.to_str().unwrap()],
    );
    let grid = chart(&html, "Active taps: conv2 (16×6 kernels of 5×5)");
    assert!(grid.contains(">weight</text>") && grid.contains(">pruned</text>"));
    // Its ends are the layer's largest |w| among active taps.
    assert!(
        grid.contains(">−0.") && grid.contains(">+0."),
        "{grid:.200}"
    );
    let heat = chart(&html, "Tap frequency: conv2");
    assert!(heat.contains(">0%</text>"));
}

/// A ResNet-like layer: named as the model names it, 64×64 kernels of 3×3.
/// Its grid is cropped to 16×16 kernels and a map of 32×32 blocks shows
/// the whole, so the page stays a sane size.
#[test]
fn big_layers_with_dotted_names_stay_a_sane_size() {
    let dir = scratch("big");
    let file = dir.join("big.jsonl");
    let layers = [("layer2.0.conv1", 36864.0), ("layer2.0.conv2", 36864.0)];
    std::fs::write(&file, run_lines_with("hebbian", 0, None, &layers)).unwrap();
    let export = dir.join("export");
    write_export_of(&export, &[("layer2.0.conv1", [64, 64, 3, 3])]);
    let svgs = dir.join("svgs");
    let (html, _) = page_of(
        &dir,
        std::slice::from_ref(&file),
        &[
            "--export",
            export.to_str().unwrap(),
            "--svg-dir",
            svgs.to_str().unwrap(),
        ],
    );
    chart(&html, "Connection changes: layer2.0.conv1 (hebbian)");
    chart(&html, "Connection changes: layer2.0.conv2 (hebbian)");
    let grid = chart(
        &html,
        "Active taps: layer2.0.conv1 (first 16×16 of 64×64 kernels of 3×3)",
    );
    assert_eq!(grid.matches(r#"class="kernel""#).count(), 16 * 16);
    let map = chart(&html, "Active taps per kernel: layer2.0.conv1 (2×2 blocks)");
    assert_eq!(map.matches(r#"class="tap""#).count(), 32 * 32);
    assert!(map.contains("<title>out 0–1, in 62–63: "), "{map:.300}");
    // Elements per layer: a few thousand at most, not tens of thousands.
    let elements = |svg: &str| svg.matches('<').count() - svg.matches("</").count();
    assert!(elements(grid) < 3000, "{} elements", elements(grid));
    assert!(elements(map) < 3000, "{} elements", elements(map));
    for svg in svg_blocks(&html) {
        check_well_formed(svg).unwrap();
    }
    assert!(svgs
        .join("active-taps-per-kernel-layer2-0-conv1-2-2-blocks.svg")
        .exists());
}

/// ResNet-20's 18 sparse layers: two heat maps per mode, a row per layer
/// and a column per update, in place of 18 charts; the first update prunes
/// the dense layer to 12%, so 88% of it is dropped.
#[test]
fn many_layers_get_heat_maps_of_their_updates() {
    let dir = scratch("many-layers");
    let file = dir.join("resnet.jsonl");
    let names: Vec<String> = (1..=3)
        .flat_map(|s| {
            (0..3).flat_map(move |b| (1..=2).map(move |c| format!("layer{s}.{b}.conv{c}")))
        })
        .collect();
    let layers: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 2304.0)).collect();
    std::fs::write(&file, run_lines_with("rigl", 0, None, &layers)).unwrap();
    let (html, _) = page_of(&dir, std::slice::from_ref(&file), &[]);
    assert!(
        !html.contains("<title>Connection changes:"),
        "a chart per layer"
    );
    let updates = (EPOCHS * STEPS_PER_EPOCH / 500) as usize;
    for title in [
        "Turnover by layer (rigl)",
        "Regrown where dropped, by layer (rigl)",
    ] {
        let map = chart(&html, title);
        check_well_formed(map).unwrap();
        assert_eq!(
            map.matches(r#"class="tap""#).count(),
            18 * updates,
            "{title}"
        );
        for name in &names {
            assert!(
                map.contains(&format!(">{name}</text>")),
                "{title}: no row {name}"
            );
        }
        assert!(map.contains(&format!("{updates} updates, steps 500 to 3000")));
    }
    let turnover = chart(&html, "Turnover by layer (rigl)");
    assert!(
        turnover.contains("<title>layer1.0.conv1 at step 500: 88.0%</title>"),
        "{turnover:.600}"
    );
    // The first update regrows nothing; the later ones regrow a quarter of
    // what they regrow where they dropped (the fixture's reset count).
    let reset = chart(&html, "Regrown where dropped, by layer (rigl)");
    assert!(reset.contains("<title>layer1.0.conv1 at step 500: no data</title>"));
    let later = reset
        .split("<title>layer1.0.conv1 at step 1000: ")
        .nth(1)
        .and_then(|t| t.split_once("%</title>"))
        .map(|(v, _)| v.parse::<f64>().unwrap())
        .expect("a value at step 1000");
    assert!((15.0..=25.0).contains(&later), "{later}%");
}
