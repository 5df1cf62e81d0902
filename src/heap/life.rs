//! Global state and the life of heaps: the heap memory and pool (`META`), the list of every
//! heap (`for_each_heap`), the locked heaps (backup, samples), one-time initialisation, the
//! creation of a thread's heap, and its retirement at thread exit or, for a thread that
//! ended without its exit handler, when it is found gone (`reap_if_gone`). Calls into
//! `mod.rs` (the thread's heap and its pages), `segs` (a new heap's segment side) and
//! `collect` (to schedule its timers, and to abandon segments); registers the handlers of
//! `fork`. `mod.rs`, `collect` and `fork` use its global state.

use super::collect::{schedule_abandoned_purge, schedule_scan};
use super::fork::{fork_child, fork_parent, fork_prepare, take_over_in_child};
use super::segs::{HeapSegs, SegQueue};
use super::{DEAD, Heap, current, set_thread_heap, thread_heap};
use crate::lock::Lock;
use crate::os;
use crate::segment::PAGED_KINDS;
use crate::stats;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

// ---- global state ----

/// Thread id of the backup heap: no real thread has it, so frees into its pages always take
/// the cross-thread path.
const BACKUP_TID: usize = 1;
/// Thread id of the sample heap (`segment::HUGE_FREED` is 2): every block in its segments is
/// a heap-profiler sample, and frees into it take the cross-thread path, where `free` looks
/// for samples.
pub const SAMPLE_TID: usize = 3;

/// What one allocation of heap memory holds.
#[repr(C)]
struct HeapBox {
    heap: Heap,
    segs: Lock<HeapSegs>,
}

pub(super) struct Meta {
    /// Recycled heaps.
    pub(super) pool: *mut Heap,
    /// The heaps handed out last (a ring): where a thread that ended without its exit
    /// handler is looked for first when the pool is empty.
    recent: [*mut Heap; RECENT],
    recent_next: usize,
    /// Unused room in the current chunk of heap memory.
    chunk: *mut u8,
    chunk_left: usize,
}
// SAFETY: the raw pointers are only used under the lock that owns the struct.
unsafe impl Send for Meta {}

pub(super) static META: Lock<Meta> = Lock::new(Meta {
    pool: ptr::null_mut(),
    recent: [ptr::null_mut(); RECENT],
    recent_next: 0,
    chunk: ptr::null_mut(),
    chunk_left: 0,
});
/// Heaps that a thread owns (`kernel_tid` set).
static OWNED_HEAPS: AtomicUsize = AtomicUsize::new(0);
/// Heaps in `Meta::recent`.
const RECENT: usize = 16;
static ALL_HEAPS: AtomicPtr<Heap> = AtomicPtr::new(ptr::null_mut());

pub(super) struct Backup(pub(super) *mut Heap);
// SAFETY: the heap is only touched under the lock that owns the struct.
unsafe impl Send for Backup {}
pub(super) static BACKUP: Lock<Backup> = Lock::new(Backup(ptr::null_mut()));
/// The heap of sampled small blocks (see `SAMPLE_TID`), used under its lock.
pub(super) static SAMPLES: Lock<Backup> = Lock::new(Backup(ptr::null_mut()));

/// Whether `tid` is that of a heap used under a lock by any thread (backup, samples).
pub(super) fn is_locked_heap(tid: usize) -> bool {
    tid == BACKUP_TID || tid == SAMPLE_TID
}

/// 0 before initialisation starts, `INIT_DONE` once it is published, and while it runs the
/// pid of the process it runs in: one word, so a fork child copies it whole.
static INIT: AtomicI32 = AtomicI32::new(0);
const INIT_DONE: i32 = -1;
static KEY: AtomicU32 = AtomicU32::new(0);

// ---- initialisation and heap life cycle ----

