//! The lock used for the allocator's few global structures: a spin lock (never allocates,
//! usable before anything is initialised) that yields the CPU while it waits, so a holder
//! that was preempted gets to run on a machine with few cores.

use spin::RelaxStrategy;

/// Waits by yielding to the scheduler.
pub struct YieldRelax;

impl RelaxStrategy for YieldRelax {
    #[inline(always)]
    fn relax() {
        crate::os::yield_now();
    }
}

/// A spin mutex whose waiters yield.
pub type Lock<T> = spin::mutex::SpinMutex<T, YieldRelax>;

/// Takes `lock` and keeps it taken with no guard (for `fork`: taken before, released in
/// parent and child by [`force_unlock`]).
pub fn hold<T>(lock: &Lock<T>) {
    core::mem::forget(lock.lock());
}

/// Releases a lock taken by [`hold`]; on a free lock it does nothing.
///
/// # Safety
/// The lock must be free or held by [`hold`], or this is a fork child and its holder is a
/// thread that no longer exists or code of this thread that a signal handler interrupted
/// (and that does not run again in the child unless the handler returns). No guard to it
/// may be used afterwards.
pub unsafe fn force_unlock<T>(lock: &Lock<T>) {
    // SAFETY: per the contract, no guard of the holder is used again.
    unsafe { lock.force_unlock() };
}
