//! Memory a training step asks the allocator for, in steady state. Every
//! large buffer of a step (activations, gradients, the batch) should be the
//! last step's, recycled through `tensor::buffers`; what is left is
//! bookkeeping (the tape, tensor handles, small vectors) and, in the linear
//! layers, the packing buffers `matrixmultiply` allocates inside each GEMM.
//! A counting global allocator measures it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use hebbsparse::sparse_conv::rules::Rule;
use hebbsparse::sparse_conv::{DSConfig, LeNet, Model};
use hebbsparse::tensor::awake::with_pool_awake;
use hebbsparse::tensor::ops::conv2d::PoolOptions;
use hebbsparse::tensor::ops::sparse_conv2d::conv2d_sparse_relu_max_pool2d;
use hebbsparse::tensor::optim::{Sgd, SgdConfig};
use hebbsparse::tensor::{Conv2dOptions, Rng, SparseLayout, Tensor};
use std::rc::Rc;

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
/// Allocations of at least [`DATA_BUFFER`] bytes: data buffers, as
/// opposed to bookkeeping.
static LARGE: AtomicUsize = AtomicUsize::new(0);

/// The size from which an allocation counts as a data buffer: 64 KiB, a
/// sixteenth of the smallest activation of a ResNet-20 step at batch 16
/// (16 × 64 × 8 × 8 floats).
const DATA_BUFFER: usize = 64 << 10;

