//! The CIFAR training loop end to end on the bundled sample: the loss falls,
//! hebbian masks end with exactly k2 connections per kernel, checkpoints
//! resume bit for bit, and bad checkpoints are refused.

use std::path::{Path, PathBuf};

mod common;

use hebbsparse::cifar::{load_cifar10, Split};
use hebbsparse::config::{LrSchedule, Mode, TrainConfig};
use hebbsparse::sparse_conv::rules::{Grow, Rule};
use hebbsparse::sparse_conv::strength::Measure;
use hebbsparse::tensor::ops::linear_small::SMALL_BATCH_ROWS;
use hebbsparse::tensor::Tensor;
use hebbsparse::train::{EpochEnd, Event, TrainError, Trainer};

fn sample() -> (Split, Split) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample");
    let data = load_cifar10(&dir).expect("the bundled sample loads");
    (data.train, data.test)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hebbsparse-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The parameter of that name.
fn param(t: &Trainer, name: &str) -> Tensor {
    t.net
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

fn weights(t: &Trainer) -> Vec<u32> {
    t.net
        .parameters()
        .iter()
        .flat_map(|p| p.to_vec())
        .map(f32::to_bits)
        .collect()
}

#[test]
fn hebbian_run_on_the_sample_learns_and_keeps_k2_per_kernel() {
    let (train, test) = sample();
    // The notebook's rule in batches of 16 at lr 0.05, with its last
    // update three quarters of the way through (the notebook's batch of 4
    // and lr 0.001 learn nothing in this few steps).
    let config = TrainConfig {
        mode: Mode::Hebbian,
        epochs: 3,
        batch_size: 16,
        lr: 0.05,
        progress_every: Some(50),
        log_every: Some(30),
        update_interval: 5,
        rule: Rule {
            stop_updates_at: 0.75,
            ..Rule::notebook()
        },
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config).unwrap();
    let mut logged = Vec::new();
    let mut progress_steps = 0;
    for _ in 0..3 {
        let end = t
            .run_epoch(&train, &|| false, &mut |e| match e {
                Event::Log { loss, .. } => logged.push(loss),
                Event::Progress { stats, names, .. } => {
                    progress_steps += 1;
                    assert_eq!(stats.len(), 2);
                    assert_eq!(names, ["conv1", "conv2"]);
                }
                Event::Batch { .. } => {}
            })
            .unwrap();
        assert_eq!(end, EpochEnd::Finished);
    }
    // 3 epochs of 63 batches: 189 steps, loss lines at batches 30 and 60
    // of each, updates at steps 50 and 100 (150 is past 75 %).
    assert_eq!((t.global_step, logged.len(), progress_steps), (189, 6, 2));
    // Chance is ln 10 = 2.303: the loss must end well below it and below
    // where it began.
    assert!(
        logged[5] < 2.2 && logged[5] < logged[0] - 0.1,
        "the loss should fall: {logged:?}"
    );
    for (_, layer) in t.net.sparse_layers() {
        let (n, _, k2) = layer.group_sizes();
        assert_eq!((n, k2), (25, 3));
        for kernel in layer.mask().chunks(25) {
            assert_eq!(kernel.iter().filter(|&&m| m).count(), 3);
        }
        let w = layer.weight().to_vec();
        assert!(w.iter().zip(layer.mask()).all(|(w, &m)| m || *w == 0.0));
    }
    let eval = t.evaluate(&test).unwrap();
    assert_eq!(eval.total.iter().sum::<usize>(), 500);
    let summary: serde_json::Value = serde_json::from_str(&t.summary_json(&eval)).unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["model"], "lenet");
    assert_eq!(summary["mode"], "hebbian");
    assert_eq!(summary["epochs"], 3);
    assert_eq!(summary["steps"], 189);
    assert_eq!(summary["layers"], serde_json::json!(["conv1", "conv2"]));
    assert_eq!(summary["per_class_accuracy"].as_array().unwrap().len(), 10);
    assert_eq!(summary["conv_density"].as_array().unwrap().len(), 2);
    let acc = summary["test_accuracy"].as_f64().unwrap();
    assert!((acc - eval.accuracy()).abs() < 1e-6);
    assert!((summary["density"].as_f64().unwrap() - 0.12).abs() < 1e-9);
    for key in [
        "train_images_per_second",
        "eval_images_per_second",
        "train_seconds",
    ] {
        assert!(summary[key].as_f64().unwrap() > 0.0, "{key}: {summary}");
    }
}

fn small_config(mode: Mode, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        progress_every: Some(15),
        update_interval: 3,
        seed: 7,
        ..TrainConfig::for_mode(mode)
    }
}

