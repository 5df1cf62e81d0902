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
//!
//! The files: this one holds the `Heap`, its allocation and free paths (slow path, page
//! search, fresh pages, the owner's free), the calling thread's heap (`current`,
//! `with_heap`) and the page marks of fresh blocks. `segs`: the segment side of one heap.
//! `life`: global state and the life of heaps (creation, thread exit, reaping). `fork`: the
//! fork handlers. `collect`: what collects memory across heaps (abandoned segments, scans of
//! other threads' heaps, `trim`, the timers). `huge`: huge spans. `check`: the invariant
//! check of debug builds. Calls go from this file into the others (`segs` for pages,
//! `collect` for the timers and abandoned segments, `life` for a heap on the cold path);
//! they call back into it only for the calling thread's heap (`current`, the TLS word) and a
//! heap's own state (`Heap::segs`, `release_empty_pages`, `purge_pages_if_due`,
//! `restart_sample_clock`).

#[cfg(debug_assertions)]
mod check;
mod collect;
mod fork;
mod huge;
mod life;
mod segs;

#[cfg(debug_assertions)]
pub use check::check_invariants;
pub use collect::{note_remote_free, purge_if_due, scan_idle_heaps, scan_period, trim};
pub use huge::{alloc_huge, free_huge};
pub use life::{SAMPLE_TID, current_or_create, ensure_init, is_initialised, pending_in_use, with_sample_heap};

use crate::list::{List, Node};
use crate::lock::Lock;
use crate::options::{self, Opt};
use crate::os;
use crate::page::{Block, DirectTable, EMPTY_PAGE, NO_HEAP, NoHeapTables, Page};
use crate::segment::{self, Kind, Segment};
use crate::size_class::{NCLASSES, class_size, table_index, table_indexes};
use crate::stats::{self, LocalInUse};
use collect::{ABANDONED_COUNT, collect_abandoned, pop_abandoned};
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering, compiler_fence};
use life::{is_locked_heap, with_heap_slow};
use segs::{HeapSegs, free_segment};

/// The owner's hold on its own segment lock (`Heap::lock_own`).
pub(super) struct OwnSegs<'a> {
    heap: &'a Heap,
    guard: Option<spin::mutex::SpinMutexGuard<'a, HeapSegs>>,
}

