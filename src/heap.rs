//! Layer `heap`: one heap per thread, holding a queue of pages per size class and the
//! segments those pages come from.
//!
//! - Fast paths (in `lib.rs`): malloc pops the first page's `free` list; a same-thread free
//!   pushes on the page's `local_free`. Neither takes a lock or does an atomic
//!   read-modify-write.
//! - Slow path ([`Heap::alloc_slow`]): looks in a few pages of the queue for freed blocks
//!   (own and cross-thread) or room to carve (full pages rotate to the back), else takes a
//!   free page: from the heap's own segments, from a segment abandoned by an exited thread,
//!   or from a new segment from the arena.
//! - A page that empties goes back to its segment (unless it is its class's only page), where
//!   any size class of the same kind can take it; its memory stays resident for the purge
//!   delay, then is released. A segment that empties goes back to the arena, but for one kept
//!   per kind against churn.
//! - The segment side of a heap (`HeapSegs`) sits behind a lock that only slow paths take, so
//!   `trim` on any thread (and `fork`) can reach every heap's free memory.
//! - Thread exit (a pthread key destructor): pages are collected, segments that still hold
//!   live blocks are abandoned to a global list and adopted by the next heap that needs a
//!   page, so thread churn strands no memory. Allocations the thread makes after that (from
//!   other destructors) use a lock-protected backup heap.
//!
//! Heaps live in memory from `os` (never the Rust allocator) and are recycled, never freed.

use crate::arena;
use crate::list::{List, Node};
use crate::lock::Lock;
use crate::options::{self, Opt};
use crate::os;
use crate::page::{Block, Page};
use crate::segment::{self, Kind, PAGED_KINDS, SEGMENT_SHIFT, Segment};
use crate::size_class::{NCLASSES, class_size};
use crate::stats::{self, LocalInUse};
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Pages of a size-class queue the slow path examines before taking a fresh page.
const SEARCH_LIMIT: usize = 8;
/// Segments with free pages looked at for a dirty one before a clean page is taken.
const DIRTY_SEARCH: usize = 8;
/// Abandoned segments adopted per fresh-page request, at most.
const RECLAIM_LIMIT: usize = 4;
/// Thread id of the backup heap: no real thread has it, so frees into its pages always take
/// the cross-thread path.
const BACKUP_TID: usize = 1;
/// Thread id of the sample heap (`segment::HUGE_FREED` is 2): every block in its segments is
/// a heap-profiler sample, and frees into it take the cross-thread path, where `free` looks
/// for samples.
pub const SAMPLE_TID: usize = 3;
/// Empty segments a heap keeps per kind (against alloc/free churn at segment scale).
const KEEP_EMPTY: usize = 1;

/// Pages of one size class, the one to allocate from first.
pub type PageQueue = List<Page>;

/// Segments of one kind; those with free pages come first.
type SegQueue = List<Segment>;

/// A thread's heap: the owner's private state, touched only by the owning thread (other
/// threads read `in_use`, `segs` and `next_all`, so the heap is only reached through shared
/// references and the owner's fields are `Cell`s).
#[repr(C)]
pub struct Heap {
    /// Queues of pages, one per size class (hot: first in the struct).
    pub bins: [PageQueue; NCLASSES],
    /// The owning thread's `os::thread_id`.
    pub thread_id: Cell<usize>,
    /// Bytes handed out and given back, and the profiler's sampling clock (its sample point
    /// is never reached with profiling off, nor in the backup heap).
    pub in_use: LocalInUse,
    /// The profiler's random state (sample spacing).
    rng: Cell<u64>,
    /// The segments this heap owns; a separate object so `trim` can reach it from any thread.
    segs: *const Lock<HeapSegs>,
    /// When the free pages of partly used segments are to be released (ms), 0 when none is
    /// pending.
    pages_purge_at: Cell<u64>,
    /// Next heap ever created (for merging counters and trimming); never changes once set.
    next_all: AtomicPtr<Heap>,
    /// Next heap in the pool of recycled heaps.
    next_free: Cell<*mut Heap>,
    /// Slow paths the owner has taken (only the owner writes it): a collector that finds it
    /// unchanged since its last look knows the heap took none in between.
    slow_paths: AtomicU32,
    /// The owner's kernel thread id, 0 while no thread owns the heap (pooled, locked heaps),
    /// and its process id: how a collector tells a thread that ended without its exit handler
    /// (see `reap_if_gone`).
    kernel_tid: AtomicI32,
    pid: AtomicI32,
}

/// The segments a heap owns. The owner changes them on slow paths and `trim` releases their
/// free memory from any thread, both under the lock around this struct.
pub struct HeapSegs {
    /// Segments of each paged kind.
    queues: [SegQueue; PAGED_KINDS],
    /// Empty segments kept, per kind.
    empty: [usize; PAGED_KINDS],
    /// Bytes of free pages still resident in segments that hold live blocks (approximate:
    /// it only decides when to release them).
    dirty_pages: usize,
    /// When a release of free pages last failed (ms; 0 for never): beyond the dirty cap the
    /// next release waits a purge delay after it, so locked memory is not retried on every
    /// free.
    release_failed_at: u64,
    /// `Heap::slow_paths` when a collector last looked (see `scan_heaps`).
    seen_slow_paths: u32,
}

// SAFETY: the segments are only touched under the lock that owns the struct.
unsafe impl Send for HeapSegs {}

/// What one allocation of heap memory holds.
#[repr(C)]
struct HeapBox {
    heap: Heap,
    segs: Lock<HeapSegs>,
}

/// The heap that owns `seg` (null if none).
#[inline(always)]
pub fn owner_of(seg: &Segment) -> *mut Heap {
    seg.heap.get().cast()
}

