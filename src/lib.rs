//! tidemalloc: a malloc replacement.
//!
//! Small requests come from size-classed pages carved out of a brk-backed arena, served by
//! a heap per thread with lock-free fast paths; requests at or above a tunable threshold
//! (default 128 KiB) get their own private anonymous mapping, and realloc of those goes
//! through `mremap`.
//!
//! Use it as the global allocator of a Rust program:
//!
//! ```
//! use tidemalloc::TideMalloc;
//!
//! #[global_allocator]
//! static A: TideMalloc = TideMalloc;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     assert_eq!(v.iter().sum::<u64>(), 499500);
//! }
//! ```
//!
//! or, from C, through `libtidemalloc.so` (crate `tidemalloc-ffi`) with `LD_PRELOAD`. The
//! plain functions here ([`malloc`], [`free`], [`realloc`], ...) are what that crate forwards
//! to.
//!
//! Layers (each calls only those below it): this file (API) → `heap` → `page`, `segment` →
//! `arena` → `os`; `large` → `os`. Nothing in the allocator allocates through the global
//! allocator: under `LD_PRELOAD` that would be itself.

// No std on x86-64 (where the thread's heap word is assembly; elsewhere it is std's
// `thread_local!`): the C library is then free of std's panic machinery (see ffi/).
#![cfg_attr(all(not(test), target_arch = "x86_64"), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod arena;
mod background;
#[cfg(feature = "override")]
pub mod c_api;
mod heap;
mod large;
mod list;
mod lock;
#[doc(hidden)]
pub mod msg;
pub mod options;
mod os;
mod page;
pub mod prof;
mod report;
mod segment;
mod size_class;
mod stats;
mod tls;
mod vdso;

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;
use core::sync::atomic::Ordering;
pub use options::{MAX_MMAP_THRESHOLD, Opt};
pub use os::{errno, set_errno};
use page::Block;
use segment::Kind;
use size_class::{MAX_CLASS_SIZE, class_of};
pub use stats::Stats;

/// Every block is aligned to at least this.
pub const MIN_ALIGN: usize = 16;
/// Largest alignment served from the arena; larger ones get their own mapping.
const MAX_ARENA_ALIGN: usize = segment::SEGMENT_SIZE / 2;
/// Largest alignment that a power-of-two size class gives for free (page 0 of a segment
/// starts after the header).
const NATURAL_ALIGN: usize = segment::HEADER_SIZE;

/// The global allocator: `#[global_allocator] static A: TideMalloc = TideMalloc;`
pub struct TideMalloc;

// SAFETY: every method returns blocks of at least the layout's size and alignment that no one
// else uses, or null; dealloc/realloc accept exactly what alloc returned.
unsafe impl GlobalAlloc for TideMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN { malloc(layout.size()) } else { aligned_alloc(layout.align(), layout.size()) }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned.
        unsafe { free(p) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN {
            calloc(layout.size())
        } else {
            aligned_alloc_zeroed(layout.align(), layout.size())
        }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MIN_ALIGN {
            // SAFETY: the caller passes a live block of this allocator.
            unsafe { realloc(p, new_size) }
        } else {
            // SAFETY: as above.
            unsafe { realloc_aligned(p, layout.align(), new_size) }
        }
    }
}

#[inline(always)]
fn mmap_threshold() -> usize {
    options::get(Opt::MmapThreshold)
}

/// Allocates `size` bytes aligned to 16. Null when out of memory.
#[inline(always)]
pub fn malloc(size: usize) -> *mut u8 {
    match alloc_fast::<false>(size) {
        Some(b) => b.as_ptr(),
        None => alloc_rest::<false>(size),
    }
}

/// Allocates `size` zeroed bytes aligned to 16 (memory known fresh from the OS is not
/// cleared again). Null when out of memory.
#[inline(always)]
pub fn calloc(size: usize) -> *mut u8 {
    match alloc_fast::<true>(size) {
        Some(b) => b.as_ptr(),
        None => alloc_rest::<true>(size),
    }
}

