//! The report's charts and its summary table, each built from grouped runs
//! or from one export folder. A group keeps the same colour in every chart.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::export::{Export, Layer};
use crate::grid::{heat_map, kernel_grid, GRID_MAX_CHANNELS};
use crate::metrics::{across, mean_std, Group, Run};
use crate::plural;
use crate::svg::{colour, escape, Plot, Stroke};
use crate::ticks::nice_range;

/// Markers for every point when a series is short enough to read them.
pub(crate) const DOTS_UP_TO: usize = 24;

/// At most this many mask-update lines on a chart; more would be a grey
/// wash (a run that updates every few batches), so every k-th is drawn.
const MAX_UPDATE_LINES: usize = 100;

/// Colour of the chance line.
const CHANCE: &str = "#333333";

/// Chance accuracy in percent: 1 / the number of classes, which the
/// summaries give (their per-class accuracies); 10 classes without one, as
/// the network has 10 outputs.
fn chance_percent(groups: &[Group]) -> f64 {
    let classes = groups
        .iter()
        .flat_map(|g| &g.runs)
        .find_map(|r| r.summary.as_ref().and_then(|s| s.classes))
        .unwrap_or(10);
    100.0 / classes as f64
}

/// The top of both accuracy charts' axes: one scale for the bars of final
/// accuracy and the curves per epoch, so they read against each other.
fn accuracy_top(groups: &[Group]) -> f64 {
    let mut top = chance_percent(groups);
    for run in groups.iter().flat_map(|g| &g.runs) {
        let finals = run.final_accuracy().into_iter();
        for a in finals.chain(run.accuracy.values().copied()) {
            if a.is_finite() {
                top = top.max(100.0 * a);
            }
        }
    }
    nice_range(0.0, (top * 1.03).min(100.0)).1
}

