//! What collects memory across heaps: the segments abandoned by exited threads (the list,
//! handing a heap's segments to it, collecting and trimming them), the locked heaps' trim,
//! the scan of other threads' heaps for memory their owners do not give back, the timers
//! that run these from slow paths, and `trim`. Calls into `segs`, `life` (the list of
//! heaps, the locked heaps, reaping) and `mod.rs` (a heap's own pages); `mod.rs`, `life`
//! and `fork` call it for the timers and the abandoned segments.

use super::life::{BACKUP, META, SAMPLES, for_each_heap, segs_of};
use super::segs::{HeapSegs, SegQueue, free_segment, release_free_pages};
use super::{Heap, current};
use crate::arena;
use crate::lock::Lock;
use crate::options::{self, Opt};
use crate::os;
use crate::segment::{PAGED_KINDS, Segment};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, compiler_fence};

pub(super) struct Abandoned(SegQueue);
// SAFETY: the segments are only touched under the lock that owns the struct.
unsafe impl Send for Abandoned {}
pub(super) static ABANDONED: Lock<Abandoned> = Lock::new(Abandoned(SegQueue::new()));
/// Number of abandoned segments (read without the lock to skip it when zero).
pub(super) static ABANDONED_COUNT: AtomicUsize = AtomicUsize::new(0);

impl HeapSegs {
    /// Thread exit: frees empty segments and abandons the others.
    pub(super) fn abandon_all(&mut self) {
        for k in 0..PAGED_KINDS {
            loop {
                let first = self.queues[k].first();
                if first.is_null() {
                    break;
                }
                // SAFETY: segments in our queues are live and ours.
                let seg = unsafe { &*first };
                self.queues[k].unlink(seg);
                if seg.used_pages.get() == 0 {
                    free_segment(seg);
                    continue;
                }
                seg.heap.set(ptr::null_mut());
                seg.thread_id.store(0, Ordering::Release);
                ABANDONED.lock().0.push_back(seg);
                ABANDONED_COUNT.fetch_add(1, Ordering::Relaxed);
                schedule_abandoned_purge();
            }
            self.empty[k] = 0;
        }
        self.dirty_pages = 0;
    }
}

/// When the abandoned segments are next to be collected and their free memory released
/// (ms), 0 when none is pending.
static ABANDONED_PURGE_AT: AtomicU64 = AtomicU64::new(0);

/// Makes sure the abandoned segments are collected within the purge delay: blocks that live
/// threads free into the segments of an exited one go back to the OS like any other.
pub(super) fn schedule_abandoned_purge() {
    let at = os::now_ms() + options::get(Opt::PurgeDelay) as u64;
    let _ = ABANDONED_PURGE_AT.compare_exchange(0, at.max(1), Ordering::Relaxed, Ordering::Relaxed);
}

/// Whether the round scheduled at `deadline` (ms, 0 for none) is due and this thread took it
/// (cleared it); false when none is due or another thread took it first.
fn claim_if_due(deadline: &AtomicU64) -> bool {
    let at = deadline.load(Ordering::Relaxed);
    at != 0 && os::now_ms() >= at && deadline.compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// Collects the abandoned segments and the backup heap once the purge delay has passed
/// (cheap when not due), from any thread's slow path: frees what is empty, releases free
/// pages, and schedules the next round while any remain.
fn purge_abandoned_if_due() {
    if !claim_if_due(&ABANDONED_PURGE_AT) {
        return;
    }
    let _errno = os::ErrnoGuard::new();
    trim_abandoned();
    trim_backup();
    if ABANDONED_COUNT.load(Ordering::Relaxed) != 0 || backup_holds_memory() {
        schedule_abandoned_purge();
    }
}

/// Collects the locked heaps' pages (every free into them is a cross-thread free, which
/// only a collection gives back) and releases their empty pages and segments. True if any
/// memory was returned. A heap that is busy is skipped.
fn trim_backup() -> bool {
    let mut released = false;
    for lock in [&BACKUP, &SAMPLES] {
        let Some(b) = lock.try_lock() else { continue };
        if b.0.is_null() {
            continue;
        }
        // SAFETY: a locked heap is only used under its lock, which we hold.
        let heap = unsafe { &*b.0 };
        released |= heap.release_empty_pages();
        released |= heap.segs().lock().trim();
    }
    released
}

/// Whether a locked heap (backup, samples) owns any segment.
fn backup_holds_memory() -> bool {
    [&BACKUP, &SAMPLES].into_iter().any(|lock| {
        let Some(b) = lock.try_lock() else { return true };
        // SAFETY: as in `trim_backup`.
        !b.0.is_null() && unsafe { (*b.0).segs().lock().queues.iter().any(|q| !q.first().is_null()) }
    })
}

/// Takes the first segment off the abandoned list (None if empty or the lock is busy).
pub(super) fn pop_abandoned() -> Option<&'static Segment> {
    let a = ABANDONED.try_lock()?;
    let s = a.0.first();
    if s.is_null() {
        return None;
    }
    // SAFETY: segments on the abandoned list are live and owned by the list.
    let seg = unsafe { &*s };
    a.0.unlink(seg);
    ABANDONED_COUNT.fetch_sub(1, Ordering::Relaxed);
    Some(seg)
}