impl core::ops::Deref for OwnSegs<'_> {
    type Target = HeapSegs;
    fn deref(&self) -> &HeapSegs {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl core::ops::DerefMut for OwnSegs<'_> {
    fn deref_mut(&mut self) -> &mut HeapSegs {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for OwnSegs<'_> {
    fn drop(&mut self) {
        self.guard = None; // the unlock, before the flag goes
        compiler_fence(Ordering::SeqCst);
        self.heap.owner_locked.set(false);
    }
}

/// Pages of a size-class queue the slow path examines before taking a fresh page.
const SEARCH_LIMIT: usize = 8;
/// Blocks a class without a page takes from a larger class's page before it gets its own.
const BORROW_MAX: u8 = 16;
/// Classes above this size do not borrow (the largest that does is 1792: power-of-two
/// classes never do): the program touches their blocks whole, so a page of their own costs
/// little more than the block.
const BORROW_SIZE_MAX: usize = 2048;
/// Abandoned segments adopted per fresh-page request, at most.
const RECLAIM_LIMIT: usize = 4;

/// Pages of one size class, the one to allocate from first.
pub type PageQueue = List<Page>;

/// A thread's heap: the owner's private state, touched only by the owning thread (other
/// threads read `in_use`, `segs` and `next_all`, so the heap is only reached through shared
/// references and the owner's fields are `Cell`s).
#[repr(C)]
pub struct Heap {
    /// For each request size up to `TABLE_MAX` (by `table_index`), the first page of its
    /// class's queue, or the empty page: the malloc fast path's one load (hot: first in the
    /// struct). Kept in step by `queue_changed`.
    direct: DirectTable,
    /// Queues of pages, one per size class.
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
    /// The owner holds (or is taking) its own segment lock: an allocation or free of a
    /// signal handler on this thread then must not wait for it (see `lock_own`).
    owner_locked: Cell<bool>,
    /// The owner is inside `purge_if_due` (which takes global locks: the arena's, the
    /// abandoned list's): a signal handler's allocation on this thread skips the purge
    /// rather than wait for a lock its own thread holds.
    pub(super) purging: Cell<bool>,
    /// Set while `alloc_in_place` runs: the slow path takes no new segment (the code a
    /// signal handler interrupted may hold the arena's lock).
    in_place: Cell<bool>,
    /// Blocks each class has taken from a larger class's page while it had no page of its own
    /// (see `borrow_page`).
    borrowed: [Cell<u8>; NCLASSES],
    /// Slow paths the owner has taken (only the owner writes it): a collector that finds it
    /// unchanged since its last look knows the heap took none in between.
    slow_paths: AtomicU32,
    /// The owner's kernel thread id, 0 while no thread owns the heap (pooled, locked heaps),
    /// and its process id: how a collector tells a thread that ended without its exit handler
    /// (see `reap_if_gone`).
    kernel_tid: AtomicI32,
    pid: AtomicI32,
}

/// Zeroes `b`, a block of `bs` bytes just popped (its second word cleared by the pop): only
/// its first word if the rest is known zero (`is_zero`).
///
/// # Safety
/// `b` is a block of `bs` bytes the caller just took.
#[inline(always)]
unsafe fn zero_popped(b: *mut Block, bs: usize, is_zero: bool) {
    // SAFETY: per the contract.
    unsafe {
        if is_zero {
            (*b).next = ptr::null_mut();
        } else {
            ptr::write_bytes(b.cast::<u8>(), 0, bs);
        }
    }
}

/// The heap that owns `seg` (null if none).
#[inline(always)]
pub fn owner_of(seg: &Segment) -> *mut Heap {
    seg.heap.get().cast()
}

/// This thread's heap (the word in `tls`): `UNBORN` before its first allocation, `DEAD`
/// after its exit handler. All three start with a direct table.
#[inline(always)]
fn thread_heap() -> *mut Heap {
    crate::tls::get().cast()
}

fn set_thread_heap(h: *mut Heap) {
    crate::tls::set(h.cast());
}

// The thread's word points to a heap or a NO_HEAP table, and the fast path reads a direct
// table there.
const _: () = assert!(core::mem::offset_of!(Heap, direct) == 0);

/// The word of a thread before its first allocation: the first table of `NO_HEAP`.
const UNBORN: *mut Heap = NO_HEAP.0.as_ptr().cast_mut().cast();
/// The word of a thread after its exit handler: the second table of `NO_HEAP`.
const DEAD: *mut Heap = NO_HEAP.0.as_ptr().wrapping_add(1).cast_mut().cast();

/// Whether the word `h` is a heap (not one of the `NO_HEAP` tables).
#[inline(always)]
fn is_heap(h: *mut Heap) -> bool {
    (h as usize).wrapping_sub(UNBORN as usize) >= size_of::<NoHeapTables>()
}

/// The calling thread's heap, if it has a live one.
#[inline(always)]
pub fn current() -> Option<&'static Heap> {
    let h = thread_heap();
    // SAFETY: a word that is not a NO_HEAP table is this thread's heap, which lives forever.
    if is_heap(h) { Some(unsafe { &*h }) } else { None }
}

