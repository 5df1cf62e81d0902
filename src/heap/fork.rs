//! The fork handlers: with other threads alive, every global lock is taken before `fork`
//! and released after it in parent and child; in the child, the heaps of the threads that
//! did not come along are abandoned. Calls into `mod.rs`, `life` and `collect` (it takes
//! every lock); only `life` refers to it, to register the handlers and, in a fork child that
//! takes over its parent's initialisation, to do what they would have done.

use super::collect::ABANDONED;
use super::life::{BACKUP, META, SAMPLES, for_each_heap, segs_of};
use super::{Heap, current};
use crate::arena;
use crate::os;
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

// ---- fork ----
//
// With other threads alive, the pre-fork handler takes every global lock, so the child copies
// no half-updated structure, and the parent and child handlers release them. A signal handler
// may call fork() while its thread is inside fork() or inside malloc (glibc supports this in a
// single-threaded process); the handlers must neither wait for a lock their own thread holds
// nor release one an outer level still needs:
// - A single-threaded process takes no lock (as glibc does): nothing can race the forking
//   thread but code it interrupted, and a lock that code holds would be waited for forever.
//   The child then resets every lock: one that is held was held by the interrupted code,
//   which does not run in the child (unless the handler returns there), and the child's own
//   malloc and free must not wait for it.
// - A multi-threaded process blocks signals from the pre-fork handler until the parent or
//   child handler, so no signal handler can fork on this thread while it holds the locks.
//   (A handler that interrupts malloc in a multi-threaded process and forks is not
//   supported, as with glibc: the other threads may wait for what the interrupted code holds.)

/// While a thread holds the fork locks (from the pre-fork handler of a multi-threaded fork to
/// its parent or child handler): that thread's id (`os::thread_id`, the same in the child),
/// 0 otherwise. Only the holder touches `FORK_MASK`, and only one thread can hold the locks,
/// so one slot suffices; no other level of fork can start on the holder's thread while it
/// holds them (signals are blocked).
static FORK_HOLDER: AtomicUsize = AtomicUsize::new(0);

/// The holder's signal mask to restore (see `FORK_HOLDER`).
struct ForkMask(UnsafeCell<MaybeUninit<libc::sigset_t>>);

// SAFETY: the mask is written and read only by a thread that holds every fork lock (after
// taking them, before releasing them), so by one thread at a time.
unsafe impl Sync for ForkMask {}

static FORK_MASK: ForkMask = ForkMask(UnsafeCell::new(MaybeUninit::uninit()));

/// Records that this thread holds the fork locks, with the mask to restore.
fn set_fork_held(mask: libc::sigset_t) {
    // SAFETY: this thread holds every fork lock, so no other thread is between its own
    // `set_fork_held` and `take_fork_held`: the slot is ours.
    unsafe { (*FORK_MASK.0.get()).write(mask) };
    FORK_HOLDER.store(os::thread_id(), Ordering::Release);
}

/// The mask to restore if this thread holds the fork locks (clearing the record), else None.
fn take_fork_held() -> Option<libc::sigset_t> {
    let me = os::thread_id();
    if FORK_HOLDER.load(Ordering::Acquire) != me {
        return None;
    }
    // SAFETY: `set_fork_held` wrote the mask on this thread before naming it the holder,
    // and this thread still holds the fork locks.
    let mask = unsafe { (*FORK_MASK.0.get()).assume_init_read() };
    FORK_HOLDER.store(0, Ordering::Relaxed);
    Some(mask)
}

pub(super) extern "C" fn fork_prepare() {
    if os::is_single_threaded() {
        return;
    }
    let mask = os::block_signals();
    // The same order as everywhere else: backup heap, heap memory (no heap is created while
    // it is held), every heap's segments (so no segment list is half updated in the child),
    // abandoned list, arena, large blocks.
    crate::lock::hold(&BACKUP);
    crate::lock::hold(&SAMPLES);
    crate::lock::hold(&META);
    for_each_heap(|h| crate::lock::hold(segs_of(h)));
    crate::lock::hold(&ABANDONED);
    arena::lock_for_fork();
    crate::large::lock_for_fork();
    set_fork_held(mask);
}

pub(super) extern "C" fn fork_parent() {
    // A single-threaded fork took nothing: whatever is held belongs to code this thread's
    // signal handler interrupted, which goes on when the handler returns.
    if let Some(mask) = take_fork_held() {
        // SAFETY: fork_prepare took all of them on this thread (FORK_HOLDER says so).
        unsafe { release_fork_locks() };
        os::set_signal_mask(&mask);
    }
}

