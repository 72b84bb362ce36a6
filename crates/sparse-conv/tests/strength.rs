//! Hebbian strength: every method agrees with the brute-force oracle on many
//! conv geometries (coactivation exactly, correlation to rounding), two
//! hand-computed answers, thresholds, determinism and error handling.

use sparse_conv::strength::{accumulate_strength, strength, Measure, Method, StrengthConfig};
use tensor::ops::conv2d::{Conv2dOptions, Conv2dShape};
use tensor::Rng;

fn cfg(measure: Measure, method: Method, threshold: f32) -> StrengthConfig {
    StrengthConfig {
        measure,
        method,
        threshold,
    }
}

/// (B, C, H, W), (O, KH, KW), stride, padding, dilation, groups.
#[allow(clippy::too_many_arguments)]
fn shape(
    input: [usize; 4],
    out: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
) -> Conv2dShape {
    let opts = Conv2dOptions {
        stride,
        padding,
        dilation,
        groups,
    };
    Conv2dShape::new(&input, &[out, input[1] / groups, kernel.0, kernel.1], opts).unwrap()
}

/// Values in [-1, 1] on a grid of quarter steps, with about a third clipped
/// to exactly 0 (like a ReLU input): equal values across the batch are
/// common, so the zero-std convention and the strict `> θ` get exercised.
fn activity(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = (rng.uniform(-1.0, 1.0) * 4.0).round() / 4.0;
            if rng.below(3) == 0 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

/// Random x and y for a geometry. y need not come from the convolution: the
/// measures are defined for any pair.
fn data(s: &Conv2dShape, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let x = activity(s.input_shape().iter().product(), rng);
    let y = activity(s.output_shape().iter().product(), rng);
    (x, y)
}

/// Every method against brute force, for both measures.
fn assert_methods_agree(s: &Conv2dShape, x: &[f32], y: &[f32], threshold: f32) {
    for measure in Measure::ALL {
        let oracle = strength(s, x, y, &cfg(measure, Method::BruteForce, threshold)).unwrap();
        for method in Method::ALL {
            let got = strength(s, x, y, &cfg(measure, method, threshold)).unwrap();
            for (i, (g, w)) in got.iter().zip(&oracle).enumerate() {
                let ok = match measure {
                    Measure::Coactivation => g == w,
                    Measure::Correlation => (g - w).abs() <= 1e-5 * w.abs() + 1e-6,
                };
                assert!(
                    ok,
                    "{measure} by {method} differs from brute force at weight index {i}: {g} vs {w}\n  {s:?}, threshold {threshold}"
                );
            }
        }
    }
}

#[test]
fn methods_agree_on_named_geometries() {
    let cases = [
        // The notebook's shapes: B=2, C=8, 5x3 input, 7 filters, 2x2 kernel.
        shape([2, 8, 5, 3], 7, (2, 2), (1, 1), (0, 0), (1, 1), 1),
        // stride 2, non-square kernel, C != H != W
        shape([3, 2, 5, 7], 3, (3, 2), (2, 2), (0, 0), (1, 1), 1),
        // padding on both axes, different per axis
        shape([2, 3, 4, 6], 2, (3, 3), (1, 1), (1, 2), (1, 1), 1),
        // dilation 2 with padding
        shape([3, 2, 7, 6], 2, (2, 3), (1, 1), (1, 0), (2, 2), 1),
        // groups 2
        shape([2, 4, 5, 4], 6, (3, 1), (1, 1), (0, 0), (1, 1), 2),
        // groups 3 with everything mixed
        shape([3, 6, 6, 5], 3, (1, 3), (1, 2), (2, 1), (2, 1), 3),
        // depthwise-like: groups = C = O
        shape([2, 3, 4, 5], 3, (2, 2), (2, 1), (1, 1), (1, 2), 3),
        // non-square everything
        shape([2, 3, 6, 9], 4, (2, 4), (1, 1), (0, 0), (1, 1), 1),
    ];
    let mut rng = Rng::seed(7);
    for s in &cases {
        let (x, y) = data(s, &mut rng);
        assert_methods_agree(s, &x, &y, 0.0);
    }
}

#[test]
fn methods_agree_on_random_geometries() {
    let mut rng = Rng::seed(2024);
    for _ in 0..30 {
        let groups = 1 + rng.below(3);
        let (cg, og) = (1 + rng.below(3), 1 + rng.below(3));
        let kernel = (1 + rng.below(3), 1 + rng.below(3));
        let stride = (1 + rng.below(2), 1 + rng.below(2));
        let dilation = (1 + rng.below(2), 1 + rng.below(2));
        let padding = (rng.below(3), rng.below(3));
        let span = |k: usize, d: usize, p: usize| (d * (k - 1) + 1).saturating_sub(2 * p).max(1);
        let h = span(kernel.0, dilation.0, padding.0) + rng.below(4);
        let w = span(kernel.1, dilation.1, padding.1) + rng.below(4);
        let batch = 1 + rng.below(4);
        let s = shape(
            [batch, groups * cg, h, w],
            groups * og,
            kernel,
            stride,
            padding,
            dilation,
            groups,
        );
        let (x, y) = data(&s, &mut rng);
        let threshold = [0.0, 0.0, 0.25, -0.5][rng.below(4)];
        assert_methods_agree(&s, &x, &y, threshold);
    }
}

/// Bitcount packs rows into 64-bit words: rows of exactly 64 (input and
/// output), padding wider than the kernel's reach, negative thresholds (so
/// padding, inactive, differs from the value 0, active), and the geometries
/// it hands over to the fast method (stride_x 2, rows wider than 64).
#[test]
fn bitcount_is_exact_at_word_edges_and_fallbacks() {
    let cases = [
        // W = OW = 64: the full word, no mask to spare
        shape([2, 2, 5, 64], 3, (3, 1), (1, 1), (0, 0), (1, 1), 1),
        // W = 64, OW = 64 with padding 2 and a 5-wide kernel
        shape([2, 2, 4, 64], 2, (2, 5), (2, 1), (1, 2), (1, 1), 2),
        // padding on both axes larger than the kernel: taps that see only padding
        shape([3, 2, 5, 6], 2, (2, 2), (1, 1), (3, 4), (1, 1), 1),
        // dilation and vertical stride, groups
        shape([2, 4, 9, 10], 4, (3, 3), (3, 1), (2, 2), (2, 3), 2),
        // fallback: stride_x 2
        shape([2, 3, 6, 9], 4, (2, 3), (1, 2), (1, 1), (1, 1), 1),
        // fallback: W = 65
        shape([2, 2, 3, 65], 2, (2, 2), (1, 1), (0, 0), (1, 1), 1),
        // fallback: W = 64 but OW = 66
        shape([1, 1, 3, 64], 1, (1, 3), (1, 1), (0, 2), (1, 1), 1),
    ];
    let mut rng = Rng::seed(64);
    for s in &cases {
        let (x, y) = data(s, &mut rng);
        for threshold in [0.0, -0.5, -1.5, 0.25] {
            let c = |method| cfg(Measure::Coactivation, method, threshold);
            let oracle = strength(s, &x, &y, &c(Method::BruteForce)).unwrap();
            let got = strength(s, &x, &y, &c(Method::Bitcount)).unwrap();
            assert_eq!(got, oracle, "{s:?}, threshold {threshold}");
        }
    }
}

#[test]
fn correlation_is_zero_for_a_batch_of_one() {
    let s = shape([1, 4, 6, 5], 4, (3, 2), (2, 1), (1, 1), (1, 2), 2);
    let (x, y) = data(&s, &mut Rng::seed(3));
    for method in Method::ALL {
        let got = strength(&s, &x, &y, &cfg(Measure::Correlation, method, 0.0)).unwrap();
        assert!(got.iter().all(|&v| v == 0.0), "{method}: {got:?}");
    }
}

/// x (1,1,2,3), one 1x2 filter, padding (0, 1): output 2x4.
///
/// ```text
/// x = [[1, -1, 2],      active (> 0)  [[1, 0, 1],
///      [0,  3, 1]]                     [0, 1, 1]]
/// y = [[0.5,  2, -1, 3],  active      [[1, 1, 0, 1],
///      [1,   -2,  4, 0]]               [1, 0, 1, 0]]
/// ```
///
/// Tap h=0 reads input column ox−1 (ox=0 is padding), tap h=1 column ox
/// (ox=3 is padding). Summing [y active]·[x active] over positions:
///
/// ```text
/// h=0: row 0: ox1 1·x[0,0]=1, ox3 1·x[0,2]=1       -> 2
///      row 1: ox2 1·x[1,1]=1                        -> 1     total 3
/// h=1: row 0: ox0 1·x[0,0]=1, ox1 1·x[0,1]=0        -> 1
///      row 1: ox0 1·x[1,0]=0, ox2 1·x[1,2]=1        -> 1     total 2
/// ```
///
/// θ = −1.5: all of x and all of y but the −2 are active, padding is not:
/// h=0 counts active y at ox ≥ 1 (3 + 2), h=1 at ox ≤ 2 (3 + 2): [5, 5].
/// θ = 1.5: x active at (0,2), (1,1); y at (0,1), (0,3), (1,2):
/// h=0: (0,3)·x[0,2] + (1,2)·x[1,1] = 2; h=1: x[0,1], x[1,2] inactive: 0.
#[test]
fn coactivation_known_answer() {
    let s = shape([1, 1, 2, 3], 1, (1, 2), (1, 1), (0, 1), (1, 1), 1);
    let x = [1.0, -1.0, 2.0, 0.0, 3.0, 1.0];
    let y = [0.5, 2.0, -1.0, 3.0, 1.0, -2.0, 4.0, 0.0];
    for (threshold, want) in [(0.0, [3.0, 2.0]), (-1.5, [5.0, 5.0]), (1.5, [2.0, 0.0])] {
        for method in Method::ALL {
            let got = strength(&s, &x, &y, &cfg(Measure::Coactivation, method, threshold)).unwrap();
            assert_eq!(got, want, "{method}, threshold {threshold}");
        }
    }
}

/// B = 3, x (3,1,1,2), one 1x1 filter, padding (0, 1): output 1x4, so
/// positions 0 and 3 see padding and positions 1, 2 see input columns 0, 1.
///
/// ```text
/// position 1: x = [1, 2, 3], y = [2, 4, 6]
///   deviations [-1, 0, 1] and [-2, 0, 2]; mean product (2 + 0 + 2)/3 = 4/3
///   σx = √(2/2) = 1, σy = √(8/2) = 2            corr = (4/3)/2 = 2/3
///   (Pearson's r is 1; 2/3 = r·(B−1)/B)
/// position 2: x = [3, 2, 1], y = [1, 1, 4]
///   deviations [1, 0, -1] and [-1, -1, 2]; mean product (-1 + 0 - 2)/3 = -1
///   σx = 1, σy = √(6/2) = √3                    corr = -1/√3, |corr| = 0.57735
/// positions 0, 3: x is the constant 0 (padding)  corr = 0
/// strength = (0 + 2/3 + 1/√3 + 0) / 4 = 0.311004
/// ```
#[test]
fn correlation_known_answer() {
    let s = shape([3, 1, 1, 2], 1, (1, 1), (1, 1), (0, 1), (1, 1), 1);
    let x = [1.0, 3.0, 2.0, 2.0, 3.0, 1.0]; // image b: [column 0, column 1]
    let y = [
        5.0, 2.0, 1.0, 0.0, // image 0, positions 0..4
        -1.0, 4.0, 1.0, 7.0, // image 1
        2.0, 6.0, 4.0, 1.0, // image 2
    ];
    let want = (2.0 / 3.0 + 1.0 / 3f64.sqrt()) / 4.0;
    for method in Method::ALL {
        let got = strength(&s, &x, &y, &cfg(Measure::Correlation, method, 0.0)).unwrap();
        assert!(
            (got[0] as f64 - want).abs() < 1e-6,
            "{method}: {} vs {want}",
            got[0]
        );
    }
}

#[test]
fn default_config_is_bitcount_coactivation_at_zero() {
    let c = StrengthConfig::default();
    assert_eq!(
        (c.measure, c.method, c.threshold),
        (Measure::Coactivation, Method::Bitcount, 0.0)
    );
}

#[test]
fn accumulate_adds_to_what_is_there() {
    let s = shape([3, 4, 6, 5], 4, (3, 2), (1, 2), (1, 0), (1, 1), 2);
    let (x, y) = data(&s, &mut Rng::seed(11));
    for measure in Measure::ALL {
        for method in [Method::Fast, Method::ReducedRedundancy, Method::Bitcount] {
            let c = cfg(measure, method, 0.0);
            let once = strength(&s, &x, &y, &c).unwrap();
            let mut acc = vec![1.0f32; once.len()];
            accumulate_strength(&s, &x, &y, &c, &mut acc).unwrap();
            accumulate_strength(&s, &x, &y, &c, &mut acc).unwrap();
            for (a, v) in acc.iter().zip(&once) {
                assert!(
                    (a - (1.0 + 2.0 * v)).abs() <= 1e-6 * (1.0 + v),
                    "{measure} {method}"
                );
            }
        }
    }
}

/// Big enough that the fast correlation runs its slices in parallel; the
/// result must not depend on the number of threads.
#[test]
fn fast_correlation_is_deterministic_across_thread_counts() {
    let s = shape([24, 4, 12, 12], 8, (3, 3), (1, 1), (0, 0), (1, 1), 1);
    assert!(s.flops() >= tensor::ops::conv2d::PARALLEL_MIN_FLOPS);
    let (x, y) = data(&s, &mut Rng::seed(5));
    let c = cfg(Measure::Correlation, Method::Fast, 0.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| strength(&s, &x, &y, &c).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// Big enough that bitcount counts on rayon: still exactly the fast
/// method's counts, on any number of threads.
#[test]
fn bitcount_is_exact_across_thread_counts() {
    let s = shape([32, 4, 30, 30], 16, (3, 3), (1, 1), (0, 0), (1, 1), 1);
    let (x, y) = data(&s, &mut Rng::seed(9));
    let c = |method| cfg(Measure::Coactivation, method, 0.0);
    let want = strength(&s, &x, &y, &c(Method::Fast)).unwrap();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(|| strength(&s, &x, &y, &c(Method::Bitcount)).unwrap());
        assert_eq!(got, want, "{threads} threads");
    }
}

#[test]
fn wrong_lengths_are_errors_not_panics() {
    let s = shape([2, 3, 5, 5], 4, (3, 3), (1, 1), (0, 0), (1, 1), 1);
    let (x, y) = data(&s, &mut Rng::seed(1));
    let w_len: usize = s.weight_shape().iter().product();
    for method in Method::ALL {
        let c = cfg(Measure::Coactivation, method, 0.0);
        let err = strength(&s, &x[1..], &y, &c).unwrap_err().to_string();
        assert!(
            err.contains("x (input") && err.contains("150") && err.contains("149"),
            "{err}"
        );
        let err = strength(&s, &x, &y[..10], &c).unwrap_err().to_string();
        assert!(err.contains("y (output"), "{err}");
        let mut acc = vec![0.0; w_len + 1];
        let err = accumulate_strength(&s, &x, &y, &c, &mut acc)
            .unwrap_err()
            .to_string();
        assert!(err.contains("acc"), "{err}");
    }
}

#[test]
fn invalid_settings_and_geometries_are_errors() {
    let s = shape([2, 3, 5, 5], 4, (3, 3), (1, 1), (0, 0), (1, 1), 1);
    let (x, y) = data(&s, &mut Rng::seed(1));
    let nan = cfg(Measure::Coactivation, Method::Fast, f32::NAN);
    assert!(strength(&s, &x, &y, &nan)
        .unwrap_err()
        .to_string()
        .contains("NaN"));

    // Conv2dShape's fields are public, so nonsense can reach us.
    let mut bad = s;
    bad.opts.groups = 0;
    assert!(strength(&bad, &x, &y, &StrengthConfig::default()).is_err());
    let mut bad = s;
    bad.opts.groups = 2; // 3 input channels do not split in two
    assert!(strength(&bad, &x, &y, &StrengthConfig::default()).is_err());
    let mut bad = s;
    bad.kernel_h = 9; // larger than the input
    assert!(strength(&bad, &x, &y, &StrengthConfig::default()).is_err());
    let mut bad = s;
    bad.opts.stride = (0, 1);
    assert!(strength(&bad, &x, &y, &StrengthConfig::default()).is_err());
    // Empty geometries are errors for every measure and method, not panics.
    for (batch, channels) in [(0, 3), (2, 0)] {
        let mut empty = s;
        empty.batch = batch;
        empty.in_channels = channels;
        for measure in Measure::ALL {
            for method in Method::ALL {
                let r = strength(&empty, &[], &[], &cfg(measure, method, 0.0));
                assert!(
                    r.unwrap_err().to_string().contains("empty"),
                    "{measure:?} {method:?}"
                );
            }
        }
    }
}

#[test]
fn names_parse_and_unknown_names_explain() {
    for m in Measure::ALL {
        assert_eq!(m.name().parse::<Measure>().unwrap(), m);
        assert_eq!(m.to_string(), m.name());
    }
    for m in Method::ALL {
        assert_eq!(m.name().parse::<Method>().unwrap(), m);
        assert_eq!(m.to_string(), m.name());
    }
    assert_eq!("F2B".parse::<Method>().unwrap(), Method::ReducedRedundancy);
    assert_eq!(
        " Correlation ".parse::<Measure>().unwrap(),
        Measure::Correlation
    );
    let err = "pearson".parse::<Measure>().unwrap_err().to_string();
    assert!(
        err.contains("pearson") && err.contains("coactivation, correlation"),
        "{err}"
    );
    let err = "quick".parse::<Method>().unwrap_err().to_string();
    assert!(
        err.contains("quick") && err.contains("reduced-redundancy"),
        "{err}"
    );
}