/// The malloc fast path: the page of this thread's heap that a request of `size <=
/// TABLE_MAX` bytes is served from, and the heap if that page has a free block (a thread
/// with no heap finds the empty page, with none).
#[inline(always)]
pub fn direct_page(size: usize) -> (&'static Page, *mut Block, *mut Heap) {
    let h = thread_heap();
    // SAFETY: the word always points to a direct table (a heap starts with its own), whose
    // entries are live descriptors of the heap's queues or the empty page; `table_index` of
    // a size up to TABLE_MAX is below TABLE_LEN.
    let page = unsafe { &*(*h.cast::<DirectTable>()).get_unchecked(table_index(size)).get() };
    (page, page.free_head(), h)
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
    pub fn alloc_slow(&self, class: usize, zero: bool, sampled: impl FnOnce(&Page, *mut Block) -> *mut u8) -> *mut u8 {
        if self.owner_locked.get() {
            return life::alloc_reentrant(class, zero);
        }
        // A signal handler that interrupted this thread's purge (which may hold the arena's
        // or the abandoned list's lock): no purge, no new or adopted segment.
        if self.purging.get() {
            return self.alloc_in_place(class, zero);
        }
        // A thread whose heap was made inside the initialisation (see `ensure_init`) does
        // not come through `current_or_create` again: in a fork child that copied the
        // initialisation under way, this is where the child takes it over. Not on a heap
        // used under a global lock (the sample heap): the take-over resets every lock.
        if !is_locked_heap(self.thread_id.get()) {
            ensure_init();
        }
        self.slow_paths.store(self.slow_paths.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        self.in_use.flush();
        purge_if_due(Some(self));
        // Under the segment lock: a collector of remote frees (`scan_heaps`) relies on `free`
        // becoming non-empty only there.
        let page = match self.lock_own() {
            Some(mut segs) => self.find_page(&mut segs, class),
            None => return life::alloc_reentrant(class, zero),
        };
        let Some(page) = page else { return ptr::null_mut() };
        // SAFETY: `find_page` returns a page of ours whose `free` has a block.
        unsafe { self.pop_from(page, page.free_head(), zero, sampled) }
    }

    /// The slow path for a signal handler that interrupted its thread's own locked work (on
    /// the backup heap, see `life::alloc_reentrant`) or its purge (on its own heap): no purge,
    /// no new segment and none adopted, so no lock but this heap's own is taken. Null if
    /// its pages and segments have no room.
    pub(super) fn alloc_in_place(&self, class: usize, zero: bool) -> *mut u8 {
        // Not waited for either: another thread holding it (a trim, a fork) may be waiting
        // for a lock the interrupted code holds.
        let Some(mut segs) = self.try_lock_own() else { return ptr::null_mut() };
        self.in_place.set(true);
        let page = self.find_page(&mut segs, class);
        self.in_place.set(false);
        drop(segs);
        let Some(page) = page else { return ptr::null_mut() };
        // A block at the sample point (this thread's own heap, profiling on) is served
        // unsampled, and zeroed if asked: `pop_from` leaves that to the closure.
        let unsampled = |pg: &Page, b: *mut Block| {
            if zero {
                // SAFETY: `b` is a block of `block_size` bytes just taken from `pg`.
                unsafe { ptr::write_bytes(b.cast::<u8>(), 0, pg.block_size()) };
            }
            b.cast()
        };
        // SAFETY: `find_page` returns a page of ours whose `free` has a block.
        unsafe { self.pop_from(page, page.free_head(), zero, unsampled) }
    }

    /// Releases the free pages of our partly used segments once they have been free for the
    /// purge delay, so RSS follows the live set.
    pub fn purge_pages_if_due(&self) {
        let at = self.pages_purge_at.get();
        if at != 0 && os::now_ms() >= at {
            let Some(mut segs) = self.lock_own() else { return };
            self.pages_purge_at.set(0);
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

    /// The fast path's pop: takes `b`, the first block of `page`'s `free`, and zeroes it if
    /// asked; false, changing nothing, if the block would reach the sampling clock's next
    /// point (the caller then takes the path that samples).
    ///
    /// # Safety
    /// `page` is ours and `b` is its `free_head()`, not null.
    #[inline(always)]
    pub unsafe fn pop_unsampled(&self, page: &Page, b: *mut Block, zero: bool) -> bool {
        let bs = page.owner_block_size();
        if !self.in_use.alloc_unsampled(bs) {
            return false;
        }
        // Read before the pop: the flag speaks of the blocks on `free`.
        let is_zero = zero && page.free_is_zero();
        // SAFETY: per the contract.
        unsafe {
            page.pop_head(b);
            if zero {
                zero_popped(b, bs, is_zero);
            }
        }
        true
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
        let bs = page.owner_block_size();
        // SAFETY: per the contract.
        unsafe { page.pop_head(b) };
        if self.in_use.alloc(bs) {
            return sampled(page, b);
        }
        if zero {
            // SAFETY: `b` is a block of `bs` bytes we just took.
            unsafe { zero_popped(b, bs, is_zero) };
        }
        b.cast()
    }

    /// Puts `page` at the front of `class`'s queue. A page alone in its queue is kept when
    /// it empties (`Page::retire_at`), so the one it joins no longer is.
    fn queue_push(&self, class: usize, page: &Page) {
        let queue = &self.bins[class];
        let old = queue.first();
        queue.push_front(page);
        // SAFETY: pages in our queues are live descriptors of segments we own.
        match unsafe { old.as_ref() } {
            Some(old) => {
                old.set_alone(false);
                page.set_alone(false);
            }
            None => page.set_alone(true),
        }
    }

    /// Takes `page` off `class`'s queue; a page left alone there is kept when it empties.
    fn queue_unlink(&self, class: usize, page: &Page) {
        let queue = &self.bins[class];
        queue.unlink(page);
        page.set_alone(false);
        let first = queue.first();
        // SAFETY: as in `queue_push`.
        if let Some(only) = unsafe { first.as_ref() }
            && ptr::eq(first, queue.last.get())
        {
            only.set_alone(true);
        }
    }

    /// Points the direct entries of `class` at the empty page (the fast path then takes the
    /// slow path for it).
    fn direct_off(&self, class: usize) {
        self.set_direct(class, EMPTY_PAGE.get());
    }

    /// The first page of `class`'s queue may have changed: the direct table follows.
    fn queue_changed(&self, class: usize) {
        let first = self.bins[class].first();
        self.set_direct(class, if first.is_null() { EMPTY_PAGE.get() } else { first.cast_const() });
    }

    /// Points the direct entries of `class` at `page`.
    fn set_direct(&self, class: usize, page: *const Page) {
        for i in table_indexes(class) {
            self.direct[i].set(page);
        }
    }

    /// A page of `class` with a free block, moved to the front of its queue.
    fn find_page(&self, segs: &mut HeapSegs, class: usize) -> Option<&'static Page> {
        let first = self.bins[class].first();
        let page = self.search_queue(segs, class);
        if self.bins[class].first() != first {
            self.queue_changed(class);
        }
        page
    }

    /// [`Heap::find_page`], leaving the direct table behind.
    fn search_queue(&self, segs: &mut HeapSegs, class: usize) -> Option<&'static Page> {
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
        if queue.first().is_null()
            && let Some(page) = self.borrow_page(class)
        {
            return Some(page);
        }
        let page = self.fresh_page(segs, class)?;
        page.extend();
        Some(page)
    }

    /// A free block for `class`, which has no page, from the first page of one of the next
    /// classes up (at most 25% larger), if that page has one already carved: the first few
    /// blocks of a class a program uses rarely then touch no page of their own (a 4 KiB page
    /// per class, in a small process, is most of its heap). At most `BORROW_MAX` per class,
    /// and not for power-of-two classes. (A signal handler's allocation that borrows touches
    /// the lender's page: like any allocation in a handler that interrupts malloc or free on
    /// that page, it is not safe; see `life::alloc_reentrant` for what is.)
    fn borrow_page(&self, class: usize) -> Option<&'static Page> {
        let (n, bs) = (self.borrowed[class].get(), class_size(class));
        // A power-of-two class serves aligned requests by its blocks' natural alignment,
        // which a larger class's blocks do not have.
        if n >= BORROW_MAX || bs > BORROW_SIZE_MAX || bs.is_power_of_two() {
            return None;
        }
        for c in class + 1..NCLASSES {
            if class_size(c) > bs + bs / 4 {
                break;
            }
            // SAFETY: pages in our queues are live descriptors of segments we own.
            let Some(page) = (unsafe { self.bins[c].first().as_ref() }) else { continue };
            if !page.free_head().is_null() || page.collect() {
                self.borrowed[class].set(n + 1);
                return Some(page);
            }
        }
        None
    }

    /// Takes a free page for `class` and puts it at the front of the class queue.
    fn fresh_page(&self, segs: &mut HeapSegs, class: usize) -> Option<&'static Page> {
        let bs = class_size(class);
        let kind = Kind::for_block(bs);
        let seg = match segs.with_free_page(kind) {
            Some(seg) => seg,
            // Locked heaps adopt nothing: abandoned segments are for live threads, which
            // collect and give back their memory on their own slow paths.
            None => match if is_locked_heap(self.thread_id.get()) || self.in_place.get() {
                None
            } else {
                self.reclaim(segs, kind)
            } {
                Some(seg) => seg,
                None if self.in_place.get() => return None,
                None => segs.new_segment(kind, self)?,
            },
        };
        let (i, fresh) = segs.take_page(seg)?;
        let (area, len) = seg.page_area(i);
        let page = &seg.pages[i];
        page.init(class as u8, bs, area, len / bs, fresh);
        self.queue_push(class, page);
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
                self.queue_push(page.class(), page);
                self.queue_changed(page.class());
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
        let Some(used) = (unsafe { page.push_local(b) }) else { return false };
        self.in_use.free(page.owner_block_size());
        // An empty page that is its class's only page stays (checked here, not in a call:
        // a single block allocated and freed over and over must stay on the fast path).
        if used == page.retire_at() {
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
        // A free in a signal handler that interrupted our own locked work, or our purge,
        // leaves the empty page where it is (a later slow path or trim gives it back): giving
        // it back may free its segment, which takes the arena's lock.
        if self.purging.get() {
            return;
        }
        if let Some(mut segs) = self.lock_own()
            && self.give_back_page(&mut segs, page)
        {
            drop(segs);
            self.schedule_page_purge();
        }
    }

    /// A reused heap's classes may borrow again.
    pub(super) fn clear_borrowed(&self) {
        self.borrowed.iter().for_each(|b| b.set(0));
    }

    /// In a fork child once every lock is released, and for a heap being reused: no hold is
    /// left.
    pub(super) fn clear_owner_locked(&self) {
        self.owner_locked.set(false);
        self.purging.set(false);
        self.in_place.set(false);
    }

    /// The owner takes its own segment lock. None if this thread holds it already: a signal
    /// handler interrupted the owner's slow path (or its page release) and allocates or
    /// frees; waiting would never end, and the structures are half updated.
    pub(super) fn lock_own(&self) -> Option<OwnSegs<'_>> {
        self.take_own(|lock| Some(lock.lock()))
    }

    /// [`Heap::lock_own`] without waiting: None also when another thread holds the lock.
    fn try_lock_own(&self) -> Option<OwnSegs<'_>> {
        self.take_own(|lock| lock.try_lock())
    }

    /// The owner's hold on its segment lock, taken by `take` (None if it could not be).
    fn take_own<'a>(
        &'a self,
        take: impl FnOnce(&'a Lock<HeapSegs>) -> Option<spin::mutex::SpinMutexGuard<'a, HeapSegs>>,
    ) -> Option<OwnSegs<'a>> {
        if self.owner_locked.get() {
            return None;
        }
        // Flagged before the lock is taken and cleared after it is released, so a handler
        // that runs in between sees the flag.
        self.owner_locked.set(true);
        compiler_fence(Ordering::SeqCst);
        match take(self.segs()) {
            Some(guard) => Some(OwnSegs { heap: self, guard: Some(guard) }),
            None => {
                compiler_fence(Ordering::SeqCst);
                self.owner_locked.set(false);
                None
            }
        }
    }

    /// Takes `page` (ours, empty) out of its queue and gives it back to its segment. False,
    /// changing nothing, if a block of it was handed out meanwhile (by a signal handler's
    /// malloc on this thread, whose fast path pops from the direct table).
    fn give_back_page(&self, segs: &mut HeapSegs, page: &Page) -> bool {
        let class = page.class();
        // The fast path must not reach the page from here on: off the direct table first,
        // then the count checked again (a handler may have popped before).
        self.direct_off(class);
        compiler_fence(Ordering::SeqCst);
        if page.used() != 0 {
            self.queue_changed(class);
            return false;
        }
        let area = page.area();
        self.queue_unlink(class, page);
        self.queue_changed(class);
        // SAFETY: the page's segment is live and ours.
        let seg = unsafe { &*(segment::segment_base(area) as *const Segment) };
        segs.release_page(seg, seg.page_index(area));
        true
    }

    /// Gives every page of ours with no block in use back to its segment, even the only page
    /// of a size class (which the free path keeps). True if any was given back.
    fn release_empty_pages(&self) -> bool {
        let _errno = os::ErrnoGuard::new();
        let mut released = false;
        let Some(mut segs) = self.lock_own() else { return false };
        for queue in &self.bins {
            let mut p = queue.first();
            while !p.is_null() {
                // SAFETY: pages in our queues are live descriptors in segments we own.
                let page = unsafe { &*p };
                p = page.next.get();
                page.collect_thread_free();
                if page.used() == 0 && self.give_back_page(&mut segs, page) {
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

impl Node for Page {
    fn links(&self) -> (&Cell<*mut Self>, &Cell<*mut Self>) {
        (&self.prev, &self.next)
    }
}
