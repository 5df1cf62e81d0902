//! Counters: what the allocator holds and what it asked of the kernel.
//!
//! System-call counters and reserved bytes are global atomics (they sit next to a system
//! call, which costs far more). Bytes in use are counted per thread with plain (relaxed
//! load + store, never read-modify-write) updates on the fast path and flushed into the global
//! figure on slow paths, where the peak is also taken; [`snapshot`] merges the unflushed
//! per-thread parts.

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
}

pub(crate) fn add_arena_mmap_bytes(delta: isize) {
    ARENA_MMAP_BYTES.fetch_add(delta, Relaxed);
}

/// A live large block of `delta` bytes appeared (negative: went away) or was resized.
pub(crate) fn add_large_bytes(delta: isize) {
    LARGE_BYTES.fetch_add(delta, Relaxed);
}

/// Adds `delta` bytes to the global in-use figure and raises the peak if needed.
pub(crate) fn flush_in_use(delta: isize) {
    if delta == 0 {
        return;
    }
    let now = IN_USE.fetch_add(delta, Relaxed) + delta;
    PEAK.fetch_max(now, Relaxed);
}

/// A per-thread in-use counter: only its owner writes it (no read-modify-write instruction),
/// anyone may read it.
#[derive(Default)]
pub(crate) struct LocalInUse(AtomicIsize);

impl LocalInUse {
    /// Owner only: adds `n` (may be negative).
    #[inline(always)]
    pub(crate) fn add(&self, n: isize) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// Owner only: moves the accumulated delta to the global figure.
    pub(crate) fn flush(&self) {
        let d = self.0.load(Relaxed);
        self.0.store(0, Relaxed);
        flush_in_use(d);
    }
    pub(crate) fn pending(&self) -> isize {
        self.0.load(Relaxed)
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
    /// Bytes of live anonymous mappings made by tidemalloc (large blocks, fallback segments).
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
}

/// Reads every counter; `pending` is the sum of the per-thread unflushed in-use deltas.
pub(crate) fn snapshot(pending: isize) -> Stats {
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
    }
}

/// Resets the peak to the current in-use figure (for measuring one phase of a program).
pub(crate) fn reset_peak() {
    PEAK.store(IN_USE.load(Relaxed), Relaxed);
}
