//! Layer `large`: blocks at or above the mmap threshold, one private anonymous mapping each.
//!
//! - A 32-byte header right before the user pointer records the mapping's base and length,
//!   so any alignment works and `free` needs no other information.
//! - A registry (an open-addressing hash set of user pointers, in memory from `os`) makes
//!   classification exact: `free` reads a header only after the registry said the pointer is
//!   a live large block. A pointer it does not know is foreign, or freed twice.
//! - realloc grows with `mremap(MREMAP_MAYMOVE)` (the kernel moves page tables, no byte is
//!   copied) and shrinks in place.
//! - Freed mappings are kept in a small cache (bounded by the `LargeCache` option, each kept
//!   at most the purge delay) and handed out again, resized with mremap, for the next large
//!   request: page faults are the expensive part of a large block, and a reused mapping has
//!   its pages already.

use crate::lock::Lock;
use crate::options::{self, Opt};
use crate::os::{self, PAGE_SIZE};
use crate::stats::{self, Gauge};
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

/// Bytes of header before each large block's user pointer.
const HEADER: usize = 32;

#[repr(C)]
struct Header {
    /// Two words kept for the block's user: the heap profiler's tag of a sampled block
    /// (`Tag::default()` for none).
    tag: Tag,
    /// Start of the mapping.
    base: usize,
    /// Length of the mapping.
    len: usize,
}

/// Two words stored with a large block for the profiler (opaque here).
pub type Tag = (usize, usize);

const _: () = assert!(size_of::<Header>() == HEADER);

/// Cached mappings kept at most.
const CACHE_SLOTS: usize = 32;

/// A freed mapping kept for reuse.
#[derive(Clone, Copy)]
struct Cached {
    base: usize,
    len: usize,
    /// When it was freed (ms).
    since: u64,
}

/// Mappings taken out of the cache, to unmap once the lock is released.
struct Evicted {
    list: [(usize, usize); CACHE_SLOTS],
    n: usize,
}

impl Evicted {
    const fn new() -> Self {
        Evicted { list: [(0, 0); CACHE_SLOTS], n: 0 }
    }
    fn push(&mut self, c: Cached) {
        self.list[self.n] = (c.base, c.len);
        self.n += 1;
    }
    /// Unmaps them all; true if there was any.
    fn unmap(self) -> bool {
        for &(b, len) in &self.list[..self.n] {
            // SAFETY: evicted mappings belong to no block and are out of the cache.
            unsafe { os::munmap(b as *mut u8, len) };
        }
        self.n > 0
    }
}

/// When the oldest cached mapping is due to be unmapped (ms), 0 when the cache is empty.
static CACHE_DUE: AtomicU64 = AtomicU64::new(0);

struct Large {
    /// Open-addressing (linear probing) set of live user pointers; 0 marks an empty slot.
    table: *mut usize,
    /// Slots in `table` (a power of two), 0 before the first use.
    cap: usize,
    /// Live entries.
    count: usize,
    /// Freed mappings kept for reuse, oldest first.
    cache: [Cached; CACHE_SLOTS],
    ncache: usize,
    cache_bytes: usize,
}

// SAFETY: the raw table pointer is only used under the lock that owns the struct.
unsafe impl Send for Large {}

static LARGE: Lock<Large> = Lock::new(Large {
    table: ptr::null_mut(),
    cap: 0,
    count: 0,
    cache: [Cached { base: 0, len: 0, since: 0 }; CACHE_SLOTS],
    ncache: 0,
    cache_bytes: 0,
});

