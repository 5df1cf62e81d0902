//! The invariant check of debug builds (`check_invariants`): the calling thread's heap, its
//! page queues and its segments. Reads the state of `mod.rs` and `segs`; nothing in `heap`
//! calls it.

use super::{Heap, current, owner_of};
use crate::page::EMPTY_PAGE;
use crate::segment;
use crate::size_class::table_indexes;
use core::sync::atomic::Ordering;

// ---- invariants (debug builds) ----

/// Checks the calling thread's heap: every page in its queues is a page in use of a live
/// segment the heap owns, in the queue of its class, with sound lists (`Page::check`); every
/// segment the heap owns is in the segment map, owned by it, with `used_pages` and the page
/// masks matching its pages, and every page in use of it queued exactly once; a queue's
/// only page, and no other, kept when it empties (`retire_at`); each entry of
/// the direct table is the first page of its size's class queue (or the empty page). Aborts
/// with a message on the first violation.
#[cfg(debug_assertions)]
pub fn check_invariants() {
    let Some(heap) = current() else { return };
    let fail = |what: &str, at: *const u8| -> ! { crate::msg::fatal_pointer(what, at) };
    let me = heap as *const Heap as *mut Heap;
    let mut queued_pages = 0usize;
    for (class, queue) in heap.bins.iter().enumerate() {
        let mut p = queue.first();
        let mut n = 0;
        while !p.is_null() {
            // SAFETY: pages in our queues are live descriptors in segments we own.
            let page = unsafe { &*p };
            let Some(seg) = segment::lookup(page.area()) else {
                fail("check_invariants: a queued page is in no live segment", page.area());
            };
            if owner_of(seg) != me || !page.in_use() || page.class() != class {
                fail("check_invariants: a queued page is not ours, not in use, or in the wrong queue", page.area());
            }
            if let Err(e) = page.check() {
                fail(e, page.area());
            }
            n += 1;
            if n > 1 << 20 {
                fail("check_invariants: a page queue is cyclic", page.area());
            }
            p = page.next.get();
        }
        queued_pages += n;
        let kept_at = if n == 1 { u32::MAX } else { 0 };
        let mut p = queue.first();
        while !p.is_null() {
            // SAFETY: as above.
            let page = unsafe { &*p };
            if page.retire_at() != kept_at {
                fail("check_invariants: a page is kept when empty but not alone, or alone but not kept", page.area());
            }
            p = page.next.get();
        }
        let first = if queue.first().is_null() { EMPTY_PAGE.get() } else { queue.first().cast_const() };
        for i in table_indexes(class) {
            if heap.direct[i].get() != first {
                fail("check_invariants: a direct table entry is not its class's first page", first.cast());
            }
        }
    }
    let segs = heap.segs().lock();
    let mut in_use_pages = 0usize;
    for q in &segs.queues {
        let mut s = q.first();
        while !s.is_null() {
            // SAFETY: segments in our queues are live and ours (we hold their lock).
            let seg = unsafe { &*s };
            let at = s as *const u8;
            if !seg.is_mapped() || owner_of(seg) != me || seg.thread_id.load(Ordering::Relaxed) != heap.thread_id.get()
            {
                fail("check_invariants: an owned segment is unmapped or owned by another heap", at);
            }
            let used_mask = seg.used_mask();
            if used_mask.count_ones() != seg.used_pages.get() {
                fail("check_invariants: used_pages does not match the free-page mask", at);
            }
            for i in 0..seg.page_count as usize {
                if seg.pages[i].in_use() != (used_mask & (1 << i) != 0) {
                    fail("check_invariants: a page's state does not match the free-page mask", at);
                }
            }
            in_use_pages += used_mask.count_ones() as usize;
            s = seg.next.get();
        }
    }
    if in_use_pages != queued_pages {
        fail("check_invariants: pages in use are not each queued once", me as *const u8);
    }
}
