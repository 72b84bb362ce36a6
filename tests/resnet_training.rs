//! The CIFAR ResNets through the training loop: they learn on the bundled
//! sample, a few ResNet-20 steps give the same bits on 1 and 2 threads, a
//! run resumes bit for bit (dense and sparse), and a checkpoint whose
//! tensors do not fit the model is refused with the tensor's name.

use std::path::{Path, PathBuf};

mod common;

use hebbsparse::checkpoint::{Reader, Tensors, Writer};
use hebbsparse::cifar::{load_cifar10, Split};
use hebbsparse::config::{LrSchedule, Mode, Normalization, TrainConfig};
use hebbsparse::recipe::model_defaults;
use hebbsparse::sparse_conv::model::{Arch, ModelSpec};
use hebbsparse::sparse_conv::rules::Allocation;
use hebbsparse::sparse_conv::{
    ConvPath, DSConfig, Model, PruneDims, ResNet, ResNetConfig, Rule, Shortcut, Sparsity,
};
use hebbsparse::state::{read_state, write_state};
use hebbsparse::tensor::optim::{Sgd, SgdConfig};
use hebbsparse::tensor::{tape, Rng, Tensor};
use hebbsparse::train::{EpochEnd, Event, Trainer};

fn sample() -> (Split, Split) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample");
    let data = load_cifar10(&dir).expect("the bundled sample loads");
    (data.train, data.test)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hebbsparse-resnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A ResNet of `depth` in `mode`, with the ResNets' defaults (layer groups,
/// ERK) and a short recipe.
fn config(depth: usize, mode: Mode) -> TrainConfig {
    let mut c = TrainConfig {
        model: ModelSpec::new(Arch::ResNet { depth }),
        epochs: 2,
        batch_size: 16,
        lr: 0.05,
        lr_schedule: LrSchedule::Cosine,
        weight_decay: 5e-4,
        normalize: Normalization::Cifar10,
        progress_every: Some(3),
        update_interval: 2,
        total_fraction: 0.2,
        keep_fraction: 0.1,
        seed: 5,
        ..TrainConfig::for_mode(mode)
    };
    model_defaults(&mut c);
    c
}

fn run_to_end(t: &mut Trainer, train: &Split) {
    while !t.finished() {
        assert_eq!(
            t.run_epoch(train, &|| false, &mut |_| {}).unwrap(),
            EpochEnd::Finished
        );
    }
}

/// Every parameter and buffer, and each sparse layer's mask and strength,
/// as bits.
fn state_bits(t: &Trainer) -> Vec<u64> {
    let mut v: Vec<u64> = t
        .net
        .named_parameters()
        .iter()
        .chain(&t.net.named_buffers())
        .flat_map(|(_, p)| p.to_vec())
        .map(|x| x.to_bits() as u64)
        .collect();
    for (_, l) in t.net.sparse_layers() {
        v.extend(l.mask().iter().map(|&m| m as u64));
        v.extend(l.strength().iter().map(|s| s.to_bits()));
    }
    v
}

#[test]
fn a_resnet_learns_on_the_sample() {
    let (train, _) = sample();
    let train = train.take(256);
    let mut t = Trainer::new(TrainConfig {
        epochs: 6,
        batch_size: 32,
        lr: 0.05,
        lr_schedule: LrSchedule::Constant,
        log_every: Some(8),
        ..config(8, Mode::Dense)
    })
    .unwrap();
    let mut losses = Vec::new();
    while !t.finished() {
        t.run_epoch(&train, &|| false, &mut |e| {
            if let Event::Log { loss, .. } = e {
                losses.push(loss);
            }
        })
        .unwrap();
    }
    // One loss line per epoch of 8 batches. Chance is ln 10 = 2.303; the
    // network fits these 256 images well below it.
    assert_eq!(losses.len(), 6);
    assert!(
        losses[5] < 1.9 && losses[5] < losses[0] - 0.3,
        "the loss should fall: {losses:?}"
    );
}

#[test]
fn resnet20_steps_are_bitwise_the_same_on_one_and_two_threads() {
    let (train, _) = sample();
    let train = train.take(48);
    for mode in [Mode::Dense, Mode::Rigl] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut t = Trainer::new(TrainConfig {
                    epochs: 1,
                    ..config(20, mode)
                })
                .unwrap();
                run_to_end(&mut t, &train);
                state_bits(&t)
            })
        };
        let one = run(1);
        assert!(one == run(2), "{mode:?}: 1 and 2 threads differ");
    }
}

