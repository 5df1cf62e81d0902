//! Layer `segment`: 4 MiB-aligned segments taken from the arena and cut into pages, and the
//! lookup from any pointer to its segment.
//!
//! A segment's header (this struct, with one descriptor per page) sits at its first byte, so
//! `p & !(SEGMENT_SIZE - 1)` finds it. Which addresses hold live segment headers is recorded
//! in a map over the address space (one byte per 4 MiB, holding the segment's page shift):
//! `free` consults it before reading any header, so a foreign pointer is recognised without
//! touching memory that is not ours, and the same load gives the page size.
//!
//! Kinds: small (64 pages of 64 KiB, blocks up to 8 KiB), medium (8 pages of 512 KiB, blocks
//! up to 64 KiB), large (one 4 MiB page, blocks up to 512 KiB), and huge (a span of one or
//! more whole segments holding one block). All pages of a segment belong to one heap, named
//! by `thread_id`; huge segments belong to nobody (`thread_id == 0`).

use crate::page::Page;
use crate::stats::{self, Gauge};
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

pub const SEGMENT_SHIFT: u32 = 22;
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
pub const SEGMENT_MASK: usize = SEGMENT_SIZE - 1;
/// Bytes at the start of each segment taken by its header; page 0's blocks start here.
pub const HEADER_SIZE: usize = 16 << 10;
/// Most pages in one segment.
pub const MAX_PAGES: usize = 64;

/// How a segment is cut into pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Small = 0,
    Medium = 1,
    Large = 2,
    Huge = 3,
}

/// Kinds a heap keeps per-kind segment lists for (all but huge).
pub const PAGED_KINDS: usize = 3;

impl Kind {
    /// log2 of the page size.
    pub const fn page_shift(self) -> u32 {
        match self {
            Kind::Small => 16,
            Kind::Medium => 19,
            Kind::Large | Kind::Huge => SEGMENT_SHIFT,
        }
    }

    /// The paged kind whose pages hold blocks of `block_size` bytes.
    pub const fn for_block(block_size: usize) -> Kind {
        if block_size <= 8 << 10 {
            Kind::Small
        } else if block_size <= 256 << 10 {
            Kind::Medium
        } else {
            Kind::Large
        }
    }
}

/// The heap that owns a segment: the layer above gives it a type; here it is only a pointer.
pub enum OwnerHeap {}

/// Header of a segment. Other threads read `thread_id`, `kind` and the page descriptors
/// (a remote free), so the header is only reached through shared references: the fields
/// its owner changes are `Cell`s (changed by the owner under its heap's segment lock, or by
/// the holder of the abandoned list's lock), `thread_id` is atomic, and `kind`, `from_mmap`,
/// `page_count` and `span_segments` are fixed from `init` until the segment goes back.
#[repr(C)]
pub struct Segment {
    /// Page descriptors (only `page_count` are meaningful). First, so that `free` finds a
    /// page's descriptor at the segment's base plus its index times 128.
    pub pages: [Page; MAX_PAGES],
    /// Owning thread (`os::thread_id`), 0 for none (huge, or abandoned by an exited thread).
    pub thread_id: AtomicUsize,
    /// Owning heap (null when abandoned or huge); opaque at this layer.
    pub heap: Cell<*mut OwnerHeap>,
    pub kind: Kind,
    /// log2 of the page size (`kind.page_shift()`), kept here so `free` finds the page with
    /// one load.
    pub page_shift: u8,
    /// Came from the mmap fallback rather than the program break.
    pub from_mmap: bool,
    /// Number of pages (1 << (SEGMENT_SHIFT - page_shift)).
    pub page_count: u32,
    /// Pages in use.
    pub used_pages: Cell<u32>,
    /// Bit i set: page i is free.
    pub free_mask: Cell<u64>,
    /// Bit i set: page i reads as zero (never used since the segment came zeroed from the
    /// arena, or released since): its blocks need no clearing for calloc.
    pub fresh_mask: Cell<u64>,
    /// Bit i set: page i was free and dirty at the last timed release; if it still is at the
    /// next one, it has been free for a whole purge delay and is released then.
    pub aged_mask: Cell<u64>,
    /// Length of the span in segments (1 but for huge spans).
    pub span_segments: usize,
    /// The heap profiler's two words for a sampled huge block (zero: not a sample).
    pub sample: [AtomicUsize; 2],
    /// Another thread freed a block here since a scan last looked (see `heap::scan_heaps`):
    /// the scan reads the page descriptors of only such segments.
    pub remote_frees: AtomicBool,
    /// Links in the owner's list of segments of this kind, or in the abandoned list.
    pub next: Cell<*mut Segment>,
    pub prev: Cell<*mut Segment>,
}

