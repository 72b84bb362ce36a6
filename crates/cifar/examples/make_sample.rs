//! Builds the bundled CIFAR-10 sample (datasets/cifar10-sample) from the full
//! dataset, so the sample is reproducible:
//!
//! - training: the first 100 images of each class in data_batch_1.bin, in
//!   their original order (1,000 images);
//! - test: the first 50 images of each class in test_batch.bin, in their
//!   original order (500 images).
//!
//! cargo run -p cifar --release --example make_sample -- SRC OUT_DIR

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cifar::{load_cifar10, write_cifar10_batch, Split, IMAGE_BYTES};

const USAGE: &str = "usage: make_sample SRC OUT_DIR

SRC      the full CIFAR-10 binary dataset (cifar-10-binary.tar.gz, the
         cifar-10-batches-bin directory, or a directory containing it)
OUT_DIR  where to write cifar-10-batches-bin/{data_batch_1.bin,test_batch.bin,
         batches.meta.txt}

Keeps the first 100 images per class of data_batch_1.bin and the first 50 per
class of test_batch.bin, in their original order.";

const TRAIN_PER_CLASS: usize = 100;
const TEST_PER_CLASS: usize = 50;
/// Records in one official batch file: data_batch_1 is the first 10,000
/// training images the loader returns.
const BATCH_RECORDS: usize = 10_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("{USAGE}");
        return if args.iter().any(|a| a == "-h" || a == "--help") {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match run(Path::new(&args[0]), Path::new(&args[1])) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(src: &Path, out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let data = load_cifar10(src)?;
    let train = first_per_class(&data.train.take(BATCH_RECORDS), TRAIN_PER_CLASS)?;
    let test = first_per_class(&data.test, TEST_PER_CLASS)?;

    let dir: PathBuf = out_dir.join("cifar-10-batches-bin");
    fs::create_dir_all(&dir)?;
    write_cifar10_batch(&dir.join("data_batch_1.bin"), &train.images, &train.labels)?;
    write_cifar10_batch(&dir.join("test_batch.bin"), &test.images, &test.labels)?;
    // Same layout as the official meta file: one name a line, blank line after.
    let meta = format!("{}\n\n", data.train.class_names.join("\n"));
    fs::write(dir.join("batches.meta.txt"), meta)?;
    println!(
        "wrote {} training and {} test images to {}",
        train.len(),
        test.len(),
        dir.display()
    );
    Ok(())
}

/// The first `per_class` images of every class, keeping the split's order.
fn first_per_class(split: &Split, per_class: usize) -> Result<Split, String> {
    let mut taken = vec![0usize; split.num_classes()];
    let mut out = Split {
        images: Vec::new(),
        labels: Vec::new(),
        class_names: split.class_names.clone(),
    };
    for i in 0..split.len() {
        let label = split.labels[i] as usize;
        if taken[label] < per_class {
            taken[label] += 1;
            out.labels.push(split.labels[i]);
            out.images.extend_from_slice(split.image(i));
        }
    }
    if let Some(class) = taken.iter().position(|&n| n < per_class) {
        return Err(format!(
            "class {class} has only {} images, {per_class} needed",
            taken[class]
        ));
    }
    debug_assert_eq!(out.images.len(), out.labels.len() * IMAGE_BYTES);
    Ok(out)
}