#[test]
fn a_resnet_run_resumes_bit_for_bit_dense_and_sparse() {
    let (train, _) = sample();
    let train = train.take(64);
    for mode in [Mode::Dense, Mode::HebbianGrow, Mode::Rigl, Mode::Hebbian] {
        let mut straight = Trainer::new(config(8, mode)).unwrap();
        run_to_end(&mut straight, &train);

        let path = tmp(&format!("resnet-{}.ckpt", mode.name()));
        let mut first = Trainer::new(config(8, mode)).unwrap();
        first.run_epoch(&train, &|| false, &mut |_| {}).unwrap();
        first.save(&path, train.len()).unwrap();
        let mut resumed = Trainer::resume(config(8, mode), &path, train.len()).unwrap();
        assert_eq!(resumed.epoch, 1);
        run_to_end(&mut resumed, &train);
        assert!(
            state_bits(&straight) == state_bits(&resumed),
            "{mode:?}: the resumed run differs"
        );
    }
}

/// `model`'s state as [`write_state`] writes it, read back as tensors.
fn saved_state(model: &dyn Model) -> Vec<u8> {
    let mut w = Writer::default();
    let mut opt = Sgd::new(model.parameters(), SgdConfig::new(0.1, 0.9));
    // One step, so that the momentum buffers exist and are saved too.
    for p in model.parameters() {
        *p.grad_mut() = Some(vec![0.5; p.numel()]);
    }
    opt.step();
    write_state(&mut w, model, &opt);
    w.buf
}

fn load_into(bytes: &[u8], model: &mut dyn Model) -> Result<(), String> {
    let mut r = Reader::new(bytes);
    let mut tensors = Tensors::read(&mut r)?;
    let mut opt = Sgd::new(model.parameters(), SgdConfig::new(0.1, 0.9));
    read_state(&mut tensors, model, &mut opt)?;
    tensors.finish()
}

fn resnet(shortcut: Shortcut, classes: usize) -> ResNet {
    let cfg = ResNetConfig {
        depth: 8,
        num_classes: classes,
        shortcut,
        sparse_stem: false,
        sparse_projection: false,
        sparse_classifier: false,
    };
    ResNet::new(&cfg, None, &mut Rng::seed(1)).unwrap()
}