/// This thread's heap (the word in `tls`): null before its first allocation, `DEAD` after
/// its exit handler.
#[inline(always)]
fn thread_heap() -> *mut Heap {
    crate::tls::get().cast()
}

fn set_thread_heap(h: *mut Heap) {
    crate::tls::set(h.cast());
}

const DEAD: *mut Heap = ptr::dangling_mut::<Heap>();

/// The calling thread's heap, if it has a live one.
#[inline(always)]
pub fn current() -> Option<&'static Heap> {
    let h = thread_heap();
    // SAFETY: a TLS value above DEAD is this thread's heap, which lives forever.
    if (h as usize) > DEAD as usize { Some(unsafe { &*h }) } else { None }
}

// ---- global state ----

struct Meta {
    /// Recycled heaps.
    pool: *mut Heap,
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

static META: Lock<Meta> = Lock::new(Meta {
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

struct Abandoned(SegQueue);
// SAFETY: the segments are only touched under the lock that owns the struct.
unsafe impl Send for Abandoned {}
static ABANDONED: Lock<Abandoned> = Lock::new(Abandoned(SegQueue::new()));
/// Number of abandoned segments (read without the lock to skip it when zero).
static ABANDONED_COUNT: AtomicUsize = AtomicUsize::new(0);

struct Backup(*mut Heap);
// SAFETY: the heap is only touched under the lock that owns the struct.
unsafe impl Send for Backup {}
static BACKUP: Lock<Backup> = Lock::new(Backup(ptr::null_mut()));
/// The heap of sampled small blocks (see `SAMPLE_TID`), used under its lock.
static SAMPLES: Lock<Backup> = Lock::new(Backup(ptr::null_mut()));

/// Whether `tid` is that of a heap used under a lock by any thread (backup, samples).
fn is_locked_heap(tid: usize) -> bool {
    tid == BACKUP_TID || tid == SAMPLE_TID
}

static INIT: AtomicU8 = AtomicU8::new(0);
const INIT_DONE: u8 = 2;
static KEY: AtomicU32 = AtomicU32::new(0);

// ---- initialisation and heap life cycle ----

/// One-time set-up: options, the thread-exit key, fork handlers. Nothing here allocates
/// through malloc before `INIT_DONE` is published; what follows it may.
#[inline]
pub fn ensure_init() {
    if INIT.load(Ordering::Acquire) != INIT_DONE {
        init_slow();
    }
}

#[cold]
fn init_slow() {
    if INIT.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
        while INIT.load(Ordering::Acquire) != INIT_DONE {
            os::yield_now();
        }
        return;
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
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor has the required signature.
    // Keys below 32 never allocate in glibc, and this is among the first keys made.
    unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) };
    KEY.store(key, Ordering::Relaxed);
    INIT.store(INIT_DONE, Ordering::Release);
    // SAFETY: the handlers have the required signature; glibc may allocate here, which works
    // now that initialisation is published.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    crate::after_init();
}

/// The calling thread's heap, creating it on first use; None if the thread has exited (its
/// allocations then use the backup heap).
#[cold]
pub fn current_or_create() -> Option<&'static Heap> {
    let h = thread_heap();
    if h == DEAD {
        return None;
    }
    if !h.is_null() {
        // SAFETY: see `current`.
        return Some(unsafe { &*h });
    }
    ensure_init();
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
    // SAFETY: the key was created in ensure_init; glibc stores values of low keys without
    // allocating (and if it did, the TLS slot is already set, so the call would succeed).
    unsafe { libc::pthread_setspecific(KEY.load(Ordering::Relaxed), (heap as *const Heap).cast()) };
    Some(heap)
}

/// Runs `f` on the calling thread's heap, or on the backup heap (under its lock) for a thread
/// that has exited or could not get a heap. None if no heap could be had at all.
#[inline]
pub fn with_heap<R>(f: impl FnOnce(&Heap) -> R) -> Option<R> {
    if let Some(h) = current() {
        return Some(f(h));
    }
    with_heap_slow(f)
}

#[cold]
fn with_heap_slow<R>(f: impl FnOnce(&Heap) -> R) -> Option<R> {
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
    fn reap_if_gone(&mut self, h: *mut Heap) -> bool {
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

thread_local! {
    /// While this thread holds the fork locks (from the pre-fork handler of a multi-threaded
    /// fork to its parent or child handler): the signal mask to restore. None otherwise. No
    /// other level of fork can start on this thread while it is Some (signals are blocked),
    /// so one slot suffices.
    static FORK_HELD: Cell<Option<libc::sigset_t>> = const { Cell::new(None) };
}

extern "C" fn fork_prepare() {
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
    FORK_HELD.set(Some(mask));
}

/// Calls `f` on every heap ever created (live, pooled or backup). Other threads may own
/// them: `f` touches only what it may (the segment lock, or heaps of threads that are gone).
fn for_each_heap(mut f: impl FnMut(*mut Heap)) {
    let mut h = ALL_HEAPS.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: heaps are never freed and `next_all` never changes once published.
        let next = unsafe { (*h).next_all.load(Ordering::Acquire) };
        f(h);
        h = next;
    }
}

/// The segment lock of any heap (it never changes once the heap is created).
fn segs_of(h: *mut Heap) -> &'static Lock<HeapSegs> {
    // SAFETY: heaps are never freed; `segs` is set at creation to a lock that lives forever.
    unsafe { &*(*h).segs }
}

extern "C" fn fork_parent() {
    // A single-threaded fork took nothing: whatever is held belongs to code this thread's
    // signal handler interrupted, which goes on when the handler returns.
    if let Some(mask) = FORK_HELD.take() {
        // SAFETY: fork_prepare took all of them on this thread (FORK_HELD says so).
        unsafe { release_fork_locks() };
        os::set_signal_mask(&mask);
    }
}