/// The allocation fast path: a request below `direct_limit` (1 KiB or the mmap threshold)
/// from the first page of its class, found in the heap's direct table, when that has a free
/// block and the block does not reach the profiler's sample point. None otherwise: then
/// [`alloc_rest`] serves it (called in tail position, so the fast path keeps no frame).
#[inline(always)]
pub fn alloc_fast<const ZERO: bool>(size: usize) -> Option<ptr::NonNull<u8>> {
    if size >= options::direct_limit() {
        return None;
    }
    let (page, b, heap) = heap::direct_page(size);
    if b.is_null() {
        return None;
    }
    // SAFETY: a page with a free block is a heap's (the empty page has none), so the word is
    // this thread's heap; `b` is the head of the page's free list, just read, and not null.
    if unsafe { !(*heap).pop_unsampled(page, b, ZERO) } {
        return None;
    }
    ptr::NonNull::new(b.cast())
}

/// Every allocation of `size` bytes aligned to 16 that [`alloc_fast`] did not serve.
#[inline(never)]
pub fn alloc_rest<const ZERO: bool>(size: usize) -> *mut u8 {
    if size < options::small_limit()
        && let Some(heap) = heap::current()
    {
        // Also below the direct limit: the fast path left the block at the sample point
        // on its page, which `heap_alloc` samples without the slow path.
        return heap_alloc(heap, class_of(size), size, MIN_ALIGN, ZERO);
    }
    alloc_cold(size, ZERO)
}

/// A block of `class` for a request of `size` bytes aligned to `align` from `heap`: the
/// first page's free list, else the slow path. The one compare the profiler adds: whether
/// the heap's sampling clock passed its next sample point (never with profiling off).
#[inline(always)]
fn heap_alloc(heap: &heap::Heap, class: usize, size: usize, align: usize, zero: bool) -> *mut u8 {
    debug_assert!(class < size_class::NCLASSES);
    // SAFETY: `class_of` returns a class below NCLASSES.
    let page = unsafe { heap.bins.get_unchecked(class) }.first();
    // SAFETY: pages in a heap's queues are live descriptors owned by this thread.
    if !page.is_null() {
        // SAFETY: as above.
        let page = unsafe { &*page };
        let b = page.free_head();
        if !b.is_null() {
            // SAFETY: `b` is the head of the page's free list, just read.
            return unsafe { heap.pop_from(page, b, zero, move |pg, b| sample_small(heap, pg, b, size, align, zero)) };
        }
    }
    heap_alloc_slow(heap, class, size, align, zero)
}

/// [`heap_alloc`] when the first page has no free block (out of line: the fast path keeps
/// its few registers).
#[cold]
#[inline(never)]
fn heap_alloc_slow(heap: &heap::Heap, class: usize, size: usize, align: usize, zero: bool) -> *mut u8 {
    background::start_if_wanted(heap);
    heap.alloc_slow(class, zero, move |pg, b| sample_small(heap, pg, b, size, align, zero))
}

// ---- heap profiling (see `prof`) ----

/// The block `b` just taken from `page` for a request of `size` bytes reached the heap's
/// sample point: the request is served by a sampled block instead and `b` goes back; if no
/// sampled block can be had, `b` serves it unsampled.
#[cold]
#[inline(never)]
fn sample_small(heap: &heap::Heap, page: &page::Page, b: *mut Block, size: usize, align: usize, zero: bool) -> *mut u8 {
    // No sample while this one is taken: an allocation the unwinder makes, or a signal
    // handler's, must not come back here (the sample heap's lock, the unwinder's own).
    heap.pause_sampling();
    let charged = page.block_size();
    let sampled = if align <= MIN_ALIGN && size + SAMPLE_HEADER <= SAMPLE_HEAP_MAX {
        sampled_small_block(size, zero, charged)
    } else {
        sampled_block(size, align, zero, charged)
    };
    heap.restart_sample_clock();
    if let Some(q) = sampled {
        // SAFETY: `b` is the block just popped from our `page`, unseen by the program.
        let back = unsafe { heap.free_local(page, b) };
        debug_assert!(back);
        return q;
    }
    if zero {
        // SAFETY: `b` is a block of `block_size` bytes that we own.
        unsafe { ptr::write_bytes(b.cast::<u8>(), 0, page.block_size()) };
    }
    b.cast()
}

/// Bytes before a sampled small block's user pointer: its sample (tag, size).
const SAMPLE_HEADER: usize = 16;
/// Largest sampled block served by the sample heap (the blocks of its pages); bigger ones
/// (huge, large) keep their sample in their own headers. A mapping per sample for the
/// bigger classes was tried, to spare the sample heap their 4 MiB pages: it cost `server`
/// 22%, `realloc_strings` 19% and `large_churn` 18% (page faults on fresh mappings) for no
/// gain on the peak-RSS geomean.
const SAMPLE_HEAP_MAX: usize = MAX_CLASS_SIZE;