/// One-time set-up: options, the thread-exit key, fork handlers. Nothing here allocates
/// through malloc before `INIT_DONE` is published; what follows it may.
///
/// It never waits, as a call inside initialisation would wait for itself: a signal handler
/// that interrupted it, or a libc function it calls that allocates (`pthread_create`'s
/// calloc, say). Under way in this process, it returns at once: the caller goes on with the
/// options read so far (defaults for the rest). The initialising thread's heap gets its exit
/// key when initialisation publishes; a heap another thread made meanwhile has none, and is
/// retired by `Meta::reap_if_gone` when its thread ends. Under way in a parent, in a fork
/// child: the child takes it over, as its initialiser either does not exist here (another
/// thread of the parent) or is this thread's code, interrupted by the signal handler that
/// forked. (A descendant that copied this state, and was given the initialising process's
/// pid after that process ended, would never initialise: it runs on the defaults.)
#[inline]
pub fn ensure_init() {
    if INIT.load(Ordering::Acquire) != INIT_DONE {
        init_slow();
    }
}

/// Whether initialisation is done.
pub fn is_initialised() -> bool {
    INIT.load(Ordering::Acquire) == INIT_DONE
}

/// What a caller that finds initialisation not done does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitTurn {
    /// Initialise: the claim is ours; `taken_over` if it was a parent process's.
    Run { taken_over: bool },
    /// Return: done, or under way in this process.
    Return,
}

/// Claims initialisation for process `pid`, or says to return (see `ensure_init`).
fn claim_init(init: &AtomicI32, pid: i32) -> InitTurn {
    let mut expected = 0;
    loop {
        match init.compare_exchange(expected, pid, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return InitTurn::Run { taken_over: expected != 0 },
            Err(owner) if owner == INIT_DONE || owner == pid => return InitTurn::Return,
            Err(owner) => expected = owner, // 0, or a parent's pid: try to take it
        }
    }
}

#[cold]
fn init_slow() {
    let pid = os::getpid();
    let InitTurn::Run { taken_over } = claim_init(&INIT, pid) else { return };
    if taken_over {
        take_over_in_child();
    }
    crate::options::load_from_env();
    crate::prof::init();
    if os::sysconf_page_size() != os::PAGE_SIZE {
        crate::eprint_noalloc!(
            "tidemalloc: fatal: built for {}-byte pages, system has {}\n",
            os::PAGE_SIZE,
            os::sysconf_page_size()
        );
        os::abort();
    }
    // From the check to the fork handlers' registration, no signal handler may fork: its
    // child would take over and register them too, or have none.
    let mask = os::block_signals();
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor has the required signature.
    // Keys below 32 never allocate in glibc, and this is among the first keys made.
    unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) };
    if INIT.load(Ordering::Relaxed) != pid {
        // A signal handler that interrupted us forked, and its child took over (this is
        // that child, and the handler returned): the key and the fork handlers are there.
        // SAFETY: the key is ours, just created, and holds no value.
        unsafe { libc::pthread_key_delete(key) };
        os::set_signal_mask(&mask);
        return;
    }
    KEY.store(key, Ordering::Relaxed);
    INIT.store(INIT_DONE, Ordering::Release);
    // A call inside initialisation may have made this thread's heap without a key.
    if let Some(heap) = current() {
        set_exit_key(heap);
    }
    // SAFETY: the handlers have the required signature; glibc may allocate here, which works
    // now that initialisation is published.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    os::set_signal_mask(&mask);
    crate::after_init();
}

/// Registers `heap`, this thread's heap, under `KEY`, so `on_thread_exit` runs for it.
fn set_exit_key(heap: &Heap) {
    debug_assert!(is_initialised());
    // SAFETY: initialisation is published, so the key exists; glibc stores values of low
    // keys without allocating (and if it did, the TLS slot is already set, so the call
    // would succeed).
    unsafe { libc::pthread_setspecific(KEY.load(Ordering::Relaxed), (heap as *const Heap).cast()) };
}

