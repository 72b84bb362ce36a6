//! DSConv2d: mask invariants through training, strength sampling, ties,
//! regrowth bounds, the random and static baselines, and a hand-checked case.
//! (The rules themselves are tested in `rules.rs`.)

use sparse_conv::rules::{GrowInit, Rule};
use sparse_conv::strength::{strength, StrengthConfig};
use sparse_conv::{DSConfig, DSConv2d, PruneDims};
use tensor::optim::{Sgd, SgdConfig};
use tensor::{Conv2dOptions, Conv2dShape, Rng, Tensor};

fn layer(cin: usize, cout: usize, k: (usize, usize), config: DSConfig, seed: u64) -> DSConv2d {
    DSConv2d::new(
        cin,
        cout,
        k,
        Conv2dOptions::default(),
        true,
        config,
        &mut Rng::seed(seed),
    )
    .unwrap()
}

/// Active connections in each group of `n` consecutive weights.
fn active_per_group(l: &DSConv2d, n: usize) -> Vec<usize> {
    l.mask()
        .chunks(n)
        .map(|g| g.iter().filter(|&&m| m).count())
        .collect()
}

fn assert_masked_weights_and_momentum_zero(l: &DSConv2d, opt: &mut Sgd) {
    let w = l.weight().to_vec();
    let buf = opt.momentum_buffer_mut(l.weight()).cloned();
    for (i, &m) in l.mask().iter().enumerate() {
        if !m {
            assert_eq!(w[i], 0.0, "masked weight {i} is {}", w[i]);
            if let Some(b) = &buf {
                assert_eq!(b[i], 0.0, "masked momentum {i} is {}", b[i]);
            }
        }
    }
}

#[test]
fn mask_holds_exactly_k2_per_group_through_training() {
    for (dims, seed) in [
        (PruneDims::Kernel, 1),
        (PruneDims::Filter, 2),
        (PruneDims::Layer, 3),
    ] {
        let config = DSConfig {
            update_interval: 3,
            prune_dims: dims,
            ..DSConfig::default()
        };
        // 5×3 kernels: n = 15, k1 = 1, k2 = 2 for Kernel groups.
        let mut l = layer(4, 6, (5, 3), config, seed);
        let (n, _, k2) = l.group_sizes();
        let mut opt = Sgd::new(
            l.parameters(),
            SgdConfig {
                weight_decay: 1e-3,
                ..SgdConfig::new(0.05, 0.9)
            },
        );
        let mut rng = Rng::seed(seed + 100);
        let mut updates = 0;
        for step in 0..40 {
            let x = Tensor::uniform(&[3, 4, 9, 7], -1.0, 1.0, &mut rng);
            let y = l.forward(&x);
            let r = Tensor::uniform(y.shape(), -1.0, 1.0, &mut rng);
            opt.zero_grad();
            y.mul(&r).sum().backward();
            opt.step();
            l.enforce_mask(&mut opt);
            if step % 7 == 6 {
                l.update(Some(&mut opt), 1, 1);
                updates += 1;
                assert!(
                    active_per_group(&l, n).iter().all(|&c| c == k2),
                    "{dims:?} step {step}"
                );
            }
            if step >= 6 {
                assert!(active_per_group(&l, n).iter().all(|&c| c == k2));
            }
            assert_masked_weights_and_momentum_zero(&l, &mut opt);
        }
        assert_eq!(updates, 5);
    }
}