/// A sampled small block: from the sample heap, whose blocks all are samples (so a free
/// recognises one by its segment), with the sample in the 16 bytes before the pointer.
#[inline(never)]
fn sampled_small_block(size: usize, zero: bool, charged: usize) -> Option<*mut u8> {
    // At least one byte after the header: `malloc(0)`'s pointer must lie inside its block.
    let Some(need) = size.max(1).checked_add(SAMPLE_HEADER).filter(|&n| n <= MAX_CLASS_SIZE) else {
        prof::missed();
        return None;
    };
    let b = heap::with_sample_heap(|h| {
        let b = heap_alloc(h, class_of(need), need, MIN_ALIGN, zero);
        if !b.is_null() {
            heap::mark_sample_headers(b); // the page hands out pointers past the block start
        }
        b
    })
    .unwrap_or(ptr::null_mut());
    if b.is_null() {
        prof::missed();
        return None;
    }
    let s = prof::record(size, charged);
    // SAFETY: `b` is a fresh block of at least `need` bytes that only we know.
    unsafe { b.cast::<[usize; 2]>().write([s.tag, s.size]) };
    // SAFETY: as above.
    Some(unsafe { b.add(SAMPLE_HEADER) })
}

/// A large block (its own mapping) of `size` bytes recorded as a sample (`charged` bytes on
/// the clock): for aligned requests, and for samples too big for the sample heap. None if no
/// mapping could be made.
#[inline(never)]
fn sampled_block(size: usize, align: usize, zero: bool, charged: usize) -> Option<*mut u8> {
    let q = if large::may_map() { large::alloc(size.max(1), align, zero) } else { ptr::null_mut() };
    if q.is_null() {
        prof::missed();
        return None;
    }
    let s = prof::record(size, charged);
    // SAFETY: `q` is a live large block only this thread knows.
    unsafe { large::set_tag(q, (s.tag, s.size)) };
    Some(q)
}

/// Records the new huge block `b` (size bytes asked) as a sample if the clock says so.
fn sample_huge(b: *mut u8, size: usize) -> *mut u8 {
    if !b.is_null()
        && let Some(h) = cold_sample_due(size)
    {
        if let Some(seg) = segment::lookup(b) {
            let s = prof::record(size, size);
            seg.sample[0].store(s.tag, Ordering::Relaxed);
            seg.sample[1].store(s.size, Ordering::Relaxed);
        }
        h.restart_sample_clock();
    }
    b
}

/// Charges a cold-path allocation of `size` bytes to the calling thread's sampling clock
/// (making the thread's heap if it has none: a thread may allocate only large blocks). The
/// heap if the allocation is to be sampled: its sampling is then paused (see
/// `sample_small`) until the caller restarts the clock.
fn cold_sample_due(size: usize) -> Option<&'static heap::Heap> {
    if !prof::enabled() {
        return None;
    }
    let h = heap::current_or_create()?;
    if !h.charge_cold(size) {
        return None;
    }
    h.pause_sampling();
    Some(h)
}

/// Records the new large block `p` of `size` bytes as a sample if the clock says so.
#[inline(never)]
fn sample_large(p: *mut u8, size: usize) -> *mut u8 {
    if !p.is_null()
        && let Some(h) = cold_sample_due(size)
    {
        let s = prof::record(size, size);
        // SAFETY: `p` is a live large block only this thread knows.
        unsafe { large::set_tag(p, (s.tag, s.size)) };
        h.restart_sample_clock();
    }
    p
}

/// A freed or moved large block's tag: the end of its sample, if it was one.
fn release_tag(tag: large::Tag) {
    prof::release(prof::Sample { tag: tag.0, size: tag.1 });
}

/// Writes a heap profile (pprof's `profile.proto`, gzipped) to `path`, or with `None` to
/// `<TIDEMALLOC_PROF_PREFIX>.<pid>.<seq>.pb.gz`. False, with errno set, when profiling is off
/// (ENOSYS), another dump is running (EBUSY), or the file could not be written.
pub fn prof_dump(path: Option<&core::ffi::CStr>) -> bool {
    prof::dump(path)
}

/// Writes the leak report (the sampled blocks still live, by stack) to file descriptor `fd`.
pub fn leak_report(fd: i32) {
    prof::leak_report(fd);
}