fn round_to_page(n: usize) -> Option<usize> {
    Some(n.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

/// Offset of the user pointer from the mapping base for alignment `align` (<= page size).
fn user_offset(align: usize) -> usize {
    align.max(HEADER)
}

/// Whether another large mapping may be made (the `MmapMax` option).
pub fn may_map() -> bool {
    LARGE.lock().count < options::get(Opt::MmapMax)
}

/// Allocates a large block of `size` bytes aligned to `align` (a power of two). With `zero`
/// the block reads as zeros. Null when the kernel refuses.
pub fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    let (len, off) = if align <= PAGE_SIZE {
        let off = user_offset(align);
        let Some(len) = size.checked_add(off).and_then(round_to_page) else { return ptr::null_mut() };
        (len, off)
    } else {
        // Map enough to place an aligned pointer with the header before it.
        let Some(len) = size.checked_add(align).and_then(|n| n.checked_add(HEADER)).and_then(round_to_page) else {
            return ptr::null_mut();
        };
        (len, 0)
    };
    if len > isize::MAX as usize {
        return ptr::null_mut();
    }
    let cached = if align <= PAGE_SIZE { LARGE.lock().cache_take(len) } else { None };
    let (base, len, fresh) = match cached.and_then(|c| resize_cached(c, len)) {
        Some(b) => (b, len, false),
        None => {
            let b = os::mmap_anon(len);
            if b.is_null() {
                return ptr::null_mut();
            }
            (b as usize, len, true)
        }
    };
    let user = if off != 0 { base + off } else { (base + HEADER + align - 1) & !(align - 1) };
    // SAFETY: the header lies inside the mapping, before `user`, and the mapping is ours.
    unsafe { (user as *mut Header).sub(1).write(Header { tag: Tag::default(), base, len }) };
    if !LARGE.lock().insert(user) {
        // SAFETY: the mapping is ours and nobody saw it.
        unsafe { os::munmap(base as *mut u8, len) };
        return ptr::null_mut();
    }
    if zero && !fresh {
        // SAFETY: the user area [user, user+size) lies inside the mapping.
        unsafe { ptr::write_bytes(user as *mut u8, 0, size) };
    }
    stats::flush_in_use(len as isize);
    stats::add_large_bytes(len as isize);
    user as *mut u8
}

/// Makes the cached mapping `(base, have)` exactly `len` bytes long, keeping its resident
/// pages (shrinking unmaps the tail; growing lets the kernel move page tables). None if the
/// kernel refused (the mapping is then unmapped).
fn resize_cached((base, have): (usize, usize), len: usize) -> Option<usize> {
    if have == len {
        return Some(base);
    }
    // SAFETY: the cached mapping belongs to no block; it is exactly [base, base+have).
    let q = unsafe { os::mremap(base as *mut u8, have, len, true) };
    if q.is_null() {
        // SAFETY: as above.
        unsafe { os::munmap(base as *mut u8, have) };
        return None;
    }
    Some(q as usize)
}

/// Frees `p` if it is a live large block, returning its tag; None if it is not one (foreign
/// or already freed).
pub fn free(p: *mut u8) -> Option<Tag> {
    let mut l = LARGE.lock();
    if !l.remove(p as usize) {
        return None;
    }
    // SAFETY: the registry says `p` is a live large block, so its header is ours to read.
    let h = unsafe { (p as *const Header).sub(1).read() };
    stats::flush_in_use(-(h.len as isize));
    stats::add_large_bytes(-(h.len as isize));
    options::adapt_threshold(h.len);
    let mut evicted = Evicted::new();
    // Keep only mappings that blocks still get: the threshold may just have risen.
    let threshold = options::get(Opt::MmapThreshold);
    l.cache_evict_below(threshold, &mut evicted);
    let kept =
        h.len >= threshold && l.cache_put(Cached { base: h.base, len: h.len, since: os::now_ms() }, &mut evicted);
    drop(l);
    evicted.unmap();
    if !kept {
        // SAFETY: the mapping belonged to the block just freed; nothing refers to it.
        unsafe { os::munmap(h.base as *mut u8, h.len) };
    }
    Some(h.tag)
}

/// Unmaps cached mappings older than the purge delay (cheap when none is due). Called from
/// the heaps' slow paths.
#[inline]
pub fn purge_if_due() {
    let due = CACHE_DUE.load(Ordering::Relaxed);
    if due != 0 && os::now_ms() >= due {
        let mut evicted = Evicted::new();
        if let Some(mut l) = LARGE.try_lock() {
            l.cache_expire(os::now_ms(), &mut evicted);
        }
        evicted.unmap();
    }
}

/// Whether `p` is a live large block.
pub fn owns(p: *const u8) -> bool {
    LARGE.lock().find(p as usize).is_some()
}

/// Usable bytes of the live large block `p`.
///
/// # Safety
/// `p` must be a live large block.
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: per the contract the header is ours.
    let h = unsafe { (p as *const Header).sub(1).read() };
    h.base + h.len - p as usize
}