fn run_to_end(t: &mut Trainer, train: &Split) {
    while !t.finished() {
        assert_eq!(
            t.run_epoch(train, &|| false, &mut |_| {}).unwrap(),
            EpochEnd::Finished
        );
    }
}

#[test]
fn one_epoch_plus_a_resumed_epoch_equals_two_straight_for_every_preset() {
    let (train, _) = sample();
    let train = train.take(160); // 40 batches per epoch
    for mode in Mode::ALL {
        // The cosine learning rate too, so that its position is restored.
        let config = |epochs| TrainConfig {
            lr_schedule: LrSchedule::Cosine,
            ..small_config(mode, epochs)
        };
        let mut straight = Trainer::new(config(2)).unwrap();
        run_to_end(&mut straight, &train);

        // Stopped after its first epoch of two, as a killed run would be.
        let path = tmp(&format!("resume-{}.ckpt", mode.name()));
        let mut first = Trainer::new(config(2)).unwrap();
        first.run_epoch(&train, &|| false, &mut |_| {}).unwrap();
        first.save(&path, train.len()).unwrap();
        let mut resumed = Trainer::resume(config(2), &path, train.len()).unwrap();
        assert_eq!(resumed.epoch, 1);
        run_to_end(&mut resumed, &train);

        assert!(
            weights(&straight) == weights(&resumed),
            "{mode:?}: resumed weights differ"
        );
        let masks = |t: &Trainer| {
            t.net
                .sparse_layers()
                .iter()
                .map(|(_, l)| l.mask().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(masks(&straight), masks(&resumed));
        // The layers' own state continues too: accumulated strength, sample
        // and pass counts.
        let layer_state = |t: &Trainer| {
            t.net
                .sparse_layers()
                .iter()
                .map(|(_, l)| (l.strength().to_vec(), l.strength_samples(), l.passes()))
                .collect::<Vec<_>>()
        };
        assert_eq!(layer_state(&straight), layer_state(&resumed));
    }
}

#[test]
fn an_interrupted_epoch_resumes_mid_epoch_bit_for_bit() {
    let (train, _) = sample();
    let train = train.take(160);
    let mut straight = Trainer::new(small_config(Mode::Hebbian, 1)).unwrap();
    run_to_end(&mut straight, &train);

    let mut t = Trainer::new(small_config(Mode::Hebbian, 1)).unwrap();
    let done = std::cell::Cell::new(0);
    let end = t.run_epoch(&train, &|| done.get() >= 17, &mut |e| {
        if let Event::Batch { done: d, .. } = e {
            done.set(d);
        }
    });
    assert_eq!(end.unwrap(), EpochEnd::Interrupted);
    assert_eq!(t.batch_in_epoch, 17);
    let path = tmp("interrupted.ckpt");
    t.save(&path, train.len()).unwrap();
    let mut resumed = Trainer::resume(small_config(Mode::Hebbian, 1), &path, train.len()).unwrap();
    run_to_end(&mut resumed, &train);
    assert!(weights(&straight) == weights(&resumed));
}

#[test]
fn corrupt_truncated_and_mismatched_checkpoints_are_refused() {
    let (train, _) = sample();
    let train = train.take(40);
    let mut t = Trainer::new(small_config(Mode::Hebbian, 1)).unwrap();
    run_to_end(&mut t, &train);
    let path = tmp("good.ckpt");
    t.save(&path, train.len()).unwrap();
    let good = std::fs::read(&path).unwrap();
    let refuse = |bytes: &[u8], config: TrainConfig, expect: &str| {
        let p = tmp("bad.ckpt");
        std::fs::write(&p, bytes).unwrap();
        match Trainer::resume(config, &p, train.len()) {
            Err(TrainError::Checkpoint(m)) => assert!(m.contains(expect), "{m}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a bad checkpoint was accepted ({expect})"),
        }
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    refuse(&flipped, small_config(Mode::Hebbian, 1), "checksum");
    refuse(
        &good[..good.len() - 9],
        small_config(Mode::Hebbian, 1),
        "truncated",
    );
    refuse(
        b"not a checkpoint at all, just some text",
        small_config(Mode::Hebbian, 1),
        "HEBBCKPT",
    );
    let mut version = good.clone();
    version[8] = 99;
    refuse(&version, small_config(Mode::Hebbian, 1), "version 99");
    refuse(&good, small_config(Mode::Random, 1), "different settings");
    refuse(
        &good,
        TrainConfig {
            lr: 0.5,
            ..small_config(Mode::Hebbian, 1)
        },
        "different settings",
    );
    refuse(
        &good,
        TrainConfig {
            mode: Mode::Dense,
            ..small_config(Mode::Hebbian, 1)
        },
        "different settings",
    );
    assert!(matches!(
        Trainer::resume(small_config(Mode::Hebbian, 1), &tmp("missing.ckpt"), 40),
        Err(TrainError::Checkpoint(m)) if m.contains("cannot read")
    ));
}

#[test]
fn a_diverging_loss_stops_the_run_with_an_error() {
    let (train, _) = sample();
    let mut t = Trainer::new(TrainConfig {
        mode: Mode::Dense,
        ..TrainConfig::default()
    })
    .unwrap();
    // A poisoned weight stands in for a diverging run: every logit of class 0
    // becomes NaN, and so does the loss.
    param(&t, "fc3.weight").data_mut()[0] = f32::NAN;
    let before: Vec<f32> = param(&t, "fc1.weight").to_vec();
    match t.run_epoch(&train.take(400), &|| false, &mut |_| {}) {
        Err(
            e @ TrainError::NonFinite {
                epoch: 1, batch: 1, ..
            },
        ) => {
            assert!(e.to_string().contains("--lr"), "{e}")
        }
        other => panic!(
            "expected a non-finite loss error, got {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(
        param(&t, "fc1.weight").to_vec(),
        before,
        "no step was taken with the NaN loss"
    );
    assert_eq!(t.global_step, 0);
}

#[test]
fn bad_settings_are_errors() {
    for bad in [
        TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            lr: -1.0,
            ..TrainConfig::default()
        },
        TrainConfig {
            momentum: 1.5,
            ..TrainConfig::default()
        },
        TrainConfig {
            progress_every: Some(0),
            ..TrainConfig::default()
        },
    ] {
        assert!(matches!(Trainer::new(bad), Err(TrainError::Config(_))));
    }
}

/// The whole Hebbian training loop (strength sampling and progress steps
/// included) gives the same bits with 1 and 2 threads, for both measures.
#[test]
fn hebbian_training_is_bitwise_identical_across_thread_counts() {
    let (train, _) = sample();
    let train = train.take(96);
    for strength in [Measure::Coactivation, Measure::Correlation] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let config = TrainConfig {
                    batch_size: 16,
                    progress_every: Some(4),
                    update_interval: 1,
                    strength,
                    lr: 0.01,
                    ..small_config(Mode::Hebbian, 1)
                };
                let mut t = Trainer::new(config).unwrap();
                run_to_end(&mut t, &train);
                let strengths: Vec<u64> = t
                    .net
                    .sparse_layers()
                    .iter()
                    .flat_map(|(_, l)| l.strength().to_vec())
                    .map(f64::to_bits)
                    .collect();
                (weights(&t), strengths)
            })
        };
        let one = run(1);
        assert!(one == run(2), "{strength:?}: 1 and 2 threads differ");
    }
}

