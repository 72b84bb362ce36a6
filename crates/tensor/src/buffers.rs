//! Recycled f32 buffers. A training step makes the same tensors, of the
//! same sizes, as the step before, so rather than asking the allocator each
//! time (and, for large buffers, the kernel for fresh zeroed pages), a
//! tensor's buffer goes back to a per-thread free list when the tensor is
//! dropped, and the next op that needs that many floats takes it.
//!
//! [`take`] hands out a buffer whose contents are left over from its last
//! use: only for outputs the op then overwrites whole (every kernel that
//! says OVERWRITES). [`zeroed`] is for buffers that are added into.
//! Results never depend on the leftovers, which the determinism tests
//! (thread counts, resume) would catch.

use std::cell::RefCell;

/// Buffers shorter than this go back to the allocator: small ones are cheap
/// to make, and keeping them would crowd out the large ones.
const MIN_LEN: usize = 1024;

/// At most this many buffers are kept per thread (a LeNet step makes about
/// twenty large ones).
const MAX_KEPT: usize = 48;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `n` floats with unspecified contents (left over from an
/// earlier use, or zeros if it is new). The caller must overwrite all of it.
pub fn take(n: usize) -> Vec<f32> {
    if n >= MIN_LEN {
        let found = FREE.with(|f| {
            let mut f = f.borrow_mut();
            // The most recently returned buffer of exactly this size.
            let i = f.iter().rposition(|v| v.len() == n)?;
            Some(f.swap_remove(i))
        });
        if let Some(v) = found {
            return v;
        }
    }
    vec![0.0; n]
}

/// A buffer of `n` zeros.
pub fn zeroed(n: usize) -> Vec<f32> {
    let mut v = take(n);
    v.fill(0.0);
    v
}

/// Returns a buffer to this thread's free list (or to the allocator if it
/// is small or the list is full).
pub fn give(v: Vec<f32>) {
    if v.len() < MIN_LEN {
        return;
    }
    // `try_with`: a tensor dropped while the thread shuts down finds the
    // list gone, and its buffer is simply freed.
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < MAX_KEPT {
            f.push(v);
        }
    });
}

/// A buffer that goes back to the free list when dropped: for copies an
/// op's backward closure keeps (a closure drops what it holds as plain
/// vectors straight to the allocator).
pub struct Recycled(pub Vec<f32>);

impl Recycled {
    /// A recycled copy of `src`.
    pub fn copy_of(src: &[f32]) -> Recycled {
        let mut v = take(src.len());
        v.copy_from_slice(src);
        Recycled(v)
    }
}

impl std::ops::Deref for Recycled {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_for_its_size_only() {
        let mut v = take(4096);
        v[0] = 7.0;
        let ptr = v.as_ptr();
        give(v);
        // Another size is a new, zeroed buffer.
        let other = take(2048);
        assert_eq!(other.len(), 2048);
        assert!(other.iter().all(|&x| x == 0.0));
        // The same size is the same memory, contents left as they were.
        let again = take(4096);
        assert_eq!((again.as_ptr(), again[0]), (ptr, 7.0));
        give(again);
        assert!(zeroed(4096).iter().all(|&x| x == 0.0));
        // Small buffers are not kept.
        give(vec![1.0; 8]);
        assert_eq!(take(8), vec![0.0; 8]);
    }
}