/// Resizes the live large block `p` to `new_size` bytes with mremap: grows by moving page
/// tables (never copying), shrinks in place. Null on failure, with `p` untouched.
///
/// # Safety
/// `p` must be a live large block, whose alignment (if more than 16) is at most a page.
pub unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: per the contract the header is ours.
    let h = unsafe { (p as *const Header).sub(1).read() };
    let off = p as usize - h.base;
    let Some(need) = new_size.checked_add(off).and_then(round_to_page) else { return ptr::null_mut() };
    if need > isize::MAX as usize {
        return ptr::null_mut();
    }
    if need <= h.len && need > h.len / 2 {
        return p;
    }
    let shrink = need <= h.len;
    // SAFETY: the mapping [base, base+len) is exactly this block's.
    let q = unsafe { os::mremap(h.base as *mut u8, h.len, need, !shrink) };
    if q.is_null() {
        return if shrink { p } else { ptr::null_mut() };
    }
    let np = q as usize + off;
    // SAFETY: the header moved with the mapping and still lies before the user pointer.
    unsafe { (np as *mut Header).sub(1).write(Header { tag: h.tag, base: q as usize, len: need }) };
    stats::flush_in_use(need as isize - h.len as isize);
    stats::add_large_bytes(need as isize - h.len as isize);
    if np != p as usize {
        let mut l = LARGE.lock();
        l.remove(p as usize);
        // The slot freed by the removal guarantees room (no growth needed).
        l.insert(np);
    }
    np as *mut u8
}

/// The tag of the live large block `p`.
///
/// # Safety
/// `p` must be a live large block.
pub unsafe fn tag(p: *const u8) -> Tag {
    // SAFETY: per the contract the header is ours.
    unsafe { (*(p as *const Header).sub(1)).tag }
}

/// Sets the tag of the live large block `p`.
///
/// # Safety
/// `p` must be a live large block that no other thread is freeing or resizing.
pub unsafe fn set_tag(p: *mut u8, tag: Tag) {
    // SAFETY: per the contract the header is ours.
    unsafe { (*(p as *mut Header).sub(1)).tag = tag };
}

/// Unmaps every cached mapping. Returns true if there was any.
pub fn flush_cache() -> bool {
    let mut evicted = Evicted::new();
    LARGE.lock().cache_expire(u64::MAX, &mut evicted);
    evicted.unmap()
}

/// Live large blocks.
pub fn live_count() -> usize {
    LARGE.lock().count
}

/// Fork support: hold the lock across fork.
pub fn lock_for_fork() {
    crate::lock::hold(&LARGE);
}

/// Fork support: release the lock taken by [`lock_for_fork`].
///
/// # Safety
/// Only after [`lock_for_fork`], in the parent or the child; or in a fork child whoever
/// held the lock (see `lock::force_unlock`).
pub unsafe fn unlock_after_fork() {
    // SAFETY: per the contract, no guard exists.
    unsafe { crate::lock::force_unlock(&LARGE) };
}

