//! Layer `arena`: the brk-backed region segments come from.
//!
//! - The break grows in whole, aligned segments (the first step of a run pads to the segment
//!   alignment), amortised: the step grows with what the arena already holds.
//! - Before growing, the arena asks where the break really is: if another part of the program
//!   moved it (glibc's malloc serves C code in a Rust program and moves the same break), a new
//!   run starts there. The break is only lowered when it still ends exactly at our top, so it
//!   never drops below memory that is not ours.
//! - When brk cannot grow, segments come from aligned anonymous mappings; when that fails too
//!   the request fails and nothing else changes.
//! - Free segments are kept in an address-ordered list of spans (coalesced), always zeroed:
//!   each freed segment is either cut off by lowering the break (free top beyond the trim
//!   threshold) or released with madvise, so RSS follows the live set. Segments from the mmap
//!   fallback are unmapped when freed.

use crate::lock::Lock;
use crate::options::{self, Opt};
use crate::os;
use crate::segment::{SEGMENT_SHIFT, SEGMENT_SIZE};
use crate::stats;

/// A run of free, zeroed segments inside the break.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    segs: usize,
}

impl Span {
    fn end(&self) -> usize {
        self.start + (self.segs << SEGMENT_SHIFT)
    }
}

/// Most free spans tracked; beyond it a freed span is released with madvise and its address
/// range is not reused (never seen in practice: spans coalesce).
const MAX_SPANS: usize = 4096;
/// Largest amortisation step, in segments.
const MAX_STEP: usize = 16;

struct Arena {
    /// Free spans, sorted by address, none adjacent to another.
    spans: [Span; MAX_SPANS],
    nspans: usize,
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
    spans: [Span { start: 0, segs: 0 }; MAX_SPANS],
    nspans: 0,
    run_base: 0,
    run_start: 0,
    top: 0,
    held: 0,
});

/// Takes `n` contiguous zeroed segments. Returns their base and whether they came from the
/// mmap fallback, or None when neither the break nor mmap can provide them.
pub fn alloc_segments(n: usize) -> Option<(*mut u8, bool)> {
    let bytes = n.checked_mul(SEGMENT_SIZE)?;
    {
        let mut a = ARENA.lock();
        if let Some(p) = a.take_first_fit(n).or_else(|| a.grow(n)) {
            return Some((p as *mut u8, false));
        }
    }
    let p = os::mmap_aligned(bytes, SEGMENT_SIZE);
    (!p.is_null()).then_some((p, true))
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
    let start = base as usize;
    if !a.insert(Span { start, segs: n }) {
        // Untracked: release its memory; the address range stays unused.
        // SAFETY: per the contract, the range is ours and dead.
        unsafe { os::madvise_free(base, len) };
        return;
    }
    let cut = a.trim_top(options::get(Opt::TrimThreshold), options::get(Opt::TopPad));
    // What the trim cut off is gone; the rest of the range stays free inside the break.
    let kept_end = cut.map_or(start + len, |c| c.clamp(start, start + len));
    if kept_end > start {
        // SAFETY: that part of the freed range is still ours, and dead.
        unsafe { os::madvise_free(base, kept_end - start) };
    }
}

/// Lowers the break as far as free segments allow, keeping `pad` bytes. Returns true if
/// memory was returned.
pub fn trim(pad: usize) -> bool {
    ARENA.lock().trim_top(0, pad).is_some()
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
/// Only after [`lock_for_fork`], in the parent or the child.
pub unsafe fn unlock_after_fork() {
    // SAFETY: per the contract, the lock was taken by lock_for_fork and no guard exists.
    unsafe { crate::lock::force_unlock(&ARENA) };
}

impl Arena {
    /// Takes `n` segments from the lowest free span that has room.
    fn take_first_fit(&mut self, n: usize) -> Option<usize> {
        let i = (0..self.nspans).find(|&i| self.spans[i].segs >= n)?;
        let s = &mut self.spans[i];
        let p = s.start;
        s.start += n << SEGMENT_SHIFT;
        s.segs -= n;
        if s.segs == 0 {
            self.remove(i);
        }
        Some(p)
    }

    /// Grows the break by at least `n` segments; the extra goes to the free list.
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
            self.insert(Span { start: start + (n << SEGMENT_SHIFT), segs: got - n });
        }
        Some(start)
    }

    /// Lowers the break over the free span at the top of the current run when it exceeds
    /// `threshold` bytes, keeping `pad` bytes. Returns the address from which memory was
    /// returned, if the break went down.
    fn trim_top(&mut self, threshold: usize, pad: usize) -> Option<usize> {
        if self.nspans == 0 || self.top == 0 {
            return None;
        }
        let last = self.spans[self.nspans - 1];
        if last.end() != self.top || last.segs << SEGMENT_SHIFT <= threshold {
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

    /// Inserts a free span, merging it with adjacent ones. False if the list is full.
    fn insert(&mut self, s: Span) -> bool {
        let i = self.spans[..self.nspans].partition_point(|x| x.start < s.start);
        let merge_prev = i > 0 && self.spans[i - 1].end() == s.start;
        let merge_next = i < self.nspans && s.end() == self.spans[i].start;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.spans[i - 1].segs += s.segs + self.spans[i].segs;
                self.remove(i);
            }
            (true, false) => self.spans[i - 1].segs += s.segs,
            (false, true) => {
                self.spans[i].start = s.start;
                self.spans[i].segs += s.segs;
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
