//! The ops a ResNet adds to the engine, each against its oracle, by
//! gradcheck, and across thread counts: batch normalisation (training and
//! evaluation), global average pooling, the residual add + ReLU, and the
//! padding shortcut; and the Kaiming-normal initialisation.

use tensor::gradcheck::gradcheck;
use tensor::nn::{kaiming_normal_std, BatchNorm2d, Conv2d, Init};
use tensor::ops::batch_norm::{batch_norm2d_backward_naive, batch_norm2d_naive, BatchNormMode};
use tensor::ops::residual::{shortcut_pad_naive, PadShortcut};
use tensor::{Conv2dOptions, Rng, Tensor};

fn input(shape: &[usize], seed: u64) -> Tensor {
    Tensor::uniform(shape, -1.0, 1.0, &mut Rng::seed(seed)).requires_grad()
}

/// Values with a mean and a spread unlike a unit normal, so that a wrong
/// statistic cannot pass by luck.
fn activations(shape: &[usize], seed: u64) -> Tensor {
    let mut r = Rng::seed(seed);
    let n: usize = shape.iter().product();
    let c = shape[1];
    let hw: usize = shape[2..].iter().product();
    let v = (0..n).map(|i| {
        let ch = (i / hw) % c;
        0.5 + ch as f32 * 0.3 + (1.0 + ch as f32) * r.normal()
    });
    Tensor::from_vec(v.collect(), shape).requires_grad()
}

fn close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rel * scale,
            "{what}[{i}]: {x} vs {y} (scale {scale})"
        );
    }
}

fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bn_params(c: usize, seed: u64) -> [Tensor; 4] {
    let mut r = Rng::seed(seed);
    [
        Tensor::uniform(&[c], 0.5, 1.5, &mut r).requires_grad(),
        Tensor::uniform(&[c], -0.5, 0.5, &mut r).requires_grad(),
        Tensor::uniform(&[c], -0.2, 0.2, &mut r),
        Tensor::uniform(&[c], 0.5, 2.0, &mut r),
    ]
}

#[test]
fn batch_norm_forward_matches_the_oracle_in_both_modes() {
    // Large enough to split over threads, and a small odd one.
    for shape in [[16usize, 8, 12, 12], [3, 5, 3, 1]] {
        let x = activations(&shape, 1);
        for mode in [BatchNormMode::Train { momentum: 0.1 }, BatchNormMode::Eval] {
            let [w, b, rm, rv] = bn_params(shape[1], 2);
            let (want_y, want_rm, want_rv) = batch_norm2d_naive(
                &x.data(),
                shape,
                &w.data(),
                &b.data(),
                &rm.data(),
                &rv.data(),
                mode,
                1e-5,
            );
            let y = x.batch_norm2d(&w, &b, &rm, &rv, mode, 1e-5);
            close(&y.to_vec(), &want_y, 1e-5, "y");
            close(&rm.to_vec(), &want_rm, 1e-6, "running mean");
            close(&rv.to_vec(), &want_rv, 1e-6, "running var");
            if mode == BatchNormMode::Eval {
                assert_eq!(rm.to_vec(), bn_params(shape[1], 2)[2].to_vec());
            }
        }
    }
}

#[test]
fn batch_norm_running_statistics_use_the_unbiased_variance() {
    // One channel of 4 values, 0 2 4 6: mean 3, biased var 5, unbiased 20/3.
    let x = Tensor::from_vec(vec![0.0, 2.0, 4.0, 6.0], &[2, 1, 1, 2]);
    let bn = BatchNorm2d::new(1);
    let y = bn.forward(&x);
    assert!((bn.running_mean.item() - 0.3).abs() < 1e-7);
    assert!((bn.running_var.item() - (0.9 + 0.1 * 20.0 / 3.0)).abs() < 1e-6);
    // Normalised by the biased variance: (0 − 3)/√5.
    assert!((y.to_vec()[0] + 3.0 / (5.0f32 + 1e-5).sqrt()).abs() < 1e-6);
    assert_eq!(bn.num_batches_tracked.item(), 1.0);
}

