//! The prune/grow rules: invariants after every update for every named rule,
//! each criterion choosing what it says, the drop-fraction schedule, the
//! update window, and ERK allocation.

use sparse_conv::rules::{
    erk_densities, update_group, DropFraction, DropSchedule, Group, Grow, GrowInit, Prune, Rule,
};
use sparse_conv::{DSConfig, DSConv2d, PruneDims};
use tensor::optim::{Sgd, SgdConfig};
use tensor::{Conv2dOptions, Rng, Tensor};

fn layer(config: DSConfig, seed: u64) -> DSConv2d {
    DSConv2d::new(
        4,
        6,
        (5, 5),
        Conv2dOptions::default(),
        true,
        config,
        &mut Rng::seed(seed),
    )
    .unwrap()
}

fn named() -> Vec<(&'static str, Rule)> {
    vec![
        ("notebook", Rule::notebook()),
        ("random", Rule::random()),
        ("hebbian-grow", Rule::hebbian_grow()),
        ("set", Rule::set()),
        ("rigl", Rule::rigl()),
        ("hebbian-grow-fresh", Rule::hebbian_grow_fresh()),
        ("hebbian-rigl", Rule::hebbian_rigl()),
        (
            "prune only",
            Rule {
                grow: Grow::None,
                ..Rule::set()
            },
        ),
    ]
}

/// One SGD step on a random batch; returns nothing, leaves the gradient.
fn step(l: &mut DSConv2d, opt: &mut Sgd, rng: &mut Rng) {
    let x = Tensor::uniform(&[2, 4, 9, 9], -1.0, 1.0, rng);
    let y = l.forward(&x);
    let r = Tensor::uniform(y.shape(), -1.0, 1.0, rng);
    opt.zero_grad();
    y.mul(&r).sum().backward();
    opt.step();
    l.enforce_mask(opt);
}

#[test]
fn every_rule_keeps_its_invariants_after_each_update() {
    for dims in [PruneDims::Kernel, PruneDims::Filter, PruneDims::Layer] {
        for (name, rule) in named() {
            let config = DSConfig {
                rule,
                prune_dims: dims,
                update_interval: 2,
                ..DSConfig::default()
            };
            let mut l = layer(config, 3);
            let mut opt = Sgd::new(l.parameters(), SgdConfig::new(0.05, 0.9));
            let mut rng = Rng::seed(4);
            let (n, _, k2) = l.group_sizes();
            let total_steps = 40;
            for s in 1..=total_steps {
                step(&mut l, &mut opt, &mut rng);
                if s % 5 != 0 {
                    continue;
                }
                let before_mask = l.mask().to_vec();
                let before_w = l.weight().to_vec();
                let d = l.drop_count(s, total_steps);
                let stats = l.update(Some(&mut opt), s, total_steps);
                let want = if rule.grow == Grow::None {
                    // Keeps k2 − d of what is active, and grows nothing.
                    let active: Vec<usize> = before_mask
                        .chunks(n)
                        .map(|g| g.iter().filter(|&&m| m).count())
                        .collect();
                    active.iter().map(|&a| a.min(k2 - d)).collect()
                } else {
                    vec![k2; before_mask.len() / n]
                };
                let got: Vec<usize> = l
                    .mask()
                    .chunks(n)
                    .map(|g| g.iter().filter(|&&m| m).count())
                    .collect();
                assert_eq!(got, want, "{name} {dims:?} step {s}: active per group");
                // The counts add up.
                let active_before = before_mask.iter().filter(|&&m| m).count();
                assert_eq!(stats.kept + stats.dropped, active_before, "{name}");
                assert_eq!(stats.kept + stats.revived + stats.regrown, stats.active);
                assert_eq!(stats.active, l.active());
                // Masked weights and their momentum are zero.
                let w = l.weight().to_vec();
                let buf = opt.momentum_buffer_mut(l.weight()).unwrap().clone();
                for i in 0..w.len() {
                    if !l.mask()[i] {
                        assert_eq!((w[i], buf[i]), (0.0, 0.0), "{name}: masked tap {i}");
                    }
                }
                // Under zero init every tap that changed value is zero now.
                if rule.grow_init == GrowInit::Zero {
                    for i in 0..w.len() {
                        if l.mask()[i] && w[i] != before_w[i] {
                            assert_eq!(w[i], 0.0, "{name}: grown tap {i} is not zero");
                        }
                    }
                }
                if rule.prune != Prune::Strength {
                    assert_eq!(stats.revived, 0, "{name}: only strength pruning revives");
                }
            }
        }
    }
}

