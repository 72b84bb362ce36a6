//! The command line: every option, and how they make a run's settings (the
//! network, then its recipe, then the preset rule of --mode, then each
//! option given), with the checks clap cannot make.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use hebbsparse::config::{LrSchedule, Mode, Normalization, TrainConfig};
use hebbsparse::recipe::{model_defaults, Recipe};
use hebbsparse::sparse_conv::model::{Arch, ModelSpec};
use hebbsparse::sparse_conv::rules::{
    Allocation, DropFraction, DropSchedule, Grow, GrowInit, Prune, Start,
};
use hebbsparse::sparse_conv::strength::{Measure, Method};
use hebbsparse::sparse_conv::{ConvPath, PruneDims, Shortcut};

const AFTER_HELP: &str = "\
Networks (--model):
  lenet       the notebook's LeNet: two 5x5 convs (both sparse in a sparse mode), three
              linear layers; sparse groups are (out, in) kernels, uniform density
  resnetN     He et al.'s CIFAR ResNet of depth N = 6n+2 (resnet20, resnet32, resnet56):
              3x3 convs with batch norm, residual blocks; every 3x3 conv but the stem is
              sparse in a sparse mode; groups are whole layers, density spread by ERK

Recipes (--recipe; each option below overrides its part):
  notebook    2 epochs, batch 4, lr 0.001 constant, no augmentation, mask update every
              2,000 batches (or a quarter epoch) until the end [default with --data, LeNet]
  sample      for the bundled 1,000-image sample: LeNet 40 epochs, batch 16, lr 0.02;
              ResNet 16 epochs, batch 32, lr 0.05, weight decay 5e-4; cosine decay,
              augmentation, a mask update every 2 epochs until 75% [default without --data]
  resnet      30 epochs, batch 128, lr 0.1 cosine per step, momentum 0.9, weight decay
              5e-4, augmentation, CIFAR-10 normalisation; sparse rules that update: every
              100 steps until 75%, drop fraction 0.3 on a cosine (not hebbian, whose
              ranking fixes it) [default with --data, ResNet]

Presets (--mode) and the rule parts they set (a recipe may then set the update schedule):
  mode          prune      grow      grow-init  drop-fraction     stop-updates-at  start
  dense         (plain Conv2d layers, no mask)
  hebbian       strength   strength  kaiming    notebook          1                dense
  random        random     random    kaiming    notebook          1                dense
  static        (a random mask of k2 taps per group, never updated)
  hebbian-grow  magnitude  strength  zero       0.3, cosine       0.75             random
  set           magnitude  random    zero       0.3, constant     0.75             random
  rigl          magnitude  gradient  zero       0.3, cosine       0.75             random
  hebbian-grow-fresh   hebbian-grow, never regrowing a tap the same update dropped
  hebbian-rigl  magnitude  strength × |gradient|  zero  0.3, cosine  0.75       random
Every part can be overridden by its own option. 'notebook' drops (k2 - k1)/k2 of each
group, with k1 = --keep-fraction and k2 = --density of its taps.";

/// Train a CNN (the notebook's LeNet or a CIFAR ResNet) on CIFAR-10, dense
/// or with a sparse prune/grow rule.
#[derive(Parser, Debug)]
#[command(name = "cifar", version, after_help = AFTER_HELP)]
pub struct Args {
    /// CIFAR-10 binary data: cifar-10-binary.tar.gz, the cifar-10-batches-bin
    /// directory, or a directory holding either [default: the bundled sample]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The network: lenet, or resnetN with N = 6n+2 (resnet20, resnet32, resnet56)
    #[arg(long, default_value = "lenet")]
    pub model: Arch,
    /// dense, hebbian, random, static, hebbian-grow, set, rigl,
    /// hebbian-grow-fresh or hebbian-rigl (see below)
    #[arg(long, default_value = "hebbian")]
    pub mode: Mode,
    /// notebook, sample or resnet (see below) [default: sample without --data;
    /// with --data, notebook for the LeNet and resnet for a ResNet]
    #[arg(long)]
    pub recipe: Option<Recipe>,

