//! f3, brute force: the two definitions written as nested loops over
//! connections, positions and images. Slow and obviously right, it is the
//! oracle the other methods are tested against. Correlation is computed in
//! f64 straight from the formula, without z-scores, so it shares no code with
//! the methods it checks.

use super::Measure;
use tensor::Conv2dShape;

pub(super) fn accumulate(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    measure: Measure,
    threshold: f32,
    acc: &mut [f32],
) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let (cg, og) = (s.group_in(), s.group_out());
    let mut xs = vec![0.0f64; s.batch];
    let mut ys = vec![0.0f64; s.batch];
    for o in 0..s.out_channels {
        let ci0 = (o / og) * cg; // first input channel of o's group
        for c in 0..cg {
            for j in 0..s.kernel_h {
                for h in 0..s.kernel_w {
                    let mut total = 0.0f64;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            // The input unit this connection sees at (oy, ox);
                            // None in the padding.
                            let iy = (oy * s.opts.stride.0 + j * s.opts.dilation.0)
                                .checked_sub(s.opts.padding.0)
                                .filter(|&iy| iy < s.in_h);
                            let ix = (ox * s.opts.stride.1 + h * s.opts.dilation.1)
                                .checked_sub(s.opts.padding.1)
                                .filter(|&ix| ix < s.in_w);
                            let inside = iy.is_some() && ix.is_some();
                            for b in 0..s.batch {
                                xs[b] = match (iy, ix) {
                                    (Some(iy), Some(ix)) => {
                                        x[((b * s.in_channels + ci0 + c) * s.in_h + iy) * s.in_w
                                            + ix] as f64
                                    }
                                    _ => 0.0, // padding reads as the value 0
                                };
                                ys[b] = y[((b * s.out_channels + o) * oh + oy) * ow + ox] as f64;
                            }
                            total += match measure {
                                // Padding is inactive, whatever the threshold.
                                Measure::Coactivation if !inside => 0.0,
                                Measure::Coactivation => {
                                    let t = threshold as f64;
                                    xs.iter().zip(&ys).filter(|(&a, &b)| a > t && b > t).count()
                                        as f64
                                }
                                Measure::Correlation => correlation(&xs, &ys).abs(),
                            };
                        }
                    }
                    let wi = ((o * cg + c) * s.kernel_h + j) * s.kernel_w + h;
                    acc[wi] += match measure {
                        Measure::Coactivation => total as f32,
                        Measure::Correlation => (total / (oh * ow) as f64) as f32,
                    };
                }
            }
        }
    }
}

/// mean((x − μx)(y − μy)) / (σx·σy), σ the unbiased sample std, 0 when either
/// side is constant (which includes a batch of one).
fn correlation(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len();
    let constant = |v: &[f64]| v.iter().all(|&a| a == v[0]);
    if n < 2 || constant(xs) || constant(ys) {
        return 0.0;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(xs), mean(ys));
    let std = |v: &[f64], m: f64| {
        (v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (n - 1) as f64).sqrt()
    };
    let (sx, sy) = (std(xs, mx), std(ys, my));
    let mean_product = xs
        .iter()
        .zip(ys)
        .map(|(a, b)| (a - mx) * (b - my))
        .sum::<f64>()
        / n as f64;
    mean_product / (sx * sy)
}