#[test]
fn magnitude_pruning_keeps_the_largest_active_weights() {
    let config = DSConfig {
        rule: Rule {
            drop_fraction: DropFraction::Fixed(1.0 / 3.0),
            ..Rule::set()
        },
        ..DSConfig::default()
    };
    let mut l = layer(config, 5);
    let before_w = l.weight().to_vec();
    let before_mask = l.mask().to_vec();
    l.update(None, 1, 10);
    for (g, (wg, (mg, m_after))) in before_w
        .chunks(25)
        .zip(before_mask.chunks(25).zip(l.mask().chunks(25)))
        .enumerate()
    {
        // 3 active, drop 1: the two largest |w| stay with their values.
        let mut active: Vec<usize> = (0..25).filter(|&i| mg[i]).collect();
        active.sort_by(|&a, &b| wg[b].abs().total_cmp(&wg[a].abs()));
        for &i in &active[..2] {
            assert!(m_after[i], "group {g}: tap {i} should be kept");
            assert_eq!(l.weight().data()[g * 25 + i], wg[i]);
        }
    }
}

#[test]
fn gradient_growth_picks_the_largest_dense_gradient_of_that_batch() {
    let config = DSConfig {
        rule: Rule {
            drop_fraction: DropFraction::Fixed(1.0 / 3.0),
            drop_schedule: DropSchedule::Constant,
            ..Rule::rigl()
        },
        ..DSConfig::default()
    };
    let mut l = layer(config, 7);
    let mut opt = Sgd::new(l.parameters(), SgdConfig::new(0.01, 0.9));
    let mut rng = Rng::seed(8);
    // An ordinary step on the sparse kernels has no gradient at inactive taps.
    step(&mut l, &mut opt, &mut rng);
    let sparse_grad = l.weight().grad().unwrap();
    assert!(sparse_grad
        .iter()
        .zip(l.mask())
        .all(|(g, &m)| m || *g == 0.0));
    // The step before a gradient-growth update asks for the dense gradient,
    // as the training loop does.
    l.set_dense_grad(true);
    assert!(!l.uses_sparse_path());
    step(&mut l, &mut opt, &mut rng);
    let grad = l.weight().grad().unwrap();
    let inactive_with_grad = grad
        .iter()
        .zip(l.mask())
        .filter(|(g, &m)| !m && **g != 0.0)
        .count();
    assert!(
        inactive_with_grad > 0,
        "the gradient is dense: masked taps have one"
    );
    let before_mask = l.mask().to_vec();
    let before_w = l.weight().to_vec();
    l.update(Some(&mut opt), 1, 10);
    assert!(l.uses_sparse_path(), "the request ends with the update");
    for g in 0..before_mask.len() / 25 {
        let r = g * 25..(g + 1) * 25;
        let (gm, gw, gg) = (
            &before_mask[r.clone()],
            &before_w[r.clone()],
            &grad[r.clone()],
        );
        // The one not kept among the 3 active is the smallest |w|.
        let mut active: Vec<usize> = (0..25).filter(|&i| gm[i]).collect();
        active.sort_by(|&a, &b| gw[b].abs().total_cmp(&gw[a].abs()));
        let kept = &active[..2];
        // The grown one has the largest |grad| among the other 23.
        let best = (0..25)
            .filter(|i| !kept.contains(i))
            .max_by(|&a, &b| gg[a].abs().total_cmp(&gg[b].abs()))
            .unwrap();
        let grown: Vec<usize> = (0..25)
            .filter(|&i| l.mask()[g * 25 + i] && !kept.contains(&i))
            .collect();
        assert_eq!(grown, vec![best], "group {g}");
        assert_eq!(l.weight().data()[g * 25 + best], 0.0, "zero init");
    }
}