const _: () = assert!(core::mem::size_of::<Segment>() <= HEADER_SIZE);

/// `thread_id` of a huge span whose block has been freed (no thread has it).
pub const HUGE_FREED: usize = 2;

impl Segment {
    /// Writes a fresh header at `base` (`span_segments` segments from the arena; `zeroed`
    /// if every byte reads as zero) and returns it. The old contents of the header's memory
    /// are never trusted, whatever `zeroed` says: it is cleared whole.
    ///
    /// # Safety
    /// `base` must be segment aligned and exclusively ours.
    pub unsafe fn init(base: *mut u8, kind: Kind, span_segments: usize, from_mmap: bool, zeroed: bool) -> *mut Segment {
        let seg = base.cast::<Segment>();
        let page_count = 1u32 << (SEGMENT_SHIFT - kind.page_shift());
        let all = if page_count == 64 { u64::MAX } else { (1u64 << page_count) - 1 };
        // SAFETY: the memory is ours and nobody else knows it; zeroed memory is a valid bit
        // pattern for every field (null pointers, zero counters, atomics at zero, `Kind::Small`,
        // unused page descriptors); we set the rest, then count the segment.
        unsafe {
            ptr::write_bytes(base, 0, size_of::<Segment>());
            ptr::addr_of_mut!((*seg).kind).write(kind);
            ptr::addr_of_mut!((*seg).page_shift).write(kind.page_shift() as u8);
            ptr::addr_of_mut!((*seg).from_mmap).write(from_mmap);
            ptr::addr_of_mut!((*seg).page_count).write(page_count);
            ptr::addr_of_mut!((*seg).span_segments).write(span_segments);
            (*seg).free_mask.set(all);
            (*seg).fresh_mask.set(if zeroed { all } else { 0 });
            (*seg).account(1);
        }
        map_set(base as usize, kind.page_shift() as u8);
        seg
    }

    /// Counts the segment in the gauges as it appears (`sign` 1) or goes back to the arena
    /// (-1): a huge span as its block, a paged segment as its pages (free ones dirty unless
    /// fresh).
    fn account(&self, sign: isize) {
        if self.kind == Kind::Huge {
            stats::gauge_add(Gauge::HugeBlocks, sign);
            stats::gauge_add(Gauge::HugeBytes, sign * self.page_area(0).1 as isize);
            return;
        }
        let all = self.all_pages();
        let free = self.free_mask.get();
        stats::gauge_add(Gauge::Segments, sign);
        stats::gauge_add(Gauge::FreePages, sign * free.count_ones() as isize);
        stats::gauge_add(Gauge::FreePagesDirty, sign * self.mask_bytes(free & !self.fresh_mask.get()) as isize);
        stats::gauge_add(Gauge::PageBytes, sign * self.mask_bytes(!free & all) as isize);
    }

    /// The mask with a bit for every page.
    pub fn all_pages(&self) -> u64 {
        if self.page_count == 64 { u64::MAX } else { (1u64 << self.page_count) - 1 }
    }

    /// The pages in use (taken, not released).
    pub fn used_mask(&self) -> u64 {
        !self.free_mask.get() & self.all_pages()
    }

