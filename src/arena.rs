//! Layer `arena`: the brk-backed region segments come from.
//!
//! **Who may move the break.** The break is one per process and nothing makes "read it, then
//! move it" atomic between two allocators: glibc's malloc reads its cached `__curbrk` and
//! calls brk with an absolute address under a lock we cannot share. If glibc's malloc is live
//! in the process (a Rust program whose `#[global_allocator]` is tidemalloc but whose C code
//! calls glibc's malloc; `libtidemalloc.so` loaded with dlopen), each allocator can cut the
//! other's memory. So the arena moves the break only when the process's `malloc` is
//! tidemalloc's own (LD_PRELOAD, `-ltidemalloc`, the static library, or a Rust program built
//! with the `override` feature): then glibc's malloc is never called. Otherwise it takes its
//! segments from aligned anonymous mappings, managed like brk memory (amortised steps, free
//! spans kept dirty for the purge delay), except that purging unmaps (as lowering the break
//! would), and never calls brk.
//!
//! The decision is made once, after initialisation is published ([`decide_brk`], called by
//! `after_init`): without the `override` feature there is no tidemalloc `malloc` and the
//! answer is no; with it, `dlsym(RTLD_DEFAULT, "malloc")` must lie in the object (executable
//! or shared library, per dladdr) that holds this code, i.e. be our own `malloc`.
//! Until then (the allocations of the dynamic loader and libc start-up, our own
//! initialisation) segments come from mmap; no lock is held while deciding, so a `malloc`
//! that dlsym makes on the way just gets mmap segments, and nothing deadlocks. A wrong "no"
//! (a non-PIE executable whose canonical PLT address of `malloc` dlsym returns) only costs
//! the break, never correctness.
//!
//! - The break grows in whole, aligned segments (the first step of a run pads to the segment
//!   alignment), amortised: the step grows with what the arena already holds.
//! - Before growing, the arena asks where the break really is: if another part of the program
//!   moved it (glibc's malloc serves C code in a Rust program and moves the same break), a new
//!   run starts there. The break is only lowered when it still ends exactly at our top, so it
//!   never drops below memory that is not ours.
//! - When brk cannot grow, segments come from aligned anonymous mappings; when that fails too
//!   the request fails and nothing else changes. Fallback segments are unmapped when freed.
//! - Free segments are kept in an address-ordered list of spans. A freed segment stays
//!   *dirty* (its pages still resident) for the purge delay, so a program that frees and
//!   allocates again reuses it without page faults; after the delay, or when dirty memory
//!   exceeds its cap, it is *purged*: cut off by lowering the break when it is the free top
//!   (beyond the trim threshold), released with madvise otherwise. RSS thus follows the live
//!   set within the delay. Purging runs on arena operations and on heaps' slow paths.
//! - A request that will fault fresh segments in (no free run fits it, or, for a huge block,
//!   the run it takes is partly clean) first releases as much of the oldest resident free
//!   memory, so churn does not pile resident free segments up to the dirty cap: RSS stays
//!   level where the live set does, at the price of those faults.
//! - The free spans' figures (how many, bytes dirty and clean) are published to the stats
//!   gauges each time the lock is released ([`Locked`]).

use crate::lock::Lock;
use crate::options::{self, Opt};
use crate::os;
use crate::segment::{SEGMENT_SHIFT, SEGMENT_SIZE};
use crate::stats::{self, Gauge};
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// A run of free segments inside the break.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    segs: usize,
    /// Pages may be resident (not zeroed); `since` is when it was freed (ms).
    dirty: bool,
    since: u64,
    /// A release of this dirty span failed at `since` (locked memory): it is tried again
    /// only once the purge delay has passed since.
    failed: bool,
}

impl Span {
    fn end(&self) -> usize {
        self.start + (self.segs << SEGMENT_SHIFT)
    }
}

const NO_SPAN: Span = Span { start: 0, segs: 0, dirty: false, since: 0, failed: false };

/// Most free spans tracked; beyond it a freed span is purged at once and its address range
/// is not reused (not seen in practice: spans coalesce).
const MAX_SPANS: usize = 4096;
/// Largest amortisation step, in segments.
const MAX_STEP: usize = 16;

