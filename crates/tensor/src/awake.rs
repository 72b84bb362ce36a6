//! Keeping the pool's threads awake through a burst of small parallel ops.
//!
//! A training step of a small network runs a dozen parallel ops, each a few
//! tens of microseconds, with serial work between them (the tape, the loss,
//! small elementwise ops). An idle rayon worker spins briefly and then
//! sleeps, so each op starts by waking the other threads (a futex wake and a
//! reschedule, several microseconds on a virtual machine) and ends with them
//! going back to sleep: on the LeNet that was about an eighth of a step.
//!
//! [`with_pool_awake`] runs `f` on the calling thread while every other
//! thread of the pool runs a keeper task: a loop that takes and runs any
//! pending rayon job ([`rayon::yield_now`]) and otherwise spins, until `f`
//! returns. The parallel ops inside `f` then find their helpers awake and
//! looking for work. Which thread runs which piece of an op never changes a
//! result (every op splits its work by its shape alone), so this is purely
//! a scheduling choice; the price is that the other cores spin while `f`
//! runs serial code.

use rayon::Yield;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on this thread with the rest of the current rayon pool kept
/// awake (see the module doc). `f` need not be `Send`. On a pool of one
/// thread, or on a thread outside any pool (where keepers would spin on the
/// global pool's threads while `f` runs without them), it simply runs `f`.
/// If `f` panics, the keepers stop and the panic goes on to the caller.
pub fn with_pool_awake<R>(f: impl FnOnce() -> R) -> R {
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || rayon::current_thread_index().is_none() {
        return f();
    }
    /// Tells the keepers to stop when dropped: after `f` returns or while
    /// its panic unwinds (the scope waits for them either way).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| keep_awake(&done));
        }
        let _stop = Stop(&done);
        f()
    })
}

/// Runs pending rayon jobs, and spins when there are none, until `done`.
fn keep_awake(done: &AtomicBool) {
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(Yield::Executed) => {}
            Some(Yield::Idle) => std::hint::spin_loop(),
            // Not on a pool thread: nothing to keep awake.
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn work() -> f64 {
        (0..10_000u32)
            .into_par_iter()
            .with_min_len(100)
            .map(|i| (i as f64).sqrt())
            .collect::<Vec<_>>()
            .iter()
            .sum()
    }

    /// Parallel work inside gives the same value, on pools of one to three
    /// threads and outside any pool, and the call returns (the keepers stop).
    #[test]
    fn runs_parallel_work_and_returns_its_value() {
        let want = work();
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for _ in 0..20 {
                let got = pool.install(|| with_pool_awake(work));
                assert_eq!(got.to_bits(), want.to_bits(), "{threads} threads");
            }
        }
        assert_eq!(with_pool_awake(work).to_bits(), want.to_bits());
        // Not Send: f runs on the calling thread.
        let rc = std::rc::Rc::new(5);
        assert_eq!(with_pool_awake(|| *rc + 1), 6);
    }

    /// A panic in `f` stops the keepers and reaches the caller, on a pool
    /// thread, and the pool still works afterwards.
    #[test]
    fn a_panic_in_f_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = pool
            .install(|| std::panic::catch_unwind(|| with_pool_awake(|| -> u32 { panic!("in f") })));
        assert!(r.is_err());
        assert_eq!(
            pool.install(|| with_pool_awake(work)).to_bits(),
            work().to_bits()
        );
    }
}
