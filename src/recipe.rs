//! Recipes: named sets of training settings (`--recipe`), and each
//! network's defaults for how its sparse layers are grouped.
//!
//! A recipe sets the training numbers and, for sparse rules that update
//! their masks, when and how much they update. Options given on the command
//! line then override any of it.

use std::str::FromStr;

use sparse_conv::rules::{Allocation, DropFraction, DropSchedule, Prune};
use sparse_conv::PruneDims;

use crate::config::{LrSchedule, Normalization, TrainConfig};

/// A named recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// The notebook's: 2 epochs, batch 4, lr 0.001, constant; a mask update
    /// every 2,000 batches until the very end.
    Notebook,
    /// For the bundled 1,000-image sample, where the notebook's 500 steps
    /// learn nothing: 40 epochs (16 for a ResNet), cosine decay,
    /// augmentation, a mask update every 2 epochs until 75 % of training.
    Sample,
    /// The CIFAR ResNets': 30 epochs, batch 128, lr 0.1 with cosine decay
    /// per step, weight decay 5e-4, augmentation, CIFAR-10 normalisation; a
    /// mask update every 100 steps until 75 % of training, drop fraction
    /// 0.3 on a cosine schedule (RigL's practice; the notebook's rule,
    /// which ranks every tap, keeps its own).
    Resnet,
}

impl Recipe {
    pub const ALL: [Recipe; 3] = [Recipe::Notebook, Recipe::Sample, Recipe::Resnet];

    pub fn name(self) -> &'static str {
        match self {
            Recipe::Notebook => "notebook",
            Recipe::Sample => "sample",
            Recipe::Resnet => "resnet",
        }
    }

    /// The recipe a run uses when `--recipe` is not given: the sample's
    /// without `--data`, else the network's own.
    pub fn default_for(has_data: bool, resnet: bool) -> Recipe {
        match (has_data, resnet) {
            (false, _) => Recipe::Sample,
            (true, false) => Recipe::Notebook,
            (true, true) => Recipe::Resnet,
        }
    }

    /// Sets the recipe's values on `c` (whose model and mode are chosen).
    pub fn apply(self, c: &mut TrainConfig) {
        let resnet = c.model.arch.is_resnet();
        let updates = c.rule.updates();
        match self {
            Recipe::Notebook => {
                c.epochs = 2;
                c.batch_size = 4;
                c.lr = 0.001;
                c.lr_schedule = LrSchedule::Constant;
                c.momentum = 0.9;
                c.weight_decay = 0.0;
                c.augment = false;
                c.normalize = Normalization::Half;
                c.progress_every = None;
            }
            Recipe::Sample => {
                // 1,000 images in batches of 16 (LeNet) or 32 (ResNet): 63
                // or 32 batches an epoch; a mask update every 2 epochs.
                let (epochs, batch, lr, every) = if resnet {
                    (16, 32, 0.05, 64)
                } else {
                    (40, 16, 0.02, 126)
                };
                c.epochs = epochs;
                c.batch_size = batch;
                c.lr = lr;
                c.lr_schedule = LrSchedule::Cosine;
                c.momentum = 0.9;
                c.weight_decay = if resnet { 5e-4 } else { 0.0 };
                c.augment = true;
                c.normalize = if resnet {
                    Normalization::Cifar10
                } else {
                    Normalization::Half
                };
                c.progress_every = Some(every);
                // The last update well before the last evaluation: an
                // update re-initialises taps, and the network needs steps
                // to recover from it.
                if updates {
                    c.rule.stop_updates_at = 0.75;
                }
            }
            Recipe::Resnet => {
                c.epochs = 30;
                c.batch_size = 128;
                c.lr = 0.1;
                c.lr_schedule = LrSchedule::Cosine;
                c.momentum = 0.9;
                c.weight_decay = 5e-4;
                c.augment = true;
                c.normalize = Normalization::Cifar10;
                c.progress_every = Some(100);
                if updates {
                    c.rule.stop_updates_at = 0.75;
                    // The notebook's rule ranks every tap and keeps its
                    // --keep-fraction: its drop fraction is fixed by that.
                    if c.rule.prune != Prune::Strength {
                        c.rule.drop_fraction = DropFraction::Fixed(0.3);
                        c.rule.drop_schedule = DropSchedule::Cosine;
                    }
                }
            }
        }
    }
}

impl FromStr for Recipe {
    type Err = String;
    fn from_str(s: &str) -> Result<Recipe, String> {
        Recipe::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown recipe {s:?}: expected notebook, sample or resnet"))
    }
}

/// The network's own defaults for its sparse layers: the LeNet ranks each
/// (out, in) kernel on its own with one density for all (the notebook's);
/// a ResNet's 3×3 kernels are too small for that (k1 = k2 = 1 at 10 % and
/// 15 % of 9 taps), so it ranks whole layers, with the density spread by
/// ERK.
pub fn model_defaults(c: &mut TrainConfig) {
    if c.model.arch.is_resnet() {
        c.prune_dims = PruneDims::Layer;
        c.allocation = Allocation::Erk;
    } else {
        c.prune_dims = PruneDims::Kernel;
        c.allocation = Allocation::Uniform;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use sparse_conv::model::{Arch, ModelSpec};

    #[test]
    fn resnet_recipe_moves_masks_until_three_quarters_but_leaves_static_alone() {
        let mut c = TrainConfig {
            model: ModelSpec::new(Arch::ResNet { depth: 20 }),
            ..TrainConfig::for_mode(Mode::Set)
        };
        Recipe::Resnet.apply(&mut c);
        assert_eq!((c.epochs, c.batch_size, c.lr), (30, 128, 0.1));
        assert_eq!(c.rule.stop_updates_at, 0.75);
        assert_eq!(c.rule.drop_schedule, DropSchedule::Cosine);
        let mut s = TrainConfig::for_mode(Mode::Static);
        Recipe::Resnet.apply(&mut s);
        assert!(!s.rule.updates());
        let mut h = TrainConfig::for_mode(Mode::Hebbian);
        Recipe::Sample.apply(&mut h);
        assert_eq!(h.rule.stop_updates_at, 0.75);
        Recipe::Notebook.apply(&mut h);
        assert_eq!((h.epochs, h.batch_size), (2, 4));
    }

    /// Every recipe gives every mode on every network settings a run can
    /// start with.
    #[test]
    fn every_recipe_suits_every_mode_and_network() {
        for arch in [Arch::LeNet, Arch::ResNet { depth: 20 }] {
            for mode in Mode::ALL {
                for r in Recipe::ALL {
                    let mut c = TrainConfig {
                        model: ModelSpec::new(arch),
                        ..TrainConfig::for_mode(mode)
                    };
                    r.apply(&mut c);
                    let ok = c.validate();
                    assert!(ok.is_ok(), "{arch:?} {mode:?} {}: {ok:?}", r.name());
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for r in Recipe::ALL {
            assert_eq!(r.name().parse::<Recipe>(), Ok(r));
        }
        assert!("long".parse::<Recipe>().is_err());
    }
}
