//! The segment side of one heap (`HeapSegs`): its segments per kind, taking and giving back
//! their pages, keeping or freeing empty segments, and releasing free pages (after the purge
//! delay, beyond the dirty cap, on `trim`); with the per-segment helpers the abandoned list
//! uses too (`release_free_pages`, `free_segment`). A leaf: it calls into no other file of
//! `heap` (it knows the `Heap` type only to record a segment's owner).

use super::Heap;
use crate::arena;
use crate::list::{List, Node};
use crate::options::{self, Opt};
use crate::os;
use crate::segment::{Kind, PAGED_KINDS, Segment};
use core::cell::Cell;
use core::sync::atomic::Ordering;

/// Segments with free pages looked at for a dirty one before a clean page is taken.
const DIRTY_SEARCH: usize = 8;
/// Empty segments a heap keeps per kind (against alloc/free churn at segment scale).
const KEEP_EMPTY: usize = 1;

/// Segments of one kind; those with free pages come first.
pub(super) type SegQueue = List<Segment>;

/// The segments a heap owns. The owner changes them on slow paths and `trim` releases their
/// free memory from any thread, both under the lock around this struct.
pub struct HeapSegs {
    /// Segments of each paged kind.
    pub(super) queues: [SegQueue; PAGED_KINDS],
    /// Empty segments kept, per kind.
    pub(super) empty: [usize; PAGED_KINDS],
    /// Bytes of free pages still resident in segments that hold live blocks (approximate:
    /// it only decides when to release them).
    pub(super) dirty_pages: usize,
    /// When a release of free pages last failed (ms; 0 for never): beyond the dirty cap the
    /// next release waits a purge delay after it, so locked memory is not retried on every
    /// free.
    pub(super) release_failed_at: u64,
    /// `Heap::slow_paths` when a collector last looked (see `scan_heaps`).
    pub(super) seen_slow_paths: u32,
    /// Scans in a row that found the heap idle.
    pub(super) idle_scans: u32,
}

// SAFETY: the segments are only touched under the lock that owns the struct.
unsafe impl Send for HeapSegs {}

impl HeapSegs {
    /// The first segment of `kind` if it has a free page (segments with free pages come
    /// first).
    ///
    /// Among the first few, one whose free page is still resident (dirty) is preferred: a
    /// released (clean) one would be faulted in again while the dirty one stays resident.
    pub(super) fn with_free_page(&self, kind: Kind) -> Option<&'static Segment> {
        let first = self.queues[kind as usize].first();
        // SAFETY: segments in our queues are live and ours.
        let seg = (!first.is_null()).then(|| unsafe { &*first })?;
        if seg.free_mask.get() == 0 {
            return None;
        }
        let mut s = seg;
        for _ in 0..DIRTY_SEARCH {
            if s.free_mask.get() & !s.fresh_mask.get() != 0 {
                return Some(s);
            }
            let next = s.next.get();
            // SAFETY: as above.
            match (!next.is_null()).then(|| unsafe { &*next }) {
                Some(n) if n.free_mask.get() != 0 => s = n,
                _ => break,
            }
        }
        Some(seg)
    }

    /// A new, empty segment of `kind` from the arena, owned by `heap`.
    pub(super) fn new_segment(&mut self, kind: Kind, heap: &Heap) -> Option<&'static Segment> {
        let m = arena::alloc_segments(1, false)?;
        // SAFETY: the arena gave us an aligned segment nobody else uses.
        let seg = unsafe { &*Segment::init(m.base, kind, 1, m.from_mmap, m.zeroed) };
        // No other segment of this kind has a free page, so none is empty: adopting keeps it.
        self.adopt(seg, heap);
        Some(seg)
    }

    /// Takes the lowest free page of `seg`: its index and whether its memory is still fresh.
    pub(super) fn take_page(&mut self, seg: &Segment) -> Option<(usize, bool)> {
        if seg.used_pages.get() == 0 {
            self.empty[seg.kind as usize] -= 1;
        }
        let taken = seg.take_page()?;
        if !taken.1 {
            self.dirty_pages = self.dirty_pages.saturating_sub(seg.page_area(taken.0).1);
        }
        if seg.free_mask.get() == 0 {
            self.queues[seg.kind as usize].move_back(seg);
        }
        Some(taken)
    }

    /// Makes `seg` belong to `heap` and queues it (front if it has a free page).
    pub(super) fn adopt(&mut self, seg: &Segment, heap: &Heap) {
        seg.heap.set((heap as *const Heap as *mut Heap).cast());
        seg.thread_id.store(heap.thread_id.get(), Ordering::Release);
        let q = &self.queues[seg.kind as usize];
        if seg.free_mask.get() != 0 {
            q.push_front(seg);
        } else {
            q.push_back(seg);
        }
        if seg.used_pages.get() == 0 {
            self.empty[seg.kind as usize] += 1;
            self.trim_empty(KEEP_EMPTY);
        }
    }

    /// Gives page `i` back to `seg`; a segment left empty is kept or freed.
    pub(super) fn release_page(&mut self, seg: &Segment, i: usize) {
        let was_full = seg.free_mask.get() == 0;
        seg.release_page(i);
        if was_full {
            self.queues[seg.kind as usize].move_front(seg);
        }
        if seg.used_pages.get() == 0 {
            // Its free pages now count as an empty segment (kept or returned to the arena).
            self.dirty_pages = self.dirty_pages.saturating_sub(dirty_free_bytes(seg));
            self.empty[seg.kind as usize] += 1;
            self.trim_empty(KEEP_EMPTY);
        } else {
            // Free pages stay resident for reuse; the owner releases them after the purge
            // delay (see `Heap::purge_pages_if_due`), or at once beyond the dirty cap.
            self.dirty_pages += seg.page_area(i).1;
            if self.dirty_pages > options::get(Opt::DirtyMax) && self.may_retry_release() {
                self.release_free_pages(false);
            }
        }
    }

    /// Whether no release failed within the last purge delay.
    fn may_retry_release(&self) -> bool {
        self.release_failed_at == 0
            || os::now_ms() >= self.release_failed_at.saturating_add(options::get(Opt::PurgeDelay) as u64)
    }

    /// Releases the free pages of every segment (madvise); with `aged_only`, only those free
    /// since the last such call (so for a purge delay at least: see `Segment::aged_mask`).
    /// False if a release failed (the pages stay dirty, and are tried again later).
    pub(super) fn release_free_pages(&mut self, aged_only: bool) -> bool {
        let mut all = true;
        let mut dirty_left = 0;
        for q in &self.queues {
            let mut s = q.first();
            while !s.is_null() {
                // SAFETY: segments in our queues are live and ours (we hold their lock).
                let seg = unsafe { &*s };
                s = seg.next.get();
                all &= release_free_pages(seg, aged_only).is_ok();
                dirty_left += dirty_free_bytes(seg);
            }
        }
        self.dirty_pages = dirty_left;
        self.release_failed_at = if all { 0 } else { os::now_ms().max(1) };
        all
    }

    /// Frees empty segments until at most `keep` per kind remain. True if any was freed.
    fn trim_empty(&mut self, keep: usize) -> bool {
        let mut freed = false;
        for k in 0..PAGED_KINDS {
            let mut s = self.queues[k].first();
            while !s.is_null() && self.empty[k] > keep {
                // SAFETY: segments in our queues are live and ours.
                let seg = unsafe { &*s };
                s = seg.next.get();
                if seg.used_pages.get() == 0 {
                    self.empty[k] -= 1;
                    self.queues[k].unlink(seg);
                    free_segment(seg);
                    freed = true;
                }
            }
        }
        freed
    }

    /// Not the owner: releases the pages of our segments whose blocks other threads freed,
    /// all of them (see `Page::reset_if_all_freed_remotely`). True if any was.
    pub(super) fn reset_remote_freed_pages(&mut self) -> bool {
        let mut released = false;
        for q in &self.queues {
            let mut s = q.first();
            while !s.is_null() {
                // SAFETY: segments in our queues are live and ours (we hold their lock).
                let seg = unsafe { &*s };
                s = seg.next.get();
                // A page whose last block another thread freed after the previous scan lies
                // in a segment flagged by that free.
                if !seg.remote_frees.swap(false, Ordering::Relaxed) {
                    continue;
                }
                let mut bits = seg.used_mask();
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let page = &seg.pages[i];
                    if page.has_thread_free() && page.reset_if_all_freed_remotely() != 0 {
                        let (area, len) = seg.page_area(i);
                        // SAFETY: the page has no block any more: none live, none on a list.
                        if unsafe { os::madvise_free(area, len) } {
                            page.set_mem_is_zero();
                        }
                        released = true;
                    }
                }
            }
        }
        released
    }

    /// Releases the memory of every free page (madvise) and every empty segment. True if
    /// anything was released.
    pub(super) fn trim(&mut self) -> bool {
        let had_dirty = self.dirty_pages > 0;
        let freed = self.trim_empty(0);
        let all = self.release_free_pages(false);
        freed || (had_dirty && all)
    }
}