/// The calling thread's heap, creating it on first use; None if the thread has exited (its
/// allocations then use the backup heap).
#[cold]
pub fn current_or_create() -> Option<&'static Heap> {
    let h = thread_heap();
    if h == DEAD {
        return None;
    }
    if let Some(heap) = current() {
        return Some(heap);
    }
    ensure_init();
    // Initialisation may have allocated (the dynamic loader's calls in `after_init`), and
    // with it made this thread's heap.
    if let Some(heap) = current() {
        return Some(heap);
    }
    let heap = META.lock().new_heap()?;
    heap.thread_id.set(os::thread_id());
    heap.set_owner(os::kernel_tid(), os::getpid());
    // Its thread may end without the exit handler (see `Meta::reap_if_gone`): with another
    // thread's heap alive, a scan will look (a lone thread needs none, and its slow paths
    // skip the clock while no timer is pending).
    if OWNED_HEAPS.fetch_add(1, Ordering::Relaxed) > 0 {
        schedule_scan();
    }
    heap.restart_sample_clock();
    set_thread_heap(heap as *const Heap as *mut Heap);
    // Not yet initialised: this call is inside the initialisation (of this thread, which
    // sets the key when it publishes, or rarely of another: see `ensure_init`).
    if is_initialised() {
        set_exit_key(heap);
    }
    Some(heap)
}

/// A small block for a signal handler that interrupted its thread's own locked heap work
/// (see `Heap::lock_own`): from the backup heap's pages and segments, as for a thread that
/// has exited. The interrupted code may hold any of the global locks (the arena's, the
/// heaps' list, the abandoned list, the backup heap's), so none is waited for: null when the
/// backup heap is taken, does not exist yet, or has no room (malloc in a signal handler is
/// not async-signal-safe; this fails rather than hangs).
#[cold]
pub(super) fn alloc_reentrant(class: usize, zero: bool) -> *mut u8 {
    let Some(b) = BACKUP.try_lock() else { return ptr::null_mut() };
    if b.0.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: the heap is only used under this lock, which we hold.
    unsafe { (*b.0).alloc_in_place(class, zero) }
}

/// The cold part of `with_heap` (in `mod.rs`).
#[cold]
pub(super) fn with_heap_slow<R>(f: impl FnOnce(&Heap) -> R) -> Option<R> {
    if let Some(h) = current_or_create() {
        return Some(f(h));
    }
    with_locked_heap(&BACKUP, BACKUP_TID, f)
}

/// Runs `f` on the sample heap (under its lock): where the heap profiler's sampled small
/// blocks come from. None if it could not be created, or if the lock stays taken: its
/// holder may be the code this thread's signal handler interrupted (a trim of the locked
/// heaps), which waiting would deadlock; the caller then serves the request unsampled.
pub fn with_sample_heap<R>(f: impl FnOnce(&Heap) -> R) -> Option<R> {
    for _ in 0..SAMPLE_LOCK_TRIES {
        if let Some(guard) = SAMPLES.try_lock() {
            return locked_heap(guard, SAMPLE_TID, f);
        }
        os::yield_now();
    }
    None
}

/// Attempts at the sample heap's lock before a sample is given up.
const SAMPLE_LOCK_TRIES: usize = 200;

fn with_locked_heap<R>(lock: &Lock<Backup>, tid: usize, f: impl FnOnce(&Heap) -> R) -> Option<R> {
    locked_heap(lock.lock(), tid, f)
}

fn locked_heap<R>(mut b: spin::mutex::SpinMutexGuard<'_, Backup>, tid: usize, f: impl FnOnce(&Heap) -> R) -> Option<R> {
    if b.0.is_null() {
        let h = META.lock().new_heap()?;
        h.thread_id.set(tid);
        b.0 = h as *const Heap as *mut Heap;
    }
    // Every free into a locked heap's pages is a cross-thread free: make sure the timed
    // pass collects them (cheap when one is scheduled already).
    schedule_abandoned_purge();
    // SAFETY: the heap is only used under this lock.
    Some(f(unsafe { &*b.0 }))
}