#[test]
fn strength_accumulates_over_sampled_passes_only() {
    let config = DSConfig {
        update_interval: 3,
        ..DSConfig::default()
    };
    let mut l = layer(3, 4, (3, 3), config, 5);
    let x = Tensor::uniform(&[2, 3, 8, 6], -1.0, 1.0, &mut Rng::seed(6));
    let s = Conv2dShape::new(x.shape(), l.weight().shape(), Conv2dOptions::default()).unwrap();
    let y = l.conv.forward(&x);
    let one = strength(&s, &x.data(), &y.data(), &StrengthConfig::default()).unwrap();
    assert!(one.iter().any(|&v| v > 0.0));
    // Passes 0, 3 and 6 of seven are sampled.
    for _ in 0..7 {
        l.forward(&x);
    }
    assert_eq!((l.passes(), l.strength_samples()), (7, 3));
    for (acc, v) in l.strength().iter().zip(&one) {
        assert_eq!(*acc, 3.0 * *v as f64);
    }
    l.update(None, 1, 1);
    assert!(
        l.strength().iter().all(|&v| v == 0.0),
        "progress resets the strength"
    );
    assert_eq!(l.strength_samples(), 0);
}

#[test]
fn inference_mode_does_no_strength_work() {
    let mut l = layer(
        3,
        4,
        (3, 3),
        DSConfig {
            update_interval: 1,
            ..DSConfig::default()
        },
        7,
    );
    l.set_training(false);
    let x = Tensor::uniform(&[2, 3, 8, 6], -1.0, 1.0, &mut Rng::seed(8));
    for _ in 0..5 {
        l.forward(&x);
    }
    assert_eq!((l.passes(), l.strength_samples()), (0, 0));
    assert!(l.strength().iter().all(|&v| v == 0.0));
}

#[test]
fn all_zero_strength_ties_are_broken_by_the_seed() {
    // No forward pass at all: every strength is 0, every connection ties.
    let run = |seed| {
        let mut l = layer(2, 3, (5, 5), DSConfig::default(), seed);
        let stats = l.update(None, 1, 1);
        (l.mask().to_vec(), stats)
    };
    let (mask, stats) = run(11);
    // 5×5 kernels: k1 = ⌊2.5⌋ = 2, k2 = ⌊3.75⌋ = 3, over 6 kernels.
    assert!(mask
        .chunks(25)
        .all(|g| g.iter().filter(|&&m| m).count() == 3));
    // All 25 were active: 2 kept, 1 regrown in place (so reset), and the
    // 23 not kept count as dropped.
    assert_eq!(
        (
            stats.kept,
            stats.revived,
            stats.regrown,
            stats.dropped,
            stats.reset
        ),
        (12, 0, 6, 6 * 23, 6)
    );
    assert_eq!(run(11).0, mask, "same seed, same choice");
    assert_ne!(run(12).0, mask, "another seed breaks ties differently");
}

#[test]
fn regrown_values_lie_within_the_kaiming_bound() {
    // 6×4 kernels of 5×5: k1 = 2, k2 = 3.
    let mut l = layer(6, 4, (5, 5), DSConfig::default(), 13);
    // Give every weight and every momentum entry a sentinel far outside the
    // kaiming bound, so fresh values can be told apart from kept ones.
    let mut opt = Sgd::new(l.parameters(), SgdConfig::new(0.1, 0.9));
    l.weight().data_mut().fill(0.0);
    l.weight()
        .mul(&Tensor::full(l.weight().shape(), 1.0))
        .sum()
        .backward();
    opt.step(); // momentum = 1 everywhere, weights = −0.1
    l.weight().data_mut().fill(10.0);
    let stats = l.update(Some(&mut opt), 1, 1);
    // All were active: 2 kept and 1 regrown per kernel, the rest dropped.
    assert_eq!((stats.kept, stats.revived, stats.regrown), (48, 0, 24));
    let bound = 1.0 / (6.0f32 * 25.0).sqrt();
    let w = l.weight().to_vec();
    let momentum = opt.momentum_buffer_mut(l.weight()).unwrap().clone();
    let (mut kept, mut fresh) = (0, 0);
    for ((&wi, &m), &mi) in w.iter().zip(l.mask()).zip(&momentum) {
        if !m {
            assert_eq!((wi, mi), (0.0, 0.0), "pruned: weight and momentum zero");
        } else if wi == 10.0 {
            assert_eq!(mi, 1.0, "a kept connection keeps its momentum");
            kept += 1;
        } else {
            assert!(wi.abs() <= bound, "regrown value {wi} outside ±{bound}");
            assert_eq!(mi, 0.0, "a regrown connection starts with no momentum");
            fresh += 1;
        }
    }
    assert_eq!((kept, fresh), (48, 24));
    // With zero grow-init the regrown connections start at exactly zero.
    let mut z = layer(
        6,
        4,
        (5, 5),
        DSConfig {
            rule: Rule {
                grow_init: GrowInit::Zero,
                ..Rule::notebook()
            },
            ..DSConfig::default()
        },
        13,
    );
    let s = z.update(None, 1, 1);
    let zeros_active = z
        .weight()
        .data()
        .iter()
        .zip(z.mask())
        .filter(|(w, &m)| m && **w == 0.0)
        .count();
    assert!(zeros_active >= s.regrown);
}

