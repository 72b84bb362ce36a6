//! The numbers of a study as markdown tables, for the docs that quote
//! them, so that every number there is remade by one command: the final
//! test accuracy of each group (every seed, and mean ± std over the
//! finished runs), the test accuracy of every run at every epoch, the
//! mask updates' connection changes per layer, and where the exported
//! masks' active taps sit.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::export::Export;
use crate::metrics::{mean_std, Group, Run};

/// The tables, one after the other (the connection changes only if some
/// group updates masks, the masks' spread only with exports).
pub fn tables(groups: &[Group], exports: &[Export]) -> String {
    let mut s = format!("{}\n{}", final_table(groups), epoch_table(groups));
    if let Some(t) = changes_table(groups) {
        s.push('\n');
        s.push_str(&t);
    }
    if !exports.is_empty() {
        s.push('\n');
        s.push_str(&spread_tables(exports));
    }
    s
}

/// `| group | seed 0 | seed 1 | … | mean ± std |`: a finished run's final
/// test accuracy, an unfinished one's last epoch in parentheses with the
/// epoch; the mean and (sample) standard deviation over finished runs.
pub fn final_table(groups: &[Group]) -> String {
    let seeds: BTreeSet<Option<u64>> = groups
        .iter()
        .flat_map(|g| g.runs.iter().map(|r| r.seed))
        .collect();
    let mut s = String::from("| group |");
    for seed in &seeds {
        let _ = write!(s, " {} |", seed_title(*seed));
    }
    s.push_str(" mean ± std |\n|---|");
    s.push_str(&"---:|".repeat(seeds.len() + 1));
    s.push('\n');
    for g in groups {
        let _ = write!(s, "| {} |", g.name);
        for seed in &seeds {
            let cells: Vec<String> = g
                .runs
                .iter()
                .filter(|r| r.seed == *seed)
                .map(|r| final_cell(r))
                .collect();
            let _ = write!(s, " {} |", cells.join(", "));
        }
        let finished: Vec<f64> = g
            .runs
            .iter()
            .filter(|r| r.summary.is_some())
            .filter_map(|r| r.final_accuracy())
            .map(|a| 100.0 * a)
            .collect();
        let stat = match (finished.len(), mean_std(&finished)) {
            (0, _) | (_, None) => "–".to_string(),
            (1, Some((m, _))) => format!("{m:.2}% (1 run)"),
            (n, Some((m, sd))) => format!("**{m:.2} ± {sd:.2}%** ({n} runs)"),
        };
        let _ = writeln!(s, " {stat} |");
    }
    s
}

/// `| run | 1 | 2 | … |`: every run's test accuracy (%) at the end of
/// each epoch, one row per run, grouped as the groups are.
pub fn epoch_table(groups: &[Group]) -> String {
    let epochs = groups
        .iter()
        .flat_map(|g| g.runs.iter())
        .filter_map(|r| r.accuracy.keys().next_back().copied())
        .max()
        .unwrap_or(0);
    let mut s = String::from("| epoch |");
    for e in 1..=epochs {
        let _ = write!(s, " {e} |");
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(epochs as usize));
    s.push('\n');
    for g in groups {
        for r in &g.runs {
            let _ = write!(s, "| {}, {} |", g.name, seed_title(r.seed));
            for e in 1..=epochs {
                match r.accuracy.get(&e) {
                    Some(a) => {
                        let _ = write!(s, " {:.1} |", 100.0 * a);
                    }
                    None => s.push_str(" |"),
                }
            }
            s.push('\n');
        }
    }
    s
}

fn seed_title(seed: Option<u64>) -> String {
    seed.map_or("seed ?".to_string(), |s| format!("seed {s}"))
}

/// A finished run's final accuracy; an unfinished one's last epoch.
fn final_cell(r: &Run) -> String {
    match (&r.summary, r.final_accuracy()) {
        (Some(_), Some(a)) => format!("{:.2}%", 100.0 * a),
        (None, Some(a)) => {
            let epoch = r.accuracy.keys().next_back().copied().unwrap_or(0);
            format!("({:.2}%, epoch {epoch})", 100.0 * a)
        }
        (_, None) => "–".to_string(),
    }
}