#[test]
fn data_that_is_not_ten_classes_is_an_error() {
    let (train, _) = sample();
    let mut odd = train.take(8);
    odd.labels[3] = 12;
    let mut t = Trainer::new(small_config(Mode::Dense, 1)).unwrap();
    assert!(matches!(
        t.run_epoch(&odd, &|| false, &mut |_| {}),
        Err(TrainError::Config(m)) if m.contains("10 outputs")
    ));
    assert!(t.evaluate(&odd).is_err());
}

/// A mask update happens every `progress_every` steps inside the rule's
/// window and never after it, and the counts it reports add up.
#[test]
fn mask_updates_stop_at_the_end_of_the_window() {
    let (train, _) = sample();
    let train = train.take(200); // 50 batches per epoch, 100 steps
    for mode in [Mode::Set, Mode::Rigl, Mode::HebbianGrow, Mode::Hebbian] {
        let config = TrainConfig {
            progress_every: Some(10),
            ..small_config(mode, 2)
        };
        let stop = config.rule.stop_updates_at;
        let mut t = Trainer::new(config).unwrap();
        let mut steps = Vec::new();
        while !t.finished() {
            t.run_epoch(&train, &|| false, &mut |e| {
                if let Event::Progress {
                    step,
                    stats,
                    layers,
                    ..
                } = e
                {
                    steps.push(step);
                    for (s, l) in stats.iter().zip(layers) {
                        assert_eq!(s.active, l.active());
                        assert_eq!(s.kept + s.revived + s.regrown, s.active);
                    }
                }
            })
            .unwrap();
        }
        let want: Vec<u64> = (1..=10)
            .map(|k| 10 * k)
            .filter(|&s| s as f64 <= stop * 100.0)
            .collect();
        assert_eq!(steps, want, "{mode:?}");
    }
}

