//! The report's charts and its summary table, each built from grouped runs
//! or from one export folder. A group keeps the same colour in every chart.

use std::fmt::Write;

use crate::export::Export;
use crate::metrics::{across, mean_std, Group, Progress, Run};
use crate::plural;
use crate::svg::{colour, escape, heat_map, kernel_grid, Plot};

/// Markers for every point when a series is short enough to read them.
const DOTS_UP_TO: usize = 24;

/// Training loss vs step: per group the mean over its runs, with the
/// min–max band over runs behind it.
pub fn loss(groups: &[Group]) -> Option<String> {
    let mut plot = Plot::new("Training loss", "step", "training loss", 760.0, 360.0);
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
        plot.line(stats.iter().map(|s| (s.x, s.mean)).collect(), c, false);
        if stats.len() <= DOTS_UP_TO {
            for s in &stats {
                let tip = format!("{}: step {}, mean loss {:.4}", g.name, s.x, s.mean);
                plot.dot(s.x, s.mean, c, &tip);
            }
        }
        plot.legend(&format!("{} ({})", g.name, plural(runs, "run")), c);
    }
    any.then(|| plot.finish())
}

/// Final test accuracy per group: a bar at the mean, a dot per run.
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
    .y_from_zero();
    let mut any = false;
    for (i, g) in groups.iter().enumerate() {
        let accs: Vec<(&Run, f64)> = g
            .runs
            .iter()
            .filter_map(|r| r.final_accuracy().map(|a| (*r, 100.0 * a)))
            .collect();
        let values: Vec<f64> = accs.iter().map(|&(_, a)| a).collect();
        let Some((mean, _)) = mean_std(&values) else {
            continue;
        };
        any = true;
        let c = colour(i);
        let x = i as f64;
        plot.bar(x + 0.2, x + 0.8, mean, c, &format!("{mean:.1}%"));
        // Spread the dots a little so equal seeds stay visible.
        let n = accs.len() as f64;
        for (j, (run, a)) in accs.iter().enumerate() {
            let dx = (j as f64 - (n - 1.0) / 2.0) * (0.5 / n.max(2.0));
            plot.dot(
                x + 0.5 + dx,
                *a,
                "#222222",
                &format!("{}: {a:.2}%", run.seed_name()),
            );
        }
    }
    any.then(|| plot.finish())
}

/// Test accuracy at the end of each epoch: mean line and min–max band per group.
pub fn accuracy_per_epoch(groups: &[Group]) -> Option<String> {
    let mut plot = Plot::new(
        "Test accuracy per epoch",
        "epoch",
        "test accuracy (%)",
        460.0,
        340.0,
    )
    .x_whole();
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
            false,
        );
        for s in &stats {
            let tip = format!("{}: epoch {}, mean {:.2}%", g.name, s.x, 100.0 * s.mean);
            plot.dot(s.x, 100.0 * s.mean, c, &tip);
        }
        plot.legend(&g.name, c);
    }
    any.then(|| plot.finish())
}

/// For one group with mask updates: per sparse layer, the connections
/// revived, regrown and dropped at each progress step (mean over runs), then
/// one chart of each layer's active fraction.
pub fn progress(group: &Group) -> Vec<String> {
    let layers = group.layers();
    if layers.is_empty() {
        return Vec::new();
    }
    let mut charts = Vec::new();
    let mut density = Plot::new(
        &format!("Active connections ({})", group.name),
        "step",
        "active (% of layer)",
        360.0,
        250.0,
    )
    .y_from_zero();
    for (li, layer) in layers.iter().enumerate() {
        let series = |pick: fn(&Progress) -> f64| {
            let per_run: Vec<_> = group
                .runs
                .iter()
                .filter_map(|r| r.layer(layer))
                .map(|steps| steps.iter().map(|(&s, p)| (s, pick(p))).collect())
                .collect();
            across(&per_run)
                .iter()
                .map(|s| (s.x, s.mean))
                .collect::<Vec<_>>()
        };
        let mut plot = Plot::new(
            &format!("Connection changes: {layer} ({})", group.name),
            "step",
            "connections (log scale)",
            360.0,
            250.0,
        )
        .y_log();
        for (name, c, pick) in [
            (
                "revived",
                colour(2),
                (|p| p.revived) as fn(&Progress) -> f64,
            ),
            ("regrown", colour(0), |p| p.regrown),
            ("dropped", colour(3), |p| p.dropped),
        ] {
            let points = series(pick);
            if points.len() <= DOTS_UP_TO {
                for &(x, y) in &points {
                    plot.dot(x, y, c, &format!("{layer} {name} at step {x}: {y:.1}"));
                }
            }
            plot.line(points, c, false);
            plot.legend(name, c);
        }
        charts.push(plot.finish());
        let active = series(|p| 100.0 * p.active / p.total);
        // Layers often share a density: dash every other one so both show.
        density.line(active, colour(4 + li), li % 2 == 1);
        density.legend(layer, colour(4 + li));
    }
    charts.push(density.finish());
    charts
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

/// Kernels per layer above which the tap grid is left out (it would be a
/// poster, not a chart); the heat map still shows.
const MAX_GRID_KERNELS: usize = 4096;

/// One export folder: per layer, its kernels' active taps and the tap
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
        let caption = format!(
            "{}: {:.1}% of connections active. Red: positive weight, blue: negative, darker = larger |w|; grey: pruned.",
            layer.name,
            100.0 * layer.density()
        );
        if o * c <= MAX_GRID_KERNELS {
            let title = format!("Active taps: {} ({o}×{c} kernels of {kh}×{kw})", layer.name);
            let grid = kernel_grid(&title, layer.shape, &layer.mask, layer.weight.as_deref());
            let _ = write!(
                s,
                "<figure>{grid}<figcaption>{}</figcaption></figure>",
                escape(&caption)
            );
        }
        let heat = heat_map(
            &format!("Tap frequency: {}", layer.name),
            kh,
            kw,
            &layer.tap_frequency(),
        );
        let _ = write!(s, "<figure>{heat}</figure>");
    }
    s.push_str("</div>");
    s
}