#[test]
fn strength_growth_picks_the_strongest_inactive_taps() {
    let config = DSConfig {
        rule: Rule {
            drop_fraction: DropFraction::Fixed(1.0 / 3.0),
            drop_schedule: DropSchedule::Constant,
            ..Rule::hebbian_grow()
        },
        update_interval: 1,
        ..DSConfig::default()
    };
    let mut l = layer(config, 9);
    let x = Tensor::uniform(&[2, 4, 9, 9], -1.0, 1.0, &mut Rng::seed(10));
    l.forward(&x);
    let strength = l.strength().to_vec();
    let (before_mask, before_w) = (l.mask().to_vec(), l.weight().to_vec());
    l.update(None, 1, 10);
    for g in 0..before_mask.len() / 25 {
        let r = g * 25..(g + 1) * 25;
        let (gm, gw, gs) = (&before_mask[r.clone()], &before_w[r.clone()], &strength[r]);
        let mut active: Vec<usize> = (0..25).filter(|&i| gm[i]).collect();
        active.sort_by(|&a, &b| gw[b].abs().total_cmp(&gw[a].abs()));
        let kept = &active[..2];
        let best = (0..25)
            .filter(|i| !kept.contains(i))
            .max_by(|&a, &b| gs[a].total_cmp(&gs[b]))
            .unwrap();
        let grown_strength: Vec<f64> = (0..25)
            .filter(|&i| l.mask()[g * 25 + i] && !kept.contains(&i))
            .map(|i| gs[i])
            .collect();
        assert_eq!(grown_strength, vec![gs[best]], "group {g}");
    }
}

#[test]
fn the_drop_fraction_schedule_has_its_known_values() {
    let cosine = Rule {
        drop_fraction: DropFraction::Fixed(0.3),
        drop_schedule: DropSchedule::Cosine,
        stop_updates_at: 0.75,
        ..Rule::set()
    };
    // f(t) = 0.3 · ½(1 + cos(π t / 75)) over 100 steps.
    let at = |step| cosine.drop_fraction_at(0.0, step, 100);
    assert!((at(0) - 0.3).abs() < 1e-12);
    assert!((at(25) - 0.3 * 0.75).abs() < 1e-12, "cos(π/3) = ½");
    assert!(
        (at(37) - 0.3 * 0.5 * (1.0 + (std::f64::consts::PI * 37.0 / 75.0).cos())).abs() < 1e-12
    );
    assert!(at(75).abs() < 1e-12);
    assert!(at(90).abs() < 1e-12, "stays at 0 after the window");
    let constant = Rule::set();
    assert_eq!(constant.drop_fraction_at(0.0, 60, 100), 0.3);
    // The notebook's fraction comes from k1 and k2: (3 − 2) / 3 for 5×5.
    let l = layer(DSConfig::default(), 1);
    assert_eq!(l.drop_count(1, 100), 1);
    // Cosine at 3 taps: round(0.3 · 3 · c) is 1 while c ≥ 1/1.8.
    let l = layer(
        DSConfig {
            rule: cosine,
            ..DSConfig::default()
        },
        1,
    );
    assert_eq!((l.drop_count(0, 100), l.drop_count(70, 100)), (1, 0));
}

#[test]
fn updates_happen_only_inside_the_window() {
    let r = Rule::set(); // stops at 0.75
    assert!(r.in_window(75, 100));
    assert!(!r.in_window(76, 100));
    assert!(Rule::notebook().in_window(100, 100));
    assert!(!Rule::static_mask().in_window(0, 100));
    assert!(!Rule::static_mask().in_window(1, 100));
}

#[test]
fn erk_spreads_the_target_density_by_layer_shape() {
    let shapes = [[6, 3, 5, 5], [16, 6, 5, 5]];
    let d = erk_densities(&shapes, 0.12);
    let sizes = [450.0, 2400.0];
    let active: f64 = d.iter().zip(sizes).map(|(d, n)| d * n).sum();
    assert!((active - 0.12 * 2850.0).abs() < 1e-6, "total density kept");
    // ε·(6+3+5+5)/450 and ε·(16+6+5+5)/2400 with ε = 342/51.
    let eps = 342.0 / 51.0;
    assert!((d[0] - eps * 19.0 / 450.0).abs() < 1e-9);
    assert!((d[1] - eps * 32.0 / 2400.0).abs() < 1e-9);
    // A small layer that would exceed 1 is dense, and the rest absorb it.
    let d = erk_densities(&[[2, 1, 1, 1], [64, 64, 3, 3]], 0.5);
    assert_eq!(d[0], 1.0);
    let active = 2.0 + d[1] * 36864.0;
    assert!((active - 0.5 * 36866.0).abs() < 1e-6);
}

