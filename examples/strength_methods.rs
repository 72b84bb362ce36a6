//! Validation and time trials of the Hebbian strength methods, like the
//! notebook's "Validation / Time Trials" cell: on the notebook's shapes and on
//! the LeNet's two convolutions, check that every method gives the brute-force
//! answer and time each one (median over repetitions), next to one conv2d
//! weight gradient of the same geometry for scale.
//!
//! cargo run --release --example strength_methods
//! cargo run --release --example strength_methods -- --help

use clap::Parser;
use sparse_conv::strength::{strength, Measure, Method, StrengthConfig};
use std::time::{Duration, Instant};
use tensor::ops::conv2d::{conv2d_backward_weight, conv2d_forward, Conv2dOptions, Conv2dShape};
use tensor::Rng;

#[derive(Parser)]
#[command(about = "Check that all Hebbian strength methods agree, and time them")]
struct Args {
    /// At most this many timed calls per method; the median is reported.
    #[arg(long, default_value_t = 21)]
    reps: usize,
    /// Stop repeating a method once this many seconds are spent on it
    /// (after at least 3 calls).
    #[arg(long, default_value_t = 1.0)]
    budget: f64,
    /// Skip single-unit when one call is estimated to take longer than this
    /// many seconds.
    #[arg(long, default_value_t = 3.0)]
    max_seconds: f64,
    /// Only this measure (coactivation or correlation); default both.
    #[arg(long)]
    measure: Option<Measure>,
    /// Seed of the random inputs and weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Case {
    name: &'static str,
    shape: Conv2dShape,
}

fn cases() -> Vec<Case> {
    let conv = |b: usize, c: usize, h: usize, w: usize, o: usize, k: (usize, usize)| {
        Conv2dShape::new(&[b, c, h, w], &[o, c, k.0, k.1], Conv2dOptions::default()).unwrap()
    };
    vec![
        Case {
            name: "notebook: 2x8x5x3 -> 7 filters 2x2",
            shape: conv(2, 8, 5, 3, 7, (2, 2)),
        },
        Case {
            name: "LeNet conv1: 3x32x32 -> 6 5x5, batch 4",
            shape: conv(4, 3, 32, 32, 6, (5, 5)),
        },
        Case {
            name: "LeNet conv2: 6x14x14 -> 16 5x5, batch 4",
            shape: conv(4, 6, 14, 14, 16, (5, 5)),
        },
        Case {
            name: "LeNet conv1: 3x32x32 -> 6 5x5, batch 64",
            shape: conv(64, 3, 32, 32, 6, (5, 5)),
        },
        Case {
            name: "LeNet conv2: 6x14x14 -> 16 5x5, batch 64",
            shape: conv(64, 6, 14, 14, 16, (5, 5)),
        },
    ]
}

