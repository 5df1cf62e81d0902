//! Huge spans: a block of one or more whole segments straight from the arena, owned by no
//! heap (any thread frees it). Calls `segs::free_segment` only.

use super::segs::free_segment;
use crate::arena;
use crate::os;
use crate::segment::{self, Kind, SEGMENT_SHIFT, Segment};
use crate::stats;
use core::ptr;
use core::sync::atomic::Ordering;

// ---- huge spans: one block of one or more whole segments, owned by no heap ----

/// Allocates a huge block of at least `size` bytes from the arena; with `zero` its first
/// `size` bytes read as zero.
pub fn alloc_huge(size: usize, zero: bool) -> *mut u8 {
    let Some(total) = size.checked_add(crate::segment::HEADER_SIZE) else { return ptr::null_mut() };
    let n = total.div_ceil(crate::segment::SEGMENT_SIZE);
    if n > (isize::MAX as usize) >> SEGMENT_SHIFT {
        return ptr::null_mut();
    }
    let Some(m) = arena::alloc_segments(n, true) else { return ptr::null_mut() };
    // SAFETY: the arena gave us `n` aligned segments nobody else uses.
    let seg = unsafe { &*Segment::init(m.base, Kind::Huge, n, m.from_mmap, m.zeroed) };
    seg.free_mask.set(0);
    seg.used_pages.set(1);
    let (area, len) = seg.page_area(0);
    let page = &seg.pages[0];
    page.init(0, len, area, 1, m.zeroed);
    if zero && !m.zeroed {
        // SAFETY: the block spans at least `size` bytes from `area`, all ours.
        unsafe { ptr::write_bytes(area, 0, size) };
    }
    page.set_single_block_in_use();
    stats::flush_in_use(len as isize);
    area
}

/// Frees the huge block of `seg` (called by any thread). False, changing nothing, if it was
/// freed already (its span claimed by another free that has not finished yet).
pub fn free_huge(seg: &Segment) -> bool {
    let _errno = os::ErrnoGuard::new();
    if seg.thread_id.compare_exchange(0, segment::HUGE_FREED, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return false;
    }
    stats::flush_in_use(-(seg.pages[0].block_size() as isize));
    free_segment(seg);
    true
}