#[test]
fn nonsense_rules_are_refused() {
    for bad in [
        Rule {
            stop_updates_at: 1.5,
            ..Rule::set()
        },
        Rule {
            drop_fraction: DropFraction::Fixed(-0.1),
            ..Rule::set()
        },
        Rule {
            drop_fraction: DropFraction::Fixed(0.3),
            ..Rule::notebook()
        },
    ] {
        let config = DSConfig {
            rule: bad,
            ..DSConfig::default()
        };
        let e = DSConv2d::new(
            4,
            6,
            (5, 5),
            Conv2dOptions::default(),
            true,
            config,
            &mut Rng::seed(1),
        );
        assert!(e.is_err(), "{bad:?}");
    }
}

/// One group of 8 taps, 4 active, updated by `rule` with a drop of 2 and the
/// given strength and gradient. Returns the mask after and the stats.
fn update_eight(
    rule: &Rule,
    strength: &[f64],
    grad: &[f32],
) -> (Vec<bool>, sparse_conv::ProgressStats) {
    // Active taps 0..4 with |w| 4, 3, 2, 1: magnitude pruning keeps 0 and 1
    // and drops 2 and 3.
    let mut weight = vec![4.0, -3.0, 2.0, -1.0, 0.0, 0.0, 0.0, 0.0];
    let mut mask = vec![true, true, true, true, false, false, false, false];
    let g = Group {
        weight: &mut weight,
        mask: &mut mask,
        strength,
        grad: Some(grad),
    };
    let mut fresh = Vec::new();
    let stats = update_group(rule, g, 4, 2, &mut Rng::seed(1), &mut |_| 0.0, &mut fresh);
    (mask, stats)
}

#[test]
fn fresh_hebbian_growth_never_grows_back_what_it_just_dropped() {
    // The dropped taps 2 and 3 are the strongest: hebbian-grow takes them
    // straight back (an update that changed nothing but their weights);
    // the fresh variant grows the strongest of the others, 5 and 6.
    let strength = [0.0, 0.0, 9.0, 8.0, 1.0, 5.0, 4.0, 0.5];
    let grad = [0.0; 8];
    let (mask, s) = update_eight(&Rule::hebbian_grow(), &strength, &grad);
    assert_eq!(mask, [true, true, true, true, false, false, false, false]);
    assert_eq!((s.dropped, s.regrown, s.reset), (2, 2, 2));
    let (mask, s) = update_eight(&Rule::hebbian_grow_fresh(), &strength, &grad);
    assert_eq!(mask, [true, true, false, false, false, true, true, false]);
    assert_eq!((s.dropped, s.regrown, s.reset), (2, 2, 0));
}

#[test]
fn hebbian_rigl_grows_where_strength_times_gradient_is_largest() {
    // Among 4..8: strength wins alone at 4, the gradient alone at 7, the
    // product at 5 (2·3 = 6) and 6 (1.5·3 = 4.5) over 4 (9·0.1) and 7
    // (0.1·9).
    let strength = [0.0, 0.0, 0.0, 0.0, 9.0, 2.0, 1.5, 0.1];
    let grad = [0.0, 0.0, 0.0, 0.0, 0.1, 3.0, 3.0, 9.0];
    let (mask, _) = update_eight(&Rule::hebbian_rigl(), &strength, &grad);
    assert_eq!(mask, [true, true, false, false, false, true, true, false]);
    let (mask, _) = update_eight(&Rule::rigl(), &strength, &grad);
    assert!(mask[7], "RigL alone follows the gradient");
    let (mask, _) = update_eight(&Rule::hebbian_grow(), &strength, &grad);
    assert!(mask[4], "Hebbian growth alone follows the strength");
}
