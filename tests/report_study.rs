//! The report on a study as it is made, with runs still going and runs of
//! hundreds of mask updates: an unfinished run does not move a group's
//! bar, and a heat map of many updates puts a run of them in each column.

mod report_fixture;

use std::path::Path;
use std::process::Command;

use report_fixture::{chart, epoch_run, example, scratch};

/// A run of `mode` and `seed` that reached `accs` (fractions) at the end of
/// its epochs, with its summary line if `finished`.
fn run(mode: &str, seed: u64, accs: &[f64], finished: bool) -> String {
    epoch_run(mode, seed, None, accs, finished)
}

/// Writes `files` into `dir`, runs the report on them with `extra`
/// options, returns the page and the standard output.
fn page_with(dir: &Path, files: &[(&str, String)], extra: &[&str]) -> (String, String) {
    let mut args = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        args.push(path);
    }
    let html = dir.join("report.html");
    let out = Command::new(example())
        .args(&args)
        .args(extra)
        .arg("-o")
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    (std::fs::read_to_string(&html).unwrap(), stdout)
}

fn page(dir: &Path, files: &[(&str, String)]) -> String {
    page_with(dir, files, &[]).0
}

#[test]
fn an_unfinished_run_does_not_move_the_bar() {
    let dir = scratch("study-bars");
    let html = page(
        &dir,
        &[
            ("s0.jsonl", run("static", 0, &[0.5, 0.80], true)),
            ("s1.jsonl", run("static", 1, &[0.6, 0.82], true)),
            // Still going, far below: it must not pull the mean to 74%.
            ("s2.jsonl", run("static", 2, &[0.6], false)),
            // Nothing finished: a bar of where it is, said so.
            ("t0.jsonl", run("set", 0, &[0.3, 0.4], false)),
        ],
    );
    let bars = chart(&html, "Test accuracy per mode");
    assert!(bars.contains(">81.0%<"), "{bars}");
    assert!(!bars.contains(">74.0%<"));
    assert!(bars.contains("seed 2: 60.00% at epoch 1, unfinished"));
    assert!(bars.contains("seed 0: 80.00%<"));
    assert!(bars.contains(">40.0% so far<"), "{bars}");
}

/// One progress line: `dropped` of `layer`'s 100 active connections at
/// `step`, all regrown elsewhere.
fn progress(step: u64, layer: &str, dropped: u64) -> String {
    format!(
        "{{\"type\":\"progress\",\"step\":{step},\"layer\":\"{layer}\",\"dropped\":{dropped},\"regrown\":{dropped},\"revived\":0,\"kept\":{},\"reset\":0,\"active\":100}}\n",
        100 - dropped
    )
}

#[test]
fn a_heat_map_of_many_updates_puts_a_run_of_them_in_each_column() {
    let dir = scratch("study-updates");
    let layers: Vec<String> = (0..8).map(|i| format!("layer{i}")).collect();
    // 150 updates: columns of 3 (50 columns); the updates drop 10, 20 and
    // 60 of 100 in turn, so each column's mean is 30%.
    let mut text = run("set", 0, &[0.5], false);
    for k in 0..150u64 {
        for l in &layers {
            text += &progress(100 * (k + 1), l, [10, 20, 60][k as usize % 3]);
        }
    }
    text += "{\"type\":\"summary\",\"mode\":\"set\",\"test_accuracy\":0.5}\n";
    let html = page(&dir, &[("set.jsonl", text)]);
    let map = chart(&html, "Turnover by layer (set)");
    assert_eq!(map.matches(r#"class="tap""#).count(), 8 * 50);
    assert!(map.contains("150 updates, steps 100 to 15000, 3 a column"));
    assert!(
        map.contains("<title>layer0 at steps 100 to 300 (3 updates): 30.0%</title>"),
        "{map:.2000}"
    );
    assert!(map.contains("<title>layer7 at steps 14800 to 15000 (3 updates): 30.0%</title>"));
    assert!(!map.contains(": 10.0%</title>"));
}

/// An export of one layer `conv` of shape [4, 4, 3, 3] whose mask is
/// `active(o, c, tap)`, the index naming `mode`, `seed` and, if given, the
/// run's label (by which the report names it).
fn write_mask_export(
    dir: &Path,
    (mode, seed, label): (&str, u64, Option<&str>),
    active: &dyn Fn(usize, usize, usize) -> bool,
) {
    use hebbsparse::tensor::npy::write_npy;
    use hebbsparse::tensor::tensor::Tensor;
    std::fs::create_dir_all(dir).unwrap();
    let shape = [4, 4, 3, 3];
    let mask: Vec<f32> = (0..144)
        .map(|i| f32::from(active(i / 36, (i / 9) % 4, i % 9)))
        .collect();
    for kind in ["weight", "mask"] {
        write_npy(
            dir.join(format!("conv.{kind}.npy")),
            &Tensor::from_vec(mask.clone(), &shape),
        )
        .unwrap();
    }
    let label = label.map_or(String::new(), |l| format!(r#""label":"{l}","#));
    let index = format!(
        r#"{{"step":10,"epoch":1,{label}"settings":{{"mode":"{mode}","seed":"{seed}"}},"layers":[{{"name":"conv","shape":[4,4,3,3],"weight":"conv.weight.npy","mask":"conv.mask.npy"}}]}}"#
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
}

/// The spread tables: a mask that reads every input channel through one
/// corner tap, against one whose filters all read input channel 0 alone,
/// at the centre: the share of input channels a filter reads, the share of
/// taps on the busiest quarter of the inputs and at the centre, and the
/// inputs no tap reads.
#[test]
fn markdown_says_where_the_exported_masks_taps_sit() {
    let dir = scratch("study-spread");
    write_mask_export(&dir.join("even"), ("set", 0, None), &|_, _, t| t == 0);
    write_mask_export(
        &dir.join("gathered"),
        (
            "hebbian-grow",
            1,
            Some("mode=hebbian-grow strength=correlation"),
        ),
        &|_, c, t| c == 0 && t == 4,
    );
    let (even, gathered) = (dir.join("even"), dir.join("gathered"));
    let (even, gathered) = (even.to_str().unwrap(), gathered.to_str().unwrap());
    let (_, text) = page_with(
        &dir,
        &[("m.jsonl", run("set", 0, &[0.5], true))],
        &["--export", even, "--export", gathered, "--markdown", "-"],
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("| conv |")).collect();
    // Density 1/9 (the first export's): a uniform mask reads 1 − (8/9)^9 = 65%.
    assert_eq!(
        lines,
        [
            "| conv | 11.1% | 65% | 100% | 25% |",
            "| conv | 25% · 0% | 100% · 100% · 3 unread |",
        ],
        "{text}"
    );
    assert!(
        text.contains("| layer | density | uniform mask | set, seed 0 | mode=hebbian-grow strength=correlation, seed 1 |")
    );
}
