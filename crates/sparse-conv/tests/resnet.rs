//! The CIFAR ResNets: their shapes, parameter counts and names, which layers
//! are sparse and how the density is spread over them, evaluation mode, and
//! the model API of both networks.

use sparse_conv::model::{Arch, ModelSpec, Sparsity};
use sparse_conv::rules::{Allocation, Rule};
use sparse_conv::{DSConfig, LeNet, Model, PruneDims, ResNet, ResNetConfig, Shortcut};
use tensor::optim::{Sgd, SgdConfig};
use tensor::{no_grad, Rng, Tensor};

fn config(depth: usize, shortcut: Shortcut) -> ResNetConfig {
    ResNetConfig {
        depth,
        num_classes: 10,
        shortcut,
        sparse_stem: false,
        sparse_projection: false,
        sparse_classifier: false,
    }
}

fn erk(density: f64) -> Sparsity {
    Sparsity {
        config: DSConfig {
            keep_fraction: density * 2.0 / 3.0,
            total_fraction: density,
            prune_dims: PruneDims::Layer,
            rule: Rule::static_mask(),
            ..DSConfig::default()
        },
        allocation: Allocation::Erk,
    }
}

fn count(net: &dyn Model) -> usize {
    net.parameters().iter().map(|p| p.numel()).sum()
}

#[test]
fn resnet20_has_0_27m_parameters_with_pytorch_names() {
    let net = ResNet::new(&config(20, Shortcut::A), None, &mut Rng::seed(0)).unwrap();
    assert_eq!(count(&net), 269_722);
    let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 1 + 2 + 9 * 2 * 3 + 2);
    assert_eq!(&names[..3], ["conv1.weight", "bn1.weight", "bn1.bias"]);
    assert!(names.contains(&"layer2.0.conv1.weight".to_string()));
    assert!(names.contains(&"layer3.2.bn2.bias".to_string()));
    assert_eq!(&names[names.len() - 2..], ["fc.weight", "fc.bias"]);
    let buffers: Vec<String> = net.named_buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(buffers.len(), 19 * 3);
    assert_eq!(
        &buffers[..3],
        [
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked"
        ]
    );
    let shapes: Vec<Vec<usize>> = net
        .named_parameters()
        .iter()
        .filter(|(n, _)| n == "layer2.0.conv1.weight" || n == "fc.weight")
        .map(|(_, t)| t.shape().to_vec())
        .collect();
    assert_eq!(shapes, [vec![32, 16, 3, 3], vec![10, 64]]);
}

#[test]
fn deeper_resnets_and_option_b() {
    for (depth, params) in [(32, 464_154), (56, 853_018)] {
        let net = ResNet::new(&config(depth, Shortcut::A), None, &mut Rng::seed(0)).unwrap();
        assert_eq!(count(&net), params, "resnet{depth}");
    }
    // Option B adds a 1×1 conv and a batch norm to the two widening blocks:
    // 16·32 + 64 and 32·64 + 128.
    let net = ResNet::new(&config(20, Shortcut::B), None, &mut Rng::seed(0)).unwrap();
    assert_eq!(count(&net), 269_722 + 512 + 64 + 2048 + 128);
    assert!(net
        .named_parameters()
        .iter()
        .any(|(n, _)| n == "layer3.0.shortcut.0.weight"));
    assert!(ResNet::new(&config(21, Shortcut::A), None, &mut Rng::seed(0)).is_err());
}