#[test]
fn random_and_static_baselines_keep_the_counts() {
    let mut r = layer(
        3,
        6,
        (5, 5),
        DSConfig {
            rule: Rule::random(),
            ..DSConfig::default()
        },
        17,
    );
    assert_eq!(r.density(), 1.0, "random mode starts dense, like hebbian");
    let stats = r.update(None, 1, 1);
    assert_eq!(stats.active, 18 * 3);
    let first = r.mask().to_vec();
    r.update(None, 1, 1);
    assert!(r
        .mask()
        .chunks(25)
        .all(|g| g.iter().filter(|&&m| m).count() == 3));
    assert_ne!(r.mask(), &first[..], "a random step chooses anew");

    let s = layer(
        3,
        6,
        (5, 5),
        DSConfig {
            rule: Rule::static_mask(),
            ..DSConfig::default()
        },
        17,
    );
    assert!(s
        .mask()
        .chunks(25)
        .all(|g| g.iter().filter(|&&m| m).count() == 3));
    assert!((s.density() - 3.0 / 25.0).abs() < 1e-12);
    let fixed = s.mask().to_vec();
    let zeroed = s
        .weight()
        .data()
        .iter()
        .zip(&fixed)
        .all(|(w, &m)| m || *w == 0.0);
    assert!(zeroed, "a static layer's masked weights start at zero");
    assert!(
        !s.config.rule.in_window(1, 100),
        "a static mask is never updated"
    );
}

#[test]
fn hand_computed_strengths_pick_the_expected_connections() {
    // One input channel, 3×3, and one 2×2 kernel; a large bias makes every
    // output unit active, so the coactivation of tap (j, h) is the number of
    // active inputs it sees over the 2×2 output positions:
    //   X = 1 1 0      H(0,0) = X00+X01+X10+X11 = 1+1+1+0 = 3
    //       1 0 0      H(0,1) = X01+X02+X11+X12 = 1+0+0+0 = 1
    //       0 1 0      H(1,0) = X10+X11+X20+X21 = 1+0+0+1 = 2
    //                  H(1,1) = X11+X12+X21+X22 = 0+0+1+0 = 1
    // With n = 4, keep 0.25 → k1 = 1 and total 0.5 → k2 = 2: tap (0,0) is
    // kept with its weight, tap (1,0) is regrown, (0,1) and (1,1) are pruned.
    let config = DSConfig {
        keep_fraction: 0.25,
        total_fraction: 0.5,
        update_interval: 1,
        ..DSConfig::default()
    };
    let mut l = layer(1, 1, (2, 2), config, 19);
    l.conv.bias.as_ref().unwrap().data_mut()[0] = 10.0;
    let x = Tensor::from_vec(vec![1., 1., 0., 1., 0., 0., 0., 1., 0.], &[1, 1, 3, 3]);
    l.forward(&x);
    assert_eq!(l.strength(), &[3.0, 1.0, 2.0, 1.0]);
    let w_before = l.weight().to_vec();
    let stats = l.update(None, 1, 1);
    assert_eq!(l.mask(), &[true, false, true, false]);
    assert_eq!(
        l.weight().data()[0],
        w_before[0],
        "the kept tap keeps its weight"
    );
    assert_eq!((l.weight().data()[1], l.weight().data()[3]), (0.0, 0.0));
    // Taps 1, 2 and 3 were active and are not kept: dropped; tap 2 comes
    // back as the regrown one, with a fresh value.
    assert_eq!(
        (
            stats.kept,
            stats.revived,
            stats.regrown,
            stats.dropped,
            stats.reset
        ),
        (1, 0, 1, 3, 1)
    );
}

