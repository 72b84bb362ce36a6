//! Report generator: turns metrics files (JSON lines from the cifar example's
//! `--metrics FILE`) and export folders (its `--export DIR`) into one
//! self-contained HTML page with inline SVG charts: training loss, test
//! accuracy, mask updates per layer, and the active taps of every kernel.
//!
//! ```text
//! cargo run --release --example report -- runs/*.jsonl --export exp -o report.html
//! ```
//!
//! docs/report.md says what each chart shows.
//!
//! Files: `metrics.rs` reads the metrics files and groups the runs;
//! `export.rs` reads export folders; `svg.rs` is the plot toolkit (a
//! [`svg::Plot`] and its marks), `draw.rs` how a plot becomes SVG,
//! `frame.rs` where its values land on the page, `ticks.rs` its axes'
//! ticks; `grid.rs` draws kernel grids and heat maps; `charts.rs` builds the loss,
//! accuracy and export charts and the summary table; `updates.rs` the
//! charts of the mask updates; `markdown.rs` the tables for docs
//! (`--markdown`); this file reads the options and writes the page.

mod charts;
mod draw;
mod export;
mod frame;
mod grid;
mod markdown;
mod metrics;
mod svg;
mod ticks;
mod updates;

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use export::{read_export, Export};
use metrics::{group_runs, read_metrics, Group, Run};
use svg::escape;