/// Median wall time of `f`, called up to `args.reps` times (at least 3)
/// within the time budget.
fn median_time(args: &Args, mut f: impl FnMut()) -> Duration {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < args.reps.max(1)
        && (times.len() < 3 || start.elapsed().as_secs_f64() < args.budget)
    {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// Median time of `f`, and the median of its time over `reference`'s with
/// the two called alternately: on a shared, noisy machine the paired ratio
/// is much steadier than a ratio of two separately taken medians.
fn paired_time(args: &Args, mut f: impl FnMut(), mut reference: impl FnMut()) -> (Duration, f64) {
    let mut times = Vec::new();
    let mut ratios = Vec::new();
    let start = Instant::now();
    while times.len() < args.reps.max(1)
        && (times.len() < 3 || start.elapsed().as_secs_f64() < args.budget)
    {
        let t = Instant::now();
        f();
        let tf = t.elapsed();
        let t = Instant::now();
        reference();
        let tr = t.elapsed();
        times.push(tf);
        ratios.push(tf.as_secs_f64() / tr.as_secs_f64());
    }
    times.sort();
    ratios.sort_by(f64::total_cmp);
    (times[times.len() / 2], ratios[ratios.len() / 2])
}

fn pretty(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// One call of single-unit is a full convolution per connection; estimate it
/// from one such convolution rather than find out the slow way.
fn single_unit_estimate(s: &Conv2dShape, x: &[f32]) -> Duration {
    let single = Conv2dShape {
        out_channels: 1,
        opts: Conv2dOptions {
            groups: 1,
            ..s.opts
        },
        ..*s
    };
    let w = vec![0.0f32; s.in_channels * s.kernel_h * s.kernel_w];
    let mut seen = vec![0.0f32; s.batch * s.out_pixels()];
    let t = Instant::now();
    for _ in 0..3 {
        conv2d_forward(&single, x, &w, None, &mut seen);
    }
    let connections: usize = s.weight_shape().iter().product();
    t.elapsed() / 3 * connections as u32
}

fn main() {
    let args = Args::parse();
    let measures: Vec<Measure> = match args.measure {
        Some(m) => vec![m],
        None => Measure::ALL.to_vec(),
    };
    let mut rng = Rng::seed(args.seed);
    let mut all_agree = true;
    for case in cases() {
        let s = case.shape;
        // Realistic activity: x ~ U(-1, 1), y = conv(x, w) + bias with
        // PyTorch's default uniform(±1/√fan_in) init.
        let bound = 1.0 / (s.col_rows() as f32).sqrt();
        let x: Vec<f32> = (0..s.input_shape().iter().product())
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let w: Vec<f32> = (0..s.weight_shape().iter().product())
            .map(|_| rng.uniform(-bound, bound))
            .collect();
        let bias: Vec<f32> = (0..s.out_channels)
            .map(|_| rng.uniform(-bound, bound))
            .collect();
        let mut y = vec![0.0f32; s.output_shape().iter().product()];
        conv2d_forward(&s, &x, &w, Some(&bias), &mut y);

        println!(
            "\n{}  (x {:?}, w {:?})",
            case.name,
            s.input_shape(),
            s.weight_shape()
        );
        let mut dw = vec![0.0f32; w.len()];
        let reference = median_time(&args, || conv2d_backward_weight(&s, &x, &y, &mut dw));
        println!(
            "  reference: one conv2d_backward_weight       {:>10}",
            pretty(reference)
        );
        println!(
            "  {:<13} {:<19} {:>10} {:>9} {:>11}  agrees with brute force",
            "measure", "method", "median", "vs fast", "vs dW*"
        );
        let single_estimate = single_unit_estimate(&s, &x);
        for &measure in &measures {
            let cfg = |method| StrengthConfig {
                measure,
                method,
                threshold: 0.0,
            };
            let oracle = strength(&s, &x, &y, &cfg(Method::BruteForce)).unwrap();
            let mut fast_time = None;
            for method in Method::ALL {
                // Bitcount computes only coactivation; for correlation it
                // would just run the fast method again.
                if method == Method::Bitcount && measure == Measure::Correlation {
                    continue;
                }
                if method == Method::SingleUnit && single_estimate.as_secs_f64() > args.max_seconds
                {
                    println!(
                        "  {:<13} {:<19} skipped: estimated {} per call (> --max-seconds {})",
                        measure.name(),
                        method.name(),
                        pretty(single_estimate),
                        args.max_seconds
                    );
                    continue;
                }
                let got = strength(&s, &x, &y, &cfg(method)).unwrap();
                let worst = got
                    .iter()
                    .zip(&oracle)
                    .map(|(g, o)| (g - o).abs() / o.abs().max(1e-6))
                    .fold(0.0f32, f32::max);
                // The tests' criterion: counts exactly; correlation within
                // 1e-5 relative, with a 1e-6 absolute floor near zero.
                let agrees = match measure {
                    Measure::Coactivation => got == oracle,
                    Measure::Correlation => got
                        .iter()
                        .zip(&oracle)
                        .all(|(g, o)| (g - o).abs() <= 1e-5 * o.abs() + 1e-6),
                };
                all_agree &= agrees;
                let verdict = match (measure, agrees) {
                    (Measure::Coactivation, true) => "yes (exactly)".to_string(),
                    (Measure::Correlation, true) => format!("yes (max rel. diff {worst:.1e})"),
                    (_, false) => format!("NO (max rel. diff {worst:.1e})"),
                };
                let (time, vs_reference) = paired_time(
                    &args,
                    || {
                        std::hint::black_box(strength(&s, &x, &y, &cfg(method)).unwrap());
                    },
                    || conv2d_backward_weight(&s, &x, &y, &mut dw),
                );
                // Method::ALL lists Fast first, so this is the fast method's
                // time, the baseline of the second column.
                let fast = *fast_time.get_or_insert(time);
                println!(
                    "  {:<13} {:<19} {:>10} {:>8.1}x {:>10.2}x  {verdict}",
                    measure.name(),
                    method.name(),
                    pretty(time),
                    time.as_secs_f64() / fast.as_secs_f64(),
                    vs_reference,
                );
            }
        }
    }
    println!("\n* median of paired ratios: each call alternated with one conv2d_backward_weight");
    if all_agree {
        println!("\nAll methods agree.");
    } else {
        println!("\nSOME METHODS DISAGREE (see NO above).");
        std::process::exit(1);
    }
}
