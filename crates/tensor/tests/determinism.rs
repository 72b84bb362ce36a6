//! The same seed gives bitwise-identical losses and weights with 1 and with 2
//! rayon threads: no reduction may depend on how rayon splits the work.

use tensor::nn::{Conv2d, Linear, MaxPool2d};
use tensor::optim::{Sgd, SgdConfig};
use tensor::{Conv2dOptions, Rng, Tensor};

/// A few SGD steps of a small LeNet-shaped net on a batch big enough that the
/// conv kernels split it into parallel chunks; returns the losses and the
/// final weights as bits.
fn train(threads: usize) -> (Vec<u32>, Vec<u32>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut rng = Rng::seed(42);
        let conv1 = Conv2d::new(3, 6, (5, 5), Conv2dOptions::default(), true, &mut rng);
        let conv2 = Conv2d::new(6, 16, (5, 3), Conv2dOptions::default(), true, &mut rng);
        let fc = Linear::new(16 * 5 * 6, 10, true, &mut rng);
        let pool2 = MaxPool2d::new(2);
        let params: Vec<Tensor> =
            [conv1.parameters(), conv2.parameters(), fc.parameters()].concat();
        let mut opt = Sgd::new(params.clone(), SgdConfig::new(0.01, 0.9));
        let batch = 32;
        let mut losses = Vec::new();
        for step in 0..3 {
            let x = Tensor::uniform(&[batch, 3, 32, 34], -1.0, 1.0, &mut rng);
            let labels: Vec<usize> = (0..batch).map(|i| (i * 7 + step) % 10).collect();
            let h = pool2.forward(&conv1.forward(&x).relu());
            let h = pool2.forward(&conv2.forward(&h).relu());
            let loss = fc.forward(&h.flatten()).cross_entropy(&labels);
            opt.zero_grad();
            loss.backward();
            opt.step();
            losses.push(loss.item().to_bits());
        }
        let weights = params
            .iter()
            .flat_map(|p| p.to_vec())
            .map(f32::to_bits)
            .collect();
        (losses, weights)
    })
}

#[test]
fn one_and_two_threads_give_identical_bits() {
    let one = train(1);
    let two = train(2);
    assert_eq!(one.0, two.0, "losses differ between 1 and 2 threads");
    assert!(one.1 == two.1, "weights differ between 1 and 2 threads");
    assert_eq!(
        train(2),
        two,
        "same seed, same thread count, different result"
    );
}