impl Meta {
    /// A clean heap from the pool or from a new chunk of memory from `os`.
    fn new_heap(&mut self) -> Option<&'static Heap> {
        if self.pool.is_null() {
            self.reap_recent();
        }
        let h = if !self.pool.is_null() {
            let h = self.pool;
            // SAFETY: pooled heaps are valid, unused heaps.
            self.pool = unsafe { (*h).next_free.get() };
            h
        } else {
            let size = size_of::<HeapBox>().next_multiple_of(64);
            if self.chunk_left < size {
                let len = 16 * size.next_multiple_of(os::PAGE_SIZE);
                self.chunk = os::mmap_anon(len);
                if self.chunk.is_null() {
                    self.chunk_left = 0;
                    return None;
                }
                self.chunk_left = len;
                crate::stats::gauge_add(crate::stats::Gauge::MetaHeaps, len as isize);
            }
            let b = self.chunk.cast::<HeapBox>();
            // SAFETY: `size` bytes remain in the chunk.
            self.chunk = unsafe { self.chunk.add(size) };
            self.chunk_left -= size;
            // SAFETY: the box is ours until published; zeroed memory is a valid unlocked lock.
            let h = unsafe {
                ptr::addr_of_mut!((*b).segs).write(Lock::new(HeapSegs {
                    queues: [const { SegQueue::new() }; PAGED_KINDS],
                    empty: [0; PAGED_KINDS],
                    dirty_pages: 0,
                    release_failed_at: 0,
                    seen_slow_paths: 0,
                    idle_scans: 0,
                }));
                (*b).heap.segs = ptr::addr_of!((*b).segs);
                ptr::addr_of_mut!((*b).heap)
            };
            // Publish it for counter merging and trimming.
            let mut head = ALL_HEAPS.load(Ordering::Relaxed);
            loop {
                // SAFETY: `h` is ours until published.
                unsafe { (*h).next_all = AtomicPtr::new(head) };
                match ALL_HEAPS.compare_exchange(head, h, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(x) => head = x,
                }
            }
            h
        };
        // SAFETY: `h` is an unused heap that only we use.
        let heap = unsafe { &*h };
        heap.clear_bins();
        // A handler that left its thread's locked work or purge by a long jump left the
        // flags set: a reused heap starts without them.
        heap.clear_owner_locked();
        heap.clear_borrowed();
        heap.pages_purge_at.set(0);
        heap.slow_paths.store(0, Ordering::Relaxed);
        self.recent[self.recent_next % RECENT] = h;
        self.recent_next += 1;
        heap.in_use.set_sample_distance(stats::NO_SAMPLE);
        heap.rng.set(h as u64 ^ os::now_ms().rotate_left(32));
        Some(heap)
    }
}

/// pthread key destructor: the thread is exiting.
extern "C" fn on_thread_exit(arg: *mut libc::c_void) {
    let heap = arg.cast::<Heap>();
    set_thread_heap(DEAD);
    let mut m = META.lock();
    // SAFETY: the key's value is this thread's heap; nothing else uses it any more.
    unsafe { m.retire(&*heap) };
}

impl Meta {
    /// Abandons the heap of a thread that is gone (or going) and pools it.
    ///
    /// # Safety
    /// No thread uses `heap` any more, nor will.
    unsafe fn retire(&mut self, heap: &Heap) {
        heap.set_owner(0, 0);
        heap.abandon();
        heap.next_free.set(self.pool);
        self.pool = heap as *const Heap as *mut Heap;
    }

    /// Retires `h` if its thread ended without its exit handler: its first allocation came
    /// in the last round of thread-specific destructors, after ours had been called (or
    /// passed over), so nothing else would ever give its memory back. True if it did.
    pub(super) fn reap_if_gone(&mut self, h: *mut Heap) -> bool {
        // SAFETY: heaps are never freed.
        let heap = unsafe { &*h };
        let (tid, pid) = (heap.kernel_tid.load(Ordering::Relaxed), heap.pid.load(Ordering::Relaxed));
        // A heap of another process (a child forked without the fork handlers, where the
        // parent's thread ids mean nothing) is left alone.
        if tid == 0 || pid != os::getpid() || !os::thread_gone(pid, tid) {
            return false;
        }
        // SAFETY: its thread is gone (the kernel knows no such thread), and the meta lock
        // we hold keeps it from being pooled or handed out meanwhile.
        unsafe { self.retire(heap) };
        true
    }

