//! Scratch memory and checks shared by the convolution kernels: a
//! thread-local buffer handed out by length, reused across calls, and the
//! length check every slice kernel makes on its operands.

use std::cell::RefCell;

/// The least a thread-local scratch buffer grows to: 64K floats (256 KB),
/// more than any kernel of a ResNet-20 step asks for. A buffer grows to a
/// power of two at least this big, so that the first kernel to use it on a
/// thread sizes it for the others too: which kernels run on which of the
/// pool's threads changes from step to step, and a buffer grown only for
/// the small ones would otherwise be grown again, steps later, by a big one.
const SCRATCH_MIN: usize = 1 << 16;

/// Runs `f` on `len` floats of the thread-local buffer `key`, grown as
/// needed (see [`SCRATCH_MIN`]) and reused across calls; contents
/// unspecified.
pub(crate) fn scratch_in<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len.next_power_of_two().max(SCRATCH_MIN), 0.0);
            }
            f(&mut v[..len])
        }
        // Re-entered on this thread: fall back to a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

pub(crate) fn check_len(op: &str, what: &str, expected: usize, actual: usize) {
    assert_eq!(
        expected, actual,
        "{op}: {what} should have {expected} elements, got {actual}"
    );
}
