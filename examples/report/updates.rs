//! The charts of a group's mask updates. For a network with a few sparse
//! layers (the LeNet's two), a chart per layer of the connections dropped,
//! regrown and revived at each update, and one of every layer's turnover;
//! for more (ResNet-20's 18), whose charts would fill pages, two heat maps
//! with a row per layer and a column per update (or run of updates): the turnover, and the
//! share of the regrown connections that the same update had dropped (the
//! `reset` count: a rule that regrows what it prunes moves nothing).

use std::collections::BTreeSet;

use crate::charts::DOTS_UP_TO;
use crate::grid::heat_map;
use crate::metrics::{across, Group, Progress};
use crate::svg::{colour, Plot, Shape, Stroke};

/// Up to this many sparse layers, a chart per layer; past it, heat maps.
const CHARTS_PER_LAYER_UP_TO: usize = 6;

/// How each kind of change is drawn in the connection-change charts. The
/// regrown count often equals the dropped one (SET, RigL and Hebbian
/// growth regrow what they drop), so dropped is a wide pale line with big
/// round markers, and regrown a dashed line with small square ones on top:
/// where they coincide, both still show.
const CHANGES: [(&str, usize, Stroke, Shape, f64); 3] = [
    (
        "dropped",
        3,
        Stroke {
            width: 5.0,
            dash: None,
            opacity: 0.4,
        },
        Shape::Circle,
        5.5,
    ),
    (
        "regrown",
        0,
        Stroke {
            width: 2.0,
            dash: Some("6 3"),
            opacity: 1.0,
        },
        Shape::Square,
        3.0,
    ),
    (
        "revived",
        2,
        Stroke {
            width: 2.0,
            dash: Some("2 2"),
            opacity: 1.0,
        },
        Shape::Diamond,
        2.6,
    ),
];

/// For one group with mask updates: per sparse layer, the connections
/// dropped, regrown and revived at each progress step (mean over runs),
/// then one chart of the turnover: the share of each layer's active
/// connections that every update drops.
pub fn progress(group: &Group) -> Vec<String> {
    let layers = group.layers();
    if layers.is_empty() {
        return Vec::new();
    }
    if layers.len() > CHARTS_PER_LAYER_UP_TO {
        return progress_maps(group, &layers);
    }
    let mut charts = Vec::new();
    let mut turnover = Plot::new(
        &format!("Turnover ({})", group.name),
        "step",
        "dropped (% of active connections)",
        360.0,
        250.0,
    )
    .x_from_zero()
    // Shares: one scale for every mode, so that the charts compare.
    .y_range(0.0, 100.0);
    for (li, layer) in layers.iter().enumerate() {
        let series = |pick: &dyn Fn(&Progress) -> f64| {
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
        .x_from_zero()
        .y_log();
        for (name, c, stroke, shape, r) in CHANGES {
            let c = colour(c);
            let points = series(&|p| match name {
                "dropped" => p.dropped,
                "regrown" => p.regrown,
                _ => p.revived,
            });
            plot.line(points.clone(), c, stroke);
            if points.len() <= DOTS_UP_TO {
                for &(x, y) in &points {
                    let tip = format!("{layer} {name} at step {x}: {y:.1}");
                    plot.marker(x, y, c, (shape, r), &tip);
                }
            }
            plot.legend_line(name, c, stroke, Some(shape));
        }
        charts.push(plot.finish());
        let share = series(&|p| 100.0 * p.dropped / p.active_before());
        let c = colour(4 + li);
        // Layers often turn over alike (SET: a third of each): the first is
        // a wide pale line with large markers, the others narrower, dashed
        // every other one, with smaller markers of other shapes, so that
        // lines and markers on top leave the ones below showing.
        let stroke = match li {
            0 => Stroke {
                width: 4.0,
                dash: None,
                opacity: 0.5,
            },
            _ if li % 2 == 1 => Stroke::DASHED,
            _ => Stroke::SOLID,
        };
        let shape = [Shape::Circle, Shape::Square, Shape::Diamond][li % 3];
        let r = (5.5 - 2.5 * li as f64).max(2.5);
        if share.len() <= DOTS_UP_TO {
            for &(x, y) in &share {
                let tip = format!("{layer} at step {x}: {y:.1}% dropped");
                turnover.marker(x, y, c, (shape, r), &tip);
            }
        }
        turnover.line(share, c, stroke);
        turnover.legend_line(layer, c, stroke, Some(shape));
    }
    charts.push(turnover.finish());
    charts
}

/// At most this many columns in a heat map of updates: a 30-epoch
/// ResNet run makes hundreds of updates, and a column each would draw a
/// map several thousand pixels wide (and write a quarter of a megabyte of
/// SVG); past it, each column is a run of consecutive updates.
const UPDATE_COLUMNS_UP_TO: usize = 60;

/// The heat maps of [`progress`] for many layers: per layer (row) and
/// update (column), the mean over the group's runs of the share of the
/// layer's active connections dropped, and of the regrown ones that the
/// same update had dropped (`reset`, written by the cifar example since it
/// counts it; a cell without data is drawn empty). Past
/// [`UPDATE_COLUMNS_UP_TO`] updates, a column is the mean over a run of
/// consecutive updates, all of the same length but the last.
fn progress_maps(group: &Group, layers: &[String]) -> Vec<String> {
    let steps: Vec<u64> = layers
        .iter()
        .flat_map(|l| group.runs.iter().filter_map(move |r| r.layer(l)))
        .flat_map(|steps| steps.keys().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if steps.is_empty() {
        return Vec::new();
    }
    let columns: Vec<&[u64]> = steps
        .chunks(steps.len().div_ceil(UPDATE_COLUMNS_UP_TO))
        .collect();
    let values = |share: &dyn Fn(&Progress) -> Option<f64>| -> Vec<f64> {
        let mut v = Vec::with_capacity(layers.len() * columns.len());
        for layer in layers {
            for column in &columns {
                let at: Vec<f64> = column
                    .iter()
                    .flat_map(|step| {
                        group
                            .runs
                            .iter()
                            .filter_map(move |r| r.layer(layer)?.get(step))
                    })
                    .filter_map(share)
                    .collect();
                // NaN: no run has a value there.
                v.push(at.iter().sum::<f64>() / at.len() as f64);
            }
        }
        v
    };
    let turnover = values(&|p| {
        let before = p.active_before();
        (before > 0.0).then(|| p.dropped / before)
    });
    let reset = values(&|p| Some(p.reset? / p.regrown).filter(|_| p.regrown > 0.0));
    let name_of = |r: usize, c: usize| match columns[c] {
        [step] => format!("{} at step {step}", layers[r]),
        run => format!(
            "{} at steps {} to {} ({} updates)",
            layers[r],
            run[0],
            run[run.len() - 1],
            run.len()
        ),
    };
    let mut span = format!(
        "{} updates, steps {} to {}",
        steps.len(),
        steps[0],
        steps[steps.len() - 1]
    );
    if columns[0].len() > 1 {
        span += &format!(", {} a column", columns[0].len());
    }
    vec![
        heat_map(
            &format!("Turnover by layer ({})", group.name),
            (layers.len(), columns.len()),
            ("layer", &span),
            &turnover,
            &name_of,
            "dropped, % of the layer's active connections",
            layers,
        ),
        heat_map(
            &format!("Regrown where dropped, by layer ({})", group.name),
            (layers.len(), columns.len()),
            ("layer", &span),
            &reset,
            &name_of,
            "regrown connections the same update had dropped, % of the regrown",
            layers,
        ),
    ]
}