struct Arena {
    /// Free spans, sorted by address; adjacent spans only where their state differs.
    spans: [Span; MAX_SPANS],
    nspans: usize,
    /// Bytes in dirty spans.
    dirty_bytes: usize,
    /// The break before the alignment padding of the current run.
    run_base: usize,
    /// First (aligned) byte of the current run.
    run_start: usize,
    /// End of the current run; 0 when there is none.
    top: usize,
    /// Segments currently held from the break.
    held: usize,
    /// Segments mapped by [`Arena::grow_mmap`] (when the break is not ours).
    held_mmap: usize,
}

static ARENA: Lock<Arena> = Lock::new(Arena {
    spans: [NO_SPAN; MAX_SPANS],
    nspans: 0,
    dirty_bytes: 0,
    run_base: 0,
    run_start: 0,
    top: 0,
    held: 0,
    held_mmap: 0,
});

/// The arena, locked: publishes the free spans' figures when released, since they change
/// only under the lock.
struct Locked(spin::mutex::SpinMutexGuard<'static, Arena>);

impl core::ops::Deref for Locked {
    type Target = Arena;
    fn deref(&self) -> &Arena {
        &self.0
    }
}

impl core::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Arena {
        &mut self.0
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        self.0.publish();
    }
}

fn lock() -> Locked {
    Locked(ARENA.lock())
}

fn try_lock() -> Option<Locked> {
    ARENA.try_lock().map(Locked)
}

/// When the oldest dirty span is due for purging (ms), 0 when nothing is dirty: lets the
/// heaps' slow paths skip the arena lock.
static PURGE_DUE: AtomicU64 = AtomicU64::new(0);

const BRK_UNDECIDED: u8 = 0;
const BRK_YES: u8 = 1;
const BRK_NO: u8 = 2;
/// Whether the arena may move the program break (see the module header).
static BRK_MODE: AtomicU8 = AtomicU8::new(BRK_UNDECIDED);

/// Whether the arena moves the program break (false until [`decide_brk`] said yes).
#[inline]
pub fn uses_brk() -> bool {
    BRK_MODE.load(Ordering::Relaxed) == BRK_YES
}

/// Decides, once, whether the arena may move the break: only when the process's `malloc` is
/// ours. Called after initialisation is published, holding no lock.
pub fn decide_brk() {
    if BRK_MODE.load(Ordering::Relaxed) != BRK_UNDECIDED {
        return;
    }
    // Not `c_api::malloc as usize`: in a shared library that address goes through the GOT,
    // which holds whatever `malloc` the process binds to. The object that holds this very
    // function is ours for sure, so the question is whether the global `malloc` is in it.
    #[cfg(feature = "override")]
    let ours = {
        let mine = os::object_base(decide_brk as *const () as usize);
        mine != 0 && os::object_base(os::global_symbol(c"malloc")) == mine
    };
    #[cfg(not(feature = "override"))]
    let ours = false;
    BRK_MODE.store(if ours { BRK_YES } else { BRK_NO }, Ordering::Relaxed);
}

/// Segments handed out by [`alloc_segments`].
pub struct Segments {
    pub base: *mut u8,
    /// From the mmap fallback (unmapped when freed) rather than the break.
    pub from_mmap: bool,
    /// Every byte reads as zero.
    pub zeroed: bool,
}

