//! The report's axes: round-number tick steps and ranges, tick values and
//! their labels, and the ticks of a log(1 + y) axis.

/// A tick spacing of 1, 2 or 5 × 10^k giving about `target` ticks over [lo, hi].
pub fn nice_step(lo: f64, hi: f64, target: usize) -> f64 {
    let raw = ((hi - lo).abs() / target.max(1) as f64).max(1e-12);
    let magnitude = 10f64.powf(raw.log10().floor());
    let nice = match raw / magnitude {
        r if r < 1.5 => 1.0,
        r if r < 3.0 => 2.0,
        r if r < 7.0 => 5.0,
        _ => 10.0,
    };
    nice * magnitude
}

/// Widens [lo, hi] to whole tick steps, so an axis starts and ends on a tick.
/// An empty or single-value range is opened up around its value.
pub fn nice_range(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = match (lo.is_finite() && hi.is_finite(), hi > lo) {
        (false, _) => (0.0, 1.0),
        (true, true) => (lo, hi),
        (true, false) if lo == 0.0 => (0.0, 1.0),
        (true, false) => (lo - 0.1 * lo.abs(), hi + 0.1 * hi.abs()),
    };
    let step = nice_step(lo, hi, 5);
    ((lo / step).floor() * step, (hi / step).ceil() * step)
}

/// The tick values inside [lo, hi], `step` apart, computed from whole
/// multiples so they do not drift.
pub fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step + 0.0).collect()
}

/// A tick label with just enough decimals for the step.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{:.*}", decimals, v + 0.0)
}

/// Ticks for a log(1 + y) axis reaching at least `max`: 0, then 1, 2, 5,
/// 10, … up to the first ≥ `max`; thinned to 0 and powers of ten when that
/// would crowd the axis.
pub fn log_ticks(max: f64) -> Vec<f64> {
    let mut all = vec![0.0];
    let mut decade = 1.0;
    'outer: loop {
        for m in [1.0, 2.0, 5.0] {
            all.push(m * decade);
            if m * decade >= max {
                break 'outer;
            }
        }
        decade *= 10.0;
    }
    if all.len() > 7 {
        let last = *all.last().unwrap();
        all.retain(|&v| v == 0.0 || v == last || v.log10().fract() == 0.0);
    }
    all
}