/// Collects the blocks other threads freed into the pages of an abandoned segment (whose
/// bookkeeping the caller owns) and gives back the pages left empty. Returns the mask of the
/// pages still in use.
pub(super) fn collect_abandoned(seg: &Segment) -> u64 {
    let mut live = 0u64;
    for i in 0..seg.page_count as usize {
        let page = &seg.pages[i];
        if page.in_use() {
            page.collect_thread_free();
            if page.used() == 0 {
                seg.release_page(i);
            } else {
                live |= 1 << i;
            }
        }
    }
    live
}

// ---- whole-process operations ----

/// Returns free memory to the OS: every heap's empty segments and free pages (the calling
/// thread's and, where their lock is free, every other thread's), the free parts of
/// abandoned segments, the large-block cache, and the free top of the break beyond `pad`
/// bytes. Returns true if any memory was returned.
pub fn trim(pad: usize) -> bool {
    let mut released = false;
    if let Some(h) = current() {
        released |= h.release_empty_pages();
        if let Some(mut segs) = h.lock_own() {
            released |= segs.trim();
        }
    }
    released |= scan_heaps(true).released;
    released |= trim_abandoned();
    released |= trim_backup();
    released |= crate::large::flush_cache();
    released |= arena::trim(pad);
    released
}

/// Every timed release that is due, from a slow path of `heap` (or from the background
/// thread, with None). Cheap when none is due.
pub fn purge_if_due(heap: Option<&Heap>) {
    // Not inside this thread's own purge (a signal handler that interrupted it and
    // allocates): the purge may hold the locks taken here.
    let me = current();
    if me.is_some_and(|h| h.purging.get()) {
        return;
    }
    // Flagged before any lock is taken and cleared after the last is released, so a handler
    // that runs in between sees the flag.
    if let Some(h) = me {
        h.purging.set(true);
        compiler_fence(Ordering::SeqCst);
    }
    if let Some(h) = heap {
        h.purge_pages_if_due();
    }
    arena::purge_if_due();
    purge_abandoned_if_due();
    scan_heaps_if_due();
    crate::large::purge_if_due();
    if let Some(h) = me {
        compiler_fence(Ordering::SeqCst);
        h.purging.set(false);
    }
}

// ---- collecting from other threads' heaps ----

/// When other threads' heaps are next to be scanned (ms), 0 when no scan is pending.
static SCAN_AT: AtomicU64 = AtomicU64::new(0);
/// Whether a cross-thread free happened since the last scan began.
static REMOTE_FREES: AtomicBool = AtomicBool::new(false);

/// A cross-thread free happened: makes sure a scan looks, within the purge delay, for pages
/// it may have left entirely free in a heap whose owner does not collect them (it may be
/// idle). One load when a scan is pending already.
#[inline]
pub fn note_remote_free(seg: &Segment) {
    // A load first: the segment header's line stays shared while the flag is set.
    if !seg.remote_frees.load(Ordering::Relaxed) {
        seg.remote_frees.store(true, Ordering::Relaxed);
    }
    if !REMOTE_FREES.load(Ordering::Relaxed) {
        REMOTE_FREES.store(true, Ordering::Relaxed);
        schedule_scan();
    }
}

/// Makes sure other threads' heaps are scanned within the purge delay.
pub(super) fn schedule_scan() {
    let at = os::now_ms() + scan_period();
    let _ = SCAN_AT.compare_exchange(0, at.max(1), Ordering::Relaxed, Ordering::Relaxed);
}

