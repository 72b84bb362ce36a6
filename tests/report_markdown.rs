//! The report's `--markdown` tables: from fixture metrics (one mode with
//! two finished seeds, one with an unfinished run, and a PyTorch reference
//! file with epoch lines only), the final accuracy of every seed, mean ±
//! std over the finished runs, every run's accuracy per epoch, and the
//! connection changes of the mask updates per layer.

mod report_fixture;

use std::process::Command;

use report_fixture::{epoch_run, example, scratch};

/// A run of `mode` and `seed`, labelled `mode=MODE` as the sweep labels
/// it, that reached `accs` (fractions) at the end of its epochs, with its
/// summary line if `finished`.
fn ours(mode: &str, seed: u64, accs: &[f64], finished: bool) -> String {
    epoch_run(mode, seed, Some(&format!("mode={mode}")), accs, finished)
}

#[test]
fn markdown_tables_give_each_seed_and_the_mean_and_std() {
    let dir = scratch("md-tables");
    let files = [
        ("a0.jsonl", ours("static", 0, &[0.5, 0.80], true)),
        ("a1.jsonl", ours("static", 1, &[0.6, 0.82], true)),
        (
            "b0.jsonl",
            ours("set", 0, &[0.55, 0.7], false)
                + "{\"type\":\"progress\",\"step\":100,\"layer\":\"conv1\",\"dropped\":10,\"regrown\":10,\"revived\":0,\"kept\":90,\"reset\":2,\"active\":100}\n\
                   {\"type\":\"progress\",\"step\":200,\"layer\":\"conv1\",\"dropped\":20,\"regrown\":20,\"revived\":0,\"kept\":80,\"reset\":0,\"active\":100}\n\
                   {\"type\":\"progress\",\"step\":100,\"layer\":\"conv2\",\"dropped\":5,\"regrown\":5,\"revived\":0,\"active\":50}\n",
        ),
        (
            "torch.jsonl",
            "{\"type\": \"epoch\", \"epoch\": 1, \"step\": 100, \"test_accuracy\": 0.4, \"framework\": \"pytorch\", \"seed\": 3}\n\
             {\"type\": \"epoch\", \"epoch\": 2, \"step\": 200, \"test_accuracy\": 0.75, \"framework\": \"pytorch\", \"seed\": 3}\n\
             {\"type\": \"summary\", \"test_accuracy\": 0.75, \"framework\": \"pytorch\", \"seed\": 3}\n"
                .to_string(),
        ),
    ];
    let mut args = Vec::new();
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        args.push(path);
    }
    let md = dir.join("tables.md");
    let out = Command::new(example())
        .args(&args)
        .arg("-o")
        .arg(dir.join("report.html"))
        .arg("--markdown")
        .arg(&md)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&md).unwrap();
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{text}"))
            .to_string()
    };
    assert_eq!(
        line("| group "),
        "| group | seed 0 | seed 1 | seed 3 | mean ± std |"
    );
    // 80 and 82: mean 81, sample std √2.
    assert_eq!(
        line("| mode=static |"),
        "| mode=static | 80.00% | 82.00% |  | **81.00 ± 1.41%** (2 runs) |"
    );
    // Unfinished: its last epoch so far, and no mean.
    assert_eq!(
        line("| mode=set |"),
        "| mode=set | (70.00%, epoch 2) |  |  | – |"
    );
    // The PyTorch reference, named by its framework.
    assert_eq!(
        line("| pytorch |"),
        "| pytorch |  |  | 75.00% | 75.00% (1 run) |"
    );
    assert_eq!(line("| epoch "), "| epoch | 1 | 2 |");
    assert_eq!(
        line("| mode=static, seed 1 |"),
        "| mode=static, seed 1 | 60.0 | 82.0 |"
    );
    assert_eq!(
        line("| pytorch, seed 3 |"),
        "| pytorch, seed 3 | 40.0 | 75.0 |"
    );

    // Only the mode that updates masks: turnover (10% and 20%: 15.0%) and
    // regrown where dropped (2 of 30); a layer whose lines do not say.
    assert_eq!(line("| layer "), "| layer | mode=set |");
    assert_eq!(line("| conv1 |"), "| conv1 | 15.0% · 7% |");
    assert_eq!(line("| conv2 |"), "| conv2 | 10.0% · – |");

    // "-" prints them instead.
    let out = Command::new(example())
        .args(&args)
        .arg("-o")
        .arg(dir.join("report.html"))
        .args(["--markdown", "-"])
        .output()
        .unwrap();
    // Exactly the tables: what was written is said on stderr.
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrote"));
}