#[cold]
#[inline(never)]
fn alloc_cold(size: usize, zero: bool) -> *mut u8 {
    // The first call of a thread lands here: make sure the options are read before the
    // threshold decides anything.
    heap::ensure_init();
    let p = alloc_cold_inner(size, zero);
    if !zero {
        perturb_new(p, size);
    }
    p
}

fn alloc_cold_inner(size: usize, zero: bool) -> *mut u8 {
    if size > isize::MAX as usize {
        return ptr::null_mut(); // no block can be that large: fail at once, trim nothing
    }
    if size >= mmap_threshold() && large::may_map() {
        let p = large::alloc(size, MIN_ALIGN, zero);
        if !p.is_null() {
            return sample_large(p, size);
        }
        // Out of address space or memory: give back what is free, then try again (the arena
        // may also serve it from free segments).
        heap::trim(0);
        let p = large::alloc(size, MIN_ALIGN, zero);
        if !p.is_null() || size > MAX_MMAP_THRESHOLD {
            return sample_large(p, size);
        }
    }
    alloc_arena(size, zero)
}

/// Allocates from the arena whatever the threshold says: a size class or a huge span.
fn alloc_arena(size: usize, zero: bool) -> *mut u8 {
    if size > MAX_CLASS_SIZE {
        return sample_huge(heap::alloc_huge(size, zero), size);
    }
    let class = class_of(size);
    heap::with_heap(|h| heap_alloc(h, class, size, MIN_ALIGN, zero)).unwrap_or(ptr::null_mut())
}

/// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory or
/// when `align` is not a power of two.
pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    let p = aligned_impl(align, size, false);
    perturb_new(p, size);
    p
}

// ---- the perturb byte (glibc's M_PERTURB / MALLOC_PERTURB_, a debugging aid) ----

/// With the perturb byte `c` set, fills the new block `p` (null allowed) with `!c`, as
/// glibc's malloc does (its mmapped chunks included): code that reads memory it never wrote
/// sees garbage, not zeros or an earlier block's data. Costs the malloc fast path nothing:
/// while the byte is set, every allocation takes the cold path (`small_limit` 0).
#[inline(always)]
fn perturb_new(p: *mut u8, size: usize) {
    let c = options::get(Opt::Perturb) as u8;
    if c != 0 && !p.is_null() {
        // SAFETY: `p` is a fresh block of at least `size` bytes.
        unsafe { ptr::write_bytes(p, !c, size) };
    }
}

/// `free` with the perturb byte `c` set, before the free itself: fills the block's usable
/// bytes with `c` (code that reads freed memory sees it). A pointer that is not a live arena
/// block is left alone for `free` to judge (a freed block keeps its mark, so a double free is
/// still caught). Large blocks go back to the system unfilled, as glibc's mmapped chunks do.
fn perturb_freed(seg: &segment::Segment, p: *mut u8, c: u8) {
    let page = seg.page_of(p);
    let b = page.block_of(p);
    // SAFETY: `b` is a carved block of a page in use.
    if !b.is_null() && page.in_use() && unsafe { !Block::is_marked(b) } {
        // SAFETY: the block is live (not marked free) and `usable_from` bytes long from `p`.
        unsafe { ptr::write_bytes(p, c, page.usable_from(b, p)) };
    }
}

/// Like [`aligned_alloc`], zeroed.
pub fn aligned_alloc_zeroed(align: usize, size: usize) -> *mut u8 {
    aligned_impl(align, size, true)
}

fn aligned_impl(align: usize, size: usize, zero: bool) -> *mut u8 {
    if !align.is_power_of_two() {
        return ptr::null_mut();
    }
    if align <= MIN_ALIGN {
        return alloc_impl_dyn(size, zero);
    }
    // A power-of-two class at least as large as the request is naturally aligned (see
    // below): the fast path's block of `align` bytes serves.
    if size <= align {
        let b = if zero { alloc_fast::<true>(align) } else { alloc_fast::<false>(align) };
        if let Some(b) = b {
            return b.as_ptr();
        }
    }
    heap::ensure_init();
    let threshold = mmap_threshold();
    if align > MAX_ARENA_ALIGN || (size >= threshold && large::may_map()) {
        return sample_large(large::alloc(size, align, zero), size);
    }
    // A power-of-two class at least as large as the request is naturally aligned.
    if size <= align && align <= NATURAL_ALIGN && align < threshold {
        // Through heap_alloc with the alignment, so a sampled block is aligned too.
        return heap::with_heap(|h| heap_alloc(h, class_of(align), align, align, zero)).unwrap_or(ptr::null_mut());
    }
    let Some(need) = size.checked_add(align - MIN_ALIGN) else { return ptr::null_mut() };
    if need > MAX_CLASS_SIZE {
        let b = sample_huge(heap::alloc_huge(need, zero), size);
        return offset_block(b, align);
    }
    let class = class_of(need);
    // The flag must be set by the heap's owner (or under the backup lock): do it inside.
    // A sampled block comes back aligned already (offset_block leaves it as it is).
    heap::with_heap(|h| offset_block(heap_alloc(h, class, size, align, zero), align)).unwrap_or(ptr::null_mut())
}