#[test]
fn bad_configuration_is_an_error_not_a_panic() {
    let bad = DSConfig {
        keep_fraction: 0.5,
        total_fraction: 0.2,
        ..DSConfig::default()
    };
    let e = DSConv2d::new(
        3,
        6,
        (5, 5),
        Conv2dOptions::default(),
        true,
        bad,
        &mut Rng::seed(1),
    );
    assert!(e.err().unwrap().to_string().contains("keep_fraction"));
    let zero = DSConfig {
        update_interval: 0,
        ..DSConfig::default()
    };
    assert!(DSConv2d::new(
        3,
        6,
        (5, 5),
        Conv2dOptions::default(),
        true,
        zero,
        &mut Rng::seed(1)
    )
    .is_err());
}

/// The fused conv block gives the bits of the three ops, on both kernel
/// paths, counts the pass once, and still samples strength on its passes.
#[test]
fn the_fused_block_equals_conv_relu_pool_and_counts_each_pass_once() {
    use sparse_conv::ConvPath;
    use tensor::nn::MaxPool2d;
    let pool = MaxPool2d::new(2);
    for path in [ConvPath::Sparse, ConvPath::Dense] {
        let config = DSConfig {
            rule: Rule::set(), // a random 12% mask from the start
            path,
            ..DSConfig::default()
        };
        let mut fused = layer(3, 6, (5, 5), config, 23);
        let mut plain = layer(3, 6, (5, 5), config, 23);
        let x = Tensor::uniform(&[3, 3, 16, 16], -1.0, 1.0, &mut Rng::seed(24));
        let a = fused.forward_relu_pool(&x, &pool);
        let b = pool.forward(&plain.forward(&x).relu());
        let bits = |t: &Tensor| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "{path:?}");
        assert_eq!((fused.passes(), plain.passes()), (1, 1));
    }
    // A Hebbian layer's first pass is sampled: the block still accumulates.
    let config = DSConfig {
        update_interval: 2,
        ..DSConfig::default()
    };
    let mut l = layer(3, 6, (5, 5), config, 25);
    let x = Tensor::uniform(&[2, 3, 16, 16], -1.0, 1.0, &mut Rng::seed(26));
    for _ in 0..3 {
        l.forward_relu_pool(&x, &pool);
    }
    assert_eq!((l.passes(), l.strength_samples()), (3, 2));

    // A sampled pass on the sparse kernels takes the fused op (with the
    // separate ops' bias sum) and samples from a conv output computed off
    // the tape: strength, values and every gradient are bitwise the three
    // ops'.
    let config = DSConfig {
        update_interval: 1, // the notebook's rule: it reads strength
        path: sparse_conv::ConvPath::Sparse,
        ..DSConfig::default()
    };
    let mut fused = layer(3, 6, (5, 5), config, 27);
    let mut plain = layer(3, 6, (5, 5), config, 27);
    let x = Tensor::uniform(&[8, 3, 32, 32], -1.0, 1.0, &mut Rng::seed(28));
    let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    // One backward per forward: a backward pass consumes the whole tape.
    // A random upstream gradient, so that sums in another order would round
    // differently.
    let a = fused.forward_relu_pool(&x, &pool);
    let r = Tensor::uniform(a.shape(), -1.0, 1.0, &mut Rng::seed(29));
    let av = a.to_vec();
    a.mul(&r).sum().backward();
    let b = pool.forward(&plain.forward(&x).relu());
    assert_eq!(bits(av), bits(b.to_vec()));
    b.mul(&r).sum().backward();
    for (f, p) in fused.parameters().iter().zip(plain.parameters()) {
        assert_eq!(bits(f.grad().unwrap()), bits(p.grad().unwrap()));
    }
    let strength_bits = |l: &DSConv2d| l.strength().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(strength_bits(&fused), strength_bits(&plain));
    assert_eq!((fused.strength_samples(), plain.strength_samples()), (1, 1));
    assert!(fused.strength().iter().any(|&v| v > 0.0));
}