/// Write one self-contained HTML page of charts from training metrics and
/// exported masks.
#[derive(Parser, Debug)]
#[command(name = "report", version)]
struct Args {
    /// Metrics files (JSON lines) written by the cifar example's --metrics
    #[arg(required = true, value_name = "METRICS")]
    metrics: Vec<PathBuf>,
    /// Export folder written by the cifar example's --export (repeatable)
    #[arg(long, value_name = "DIR")]
    export: Vec<PathBuf>,
    /// Where to write the HTML page
    #[arg(short, long, value_name = "FILE", default_value = "report.html")]
    output: PathBuf,
    /// Page title
    #[arg(long, value_name = "T", default_value = "hebbsparse training report")]
    title: String,
    /// Also write every chart as its own .svg file here, named after its
    /// title (for pages that embed images, such as markdown)
    #[arg(long, value_name = "DIR")]
    svg_dir: Option<PathBuf>,
    /// Also write the final test accuracy of each group (every seed, mean
    /// ± std), every run's test accuracy per epoch, the connection changes
    /// per layer and, with exports, where their masks' taps sit, as markdown
    /// tables here, for docs that quote them ("-" prints them)
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let mut runs = Vec::new();
    let mut sources = Vec::new();
    for path in &args.metrics {
        let found = read_metrics(path)?;
        sources.push((path.display().to_string(), found.len()));
        runs.extend(found);
    }
    if runs.is_empty() {
        let files: Vec<String> = sources.into_iter().map(|(f, _)| f).collect();
        return Err(format!(
            "no runs found in {} (no log, progress, epoch or summary lines)",
            files.join(", ")
        ));
    }
    let exports = args
        .export
        .iter()
        .map(|dir| read_export(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let groups = group_runs(&runs);
    let html = page(&args.title, &sources, &runs, &groups, &exports);
    std::fs::write(&args.output, &html)
        .map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
    // With the tables on standard output, what was written goes to stderr.
    let to_stdout = args.markdown.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let say = |line: String| {
        if to_stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if let Some(dir) = &args.svg_dir {
        let n = write_svgs(&html, dir)?;
        say(format!("wrote {} to {}", plural(n, "chart"), dir.display()));
    }
    if let Some(path) = &args.markdown {
        let tables = markdown::tables(&groups, &exports);
        if to_stdout {
            print!("{tables}");
        } else {
            std::fs::write(path, tables)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            say(format!("wrote the tables to {}", path.display()));
        }
    }
    say(format!(
        "wrote {} ({} in {}, {})",
        args.output.display(),
        plural(runs.len(), "run"),
        plural(groups.len(), "group"),
        plural(exports.len(), "export")
    ));
    Ok(())
}

/// Writes each `<svg>…</svg>` of the page to `dir` as `<title slug>.svg`
/// (a second chart of the same title gets `-2`, and so on). Returns how many.
fn write_svgs(html: &str, dir: &std::path::Path) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut names: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<svg ") {
        let end = rest[start..]
            .find("</svg>")
            .map(|e| start + e + "</svg>".len())
            .ok_or("an <svg> element without its end")?;
        let svg = &rest[start..end];
        let title = svg
            .split_once("<title>")
            .and_then(|(_, t)| t.split_once("</title>"))
            .map_or("chart", |(t, _)| t);
        let mut slug: String = title
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        while slug.contains("--") {
            slug = slug.replace("--", "-");
        }
        let slug = slug.trim_matches('-').to_string();
        let copies = names.iter().filter(|n| **n == slug).count();
        let file = if copies == 0 {
            format!("{slug}.svg")
        } else {
            format!("{slug}-{}.svg", copies + 1)
        };
        names.push(slug);
        let path = dir.join(file);
        std::fs::write(&path, format!("{svg}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        rest = &rest[end..];
    }
    Ok(names.len())
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin-bottom: 4px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; max-width: 460px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 12px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; }
.note { color: #555; font-size: 13px; }
";

/// "1 run", "2 runs".
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `chart` in a figure with a caption, or nothing if there was no data.
fn figure(out: &mut String, chart: Option<String>, caption: &str) {
    if let Some(svg) = chart {
        let _ = write!(
            out,
            "<figure>{svg}<figcaption>{}</figcaption></figure>",
            escape(caption)
        );
    }
}

fn page(
    title: &str,
    sources: &[(String, usize)],
    runs: &[Run],
    groups: &[Group],
    exports: &[Export],
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
        t = escape(title)
    );
    let files: Vec<String> = sources
        .iter()
        .map(|(f, n)| format!("<code>{}</code> ({})", escape(f), plural(*n, "run")))
        .collect();
    let _ = write!(
        s,
        "<p class=\"note\">{} in {} from {}.</p>",
        plural(runs.len(), "run"),
        plural(groups.len(), "group"),
        files.join(", ")
    );

    s.push_str("<h2>Summary</h2>");
    s.push_str(&charts::summary_table(groups));
    s.push_str(
        "<p class=\"note\">Test accuracy: mean ± sample std over runs (a run without a summary counts with its last epoch). \
         Conv density: active fraction of each sparse conv layer at the end. Train time and images/s: mean over finished runs.</p>",
    );

    s.push_str("<h2>Training loss</h2><div class=\"charts\">");
    figure(
        &mut s,
        charts::loss(groups),
        "Mean training loss since the previous log line. Line: mean over the runs of a mode; band: min–max over them; grey dashes: mask updates.",
    );
    s.push_str("</div><h2>Test accuracy</h2><div class=\"charts\">");
    figure(
        &mut s,
        charts::accuracy_bars(groups),
        "Bar: mean final test accuracy of a mode; dots: its runs (seeds); dashed line: chance.",
    );
    figure(
        &mut s,
        charts::accuracy_per_epoch(groups),
        "Test accuracy at the end of each epoch, on the same scale as the bars. Line: mean over runs; band: min–max; dashed line: chance; grey dashes: mask updates.",
    );
    s.push_str("</div>");

    let with_progress: Vec<&Group> = groups.iter().filter(|g| !g.layers().is_empty()).collect();
    if !with_progress.is_empty() {
        s.push_str(
            "<h2>Mask updates</h2><p class=\"note\">At each mask update, per sparse layer: the connections dropped \
             (active before, learned weight gone), regrown (grown with a fresh value) and revived (kept, but inactive before), \
             mean over runs on a log(1 + n) axis; then the turnover: dropped as a share of the layer's active connections \
             just before each update (kept + dropped). With more than 6 sparse layers, two heat maps per mode instead, \
             a row per layer and a column per update: the turnover, and the share of the regrown connections that the \
             same update had dropped (grey: nothing regrown).</p>",
        );
        for g in with_progress {
            let _ = write!(s, "<h3>{}</h3><div class=\"charts\">", escape(&g.name));
            for chart in updates::progress(g) {
                let _ = write!(s, "<figure>{chart}</figure>");
            }
            s.push_str("</div>");
        }
    }

    if !exports.is_empty() {
        s.push_str(
            "<h2>Exported masks</h2><p class=\"note\">Every (output, input) kernel of each conv layer as a small grid of its taps \
             (for a layer of more than 16 output or input channels, the first 16 of each, and a map of the share of active taps \
             per kernel over the whole layer), and how often each tap position is active across the layer's kernels.</p>",
        );
        for e in exports {
            s.push_str(&charts::export_section(e));
        }
    }
    s.push_str("</body></html>\n");
    s
}
