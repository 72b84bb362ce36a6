//! Hebbian connection strength: how much each connection of a conv layer took
//! part in one forward pass. DSConv2d prunes the weakest connections and
//! regrows new ones by this score ("cells that fire together wire together").
//!
//! # The connections of a convolution
//!
//! A conv2d weight `w[o, c, j, h]` (shape (O, C/groups, KH, KW)) is one
//! connection, but a *shared* one: at every output position (y, x) it links
//! the input unit
//!
//! ```text
//! (g·Cg + c,  y·s_y + j·d_y − p_y,  x·s_x + h·d_x − p_x)      g = o's group, Cg = C/groups
//! ```
//!
//! to the output unit (o, y, x). Taps that land in the zero padding see the
//! value 0. A connection's strength sums or averages over all positions.
//!
//! # The two measures
//!
//! * [`Measure::Coactivation`] (the notebook's main measure) counts how often
//!   both ends were active: `H[o,c,j,h] = Σ_b Σ_{y,x} [Y > θ]·[X > θ]` over
//!   the batch and all output positions, with padding always inactive. With
//!   θ = 0 "active" is the notebook's `sigmoid(v) > 0.5`.
//! * [`Measure::Correlation`] (the notebook's f2b) is, for each connection
//!   and position, the correlation across the batch between the input value
//!   the connection sees and the output value, taken in absolute value and
//!   averaged over positions. It uses the notebook's normalisation: the mean
//!   of products divides by B but the standard deviations by B − 1, so it is
//!   Pearson's r scaled by (B − 1)/B; and a constant side (std 0, which
//!   includes every padded tap and any batch of one) gives 0. The threshold
//!   plays no part.
//!
//! `docs/strength.md` derives the methods and their costs.
//!
//! # How the files fit together
//!
//! * `mod.rs` (this file): the API ([`strength`], [`accumulate_strength`],
//!   [`StrengthConfig`]), input checking, and dispatch to a method.
//! * `fast.rs`: the general method, and bitcount's fallback. Coactivation *is* a conv weight gradient of
//!   binarised activity, so it is one im2col GEMM; correlation is a batched
//!   GEMM of z-scores, one small product per output position.
//! * `single_unit.rs` (f1), `grouped.rs` (f2), `reduced.rs` (f2b): the
//!   notebook's three formulations, kept to compare and to time. Each builds
//!   "seen maps" (the input a connection sees at every position) by
//!   convolving with one-hot kernels, then reduces them against the output.
//! * `bitcount.rs`: coactivation only, by bit counting: an input or output
//!   row packed into a `u64`, one AND + popcount per connection and output
//!   row. For stride_x = 1 and rows of at most 64; otherwise, and for
//!   correlation, it hands over to `fast.rs`.
//! * `brute.rs` (f3): the definitions as nested loops, the test oracle.
//! * `shared.rs`: what the methods share: binarising, z-scoring over the
//!   batch, and reducing a seen map against the output.
//!
//! Every method supports both measures and every geometry (stride, padding,
//! dilation, groups, non-square kernels); bitcount does so by falling back
//! to the fast method where bits do not apply.

mod bitcount;
mod brute;
mod fast;
mod grouped;
mod reduced;
mod shared;
mod single_unit;

use std::fmt;
use std::str::FromStr;
use tensor::Conv2dShape;

/// What "strength" means; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Coactivation,
    Correlation,
}

impl Measure {
    pub const ALL: [Measure; 2] = [Measure::Coactivation, Measure::Correlation];

    /// The name `FromStr` accepts and `Display` prints.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Coactivation => "coactivation",
            Measure::Correlation => "correlation",
        }
    }
}

/// How to compute it. All methods give the same numbers (coactivation
/// exactly, correlation up to rounding); they differ only in speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Weight-gradient GEMM formulation; covers every geometry and both
    /// measures by itself.
    Fast,
    /// The notebook's f1: one single-tap convolution per connection.
    SingleUnit,
    /// The notebook's f2: one grouped convolution over a copy of the input
    /// per output channel.
    Grouped,
    /// The notebook's f2b: one grouped convolution that extracts every
    /// shifted view of the input once, shared by all output channels.
    ReducedRedundancy,
    /// The notebook's f3: nested loops over the definition.
    BruteForce,
    /// Coactivation by AND + popcount on rows packed into 64-bit words; the
    /// default, because it is the fastest and gives the same counts.
    /// Applies when stride_x = 1 and input and output rows are at most 64
    /// wide; other geometries, and the correlation measure (which needs
    /// values, not bits), use [`Method::Fast`] instead.
    Bitcount,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Fast,
        Method::SingleUnit,
        Method::Grouped,
        Method::ReducedRedundancy,
        Method::BruteForce,
        Method::Bitcount,
    ];

    /// The name `FromStr` accepts and `Display` prints.
    pub fn name(self) -> &'static str {
        match self {
            Method::Fast => "fast",
            Method::SingleUnit => "single-unit",
            Method::Grouped => "grouped",
            Method::ReducedRedundancy => "reduced-redundancy",
            Method::BruteForce => "brute-force",
            Method::Bitcount => "bitcount",
        }
    }

    /// The function's name in the notebook, if it had one.
    pub fn notebook_name(self) -> Option<&'static str> {
        match self {
            Method::Fast | Method::Bitcount => None,
            Method::SingleUnit => Some("f1"),
            Method::Grouped => Some("f2"),
            Method::ReducedRedundancy => Some("f2b"),
            Method::BruteForce => Some("f3"),
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Lists the accepted names, for error messages.
fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> String {
    all.iter().map(|&v| name(v)).collect::<Vec<_>>().join(", ")
}

impl FromStr for Measure {
    type Err = StrengthError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase();
        Measure::ALL
            .into_iter()
            .find(|m| m.name() == wanted)
            .ok_or_else(|| {
                StrengthError::new(format!(
                    "unknown strength measure {text:?}; expected one of: {}",
                    names(&Measure::ALL, Measure::name)
                ))
            })
    }
}