    // The recipe's parts. `None` means the recipe's value.
    /// Passes over the training set [default: from --recipe]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    pub epochs: Option<u32>,
    /// Images per SGD step [default: from --recipe]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    pub batch_size: Option<u32>,
    /// SGD learning rate [default: from --recipe]
    #[arg(long, help_heading = "Recipe")]
    pub lr: Option<f32>,
    /// constant or cosine (decays to 0 at the end) [default: from --recipe]
    #[arg(long, help_heading = "Recipe")]
    pub lr_schedule: Option<LrSchedule>,
    /// SGD momentum, in [0, 1) [default: 0.9]
    #[arg(long, help_heading = "Recipe")]
    pub momentum: Option<f32>,
    /// L2 weight decay added to every gradient, batch norm's included
    /// [default: from --recipe]
    #[arg(long, help_heading = "Recipe")]
    pub weight_decay: Option<f32>,
    /// Random crops (4-pixel padding) and horizontal flips: --augment, or
    /// --augment false [default: from --recipe]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Recipe")]
    pub augment: Option<bool>,
    /// Input normalisation: half ((x - 0.5)/0.5) or cifar10 (the data set's
    /// channel statistics) [default: from --recipe]
    #[arg(long, help_heading = "Recipe")]
    pub normalize: Option<Normalization>,
    /// Batches between mask updates [default: from --recipe]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    pub progress_every: Option<u32>,
    /// Batches between loss lines [default: 2000, or a quarter epoch if an
    /// epoch is shorter]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    pub log_every: Option<u32>,
    /// Seed for the weights, the data order and the masks
    #[arg(long, default_value_t = 0, help_heading = "Recipe")]
    pub seed: u64,

    // The network's options.
    /// ResNet shortcut of a widening block: a (subsample and zero-pad, He et
    /// al.'s CIFAR choice) or b (1x1 convolution and batch norm)
    #[arg(long, default_value = "a", help_heading = "Network")]
    pub shortcut: Shortcut,
    /// ResNet: make the first convolution sparse too
    #[arg(long, help_heading = "Network")]
    pub sparse_stem: bool,
    /// ResNet: make the 1x1 projection shortcuts sparse too (with --shortcut b)
    #[arg(long, help_heading = "Network")]
    pub sparse_projection: bool,
    /// ResNet: make the classifier sparse too
    #[arg(long, help_heading = "Network")]
    pub sparse_classifier: bool,

    // The rule. `None` means the preset's (or the recipe's) value.
    /// Which taps a group keeps: strength (all taps ranked, the notebook's),
    /// magnitude or random (among the active taps) [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub prune: Option<Prune>,
    /// Which taps not kept are grown: strength, random, gradient,
    /// strength-gradient (strength × |gradient|) or none [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub grow: Option<Grow>,
    /// What grown and revived taps start from: kaiming (a fresh draw of the
    /// layer's initialisation) or zero [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub grow_init: Option<GrowInit>,
    /// Fraction of k2 replaced per update: notebook ((k2 - k1)/k2) or a
    /// number in [0, 1] [default: from --mode and --recipe]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub drop_fraction: Option<DropFraction>,
    /// constant or cosine (decays to 0 at --stop-updates-at) [default: from
    /// --mode and --recipe]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub drop_schedule: Option<DropSchedule>,
    /// Fraction of training after which the mask stays fixed, in [0, 1]
    /// [default: from --mode and --recipe]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub stop_updates_at: Option<f64>,
    /// dense (all taps active until the first update) or random (k2 random
    /// taps per group) [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub start: Option<Start>,
    /// Whether growth may pick a tap the same update dropped: true or false
    /// [default: from --mode; false only in hebbian-grow-fresh]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub regrow_dropped: Option<bool>,
    /// The target fraction of active weights: k2 = this fraction of each
    /// group's taps (uniform), or over all sparse layers together (erk)
    #[arg(
        long,
        visible_alias = "total-fraction",
        default_value_t = 0.15,
        help_heading = "Prune/grow rule"
    )]
    pub density: f64,
    /// k1 = this fraction of a group's taps: the notebook's kept count
    /// [default: 2/3 of --density, 0.10 at the notebook's 0.15]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub keep_fraction: Option<f64>,
    /// The groups taps are ranked in: kernel (each (out, in) kernel), filter
    /// or layer [default: kernel for the LeNet, layer for a ResNet]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub prune_dims: Option<PruneDims>,
    /// How density is spread over layers: uniform, or erk (with --prune-dims
    /// layer) [default: uniform for the LeNet, erk for a ResNet]
    #[arg(long, help_heading = "Prune/grow rule")]
    pub allocation: Option<Allocation>,
    /// Sample Hebbian strength on every N-th training forward pass [default: 20]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Hebbian strength")]
    pub update_interval: Option<u64>,
    /// coactivation or correlation [default: coactivation]
    #[arg(long, help_heading = "Hebbian strength")]
    pub strength: Option<Measure>,
    /// How strength is computed: bitcount (AND + popcount, the fastest),
    /// fast (a GEMM), or the notebook's single-unit, grouped,
    /// reduced-redundancy, brute-force. All give the same coactivation
    /// counts [default: bitcount]
    #[arg(long, help_heading = "Hebbian strength")]
    pub strength_method: Option<Method>,
    /// A unit is active when its value is above this (coactivation only) [default: 0]
    #[arg(long, help_heading = "Hebbian strength")]
    pub threshold: Option<f32>,

    /// Kernels of the sparse layers: auto (sparse where measured faster:
    /// below the crossover density, or at any density for layers with at
    /// most 8 output channels), sparse or dense
    #[arg(long, default_value = "auto", help_heading = "Running")]
    pub conv_path: ConvPath,
    /// Worker threads [default: all cores]. Results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Running")]
    pub threads: Option<u32>,
    /// Use only the first N training images
    #[arg(long, help_heading = "Running")]
    pub limit_train: Option<usize>,
    /// Use only the first N test images
    #[arg(long, help_heading = "Running")]
    pub limit_test: Option<usize>,
    /// Save a checkpoint here after each epoch and when interrupted (Ctrl-C, SIGTERM)
    #[arg(long, help_heading = "Running")]
    pub checkpoint: Option<PathBuf>,
    /// Continue from this checkpoint (same settings; --epochs may be larger)
    #[arg(long, help_heading = "Running")]
    pub resume: Option<PathBuf>,
    /// Append JSON lines here, written as they happen: the settings, loss
    /// lines, mask updates, per-epoch test accuracy, and a summary
    #[arg(long, help_heading = "Running")]
    pub metrics: Option<PathBuf>,
    /// Write each sparse layer's weights, mask and strength (.npy) and an
    /// index.json to this folder at the end
    #[arg(long, help_heading = "Running")]
    pub export: Option<PathBuf>,
    /// With --export, also write them at every mask update, to DIR/step-NNNNNNNNN
    #[arg(long, requires = "export", help_heading = "Running")]
    pub export_every_update: bool,
    /// With --export, first remove an export already in the folder (one of a
    /// run with other settings is refused otherwise)
    #[arg(long, requires = "export", help_heading = "Running")]
    pub export_clear: bool,
    /// Start from the masks in this folder (LAYER.mask.npy, 1 = active, as
    /// --export writes them), e.g. from a pruning method elsewhere; weights
    /// at inactive taps become zero
    #[arg(long, value_name = "DIR", help_heading = "Prune/grow rule")]
    pub mask: Option<PathBuf>,
    /// A name for this run in the metrics file (the report groups runs by it)
    /// [default: the mode]
    #[arg(long, help_heading = "Running")]
    pub label: Option<String>,
    /// Hide the progress bar
    #[arg(long, help_heading = "Running")]
    pub quiet: bool,
}

