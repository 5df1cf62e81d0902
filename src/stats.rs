//! Counters: what the allocator holds and what it asked of the kernel.
//!
//! System-call counters and reserved bytes are global atomics (they sit next to a system
//! call, which costs far more). Bytes in use are counted per thread with plain (relaxed
//! load + store, never read-modify-write) updates on the fast path and flushed into the global
//! figure on slow paths, where the peak is also taken; [`snapshot`] merges the unflushed
//! per-thread parts.
//!
//! Where the memory is (pages in use, free pages, free spans, the large-block cache,
//! metadata) is kept in gauges: global atomics that the code changing that state updates on
//! its slow paths (a page taken from or given back to a segment, a segment made or returned,
//! the arena's spans after each locked operation, the cache after each put or take). No one
//! walks another thread's heap to find them.

use core::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

/// Global event counters: system calls by kind.
#[derive(Clone, Copy)]
#[allow(clippy::enum_variant_names)]
pub enum Counter {
    BrkCalls,
    MmapCalls,
    MunmapCalls,
    MremapCalls,
    MadviseCalls,
    /// madvise or munmap calls the kernel refused (the memory stayed as it was).
    ReleaseFailures,
}

const NCOUNTERS: usize = 6;

static COUNTERS: [AtomicUsize; NCOUNTERS] = [const { AtomicUsize::new(0) }; NCOUNTERS];
/// Bytes of live mappings made through `os` (segments from the mmap fallback, large blocks).
static MMAP_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Bytes of the program break that tidemalloc holds (grown minus returned).
static BRK_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Bytes of arena segments in anonymous mappings (the break not ours, or out of break).
static ARENA_MMAP_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Bytes of live large blocks (their mappings), and how many.
static LARGE_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Bytes in live blocks, as of the last flush of every thread.
static IN_USE: AtomicIsize = AtomicIsize::new(0);
/// Highest value `IN_USE` reached at a flush.
static PEAK: AtomicIsize = AtomicIsize::new(0);

pub(crate) fn count(c: Counter) {
    COUNTERS[c as usize].fetch_add(1, Relaxed);
}

pub(crate) fn add_mmap_bytes(delta: isize) {
    MMAP_BYTES.fetch_add(delta, Relaxed);
}

pub(crate) fn add_brk_bytes(delta: isize) {
    BRK_BYTES.fetch_add(delta, Relaxed);
    note_arena_peak();
}

pub(crate) fn add_arena_mmap_bytes(delta: isize) {
    ARENA_MMAP_BYTES.fetch_add(delta, Relaxed);
    note_arena_peak();
}

/// A live large block of `delta` bytes appeared (negative: went away) or was resized.
pub(crate) fn add_large_bytes(delta: isize) {
    LARGE_BYTES.fetch_add(delta, Relaxed);
}

/// Figures of where the memory is, each kept by the code that changes it.
#[derive(Clone, Copy)]
pub enum Gauge {
    /// Bytes of pages in use (pages taken from paged segments).
    PageBytes,
    /// Bytes of those pages carved into blocks.
    CarvedBytes,
    /// Free pages in paged segments.
    FreePages,
    /// Bytes of those free pages used since they were last released.
    FreePagesDirty,
    /// Live paged segments.
    Segments,
    /// Live huge spans, and the bytes of their blocks.
    HugeBlocks,
    HugeBytes,
    /// The arena's free spans: how many, bytes dirty, bytes clean.
    FreeSpans,
    FreeSpansDirty,
    FreeSpansClean,
    /// Freed large mappings kept for reuse, and their bytes.
    LargeCacheBlocks,
    LargeCacheBytes,
    /// Bytes mapped for heaps, and for the large-block registry.
    MetaHeaps,
    MetaLargeTable,
}

const NGAUGES: usize = 14;
static GAUGES: [AtomicIsize; NGAUGES] = [const { AtomicIsize::new(0) }; NGAUGES];
/// Highest `BRK_BYTES + ARENA_MMAP_BYTES` seen.
static ARENA_PEAK: AtomicIsize = AtomicIsize::new(0);