#[test]
fn batch_norm_backward_matches_the_oracle() {
    let shape = [16usize, 8, 12, 12];
    let x = activations(&shape, 3);
    let [w, b, rm, rv] = bn_params(8, 4);
    let dy = Tensor::uniform(&shape, -1.0, 1.0, &mut Rng::seed(5));
    let y = x.batch_norm2d(
        &w,
        &b,
        &rm,
        &rv,
        BatchNormMode::Train { momentum: 0.1 },
        1e-5,
    );
    y.mul(&dy).sum().backward();
    let (dx, dw, db) = batch_norm2d_backward_naive(&x.data(), &dy.data(), shape, &w.data(), 1e-5);
    close(&x.grad().unwrap(), &dx, 1e-5, "dx");
    close(&w.grad().unwrap(), &dw, 1e-5, "dγ");
    close(&b.grad().unwrap(), &db, 1e-5, "dβ");
}

/// The fused batch norm + ReLU is the two ops, bit for bit: values, the
/// running statistics, and every gradient, in both modes.
#[test]
fn batch_norm_relu_is_batch_norm_then_relu_bitwise() {
    for mode in [BatchNormMode::Train { momentum: 0.1 }, BatchNormMode::Eval] {
        let run = |fused: bool| {
            let x = activations(&[8, 6, 10, 10], 21);
            let [w, b, rm, rv] = bn_params(6, 22);
            let y = if fused {
                x.batch_norm2d_relu(&w, &b, &rm, &rv, mode, 1e-5)
            } else {
                x.batch_norm2d(&w, &b, &rm, &rv, mode, 1e-5).relu()
            };
            let dy = Tensor::uniform(y.shape(), -1.0, 1.0, &mut Rng::seed(23));
            y.mul(&dy).sum().backward();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            [
                bits(y.to_vec()),
                bits(rm.to_vec()),
                bits(rv.to_vec()),
                bits(x.grad().unwrap()),
                bits(w.grad().unwrap()),
                bits(b.grad().unwrap()),
            ]
        };
        let (fused, separate) = (run(true), run(false));
        for (i, what) in ["y", "running mean", "running var", "dx", "dγ", "dβ"]
            .iter()
            .enumerate()
        {
            assert!(fused[i] == separate[i], "{mode:?}: {what} differs");
        }
        // Some outputs are clipped, so the mask matters.
        assert!(fused[0].contains(&0));
    }
}

#[test]
fn batch_norm_gradcheck_in_both_modes() {
    for mode in [BatchNormMode::Train { momentum: 0.1 }, BatchNormMode::Eval] {
        let x = activations(&[3, 4, 3, 2], 6);
        let [w, b, rm, rv] = bn_params(4, 7);
        let f = |t: &[Tensor]| t[0].batch_norm2d(&t[1], &t[2], &rm, &rv, mode, 1e-5);
        if let Err(e) = gradcheck(&f, &[x, w, b], 1e-2, 1e-2) {
            panic!("{mode:?}: {e}");
        }
    }
}

#[test]
#[should_panic(expected = "more than 1 value per channel")]
fn batch_norm_refuses_one_value_per_channel_in_training() {
    BatchNorm2d::new(3).forward(&Tensor::zeros(&[1, 3, 1, 1]));
}

#[test]
fn global_avg_pool_matches_the_definition_and_gradchecks() {
    let x = input(&[4, 3, 5, 7], 8);
    let y = x.global_avg_pool2d();
    assert_eq!(y.shape(), [4, 3]);
    let xd = x.to_vec();
    let want: Vec<f32> = xd
        .chunks(35)
        .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / 35.0) as f32)
        .collect();
    close(&y.to_vec(), &want, 1e-6, "mean");
    gradcheck(&|t| t[0].global_avg_pool2d(), &[x], 1e-2, 1e-2).unwrap();
}