impl Args {
    /// The recipe this run uses.
    pub fn recipe(&self) -> Recipe {
        self.recipe
            .unwrap_or_else(|| Recipe::default_for(self.data.is_some(), self.model.is_resnet()))
    }
}

/// The run's settings from the options: the network and its defaults, the
/// preset rule of --mode, the recipe, then each part given explicitly.
pub fn config_from(args: &Args) -> TrainConfig {
    let mut c = TrainConfig::for_mode(args.mode);
    c.model = ModelSpec {
        arch: args.model,
        shortcut: args.shortcut,
        sparse_stem: args.sparse_stem,
        sparse_projection: args.sparse_projection,
        sparse_classifier: args.sparse_classifier,
    };
    model_defaults(&mut c);
    args.recipe().apply(&mut c);
    c.epochs = args.epochs.map_or(c.epochs, |v| v as usize);
    c.batch_size = args.batch_size.map_or(c.batch_size, |v| v as usize);
    c.lr = args.lr.unwrap_or(c.lr);
    c.lr_schedule = args.lr_schedule.unwrap_or(c.lr_schedule);
    c.momentum = args.momentum.unwrap_or(c.momentum);
    c.weight_decay = args.weight_decay.unwrap_or(c.weight_decay);
    c.augment = args.augment.unwrap_or(c.augment);
    c.normalize = args.normalize.unwrap_or(c.normalize);
    c.progress_every = args.progress_every.map(|v| v as usize).or(c.progress_every);
    c.log_every = args.log_every.map(|v| v as usize);
    c.seed = args.seed;
    let r = &mut c.rule;
    r.prune = args.prune.unwrap_or(r.prune);
    r.grow = args.grow.unwrap_or(r.grow);
    r.grow_init = args.grow_init.unwrap_or(r.grow_init);
    r.drop_fraction = args.drop_fraction.unwrap_or(r.drop_fraction);
    r.drop_schedule = args.drop_schedule.unwrap_or(r.drop_schedule);
    r.stop_updates_at = args.stop_updates_at.unwrap_or(r.stop_updates_at);
    r.start = args.start.unwrap_or(r.start);
    r.regrow_dropped = args.regrow_dropped.unwrap_or(r.regrow_dropped);
    c.total_fraction = args.density;
    c.keep_fraction = args.keep_fraction.unwrap_or(args.density * 2.0 / 3.0);
    c.prune_dims = args.prune_dims.unwrap_or(c.prune_dims);
    c.allocation = args.allocation.unwrap_or(c.allocation);
    c.update_interval = args.update_interval.unwrap_or(c.update_interval);
    c.strength = args.strength.unwrap_or(c.strength);
    c.strength_method = args.strength_method.unwrap_or(c.strength_method);
    c.threshold = args.threshold.unwrap_or(c.threshold);
    c.conv_path = args.conv_path;
    c.mask = args.mask.clone();
    c
}

