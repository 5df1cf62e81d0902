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
use crate::page::{Block, FREE_IS_ZERO, HAS_ALIGNED, Page};
use crate::segment::{self, Kind, PAGED_KINDS, SEGMENT_SHIFT, Segment};
use crate::size_class::{NCLASSES, class_size};
use crate::stats::{self, LocalInUse};
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicUsize, Ordering};

/// Pages of a size-class queue the slow path examines before taking a fresh page.
const SEARCH_LIMIT: usize = 8;
/// Abandoned segments adopted per fresh-page request, at most.
const RECLAIM_LIMIT: usize = 4;
/// Thread id of the backup heap: no real thread has it, so frees into its pages always take
/// the cross-thread path.
const BACKUP_TID: usize = 1;
/// Empty segments a heap keeps per kind (against alloc/free churn at segment scale).
const KEEP_EMPTY: usize = 1;

/// Pages of one size class, the one to allocate from first.
pub type PageQueue = List<Page>;

/// Segments of one kind; those with free pages come first.
type SegQueue = List<Segment>;

/// A thread's heap: the owner's private state, touched only by the owning thread.
#[repr(C)]
pub struct Heap {
    /// Queues of pages, one per size class (hot: first in the struct).
    pub bins: [PageQueue; NCLASSES],
    /// The owning thread's `os::thread_id`.
    pub thread_id: usize,
    /// Bytes handed out minus bytes given back, not yet flushed to the global figure.
    pub in_use: LocalInUse,
    /// The segments this heap owns; a separate object so `trim` can reach it from any thread.
    segs: *const Lock<HeapSegs>,
    /// When the free pages of partly used segments are to be released (ms), 0 when none is
    /// pending.
    pages_purge_at: u64,
    /// Next heap ever created (for merging counters and trimming); never changes once set.
    next_all: AtomicPtr<Heap>,
    /// Next heap in the pool of recycled heaps.
    next_free: *mut Heap,
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
}

// SAFETY: the segments are only touched under the lock that owns the struct.
unsafe impl Send for HeapSegs {}

/// What one allocation of heap memory holds.
#[repr(C)]
struct HeapBox {
    heap: Heap,
    segs: Lock<HeapSegs>,
}

thread_local! {
    /// This thread's heap: null before its first allocation, `DEAD` after its exit handler.
    static HEAP: Cell<*mut Heap> = const { Cell::new(ptr::null_mut()) };
}
const DEAD: *mut Heap = ptr::dangling_mut::<Heap>();

/// The calling thread's heap, if it has a live one.
#[inline(always)]
pub fn current() -> Option<&'static mut Heap> {
    let h = HEAP.get();
    // SAFETY: a TLS value above DEAD is this thread's heap, used only by this thread.
    if (h as usize) > DEAD as usize { Some(unsafe { &mut *h }) } else { None }
}

// ---- global state ----

struct Meta {
    /// Recycled heaps.
    pool: *mut Heap,
    /// Unused room in the current chunk of heap memory.
    chunk: *mut u8,
    chunk_left: usize,
}
// SAFETY: the raw pointers are only used under the lock that owns the struct.
unsafe impl Send for Meta {}

static META: Lock<Meta> = Lock::new(Meta { pool: ptr::null_mut(), chunk: ptr::null_mut(), chunk_left: 0 });
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
fn current_or_create() -> Option<&'static mut Heap> {
    let h = HEAP.get();
    if h == DEAD {
        return None;
    }
    if !h.is_null() {
        // SAFETY: see `current`.
        return Some(unsafe { &mut *h });
    }
    ensure_init();
    let heap = META.lock().new_heap()?;
    heap.thread_id = os::thread_id();
    HEAP.set(heap);
    // SAFETY: the key was created in ensure_init; glibc stores values of low keys without
    // allocating (and if it did, the TLS slot is already set, so the call would succeed).
    unsafe { libc::pthread_setspecific(KEY.load(Ordering::Relaxed), (heap as *mut Heap).cast()) };
    Some(heap)
}