pub(crate) fn gauge_add(g: Gauge, delta: isize) {
    GAUGES[g as usize].fetch_add(delta, Relaxed);
}

/// Sets a gauge whose figure the caller holds whole (under its lock).
pub(crate) fn gauge_set(g: Gauge, value: usize) {
    GAUGES[g as usize].store(value as isize, Relaxed);
}

fn gauge(g: Gauge) -> usize {
    GAUGES[g as usize].load(Relaxed).max(0) as usize
}

fn note_arena_peak() {
    ARENA_PEAK.fetch_max(BRK_BYTES.load(Relaxed) + ARENA_MMAP_BYTES.load(Relaxed), Relaxed);
}

/// Adds `delta` bytes to the global in-use figure and raises the peak if needed.
pub(crate) fn flush_in_use(delta: isize) {
    if delta == 0 {
        return;
    }
    let now = IN_USE.fetch_add(delta, Relaxed) + delta;
    PEAK.fetch_max(now, Relaxed);
}

/// A thread's in-use counters: only its owner writes them (no read-modify-write instruction),
/// anyone may read them.
///
/// Bytes handed out are kept as `clock`, counted from the heap profiler's next sample point:
/// negative until an allocation reaches it, so the malloc fast path's existing add gives the
/// sampling decision with one sign test. With profiling off the point is 2^62 bytes away.
#[derive(Default)]
pub(crate) struct LocalInUse {
    /// Bytes handed out, minus the position of the next sample point.
    clock: AtomicIsize,
    /// `base + clock` = bytes handed out by this heap, ever (wrapping).
    base: AtomicUsize,
    /// Bytes given back through this thread, ever (wrapping).
    freed: AtomicUsize,
    /// Bytes handed out minus bytes given back at the last flush.
    flushed: AtomicUsize,
}

/// Distance to a sample point that is never reached.
pub(crate) const NO_SAMPLE: usize = 1 << 62;