extern "C" fn fork_child() {
    let held = FORK_HELD.take();
    // A single-threaded fork from a signal handler that interrupted the arena: its state
    // may be half updated (see `arena::forget_free_spans`).
    let arena_interrupted = held.is_none() && arena::is_busy();
    // SAFETY: multi-threaded: fork_prepare took every lock on this thread, which is the
    // child's only thread. Single-threaded: a held lock was held by code of this thread that
    // a signal handler interrupted; in the child that code does not run again unless the
    // handler returns (then the child has the heap in whatever state the interrupted code
    // left it, as with glibc), and releasing a free lock is a no-op.
    unsafe { release_fork_locks() };
    if let Some(h) = current() {
        h.set_owner(os::kernel_tid(), os::getpid()); // the child's ids
    }
    if let Some(mask) = held {
        abandon_other_heaps();
        crate::prof::after_fork_child();
        os::set_signal_mask(&mask);
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

// ---- allocation ----

impl Heap {
    /// The segment side of this heap.
    fn segs(&self) -> &'static Lock<HeapSegs> {
        // SAFETY: set at creation to the lock beside the heap, which lives forever.
        unsafe { &*self.segs }
    }

    /// Records the thread that owns the heap (0, 0 for none).
    fn set_owner(&self, kernel_tid: i32, pid: i32) {
        if kernel_tid == 0 && self.kernel_tid.load(Ordering::Relaxed) != 0 {
            OWNED_HEAPS.fetch_sub(1, Ordering::Relaxed);
        }
        self.kernel_tid.store(kernel_tid, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Forgets every page queue (their pages are accounted for elsewhere).
    fn clear_bins(&self) {
        for q in &self.bins {
            q.clear();
        }
    }

    /// Slow path of small allocation: finds a page of `class` with a free block and pops it.
    /// With `zero` the block reads as zeros. Null when out of memory.
    #[cold]
    #[inline(never)]
    pub fn alloc_slow(&self, class: usize, zero: bool, sampled: impl FnOnce(&Page, *mut Block) -> *mut u8) -> *mut u8 {
        self.slow_paths.store(self.slow_paths.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        self.in_use.flush();
        purge_if_due(Some(self));
        // Under the segment lock: a collector of remote frees (`scan_heaps`) relies on `free`
        // becoming non-empty only there.
        let page = self.find_page(&mut self.segs().lock(), class);
        let Some(page) = page else { return ptr::null_mut() };
        // SAFETY: `find_page` returns a page of ours whose `free` has a block.
        unsafe { self.pop_from(page, page.free_head(), zero, sampled) }
    }

    /// Releases the free pages of our partly used segments once they have been free for the
    /// purge delay, so RSS follows the live set.
    pub fn purge_pages_if_due(&self) {
        let at = self.pages_purge_at.get();
        if at != 0 && os::now_ms() >= at {
            self.pages_purge_at.set(0);
            let mut segs = self.segs().lock();
            // Free pages not yet free for a whole delay, and pages whose release failed (the
            // memory is locked), are tried again after another delay.
            if !segs.release_free_pages(true) || segs.dirty_pages > 0 {
                drop(segs);
                self.schedule_page_purge();
            }
        }
    }

    /// Makes sure the free pages of our segments are released within the purge delay.
    fn schedule_page_purge(&self) {
        if self.pages_purge_at.get() == 0 {
            self.pages_purge_at.set(os::now_ms() + options::get(Opt::PurgeDelay) as u64);
        }
    }

    /// Moves the sample point out of reach while a sample is being taken.
    pub fn pause_sampling(&self) {
        self.in_use.set_sample_distance(stats::NO_SAMPLE);
    }

    /// Draws the next sample point (after a sample, or when the heap starts).
    pub fn restart_sample_clock(&self) {
        if crate::prof::enabled() && !is_locked_heap(self.thread_id.get()) {
            self.in_use.set_sample_distance(crate::prof::interval(&self.rng));
        }
    }

    /// Charges `n` bytes allocated outside the heap's pages (large blocks, huge spans) to the
    /// sampling clock. True if that reached the sample point.
    pub fn charge_cold(&self, n: usize) -> bool {
        self.in_use.charge(n)
    }

    /// Pops `b`, the first block of `page`'s `free`, and zeroes it if asked. If the block
    /// reaches the sampling clock's next point, returns what `sampled` makes of the block
    /// instead (not zeroed).
    ///
    /// # Safety
    /// `page` is ours and `b` is its `free_head()`, not null.
    #[inline(always)]
    pub unsafe fn pop_from(
        &self,
        page: &Page,
        b: *mut Block,
        zero: bool,
        sampled: impl FnOnce(&Page, *mut Block) -> *mut u8,
    ) -> *mut u8 {
        debug_assert!(!b.is_null());
        // Read before the pop: the flag speaks of the blocks on `free`.
        let is_zero = zero && page.free_is_zero();
        // SAFETY: per the contract.
        unsafe { page.pop_head(b) };
        if self.in_use.alloc(page.block_size()) {
            return sampled(page, b);
        }
        if zero {
            // SAFETY: `b` is a block of `block_size` bytes we just took; `pop` cleared its
            // second word.
            unsafe {
                if is_zero {
                    (*b).next = ptr::null_mut();
                } else {
                    ptr::write_bytes(b.cast::<u8>(), 0, page.block_size());
                }
            }
        }
        b.cast()
    }

    /// A page of `class` with a free block, moved to the front of its queue.
    fn find_page(&self, segs: &mut HeapSegs, class: usize) -> Option<&'static Page> {
        let queue = &self.bins[class];
        let mut p = queue.first();
        for _ in 0..SEARCH_LIMIT {
            if p.is_null() {
                break;
            }
            // SAFETY: pages in our queues are live descriptors of segments we own.
            let page = unsafe { &*p };
            let next = page.next.get();
            if page.collect() || page.extend() {
                queue.move_front(page);
                return Some(page);
            }
            queue.move_back(page);
            p = next;
        }
        let page = self.fresh_page(segs, class)?;
        page.extend();
        Some(page)
    }

    /// Takes a free page for `class` and puts it at the front of the class queue.
    fn fresh_page(&self, segs: &mut HeapSegs, class: usize) -> Option<&'static Page> {
        let bs = class_size(class);
        let kind = Kind::for_block(bs);
        let seg = match segs.with_free_page(kind) {
            Some(seg) => seg,
            // Locked heaps adopt nothing: abandoned segments are for live threads, which
            // collect and give back their memory on their own slow paths.
            None => match if is_locked_heap(self.thread_id.get()) { None } else { self.reclaim(segs, kind) } {
                Some(seg) => seg,
                None => segs.new_segment(kind, self)?,
            },
        };
        let (i, fresh) = segs.take_page(seg)?;
        let (area, len) = seg.page_area(i);
        let page = &seg.pages[i];
        page.init(class as u8, bs, area, len / bs, fresh);
        self.bins[class].push_front(page);
        Some(page)
    }

    /// Adopts segments abandoned by exited threads (a few at most) into `segs`, queueing
    /// their pages in our bins; returns one of `kind` with a free page if it found one.
    fn reclaim(&self, segs: &mut HeapSegs, kind: Kind) -> Option<&'static Segment> {
        for _ in 0..RECLAIM_LIMIT {
            if ABANDONED_COUNT.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let seg = pop_abandoned()?;
            // Collect what other threads freed while the segment had no owner.
            let live = collect_abandoned(seg);
            if seg.used_pages.get() == 0 {
                free_segment(seg);
                continue;
            }
            segs.adopt(seg, self);
            let mut bits = live;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let page = &seg.pages[i];
                self.bins[page.class()].push_front(page);
            }
            if seg.kind == kind && seg.free_mask.get() != 0 {
                return Some(seg);
            }
        }
        None
    }

    // ---- freeing (owner side) ----

    /// The owner's free, after the fast path checked that `b` is a carved block of `page`, a
    /// page of one of our segments. False, changing nothing, if `b` is free already.
    ///
    /// # Safety
    /// As stated; the caller is the owner.
    #[inline(always)]
    pub unsafe fn free_local(&self, page: &Page, b: *mut Block) -> bool {
        // SAFETY: per the contract.
        if unsafe { !page.push_local(b) } {
            return false;
        }
        self.in_use.free(page.block_size());
        // An empty page that is its class's only page stays (checked here, not in a call:
        // a single block allocated and freed over and over must stay on the fast path).
        if page.used() == 0 && !PageQueue::is_alone(page) {
            self.page_emptied(page);
        }
        true
    }

    /// A page of ours has no block in use: give it back to its segment unless it is the
    /// only page of its size class (then it is kept against alloc/free churn).
    #[cold]
    #[inline(never)]
    fn page_emptied(&self, page: &Page) {
        let _errno = os::ErrnoGuard::new();
        self.give_back_page(&mut self.segs().lock(), page);
        self.schedule_page_purge();
    }

    /// Takes `page` (ours, empty) out of its queue and gives it back to its segment.
    fn give_back_page(&self, segs: &mut HeapSegs, page: &Page) {
        let area = page.area();
        self.bins[page.class()].unlink(page);
        // SAFETY: the page's segment is live and ours.
        let seg = unsafe { &*(segment::segment_base(area) as *const Segment) };
        segs.release_page(seg, seg.page_index(area));
    }

    /// Thread exit: collects every page, frees what is empty, abandons the rest.
    fn abandon(&self) {
        self.in_use.flush();
        self.release_empty_pages();
        self.clear_bins();
        self.segs().lock().abandon_all();
    }

    /// Gives every page of ours with no block in use back to its segment, even the only page
    /// of a size class (which the free path keeps). True if any was given back.
    fn release_empty_pages(&self) -> bool {
        let _errno = os::ErrnoGuard::new();
        let mut released = false;
        let mut segs = self.segs().lock();
        for queue in &self.bins {
            let mut p = queue.first();
            while !p.is_null() {
                // SAFETY: pages in our queues are live descriptors in segments we own.
                let page = unsafe { &*p };
                p = page.next.get();
                page.collect_thread_free();
                if page.used() == 0 {
                    self.give_back_page(&mut segs, page);
                    released = true;
                }
            }
        }
        drop(segs);
        if released {
            self.schedule_page_purge();
        }
        released
    }
}