#[inline(always)]
fn alloc_impl_dyn(size: usize, zero: bool) -> *mut u8 {
    if zero { calloc(size) } else { malloc(size) }
}

/// Returns `b` rounded up to `align`, marking its page as handing out offset pointers.
fn offset_block(b: *mut u8, align: usize) -> *mut u8 {
    if b.is_null() {
        return b;
    }
    let p = (b as usize + align - 1) & !(align - 1);
    if p != b as usize {
        heap::mark_aligned(b);
    }
    p as *mut u8
}

/// Frees a block. Null is ignored. A pointer this allocator did not hand out, or a block
/// that is free already, is reported on stderr and the process aborts.
///
/// The fast path: the segment map (is the pointer ours, and the page size), the page, the
/// start test (a carved block's start), the owner, the freed mark, the push.
///
/// # Safety
/// `p` must be null or a live block from this allocator.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    let shift = segment::fast_page_shift(p);
    if shift == 0 {
        return free_cold(p);
    }
    // SAFETY: the map says a live segment holds `p`.
    let seg = unsafe { segment::of(p) };
    let page = seg.page_at(p, shift);
    let Some(b) = page.block_at(p) else { return free_offset(seg, page, p) };
    // SAFETY: forwarded contract; `b` is a carved block of `page`.
    unsafe { free_block_of(seg, page, b, p) }
}

/// [`free`] once `b`, the block `p` points into, is known to be a carved block of `page` in
/// `seg`.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
unsafe fn free_block_of(seg: &segment::Segment, page: &page::Page, b: *mut Block, p: *mut u8) {
    if seg.thread_id.load(Ordering::Relaxed) == os::thread_id() {
        // SAFETY: the segment is ours, so its heap is this thread's heap, and `b` is a carved
        // block of `page`.
        if unsafe { (*heap::owner_of(seg)).free_local(page, b) } {
            return;
        }
        bad_free(b, p);
    }
    free_remote(seg, page, b, p);
}

/// [`free`] of a pointer in one of our segments that is not a carved block's start: an
/// aligned or sampled block's pointer, or an invalid one.
#[cold]
#[inline(never)]
fn free_offset(seg: &segment::Segment, page: &page::Page, p: *mut u8) {
    let b = page.block_of(p);
    if b.is_null() {
        bad_free(b, p);
    }
    // SAFETY: `b` is a carved block of `page` (block_of said so); the caller's contract.
    unsafe { free_block_of(seg, page, b, p) }
}

/// [`free`] of a pointer the fast path's lookup refused: null, a large block, a foreign
/// pointer, or any pointer while the perturb byte is set.
#[cold]
#[inline(never)]
fn free_cold(p: *mut u8) {
    if p.is_null() {
        return;
    }
    let c = options::get(Opt::Perturb) as u8;
    if let Some(seg) = segment::lookup(p) {
        if c != 0 {
            perturb_freed(seg, p, c);
        }
        return free_offset(seg, seg.page_of(p), p);
    }
    let _errno = os::ErrnoGuard::new();
    if let Some(tag) = large::free(p) {
        release_tag(tag);
        return;
    }
    msg::fatal_pointer("free(): invalid pointer", p);
}

