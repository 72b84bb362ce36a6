//! What the report's charts draw: labels that turn when crowded, one
//! accuracy scale from zero with chance marked, mask updates marked,
//! series that coincide still visible, kernel grids and their colour
//! scales, big layers cropped, and heat maps for networks of many layers.

mod report_fixture;

use report_fixture::*;

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
