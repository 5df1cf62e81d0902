//! Layer `page`: one page holds blocks of a single size class.
//!
//! A page has three free lists, so that the owner's fast paths never need an atomic
//! read-modify-write:
//! - `free`: blocks ready to hand out (popped by the owner's malloc fast path);
//! - `local_free`: blocks the owner freed (pushed by the owner's free fast path); merged into
//!   `free` when `free` runs dry, which also gives the owner a regular slow path;
//! - `thread_free`: blocks other threads freed, pushed with compare-and-swap; the owner takes
//!   the whole list with one swap on its slow path.
//!
//! `used` counts blocks handed out and not yet collected back; blocks waiting on
//! `thread_free` still count, so a page with `used == 0` is empty for certain. Blocks are
//! carved lazily (`capacity` of `reserved`), so untouched memory of a fresh page is never
//! faulted in before it is needed.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// A free block: its first word links to the next free block.
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
}

/// Bits of `Page::flags`.
pub const FREE_IS_ZERO: u8 = 1; // every block on `free` is zero but for its link word
pub const MEM_IS_ZERO: u8 = 2; // blocks not yet carved are zero (memory fresh from the OS)
pub const HAS_ALIGNED: u8 = 4; // some block was handed out at an offset (aligned allocation)

/// Shift for the reciprocal that turns an offset into a block index without dividing.
const DIV_SHIFT: u32 = 44;

/// Bytes of blocks carved per extension of a page (at least one block).
const EXTEND_BYTES: usize = 4096;

/// Descriptor of one page; lives in its segment's header, never in the page itself.
#[repr(C)]
pub struct Page {
    /// Blocks ready to allocate (owner only).
    pub free: *mut Block,
    /// Blocks handed out and not yet collected back (owner only).
    pub used: u32,
    /// Blocks carved so far (owner only).
    pub capacity: u32,
    /// Blocks that fit in the page; 0 while the page is not in use.
    pub reserved: u32,
    /// `FREE_IS_ZERO | MEM_IS_ZERO | HAS_ALIGNED` (owner only).
    pub flags: u8,
    /// Size class index (meaningless for huge spans).
    pub class: u8,
    /// Bytes per block; 0 while the page is not in use.
    pub block_size: usize,
    /// ceil(2^44 / block_size): offset * div_magic >> 44 == offset / block_size.
    pub div_magic: u64,
    /// First byte of the first block.
    pub area: *mut u8,
    /// Blocks the owner freed (owner only).
    pub local_free: *mut Block,
    /// Blocks other threads freed (any thread pushes, the owner takes all).
    pub thread_free: AtomicPtr<Block>,
    /// Links in the owning heap's queue for this size class (owner only).
    pub next: *mut Page,
    pub prev: *mut Page,
}

impl Page {
    /// Sets up an unused page to hold `reserved` blocks of `block_size` bytes from `area`.
    pub fn init(&mut self, class: u8, block_size: usize, area: *mut u8, reserved: usize, mem_is_zero: bool) {
        debug_assert!(self.block_size == 0 && block_size >= 16 && reserved >= 1);
        self.free = ptr::null_mut();
        self.local_free = ptr::null_mut();
        *self.thread_free.get_mut() = ptr::null_mut();
        self.used = 0;
        self.capacity = 0;
        self.reserved = reserved as u32;
        self.flags = if mem_is_zero { MEM_IS_ZERO } else { 0 };
        self.class = class;
        self.block_size = block_size;
        self.div_magic = (1u64 << DIV_SHIFT).div_ceil(block_size as u64);
        self.area = area;
        self.next = ptr::null_mut();
        self.prev = ptr::null_mut();
    }

    /// Marks the page unused.
    pub fn reset(&mut self) {
        self.block_size = 0;
        self.reserved = 0;
        self.flags = 0;
    }

    pub fn in_use(&self) -> bool {
        self.block_size != 0
    }

    /// Pops a block from `free`; null if it is empty.
    #[inline(always)]
    pub fn pop(&mut self) -> *mut Block {
        let b = self.free;
        if !b.is_null() {
            // SAFETY: blocks on `free` are carved from this page's area and hold a valid link.
            self.free = unsafe { (*b).next };
            self.used += 1;
        }
        b
    }

    /// The owner gives a block back.
    ///
    /// # Safety
    /// `b` must be a block of this page currently handed out; the caller is the owner.
    #[inline(always)]
    pub unsafe fn push_local(&mut self, b: *mut Block) {
        // SAFETY: the block is ours to write (it was handed out and is now given back).
        unsafe { (*b).next = self.local_free };
        self.local_free = b;
        self.used -= 1;
    }

