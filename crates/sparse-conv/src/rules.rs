//! Prune and grow rules: how a mask update chooses the connections of a group.
//!
//! A rule is made of parts, each one line of the field's vocabulary:
//!
//! * **prune** ([`Prune`]): which connections a group keeps. The notebook
//!   ranks *all* taps by accumulated strength and keeps the top ones, so a
//!   pruned tap can come back ("revived"); magnitude and random pruning keep
//!   a subset of the active taps.
//! * **grow** ([`Grow`]): which of the taps not kept become active, to bring
//!   the group back to its target count: by strength, at random (SET), by the
//!   magnitude of the dense weight gradient of the current batch (RigL), or
//!   none at all.
//! * **grow init** ([`GrowInit`]): what a grown (or revived) tap starts from.
//! * **drop fraction** ([`DropFraction`], [`DropSchedule`]): how many of a
//!   group's k2 target taps are replaced, constant or decayed by cosine.
//! * **update window** (`stop_updates_at`): the fraction of training after
//!   which the mask stays fixed.
//! * **start** ([`Start`]): dense (the notebook) or a random mask at the
//!   target density.
//!
//! The named rules are constructors of [`Rule`]; each reads in a few lines.
//! [`update_group`] applies a rule to one group. [`erk_densities`] spreads a
//! target density across layers (Erdős–Rényi-Kernel).
//!
//! # What an update does to one group
//!
//! With n taps, a target of k2 active taps and a drop count d:
//!
//! 1. keep K: the best k2 − d taps by the prune criterion (among all taps for
//!    `Prune::Strength`, among the active ones otherwise);
//! 2. grow G: the best k2 − |K| taps outside K by the grow criterion (none
//!    for `Grow::None`);
//! 3. the taps in K that were active keep their weight; every other tap in
//!    K ∪ G gets the grow-init value and zero momentum; the rest are pruned.
//!
//! Ties are broken by a random key drawn from the layer's stream for every
//! tap of the group, then by index, so an update is a pure function of the
//! layer's state.
//!
//! # The counts an update reports ([`ProgressStats`])
//!
//! ```text
//! kept     in K and active before: keeps its weight
//! revived  in K but inactive before (only with Prune::Strength)
//! regrown  in G: starts from the grow-init value
//! dropped  active before and not kept: its learned weight is gone
//! reset    regrown taps that were active before (a subset of dropped)
//!
//! active before = kept + dropped
//! active after  = kept + revived + regrown
//! ```

use std::fmt;
use std::str::FromStr;

use tensor::Rng;

/// Which taps a group keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prune {
    /// The notebook's: rank all taps by accumulated strength, keep the top.
    Strength,
    /// Keep the active taps of largest |w|.
    Magnitude,
    /// Keep active taps chosen at random.
    Random,
}

/// Which inactive taps a group grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grow {
    /// Largest accumulated strength.
    Strength,
    /// At random (SET).
    Random,
    /// Largest |dense weight gradient| of the current batch (RigL).
    Gradient,
    /// Largest accumulated strength × |dense weight gradient|: the taps
    /// whose units fire together *and* whose weight the loss would move.
    StrengthGradient,
    /// None: the group keeps only what it kept.
    None,
}

/// What a grown or revived tap starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowInit {
    /// A fresh draw from the layer's own initialisation: uniform in
    /// ±1/√fan_in for PyTorch's default (the notebook's LeNet), normal with
    /// standard deviation √2/√fan_in for Kaiming-normal (the ResNets).
    Kaiming,
    /// Zero: it becomes trainable but starts from nothing (RigL, SET here).
    Zero,
}

/// How many of a group's k2 target taps an update replaces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DropFraction {
    /// (k2 − k1) / k2, from the layer's keep and total fractions.
    Notebook,
    /// This fraction of k2.
    Fixed(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropSchedule {
    Constant,
    /// f(t) = f₀ · ½(1 + cos(π t / t_stop)) over the update window.
    Cosine,
}

/// The mask a layer starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Every tap active; the first update prunes to the target.
    Dense,
    /// A random mask of k2 taps per group.
    Random,
}

/// How the target density is spread over layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Every group of every layer gets the same fraction.
    Uniform,
    /// Erdős–Rényi-Kernel: denser small layers, sparser large ones, for
    /// whole-layer groups (see [`erk_densities`]).
    Erk,
}