/// Mask update steps of every group, each with the groups that updated
/// then, thinned to at most [`MAX_UPDATE_LINES`]; and the thinning step.
fn update_lines<'a>(groups: &'a [Group]) -> (Vec<(u64, Vec<&'a str>)>, usize) {
    let mut at: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for g in groups {
        for step in g.update_steps() {
            at.entry(step).or_default().push(&g.name);
        }
    }
    let every = at.len().div_ceil(MAX_UPDATE_LINES).max(1);
    (at.into_iter().step_by(every).collect(), every)
}

/// Draws the mask updates on `plot` as vertical lines, at `x(step)`
/// (None: not placeable), with a legend entry if there are any.
fn mark_updates(plot: &mut Plot, groups: &[Group], x: &dyn Fn(&str, u64) -> Option<f64>) {
    let (lines, every) = update_lines(groups);
    let mut any = false;
    for (step, names) in &lines {
        let Some(at) = names.iter().find_map(|n| x(n, *step)) else {
            continue;
        };
        any = true;
        plot.vline(
            at,
            &format!("mask update at step {step}: {}", names.join(", ")),
        );
    }
    if any {
        let name = if every == 1 {
            "mask update".to_string()
        } else {
            format!("mask update (every {every}th)")
        };
        plot.legend_events(&name);
    }
}

/// Training loss vs step: per group the mean over its runs, with the
/// min–max band over runs behind it, and the mask updates.
pub fn loss(groups: &[Group]) -> Option<String> {
    let mut plot = Plot::new("Training loss", "step", "training loss", 760.0, 360.0).x_from_zero();
    let mut any = false;
    for (i, g) in groups.iter().enumerate() {
        let stats = across(g.runs.iter().map(|r| &r.loss));
        if stats.is_empty() {
            continue;
        }
        any = true;
        let c = colour(i);
        let runs = g.runs.iter().filter(|r| !r.loss.is_empty()).count();
        if runs > 1 {
            plot.band(stats.iter().map(|s| (s.x, s.min, s.max)).collect(), c);
        }
        plot.line(
            stats.iter().map(|s| (s.x, s.mean)).collect(),
            c,
            Stroke::SOLID,
        );
        if stats.len() <= DOTS_UP_TO {
            for s in &stats {
                let tip = format!("{}: step {}, mean loss {:.4}", g.name, s.x, s.mean);
                plot.dot(s.x, s.mean, c, &tip);
            }
        }
        plot.legend(&format!("{} ({})", g.name, plural(runs, "run")), c);
    }
    mark_updates(&mut plot, groups, &|_, step| Some(step as f64));
    any.then(|| plot.finish())
}

/// Final test accuracy per group: a bar at the mean over the finished
/// runs, a dot per run (grey, at its last epoch, for a run still going),
/// and the chance line. A group with no finished run gets a bar at the
/// mean of where its runs are, labelled "so far".
pub fn accuracy_bars(groups: &[Group]) -> Option<String> {
    let names = groups.iter().map(|g| g.name.clone()).collect();
    let mut plot = Plot::new(
        "Test accuracy per mode",
        "mode",
        "final test accuracy (%)",
        460.0,
        340.0,
    )
    .categories(names)
    .y_range(0.0, accuracy_top(groups));
    let mut any = false;
    for (i, g) in groups.iter().enumerate() {
        let accs: Vec<(&Run, f64)> = g
            .runs
            .iter()
            .filter_map(|r| r.final_accuracy().map(|a| (*r, 100.0 * a)))
            .collect();
        let finished: Vec<f64> = accs
            .iter()
            .filter(|(r, _)| r.summary.is_some())
            .map(|&(_, a)| a)
            .collect();
        let all: Vec<f64> = accs.iter().map(|&(_, a)| a).collect();
        let (bar, label) = match (mean_std(&finished), mean_std(&all)) {
            (Some((mean, _)), _) => (mean, format!("{mean:.1}%")),
            (None, Some((mean, _))) => (mean, format!("{mean:.1}% so far")),
            (None, None) => continue,
        };
        any = true;
        let c = colour(i);
        let x = i as f64;
        plot.bar(x + 0.2, x + 0.8, bar, c, &label);
        // Spread the dots a little so equal seeds stay visible.
        let n = accs.len() as f64;
        for (j, (run, a)) in accs.iter().enumerate() {
            let dx = (j as f64 - (n - 1.0) / 2.0) * (0.5 / n.max(2.0));
            let (ink, tip) = match (&run.summary, run.accuracy.keys().next_back()) {
                (None, Some(epoch)) => (
                    "#9a9a9a",
                    format!("{}: {a:.2}% at epoch {epoch}, unfinished", run.seed_name()),
                ),
                _ => ("#222222", format!("{}: {a:.2}%", run.seed_name())),
            };
            plot.dot(x + 0.5 + dx, *a, ink, &tip);
        }
    }
    let chance = chance_percent(groups);
    plot.hline(chance, CHANCE, &format!("chance {chance:.0}%"));
    any.then(|| plot.finish())
}

/// Test accuracy at the end of each epoch: mean line and min–max band per
/// group, on the bars' scale, with the chance line and the mask updates.
pub fn accuracy_per_epoch(groups: &[Group]) -> Option<String> {
    let mut plot = Plot::new(
        "Test accuracy per epoch",
        "epoch",
        "test accuracy (%)",
        460.0,
        340.0,
    )
    .x_whole()
    .x_from_zero()
    .y_range(0.0, accuracy_top(groups));
    let mut any = false;
    for (i, g) in groups.iter().enumerate() {
        let stats = across(g.runs.iter().map(|r| &r.accuracy));
        if stats.is_empty() {
            continue;
        }
        any = true;
        let c = colour(i);
        plot.band(
            stats
                .iter()
                .map(|s| (s.x, 100.0 * s.min, 100.0 * s.max))
                .collect(),
            c,
        );
        plot.line(
            stats.iter().map(|s| (s.x, 100.0 * s.mean)).collect(),
            c,
            Stroke::SOLID,
        );
        for s in &stats {
            let tip = format!("{}: epoch {}, mean {:.2}%", g.name, s.x, 100.0 * s.mean);
            plot.dot(s.x, 100.0 * s.mean, c, &tip);
        }
        plot.legend(&g.name, c);
    }
    let chance = chance_percent(groups);
    plot.hline(chance, CHANCE, &format!("chance {chance:.0}%"));
    // Steps become epochs through the group's own steps per epoch.
    let per_epoch: BTreeMap<&str, f64> = groups
        .iter()
        .filter_map(|g| {
            let spe = g.runs.iter().find_map(|r| r.steps_per_epoch())?;
            Some((g.name.as_str(), spe))
        })
        .collect();
    mark_updates(&mut plot, groups, &|name, step| {
        per_epoch.get(name).map(|spe| step as f64 / spe)
    });
    any.then(|| plot.finish())
}

/// Mean ± std of `values`, formatted, or a dash if there are none.
fn mean_pm_std(values: &[f64], decimals: usize, unit: &str) -> String {
    match mean_std(values) {
        Some((m, _)) if values.len() == 1 => format!("{m:.decimals$}{unit}"),
        Some((m, s)) => format!("{m:.decimals$} ± {s:.decimals$}{unit}"),
        None => "–".to_string(),
    }
}

/// The summary table: one row per group.
pub fn summary_table(groups: &[Group]) -> String {
    let mut s = String::from(
        "<table><thead><tr><th>mode</th><th>runs</th><th>seeds</th><th>test accuracy</th>\
         <th>conv density</th><th>train time</th><th>images/s</th></tr></thead><tbody>",
    );
    for (i, g) in groups.iter().enumerate() {
        let finished = g.runs.iter().filter(|r| r.summary.is_some()).count();
        let runs = if finished == g.runs.len() {
            g.runs.len().to_string()
        } else {
            format!("{} ({} unfinished)", g.runs.len(), g.runs.len() - finished)
        };
        let mut seeds: Vec<String> = g
            .runs
            .iter()
            .map(|r| r.seed.map_or("?".to_string(), |s| s.to_string()))
            .collect();
        seeds.dedup();
        let accs: Vec<f64> = g
            .runs
            .iter()
            .filter_map(|r| r.final_accuracy())
            .map(|a| 100.0 * a)
            .collect();
        let summaries: Vec<_> = g.runs.iter().filter_map(|r| r.summary.as_ref()).collect();
        // Density per layer, averaged over the finished runs.
        let layers = summaries
            .iter()
            .map(|s| s.conv_density.len())
            .max()
            .unwrap_or(0);
        let density = if summaries.is_empty() {
            "–".to_string()
        } else if layers == 0 {
            "dense".to_string()
        } else {
            // conv_density holds fractions; show percent, one per layer.
            (0..layers)
                .map(|l| {
                    let v: Vec<f64> = summaries
                        .iter()
                        .filter_map(|s| s.conv_density.get(l).map(|d| 100.0 * d))
                        .collect();
                    mean_std(&v).map_or("–".to_string(), |(m, _)| format!("{m:.1}%"))
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let seconds: Vec<f64> = summaries.iter().filter_map(|s| s.train_seconds).collect();
        let speed: Vec<f64> = summaries
            .iter()
            .filter_map(|s| s.images_per_second)
            .collect();
        let _ = write!(
            s,
            r#"<tr><td><span class="swatch" style="background:{}"></span>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            colour(i),
            escape(&g.name),
            runs,
            escape(&seeds.join(", ")),
            mean_pm_std(&accs, 2, "%"),
            density,
            mean_pm_std(&seconds, 1, " s"),
            mean_pm_std(&speed, 0, ""),
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// A map of a big layer has at most this many cells a side; more kernels
/// are averaged in square blocks.
const MAP_MAX_CELLS: usize = 32;

/// The share of active taps in each (out, in) kernel of a layer, averaged
/// over blocks of b×b kernels so that the map has at most
/// [`MAP_MAX_CELLS`] a side: (rows, cols, b, values).
fn kernel_density_blocks(layer: &Layer) -> (usize, usize, usize, Vec<f64>) {
    let [o, c, kh, kw] = layer.shape;
    let taps = kh * kw;
    let b = o.max(c).div_ceil(MAP_MAX_CELLS).max(1);
    let (rows, cols) = (o.div_ceil(b), c.div_ceil(b));
    let mut sums = vec![0.0f64; rows * cols];
    let mut counts = vec![0usize; rows * cols];
    for (k, kernel) in layer.mask.chunks_exact(taps).enumerate() {
        let (oi, ci) = (k / c, k % c);
        let cell = (oi / b) * cols + ci / b;
        sums[cell] += kernel.iter().filter(|&&m| m != 0.0).count() as f64 / taps as f64;
        counts[cell] += 1;
    }
    let values = sums
        .iter()
        .zip(&counts)
        .map(|(s, &n)| s / n.max(1) as f64)
        .collect();
    (rows, cols, b, values)
}

/// One export folder: per layer, its kernels' active taps (all of them, or
/// for a big layer the first channels and a map of the whole) and the tap
/// frequency heat map.
pub fn export_section(export: &Export) -> String {
    let mut s = String::new();
    let mut about = Vec::new();
    if let Some(mode) = &export.mode {
        about.push(mode.clone());
    }
    if let Some(seed) = export.seed {
        about.push(format!("seed {seed}"));
    }
    if let Some(epoch) = export.epoch {
        about.push(format!("epoch {epoch}"));
    }
    if let Some(step) = export.step {
        about.push(format!("step {step}"));
    }
    let _ = write!(
        s,
        "<h3>Export <code>{}</code></h3><p>{}{}</p><div class=\"charts\">",
        escape(&export.dir.display().to_string()),
        escape(&about.join(", ")),
        if export.snapshots > 0 {
            format!(
                "; {} step snapshots beside it (not drawn)",
                export.snapshots
            )
        } else {
            String::new()
        }
    );
    for layer in &export.layers {
        let [o, c, kh, kw] = layer.shape;
        let whole = o <= GRID_MAX_CHANNELS && c <= GRID_MAX_CHANNELS;
        let (title, shown) = if whole {
            (
                format!("Active taps: {} ({o}×{c} kernels of {kh}×{kw})", layer.name),
                String::new(),
            )
        } else {
            let (so, sc) = (o.min(GRID_MAX_CHANNELS), c.min(GRID_MAX_CHANNELS));
            (
                format!(
                    "Active taps: {} (first {so}×{sc} of {o}×{c} kernels of {kh}×{kw})",
                    layer.name
                ),
                format!(
                    " Only output channels 0–{} and input channels 0–{} are drawn; the map beside it shows the whole layer.",
                    so - 1,
                    sc - 1
                ),
            )
        };
        let caption = format!(
            "{}: {:.1}% of connections active. Red: positive weight, blue: negative, darker = larger |w|; grey: pruned.{shown}",
            layer.name,
            100.0 * layer.density()
        );
        let grid = kernel_grid(&title, layer.shape, &layer.mask, layer.weight.as_deref());
        let _ = write!(
            s,
            "<figure>{grid}<figcaption>{}</figcaption></figure>",
            escape(&caption)
        );
        if !whole {
            let (rows, cols, b, values) = kernel_density_blocks(layer);
            let title = if b == 1 {
                format!("Active taps per kernel: {}", layer.name)
            } else {
                format!("Active taps per kernel: {} ({b}×{b} blocks)", layer.name)
            };
            let name_of = |r: usize, col: usize| {
                if b == 1 {
                    format!("out {r}, in {col}")
                } else {
                    format!(
                        "out {}–{}, in {}–{}",
                        r * b,
                        ((r + 1) * b).min(o) - 1,
                        col * b,
                        ((col + 1) * b).min(c) - 1
                    )
                }
            };
            let map = heat_map(
                &title,
                (rows, cols),
                ("output channel", "input channel"),
                &values,
                &name_of,
                &format!("% of a kernel's {} taps active", kh * kw),
                &[],
            );
            let _ = write!(s, "<figure>{map}</figure>");
        }
        let heat = heat_map(
            &format!("Tap frequency: {}", layer.name),
            (kh, kw),
            ("kernel row ki", "kernel column kj"),
            &layer.tap_frequency(),
            &|ki, kj| format!("({ki}, {kj})"),
            "% of kernels with that tap active",
            &[],
        );
        let _ = write!(s, "<figure>{heat}</figure>");
    }
    s.push_str("</div>");
    s
}