impl HeapSegs {
    /// The first segment of `kind` if it has a free page (segments with free pages come
    /// first).
    ///
    /// Among the first few, one whose free page is still resident (dirty) is preferred: a
    /// released (clean) one would be faulted in again while the dirty one stays resident.
    fn with_free_page(&self, kind: Kind) -> Option<&'static Segment> {
        let first = self.queues[kind as usize].first();
        // SAFETY: segments in our queues are live and ours.
        let seg = (!first.is_null()).then(|| unsafe { &*first })?;
        if seg.free_mask.get() == 0 {
            return None;
        }
        let mut s = seg;
        for _ in 0..DIRTY_SEARCH {
            if s.free_mask.get() & !s.fresh_mask.get() != 0 {
                return Some(s);
            }
            let next = s.next.get();
            // SAFETY: as above.
            match (!next.is_null()).then(|| unsafe { &*next }) {
                Some(n) if n.free_mask.get() != 0 => s = n,
                _ => break,
            }
        }
        Some(seg)
    }

    /// A new, empty segment of `kind` from the arena, owned by `heap`.
    fn new_segment(&mut self, kind: Kind, heap: &Heap) -> Option<&'static Segment> {
        let m = arena::alloc_segments(1, false)?;
        // SAFETY: the arena gave us an aligned segment nobody else uses.
        let seg = unsafe { &*Segment::init(m.base, kind, 1, m.from_mmap, m.zeroed) };
        // No other segment of this kind has a free page, so none is empty: adopting keeps it.
        self.adopt(seg, heap);
        Some(seg)
    }

    /// Takes the lowest free page of `seg`: its index and whether its memory is still fresh.
    fn take_page(&mut self, seg: &Segment) -> Option<(usize, bool)> {
        if seg.used_pages.get() == 0 {
            self.empty[seg.kind as usize] -= 1;
        }
        let taken = seg.take_page()?;
        if !taken.1 {
            self.dirty_pages = self.dirty_pages.saturating_sub(seg.page_area(taken.0).1);
        }
        if seg.free_mask.get() == 0 {
            self.queues[seg.kind as usize].move_back(seg);
        }
        Some(taken)
    }

    /// Makes `seg` belong to `heap` and queues it (front if it has a free page).
    fn adopt(&mut self, seg: &Segment, heap: &Heap) {
        seg.heap.set((heap as *const Heap as *mut Heap).cast());
        seg.thread_id.store(heap.thread_id.get(), Ordering::Release);
        let q = &self.queues[seg.kind as usize];
        if seg.free_mask.get() != 0 {
            q.push_front(seg);
        } else {
            q.push_back(seg);
        }
        if seg.used_pages.get() == 0 {
            self.empty[seg.kind as usize] += 1;
            self.trim_empty(KEEP_EMPTY);
        }
    }

    /// Gives page `i` back to `seg`; a segment left empty is kept or freed.
    fn release_page(&mut self, seg: &Segment, i: usize) {
        let was_full = seg.free_mask.get() == 0;
        seg.release_page(i);
        if was_full {
            self.queues[seg.kind as usize].move_front(seg);
        }
        if seg.used_pages.get() == 0 {
            // Its free pages now count as an empty segment (kept or returned to the arena).
            self.dirty_pages = self.dirty_pages.saturating_sub(dirty_free_bytes(seg));
            self.empty[seg.kind as usize] += 1;
            self.trim_empty(KEEP_EMPTY);
        } else {
            // Free pages stay resident for reuse; the owner releases them after the purge
            // delay (see `Heap::purge_pages_if_due`), or at once beyond the dirty cap.
            self.dirty_pages += seg.page_area(i).1;
            if self.dirty_pages > options::get(Opt::DirtyMax) && self.may_retry_release() {
                self.release_free_pages(false);
            }
        }
    }

    /// Whether no release failed within the last purge delay.
    fn may_retry_release(&self) -> bool {
        self.release_failed_at == 0
            || os::now_ms() >= self.release_failed_at.saturating_add(options::get(Opt::PurgeDelay) as u64)
    }

    /// Releases the free pages of every segment (madvise); with `aged_only`, only those free
    /// since the last such call (so for a purge delay at least: see `Segment::aged_mask`).
    /// False if a release failed (the pages stay dirty, and are tried again later).
    fn release_free_pages(&mut self, aged_only: bool) -> bool {
        let mut all = true;
        let mut dirty_left = 0;
        for q in &self.queues {
            let mut s = q.first();
            while !s.is_null() {
                // SAFETY: segments in our queues are live and ours (we hold their lock).
                let seg = unsafe { &*s };
                s = seg.next.get();
                all &= release_free_pages(seg, aged_only).is_ok();
                dirty_left += dirty_free_bytes(seg);
            }
        }
        self.dirty_pages = dirty_left;
        self.release_failed_at = if all { 0 } else { os::now_ms().max(1) };
        all
    }

    /// Frees empty segments until at most `keep` per kind remain. True if any was freed.
    fn trim_empty(&mut self, keep: usize) -> bool {
        let mut freed = false;
        for k in 0..PAGED_KINDS {
            let mut s = self.queues[k].first();
            while !s.is_null() && self.empty[k] > keep {
                // SAFETY: segments in our queues are live and ours.
                let seg = unsafe { &*s };
                s = seg.next.get();
                if seg.used_pages.get() == 0 {
                    self.empty[k] -= 1;
                    self.queues[k].unlink(seg);
                    free_segment(seg);
                    freed = true;
                }
            }
        }
        freed
    }

    /// Not the owner: releases the pages of our segments whose blocks other threads freed,
    /// all of them (see `Page::reset_if_all_freed_remotely`). True if any was.
    fn reset_remote_freed_pages(&mut self) -> bool {
        let mut released = false;
        for q in &self.queues {
            let mut s = q.first();
            while !s.is_null() {
                // SAFETY: segments in our queues are live and ours (we hold their lock).
                let seg = unsafe { &*s };
                s = seg.next.get();
                let mut bits = seg.used_mask();
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let page = &seg.pages[i];
                    if page.has_thread_free() && page.reset_if_all_freed_remotely() != 0 {
                        let (area, len) = seg.page_area(i);
                        // SAFETY: the page has no block any more: none live, none on a list.
                        if unsafe { os::madvise_free(area, len) } {
                            page.set_mem_is_zero();
                        }
                        released = true;
                    }
                }
            }
        }
        released
    }

    /// Releases the memory of every free page (madvise) and every empty segment. True if
    /// anything was released.
    fn trim(&mut self) -> bool {
        let had_dirty = self.dirty_pages > 0;
        let freed = self.trim_empty(0);
        let all = self.release_free_pages(false);
        freed || (had_dirty && all)
    }

    /// Thread exit: frees empty segments and abandons the others.
    fn abandon_all(&mut self) {
        for k in 0..PAGED_KINDS {
            loop {
                let first = self.queues[k].first();
                if first.is_null() {
                    break;
                }
                // SAFETY: segments in our queues are live and ours.
                let seg = unsafe { &*first };
                self.queues[k].unlink(seg);
                if seg.used_pages.get() == 0 {
                    free_segment(seg);
                    continue;
                }
                seg.heap.set(ptr::null_mut());
                seg.thread_id.store(0, Ordering::Release);
                ABANDONED.lock().0.push_back(seg);
                ABANDONED_COUNT.fetch_add(1, Ordering::Relaxed);
                schedule_abandoned_purge();
            }
            self.empty[k] = 0;
        }
        self.dirty_pages = 0;
    }
}