/// A prune/grow rule; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    pub prune: Prune,
    pub grow: Grow,
    pub grow_init: GrowInit,
    pub drop_fraction: DropFraction,
    pub drop_schedule: DropSchedule,
    /// Mask updates happen only while step ≤ stop_updates_at · total steps.
    pub stop_updates_at: f64,
    pub start: Start,
    /// Whether a tap dropped by an update may be grown again by the same
    /// update. Hebbian growth ranks by strength that ignores the weight,
    /// so the tap magnitude pruning just dropped is often the one it grows
    /// back, from zero: an update that changes nothing but a weight.
    pub regrow_dropped: bool,
}

impl Rule {
    /// The notebook's rule: rank every tap by strength, keep the top k1,
    /// re-initialise the next k2 − k1, from a dense start, until the end.
    pub fn notebook() -> Rule {
        Rule {
            prune: Prune::Strength,
            grow: Grow::Strength,
            grow_init: GrowInit::Kaiming,
            drop_fraction: DropFraction::Notebook,
            drop_schedule: DropSchedule::Constant,
            stop_updates_at: 1.0,
            start: Start::Dense,
            regrow_dropped: true,
        }
    }

    /// The notebook's schedule and counts, with random choices: random
    /// pruning among the active taps, random growth.
    pub fn random() -> Rule {
        Rule {
            prune: Prune::Random,
            grow: Grow::Random,
            ..Rule::notebook()
        }
    }

    /// A random mask fixed at the start: no update ever.
    pub fn static_mask() -> Rule {
        Rule {
            start: Start::Random,
            stop_updates_at: 0.0,
            ..Rule::notebook()
        }
    }

    /// SET (Mocanu et al.): drop the smallest weights, grow at random.
    pub fn set() -> Rule {
        Rule {
            prune: Prune::Magnitude,
            grow: Grow::Random,
            grow_init: GrowInit::Zero,
            drop_fraction: DropFraction::Fixed(0.3),
            drop_schedule: DropSchedule::Constant,
            stop_updates_at: 0.75,
            start: Start::Random,
            regrow_dropped: true,
        }
    }

    /// RigL (Evci et al.): drop the smallest weights, grow where the dense
    /// gradient is largest, cosine-decayed drop fraction.
    pub fn rigl() -> Rule {
        Rule {
            grow: Grow::Gradient,
            drop_schedule: DropSchedule::Cosine,
            ..Rule::set()
        }
    }

    /// RigL with Hebbian growth: drop the smallest weights, grow the
    /// inactive taps whose units fire together most, from zero.
    pub fn hebbian_grow() -> Rule {
        Rule {
            grow: Grow::Strength,
            ..Rule::rigl()
        }
    }

    /// Hebbian growth that never grows back a tap the same update
    /// dropped: the grown taps are new connections.
    pub fn hebbian_grow_fresh() -> Rule {
        Rule {
            regrow_dropped: false,
            ..Rule::hebbian_grow()
        }
    }

    /// RigL with a Hebbian factor: grow where strength × |gradient| is
    /// largest, so a tap needs both coactivity and a gradient to grow.
    pub fn hebbian_rigl() -> Rule {
        Rule {
            grow: Grow::StrengthGradient,
            ..Rule::rigl()
        }
    }

    /// Whether the rule reads accumulated strength (so it must be sampled):
    /// it prunes or grows by strength, and it updates at all (a static
    /// mask, whose parts are the notebook's, never reads it).
    pub fn uses_strength(&self) -> bool {
        self.updates()
            && (self.prune == Prune::Strength
                || matches!(self.grow, Grow::Strength | Grow::StrengthGradient))
    }

    /// Whether an update needs the dense weight gradient of the step before
    /// it (gradient growth).
    pub fn uses_gradient(&self) -> bool {
        matches!(self.grow, Grow::Gradient | Grow::StrengthGradient)
    }

    /// Whether updates ever happen.
    pub fn updates(&self) -> bool {
        self.stop_updates_at > 0.0
    }

    /// Whether a mask update may happen at `step` of `total_steps`.
    pub fn in_window(&self, step: u64, total_steps: u64) -> bool {
        step as f64 <= self.stop_updates_at * total_steps as f64 && self.updates()
    }

