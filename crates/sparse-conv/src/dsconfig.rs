//! A DSConv2d's settings: which connections are ranked together
//! ([`PruneDims`]), which kernels compute it ([`ConvPath`]), the counts,
//! the strength and the rule ([`DSConfig`]), and the error a configuration
//! that cannot work is refused with ([`DSConfigError`]).

use std::fmt;

use crate::rules::Rule;
use crate::strength::StrengthConfig;

/// Which connections are ranked against each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneDims {
    /// Each (out, in) kernel of KH·KW taps: the notebook's choice.
    Kernel,
    /// Each output filter, all its C/groups·KH·KW taps.
    Filter,
    /// The whole layer.
    Layer,
}

impl PruneDims {
    pub fn name(self) -> &'static str {
        match self {
            PruneDims::Kernel => "kernel",
            PruneDims::Filter => "filter",
            PruneDims::Layer => "layer",
        }
    }
}

impl std::str::FromStr for PruneDims {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kernel" => Ok(PruneDims::Kernel),
            "filter" => Ok(PruneDims::Filter),
            "layer" => Ok(PruneDims::Layer),
            _ => Err(format!(
                "unknown prune dims {s:?}: expected kernel, filter or layer"
            )),
        }
    }
}

/// Which kernels compute the convolution. Both give the same numbers up to
/// the order of summation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// The sparse kernels where they are measured to be faster
    /// ([`sparse_pays`](tensor::ops::sparse_conv2d::sparse_pays)): below the layer's crossover density, or at any
    /// density for a layer with few output channels; dense otherwise.
    Auto,
    /// Always the direct sparse kernels over the active taps.
    Sparse,
    /// Always the dense conv kernels on the full masked weight.
    Dense,
}

impl ConvPath {
    pub fn name(self) -> &'static str {
        match self {
            ConvPath::Auto => "auto",
            ConvPath::Sparse => "sparse",
            ConvPath::Dense => "dense",
        }
    }
}

impl std::str::FromStr for ConvPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ConvPath::Auto),
            "sparse" => Ok(ConvPath::Sparse),
            "dense" => Ok(ConvPath::Dense),
            _ => Err(format!(
                "unknown conv path {s:?}: expected auto, sparse or dense"
            )),
        }
    }
}

/// The layer's settings; `Default` gives the notebook's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DSConfig {
    /// k1 = max(⌊keep_fraction · n⌋, 1): the notebook's kept count, which
    /// sets the notebook's drop fraction (k2 − k1)/k2.
    pub keep_fraction: f64,
    /// k2 = max(⌊total_fraction · n⌋, 1) taps are active per group.
    pub total_fraction: f64,
    pub prune_dims: PruneDims,
    /// Strength is sampled on every `update_interval`-th training forward pass.
    pub update_interval: u64,
    pub strength: StrengthConfig,
    pub rule: Rule,
    pub path: ConvPath,
}

impl Default for DSConfig {
    fn default() -> Self {
        DSConfig {
            keep_fraction: 0.10,
            total_fraction: 0.15,
            prune_dims: PruneDims::Kernel,
            update_interval: 20,
            strength: StrengthConfig::default(),
            rule: Rule::notebook(),
            path: ConvPath::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DSConfigError(pub String);

impl fmt::Display for DSConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DSConv2d: {}", self.0)
    }
}

impl std::error::Error for DSConfigError {}