/// Runs `f` on the calling thread's heap, or on the backup heap (under its lock) for a thread
/// that has exited or could not get a heap. None if no heap could be had at all.
#[inline]
pub fn with_heap<R>(f: impl FnOnce(&mut Heap) -> R) -> Option<R> {
    if let Some(h) = current() {
        return Some(f(h));
    }
    with_heap_slow(f)
}

#[cold]
fn with_heap_slow<R>(f: impl FnOnce(&mut Heap) -> R) -> Option<R> {
    if let Some(h) = current_or_create() {
        return Some(f(h));
    }
    let mut b = BACKUP.lock();
    if b.0.is_null() {
        let h = META.lock().new_heap()?;
        h.thread_id = BACKUP_TID;
        b.0 = h;
    }
    // SAFETY: the backup heap is only used under this lock.
    Some(f(unsafe { &mut *b.0 }))
}

impl Meta {
    /// A clean heap from the pool or from a new chunk of memory from `os`.
    fn new_heap(&mut self) -> Option<&'static mut Heap> {
        let h = if !self.pool.is_null() {
            let h = self.pool;
            // SAFETY: pooled heaps are valid, unused heaps.
            self.pool = unsafe { (*h).next_free };
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
            }
            let b = self.chunk.cast::<HeapBox>();
            // SAFETY: `size` bytes remain in the chunk.
            self.chunk = unsafe { self.chunk.add(size) };
            self.chunk_left -= size;
            // SAFETY: the box is ours until published; zeroed memory is a valid unlocked lock.
            let h = unsafe {
                ptr::addr_of_mut!((*b).segs).write(Lock::new(HeapSegs {
                    queues: [SegQueue::new(); PAGED_KINDS],
                    empty: [0; PAGED_KINDS],
                    dirty_pages: 0,
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
        // SAFETY: `h` is an unused heap that only we can see.
        let heap = unsafe { &mut *h };
        heap.bins = [PageQueue::new(); NCLASSES];
        heap.pages_purge_at = 0;
        Some(heap)
    }
}

/// pthread key destructor: the thread is exiting.
extern "C" fn on_thread_exit(arg: *mut libc::c_void) {
    let heap = arg.cast::<Heap>();
    HEAP.set(DEAD);
    // SAFETY: the key's value is this thread's heap; nothing else uses it any more.
    unsafe { (*heap).abandon() };
    let mut m = META.lock();
    // SAFETY: the heap is empty and unreachable; the pool takes it.
    unsafe { (*heap).next_free = m.pool };
    m.pool = heap;
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
    // SAFETY: multi-threaded: fork_prepare took every lock on this thread, which is the
    // child's only thread. Single-threaded: a held lock was held by code of this thread that
    // a signal handler interrupted; in the child that code does not run again unless the
    // handler returns (then the child has the heap in whatever state the interrupted code
    // left it, as with glibc), and releasing a free lock is a no-op.
    unsafe { release_fork_locks() };
    if let Some(mask) = FORK_HELD.take() {
        abandon_other_heaps();
        os::set_signal_mask(&mask);
    }
}

/// In a fork child only the forking thread exists: every other thread's heap is dead. Its
/// segments are abandoned (so frees into them take the cross-thread path and the next heap
/// needing pages adopts them) — new threads of the child may get a dead thread's id, and
/// must not find its segments owned by them.
fn abandon_other_heaps() {
    let me = current().map_or(ptr::null_mut(), |h| h as *mut Heap);
    for_each_heap(|h| {
        // SAFETY: in the child no other thread exists, so heaps other than ours are unused.
        let heap = unsafe { &mut *h };
        if h != me && heap.thread_id != BACKUP_TID {
            heap.bins = [PageQueue::new(); NCLASSES];
            heap.segs().lock().abandon_all();
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

    /// Slow path of small allocation: finds a page of `class` with a free block and pops it.
    /// With `zero` the block reads as zeros. Null when out of memory.
    #[cold]
    #[inline(never)]
    pub fn alloc_slow(&mut self, class: usize, zero: bool) -> *mut u8 {
        self.in_use.flush();
        self.purge_pages_if_due();
        arena::purge_if_due();
        crate::large::purge_if_due();
        let Some(page) = self.find_page(class) else { return ptr::null_mut() };
        self.pop_from(page, zero)
    }

    /// Releases the free pages of our partly used segments once they have been free for the
    /// purge delay, so RSS follows the live set.
    fn purge_pages_if_due(&mut self) {
        if self.pages_purge_at != 0 && os::now_ms() >= self.pages_purge_at {
            self.pages_purge_at = 0;
            self.segs().lock().release_all_free_pages();
        }
    }

    /// Pops a block from `page` (which has one) and zeroes it if asked.
    #[inline(always)]
    pub fn pop_from(&mut self, page: &mut Page, zero: bool) -> *mut u8 {
        let is_zero = page.flags & FREE_IS_ZERO != 0;
        let b = page.pop();
        debug_assert!(!b.is_null());
        self.in_use.add(page.block_size as isize);
        if zero {
            // SAFETY: `b` is a block of `block_size` bytes we just took.
            unsafe {
                if is_zero {
                    (*b).next = ptr::null_mut();
                } else {
                    ptr::write_bytes(b.cast::<u8>(), 0, page.block_size);
                }
            }
        }
        b.cast()
    }

    /// A page of `class` with a free block, moved to the front of its queue.
    fn find_page(&mut self, class: usize) -> Option<&'static mut Page> {
        let mut p = self.bins[class].first;
        for _ in 0..SEARCH_LIMIT {
            if p.is_null() {
                break;
            }
            // SAFETY: pages in our queues are live descriptors of segments we own.
            let page = unsafe { &mut *p };
            let next = page.next;
            if page.collect() || page.extend() {
                self.bins[class].move_front(page);
                return Some(page);
            }
            self.bins[class].move_back(page);
            p = next;
        }
        let page = self.fresh_page(class)?;
        page.extend();
        Some(page)
    }

    /// Takes a free page for `class` and puts it at the front of the class queue.
    fn fresh_page(&mut self, class: usize) -> Option<&'static mut Page> {
        let bs = class_size(class);
        let kind = Kind::for_block(bs);
        let mut segs = self.segs().lock();
        let seg = match segs.with_free_page(kind) {
            Some(seg) => seg,
            None => match self.reclaim(&mut segs, kind) {
                Some(seg) => seg,
                None => segs.new_segment(kind, self)?,
            },
        };
        let (i, fresh) = segs.take_page(seg)?;
        drop(segs);
        let (area, len) = seg.page_area(i);
        let page = &mut seg.pages[i];
        page.init(class as u8, bs, area, len / bs, fresh);
        self.bins[class].push_front(page);
        // SAFETY: segment headers live as long as the segment, which we own.
        Some(unsafe { &mut *(page as *mut Page) })
    }

    /// Adopts segments abandoned by exited threads (a few at most) into `segs`, queueing
    /// their pages in our bins; returns one of `kind` with a free page if it found one.
    fn reclaim(&mut self, segs: &mut HeapSegs, kind: Kind) -> Option<&'static mut Segment> {
        for _ in 0..RECLAIM_LIMIT {
            if ABANDONED_COUNT.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let seg = pop_abandoned()?;
            // Collect what other threads freed while the segment had no owner.
            let mut live = 0u64;
            for i in 0..seg.page_count as usize {
                let page = &mut seg.pages[i];
                if page.in_use() {
                    page.collect_thread_free();
                    if page.used == 0 {
                        seg.release_page(i);
                    } else {
                        live |= 1 << i;
                    }
                }
            }
            if seg.used_pages == 0 {
                free_segment(seg);
                continue;
            }
            segs.adopt(seg, self);
            while live != 0 {
                let i = live.trailing_zeros() as usize;
                live &= live - 1;
                let page = &mut seg.pages[i];
                let class = page.class as usize;
                self.bins[class].push_front(page);
            }
            if seg.kind == kind && seg.free_mask != 0 {
                return Some(seg);
            }
        }
        None
    }

    // ---- freeing (owner side) ----

    /// The owner's free, after the fast path checks: `b` is a handed-out block of `page`,
    /// a page of one of our segments.
    ///
    /// # Safety
    /// As stated; the caller checked ownership and validity.
    #[inline(always)]
    pub unsafe fn free_local(&mut self, page: &mut Page, b: *mut Block) {
        self.in_use.add(-(page.block_size as isize));
        // SAFETY: per the contract.
        unsafe { page.push_local(b) };
        // An empty page that is its class's only page stays (checked here, not in a call:
        // a single block allocated and freed over and over must stay on the fast path).
        if page.used == 0 && !(page.prev.is_null() && page.next.is_null()) {
            self.page_emptied(page);
        }
    }

    /// A page of ours has no block in use: give it back to its segment unless it is the
    /// only page of its size class (then it is kept against alloc/free churn).
    #[cold]
    #[inline(never)]
    fn page_emptied(&mut self, page: *mut Page) {
        // SAFETY: `page` is a live page of one of our segments; this reference ends before
        // the segment is touched.
        let (class, area) = unsafe { ((*page).class as usize, (*page).area) };
        // SAFETY: as above.
        self.bins[class].unlink(unsafe { &mut *page });
        // SAFETY: the page's segment is live and ours.
        let seg = unsafe { &mut *(segment::segment_base(area) as *mut Segment) };
        let i = seg.page_index(area);
        self.segs().lock().release_page(seg, i);
        if self.pages_purge_at == 0 {
            self.pages_purge_at = os::now_ms() + options::get(Opt::PurgeDelay) as u64;
        }
    }

    /// Thread exit: collects every page, frees what is empty, abandons the rest.
    fn abandon(&mut self) {
        self.in_use.flush();
        self.release_empty_pages();
        self.bins = [PageQueue::new(); NCLASSES];
        self.segs().lock().abandon_all();
    }

    /// Gives every page of ours with no block in use back to its segment, even the only page
    /// of a size class (which the free path keeps). True if any was given back.
    fn release_empty_pages(&mut self) -> bool {
        let mut released = false;
        for class in 0..NCLASSES {
            let mut p = self.bins[class].first;
            while !p.is_null() {
                // SAFETY: pages in our queues are live descriptors in segments we own.
                let page = unsafe { &mut *p };
                p = page.next;
                page.collect_thread_free();
                if page.used == 0 {
                    self.page_emptied(page);
                    released = true;
                }
            }
        }
        released
    }
}

impl HeapSegs {
    /// The first segment of `kind` if it has a free page (segments with free pages come
    /// first).
    fn with_free_page(&mut self, kind: Kind) -> Option<&'static mut Segment> {
        let first = self.queues[kind as usize].first;
        // SAFETY: segments in our queues are live and ours.
        (!first.is_null() && unsafe { (*first).free_mask } != 0).then(|| unsafe { &mut *first })
    }

    /// A new, empty segment of `kind` from the arena, owned by `heap`.
    fn new_segment(&mut self, kind: Kind, heap: &mut Heap) -> Option<&'static mut Segment> {
        let m = arena::alloc_segments(1, false)?;
        // SAFETY: the arena gave us an aligned segment nobody else uses.
        let seg = unsafe { &mut *Segment::init(m.base, kind, 1, m.from_mmap, m.zeroed) };
        // No other segment of this kind has a free page, so none is empty: adopting keeps it.
        self.adopt(seg, heap);
        Some(seg)
    }

    /// Takes the lowest free page of `seg`: its index and whether its memory is still fresh.
    fn take_page(&mut self, seg: &mut Segment) -> Option<(usize, bool)> {
        if seg.used_pages == 0 {
            self.empty[seg.kind as usize] -= 1;
        }
        let taken = seg.take_page()?;
        if !taken.1 {
            self.dirty_pages = self.dirty_pages.saturating_sub(seg.page_area(taken.0).1);
        }
        if seg.free_mask == 0 {
            self.queues[seg.kind as usize].move_back(seg);
        }
        Some(taken)
    }

    /// Makes `seg` belong to `heap` and queues it (front if it has a free page).
    fn adopt(&mut self, seg: &mut Segment, heap: &mut Heap) {
        seg.heap = heap;
        seg.thread_id.store(heap.thread_id, Ordering::Release);
        let q = &mut self.queues[seg.kind as usize];
        if seg.free_mask != 0 {
            q.push_front(seg);
        } else {
            q.push_back(seg);
        }
        if seg.used_pages == 0 {
            self.empty[seg.kind as usize] += 1;
            self.trim_empty(KEEP_EMPTY);
        }
    }

    /// Gives page `i` back to `seg`; a segment left empty is kept or freed.
    fn release_page(&mut self, seg: &mut Segment, i: usize) {
        let was_full = seg.free_mask == 0;
        seg.release_page(i);
        if was_full {
            self.queues[seg.kind as usize].move_front(seg);
        }
        if seg.used_pages == 0 {
            // Its free pages now count as an empty segment (kept or returned to the arena).
            self.dirty_pages = self.dirty_pages.saturating_sub(dirty_free_bytes(seg));
            self.empty[seg.kind as usize] += 1;
            self.trim_empty(KEEP_EMPTY);
        } else {
            // Free pages stay resident for reuse; the owner releases them after the purge
            // delay (see `Heap::purge_pages_if_due`), or at once beyond the dirty cap.
            self.dirty_pages += seg.page_area(i).1;
            if self.dirty_pages > options::get(Opt::DirtyMax) {
                self.release_all_free_pages();
            }
        }
    }

    /// Releases the free pages of every segment (madvise). True if there was any.
    fn release_all_free_pages(&mut self) -> bool {
        let mut released = false;
        for k in 0..PAGED_KINDS {
            let mut s = self.queues[k].first;
            while !s.is_null() {
                // SAFETY: segments in our queues are live and ours (we hold their lock).
                let seg = unsafe { &mut *s };
                s = seg.next;
                released |= release_free_pages(seg);
            }
        }
        self.dirty_pages = 0;
        released
    }

    /// Frees empty segments until at most `keep` per kind remain. True if any was freed.
    fn trim_empty(&mut self, keep: usize) -> bool {
        let mut freed = false;
        for k in 0..PAGED_KINDS {
            let mut s = self.queues[k].first;
            while !s.is_null() && self.empty[k] > keep {
                // SAFETY: segments in our queues are live and ours.
                let seg = unsafe { &mut *s };
                s = seg.next;
                if seg.used_pages == 0 {
                    self.empty[k] -= 1;
                    self.queues[k].unlink(seg);
                    free_segment(seg);
                    freed = true;
                }
            }
        }
        freed
    }

    /// Releases the memory of every free page (madvise) and every empty segment. True if
    /// anything was released.
    fn trim(&mut self) -> bool {
        self.trim_empty(0) | self.release_all_free_pages()
    }

    /// Thread exit: frees empty segments and abandons the others.
    fn abandon_all(&mut self) {
        for k in 0..PAGED_KINDS {
            while !self.queues[k].first.is_null() {
                // SAFETY: segments in our queues are live and ours.
                let seg = unsafe { &mut *self.queues[k].first };
                self.queues[k].unlink(seg);
                if seg.used_pages == 0 {
                    free_segment(seg);
                    continue;
                }
                seg.heap = ptr::null_mut();
                seg.thread_id.store(0, Ordering::Release);
                ABANDONED.lock().0.push_back(seg);
                ABANDONED_COUNT.fetch_add(1, Ordering::Relaxed);
            }
            self.empty[k] = 0;
        }
        self.dirty_pages = 0;
    }
}

/// Bytes of the free pages of `seg` that have been used since it came from the arena.
fn dirty_free_bytes(seg: &Segment) -> usize {
    let mut bits = seg.free_mask & !seg.fresh_mask;
    let mut bytes = 0;
    while bits != 0 {
        bytes += seg.page_area(bits.trailing_zeros() as usize).1;
        bits &= bits - 1;
    }
    bytes
}

/// Releases (madvise) the memory of the free pages of `seg` that have been used; they count
/// as fresh (zeroed) again. The caller must own `seg`'s page bookkeeping (its heap's segment
/// lock, or the abandoned list's lock). True if any page was released.
fn release_free_pages(seg: &mut Segment) -> bool {
    let dirty = seg.free_mask & !seg.fresh_mask;
    let mut bits = dirty;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let (area, len) = seg.page_area(i);
        // SAFETY: a free page holds no live block; its memory is ours and unused.
        unsafe { os::madvise_free(area, len) };
    }
    seg.fresh_mask |= dirty;
    dirty != 0
}

