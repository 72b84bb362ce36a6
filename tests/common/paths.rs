//! Training on the sparse kernels against training on the dense kernels
//! over the masked weights: what the two training tests (LeNet and ResNet)
//! share.

use hebbsparse::cifar::Split;
use hebbsparse::config::TrainConfig;
use hebbsparse::sparse_conv::ConvPath;
use hebbsparse::train::{Event, Trainer};

/// One epoch of `config` on `train` with every sparse layer's kernels
/// forced to `path`: the logged losses, and every parameter flattened.
pub fn losses_and_weights(
    config: TrainConfig,
    path: ConvPath,
    train: &Split,
) -> (Vec<f64>, Vec<f32>) {
    let mut t = Trainer::new(TrainConfig {
        conv_path: path,
        ..config
    })
    .unwrap();
    let mut losses = Vec::new();
    t.run_epoch(train, &|| false, &mut |e| {
        if let Event::Log { loss, .. } = e {
            losses.push(loss);
        }
    })
    .unwrap();
    let w = t.net.parameters().iter().flat_map(|p| p.to_vec()).collect();
    (losses, w)
}

/// Both paths train `config` on `train` to `logs` logged losses that agree
/// to `tol` relative (absolute below 1), and to weights that agree to `tol`.
pub fn assert_paths_agree(config: &TrainConfig, train: &Split, logs: usize, tol: f32) {
    let (ls, ws) = losses_and_weights(config.clone(), ConvPath::Sparse, train);
    let (ld, wd) = losses_and_weights(config.clone(), ConvPath::Dense, train);
    let mode = config.mode;
    assert_eq!(ls.len(), logs, "{mode:?}: logged losses");
    assert_eq!(ld.len(), logs, "{mode:?}: logged losses");
    for (a, b) in ls.iter().zip(&ld) {
        assert!(
            (a - b).abs() < f64::from(tol) * b.abs().max(1.0),
            "{mode:?} loss {a} vs {b}"
        );
    }
    let worst = ws
        .iter()
        .zip(&wd)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < tol, "{mode:?}: weights differ by {worst}");
}