/// Takes `n` contiguous segments: free ones (with `resident_first`, those whose pages are
/// still resident first: for blocks that will be touched whole), then new ones from the
/// break, then from mmap. None when nothing can provide them.
pub fn alloc_segments(n: usize, resident_first: bool) -> Option<Segments> {
    let bytes = n.checked_mul(SEGMENT_SIZE)?;
    {
        let mut a = lock();
        let now = os::now_ms();
        a.purge(now, false);
        if let Some((p, fresh)) = a.take_first_fit(n, resident_first) {
            if resident_first && fresh > 0 {
                // The block will fault its fresh segments in: release as much of the oldest
                // resident memory in exchange, keeping RSS level (as below, when no run fits).
                a.purge_bytes(fresh << SEGMENT_SHIFT, now);
            }
            return Some(Segments { base: p as *mut u8, from_mmap: false, zeroed: fresh == n });
        }
        // No free run fits: fresh memory will be faulted in, so release as much resident
        // memory (the oldest freed) in exchange, keeping RSS level; released spans may join
        // into a fit.
        a.purge_bytes(bytes, now);
        if let Some((p, fresh)) = a.take_first_fit(n, resident_first) {
            return Some(Segments { base: p as *mut u8, from_mmap: false, zeroed: fresh == n });
        }
        if uses_brk() {
            if let Some(p) = a.grow(n) {
                return Some(Segments { base: p as *mut u8, from_mmap: false, zeroed: true });
            }
            // Out of break: give every dirty byte back before asking for more.
            a.purge(now, true);
        } else if BRK_MODE.load(Ordering::Relaxed) == BRK_NO
            && let Some(p) = a.grow_mmap(n)
        {
            return Some(Segments { base: p as *mut u8, from_mmap: false, zeroed: true });
        }
    }
    let p = os::mmap_aligned(bytes, SEGMENT_SIZE);
    if p.is_null() {
        return None;
    }
    stats::add_arena_mmap_bytes(bytes as isize);
    Some(Segments { base: p, from_mmap: true, zeroed: true })
}

/// Gives back `n` segments at `base`.
///
/// # Safety
/// The segments must have come from [`alloc_segments`] (with the same `n` and `from_mmap`)
/// and hold nothing anybody still uses.
pub unsafe fn free_segments(base: *mut u8, n: usize, from_mmap: bool) {
    let len = n << SEGMENT_SHIFT;
    if from_mmap {
        // SAFETY: per the contract, the mapping is ours and dead.
        // A mapping the kernel would not remove stays mapped and unused (counted as held).
        if unsafe { os::munmap(base, len) } {
            stats::add_arena_mmap_bytes(-(len as isize));
        }
        return;
    }
    let mut a = lock();
    let now = os::now_ms();
    let span = Span { start: base as usize, segs: n, dirty: true, since: now, failed: false };
    if !a.insert(span) {
        // Untracked: release its memory; the address range stays unused (if the release
        // fails, it stays resident, but nothing will ever read it as zero).
        // SAFETY: per the contract, the range is ours and dead.
        unsafe { os::madvise_free(base, len) };
        return;
    }
    a.dirty_bytes += len;
    a.purge(now, false);
}

/// Purges dirty segments whose delay has passed (cheap when none is due). Called from the
/// heaps' slow paths.
#[inline]
pub fn purge_if_due() {
    let due = PURGE_DUE.load(Ordering::Relaxed);
    if due != 0
        && os::now_ms() >= due
        && let Some(mut a) = try_lock()
    {
        a.purge(os::now_ms(), false);
    }
}

/// Purges every dirty segment and lowers the break as far as free segments allow, keeping
/// `pad` bytes. Returns true if memory was returned.
pub fn trim(pad: usize) -> bool {
    let mut a = lock();
    let now = os::now_ms();
    let purged = a.purge(now, true);
    if BRK_MODE.load(Ordering::Relaxed) == BRK_NO {
        // The arena lives in mappings: give back the never-used segments of the last steps too.
        let mut any = false;
        for i in (0..a.nspans).rev() {
            any |= a.unmap_span(i);
        }
        return any || purged;
    }
    a.trim_top(0, pad, now, true).is_some() || purged
}

/// The address range of the current brk run (for tests and diagnostics).
pub fn brk_run() -> (usize, usize) {
    let a = lock();
    (a.run_start, a.top)
}

/// Fork support: hold the arena lock across fork.
pub fn lock_for_fork() {
    crate::lock::hold(&ARENA);
}

/// Fork support: release the lock taken by [`lock_for_fork`].
///
/// # Safety
/// Only after [`lock_for_fork`], in the parent or the child; or in a fork child whoever
/// held the lock (see `lock::force_unlock`).
pub unsafe fn unlock_after_fork() {
    // SAFETY: per the contract, the lock was taken by lock_for_fork and no guard exists.
    unsafe { crate::lock::force_unlock(&ARENA) };
}

/// Fork support, in the child of a single-threaded fork: whether the arena's lock is held,
/// i.e. the fork came from a signal handler that interrupted an arena operation.
pub fn is_busy() -> bool {
    ARENA.is_locked()
}