/// Combinations of options that cannot mean anything.
fn nonsense(args: &Args, c: &TrainConfig) -> Option<String> {
    let rule_parts = [
        ("--prune", args.prune.is_some()),
        ("--grow", args.grow.is_some()),
        ("--grow-init", args.grow_init.is_some()),
        ("--drop-fraction", args.drop_fraction.is_some()),
        ("--drop-schedule", args.drop_schedule.is_some()),
        ("--stop-updates-at", args.stop_updates_at.is_some()),
        ("--start", args.start.is_some()),
        ("--regrow-dropped", args.regrow_dropped.is_some()),
        ("--update-interval", args.update_interval.is_some()),
        ("--strength", args.strength.is_some()),
        ("--strength-method", args.strength_method.is_some()),
        ("--threshold", args.threshold.is_some()),
        ("--keep-fraction", args.keep_fraction.is_some()),
        ("--prune-dims", args.prune_dims.is_some()),
        ("--allocation", args.allocation.is_some()),
        ("--sparse-stem", args.sparse_stem),
        ("--sparse-projection", args.sparse_projection),
        ("--sparse-classifier", args.sparse_classifier),
        ("--export", args.export.is_some()),
        ("--mask", args.mask.is_some()),
    ];
    let given: Vec<&str> = rule_parts
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
    if c.mode == Mode::Dense {
        return (!given.is_empty()).then(|| {
            format!(
                "--mode dense has no mask, so {} means nothing; choose a sparse --mode",
                given.join(", ")
            )
        });
    }
    if c.mode == Mode::Static && !c.rule.updates() {
        let moving: Vec<&str> = given
            .iter()
            .copied()
            .filter(|g| {
                !matches!(
                    *g,
                    "--start"
                        | "--stop-updates-at"
                        | "--export"
                        | "--mask"
                        | "--keep-fraction"
                        | "--prune-dims"
                        | "--allocation"
                        | "--sparse-stem"
                        | "--sparse-projection"
                        | "--sparse-classifier"
                )
            })
            .collect();
        if !moving.is_empty() {
            return Some(format!(
                "--mode static never updates its mask, so {} means nothing \
                 (give --stop-updates-at to let it move, or use --mode set)",
                moving.join(", ")
            ));
        }
    }
    let strength_opts: Vec<&str> = given
        .iter()
        .copied()
        .filter(|g| {
            matches!(
                *g,
                "--update-interval" | "--strength" | "--strength-method" | "--threshold"
            )
        })
        .collect();
    if !c.rule.uses_strength() && !strength_opts.is_empty() {
        return Some(format!(
            "this rule (prune {}, grow {}) reads no Hebbian strength, so {} means nothing",
            c.rule.prune.name(),
            c.rule.grow.name(),
            strength_opts.join(", ")
        ));
    }
    if args.threshold.is_some() && c.strength == Measure::Correlation {
        return Some("--threshold applies to coactivation, not to --strength correlation".into());
    }
    if c.rule.grow == Grow::None && args.drop_schedule.is_some() && !c.rule.updates() {
        return Some("--drop-schedule needs mask updates (--stop-updates-at > 0)".into());
    }
    None
}

/// More threads than a few per core only add overhead (results do not
/// depend on the count): a number far beyond the machine is a mistake.
fn too_many_threads(threads: Option<u32>) -> Option<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = 4 * cores;
    threads.filter(|&t| t as usize > limit).map(|t| {
        format!("--threads {t} is more than 4 per core on this machine ({cores} cores); give at most {limit}")
    })
}

/// Checks what clap's parsers cannot, before any data is loaded, and exits
/// as clap does (a usage message and exit code 2) on a bad value.
pub fn validate(args: &Args) {
    let config = config_from(args);
    let problem = config
        .validate()
        .err()
        .or_else(|| nonsense(args, &config))
        .or_else(|| {
            (args.limit_train == Some(0) || args.limit_test == Some(0))
                .then(|| "--limit-train and --limit-test must be at least 1".to_string())
        })
        .or_else(|| too_many_threads(args.threads));
    if let Some(msg) = problem {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
}