    /// Another thread gives a block back: lock-free push onto `thread_free`.
    ///
    /// # Safety
    /// `b` must be a block of this page currently handed out, not on any list.
    pub unsafe fn push_thread(&self, b: *mut Block) {
        let mut head = self.thread_free.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is the caller's to write until the push below publishes it.
            unsafe { (*b).next = head };
            match self.thread_free.compare_exchange_weak(head, b, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Owner: folds `thread_free` and `local_free` into `free` when `free` is empty. Returns
    /// true if `free` now has a block.
    pub fn collect(&mut self) -> bool {
        if !self.free.is_null() {
            return true;
        }
        if !self.thread_free.load(Ordering::Relaxed).is_null() {
            self.collect_thread_free();
        }
        if !self.local_free.is_null() {
            self.free = self.local_free;
            self.local_free = ptr::null_mut();
            self.flags &= !FREE_IS_ZERO;
        }
        !self.free.is_null()
    }

    /// Owner: takes every block other threads freed and moves it to `local_free`.
    pub fn collect_thread_free(&mut self) {
        let mut b = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
        while !b.is_null() {
            // SAFETY: blocks on thread_free were pushed by push_thread with a valid link and
            // are now exclusively ours.
            let next = unsafe { (*b).next };
            // SAFETY: as above; the block is a handed-out block of this page.
            unsafe { self.push_local(b) };
            b = next;
        }
    }

    /// Owner: carves more blocks onto `free`. Returns false if the page is fully carved.
    pub fn extend(&mut self) -> bool {
        let left = (self.reserved - self.capacity) as usize;
        if left == 0 {
            return false;
        }
        let n = (EXTEND_BYTES / self.block_size).clamp(1, left);
        let bs = self.block_size;
        // SAFETY: blocks capacity..capacity+n lie inside the page's area (n <= left), which the
        // segment reserved for this page; nobody else uses them yet.
        unsafe {
            let first = self.area.add(self.capacity as usize * bs);
            for i in 0..n - 1 {
                let b = first.add(i * bs).cast::<Block>();
                (*b).next = first.add((i + 1) * bs).cast();
            }
            (*first.add((n - 1) * bs).cast::<Block>()).next = self.free;
            self.free = first.cast();
        }
        // Fresh blocks are zero if the memory was, and `free` was empty before (callers only
        // extend an empty list).
        if self.flags & MEM_IS_ZERO != 0 {
            self.flags |= FREE_IS_ZERO;
        }
        self.capacity += n as u32;
        true
    }

    /// Index of the block that holds byte `offset` of the area.
    #[inline(always)]
    pub fn block_index(&self, offset: usize) -> usize {
        ((offset as u64 * self.div_magic) >> DIV_SHIFT) as usize
    }

    /// The start of the block that contains `p`, or null if `p` cannot be a pointer this
    /// page handed out: not a carved block's start, nor (on a page that served aligned
    /// requests) a pointer aligned to more than its distance from its block's start.
    #[inline(always)]
    pub fn block_of(&self, p: *mut u8) -> *mut Block {
        let offset = (p as usize).wrapping_sub(self.area as usize);
        let idx = self.block_index(offset);
        let start = idx * self.block_size;
        if idx >= self.capacity as usize || (start != offset && !self.is_aligned_offset(p, offset - start)) {
            return ptr::null_mut();
        }
        // SAFETY: idx < capacity, so the block lies inside the page's area.
        unsafe { self.area.add(start).cast() }
    }

    /// Whether `p`, `delta` bytes into its block, can be an aligned allocation's pointer: the
    /// page gave out such pointers, and `p` is aligned (to more than 16) beyond `delta`.
    #[cold]
    fn is_aligned_offset(&self, p: *mut u8, delta: usize) -> bool {
        let align = 1usize << (p as usize).trailing_zeros();
        self.flags & HAS_ALIGNED != 0 && align > 16 && delta < align
    }

    /// Usable bytes from `p` (inside block `b`) to the end of the block.
    pub fn usable_from(&self, b: *mut Block, p: *mut u8) -> usize {
        self.block_size - (p as usize - b as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::{NCLASSES, class_size};

    /// The reciprocal gives the exact block index for every class and every offset that can
    /// occur in a page (pages are at most one 4 MiB segment).
    #[test]
    fn reciprocal_division_is_exact() {
        for c in 0..NCLASSES {
            let bs = class_size(c);
            let magic = (1u64 << DIV_SHIFT).div_ceil(bs as u64);
            let mut off = 0usize;
            while off < (4 << 20) {
                for o in [off, off + 1, off + bs - 1] {
                    assert_eq!(((o as u64 * magic) >> DIV_SHIFT) as usize, o / bs, "bs {bs} off {o}");
                }
                off += bs;
            }
        }
    }
}