/// Bytes of the free pages of `seg` that have been used since they were last zero.
fn dirty_free_bytes(seg: &Segment) -> usize {
    let mut bits = seg.free_mask.get() & !seg.fresh_mask.get();
    let mut bytes = 0;
    while bits != 0 {
        bytes += seg.page_area(bits.trailing_zeros() as usize).1;
        bits &= bits - 1;
    }
    bytes
}

/// Releases (madvise) the memory of the free pages of `seg` that have been used (with
/// `aged_only`, those that were so at the last timed release already; the others become
/// aged); those released count as fresh (zeroed) again. The caller must own `seg`'s page
/// bookkeeping (its heap's segment lock, or the abandoned list's lock). Ok(true) if any
/// page was released; Err if a release failed (those pages stay dirty: their memory is
/// neither zero nor fresh).
fn release_free_pages(seg: &Segment, aged_only: bool) -> Result<bool, ()> {
    let dirty = seg.free_mask.get() & !seg.fresh_mask.get();
    let mut bits = if aged_only { dirty & seg.aged_mask.get() } else { dirty };
    seg.aged_mask.set(dirty & !bits);
    let (mut released, mut failed) = (0u64, false);
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let (area, len) = seg.page_area(i);
        // SAFETY: a free page holds no live block; its memory is ours and unused.
        if unsafe { os::madvise_free(area, len) } {
            released |= 1 << i;
        } else {
            failed = true;
        }
    }
    seg.mark_released(released);
    if failed { Err(()) } else { Ok(released != 0) }
}