    /// The drop fraction at `step` of `total_steps`, given the notebook's
    /// fraction (k2 − k1)/k2 for [`DropFraction::Notebook`].
    pub fn drop_fraction_at(&self, notebook: f64, step: u64, total_steps: u64) -> f64 {
        let f0 = match self.drop_fraction {
            DropFraction::Notebook => notebook,
            DropFraction::Fixed(f) => f,
        };
        match self.drop_schedule {
            DropSchedule::Constant => f0,
            DropSchedule::Cosine => {
                let t_stop = self.stop_updates_at * total_steps as f64;
                let t = (step as f64 / t_stop.max(1e-12)).min(1.0);
                f0 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// Checks the parts fit together; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.stop_updates_at) {
            return Err(format!(
                "--stop-updates-at must be in [0, 1], got {}",
                self.stop_updates_at
            ));
        }
        if let DropFraction::Fixed(f) = self.drop_fraction {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("--drop-fraction must be in [0, 1], got {f}"));
            }
        }
        if self.prune == Prune::Strength && self.drop_fraction != DropFraction::Notebook {
            // The notebook's ranking decides k1 from --keep-fraction; a
            // separate drop fraction would say it twice.
            return Err(
                "--prune strength ranks every tap and keeps --keep-fraction of them; \
                 it takes --drop-fraction notebook"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for Rule {
    fn default() -> Self {
        Rule::notebook()
    }
}

/// One group's view for an update: weights, mask, accumulated strength and
/// (for gradient growth) the dense gradient, all the same length.
pub struct Group<'a> {
    pub weight: &'a mut [f32],
    pub mask: &'a mut [bool],
    pub strength: &'a [f64],
    pub grad: Option<&'a [f32]>,
}

/// Counts of one update, summed over a layer's groups (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressStats {
    pub kept: usize,
    pub revived: usize,
    pub regrown: usize,
    pub dropped: usize,
    pub reset: usize,
    /// Active taps after the update.
    pub active: usize,
    /// All taps of the layer.
    pub total: usize,
}

impl ProgressStats {
    pub fn add(&mut self, o: &ProgressStats) {
        self.kept += o.kept;
        self.revived += o.revived;
        self.regrown += o.regrown;
        self.dropped += o.dropped;
        self.reset += o.reset;
        self.active += o.active;
        self.total += o.total;
    }
}

/// Applies `rule` to one group: keep k2 − drop taps, grow back to k2 (see the
/// module docs). `init` draws a grow-init value. Pushes the index (within
/// the group) of every tap given a fresh value to `fresh`.
pub fn update_group(
    rule: &Rule,
    g: Group,
    k2: usize,
    drop: usize,
    rng: &mut Rng,
    init: &mut dyn FnMut(&mut Rng) -> f32,
    fresh: &mut Vec<usize>,
) -> ProgressStats {
    let n = g.weight.len();
    // One tie-break key per tap, drawn whatever the rule, so the stream
    // advances the same way for every rule.
    let keys: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
    let best_first = |score: &dyn Fn(usize) -> f64, pool: &mut Vec<usize>| {
        pool.sort_unstable_by(|&a, &b| {
            score(b)
                .total_cmp(&score(a))
                .then(keys[a].cmp(&keys[b]))
                .then(a.cmp(&b))
        });
    };

    // 1. Keep.
    let k_keep = k2.saturating_sub(drop);
    let mut pool: Vec<usize> = match rule.prune {
        Prune::Strength => (0..n).collect(),
        Prune::Magnitude | Prune::Random => (0..n).filter(|&i| g.mask[i]).collect(),
    };
    match rule.prune {
        Prune::Strength => best_first(&|i| g.strength[i], &mut pool),
        Prune::Magnitude => best_first(&|i| g.weight[i].abs() as f64, &mut pool),
        Prune::Random => best_first(&|_| 0.0, &mut pool),
    }
    pool.truncate(k_keep);
    let mut keep = vec![false; n];
    for &i in &pool {
        keep[i] = true;
    }

    // 2. Grow, among the taps not kept.
    let n_grow = match rule.grow {
        Grow::None => 0,
        _ => k2.saturating_sub(pool.len()),
    };
    let dropped_now = |i: usize| g.mask[i] && !keep[i];
    let mut cands: Vec<usize> = (0..n)
        .filter(|&i| !keep[i] && (rule.regrow_dropped || !dropped_now(i)))
        .collect();
    let grad = || g.grad.expect("gradient growth needs the dense gradient");
    match rule.grow {
        Grow::Strength => best_first(&|i| g.strength[i], &mut cands),
        Grow::Random => best_first(&|_| 0.0, &mut cands),
        Grow::Gradient => best_first(&|i| grad()[i].abs() as f64, &mut cands),
        Grow::StrengthGradient => {
            best_first(&|i| g.strength[i] * grad()[i].abs() as f64, &mut cands)
        }
        Grow::None => {}
    }
    cands.truncate(n_grow);
    let mut grow = vec![false; n];
    for &i in &cands {
        grow[i] = true;
    }

    // 3. Apply, in index order.
    let mut s = ProgressStats {
        total: n,
        ..Default::default()
    };
    for i in 0..n {
        let was = g.mask[i];
        if keep[i] && was {
            s.kept += 1;
        } else if keep[i] || grow[i] {
            g.weight[i] = init(rng);
            fresh.push(i);
            if keep[i] {
                s.revived += 1;
            } else {
                s.regrown += 1;
                s.reset += was as usize;
            }
        } else {
            g.weight[i] = 0.0;
        }
        if was && !(keep[i]) {
            s.dropped += 1;
        }
        g.mask[i] = keep[i] || grow[i];
        s.active += g.mask[i] as usize;
    }
    s
}

/// Per-layer densities with the Erdős–Rényi-Kernel rule: a layer of shape
/// (O, C, KH, KW) gets density ε·(O + C + KH + KW)/(O·C·KH·KW), ε chosen so
/// that the whole network has `density` of its weights active. Layers the
/// formula would make denser than 1 are dense, and ε is solved again over
/// the rest.
pub fn erk_densities(shapes: &[[usize; 4]], density: f64) -> Vec<f64> {
    let size = |s: &[usize; 4]| s.iter().product::<usize>() as f64;
    let raw = |s: &[usize; 4]| s.iter().sum::<usize>() as f64 / size(s);
    let total: f64 = shapes.iter().map(size).sum();
    let mut dense = vec![false; shapes.len()];
    loop {
        let budget = density * total
            - shapes
                .iter()
                .zip(&dense)
                .filter(|(_, &d)| d)
                .map(|(s, _)| size(s))
                .sum::<f64>();
        let weight: f64 = shapes
            .iter()
            .zip(&dense)
            .filter(|(_, &d)| !d)
            .map(|(s, _)| raw(s) * size(s))
            .sum();
        let eps = budget / weight.max(1e-300);
        let mut changed = false;
        for (i, s) in shapes.iter().enumerate() {
            if !dense[i] && eps * raw(s) > 1.0 {
                dense[i] = true;
                changed = true;
            }
        }
        if !changed {
            return shapes
                .iter()
                .zip(&dense)
                .map(|(s, &d)| if d { 1.0 } else { eps * raw(s) })
                .collect();
        }
    }
}

// Names as the command line spells them.

macro_rules! named {
    ($t:ty, $what:literal, $($v:path => $s:literal),+) => {
        impl $t {
            pub fn name(self) -> &'static str {
                match self { $($v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($v),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " {:?}: expected {}"),
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

named!(Prune, "prune criterion", Prune::Strength => "strength", Prune::Magnitude => "magnitude", Prune::Random => "random");
named!(Grow, "grow criterion", Grow::Strength => "strength", Grow::Random => "random", Grow::Gradient => "gradient", Grow::StrengthGradient => "strength-gradient", Grow::None => "none");
named!(GrowInit, "grow init", GrowInit::Kaiming => "kaiming", GrowInit::Zero => "zero");
named!(DropSchedule, "drop schedule", DropSchedule::Constant => "constant", DropSchedule::Cosine => "cosine");
named!(Start, "start", Start::Dense => "dense", Start::Random => "random");
named!(Allocation, "allocation", Allocation::Uniform => "uniform", Allocation::Erk => "erk");

impl fmt::Display for DropFraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropFraction::Notebook => f.write_str("notebook"),
            DropFraction::Fixed(v) => write!(f, "{v}"),
        }
    }
}

impl FromStr for DropFraction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "notebook" {
            return Ok(DropFraction::Notebook);
        }
        match s.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(DropFraction::Fixed(f)),
            _ => Err(format!(
                "drop fraction {s:?}: expected notebook or a number in [0, 1]"
            )),
        }
    }
}