/// Resuming with different rule settings is refused, naming each differing
/// option as the command line spells it; an option given at its default
/// value is no difference.
#[test]
fn a_resume_with_other_settings_names_the_options() {
    let (train, _) = sample();
    let train = train.take(40);
    let mut t = Trainer::new(small_config(Mode::Hebbian, 1)).unwrap();
    run_to_end(&mut t, &train);
    let path = tmp("settings.ckpt");
    t.save(&path, train.len()).unwrap();
    let other = TrainConfig {
        rule: Rule {
            grow: Grow::Random,
            stop_updates_at: 0.5,
            ..Rule::notebook()
        },
        ..small_config(Mode::Hebbian, 1)
    };
    match Trainer::resume(other, &path, train.len()) {
        Err(TrainError::Checkpoint(m)) => {
            assert!(
                m.contains("--grow (checkpoint: strength, this run: random)"),
                "{m}"
            );
            assert!(m.contains("--stop-updates-at"), "{m}");
            assert!(!m.contains("--lr "), "{m}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("other settings were accepted"),
    }
    // 40 images in batches of 4: 10 batches, so the default interval is
    // min(2000, 10/4) = 2; saying so explicitly is the same run.
    let mut t = Trainer::new(TrainConfig {
        progress_every: None,
        ..small_config(Mode::Hebbian, 1)
    })
    .unwrap();
    run_to_end(&mut t, &train);
    t.save(&path, train.len()).unwrap();
    let explicit = TrainConfig {
        progress_every: Some(2),
        ..small_config(Mode::Hebbian, 1)
    };
    assert!(Trainer::resume(explicit, &path, train.len()).is_ok());
}

#[test]
fn the_cosine_learning_rate_falls_from_lr_to_zero() {
    let t = Trainer::new(TrainConfig {
        lr: 0.1,
        lr_schedule: LrSchedule::Cosine,
        ..small_config(Mode::Dense, 1)
    })
    .unwrap();
    assert_eq!(t.lr_at(0, 100), 0.1);
    assert!((t.lr_at(50, 100) - 0.05).abs() < 1e-7);
    assert!(t.lr_at(100, 100).abs() < 1e-7);
}

/// The sparse kernels and the dense ones train the same network: the same
/// losses and weights up to the order of summation.
#[test]
fn sparse_and_dense_kernels_train_the_same_network() {
    let (train, _) = sample();
    let train = train.take(160);
    for mode in [Mode::Static, Mode::Set, Mode::Hebbian] {
        let config = TrainConfig {
            log_every: Some(10),
            ..small_config(mode, 1)
        };
        common::paths::assert_paths_agree(&config, &train, 4, 1e-4);
    }
}

/// An image's logits are the same bits whatever batch it is evaluated in,
/// on the dense and the sparse kernels, after some training (so that the
/// weights are not the initial ones): the evaluation batch size is free to
/// be chosen for speed. Batches of at most `SMALL_BATCH_ROWS` images take
/// the linear layers' unpacked loops, which sum in another order: among
/// themselves the same bits, and equal to the others to rounding.
#[test]
fn logits_do_not_depend_on_the_evaluation_batch() {
    let (train, test) = sample();
    for mode in [Mode::Dense, Mode::Static] {
        let mut t = Trainer::new(TrainConfig {
            mode,
            epochs: 1,
            ..TrainConfig::default()
        })
        .unwrap();
        t.run_epoch(&train.take(200), &|| false, &mut |_| {})
            .unwrap();
        let bits = |t: &mut Trainer, b: usize| -> Vec<u32> {
            let logits = t.logits(&test, b).unwrap();
            assert_eq!(logits.len(), 10 * test.len());
            logits.into_iter().map(f32::to_bits).collect()
        };
        let whole = bits(&mut t, test.len());
        // (None of these leaves a last batch of 8 images or fewer.)
        for b in [20, 100, t.net.eval_batch_size()] {
            assert!(b > SMALL_BATCH_ROWS && test.len() % b == 0);
            assert!(bits(&mut t, b) == whole, "{mode:?}: batches of {b} differ");
        }
        let one = bits(&mut t, 1);
        for b in [2, 7, SMALL_BATCH_ROWS] {
            assert!(
                bits(&mut t, b) == one,
                "{mode:?}: small batches of {b} differ"
            );
        }
        for (p, q) in one.iter().zip(&whole) {
            let (p, q) = (f32::from_bits(*p), f32::from_bits(*q));
            assert!(
                (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                "{mode:?}: {p} vs {q}"
            );
        }
    }
}