/// When the abandoned segments are next to be collected and their free memory released
/// (ms), 0 when none is pending.
static ABANDONED_PURGE_AT: AtomicU64 = AtomicU64::new(0);

/// Makes sure the abandoned segments are collected within the purge delay: blocks that live
/// threads free into the segments of an exited one go back to the OS like any other.
fn schedule_abandoned_purge() {
    let at = os::now_ms() + options::get(Opt::PurgeDelay) as u64;
    let _ = ABANDONED_PURGE_AT.compare_exchange(0, at.max(1), Ordering::Relaxed, Ordering::Relaxed);
}

/// Collects the abandoned segments and the backup heap once the purge delay has passed
/// (cheap when not due), from any thread's slow path: frees what is empty, releases free
/// pages, and schedules the next round while any remain.
fn purge_abandoned_if_due() {
    let at = ABANDONED_PURGE_AT.load(Ordering::Relaxed);
    if at == 0 || os::now_ms() < at {
        return;
    }
    if ABANDONED_PURGE_AT.compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return; // another thread took this round
    }
    let _errno = os::ErrnoGuard::new();
    trim_abandoned();
    trim_backup();
    if ABANDONED_COUNT.load(Ordering::Relaxed) != 0 || backup_holds_memory() {
        schedule_abandoned_purge();
    }
}

/// Collects the locked heaps' pages (every free into them is a cross-thread free, which
/// only a collection gives back) and releases their empty pages and segments. True if any
/// memory was returned. A heap that is busy is skipped.
fn trim_backup() -> bool {
    let mut released = false;
    for lock in [&BACKUP, &SAMPLES] {
        let Some(b) = lock.try_lock() else { continue };
        if b.0.is_null() {
            continue;
        }
        // SAFETY: a locked heap is only used under its lock, which we hold.
        let heap = unsafe { &*b.0 };
        released |= heap.release_empty_pages();
        released |= heap.segs().lock().trim();
    }
    released
}

/// Whether a locked heap (backup, samples) owns any segment.
fn backup_holds_memory() -> bool {
    [&BACKUP, &SAMPLES].into_iter().any(|lock| {
        let Some(b) = lock.try_lock() else { return true };
        // SAFETY: as in `trim_backup`.
        !b.0.is_null() && unsafe { (*b.0).segs().lock().queues.iter().any(|q| !q.first().is_null()) }
    })
}

/// Takes the first segment off the abandoned list (None if empty or the lock is busy).
fn pop_abandoned() -> Option<&'static Segment> {
    let a = ABANDONED.try_lock()?;
    let s = a.0.first();
    if s.is_null() {
        return None;
    }
    // SAFETY: segments on the abandoned list are live and owned by the list.
    let seg = unsafe { &*s };
    a.0.unlink(seg);
    ABANDONED_COUNT.fetch_sub(1, Ordering::Relaxed);
    Some(seg)
}

/// Collects the blocks other threads freed into the pages of an abandoned segment (whose
/// bookkeeping the caller owns) and gives back the pages left empty. Returns the mask of the
/// pages still in use.
fn collect_abandoned(seg: &Segment) -> u64 {
    let mut live = 0u64;
    for i in 0..seg.page_count as usize {
        let page = &seg.pages[i];
        if page.in_use() {
            page.collect_thread_free();
            if page.used() == 0 {
                seg.release_page(i);
            } else {
                live |= 1 << i;
            }
        }
    }
    live
}

/// Returns a whole segment (or huge span) to the arena.
pub fn free_segment(seg: &Segment) {
    seg.unmap();
    let (base, n, from_mmap) = (seg as *const Segment as *mut u8, seg.span_segments, seg.from_mmap);
    // SAFETY: the segment is unreachable now (unmapped from the lookup, out of every queue).
    unsafe { arena::free_segments(base, n, from_mmap) };
}