fn count(size: usize) {
    BYTES.fetch_add(size, Ordering::Relaxed);
    CALLS.fetch_add(1, Ordering::Relaxed);
    if size >= DATA_BUFFER {
        LARGE.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts what is asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes and allocator calls per step of a LeNet, averaged over `steps`
/// steps (the quietest window, [`quietest`]).
fn per_step(sparse: bool, batch: usize, steps: usize) -> Step {
    let mut rng = Rng::seed(3);
    let cfg = sparse.then(|| DSConfig {
        rule: Rule::static_mask(),
        ..DSConfig::default()
    });
    let mut net = LeNet::new(cfg, &mut rng).unwrap();
    for (_, l) in net.sparse_layers_mut() {
        l.set_sampling(false);
    }
    steady_steps(&mut net, batch, steps)
}

/// What one training step asks the allocator for.
struct Step {
    bytes: usize,
    calls: usize,
    /// Allocations of data buffers (at least [`DATA_BUFFER`] bytes).
    large: usize,
}

/// Bytes and allocator calls per training step of `net` at batch `batch`,
/// in the quietest of a few windows of `steps` steps after three to warm
/// up (see [`quietest`]), and the number of data buffers allocated in it.
fn steady_steps(net: &mut dyn Model, batch: usize, steps: usize) -> Step {
    let mut opt = Sgd::new(net.parameters(), SgdConfig::new(0.01, 0.9));
    let images: Vec<f32> = (0..batch * 3 * 32 * 32)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    quietest(steps, || {
        // The batch arrives as a fresh vector each step, as from the loader,
        // which takes it from the free list too.
        let mut x = hebbsparse::tensor::buffers::take(images.len());
        x.copy_from_slice(&images);
        let x = Tensor::from_vec(x, &[batch, 3, 32, 32]);
        net.train_step(&mut opt, &x, &labels);
    })
}

/// Runs `step` three times to warm up, then counts windows of `steps`
/// steps and returns the one that allocated least. Thread-local scratch
/// grows once per thread, the first time that thread runs a kernel that
/// uses it, and which thread steals which task varies: a pool thread may
/// first take some kind of task only after the warm-up. Such a one-time
/// growth lands in one window; an allocation made every step lands in all.
fn quietest(steps: usize, mut step: impl FnMut()) -> Step {
    for _ in 0..3 {
        step();
    }
    let load = || [&BYTES, &CALLS, &LARGE].map(|c| c.load(Ordering::Relaxed));
    let window = |step: &mut dyn FnMut()| {
        let before = load();
        for _ in 0..steps {
            step();
        }
        let [bytes, calls, large] = std::array::from_fn(|i| load()[i] - before[i]);
        Step {
            bytes: bytes / steps,
            calls: calls / steps,
            large,
        }
    };
    (0..3)
        .map(|_| window(&mut step))
        .min_by_key(|w| w.bytes)
        .expect("three windows")
}

/// The sparse path proper: both LeNet conv blocks (sparse conv, ReLU,
/// max-pool) forward and backward, at 12 % density, batch 64. Their
/// activations, saved values and gradients are about 2 MB a step; in steady
/// state all of it is recycled. Returns bytes allocated per step (in the
/// quietest window, [`quietest`]).
fn sparse_blocks_per_step() -> usize {
    let mut rng = Rng::seed(5);
    let pool = PoolOptions {
        kernel: (2, 2),
        stride: (2, 2),
    };
    let layer = |cin: usize, cout: usize, rng: &mut Rng| {
        let shape = [cout, cin, 5, 5];
        let n: usize = shape.iter().product();
        let mask: Vec<bool> = (0..n).map(|i| i % 25 < 3).collect();
        let w = Tensor::uniform(&shape, -0.2, 0.2, rng).requires_grad();
        let b = Tensor::uniform(&[cout], -0.1, 0.1, rng).requires_grad();
        let l = Rc::new(SparseLayout::new(shape, Conv2dOptions::default(), &mask));
        (w, b, l)
    };
    let (w1, b1, l1) = layer(3, 6, &mut rng);
    let (w2, b2, l2) = layer(6, 16, &mut rng);
    let x = Tensor::uniform(&[64, 3, 32, 32], -1.0, 1.0, &mut rng);
    let step = || {
        for p in [&w1, &b1, &w2, &b2] {
            p.zero_grad();
        }
        let h = conv2d_sparse_relu_max_pool2d(&x, &w1, Some(&b1), &l1, pool);
        let h = conv2d_sparse_relu_max_pool2d(&h, &w2, Some(&b2), &l2, pool);
        h.sum().backward();
    };
    quietest(4, step).bytes
}

/// Bytes and allocator calls per ResNet-20 step (dense, or static at ERK
/// 10 %) at batch `batch`, averaged over `steps` steps (the quietest
/// window, [`quietest`]).
fn resnet_per_step(sparse: bool, batch: usize, steps: usize) -> Step {
    use hebbsparse::sparse_conv::model::{Arch, ModelSpec, Sparsity};
    use hebbsparse::sparse_conv::rules::Allocation;
    use hebbsparse::sparse_conv::PruneDims;
    let sparsity = sparse.then_some(Sparsity {
        config: DSConfig {
            rule: Rule::static_mask(),
            total_fraction: 0.1,
            keep_fraction: 0.05,
            prune_dims: PruneDims::Layer,
            ..DSConfig::default()
        },
        allocation: Allocation::Erk,
    });
    let mut net = ModelSpec::new(Arch::ResNet { depth: 20 })
        .build(sparsity, &mut Rng::seed(4))
        .unwrap();
    for (_, l) in net.sparse_layers_mut() {
        l.set_sampling(false);
    }
    steady_steps(net.as_mut(), batch, steps)
}

/// One test, so that nothing else allocates while it counts. The steps run
/// as the training loop runs them: on a thread of a rayon pool, with the
/// others kept awake. Each op's own part (and the thread-local scratch it
/// grows once) then stays on the thread that runs the step; called from
/// outside the pool, an op's `rayon::join` would land on any of the pool's
/// threads, and one that first ran it during the counted steps would grow
/// its scratch there.
#[test]
fn steady_steps_allocate_no_data_buffers() {
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    pool.install(|| with_pool_awake(count_steady_steps));
}

fn count_steady_steps() {
    let bytes = sparse_blocks_per_step();
    println!("sparse conv blocks, batch 64: {bytes} bytes allocated per step");
    assert!(
        bytes < 16 * 1024,
        "sparse conv blocks: {bytes} bytes per step"
    );
    // The whole sparse LeNet step: what is left is bookkeeping and the
    // linear layers' GEMM packing, about 1.2 MB at batch 64 (3.9 MB before
    // the free lists, when the conv blocks alone took 1.6 MB).
    let s = per_step(true, 64, 4);
    println!(
        "sparse LeNet, batch 64: {} bytes in {} allocations per step",
        s.bytes, s.calls
    );
    assert!(
        s.bytes < 2 << 20,
        "sparse LeNet: {} bytes per step",
        s.bytes
    );
    // The dense LeNet's linear layers allocate the GEMM library's packing
    // (printed for comparison).
    let s = per_step(false, 64, 4);
    println!(
        "dense LeNet, batch 64: {} bytes in {} allocations per step",
        s.bytes, s.calls
    );
    // A ResNet-20 step at batch 16 makes about 25 MB of activations and
    // gradients, and the dense one about as much im2col scratch; in steady
    // state both take every data buffer from the free lists or the
    // per-thread scratch. What they still allocate, under 1 MB, is
    // bookkeeping (the tape, tensor handles, per-call vectors).
    for (sparse, what) in [(true, "static 10 %"), (false, "dense")] {
        let s = resnet_per_step(sparse, 16, 2);
        println!(
            "ResNet-20 {what}, batch 16: {} bytes in {} allocations per step, \
             {} data buffers",
            s.bytes, s.calls, s.large
        );
        assert!(
            s.bytes < 4 << 20,
            "ResNet-20 {what}: {} bytes per step",
            s.bytes
        );
        assert_eq!(s.large, 0, "ResNet-20 {what}: data buffers allocated");
    }
}