/// Free by a thread that does not own the block's page (or of an invalid pointer).
#[inline(never)]
fn free_remote(seg: &segment::Segment, page: &page::Page, b: *mut Block, p: *mut u8) {
    if b.is_null() {
        bad_free(b, p);
    }
    if seg.kind == Kind::Huge {
        let sample = [seg.sample[0].load(Ordering::Relaxed), seg.sample[1].load(Ordering::Relaxed)];
        if !heap::free_huge(seg) {
            bad_free(b, p);
        }
        prof::release(prof::Sample { tag: sample[0], size: sample[1] });
        return;
    }
    // Read before the push, after which the block may be handed out again.
    let sample = if seg.thread_id.load(Ordering::Relaxed) == heap::SAMPLE_TID {
        if p == b.cast() {
            bad_free(ptr::null_mut(), p); // a sampled block's pointer lies 16 bytes in
        }
        // SAFETY: a block of the sample heap starts with its sample (the pointer handed out
        // lies SAMPLE_HEADER bytes in); a freed one's words are list links, judged below.
        unsafe { b.cast::<[usize; 2]>().read() }
    } else {
        [0, 0]
    };
    let bs = page.block_size();
    // SAFETY: `b` is a carved block of `page` (validated by block_of).
    if unsafe { !page.push_thread(b) } {
        bad_free(b, p);
    }
    heap::note_remote_free(seg);
    prof::release(prof::Sample { tag: sample[0], size: sample[1] });
    match heap::current() {
        Some(h) => h.in_use.free(bs),
        None => stats::flush_in_use(-(bs as isize)),
    }
}

#[cold]
#[inline(never)]
fn bad_free(b: *mut Block, p: *mut u8) -> ! {
    if b.is_null() {
        msg::fatal_pointer("free(): invalid pointer (not the start of a block)", p);
    }
    msg::fatal_pointer("free(): double free detected", p);
}

/// Usable bytes of the block `p` (at least what was asked for); 0 for null.
///
/// # Safety
/// `p` must be null or a live block from this allocator.
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: forwarded contract.
    unsafe { usable_size_or_die(p, "malloc_usable_size(): invalid pointer") }
}

/// [`usable_size`], naming `what` (the caller's function) when `p` is not a block.
///
/// # Safety
/// As for [`usable_size`].
#[inline(always)]
unsafe fn usable_size_or_die(p: *const u8, what: &str) -> usize {
    match usable_fast(p) {
        Some(n) => n,
        // SAFETY: forwarded contract.
        None => unsafe { usable_size_slow(p, what) },
    }
}

/// The usable size of `p` if it is the start of a carved block (as `free`'s fast path
/// checks it: the usable size is the block size); None for any other pointer.
#[inline(always)]
fn usable_fast(p: *const u8) -> Option<usize> {
    let shift = segment::fast_page_shift(p);
    if shift == 0 {
        return None;
    }
    // SAFETY: the map says a live segment holds `p`.
    let page = unsafe { segment::of(p) }.page_at(p, shift);
    page.block_at(p.cast_mut())?;
    Some(page.block_size())
}

/// [`usable_size_or_die`] for what [`usable_fast`] did not answer.
///
/// # Safety
/// As for [`usable_size`].
#[inline(never)]
unsafe fn usable_size_slow(p: *const u8, what: &str) -> usize {
    if p.is_null() {
        return 0;
    }
    if let Some(seg) = segment::lookup(p) {
        let page = seg.page_of(p);
        let b = page.block_of(p as *mut u8);
        if b.is_null() {
            msg::fatal_pointer(what, p);
        }
        return page.usable_from(b, p as *mut u8);
    }
    if large::owns(p) {
        // SAFETY: `p` is a live large block.
        return unsafe { large::usable_size(p) };
    }
    msg::fatal_pointer(what, p)
}

/// Whether a block of `usable` bytes should serve `new_size` in place.
fn fits_in_place(usable: usize, new_size: usize) -> bool {
    new_size <= usable && new_size >= usable / 2
}

/// Resizes the block `p` to `new_size` bytes, keeping its contents (up to the smaller size).
/// `p == null` allocates. Returns null on failure, leaving `p` intact. In place when the
/// block already fits; large blocks grow with mremap; crossing the threshold copies; a large
/// block shrunk far below the threshold moves into the arena.
///
/// # Safety
/// `p` must be null or a live block from this allocator (alignment at most 16).
pub unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    if p.is_null() {
        return malloc(new_size);
    }
    if let Some(usable) = usable_fast(p)
        && fits_in_place(usable, new_size)
    {
        return p;
    }
    if segment::lookup(p).is_none() {
        if !large::owns(p) {
            msg::fatal_pointer("realloc(): invalid pointer", p);
        }
        if new_size >= mmap_threshold() / 2 {
            // SAFETY: `p` is a live large block of alignment <= 16.
            return unsafe { realloc_large(p, new_size) };
        }
    }
    // SAFETY: `p` is a live block (small, huge, or large being moved into the arena).
    let usable = unsafe { usable_size_or_die(p, "realloc(): invalid pointer") };
    if fits_in_place(usable, new_size) {
        return p;
    }
    // SAFETY: as above.
    unsafe { move_block(p, usable, malloc(new_size), new_size) }
}