// ---- huge spans: one block of one or more whole segments, owned by no heap ----

/// Allocates a huge block of at least `size` bytes from the arena; with `zero` its first
/// `size` bytes read as zero.
pub fn alloc_huge(size: usize, zero: bool) -> *mut u8 {
    let Some(total) = size.checked_add(crate::segment::HEADER_SIZE) else { return ptr::null_mut() };
    let n = total.div_ceil(crate::segment::SEGMENT_SIZE);
    if n > (isize::MAX as usize) >> SEGMENT_SHIFT {
        return ptr::null_mut();
    }
    let Some(m) = arena::alloc_segments(n, true) else { return ptr::null_mut() };
    // SAFETY: the arena gave us `n` aligned segments nobody else uses.
    let seg = unsafe { &*Segment::init(m.base, Kind::Huge, n, m.from_mmap, m.zeroed) };
    seg.free_mask.set(0);
    seg.used_pages.set(1);
    let (area, len) = seg.page_area(0);
    let page = &seg.pages[0];
    page.init(0, len, area, 1, m.zeroed);
    if zero && !m.zeroed {
        // SAFETY: the block spans at least `size` bytes from `area`, all ours.
        unsafe { ptr::write_bytes(area, 0, size) };
    }
    page.set_single_block_in_use();
    stats::flush_in_use(len as isize);
    area
}

/// Frees the huge block of `seg` (called by any thread). False, changing nothing, if it was
/// freed already (its span claimed by another free that has not finished yet).
pub fn free_huge(seg: &Segment) -> bool {
    let _errno = os::ErrnoGuard::new();
    if seg.thread_id.compare_exchange(0, segment::HUGE_FREED, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return false;
    }
    stats::flush_in_use(-(seg.pages[0].block_size() as isize));
    free_segment(seg);
    true
}

/// Marks the page holding the sample heap's fresh block `b` as handing out pointers 16 bytes
/// in.
pub fn mark_sample_headers(b: *mut u8) {
    // `b` was just allocated from the sample heap, under its lock.
    let seg = segment::lookup(b).expect("a sampled block lies in a segment");
    seg.pages[seg.page_index(b)].set_sample_headers();
}

/// Marks the page holding the freshly allocated block at `p` as handing out offset
/// pointers. Called by the block's allocating thread before anyone else knows the block.
pub fn mark_aligned(p: *mut u8) {
    // `p` was just allocated from a live segment by the calling thread (or under the backup
    // heap's lock), so its page is ours to change.
    let seg = segment::lookup(p).expect("an aligned block lies in a segment");
    seg.pages[seg.page_index(p)].set_has_aligned();
}

// ---- whole-process operations ----

/// Sum of every heap's unflushed in-use bytes.
pub fn pending_in_use() -> isize {
    let mut sum = 0;
    // SAFETY: heaps are never freed, and `pending` reads an atomic.
    for_each_heap(|h| sum += unsafe { (*h).in_use.pending() });
    sum
}

/// Returns free memory to the OS: every heap's empty segments and free pages (the calling
/// thread's and, where their lock is free, every other thread's), the free parts of
/// abandoned segments, the large-block cache, and the free top of the break beyond `pad`
/// bytes. Returns true if any memory was returned.
pub fn trim(pad: usize) -> bool {
    let mut released = false;
    if let Some(h) = current() {
        released |= h.release_empty_pages();
        released |= h.segs().lock().trim();
    }
    released |= scan_heaps(true).released;
    released |= trim_abandoned();
    released |= trim_backup();
    released |= crate::large::flush_cache();
    released |= arena::trim(pad);
    released
}

/// Every timed release that is due, from a slow path of `heap` (or from the background
/// thread, with None). Cheap when none is due.
pub fn purge_if_due(heap: Option<&Heap>) {
    if let Some(h) = heap {
        h.purge_pages_if_due();
    }
    arena::purge_if_due();
    purge_abandoned_if_due();
    scan_heaps_if_due();
    crate::large::purge_if_due();
}

// ---- collecting from other threads' heaps ----

/// When other threads' heaps are next to be scanned (ms), 0 when no scan is pending.
static SCAN_AT: AtomicU64 = AtomicU64::new(0);
/// Whether a cross-thread free happened since the last scan began.
static REMOTE_FREES: AtomicBool = AtomicBool::new(false);

/// A cross-thread free happened: makes sure a scan looks, within the purge delay, for pages
/// it may have left entirely free in a heap whose owner does not collect them (it may be
/// idle). One load when a scan is pending already.
#[inline]
pub fn note_remote_free() {
    if !REMOTE_FREES.load(Ordering::Relaxed) {
        REMOTE_FREES.store(true, Ordering::Relaxed);
        schedule_scan();
    }
}

/// Makes sure other threads' heaps are scanned within the purge delay.
fn schedule_scan() {
    let at = os::now_ms() + options::get(Opt::PurgeDelay) as u64;
    let _ = SCAN_AT.compare_exchange(0, at.max(1), Ordering::Relaxed, Ordering::Relaxed);
}

/// Scans the other threads' heaps once the purge delay has passed (cheap when not due), and
/// schedules the next scan while some heap may still hold memory to release.
fn scan_heaps_if_due() {
    let at = SCAN_AT.load(Ordering::Relaxed);
    if at == 0 || os::now_ms() < at {
        return;
    }
    if SCAN_AT.compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return; // another thread took this round
    }
    let _errno = os::ErrnoGuard::new();
    if scan_heaps(false).more {
        schedule_scan();
    }
}

/// What a scan did.
struct Scan {
    /// Some memory was released.
    released: bool,
    /// Some heap may still hold memory to release (it was busy, or active since the last
    /// scan).
    more: bool,
}

