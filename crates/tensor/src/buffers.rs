//! Recycled buffers (f32 values, and u32 argmaxes). A training step makes the same tensors, of the
//! same sizes, as the step before, so rather than asking the allocator each
//! time (and, for large buffers, the kernel for fresh zeroed pages), a
//! tensor's buffer goes back to a per-thread free list when the tensor is
//! dropped, and the next op that needs that many floats takes it.
//!
//! [`take`] hands out a buffer whose contents are left over from its last
//! use: only for outputs the op then overwrites whole (every kernel that
//! says OVERWRITES). [`zeroed`] is for buffers that are added into.
//!
//! A kernel that forgets part of its output would quietly pass another
//! tensor's old values on, and the determinism tests only catch that when
//! the leftovers happen to differ between runs. So in debug and test builds
//! (`debug_assertions`) every buffer [`take`] hands out, recycled or new, is
//! first filled with a poison value (NaN for f32, `u32::MAX` for argmax
//! indices): an unwritten element then shows up as a NaN in the result, or
//! as an index out of range, and fails a test. Release builds skip the fill.

use std::cell::RefCell;

/// Buffers shorter than this go back to the allocator: small ones are cheap
/// to make, and keeping them would crowd out the large ones.
const MIN_LEN: usize = 1024;

/// At most this many buffers are kept per thread (a LeNet step makes about
/// twenty large ones, a ResNet-20 step a couple of hundred), holding at
/// most `MAX_KEPT_BYTES` between them.
const MAX_KEPT: usize = 256;
const MAX_KEPT_BYTES: usize = 256 << 20;

thread_local! {
    static FREE_F32: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static FREE_U32: RefCell<Vec<Vec<u32>>> = const { RefCell::new(Vec::new()) };
}

/// The element types with a free list: f32 values, and u32 argmaxes.
pub trait Element: Copy + Default + 'static {
    /// What [`take`] fills its buffers with in debug builds: a value no
    /// kernel writes on purpose (NaN, or an index out of range).
    const POISON: Self;

    /// Runs `f` on this thread's free list; `None` while the thread shuts
    /// down and the list is gone.
    fn with_free<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> Option<R>;
}

impl Element for f32 {
    const POISON: f32 = f32::NAN;

    fn with_free<R>(f: impl FnOnce(&mut Vec<Vec<f32>>) -> R) -> Option<R> {
        FREE_F32.try_with(|l| f(&mut l.borrow_mut())).ok()
    }
}

impl Element for u32 {
    const POISON: u32 = u32::MAX;

    fn with_free<R>(f: impl FnOnce(&mut Vec<Vec<u32>>) -> R) -> Option<R> {
        FREE_U32.try_with(|l| f(&mut l.borrow_mut())).ok()
    }
}

/// A buffer of `n` elements with unspecified contents (left over from an
/// earlier use, or zeros if it is new; [`Element::POISON`] throughout in
/// debug builds). The caller must overwrite all of it.
pub fn take<T: Element>(n: usize) -> Vec<T> {
    #[allow(unused_mut)] // mutated only in debug builds
    let mut v = recycled(n).unwrap_or_else(|| vec![T::default(); n]);
    #[cfg(debug_assertions)]
    v.fill(T::POISON);
    v
}

/// The most recently returned buffer of exactly `n` elements, if any.
fn recycled<T: Element>(n: usize) -> Option<Vec<T>> {
    if n < MIN_LEN {
        return None;
    }
    T::with_free(|f| {
        let i = f.iter().rposition(|v| v.len() == n)?;
        Some(f.swap_remove(i))
    })
    .flatten()
}

/// A buffer of `n` zeros.
pub fn zeroed<T: Element>(n: usize) -> Vec<T> {
    let mut v = take(n);
    v.fill(T::default());
    v
}

/// Returns a buffer to this thread's free list (or to the allocator if it
/// is small). A full list (by count or by bytes) lets its oldest buffers go,
/// so that when the sizes change (from training to evaluation, say) the new
/// ones take over, and one huge batch cannot pin much memory.
pub fn give<T: Element>(v: Vec<T>) {
    if v.len() < MIN_LEN {
        return;
    }
    let bytes = |f: &Vec<Vec<T>>| f.iter().map(|v| v.len()).sum::<usize>() * size_of::<T>();
    T::with_free(|f| {
        f.push(v);
        // The oldest go first.
        while f.len() > MAX_KEPT || (f.len() > 1 && bytes(f) > MAX_KEPT_BYTES) {
            f.remove(0);
        }
    });
}

/// A buffer that goes back to the free list when dropped: for what an op's
/// backward closure keeps (a closure drops what it holds as plain vectors
/// straight to the allocator).
pub struct Recycled<T: Element>(pub Vec<T>);

impl<T: Element> Recycled<T> {
    /// A recycled copy of `src`.
    pub fn copy_of(src: &[T]) -> Recycled<T> {
        let mut v = take(src.len());
        v.copy_from_slice(src);
        Recycled(v)
    }
}

impl<T: Element> std::ops::Deref for Recycled<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Element> std::ops::DerefMut for Recycled<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T: Element> Drop for Recycled<T> {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_for_its_size_only() {
        let v: Vec<f32> = take(4096);
        let ptr = v.as_ptr();
        give(v);
        // Another size is a new buffer.
        let other: Vec<f32> = take(2048);
        assert_eq!(other.len(), 2048);
        assert_ne!(other.as_ptr(), ptr);
        // The same size is the same memory.
        let again: Vec<f32> = take(4096);
        assert_eq!(again.as_ptr(), ptr);
        give(again);
        assert!(zeroed::<f32>(4096).iter().all(|&x| x == 0.0));
        // Small buffers are not kept.
        let kept = || f32::with_free(|f| f.len()).unwrap();
        let before = kept();
        give(vec![1.0f32; 8]);
        assert_eq!(kept(), before);
        assert_eq!(take::<f32>(8).len(), 8);
        // A full list makes room for the newest buffer.
        for _ in 0..MAX_KEPT {
            give(vec![1.0; 1500]);
        }
        let newest = vec![2.0f32; 1600];
        let newest_ptr = newest.as_ptr();
        give(newest);
        let taken: Vec<f32> = take(1600);
        assert_eq!(taken.as_ptr(), newest_ptr);
        // u32 buffers have their own list.
        let idx = vec![3u32; 2000];
        let idx_ptr = idx.as_ptr();
        give(idx);
        let taken: Vec<u32> = take(2000);
        assert_eq!(taken.as_ptr(), idx_ptr);
    }

    /// Tests run with debug assertions, so nothing taken may carry old
    /// values: a kernel that leaves part of its output unwritten must leave
    /// NaN (or an out-of-range index) there, never another tensor's data.
    #[test]
    #[cfg(debug_assertions)]
    fn taken_buffers_are_poisoned_in_debug_builds() {
        give(vec![7.0f32; 4096]);
        let again: Vec<f32> = take(4096);
        assert!(
            again.iter().all(|x| x.is_nan()),
            "recycled f32 not poisoned"
        );
        for n in [8, 3000] {
            assert!(take::<f32>(n).iter().all(|x| x.is_nan()), "new f32 of {n}");
        }
        give(vec![3u32; 2000]);
        assert!(take::<u32>(2000).iter().all(|&i| i == u32::MAX));
        assert!(take::<u32>(10).iter().all(|&i| i == u32::MAX));
        // zeroed still zeroes.
        give(again);
        assert!(zeroed::<f32>(4096).iter().all(|&x| x == 0.0));
    }
}