/// Like [`realloc`] for a block allocated with alignment `align`, which the result keeps.
///
/// # Safety
/// `p` must be a live block from this allocator, allocated with alignment `align`.
pub unsafe fn realloc_aligned(p: *mut u8, align: usize, new_size: usize) -> *mut u8 {
    // SAFETY: per the contract.
    let usable = unsafe { usable_size_or_die(p, "realloc(): invalid pointer") };
    if fits_in_place(usable, new_size) {
        return p;
    }
    let is_large = segment::lookup(p).is_none();
    if is_large && align <= os::PAGE_SIZE && new_size >= mmap_threshold() / 2 {
        // SAFETY: a live large block whose alignment mremap keeps (it keeps the page offset).
        return unsafe { realloc_large(p, new_size) };
    }
    // SAFETY: per the contract.
    unsafe { move_block(p, usable, aligned_alloc(align, new_size), new_size) }
}

/// `large::realloc`, telling the profiler: a block whose mapping changed is a new allocation
/// (the old one's sample ends; the new one is charged to the clock).
///
/// # Safety
/// As for `large::realloc`.
unsafe fn realloc_large(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: per the contract `p` is a live large block.
    let (tag, before) = unsafe { (large::tag(p), large::usable_size(p)) };
    // SAFETY: forwarded contract.
    let q = unsafe { large::realloc(p, new_size) };
    // SAFETY: `q`, when not null, is the live resized block.
    if q.is_null() || (q == p && unsafe { large::usable_size(q) } == before) {
        return q;
    }
    if tag != large::Tag::default() {
        release_tag(tag);
        // SAFETY: as above; only this thread knows the block while realloc runs.
        unsafe { large::set_tag(q, large::Tag::default()) };
    }
    sample_large(q, new_size)
}

/// Copies `p` into `q` and frees `p`; if `q` is null, returns null and keeps `p`.
///
/// # Safety
/// `p` is a live block with `usable` bytes; `q` is null or a fresh block of `new_size` bytes.
unsafe fn move_block(p: *mut u8, usable: usize, q: *mut u8, new_size: usize) -> *mut u8 {
    if !q.is_null() {
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe {
            ptr::copy_nonoverlapping(p, q, usable.min(new_size));
            free(p);
        }
    }
    q
}

// ---- tuning and statistics ----

/// Sets the mmap threshold: requests of at least `bytes` get their own mapping, smaller ones
/// come from the arena. Any value from 0 to [`MAX_MMAP_THRESHOLD`]; false (no change) beyond.
pub fn set_mmap_threshold(bytes: usize) -> bool {
    options::set(Opt::MmapThreshold, bytes)
}

/// The current mmap threshold.
pub fn get_mmap_threshold() -> usize {
    mmap_threshold()
}

/// Sets a tunable (see [`Opt`]). False (no change) if the value is out of range.
pub fn set_option(opt: Opt, value: usize) -> bool {
    options::set(opt, value)
}

/// The current value of a tunable.
pub fn get_option(opt: Opt) -> usize {
    options::get(opt)
}

/// The counters (see [`Stats`]).
pub fn stats() -> Stats {
    let mut s = Stats { large_blocks: large::live_count(), ..stats::snapshot(heap::pending_in_use()) };
    let p = prof::prof_stats();
    s.prof_samples = p.samples;
    s.meta_prof = p.table_mapped;
    s.prof_table_used = p.table_bytes;
    s.mmap_other = s.mmap_other.saturating_sub(p.table_mapped);
    s
}

/// Checks the calling thread's heap for broken invariants (free lists acyclic and inside
/// their page, `used` matching the lists, no block on two lists, segments and the segment
/// map agreeing) and aborts with a message on the first violation. Compiled into debug
/// builds (and so the tests); a no-op in release builds.
pub fn check_invariants() {
    #[cfg(debug_assertions)]
    heap::check_invariants();
}