#[test]
fn add_relu_is_relu_of_the_sum_and_gradchecks() {
    let (a, b) = (input(&[2, 3, 4, 5], 9), input(&[2, 3, 4, 5], 10));
    let want = a.add(&b).relu().to_vec();
    assert_eq!(a.add_relu(&b).to_vec(), want);
    // Away from the kink: a + b at least 0.1 from 0.
    let s: Vec<f32> = a
        .to_vec()
        .iter()
        .zip(b.to_vec())
        .map(|(x, y)| x + y)
        .collect();
    let keep: Vec<f32> = s
        .iter()
        .map(|v| if v.abs() < 0.1 { 0.5 } else { 0.0 })
        .collect();
    let a2 = Tensor::from_vec(
        a.to_vec().iter().zip(&keep).map(|(x, k)| x + k).collect(),
        a.shape(),
    )
    .requires_grad();
    gradcheck(&|t| t[0].add_relu(&t[1]), &[a2, b], 1e-3, 1e-2).unwrap();
    // The same tensor on both sides gets both gradients.
    let x = Tensor::from_vec(vec![1.0, -1.0], &[2]).requires_grad();
    x.add_relu(&x).sum().backward();
    assert_eq!(x.grad().unwrap(), vec![2.0, 0.0]);
}

#[test]
fn shortcut_pad_matches_the_oracle_and_gradchecks() {
    for (shape, stride, pad) in [
        ([2, 3, 6, 6], 2, 3),
        ([2, 4, 5, 7], 2, 2),
        ([1, 2, 4, 4], 1, 1),
    ] {
        let x = input(&shape, 11);
        let g = PadShortcut {
            batch: shape[0],
            channels: shape[1],
            in_hw: (shape[2], shape[3]),
            stride,
            pad,
        };
        let y = x.shortcut_pad(stride, pad);
        assert_eq!(y.shape(), g.out_shape());
        assert_eq!(y.to_vec(), shortcut_pad_naive(&g, &x.to_vec()));
        gradcheck(&|t| t[0].shortcut_pad(stride, pad), &[x], 1e-2, 1e-3).unwrap();
    }
}

/// A small residual block, batch-normed, trained for two steps' worth of
/// forward and backward: bitwise the same on 1 and 2 threads.
#[test]
fn residual_block_is_bitwise_the_same_on_one_and_two_threads() {
    let run = || {
        let mut rng = Rng::seed(12);
        let opts = Conv2dOptions {
            padding: (1, 1),
            ..Default::default()
        };
        let conv = Conv2d::with_init(8, 8, (3, 3), opts, false, Init::KaimingNormal, &mut rng);
        let bn = BatchNorm2d::new(8);
        let x = Tensor::uniform(&[32, 8, 16, 16], -1.0, 1.0, &mut rng);
        let mut bits = Vec::new();
        for _ in 0..2 {
            let h = bn.forward(&conv.forward(&x)).add_relu(&x);
            let y = h.shortcut_pad(2, 4).global_avg_pool2d();
            y.mul(&y).sum().backward();
            bits.extend(y.to_vec().iter().map(|v| v.to_bits()));
            for p in [&conv.weight, &bn.weight, &bn.bias] {
                bits.extend(p.grad().unwrap().iter().map(|v| v.to_bits()));
            }
            bits.extend(bn.running_var.to_vec().iter().map(|v| v.to_bits()));
        }
        bits
    };
    let one = on_threads(1, run);
    assert!(one == on_threads(2, run), "1 and 2 threads differ");
}

#[test]
fn kaiming_normal_has_the_fan_in_spread() {
    let fan_in = 16 * 9;
    let c = Conv2d::with_init(
        16,
        64,
        (3, 3),
        Conv2dOptions::default(),
        false,
        Init::KaimingNormal,
        &mut Rng::seed(13),
    );
    assert!(c.bias.is_none());
    let w = c.weight.to_vec();
    let n = w.len() as f64;
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let want = kaiming_normal_std(fan_in) as f64;
    assert!((want - (2.0 / fan_in as f64).sqrt()).abs() < 1e-7);
    // 9,216 draws: the sample spread is within 3% of the target.
    assert!((std / want - 1.0).abs() < 0.03, "std {std}, want {want}");
    assert!(mean.abs() < 0.05 * want, "mean {mean}");
}