    /// Bytes of the pages whose bits are set in `mask`.
    fn mask_bytes(&self, mut mask: u64) -> usize {
        let mut bytes = 0;
        while mask != 0 {
            bytes += self.page_area(mask.trailing_zeros() as usize).1;
            mask &= mask - 1;
        }
        bytes
    }

    /// Start and end of page `i`'s block area.
    pub fn page_area(&self, i: usize) -> (*mut u8, usize) {
        let base = self as *const Segment as usize;
        let shift = self.kind.page_shift();
        let start = if i == 0 { base + HEADER_SIZE } else { base + (i << shift) };
        let end =
            if self.kind == Kind::Huge { base + self.span_segments * SEGMENT_SIZE } else { base + ((i + 1) << shift) };
        (start as *mut u8, end - start)
    }

    /// Index of the page that holds `p`.
    #[inline(always)]
    pub fn page_index(&self, p: *const u8) -> usize {
        ((p as usize) & SEGMENT_MASK) >> self.page_shift
    }

    /// The descriptor of the page that holds `p`, which lies in this segment whose page
    /// shift is `shift` (from [`lookup_fast`]).
    #[inline(always)]
    pub fn page_at(&self, p: *const u8, shift: u32) -> &Page {
        let i = ((p as usize) & SEGMENT_MASK) >> shift;
        // SAFETY: as in `page_of` (`shift` is this segment's page shift, at least 16).
        unsafe {
            core::hint::assert_unchecked(i < MAX_PAGES);
            self.pages.get_unchecked(i)
        }
    }

    /// The descriptor of the page that holds `p`, which lies in this segment.
    #[inline(always)]
    pub fn page_of(&self, p: *const u8) -> &Page {
        let i = self.page_index(p);
        // SAFETY: pages are at least 64 KiB (`page_shift` >= 16) and `p & SEGMENT_MASK` is
        // below 4 MiB, so `i` < 64 = MAX_PAGES.
        unsafe {
            core::hint::assert_unchecked(i < MAX_PAGES);
            self.pages.get_unchecked(i)
        }
    }

    /// Takes a free page (the lowest that was used before, else the lowest) and returns its
    /// index and whether it is fresh, or None if all are in use.
    pub fn take_page(&self) -> Option<(usize, bool)> {
        let free = self.free_mask.get();
        if free == 0 {
            return None;
        }
        // A used page first: its memory is resident already, a fresh one would add to RSS.
        let fresh_mask = self.fresh_mask.get();
        let used_before = free & !fresh_mask;
        let i = if used_before != 0 { used_before } else { free }.trailing_zeros() as usize;
        self.free_mask.set(free & !(1 << i));
        self.fresh_mask.set(fresh_mask & !(1 << i));
        self.aged_mask.set(self.aged_mask.get() & !(1 << i));
        self.used_pages.set(self.used_pages.get() + 1);
        let fresh = fresh_mask & (1 << i) != 0;
        let len = self.page_area(i).1 as isize;
        stats::gauge_add(Gauge::FreePages, -1);
        stats::gauge_add(Gauge::PageBytes, len);
        if !fresh {
            stats::gauge_add(Gauge::FreePagesDirty, -len);
        }
        Some((i, fresh))
    }

    /// Gives page `i` back to the segment (its memory stays resident: dirty).
    pub fn release_page(&self, i: usize) {
        self.pages[i].reset();
        self.free_mask.set(self.free_mask.get() | 1 << i);
        self.used_pages.set(self.used_pages.get() - 1);
        let len = self.page_area(i).1 as isize;
        stats::gauge_add(Gauge::FreePages, 1);
        stats::gauge_add(Gauge::PageBytes, -len);
        stats::gauge_add(Gauge::FreePagesDirty, len);
    }