#[test]
fn forward_gives_logits_and_eval_mode_uses_running_statistics() {
    let mut net = ResNet::new(&config(8, Shortcut::A), None, &mut Rng::seed(1)).unwrap();
    let x = Tensor::uniform(&[4, 3, 32, 32], -1.0, 1.0, &mut Rng::seed(2));
    let y_train = no_grad(|| net.forward(&x));
    assert_eq!(y_train.shape(), [4, 10]);
    // One training pass moved the running statistics away from (0, 1).
    let (_, rm) = &net.named_buffers()[0];
    assert!(rm.data().iter().any(|&v| v != 0.0));
    net.set_training(false);
    let before: Vec<Vec<f32>> = net
        .named_buffers()
        .iter()
        .map(|(_, t)| t.to_vec())
        .collect();
    let y_eval = no_grad(|| net.forward(&x));
    let after: Vec<Vec<f32>> = net
        .named_buffers()
        .iter()
        .map(|(_, t)| t.to_vec())
        .collect();
    assert_eq!(before, after, "evaluation must not move the statistics");
    assert_ne!(y_train.to_vec(), y_eval.to_vec());
    // In evaluation each image's logits do not depend on the rest of the batch.
    let one = Tensor::from_vec(x.to_vec()[..3 * 32 * 32].to_vec(), &[1, 3, 32, 32]);
    let y_one = no_grad(|| net.forward(&one));
    for (a, b) in y_one.to_vec().iter().zip(&y_eval.to_vec()[..10]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn sparse_layers_are_the_3x3_convs_but_the_stem_and_erk_meets_the_density() {
    let cfg = config(20, Shortcut::B);
    let net = ResNet::new(&cfg, Some(erk(0.1)), &mut Rng::seed(3)).unwrap();
    let layers = net.sparse_layers();
    assert_eq!(layers.len(), 18);
    assert_eq!(layers[0].0, "layer1.0.conv1");
    assert_eq!(layers[17].0, "layer3.2.conv2");
    let shapes: Vec<[usize; 4]> = layers
        .iter()
        .map(|(_, l)| l.weight().shape().try_into().unwrap())
        .collect();
    assert_eq!(shapes, cfg.sparse_shapes());
    let (active, total) = layers.iter().fold((0, 0), |(a, t), (_, l)| {
        (a + l.active(), t + l.mask().len())
    });
    let density = active as f64 / total as f64;
    assert!((density - 0.1).abs() < 0.002, "overall density {density}");
    // ERK: the small first stage is denser than the wide last one.
    assert!(layers[0].1.density() > layers[17].1.density());
    // Stem, projections and classifier on request.
    let all = ResNetConfig {
        sparse_stem: true,
        sparse_projection: true,
        sparse_classifier: true,
        ..cfg
    };
    let net = ResNet::new(&all, Some(erk(0.1)), &mut Rng::seed(3)).unwrap();
    let names: Vec<String> = net.sparse_layers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 18 + 1 + 2 + 1);
    for n in ["conv1", "layer2.0.shortcut.0", "fc"] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
    let shapes: Vec<[usize; 4]> = net
        .sparse_layers()
        .iter()
        .map(|(_, l)| l.weight().shape().try_into().unwrap())
        .collect();
    assert_eq!(shapes, all.sparse_shapes());
}

#[test]
fn a_sparse_resnet_trains_and_keeps_its_masks() {
    let mut net = ModelSpec::new(Arch::ResNet { depth: 8 })
        .build(Some(erk(0.2)), &mut Rng::seed(4))
        .unwrap();
    let mut opt = Sgd::new(net.parameters(), SgdConfig::new(0.05, 0.9));
    let mut rng = Rng::seed(5);
    let x = Tensor::uniform(&[8, 3, 32, 32], -1.0, 1.0, &mut rng);
    let labels: Vec<usize> = (0..8).map(|i| i % 10).collect();
    let first = net.train_step(&mut opt, &x, &labels);
    let mut last = first;
    for _ in 0..15 {
        last = net.train_step(&mut opt, &x, &labels);
    }
    assert!(last < first - 0.5, "loss {first} → {last}");
    for (name, l) in net.sparse_layers() {
        let w = l.weight().to_vec();
        assert!(
            w.iter().zip(l.mask()).all(|(&w, &m)| m || w == 0.0),
            "{name}: a masked weight moved"
        );
    }
}

#[test]
fn arch_names_parse() {
    assert_eq!("lenet".parse::<Arch>(), Ok(Arch::LeNet));
    assert_eq!("resnet56".parse::<Arch>(), Ok(Arch::ResNet { depth: 56 }));
    for bad in ["resnet", "resnet18", "resnet2", "vgg"] {
        let e = bad.parse::<Arch>().unwrap_err();
        assert!(e.contains("6n + 2"), "{bad}: {e}");
    }
    assert_eq!(Arch::ResNet { depth: 20 }.name(), "resnet20");
    let lenet = LeNet::dense(&mut Rng::seed(0));
    assert_eq!(lenet.named_parameters()[4].0, "fc1.weight");
    assert!(lenet.sparse_layers().is_empty());
}
