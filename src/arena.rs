//! Layer `arena`: the brk-backed region segments come from.
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

use crate::lock::Lock;
use crate::options::{self, Opt};
use crate::os;
use crate::segment::{SEGMENT_SHIFT, SEGMENT_SIZE};
use crate::stats;
use core::sync::atomic::{AtomicU64, Ordering};

/// A run of free segments inside the break.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    segs: usize,
    /// Pages may be resident (not zeroed); `since` is when it was freed (ms).
    dirty: bool,
    since: u64,
}

impl Span {
    fn end(&self) -> usize {
        self.start + (self.segs << SEGMENT_SHIFT)
    }
}

const NO_SPAN: Span = Span { start: 0, segs: 0, dirty: false, since: 0 };

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
}

static ARENA: Lock<Arena> = Lock::new(Arena {
    spans: [NO_SPAN; MAX_SPANS],
    nspans: 0,
    dirty_bytes: 0,
    run_base: 0,
    run_start: 0,
    top: 0,
    held: 0,
});

/// When the oldest dirty span is due for purging (ms), 0 when nothing is dirty: lets the
/// heaps' slow paths skip the arena lock.
static PURGE_DUE: AtomicU64 = AtomicU64::new(0);

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
        let mut a = ARENA.lock();
        let now = os::now_ms();
        a.purge(now, false);
        if let Some((p, fresh)) = a.take_first_fit(n, resident_first) {
            return Some(Segments { base: p as *mut u8, from_mmap: false, zeroed: fresh == n });
        }
        // No free run fits: fresh memory will be faulted in, so release as much resident
        // memory (the oldest freed) in exchange, keeping RSS level; released spans may join
        // into a fit.
        a.purge_bytes(bytes);
        if let Some((p, fresh)) = a.take_first_fit(n, resident_first) {
            return Some(Segments { base: p as *mut u8, from_mmap: false, zeroed: fresh == n });
        }
        if let Some(p) = a.grow(n) {
            return Some(Segments { base: p as *mut u8, from_mmap: false, zeroed: true });
        }
        // Out of break: give every dirty byte back before asking for more.
        a.purge(now, true);
    }
    let p = os::mmap_aligned(bytes, SEGMENT_SIZE);
    (!p.is_null()).then_some(Segments { base: p, from_mmap: true, zeroed: true })
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
        unsafe { os::munmap(base, len) };
        return;
    }
    let mut a = ARENA.lock();
    let now = os::now_ms();
    let span = Span { start: base as usize, segs: n, dirty: true, since: now };
    if !a.insert(span) {
        // Untracked: release its memory; the address range stays unused.
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
        && let Some(mut a) = ARENA.try_lock()
    {
        a.purge(os::now_ms(), false);
    }
}

/// Purges every dirty segment and lowers the break as far as free segments allow, keeping
/// `pad` bytes. Returns true if memory was returned.
pub fn trim(pad: usize) -> bool {
    let mut a = ARENA.lock();
    let purged = a.purge(os::now_ms(), true);
    a.trim_top(0, pad).is_some() || purged
}

/// The address range of the current brk run (for tests and diagnostics).
pub fn brk_run() -> (usize, usize) {
    let a = ARENA.lock();
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

impl Arena {
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
            self.insert(Span { start: start + (n << SEGMENT_SHIFT), segs: got - n, dirty: false, since: 0 });
        }
        Some(start)
    }

    /// Purges the oldest dirty spans until at least `bytes` were released (or none is left).
    fn purge_bytes(&mut self, bytes: usize) {
        let target = self.dirty_bytes.saturating_sub(bytes);
        while self.dirty_bytes > target {
            let Some(i) = self.oldest_dirty() else { break };
            self.purge_span(i);
        }
        self.trim_top(options::get(Opt::TrimThreshold), options::get(Opt::TopPad));
    }

    fn oldest_dirty(&self) -> Option<usize> {
        (0..self.nspans).filter(|&i| self.spans[i].dirty).min_by_key(|&i| self.spans[i].since)
    }

    /// Releases the memory of dirty span `i`, which becomes clean.
    fn purge_span(&mut self, i: usize) {
        let s = self.spans[i];
        // SAFETY: a free span holds no live block.
        unsafe { os::madvise_free(s.start as *mut u8, s.segs << SEGMENT_SHIFT) };
        self.dirty_bytes -= s.segs << SEGMENT_SHIFT;
        self.remove(i);
        self.insert(Span { dirty: false, since: 0, ..s });
    }

    /// Purges dirty spans freed more than the purge delay ago (all of them with `all`, and
    /// the oldest beyond the dirty cap), then lowers the break over a clean free top beyond
    /// the trim threshold. Returns true if anything was purged.
    fn purge(&mut self, now: u64, all: bool) -> bool {
        let delay = options::get(Opt::PurgeDelay) as u64;
        let cap = options::get(Opt::DirtyMax);
        let mut purged = false;
        while let Some(i) = self.oldest_dirty() {
            if !(all || self.spans[i].since + delay <= now || self.dirty_bytes > cap) {
                break;
            }
            self.purge_span(i);
            purged = true;
        }
        let next = (0..self.nspans).filter(|&i| self.spans[i].dirty).map(|i| self.spans[i].since + delay).min();
        PURGE_DUE.store(next.map_or(0, |t| t.max(1)), Ordering::Relaxed);
        self.trim_top(options::get(Opt::TrimThreshold), options::get(Opt::TopPad));
        purged
    }

    /// Lowers the break over the clean free span at the top of the current run when it
    /// exceeds `threshold` bytes, keeping `pad` bytes. Returns the new top if the break went
    /// down.
    fn trim_top(&mut self, threshold: usize, pad: usize) -> Option<usize> {
        if self.nspans == 0 || self.top == 0 {
            return None;
        }
        let last = self.spans[self.nspans - 1];
        if last.dirty || last.end() != self.top || last.segs << SEGMENT_SHIFT <= threshold {
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
                self.remove(i);
            }
            (true, false) => {
                let p = &mut self.spans[i - 1];
                p.segs += s.segs;
                p.since = p.since.max(s.since);
            }
            (false, true) => {
                let n = &mut self.spans[i];
                n.start = s.start;
                n.segs += s.segs;
                n.since = n.since.max(s.since);
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