impl FromStr for Method {
    type Err = StrengthError;

    /// Accepts the names above, and the notebook's f1, f2, f2b, f3.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase();
        Method::ALL
            .into_iter()
            .find(|m| m.name() == wanted || m.notebook_name() == Some(wanted.as_str()))
            .ok_or_else(|| {
                StrengthError::new(format!(
                    "unknown strength method {text:?}; expected one of: {} (or the notebook's f1, f2, f2b, f3)",
                    names(&Method::ALL, Method::name)
                ))
            })
    }
}

/// Which measure, computed how. `threshold` is θ of coactivation: a unit is
/// active when its pre-activation is strictly greater than θ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StrengthConfig {
    pub measure: Measure,
    pub method: Method,
    pub threshold: f32,
}

impl Default for StrengthConfig {
    fn default() -> Self {
        StrengthConfig {
            measure: Measure::Coactivation,
            method: Method::Bitcount,
            threshold: 0.0,
        }
    }
}

/// Why a strength could not be computed: the inputs do not fit the geometry
/// (or the geometry itself is invalid), or a setting is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrengthError {
    message: String,
}

impl StrengthError {
    fn new(message: impl Into<String>) -> Self {
        StrengthError {
            message: message.into(),
        }
    }
}

impl fmt::Display for StrengthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StrengthError {}

/// Strength of every connection, weight-shaped (O, C/groups, KH, KW).
/// `x` is the layer's input (B, C, H, W) and `y` its pre-activation output
/// (B, O, OH, OW), both contiguous row-major.
pub fn strength(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    cfg: &StrengthConfig,
) -> Result<Vec<f32>, StrengthError> {
    let weight_len = check_shape(s)?[2];
    let mut acc = vec![0.0; weight_len];
    accumulate_strength(s, x, y, cfg, &mut acc)?;
    Ok(acc)
}

/// Like [`strength`], but ADDS the result into `acc` (O, C/groups, KH, KW),
/// so a caller can sum over several sampled passes into one buffer.
pub fn accumulate_strength(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    cfg: &StrengthConfig,
    acc: &mut [f32],
) -> Result<(), StrengthError> {
    let [x_len, y_len, w_len] = check_shape(s)?;
    check_len("x (input, B·C·H·W)", x_len, x.len())?;
    check_len("y (output, B·O·OH·OW)", y_len, y.len())?;
    check_len("acc (weight-shaped, O·C/groups·KH·KW)", w_len, acc.len())?;
    if cfg.measure == Measure::Coactivation && cfg.threshold.is_nan() {
        return Err(StrengthError::new(
            "coactivation threshold is NaN; no unit could ever be active",
        ));
    }
    let (measure, threshold) = (cfg.measure, cfg.threshold);
    match cfg.method {
        Method::Fast => fast::accumulate(s, x, y, measure, threshold, acc),
        Method::SingleUnit => single_unit::accumulate(s, x, y, measure, threshold, acc),
        Method::Grouped => grouped::accumulate(s, x, y, measure, threshold, acc),
        Method::ReducedRedundancy => reduced::accumulate(s, x, y, measure, threshold, acc),
        Method::BruteForce => brute::accumulate(s, x, y, measure, threshold, acc),
        Method::Bitcount => bitcount::accumulate(s, x, y, measure, threshold, acc),
    }
    Ok(())
}

/// Checks the geometry again (its fields are public, so it may not have come
/// from `Conv2dShape::new`) and returns the lengths of x, y and the weight,
/// without overflowing or dividing by zero on nonsense.
fn check_shape(s: &Conv2dShape) -> Result<[usize; 3], StrengthError> {
    if s.opts.groups == 0 {
        return Err(StrengthError::new(format!(
            "invalid conv geometry: groups must be positive; got {s:?}"
        )));
    }
    let weight = [
        s.out_channels,
        s.in_channels / s.opts.groups,
        s.kernel_h,
        s.kernel_w,
    ];
    let checked = Conv2dShape::new(&s.input_shape(), &weight, s.opts)
        .map_err(|e| StrengthError::new(format!("invalid conv geometry: {e}")))?;
    let product = |dims: [usize; 4]| {
        dims.iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| StrengthError::new(format!("conv geometry too large: {dims:?}")))
    };
    let sizes = [
        product(checked.input_shape())?,
        product(checked.output_shape())?,
        product(checked.weight_shape())?,
    ];
    if sizes.contains(&0) {
        return Err(StrengthError::new(format!(
            "empty conv geometry (a zero batch, channel count or size): {s:?}"
        )));
    }
    Ok(sizes)
}

fn check_len(what: &str, expected: usize, actual: usize) -> Result<(), StrengthError> {
    if expected == actual {
        Ok(())
    } else {
        Err(StrengthError::new(format!(
            "strength: {what} should have {expected} elements, got {actual}"
        )))
    }
}