/// A mask from outside keeps every invariant at once: weights and momentum
/// zero at its inactive taps, and the sparse kernels (whose layout is
/// rebuilt) agree with the dense ones on the very next forward pass. A
/// restored state does the same.
#[test]
fn set_mask_and_restore_keep_the_invariants() {
    use sparse_conv::ConvPath;
    let make = |path| {
        layer(
            3,
            4,
            (3, 3),
            DSConfig {
                rule: Rule::set(),
                path,
                ..DSConfig::default()
            },
            5,
        )
    };
    let (mut sparse, mut dense) = (make(ConvPath::Sparse), make(ConvPath::Dense));
    let x = Tensor::uniform(&[2, 3, 8, 8], -1.0, 1.0, &mut Rng::seed(6));
    let mut opt = Sgd::new(sparse.parameters(), SgdConfig::new(0.1, 0.9));
    // A step first, so that the momentum exists.
    sparse.forward(&x).sum().backward();
    opt.step();
    let n = sparse.mask().len();
    let mask: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
    assert!(sparse.set_mask(vec![true; n + 1], None).is_err());
    sparse.set_mask(mask.clone(), Some(&mut opt)).unwrap();
    assert_eq!(sparse.mask(), &mask[..]);
    assert_masked_weights_and_momentum_zero(&sparse, &mut opt);
    *dense.weight().data_mut() = sparse.weight().to_vec();
    *dense.conv.bias.as_ref().unwrap().data_mut() = sparse.conv.bias.as_ref().unwrap().to_vec();
    dense.set_mask(mask.clone(), None).unwrap();
    let (a, b) = (sparse.forward(&x).to_vec(), dense.forward(&x).to_vec());
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() < 1e-5, "{p} vs {q}");
    }
    // A state whose mask differs from the weights': restore zeroes them.
    let mut state = sparse.state();
    state.mask = (0..n).map(|i| i % 2 == 0).collect();
    sparse.restore(state.clone(), Some(&mut opt)).unwrap();
    assert_eq!(sparse.mask(), &state.mask[..]);
    assert_masked_weights_and_momentum_zero(&sparse, &mut opt);
}

/// An update keeps the strength it read, for exports, and starts the
/// accumulation again from zero.
#[test]
fn an_update_keeps_the_strength_that_decided_it() {
    let config = DSConfig {
        update_interval: 1,
        rule: Rule::hebbian_grow(),
        ..DSConfig::default()
    };
    let mut l = layer(3, 4, (3, 3), config, 7);
    assert!(l.decided_strength().0.is_empty());
    let x = Tensor::uniform(&[2, 3, 8, 8], -1.0, 1.0, &mut Rng::seed(8));
    for _ in 0..3 {
        l.forward(&x);
    }
    let before = l.strength().to_vec();
    assert_eq!(l.strength_samples(), 3);
    assert!(before.iter().any(|&s| s > 0.0));
    l.update(None, 1, 100);
    let (decided, samples) = l.decided_strength();
    assert_eq!((decided, samples), (&before[..], 3));
    assert_eq!(l.strength_samples(), 0);
    assert!(l.strength().iter().all(|&s| s == 0.0));
}