/// Milliseconds between scans: the purge delay, but at least `SCAN_MIN_MS` (a scan visits
/// every heap, and checks whether idle heaps' threads are gone).
pub fn scan_period() -> u64 {
    (options::get(Opt::PurgeDelay) as u64).max(SCAN_MIN_MS)
}

const SCAN_MIN_MS: u64 = 250;

/// Idle scans of a heap between two checks that its thread still exists.
const GONE_CHECK_EVERY: u32 = 8;

/// Scans the other threads' heaps once the purge delay has passed (cheap when not due), and
/// schedules the next scan while some heap may still hold memory to release.
fn scan_heaps_if_due() {
    if !claim_if_due(&SCAN_AT) {
        return;
    }
    let _errno = os::ErrnoGuard::new();
    if scan_heaps(false).more {
        schedule_scan();
    }
}

/// What a scan did.
struct Scan {
    /// Some memory was released.
    released: bool,
    /// Some heap may still hold memory to release (it was busy, or active since the last
    /// scan).
    more: bool,
}

/// Collects from the heaps of other threads what they do not give back while they do not
/// call in:
/// - pages whose blocks other threads have all freed (released; the page stays its owner's);
/// - the free pages of a heap that took no slow path since the last scan (idle, or on fast
///   paths only: its own purge timer never runs);
/// - the heap of a thread that ended without its exit handler (retired).
///
/// With `force` (trim) every heap is waited for, and its empty segments are freed as well.
fn scan_heaps(force: bool) -> Scan {
    REMOTE_FREES.store(false, Ordering::Relaxed);
    let me = current().map_or(ptr::null_mut(), |h| h as *const Heap as *mut Heap);
    let mut scan = Scan { released: false, more: false };
    for_each_heap(|h| {
        // SAFETY: heaps are never freed; we read only atomics and, under the lock, its segments.
        let heap = unsafe { &*h };
        if h == me || heap.kernel_tid.load(Ordering::Relaxed) == 0 {
            return; // ours, or no thread's (pooled; the locked heaps are `trim_backup`'s)
        }
        let lock = segs_of(h);
        let Some(mut segs) = (if force { Some(lock.lock()) } else { lock.try_lock() }) else {
            scan.more = true;
            return;
        };
        scan.released |= segs.reset_remote_freed_pages();
        let n = heap.slow_paths.load(Ordering::Relaxed);
        let idle = n == segs.seen_slow_paths;
        segs.seen_slow_paths = n;
        // Whether its thread exists is asked on its first idle scan and every few after
        // (one system call each: a process with thousands of idle threads pays it rarely).
        segs.idle_scans = if idle { segs.idle_scans.wrapping_add(1) } else { 0 };
        let ask_gone = force || (idle && segs.idle_scans % GONE_CHECK_EVERY == 1);
        if force {
            scan.released |= segs.trim();
        } else if idle {
            let had_dirty = segs.dirty_pages > 0;
            scan.released |= segs.release_free_pages(true) && had_dirty;
            scan.more |= segs.dirty_pages > 0;
        } else {
            // Active: look again, since it may go idle (or its thread may end unseen) with
            // memory to give back.
            scan.more = true;
        }
        drop(segs);
        if ask_gone && META.lock().reap_if_gone(h) {
            scan.released = true;
        }
    });
    scan
}

/// From the background thread (which has no heap of its own): one scan of every heap, as
/// from a slow path, whether or not one is scheduled.
pub fn scan_idle_heaps() {
    let _errno = os::ErrnoGuard::new();
    scan_heaps(false);
}

/// Collects the abandoned segments: frees the empty ones, releases free pages of the rest.
fn trim_abandoned() -> bool {
    let a = ABANDONED.lock();
    let mut released = false;
    let mut s = a.0.first();
    while !s.is_null() {
        // SAFETY: segments on the abandoned list are live and owned by the list (locked).
        let seg = unsafe { &*s };
        s = seg.next.get();
        collect_abandoned(seg);
        if seg.used_pages.get() == 0 {
            a.0.unlink(seg);
            ABANDONED_COUNT.fetch_sub(1, Ordering::Relaxed);
            free_segment(seg);
            released = true;
        } else {
            released |= release_free_pages(seg, false).unwrap_or(false);
        }
    }
    released
}