/// Takes the first segment off the abandoned list (None if empty or the lock is busy).
fn pop_abandoned() -> Option<&'static mut Segment> {
    let mut a = ABANDONED.try_lock()?;
    let s = a.0.first;
    if s.is_null() {
        return None;
    }
    // SAFETY: segments on the abandoned list are live and owned by the list.
    unsafe { a.0.unlink(&mut *s) };
    ABANDONED_COUNT.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: as above; now the caller's.
    Some(unsafe { &mut *s })
}

/// Returns a whole segment (or huge span) to the arena.
pub fn free_segment(seg: &mut Segment) {
    seg.unmap();
    let (base, n, from_mmap) = (seg as *mut Segment as *mut u8, seg.span_segments, seg.from_mmap);
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
    let seg = unsafe { &mut *Segment::init(m.base, Kind::Huge, n, m.from_mmap, m.zeroed) };
    seg.free_mask = 0;
    seg.used_pages = 1;
    let (area, len) = seg.page_area(0);
    let page = &mut seg.pages[0];
    page.init(0, len, area, 1, m.zeroed);
    if zero && !m.zeroed {
        // SAFETY: the block spans at least `size` bytes from `area`, all ours.
        unsafe { ptr::write_bytes(area, 0, size) };
    }
    page.capacity = 1;
    page.used = 1;
    stats::flush_in_use(len as isize);
    area
}