/// `| layer | group | … |` for the groups whose runs update masks: per
/// layer, the mean turnover of an update (the share of the layer's active
/// connections it drops) and, over all updates, the share of the regrown
/// connections that the same update had dropped (`reset / regrown`; "–"
/// where the metrics do not say). `None` without any mask update.
pub fn changes_table(groups: &[Group]) -> Option<String> {
    let updating: Vec<&Group> = groups.iter().filter(|g| !g.layers().is_empty()).collect();
    let mut layers: Vec<String> = Vec::new();
    for g in &updating {
        for l in g.layers() {
            if !layers.contains(&l) {
                layers.push(l);
            }
        }
    }
    if layers.is_empty() {
        return None;
    }
    let mut s = String::from("| layer |");
    for g in &updating {
        let _ = write!(s, " {} |", g.name);
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(updating.len()));
    s.push('\n');
    for layer in &layers {
        let _ = write!(s, "| {layer} |");
        for g in &updating {
            let updates: Vec<_> = g
                .runs
                .iter()
                .filter_map(|r| r.layer(layer))
                .flat_map(|steps| steps.values())
                .collect();
            let turnover: Vec<f64> = updates
                .iter()
                .filter(|p| p.active_before() > 0.0)
                .map(|p| 100.0 * p.dropped / p.active_before())
                .collect();
            let regrown: f64 = updates.iter().map(|p| p.regrown).sum();
            let reset: Option<f64> = updates.iter().map(|p| p.reset).sum();
            let turnover =
                mean_std(&turnover).map_or("–".to_string(), |(m, _)| format!("{m:.1}%"));
            let reset = match reset {
                Some(r) if regrown > 0.0 => format!("{:.0}%", 100.0 * r / regrown),
                _ => "–".to_string(),
            };
            let _ = write!(s, " {turnover} · {reset} |");
        }
        s.push('\n');
    }
    Some(s)
}

/// Two tables over the exports' layers (by name, in the first export's
/// order): the share of its input channels a filter reads, beside a
/// uniformly drawn mask's at the first export's density; and the share of
/// the active taps on the busiest quarter of the input channels and at the
/// kernel centre, with the input channels no tap reads when there are any.
pub fn spread_tables(exports: &[Export]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for e in exports {
        for l in &e.layers {
            if !names.contains(&l.name.as_str()) {
                names.push(&l.name);
            }
        }
    }
    let header = |first: &str| {
        let mut h = format!("| layer |{first}");
        for e in exports {
            let label = e.mode.as_deref().unwrap_or("export");
            let _ = write!(h, " {label}, {} |", seed_title(e.seed));
        }
        let columns = exports.len() + first.matches('|').count();
        h.push_str("\n|---|");
        h.push_str(&"---:|".repeat(columns));
        h.push('\n');
        h
    };
    let layer =
        |e: &Export, name: &str| e.layers.iter().find(|l| l.name == name).map(|l| l.spread());
    let mut reach = header(" density | uniform mask |");
    let mut gather = header("");
    for name in &names {
        let first = exports
            .iter()
            .find_map(|e| e.layers.iter().find(|l| l.name == *name));
        let (density, uniform) = first.map_or((f64::NAN, f64::NAN), |l| {
            (l.density(), l.spread().uniform_reach)
        });
        let _ = write!(
            reach,
            "| {name} | {:.1}% | {:.0}% |",
            100.0 * density,
            100.0 * uniform
        );
        let _ = write!(gather, "| {name} |");
        for e in exports {
            match layer(e, name) {
                Some(sp) => {
                    let _ = write!(reach, " {:.0}% |", 100.0 * sp.reach);
                    let _ = write!(
                        gather,
                        " {:.0}% · {:.0}%",
                        100.0 * sp.busiest_quarter,
                        100.0 * sp.centre
                    );
                    if sp.unread_inputs > 0 {
                        let _ = write!(gather, " · {} unread", sp.unread_inputs);
                    }
                    gather.push_str(" |");
                }
                None => {
                    reach.push_str(" |");
                    gather.push_str(" |");
                }
            }
        }
        reach.push('\n');
        gather.push('\n');
    }
    format!("{reach}\n{gather}")
}