#[test]
fn checkpoint_tensors_that_do_not_fit_are_refused_by_name() {
    let a = saved_state(&resnet(Shortcut::A, 10));
    // The same network reads its own state back, every buffer included.
    let mut same = resnet(Shortcut::A, 10);
    load_into(&a, &mut same).unwrap();
    // Option B's projections are missing from option A's state …
    let err = load_into(&a, &mut resnet(Shortcut::B, 10)).unwrap_err();
    assert!(
        err.contains("layer2.0.shortcut.0.weight is missing"),
        "{err}"
    );
    // … and unexpected when B's state is read into A.
    let b = saved_state(&resnet(Shortcut::B, 10));
    let err = load_into(&b, &mut resnet(Shortcut::A, 10)).unwrap_err();
    assert!(
        err.contains("does not have") && err.contains("layer2.0.shortcut.0.weight"),
        "{err}"
    );
    // A classifier of another size: the wrong shape, with both shapes.
    let err = load_into(&a, &mut resnet(Shortcut::A, 5)).unwrap_err();
    assert!(
        err.contains("fc.weight has shape [10, 64] in the checkpoint, the model wants [5, 64]"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_of_another_network_is_refused_by_its_settings() {
    let (train, _) = sample();
    let train = train.take(32);
    let mut t = Trainer::new(TrainConfig {
        epochs: 1,
        ..config(8, Mode::Dense)
    })
    .unwrap();
    run_to_end(&mut t, &train);
    let path = tmp("arch.ckpt");
    t.save(&path, train.len()).unwrap();
    let other = TrainConfig {
        epochs: 1,
        ..config(14, Mode::Dense)
    };
    let err = Trainer::resume(other, &path, train.len()).err().unwrap();
    assert!(
        err.to_string()
            .contains("--model (checkpoint: resnet8, this run: resnet14)"),
        "{err}"
    );
}

/// The sparse kernels and the dense ones on the masked weight train the
/// same sparse ResNet: the same losses and weights up to the order of
/// summation (batch norm amplifies rounding a little, so 1e-3).
#[test]
fn sparse_and_dense_kernels_train_the_same_resnet() {
    let (train, _) = sample();
    let train = train.take(64);
    for mode in [Mode::Static, Mode::Rigl, Mode::HebbianGrow] {
        let config = TrainConfig {
            epochs: 1,
            log_every: Some(1),
            ..config(8, mode)
        };
        common::paths::assert_paths_agree(&config, &train, 4, 1e-3);
    }
}

/// The ResNet evaluates in batches of 32 for speed (its activations are
/// large); an image's logits must not depend on that choice, on the dense
/// kernels or the sparse ones.
#[test]
fn resnet_logits_do_not_depend_on_the_evaluation_batch() {
    let (_, test) = sample();
    let test = test.take(96);
    for mode in [Mode::Dense, Mode::Static] {
        let mut t = Trainer::new(config(8, mode)).unwrap();
        let bits = |t: &mut Trainer, b: usize| -> Vec<u32> {
            let logits = t.logits(&test, b).unwrap();
            assert_eq!(logits.len(), 10 * test.len());
            logits.into_iter().map(f32::to_bits).collect()
        };
        let whole = bits(&mut t, test.len());
        let eval = t.net.eval_batch_size();
        assert!(eval < test.len() && test.len() % eval == 0);
        for b in [eval, 48] {
            assert!(bits(&mut t, b) == whole, "{mode:?}: batches of {b} differ");
        }
    }
}

/// Evaluation applies each batch norm, shortcut and ReLU inside the
/// convolution before it (`ResNet::forward_eval`, which `forward` takes
/// under `no_grad` in evaluation mode). Its logits must be bitwise those
/// of the separate ops, which the forward pass with the tape recording
/// runs: dense, and sparse on each kernel path with the stem, the option B
/// projection and the classifier sparse too; running statistics and
/// affine parameters away from their initial values.
#[test]
fn evaluation_with_the_batch_norm_in_the_convolution_gives_the_same_bits() {
    let x = Tensor::uniform(&[5, 3, 32, 32], -2.0, 2.0, &mut Rng::seed(9));
    let mut nets = vec![
        ("dense, option A".to_string(), resnet(Shortcut::A, 10)),
        ("dense, option B".to_string(), resnet(Shortcut::B, 10)),
    ];
    for path in [ConvPath::Sparse, ConvPath::Dense, ConvPath::Auto] {
        let cfg = ResNetConfig {
            depth: 8,
            num_classes: 10,
            shortcut: Shortcut::B,
            sparse_stem: true,
            sparse_projection: true,
            sparse_classifier: true,
        };
        let config = DSConfig {
            total_fraction: 0.3,
            keep_fraction: 0.2,
            prune_dims: PruneDims::Layer,
            rule: Rule::static_mask(),
            path,
            ..DSConfig::default()
        };
        let sparsity = Sparsity {
            config,
            allocation: Allocation::Uniform,
        };
        let net = ResNet::new(&cfg, Some(sparsity), &mut Rng::seed(2)).unwrap();
        nets.push((format!("sparse, {} path", path.name()), net));
    }
    for (what, mut net) in nets {
        let mut r = Rng::seed(3);
        let tensors = net
            .named_parameters()
            .into_iter()
            .chain(net.named_buffers());
        for (name, t) in tensors.filter(|(n, _)| n.contains("bn") || n.contains("shortcut.1")) {
            for v in t.data_mut().iter_mut() {
                *v = match name.rsplit('.').next().unwrap() {
                    "running_var" => r.uniform(0.2, 2.2),
                    "num_batches_tracked" => *v,
                    _ => r.uniform(-1.0, 1.0),
                };
            }
        }
        net.set_training(false);
        let bits = |t: Tensor| -> Vec<u32> { t.data().iter().map(|v| v.to_bits()).collect() };
        let separate = bits(net.forward(&x));
        tape::clear();
        let fused = bits(tape::no_grad(|| net.forward_eval(&x)));
        assert!(fused == separate, "{what}: the logits differ");
        // `forward` takes the same path when nothing records.
        assert!(
            bits(tape::no_grad(|| net.forward(&x))) == fused,
            "{what}: forward"
        );
    }
}