pub(super) extern "C" fn fork_child() {
    let held = take_fork_held();
    // A single-threaded fork from a signal handler that interrupted the arena: its state
    // may be half updated (see `arena::forget_free_spans`). (Multi-threaded, fork_prepare
    // holds its lock.)
    let arena_interrupted = held.is_none() && arena::is_busy();
    // Multi-threaded: fork_prepare took every lock on this thread, which is the child's only
    // thread. Single-threaded: a held lock was held by code of this thread that a signal
    // handler interrupted; in the child that code does not run again unless the handler
    // returns (then the child has the heap in whatever state the interrupted code left it,
    // as with glibc), and releasing a free lock is a no-op.
    // SAFETY: so each lock is held by us, or by code whose guard will not be used.
    unsafe { reset_in_child(held.is_some(), arena_interrupted) };
    if let Some(mask) = held {
        os::set_signal_mask(&mask);
    }
}

/// For a fork child that takes over an initialisation its parent had under way (see
/// `life::ensure_init`): the fork handlers were not registered, so this does what the
/// child's would. A lock is held by a parent's thread, which does not exist here, or by
/// this thread's code, interrupted by the signal handler that forked. Nothing if the child
/// already has other threads: their holds are real. Its callers hold no lock (`alloc_slow`
/// does not come here for a heap used under a global lock). Not supported, as for any
/// allocation in a handler that interrupts malloc or free: a handler in the child, before
/// the take-over, that interrupts the child's own allocator call (whose locks this resets).
pub(super) fn take_over_in_child() {
    if os::is_single_threaded() {
        // The arena's holder, if any, was interrupted mid-way, as in fork_child.
        let arena_interrupted = arena::is_busy();
        // SAFETY: per the above, no guard of a held lock will be used.
        unsafe { reset_in_child(true, arena_interrupted) };
    }
}

/// The fork child's reset: every lock released, the owners' flags cleared, this thread's
/// heap given the child's ids; with `others_gone`, the other threads' heaps abandoned; with
/// `arena_interrupted` (read before the release), the arena's free spans forgotten.
///
/// # Safety
/// This is a fork child's only thread, and each held lock is held by a thread that is gone,
/// by `fork_prepare` on this thread, or by code of this thread whose guard will not be used.
unsafe fn reset_in_child(others_gone: bool, arena_interrupted: bool) {
    // SAFETY: per the contract.
    unsafe { release_fork_locks() };
    // Not taken by fork_prepare: held only by a thread the child does not have, or by code
    // a signal handler interrupted.
    crate::options::reset_after_fork();
    // With the locks, the flags of the owners' holds go: a thread of the parent may have
    // been taking its own lock, and its heap is pooled below for the child's threads.
    for_each_heap(|h| {
        // SAFETY: heaps are never freed; the child has one thread, so no other touches a
        // heap's owner-only flag.
        unsafe { (*h).clear_owner_locked() }
    });
    if let Some(h) = current() {
        h.set_owner(os::kernel_tid(), os::getpid()); // the child's ids
    }
    if others_gone {
        abandon_other_heaps();
        crate::prof::after_fork_child();
    }
    if arena_interrupted {
        arena::forget_free_spans();
    }
}

/// In a fork child only the forking thread exists: every other thread's heap is dead. Its
/// segments are abandoned (so frees into them take the cross-thread path and the next heap
/// needing pages adopts them) — new threads of the child may get a dead thread's id, and
/// must not find its segments owned by them.
fn abandon_other_heaps() {
    let me = current().map_or(ptr::null_mut(), |h| h as *const Heap as *mut Heap);
    for_each_heap(|h| {
        // SAFETY: in the child no other thread exists, so heaps other than ours are unused.
        let heap = unsafe { &*h };
        if h != me && heap.kernel_tid.load(Ordering::Relaxed) != 0 {
            heap.clear_bins();
            heap.segs().lock().abandon_all();
            heap.set_owner(0, 0);
            let mut m = META.lock();
            heap.next_free.set(m.pool);
            m.pool = h;
        }
    });
}

/// Releases every global lock.
///
/// # Safety
/// Each lock is held by `fork_prepare` on this thread, or this is a fork child where no guard
/// of a held lock will be used.
unsafe fn release_fork_locks() {
    // SAFETY: per the contract, each lock is held with no guard alive.
    unsafe {
        crate::large::unlock_after_fork();
        arena::unlock_after_fork();
        crate::lock::force_unlock(&ABANDONED);
        for_each_heap(|h| crate::lock::force_unlock(segs_of(h)));
        crate::lock::force_unlock(&META);
        crate::lock::force_unlock(&SAMPLES);
        crate::lock::force_unlock(&BACKUP);
    }
}