/// Bytes of the free pages of `seg` that have been used since they were last zero.
fn dirty_free_bytes(seg: &Segment) -> usize {
    let mut bits = seg.free_mask.get() & !seg.fresh_mask.get();
    let mut bytes = 0;
    while bits != 0 {
        bytes += seg.page_area(bits.trailing_zeros() as usize).1;
        bits &= bits - 1;
    }
    bytes
}

/// Releases (madvise) the memory of the free pages of `seg` that have been used (with
/// `aged_only`, those that were so at the last timed release already; the others become
/// aged); those released count as fresh (zeroed) again. The caller must own `seg`'s page
/// bookkeeping (its heap's segment lock, or the abandoned list's lock). Ok(true) if any
/// page was released; Err if a release failed (those pages stay dirty: their memory is
/// neither zero nor fresh).
pub(super) fn release_free_pages(seg: &Segment, aged_only: bool) -> Result<bool, ()> {
    let dirty = seg.free_mask.get() & !seg.fresh_mask.get();
    let mut bits = if aged_only { dirty & seg.aged_mask.get() } else { dirty };
    seg.aged_mask.set(dirty & !bits);
    let (mut released, mut failed) = (0u64, false);
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let (area, len) = seg.page_area(i);
        // SAFETY: a free page holds no live block; its memory is ours and unused.
        if unsafe { os::madvise_free(area, len) } {
            released |= 1 << i;
        } else {
            failed = true;
        }
    }
    seg.mark_released(released);
    if failed { Err(()) } else { Ok(released != 0) }
}

/// Returns a whole segment (or huge span) to the arena.
pub fn free_segment(seg: &Segment) {
    seg.unmap();
    let (base, n, from_mmap) = (seg as *const Segment as *mut u8, seg.span_segments, seg.from_mmap);
    // SAFETY: the segment is unreachable now (unmapped from the lookup, out of every queue).
    unsafe { arena::free_segments(base, n, from_mmap) };
}

impl Node for Segment {
    fn links(&self) -> (&Cell<*mut Self>, &Cell<*mut Self>) {
        (&self.prev, &self.next)
    }
}