    /// The free pages in `mask`, dirty until now, were released (madvise): they read as zero.
    pub fn mark_released(&self, mask: u64) {
        let fresh = self.fresh_mask.get();
        let newly = mask & !fresh & self.free_mask.get();
        self.fresh_mask.set(fresh | mask);
        stats::gauge_add(Gauge::FreePagesDirty, -(self.mask_bytes(newly) as isize));
    }

    /// Removes the segment from the lookup map (after this `free` treats pointers into it as
    /// foreign) and from the gauges: it goes back to the arena.
    pub fn unmap(&self) {
        map_set(self as *const Segment as usize, 0);
        self.account(-1);
    }

    /// Whether the segment map says a live segment starts here.
    #[cfg(debug_assertions)]
    pub fn is_mapped(&self) -> bool {
        lookup(self as *const Segment as *const u8).is_some()
    }
}

/// The segment that would hold `p` (not yet checked to exist).
#[inline(always)]
pub fn segment_base(p: *const u8) -> usize {
    p as usize & !SEGMENT_MASK
}

// ---- the segment map: one byte per 4 MiB of a 47-bit address space (32 MiB of .bss, of
// which only the bytes over the arena are ever touched) ----

/// Entries of the segment map.
pub const MAP_LEN: usize = 1 << (47 - SEGMENT_SHIFT);
/// For each 4 MiB of address space, the page shift of the live segment that starts there,
/// 0 if none: `free` finds whether a pointer is ours and its page with this one load.
static SEGMENT_MAP: [AtomicU8; MAP_LEN] = [const { AtomicU8::new(0) }; MAP_LEN];
/// Entries `free`'s fast path may consult: `MAP_LEN`, or 0 while the perturb byte is set, so
/// that every free takes the cold path (which fills the block) at no cost to the fast path.
static FAST_MAP_LEN: AtomicUsize = AtomicUsize::new(MAP_LEN);

/// Sends every free through [`lookup`] and its caller's cold path (`false`), or lets the
/// fast path use [`lookup_fast`] (`true`).
pub fn set_fast_free(on: bool) {
    FAST_MAP_LEN.store(if on { MAP_LEN } else { 0 }, Ordering::Relaxed);
}

fn map_set(base: usize, shift: u8) {
    let idx = base >> SEGMENT_SHIFT;
    debug_assert!(idx < MAP_LEN);
    SEGMENT_MAP[idx].store(shift, Ordering::Release);
}

/// The live segment that holds `p`, or None if `p` is not inside the first segment of one
/// of ours.
#[inline(always)]
pub fn lookup(p: *const u8) -> Option<&'static Segment> {
    let idx = (p as usize) >> SEGMENT_SHIFT;
    if idx >= MAP_LEN || SEGMENT_MAP[idx].load(Ordering::Relaxed) == 0 {
        return None;
    }
    // SAFETY: the map marks only addresses where a live segment header is (never 0: no
    // mapping starts at address 0); headers are only reached through shared references.
    Some(unsafe { &*(segment_base(p) as *const Segment) })
}

/// [`lookup`] for `free`'s fast path: the page shift of the live segment that holds `p`
/// (then [`of`] is that segment), or 0 if there is none or the fast path is off
/// ([`set_fast_free`]).
#[inline(always)]
pub fn fast_page_shift(p: *const u8) -> u32 {
    let idx = (p as usize) >> SEGMENT_SHIFT;
    if idx >= FAST_MAP_LEN.load(Ordering::Relaxed) {
        return 0;
    }
    // SAFETY: FAST_MAP_LEN is MAP_LEN or 0, so `idx` is in bounds.
    unsafe { SEGMENT_MAP.get_unchecked(idx) }.load(Ordering::Relaxed) as u32
}

/// The segment that holds `p`, which [`fast_page_shift`] or [`lookup`] found.
///
/// # Safety
/// One of them said a live segment holds `p`.
#[inline(always)]
pub unsafe fn of(p: *const u8) -> &'static Segment {
    // SAFETY: per the contract a live segment header is there; headers are only reached
    // through shared references.
    unsafe { &*(segment_base(p) as *const Segment) }
}