/// Fork support, in such a child, after the lock was released: the free spans, the top and
/// the counts may be half updated (the break lowered but the top not yet, say), so they are
/// forgotten — the child leaks those free segments — and the next growth starts a new run
/// at the break as it really is.
pub fn forget_free_spans() {
    let mut a = lock();
    a.nspans = 0;
    a.dirty_bytes = 0;
    a.top = 0;
    a.run_start = 0;
    a.run_base = 0;
    PURGE_DUE.store(0, Ordering::Relaxed);
}

impl Arena {
    /// Publishes the free spans' figures to the stats gauges.
    fn publish(&self) {
        let free: usize = self.spans[..self.nspans].iter().map(|s| s.segs << SEGMENT_SHIFT).sum();
        stats::gauge_set(Gauge::FreeSpans, self.nspans);
        stats::gauge_set(Gauge::FreeSpansDirty, self.dirty_bytes);
        stats::gauge_set(Gauge::FreeSpansClean, free.saturating_sub(self.dirty_bytes));
    }

    /// Takes `n` segments from a run of adjacent free spans: with `resident_first`, the run
    /// that needs the fewest non-resident (clean) segments, the lowest such; otherwise the
    /// lowest run (low addresses keep the top of the break free to trim). Returns the address
    /// and how many of the segments were not resident (and will be faulted in).
    fn take_first_fit(&mut self, n: usize, resident_first: bool) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, usize)> = None; // (fresh, first, last)
        for i in 0..self.nspans {
            let (mut j, mut left, mut fresh) = (i, n, 0);
            loop {
                let s = &self.spans[j];
                let take = left.min(s.segs);
                left -= take;
                if !s.dirty {
                    fresh += take;
                }
                if left == 0 || j + 1 == self.nspans || s.end() != self.spans[j + 1].start {
                    break;
                }
                j += 1;
            }
            if left == 0 && best.is_none_or(|b| fresh < b.0) {
                best = Some((fresh, i, j));
                if fresh == 0 || !resident_first {
                    break;
                }
            }
        }
        let (_, first, last) = best?;
        let start = self.spans[first].start;
        let (mut left, mut fresh, mut emptied) = (n, 0, 0);
        for k in first..=last {
            let s = &mut self.spans[k];
            let take = left.min(s.segs);
            s.start += take << SEGMENT_SHIFT;
            s.segs -= take;
            left -= take;
            if s.dirty {
                self.dirty_bytes -= take << SEGMENT_SHIFT;
            } else {
                fresh += take;
            }
            if s.segs == 0 {
                emptied += 1;
            }
        }
        // Emptied spans are exactly the leading ones of the run.
        self.spans.copy_within(first + emptied..self.nspans, first);
        self.nspans -= emptied;
        Some((start, fresh))
    }

    /// Grows the break by at least `n` segments; the extra goes to the free list (clean).
    fn grow(&mut self, n: usize) -> Option<usize> {
        let cur = os::brk_current();
        let contiguous = self.top != 0 && cur == self.top;
        let start = if contiguous { cur } else { cur.checked_add(SEGMENT_SIZE - 1)? & !(SEGMENT_SIZE - 1) };
        let pad = options::get(Opt::TopPad).div_ceil(SEGMENT_SIZE);
        let want = n.max((self.held / 8).clamp(1, MAX_STEP)).saturating_add(pad);
        let mut got = 0;
        for step in [want, n] {
            let end = start.checked_add(step.checked_mul(SEGMENT_SIZE)?)?;
            // SAFETY: raising the break only adds memory above the current break.
            if end as isize > 0 && unsafe { os::brk_set(end) } {
                got = step;
                break;
            }
        }
        if got == 0 {
            return None;
        }
        if !contiguous {
            self.run_base = cur;
            self.run_start = start;
        }
        self.top = start + (got << SEGMENT_SHIFT);
        self.held += got;
        stats::add_brk_bytes((self.top - cur) as isize);
        if got > n {
            self.insert(Span {
                start: start + (n << SEGMENT_SHIFT),
                segs: got - n,
                dirty: false,
                since: 0,
                failed: false,
            });
        }
        Some(start)
    }

    /// Without the break: maps at least `n` new aligned segments (amortised like [`Arena::grow`]);
    /// the extra goes to the free list (clean). The mapping is kept for good: its segments
    /// are free spans like those of the break, purged with madvise.
    fn grow_mmap(&mut self, n: usize) -> Option<usize> {
        let want = n.max((self.held_mmap / 8).clamp(1, MAX_STEP));
        for step in [want, n] {
            let bytes = step.checked_mul(SEGMENT_SIZE)?;
            let p = os::mmap_aligned(bytes, SEGMENT_SIZE) as usize;
            if p == 0 {
                continue;
            }
            self.held_mmap += step;
            stats::add_arena_mmap_bytes(bytes as isize);
            if step > n {
                self.insert(Span {
                    start: p + (n << SEGMENT_SHIFT),
                    segs: step - n,
                    dirty: false,
                    since: 0,
                    failed: false,
                });
            }
            return Some(p);
        }
        None
    }

    /// Unmaps free span `i` (only when the arena lives in mappings: all of its spans are then
    /// pieces of our own mappings, and munmap takes any page range of them).
    /// False if the kernel refused (the span then stays, as it was).
    fn unmap_span(&mut self, i: usize) -> bool {
        let s = self.spans[i];
        // SAFETY: a free span holds no live block and lies in mappings of ours.
        if !unsafe { os::munmap(s.start as *mut u8, s.segs << SEGMENT_SHIFT) } {
            return false;
        }
        stats::add_arena_mmap_bytes(-((s.segs << SEGMENT_SHIFT) as isize));
        self.held_mmap -= s.segs;
        if s.dirty {
            self.dirty_bytes -= s.segs << SEGMENT_SHIFT;
        }
        self.remove(i);
        true
    }

    /// Purges the oldest dirty spans until at least `bytes` were released (or none is left).
    fn purge_bytes(&mut self, bytes: usize, now: u64) {
        let target = self.dirty_bytes.saturating_sub(bytes);
        // Each span is tried at most once (a failed one is not retried here).
        for _ in 0..self.nspans {
            if self.dirty_bytes <= target {
                break;
            }
            let Some(i) = self.oldest_purgeable(now) else { break };
            // Released to make room for a fit: keep the address range for it.
            self.purge_span(i, now, false);
        }
        self.trim_top(options::get(Opt::TrimThreshold), options::get(Opt::TopPad), now, false);
    }

    /// The dirty span freed longest ago, leaving out those whose release failed less than a
    /// purge delay before `now`.
    fn oldest_purgeable(&self, now: u64) -> Option<usize> {
        (0..self.nspans)
            .filter(|&i| {
                let s = &self.spans[i];
                s.dirty && (!s.failed || (s.since < now && Self::is_due(s, now)))
            })
            .min_by_key(|&i| self.spans[i].since)
    }

    /// Whether span `s` has waited out the purge delay at `now`.
    fn is_due(s: &Span, now: u64) -> bool {
        s.since.saturating_add(options::get(Opt::PurgeDelay) as u64) <= now
    }

    /// Releases the memory of dirty span `i`, which becomes clean (or, with `unmap` when the
    /// arena lives in mappings, is unmapped and forgotten). If the kernel refuses (locked
    /// memory), the span stays dirty — its pages keep their old contents, so it is never
    /// handed out as zeroed — and is tried again a purge delay from `now`.
    fn purge_span(&mut self, i: usize, now: u64, unmap: bool) -> bool {
        let s = self.spans[i];
        if unmap && BRK_MODE.load(Ordering::Relaxed) == BRK_NO && self.unmap_span(i) {
            return true;
        }
        // SAFETY: a free span holds no live block.
        if !unsafe { os::madvise_free(s.start as *mut u8, s.segs << SEGMENT_SHIFT) } {
            self.spans[i].since = now;
            self.spans[i].failed = true;
            return false;
        }
        self.dirty_bytes -= s.segs << SEGMENT_SHIFT;
        self.remove(i);
        self.insert(Span { dirty: false, since: 0, failed: false, ..s });
        true
    }

    /// Purges dirty spans freed more than the purge delay ago (all of them with `all`, and
    /// the oldest beyond the dirty cap), then lowers the break over a clean free top beyond
    /// the trim threshold. Returns true if anything was purged.
    fn purge(&mut self, now: u64, all: bool) -> bool {
        let delay = options::get(Opt::PurgeDelay) as u64;
        let cap = options::get(Opt::DirtyMax);
        let (threshold, pad) = (options::get(Opt::TrimThreshold), options::get(Opt::TopPad));
        // A due span at the top of the break goes back by lowering the break, which needs no
        // madvise (and works on locked memory too).
        let mut purged = self.trim_top(threshold, pad, now, all).is_some();
        // Each span is tried at most once: a failed release is retried a delay later.
        for _ in 0..self.nspans {
            let Some(i) = self.oldest_purgeable(now) else { break };
            if !(all || Self::is_due(&self.spans[i], now) || self.dirty_bytes > cap) {
                break;
            }
            purged |= self.purge_span(i, now, true);
        }
        let next = (0..self.nspans).filter(|&i| self.spans[i].dirty).map(|i| self.spans[i].since + delay).min();
        PURGE_DUE.store(next.map_or(0, |t| t.max(1)), Ordering::Relaxed);
        purged |= self.trim_top(threshold, pad, now, all).is_some();
        purged
    }

    /// Lowers the break over the free span at the top of the current run (clean, or dirty
    /// and due at `now`, or any with `all`) when it exceeds `threshold` bytes, keeping `pad`
    /// bytes. Returns the new top if the break went down.
    fn trim_top(&mut self, threshold: usize, pad: usize, now: u64, all: bool) -> Option<usize> {
        if self.nspans == 0 || self.top == 0 {
            return None;
        }
        let last = self.spans[self.nspans - 1];
        let releasable = !last.dirty || all || Self::is_due(&last, now);
        if !releasable || last.end() != self.top || last.segs << SEGMENT_SHIFT <= threshold {
            return None;
        }
        // Never lower the break under somebody else's memory.
        if os::brk_current() != self.top {
            return None;
        }
        let keep = pad.div_ceil(SEGMENT_SIZE).min(last.segs);
        let release = last.segs - keep;
        if release == 0 {
            return None;
        }
        let new_top = self.top - (release << SEGMENT_SHIFT);
        let run_gone = new_top == self.run_start;
        let target = if run_gone { self.run_base } else { new_top };
        // SAFETY: everything from `target` to the break is ours and free: the free span up to
        // the top, and (when the run is gone) the alignment padding below the run.
        if !unsafe { os::brk_set(target) } {
            return None;
        }
        stats::add_brk_bytes(-((self.top - target) as isize));
        if last.dirty {
            self.dirty_bytes -= release << SEGMENT_SHIFT;
        }
        self.held -= release;
        self.top = if run_gone { 0 } else { new_top };
        let i = self.nspans - 1;
        self.spans[i].segs = keep;
        if keep == 0 {
            self.remove(i);
        }
        Some(new_top)
    }

    /// Inserts a free span, merging it with adjacent spans of the same state. False if the
    /// list is full.
    fn insert(&mut self, s: Span) -> bool {
        let i = self.spans[..self.nspans].partition_point(|x| x.start < s.start);
        let joins = |a: &Span, b: &Span| a.end() == b.start && a.dirty == b.dirty;
        let merge_prev = i > 0 && joins(&self.spans[i - 1], &s);
        let merge_next = i < self.nspans && joins(&s, &self.spans[i]);
        match (merge_prev, merge_next) {
            (true, true) => {
                let next = self.spans[i];
                let p = &mut self.spans[i - 1];
                p.segs += s.segs + next.segs;
                p.since = p.since.max(s.since).max(next.since);
                p.failed |= s.failed | next.failed;
                self.remove(i);
            }
            (true, false) => {
                let p = &mut self.spans[i - 1];
                p.segs += s.segs;
                p.since = p.since.max(s.since);
                p.failed |= s.failed;
            }
            (false, true) => {
                let n = &mut self.spans[i];
                n.start = s.start;
                n.segs += s.segs;
                n.since = n.since.max(s.since);
                n.failed |= s.failed;
            }
            (false, false) => {
                if self.nspans == MAX_SPANS {
                    return false;
                }
                self.spans.copy_within(i..self.nspans, i + 1);
                self.spans[i] = s;
                self.nspans += 1;
            }
        }
        true
    }

    fn remove(&mut self, i: usize) {
        self.spans.copy_within(i + 1..self.nspans, i);
        self.nspans -= 1;
    }
}