impl LocalInUse {
    /// Owner only: `n` bytes were handed out. True if that reached the sample point.
    #[inline(always)]
    pub(crate) fn alloc(&self, n: usize) -> bool {
        let c = self.clock.load(Relaxed).wrapping_add(n as isize);
        self.clock.store(c, Relaxed);
        c >= 0
    }
    /// Owner only: `n` bytes are handed out, unless that reaches the sample point (then
    /// nothing changes, and false).
    #[inline(always)]
    pub(crate) fn alloc_unsampled(&self, n: usize) -> bool {
        let c = self.clock.load(Relaxed).wrapping_add(n as isize);
        if c >= 0 {
            return false;
        }
        self.clock.store(c, Relaxed);
        true
    }
    /// Owner only: `n` bytes were given back.
    #[inline(always)]
    pub(crate) fn free(&self, n: usize) {
        self.freed.store(self.freed.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// Bytes handed out by this heap, ever.
    fn allocated(&self) -> usize {
        self.base.load(Relaxed).wrapping_add(self.clock.load(Relaxed) as usize)
    }
    /// Owner only: puts the next sample point `distance` bytes ahead (at most NO_SAMPLE).
    pub(crate) fn set_sample_distance(&self, distance: usize) {
        let d = distance.min(NO_SAMPLE) as isize;
        let a = self.allocated();
        self.base.store(a.wrapping_add(d as usize), Relaxed);
        self.clock.store(-d, Relaxed);
    }
    /// Owner only: moves the sample point `n` bytes closer (bytes allocated elsewhere, charged
    /// to the sampling clock without counting as handed out here). True if it is reached.
    pub(crate) fn charge(&self, n: usize) -> bool {
        let c = self.clock.load(Relaxed).wrapping_add(n as isize);
        self.base.store(self.base.load(Relaxed).wrapping_sub(n), Relaxed);
        self.clock.store(c, Relaxed);
        c >= 0
    }
    /// Owner only: moves the accumulated delta to the global figure.
    pub(crate) fn flush(&self) {
        let net = self.allocated().wrapping_sub(self.freed.load(Relaxed));
        let d = net.wrapping_sub(self.flushed.load(Relaxed)) as isize;
        self.flushed.store(net, Relaxed);
        flush_in_use(d);
    }
    /// The delta not yet flushed. Read by any thread: the loads are not one snapshot, so a
    /// read racing with the owner may be off by what the owner is changing.
    pub(crate) fn pending(&self) -> isize {
        let net = self.allocated().wrapping_sub(self.freed.load(Relaxed));
        net.wrapping_sub(self.flushed.load(Relaxed)) as isize
    }
}

/// A copy of all counters at one moment. `repr(C)`: it is also the C header's
/// `struct tidemalloc_stats` (same fields, same order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Stats {
    /// Bytes in live blocks (block-size granular, so at least what callers asked for).
    pub in_use: usize,
    /// Highest `in_use` seen (sampled on slow paths: exact to within a page per thread).
    pub peak_in_use: usize,
    /// Bytes of the program break held by tidemalloc.
    pub reserved_brk: usize,
    /// Bytes of live anonymous mappings made by tidemalloc (large blocks and their cache,
    /// arena segments in mappings, metadata).
    pub reserved_mmap: usize,
    /// Live large blocks (each its own mapping).
    pub large_blocks: usize,
    /// Number of brk calls that moved or tried to move the break.
    pub brk_calls: usize,
    /// Number of mmap calls.
    pub mmap_calls: usize,
    /// Number of munmap calls.
    pub munmap_calls: usize,
    /// Number of mremap calls.
    pub mremap_calls: usize,
    /// Number of madvise calls.
    pub madvise_calls: usize,
    /// Number of madvise and munmap calls the kernel refused (locked memory, mapping
    /// limits): that memory stayed resident and is treated as dirty.
    pub release_failures: usize,
    /// Bytes of the arena held in anonymous mappings (segments taken from mmap because the
    /// break is not tidemalloc's, or could not grow). With `reserved_brk`: the arena.
    pub reserved_arena_mmap: usize,
    /// Bytes of live large blocks (each its own mapping; the cache of freed ones excluded).
    /// Also counted in `in_use`.
    pub large_bytes: usize,
    // ---- where the memory is (appended; the C header mirrors the order) ----
    /// Bytes of the arena pages that hold blocks of a size class (whole pages, taken from
    /// segments and not yet given back).
    pub page_bytes: usize,
    /// Free bytes inside those pages: free blocks (also those freed by other threads and not
    /// yet collected), room not yet carved into blocks, the tail no block fills. With the
    /// live small blocks (`in_use - large_bytes - huge_bytes`) they make `page_bytes`.
    pub free_in_pages: usize,
    /// Of `free_in_pages`, the room not yet carved into blocks: untouched (not resident) when
    /// the page was fresh; a page taken again before its release may still hold it resident.
    pub uncarved_in_pages: usize,
    /// Free pages inside segments that heaps hold (or that exited threads left).
    pub free_pages: usize,
    /// Bytes of those free pages used since they were last released: resident (at most this
    /// much) until released after the purge delay.
    pub free_pages_dirty: usize,
    /// Bytes of those free pages released or never used: not resident.
    pub free_pages_clean: usize,
    /// Segments (4 MiB each) that heaps hold or exited threads left, cut into pages.
    pub segments: usize,
    /// Live huge blocks: arena blocks larger than the largest size class, each a span of
    /// whole segments.
    pub huge_blocks: usize,
    /// Bytes of live huge blocks (also counted in `in_use`).
    pub huge_bytes: usize,
    /// Free spans of segments in the arena (runs of free segments).
    pub free_spans: usize,
    /// Bytes of free spans freed less than the purge delay ago (or whose release failed):
    /// resident, at most this much.
    pub free_spans_dirty: usize,
    /// Bytes of free spans released or never used: not resident.
    pub free_spans_clean: usize,
    /// Bytes of the arena (`reserved_brk + reserved_arena_mmap`) in none of `page_bytes`,
    /// the free pages, `huge_bytes`, the free spans and `meta_segment_headers`: the
    /// alignment padding below a run of the break, and free segments the span table could
    /// not track (released, never reused).
    pub arena_other: usize,
    /// Freed large mappings kept for reuse (at most the purge delay; resident).
    pub large_cache_blocks: usize,
    /// Bytes of those mappings.
    pub large_cache_bytes: usize,
    /// Metadata in the arena: the 8 KiB header (page descriptors) at the start of every
    /// segment and huge block.
    pub meta_segment_headers: usize,
    /// Metadata mapped for thread heaps (their page queues and segment lists).
    pub meta_heaps: usize,
    /// Metadata mapped for the large-block registry (a hash table of live large blocks).
    pub meta_large_table: usize,
    /// Bytes of `reserved_mmap` in none of `large_bytes`, `large_cache_bytes`,
    /// `reserved_arena_mmap`, `meta_heaps`, `meta_large_table` and `meta_prof`: mappings on
    /// their way out (a profile being written), or whose unmapping the kernel refused.
    pub mmap_other: usize,
    /// Highest `reserved_brk + reserved_arena_mmap` seen.
    pub reserved_arena_peak: usize,
    /// Heap profiler (`TIDEMALLOC_PROF`, `TIDEMALLOC_LEAKS`): samples recorded since start.
    pub prof_samples: usize,
    /// Heap profiler: bytes mapped for its stack table (0 when off; resident only as far as
    /// `prof_table_used`). Sampled blocks themselves are counted with the other blocks.
    pub meta_prof: usize,
    /// Heap profiler: bytes of the stack table holding stacks so far.
    pub prof_table_used: usize,
}

impl Stats {
    /// Every field by name, in the struct's order (the names of the JSON and XML output).
    pub fn fields(&self) -> [(&'static str, usize); 36] {
        [
            ("in_use", self.in_use),
            ("peak_in_use", self.peak_in_use),
            ("reserved_brk", self.reserved_brk),
            ("reserved_mmap", self.reserved_mmap),
            ("large_blocks", self.large_blocks),
            ("brk_calls", self.brk_calls),
            ("mmap_calls", self.mmap_calls),
            ("munmap_calls", self.munmap_calls),
            ("mremap_calls", self.mremap_calls),
            ("madvise_calls", self.madvise_calls),
            ("release_failures", self.release_failures),
            ("reserved_arena_mmap", self.reserved_arena_mmap),
            ("large_bytes", self.large_bytes),
            ("page_bytes", self.page_bytes),
            ("free_in_pages", self.free_in_pages),
            ("uncarved_in_pages", self.uncarved_in_pages),
            ("free_pages", self.free_pages),
            ("free_pages_dirty", self.free_pages_dirty),
            ("free_pages_clean", self.free_pages_clean),
            ("segments", self.segments),
            ("huge_blocks", self.huge_blocks),
            ("huge_bytes", self.huge_bytes),
            ("free_spans", self.free_spans),
            ("free_spans_dirty", self.free_spans_dirty),
            ("free_spans_clean", self.free_spans_clean),
            ("arena_other", self.arena_other),
            ("large_cache_blocks", self.large_cache_blocks),
            ("large_cache_bytes", self.large_cache_bytes),
            ("meta_segment_headers", self.meta_segment_headers),
            ("meta_heaps", self.meta_heaps),
            ("meta_large_table", self.meta_large_table),
            ("mmap_other", self.mmap_other),
            ("reserved_arena_peak", self.reserved_arena_peak),
            ("prof_samples", self.prof_samples),
            ("meta_prof", self.meta_prof),
            ("prof_table_used", self.prof_table_used),
        ]
    }

    /// Free bytes of the arena: inside pages in use, free pages, free spans.
    pub fn arena_free(&self) -> usize {
        self.free_in_pages
            + self.free_pages_dirty
            + self.free_pages_clean
            + self.free_spans_dirty
            + self.free_spans_clean
    }
}

/// Reads every counter; `pending` is the sum of the per-thread unflushed in-use deltas.
/// The gauges are read one by one while other threads change them: figures derived from
/// several may be off by what changed meanwhile (saturated at 0).
pub(crate) fn snapshot(pending: isize) -> Stats {
    let mut s = counters(pending);
    locate(&mut s);
    s
}

/// The counters that predate the gauges.
fn counters(pending: isize) -> Stats {
    let c = |k: Counter| COUNTERS[k as usize].load(Relaxed);
    let in_use = (IN_USE.load(Relaxed) + pending).max(0) as usize;
    Stats {
        in_use,
        peak_in_use: (PEAK.load(Relaxed).max(0) as usize).max(in_use),
        reserved_brk: BRK_BYTES.load(Relaxed).max(0) as usize,
        reserved_mmap: MMAP_BYTES.load(Relaxed).max(0) as usize,
        large_blocks: 0,
        brk_calls: c(Counter::BrkCalls),
        mmap_calls: c(Counter::MmapCalls),
        munmap_calls: c(Counter::MunmapCalls),
        mremap_calls: c(Counter::MremapCalls),
        madvise_calls: c(Counter::MadviseCalls),
        release_failures: c(Counter::ReleaseFailures),
        reserved_arena_mmap: ARENA_MMAP_BYTES.load(Relaxed).max(0) as usize,
        large_bytes: LARGE_BYTES.load(Relaxed).max(0) as usize,
        ..Stats::default()
    }
}

/// Fills in where the memory is, from the gauges and the counters already in `s`.
fn locate(s: &mut Stats) {
    use crate::segment::{HEADER_SIZE, SEGMENT_SIZE};
    s.page_bytes = gauge(Gauge::PageBytes);
    s.huge_blocks = gauge(Gauge::HugeBlocks);
    s.huge_bytes = gauge(Gauge::HugeBytes);
    let small_in_use = s.in_use.saturating_sub(s.large_bytes + s.huge_bytes);
    s.free_in_pages = s.page_bytes.saturating_sub(small_in_use);
    s.uncarved_in_pages = s.page_bytes.saturating_sub(gauge(Gauge::CarvedBytes));
    s.segments = gauge(Gauge::Segments);
    s.free_pages = gauge(Gauge::FreePages);
    s.free_pages_dirty = gauge(Gauge::FreePagesDirty);
    // Every paged segment is its header, pages in use and free pages.
    let page_area = s.segments * (SEGMENT_SIZE - HEADER_SIZE);
    s.free_pages_clean = page_area.saturating_sub(s.page_bytes + s.free_pages_dirty);
    s.free_spans = gauge(Gauge::FreeSpans);
    s.free_spans_dirty = gauge(Gauge::FreeSpansDirty);
    s.free_spans_clean = gauge(Gauge::FreeSpansClean);
    s.meta_segment_headers = (s.segments + s.huge_blocks) * HEADER_SIZE;
    let arena = s.reserved_brk + s.reserved_arena_mmap;
    let placed = page_area.max(s.page_bytes + s.free_pages_dirty)
        + s.huge_bytes
        + s.free_spans_dirty
        + s.free_spans_clean
        + s.meta_segment_headers;
    s.arena_other = arena.saturating_sub(placed);
    s.large_cache_blocks = gauge(Gauge::LargeCacheBlocks);
    s.large_cache_bytes = gauge(Gauge::LargeCacheBytes);
    s.meta_heaps = gauge(Gauge::MetaHeaps);
    s.meta_large_table = gauge(Gauge::MetaLargeTable);
    let mapped = s.large_bytes + s.large_cache_bytes + s.reserved_arena_mmap + s.meta_heaps + s.meta_large_table;
    s.mmap_other = s.reserved_mmap.saturating_sub(mapped);
    s.reserved_arena_peak = (ARENA_PEAK.load(Relaxed).max(0) as usize).max(arena);
}

/// Resets the peak to the current in-use figure (for measuring one phase of a program).
pub(crate) fn reset_peak() {
    PEAK.store(IN_USE.load(Relaxed), Relaxed);
}