/// Starts a new peak measurement from the current in-use figure.
pub fn reset_peak() {
    stats::reset_peak();
}

/// Returns free memory to the OS (every thread's kept empty segments, the large-block cache,
/// the free top of the break beyond `pad` bytes). True if any memory was returned.
pub fn trim(pad: usize) -> bool {
    heap::trim(pad)
}

/// Whether the arena moves the program break: only when the process's `malloc` is
/// tidemalloc's (LD_PRELOAD, linked, or the `override` feature); otherwise its segments come
/// from anonymous mappings and glibc's malloc owns the break.
pub fn uses_brk() -> bool {
    arena::uses_brk()
}

/// The address range of tidemalloc's current run of the program break (start, end).
pub fn brk_range() -> (usize, usize) {
    arena::brk_run()
}

/// Writes the counters to file descriptor `fd` as text, one `label value` pair per line.
pub fn write_stats(fd: i32) {
    let mut b = msg::StackBuf::<{ report::TEXT_MAX }>::new();
    let _ = report::write_text(&stats(), &mut b);
    os::write_fd(fd, b.as_bytes());
}

/// Writes the counters to `out` as one line of JSON (what `TIDEMALLOC_SHOW_STATS=json`
/// prints at exit): `{"version":1,"pid":...,` then every field of [`Stats`] by name, and a
/// newline. Allocates nothing (unless `out` does); at most [`STATS_TEXT_MAX`] bytes.
pub fn stats_json<W: core::fmt::Write>(out: &mut W) -> core::fmt::Result {
    report::write_json(&stats(), os::pid(), out)
}

extern "C" fn prof_at_exit() {
    prof::at_exit();
}

/// Most bytes [`stats_json`], [`write_stats`] and [`format_info_xml`] write.
pub const STATS_TEXT_MAX: usize = report::TEXT_MAX;

/// Writes the counters as XML in the shape of glibc's `malloc_info`, with a `tidemalloc`
/// element holding every field of [`Stats`].
pub fn format_info_xml<W: core::fmt::Write>(out: &mut W) {
    let _ = report::write_xml(&stats(), out);
}

/// Runs `f` with the calling thread's sampling paused: what the dynamic loader allocates on
/// tidemalloc's behalf is not the program's.
fn unsampled<R>(f: impl FnOnce() -> R) -> R {
    let heap = heap::current_or_create();
    heap.inspect(|h| h.pause_sampling());
    let r = f();
    heap.inspect(|h| h.restart_sample_clock());
    r
}

/// For `libtidemalloc.so`'s ELF constructor: with profiling on and no unwinder in the process
/// yet (a C program), loads libgcc_s's. A constructor may call dlopen; malloc may not (see
/// `prof::load_unwinder`). Initialises tidemalloc here only if a profiling variable is set:
/// otherwise start-up is as without the constructor (the first malloc initialises, and
/// registers the fork handlers then, after those the program registered before it).
#[doc(hidden)]
pub fn load_profiler_unwinder() {
    if !heap::is_initialised() && os::getenv(b"TIDEMALLOC_PROF").is_none() && os::getenv(b"TIDEMALLOC_LEAKS").is_none()
    {
        return;
    }
    heap::ensure_init();
    if prof::enabled() {
        unsampled(|| prof::load_unwinder(true));
    }
}

/// Called once initialisation is published: registers what needs registering, and decides
/// whether the arena may move the program break (see `arena`).
fn after_init() {
    arena::decide_brk();
    background::init();
    if prof::enabled() {
        // Here, inside malloc, only a look-up (dlopen waits for `load_profiler_unwinder`).
        unsampled(|| prof::load_unwinder(false));
        // SAFETY: the handler has the required signature; atexit may allocate, which works
        // once initialisation is done.
        if unsafe { libc::atexit(prof_at_exit) } != 0 {
            eprint_noalloc!("tidemalloc: warning: atexit failed: no profile at exit\n");
        }
        prof::install_signal();
    }
    // A stats file alone turns the statistics on (as text unless SHOW_STATS says json).
    if report::load_from_env() || options::get(Opt::ShowStats) != 0 {
        // SAFETY: the handler has the required signature; atexit may allocate, which works
        // once initialisation is done.
        if unsafe { libc::atexit(report::at_exit) } != 0 {
            eprint_noalloc!("tidemalloc: warning: atexit failed: no statistics at exit\n");
        }
    }
}
