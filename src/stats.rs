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
