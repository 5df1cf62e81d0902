//! The stack table: one bucket per distinct call stack, with that stack's sampled counts.
//!
//! Lock-free so that a free in a signal handler, a dump in one, or a fork at any moment
//! cannot deadlock: a bucket is claimed with a fetch_add on `next`, filled, then entered in
//! an open-addressing index with a compare-exchange (its `published` flag, set after, tells
//! a dump it is complete). Buckets are never removed. The whole table is one anonymous
//! mapping made at start-up, touched page by page as stacks appear; bucket 0 is where
//! samples go once the table is full.
//!
//! Counts are estimates of the whole program's allocations (each sample weighs 1/p, p its
//! chance of being sampled); object counts are kept in 1/65536ths so weights need no
//! rounding to whole objects.

use super::stack::{MAX_DEPTH, Stack};
use crate::os;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// Buckets in the table (distinct stacks kept apart).
pub const MAX_BUCKETS: usize = 1 << 14;
const SLOTS: usize = 2 * MAX_BUCKETS;
/// Bucket of the samples whose stack found no room.
pub const OVERFLOW: u32 = 0;
/// Object counts are in units of 1/OBJ_ONE.
pub const OBJ_ONE: u64 = 1 << 16;

#[repr(C)]
pub struct Bucket {
    /// Set once the bucket is complete and in the index.
    published: AtomicBool,
    depth: AtomicU32,
    hash: AtomicU64,
    /// Estimated objects (in 1/OBJ_ONE) and bytes allocated since start.
    pub alloc_objs: AtomicU64,
    pub alloc_bytes: AtomicU64,
    /// Estimated objects and bytes live now.
    pub live_objs: AtomicI64,
    pub live_bytes: AtomicI64,
    /// The live figures at the last recorded peak (see `super::note_peak`).
    pub peak_objs: AtomicI64,
    pub peak_bytes: AtomicI64,
    /// Written before `published`, never after.
    frames: [AtomicUsize; MAX_DEPTH],
}

impl Bucket {
    /// The bucket's stack (innermost first).
    pub fn frames(&self, out: &mut [usize; MAX_DEPTH]) -> usize {
        let n = self.depth.load(Relaxed) as usize;
        for (o, f) in out.iter_mut().zip(&self.frames[..n]) {
            *o = f.load(Relaxed);
        }
        n
    }

    /// Frames in the bucket's stack.
    pub fn depth(&self) -> usize {
        self.depth.load(Relaxed) as usize
    }

    fn same_stack(&self, hash: u64, s: &Stack) -> bool {
        self.hash.load(Relaxed) == hash
            && self.depth.load(Relaxed) as usize == s.depth
            && self.frames[..s.depth].iter().zip(&s.frames[..s.depth]).all(|(a, b)| a.load(Relaxed) == *b)
    }
}

#[repr(C)]
struct Table {
    /// Buckets claimed so far.
    next: AtomicUsize,
    /// Bucket index + 1 per slot, 0 when empty.
    index: [AtomicU32; SLOTS],
    buckets: [Bucket; MAX_BUCKETS],
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(ptr::null_mut());

/// Bytes of the table's mapping (virtual; resident only as far as buckets are used).
pub const TABLE_BYTES: usize = size_of::<Table>().next_multiple_of(os::PAGE_SIZE);

/// Maps the table. False if the kernel refused (profiling then stays off).
pub fn init() -> bool {
    if !TABLE.load(Acquire).is_null() {
        return true; // a fork child took over an initialisation copied after this
    }
    let t = os::mmap_anon(TABLE_BYTES).cast::<Table>();
    if t.is_null() {
        return false;
    }
    // SAFETY: the mapping is zeroed, which is a valid Table (atomics and arrays of them).
    let table = unsafe { &*t };
    table.next.store(1, Relaxed); // bucket 0 is the overflow bucket, with no frames
    table.buckets[0].published.store(true, Relaxed);
    // Published once: an initialisation interrupted here, then taken over by a fork child
    // (see `heap::ensure_init`), finds the child's table when it resumes.
    if TABLE.compare_exchange(ptr::null_mut(), t, Release, Acquire).is_err() {
        // SAFETY: the mapping is ours, unpublished, and nothing points into it.
        let unmapped = unsafe { os::munmap(t.cast(), TABLE_BYTES) };
        // A failed unmap (counted as a release failure) leaves it mapped and unused.
        let _ = unmapped;
    }
    true
}

fn table() -> Option<&'static Table> {
    let t = TABLE.load(Acquire);
    // SAFETY: once published the table is never unmapped.
    if t.is_null() { None } else { Some(unsafe { &*t }) }
}

/// Bytes of the table that stacks have used so far (an upper bound on its resident part).
pub fn used_bytes() -> usize {
    table().map_or(0, |t| size_of::<AtomicU32>() * SLOTS + size_of::<Bucket>() * buckets_claimed(t))
}

fn buckets_claimed(t: &Table) -> usize {
    t.next.load(Relaxed).min(MAX_BUCKETS)
}

fn hash(s: &Stack) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &f in &s.frames[..s.depth] {
        h = (h ^ f as u64).wrapping_mul(0x100_0000_01B3).rotate_left(29);
    }
    h | 1
}

/// The bucket of stack `s`, entered if new; OVERFLOW once the table is full.
pub fn intern(s: &Stack) -> u32 {
    let Some(t) = table() else { return OVERFLOW };
    let h = hash(s);
    let mut mine: Option<usize> = None;
    let mut slot = h as usize & (SLOTS - 1);
    for _ in 0..SLOTS {
        let v = t.index[slot].load(Acquire);
        if v != 0 {
            if t.buckets[v as usize - 1].same_stack(h, s) {
                return v - 1; // a bucket we claimed but did not publish stays unused
            }
            slot = (slot + 1) & (SLOTS - 1);
            continue;
        }
        let id = match mine {
            Some(id) => id,
            None => {
                let id = t.next.fetch_add(1, Relaxed);
                if id >= MAX_BUCKETS {
                    return OVERFLOW;
                }
                fill(&t.buckets[id], h, s);
                mine = Some(id);
                id
            }
        };
        if t.index[slot].compare_exchange(0, id as u32 + 1, AcqRel, Acquire).is_ok() {
            t.buckets[id].published.store(true, Release);
            return id as u32;
        }
        // Someone took the slot: look at it again (it may hold our stack).
    }
    OVERFLOW
}

fn fill(b: &Bucket, h: u64, s: &Stack) {
    for (d, &f) in b.frames.iter().zip(&s.frames[..s.depth]) {
        d.store(f, Relaxed);
    }
    b.depth.store(s.depth as u32, Relaxed);
    b.hash.store(h, Relaxed);
}

/// The bucket with index `id` (from `intern`).
pub fn bucket(id: u32) -> Option<&'static Bucket> {
    table().and_then(|t| t.buckets.get(id as usize))
}

/// Calls `f` on every complete bucket.
pub fn for_each(f: impl FnMut(u32, &'static Bucket)) {
    for_each_below(usize::MAX, f);
}

/// Calls `f` on every complete bucket with an id below `limit` (a pass sized by an earlier
/// [`count`] sees no bucket made since).
pub fn for_each_below(limit: usize, mut f: impl FnMut(u32, &'static Bucket)) {
    let Some(t) = table() else { return };
    for id in 0..buckets_claimed(t).min(limit) {
        let b = &t.buckets[id];
        if b.published.load(Acquire) {
            f(id as u32, b);
        }
    }
}

/// Number of buckets claimed (an upper bound on the ids `for_each` passes).
pub fn count() -> usize {
    table().map_or(0, buckets_claimed)
}
