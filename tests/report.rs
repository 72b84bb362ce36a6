//! The report example end to end: fixture metrics files (two modes × two
//! seeds, one run interrupted and resumed) and a fixture export folder go in,
//! one HTML page comes out, and every chart in it must be well-formed XML
//! with the expected titles and kernel counts. Then the bad inputs: a missing
//! file, a malformed line, no runs, bad options. What each chart draws is
//! tested in `report_charts.rs`.

mod report_fixture;

use std::path::{Path, PathBuf};
use std::process::Command;

use report_fixture::*;

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