impl Large {
    fn slot(&self, key: usize) -> usize {
        ((key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & (self.cap - 1)
    }

    /// Index of `key` in the table.
    fn find(&self, key: usize) -> Option<usize> {
        if self.cap == 0 {
            return None;
        }
        let mut i = self.slot(key);
        loop {
            // SAFETY: i < cap and the table holds cap slots.
            let v = unsafe { *self.table.add(i) };
            if v == key {
                return Some(i);
            }
            if v == 0 {
                return None;
            }
            i = (i + 1) & (self.cap - 1);
        }
    }

    /// Adds `key`; false if the table could not grow.
    fn insert(&mut self, key: usize) -> bool {
        if (self.count + 1) * 2 > self.cap && !self.grow() {
            return false;
        }
        let mut i = self.slot(key);
        // SAFETY: i < cap; the load factor stays under 1/2, so an empty slot exists.
        unsafe {
            while *self.table.add(i) != 0 {
                i = (i + 1) & (self.cap - 1);
            }
            *self.table.add(i) = key;
        }
        self.count += 1;
        true
    }

    /// Removes `key` (backward-shift deletion, no tombstones). False if absent.
    fn remove(&mut self, key: usize) -> bool {
        let Some(mut hole) = self.find(key) else { return false };
        let mask = self.cap - 1;
        let mut i = hole;
        // SAFETY: every index is masked into the table.
        unsafe {
            loop {
                i = (i + 1) & mask;
                let v = *self.table.add(i);
                if v == 0 {
                    break;
                }
                let home = self.slot(v);
                // Move v into the hole if its home is not cyclically in (hole, i].
                if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                    *self.table.add(hole) = v;
                    hole = i;
                }
            }
            *self.table.add(hole) = 0;
        }
        self.count -= 1;
        true
    }

    fn grow(&mut self) -> bool {
        let new_cap = (self.cap * 2).max(512);
        let t = os::mmap_anon(new_cap * size_of::<usize>()).cast::<usize>();
        if t.is_null() {
            return false;
        }
        let (old, old_cap) = (self.table, self.cap);
        self.table = t;
        self.cap = new_cap;
        stats::gauge_set(Gauge::MetaLargeTable, new_cap * size_of::<usize>());
        self.count = 0;
        for i in 0..old_cap {
            // SAFETY: i < old_cap, inside the old table.
            let v = unsafe { *old.add(i) };
            if v != 0 {
                self.insert(v);
            }
        }
        if old_cap != 0 {
            // SAFETY: the old table is ours and no longer referenced.
            unsafe { os::munmap(old.cast(), old_cap * size_of::<usize>()) };
        }
        true
    }

    /// Takes the cached mapping closest in size to `len` bytes (the caller resizes it).
    fn cache_take(&mut self, len: usize) -> Option<(usize, usize)> {
        let i = (0..self.ncache).min_by_key(|&i| self.cache[i].len.abs_diff(len))?;
        let e = self.cache[i];
        self.cache_remove(i);
        Some((e.base, e.len))
    }

    /// Publishes the cache's figures to the stats gauges.
    fn publish_cache(&self) {
        stats::gauge_set(Gauge::LargeCacheBlocks, self.ncache);
        stats::gauge_set(Gauge::LargeCacheBytes, self.cache_bytes);
    }

    fn cache_remove(&mut self, i: usize) {
        self.cache_bytes -= self.cache[i].len;
        self.cache.copy_within(i + 1..self.ncache, i);
        self.ncache -= 1;
        self.publish_cache();
        CACHE_DUE.store(
            if self.ncache == 0 { 0 } else { self.cache[0].since + options::get(Opt::PurgeDelay) as u64 },
            Ordering::Relaxed,
        );
    }

    /// Keeps a freed mapping for reuse, evicting the oldest ones to make room. False if it
    /// is larger than the whole cache (the caller unmaps it).
    fn cache_put(&mut self, c: Cached, evicted: &mut Evicted) -> bool {
        let budget = options::get(Opt::LargeCache);
        if c.len > budget {
            return false;
        }
        while self.ncache > 0 && (self.ncache == CACHE_SLOTS || self.cache_bytes + c.len > budget) {
            evicted.push(self.cache[0]);
            self.cache_remove(0);
        }
        self.cache[self.ncache] = c;
        self.ncache += 1;
        self.cache_bytes += c.len;
        self.publish_cache();
        if self.ncache == 1 {
            CACHE_DUE.store(c.since + options::get(Opt::PurgeDelay) as u64, Ordering::Relaxed);
        }
        true
    }

    /// Evicts the cached mappings shorter than `len` bytes.
    fn cache_evict_below(&mut self, len: usize, evicted: &mut Evicted) {
        let mut i = 0;
        while i < self.ncache {
            if self.cache[i].len < len {
                evicted.push(self.cache[i]);
                self.cache_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Evicts the cached mappings freed at or before `now` minus the purge delay.
    fn cache_expire(&mut self, now: u64, evicted: &mut Evicted) {
        let delay = options::get(Opt::PurgeDelay) as u64;
        while self.ncache > 0 && self.cache[0].since.saturating_add(delay) <= now {
            evicted.push(self.cache[0]);
            self.cache_remove(0);
        }
    }
}