    /// With the pool empty: retires the recently handed-out heaps whose threads are gone
    /// (bounds the memory of threads that keep ending without their exit handler).
    fn reap_recent(&mut self) {
        let me = current().map_or(ptr::null_mut(), |h| h as *const Heap as *mut Heap);
        for i in 0..RECENT {
            let h = self.recent[i];
            if !h.is_null() && h != me && self.reap_if_gone(h) {
                self.recent[i] = ptr::null_mut();
            }
        }
    }
}

impl Heap {
    /// Records the thread that owns the heap (0, 0 for none).
    pub(super) fn set_owner(&self, kernel_tid: i32, pid: i32) {
        if kernel_tid == 0 && self.kernel_tid.load(Ordering::Relaxed) != 0 {
            OWNED_HEAPS.fetch_sub(1, Ordering::Relaxed);
        }
        self.kernel_tid.store(kernel_tid, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Forgets every page queue (their pages are accounted for elsewhere).
    pub(super) fn clear_bins(&self) {
        for (class, q) in self.bins.iter().enumerate() {
            q.clear();
            self.queue_changed(class);
        }
    }

    /// Thread exit: collects every page, frees what is empty, abandons the rest.
    fn abandon(&self) {
        self.in_use.flush();
        self.release_empty_pages();
        self.clear_bins();
        // Not `lock_own`: this must happen, and no handler of this thread reaches the heap
        // any more (its TLS word is DEAD, so its allocations use the backup heap).
        self.segs().lock().abandon_all();
    }
}

/// Calls `f` on every heap ever created (live, pooled or backup). Other threads may own
/// them: `f` touches only what it may (the segment lock, or heaps of threads that are gone).
pub(super) fn for_each_heap(mut f: impl FnMut(*mut Heap)) {
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: heaps are never freed and `next_all` never changes once published.
        let next = unsafe { (*h).next_all.load(Ordering::Acquire) };
        f(h);
        h = next;
    }
}

/// The segment lock of any heap (it never changes once the heap is created).
pub(super) fn segs_of(h: *mut Heap) -> &'static Lock<HeapSegs> {
    // SAFETY: heaps are never freed; `segs` is set at creation to a lock that lives forever.
    unsafe { &*(*h).segs }
}

/// Sum of every heap's unflushed in-use bytes.
pub fn pending_in_use() -> isize {
    let mut sum = 0;
    // SAFETY: heaps are never freed, and `pending` reads an atomic.
    for_each_heap(|h| sum += unsafe { (*h).in_use.pending() });
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claims_others_never_wait() {
        let init = AtomicI32::new(0);
        assert_eq!(claim_init(&init, 10), InitTurn::Run { taken_over: false });
        assert_eq!(init.load(Ordering::Relaxed), 10);
        // Under way in this process (a re-entry on the initialising thread): no wait.
        assert_eq!(claim_init(&init, 10), InitTurn::Return);
        init.store(INIT_DONE, Ordering::Relaxed);
        assert_eq!(claim_init(&init, 10), InitTurn::Return);
        assert_eq!(claim_init(&init, 11), InitTurn::Return);
    }

    #[test]
    fn a_fork_child_takes_over_a_parents_initialisation() {
        let init = AtomicI32::new(10);
        assert_eq!(claim_init(&init, 11), InitTurn::Run { taken_over: true });
        assert_eq!(init.load(Ordering::Relaxed), 11);
        // Another thread of that child, and the grandchild of a child that took over.
        assert_eq!(claim_init(&init, 11), InitTurn::Return);
        assert_eq!(claim_init(&init, 12), InitTurn::Run { taken_over: true });
    }
}