/// Frees the huge block `b` of `seg` (called by any thread).
pub fn free_huge(seg: &mut Segment) {
    let page = &mut seg.pages[0];
    stats::flush_in_use(-(page.block_size as isize));
    page.used = 0;
    free_segment(seg);
}

/// Marks the page holding the freshly allocated block at `p` as handing out offset
/// pointers. Called by the block's allocating thread before anyone else knows the block.
pub fn mark_aligned(p: *mut u8) {
    let seg = segment::lookup(p);
    debug_assert!(!seg.is_null());
    // SAFETY: `p` was just allocated from this segment by the calling thread (or under the
    // backup heap's lock), so the page descriptor is ours to write.
    unsafe {
        let seg = &mut *seg;
        let i = seg.page_index(p);
        seg.pages[i].flags |= HAS_ALIGNED;
    }
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
    }
    // Busy heaps are skipped: their owner is at work on them.
    for_each_heap(|h| {
        if let Some(mut s) = segs_of(h).try_lock() {
            released |= s.trim();
        }
    });
    released |= trim_abandoned();
    released |= crate::large::flush_cache();
    released |= arena::trim(pad);
    released
}

/// Collects the abandoned segments: frees the empty ones, releases free pages of the rest.
fn trim_abandoned() -> bool {
    let mut a = ABANDONED.lock();
    let mut released = false;
    let mut s = a.0.first;
    while !s.is_null() {
        // SAFETY: segments on the abandoned list are live and owned by the list (locked).
        let seg = unsafe { &mut *s };
        s = seg.next;
        for i in 0..seg.page_count as usize {
            let page = &mut seg.pages[i];
            if page.in_use() {
                page.collect_thread_free();
                if page.used == 0 {
                    seg.release_page(i);
                }
            }
        }
        if seg.used_pages == 0 {
            a.0.unlink(seg);
            ABANDONED_COUNT.fetch_sub(1, Ordering::Relaxed);
            free_segment(seg);
            released = true;
        } else {
            released |= release_free_pages(seg);
        }
    }
    released
}

impl Node for Page {
    fn links(&mut self) -> (&mut *mut Self, &mut *mut Self) {
        (&mut self.prev, &mut self.next)
    }
}

impl Node for Segment {
    fn links(&mut self) -> (&mut *mut Self, &mut *mut Self) {
        (&mut self.prev, &mut self.next)
    }
}