/// Collects from the heaps of other threads what they do not give back while they do not
/// call in:
/// - pages whose blocks other threads have all freed (released; the page stays its owner's);
/// - the free pages of a heap that took no slow path since the last scan (idle, or on fast
///   paths only: its own purge timer never runs);
/// - the heap of a thread that ended without its exit handler (retired).
///
/// With `force` (trim) every heap is waited for, and its empty segments are freed as well.
fn scan_heaps(force: bool) -> Scan {
    REMOTE_FREES.store(false, Ordering::Relaxed);
    let me = current().map_or(ptr::null_mut(), |h| h as *const Heap as *mut Heap);
    let mut scan = Scan { released: false, more: false };
    for_each_heap(|h| {
        // SAFETY: heaps are never freed; we read only atomics and, under the lock, its segments.
        let heap = unsafe { &*h };
        if h == me || heap.kernel_tid.load(Ordering::Relaxed) == 0 {
            return; // ours, or no thread's (pooled; the locked heaps are `trim_backup`'s)
        }
        let lock = segs_of(h);
        let Some(mut segs) = (if force { Some(lock.lock()) } else { lock.try_lock() }) else {
            scan.more = true;
            return;
        };
        scan.released |= segs.reset_remote_freed_pages();
        let n = heap.slow_paths.load(Ordering::Relaxed);
        let idle = n == segs.seen_slow_paths;
        segs.seen_slow_paths = n;
        if force {
            scan.released |= segs.trim();
        } else if idle {
            let had_dirty = segs.dirty_pages > 0;
            scan.released |= segs.release_free_pages(true) && had_dirty;
            scan.more |= segs.dirty_pages > 0;
        } else {
            // Active: look again, since it may go idle (or its thread may end unseen) with
            // memory to give back.
            scan.more = true;
        }
        drop(segs);
        if (idle || force) && META.lock().reap_if_gone(h) {
            scan.released = true;
        }
    });
    scan
}

/// From the background thread (which has no heap of its own): one scan of every heap, as
/// from a slow path, whether or not one is scheduled.
pub fn scan_idle_heaps() {
    let _errno = os::ErrnoGuard::new();
    scan_heaps(false);
}

/// Collects the abandoned segments: frees the empty ones, releases free pages of the rest.
fn trim_abandoned() -> bool {
    let a = ABANDONED.lock();
    let mut released = false;
    let mut s = a.0.first();
    while !s.is_null() {
        // SAFETY: segments on the abandoned list are live and owned by the list (locked).
        let seg = unsafe { &*s };
        s = seg.next.get();
        collect_abandoned(seg);
        if seg.used_pages.get() == 0 {
            a.0.unlink(seg);
            ABANDONED_COUNT.fetch_sub(1, Ordering::Relaxed);
            free_segment(seg);
            released = true;
        } else {
            released |= release_free_pages(seg, false).unwrap_or(false);
        }
    }
    released
}

// ---- invariants (debug builds) ----

/// Checks the calling thread's heap: every page in its queues is a page in use of a live
/// segment the heap owns, in the queue of its class, with sound lists (`Page::check`); every
/// segment the heap owns is in the segment map, owned by it, with `used_pages` and the page
/// masks matching its pages, and every page in use of it queued exactly once. Aborts with a
/// message on the first violation.
#[cfg(debug_assertions)]
pub fn check_invariants() {
    let Some(heap) = current() else { return };
    let fail = |what: &str, at: *const u8| -> ! { crate::msg::fatal_pointer(what, at) };
    let me = heap as *const Heap as *mut Heap;
    let mut queued_pages = 0usize;
    for (class, queue) in heap.bins.iter().enumerate() {
        let mut p = queue.first();
        let mut n = 0;
        while !p.is_null() {
            // SAFETY: pages in our queues are live descriptors in segments we own.
            let page = unsafe { &*p };
            let Some(seg) = segment::lookup(page.area()) else {
                fail("check_invariants: a queued page is in no live segment", page.area());
            };
            if owner_of(seg) != me || !page.in_use() || page.class() != class {
                fail("check_invariants: a queued page is not ours, not in use, or in the wrong queue", page.area());
            }
            if let Err(e) = page.check() {
                fail(e, page.area());
            }
            n += 1;
            if n > 1 << 20 {
                fail("check_invariants: a page queue is cyclic", page.area());
            }
            p = page.next.get();
        }
        queued_pages += n;
    }
    let segs = heap.segs().lock();
    let mut in_use_pages = 0usize;
    for q in &segs.queues {
        let mut s = q.first();
        while !s.is_null() {
            // SAFETY: segments in our queues are live and ours (we hold their lock).
            let seg = unsafe { &*s };
            let at = s as *const u8;
            if !seg.is_mapped() || owner_of(seg) != me || seg.thread_id.load(Ordering::Relaxed) != heap.thread_id.get()
            {
                fail("check_invariants: an owned segment is unmapped or owned by another heap", at);
            }
            let used_mask = seg.used_mask();
            if used_mask.count_ones() != seg.used_pages.get() {
                fail("check_invariants: used_pages does not match the free-page mask", at);
            }
            for i in 0..seg.page_count as usize {
                if seg.pages[i].in_use() != (used_mask & (1 << i) != 0) {
                    fail("check_invariants: a page's state does not match the free-page mask", at);
                }
            }
            in_use_pages += used_mask.count_ones() as usize;
            s = seg.next.get();
        }
    }
    if in_use_pages != queued_pages {
        fail("check_invariants: pages in use are not each queued once", me as *const u8);
    }
}

impl Node for Page {
    fn links(&self) -> (&Cell<*mut Self>, &Cell<*mut Self>) {
        (&self.prev, &self.next)
    }
}

impl Node for Segment {
    fn links(&self) -> (&Cell<*mut Self>, &Cell<*mut Self>) {
        (&self.prev, &self.next)
    }
}
