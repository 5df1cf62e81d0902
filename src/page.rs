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
//!
//! **Freed blocks are marked.** Every block on any of the three lists carries a mark in its
//! second word: [`freed_mark`] of its own address (written when it is carved and when it is
//! freed, cleared when it is handed out). `free` reads that word before linking the block:
//! finding the mark means the block is on a list already, so a double free is caught before
//! any list is touched, whoever frees and however late. Another thread's free swaps the mark
//! in atomically, so two racing remote frees of one block cannot both pass (the owner's free
//! is a plain check and store: a free by the owner at the very moment another thread frees
//! the same block may go unseen). A live block reads as marked only if the program stored
//! exactly that value (a function of the block's own address) there. A page given back to
//! its segment has no carved block (`reset`), so a free into it, however late, is refused.
//!
//! **Sharing.** Descriptors are read by other threads (a remote free reads the block size,
//! the carved capacity and the flags), so they are only ever reached through shared
//! references: owner-only fields are `Cell`s, fields another thread reads while the owner
//! changes them are atomics (Relaxed: a block a thread frees was carved before it got the
//! pointer), and `block_size`, `div_magic`, `area` and `class` change only while the page
//! holds no block.
//!
//! **Collection by another thread.** A page whose blocks other threads have all freed would
//! wait for its owner's slow path to be collected, forever if the owner is idle. So a thread
//! holding the owner's segment lock may take such a page's blocks and mark it uncarved
//! ([`Page::reset_if_all_freed_remotely`]) while the owner runs, relying on two rules:
//! `free` becomes non-empty only on the owner's slow path, under that lock; and the owner
//! pushes on `local_free` only a block that is live. The owner's stores to `used` are
//! release stores, so a collector reading it (acquire) sees the list heads as they were
//! then. On x86-64 these orderings cost no instruction.

use crate::size_class::TABLE_LEN;
use crate::stats::{self, Gauge};
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicUsize, Ordering};

/// A free block: its first word links to the next free block, its second holds the freed
/// mark (every block is at least 16 bytes).
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
    mark: AtomicUsize,
}

/// What a freed block's address is combined with to make its mark: a sign-extended 32-bit
/// value, so the check compiles to an `xor` with an immediate operand.
const FREED_KEY: usize = 0xFFFF_FFFF_A5C3_96E1;

/// The value a freed block at `b` holds in its second word. Depends on the address, so a
/// block copied elsewhere does not carry a valid mark.
#[inline(always)]
pub fn freed_mark(b: *const Block) -> usize {
    b as usize ^ FREED_KEY
}

impl Block {
    /// Marks the block freed (the caller owns it).
    ///
    /// # Safety
    /// `b` is a block of at least 16 bytes that the caller may write.
    #[inline(always)]
    unsafe fn set_mark(b: *mut Block) {
        // SAFETY: per the contract.
        unsafe { (*b).mark.store(freed_mark(b), Ordering::Relaxed) };
    }

    /// Whether the block carries the freed mark.
    ///
    /// # Safety
    /// `b` is a carved block of a page in use.
    #[inline(always)]
    pub unsafe fn is_marked(b: *const Block) -> bool {
        // SAFETY: per the contract the block's memory is ours to read.
        unsafe { (*b).mark.load(Ordering::Relaxed) == freed_mark(b) }
    }
}

/// Bits of `Page::flags`.
pub const FREE_IS_ZERO: u8 = 1; // every block on `free` is zero but for its two header words
pub const MEM_IS_ZERO: u8 = 2; // blocks not yet carved are zero (memory fresh from the OS)
pub const HAS_ALIGNED: u8 = 4; // some block was handed out at an offset (aligned allocation)
pub const SAMPLE_HEADERS: u8 = 8; // blocks are handed out 16 bytes in (the heap profiler's samples)

/// `Page::start_test` for blocks of `block_size` bytes.
fn start_test(block_size: usize) -> u64 {
    debug_assert!(block_size >= 16);
    if block_size > 1 << 22 { 1 } else { u64::MAX / block_size as u64 + 1 }
}

/// Shift for the reciprocal that turns an offset into a block index without dividing.
const DIV_SHIFT: u32 = 44;

/// Bytes of blocks carved per extension of a page (at least one block).
const EXTEND_BYTES: usize = 4096;

/// Descriptor of one page; lives in its segment's header, never in the page itself.
///
/// Two cache lines: the first holds what the owner's malloc and free write (the lists, the
/// count, the queue links), the second what other threads' frees read and write (the block
/// geometry, `thread_free`). Sharing one line, every remote free's compare-and-swap took the
/// line from under the owner's next malloc.
#[repr(C, align(64))]
pub struct Page {
    // ---- written by the owner on its fast paths ----
    /// Blocks ready to allocate (the owner pops; a collector of remote frees reads it).
    free: AtomicPtr<Block>,
    /// Blocks the owner freed (the owner pushes; a collector of remote frees reads it).
    local_free: AtomicPtr<Block>,
    /// Links in the owning heap's queue for this size class (owner only).
    pub next: Cell<*mut Page>,
    pub prev: Cell<*mut Page>,
    /// Blocks handed out and not yet collected back (the owner writes; a collector of remote
    /// frees reads it).
    used: AtomicU32,
    /// Blocks that fit in the page; 0 while the page is not in use (owner only).
    reserved: Cell<u32>,
    /// `FREE_IS_ZERO | MEM_IS_ZERO | HAS_ALIGNED` (owner writes, a remote free reads).
    flags: AtomicU8,
    /// Size class index (meaningless for huge spans); fixed while in use.
    class: Cell<u8>,
    /// `block_size` again, in this line: the malloc fast path counts bytes without reading
    /// the second line.
    owner_block_size: Cell<usize>,
    /// The owner's free that brings `used` down to this value gives the page back: 0, or
    /// `u32::MAX` (never) while the page is its class's only page, kept against alloc/free
    /// churn. One compare on the free path instead of a test of the queue links.
    retire_at: Cell<u32>,
    _line: [u8; 4],
    // ---- read by every free, written by other threads' ----
    /// Blocks other threads freed (any thread pushes, the owner takes all).
    thread_free: AtomicPtr<Block>,
    /// Bytes per block; 0 while the page is not in use; fixed while in use.
    block_size: Cell<usize>,
    /// ceil(2^44 / block_size): offset * div_magic >> 44 == offset / block_size.
    div_magic: Cell<u64>,
    /// First byte of the first block; fixed while in use.
    area: Cell<*mut u8>,
    /// Blocks carved so far (owner writes, a remote free reads).
    capacity: AtomicU32,
    /// `capacity * block_size`: offsets below it are carved (owner writes, any free reads).
    carved_end: AtomicUsize,
    /// ceil(2^64 / block_size), or 1 for a huge span's single block: an offset `n` into the
    /// area is a block's start exactly when `n * start_test` (mod 2^64) is below it. Exact for
    /// offsets below 2^32 and blocks of at most 2^22 bytes: with `n = q * d + r` and
    /// `c * d = 2^64 + e` (`e < d`), `n * c = q * e + r * c` (mod 2^64); `q * e < n < 2^32 <= c`
    /// when `r == 0`, and `c <= r * c + q * e < 2^64` when `r > 0`.
    start_test: Cell<u64>,
}

const _: () = assert!(core::mem::size_of::<Page>() == 128 && core::mem::offset_of!(Page, thread_free) == 64);

/// A page that is never in use and never has a free block: what a heap's direct table holds
/// for a size with no page, so the malloc fast path needs no null test (its empty `free`
/// sends the request to the slow path). Nobody writes it.
pub struct EmptyPage(Page);

// SAFETY: the page is never written (no heap queues it, no block points into it), so sharing
// it between threads shares only reads.
unsafe impl Sync for EmptyPage {}

pub static EMPTY_PAGE: EmptyPage = EmptyPage(Page {
    free: AtomicPtr::new(ptr::null_mut()),
    local_free: AtomicPtr::new(ptr::null_mut()),
    next: Cell::new(ptr::null_mut()),
    prev: Cell::new(ptr::null_mut()),
    used: AtomicU32::new(0),
    reserved: Cell::new(0),
    flags: AtomicU8::new(0),
    class: Cell::new(0),
    owner_block_size: Cell::new(0),
    retire_at: Cell::new(0),
    _line: [0; 4],
    thread_free: AtomicPtr::new(ptr::null_mut()),
    block_size: Cell::new(0),
    div_magic: Cell::new(0),
    area: Cell::new(ptr::null_mut()),
    capacity: AtomicU32::new(0),
    carved_end: AtomicUsize::new(0),
    start_test: Cell::new(0),
});

impl EmptyPage {
    /// The page, as a pointer for a direct table.
    pub fn get(&'static self) -> *const Page {
        &self.0
    }
}

/// A heap's direct table: for each request size up to `TABLE_MAX` (by `table_index`), the
/// page the malloc fast path takes a block from.
pub type DirectTable = [Cell<*const Page>; TABLE_LEN];

/// Direct tables of threads that have no heap, every entry the empty page: what a thread's
/// heap word points to before its first allocation (`NO_HEAP[0]`, the word's initial value)
/// and after its exit (`NO_HEAP[1]`). The fast path reads a table through the word without
/// testing it, and finds no free block.
pub struct NoHeapTables(pub [DirectTable; 2]);

// SAFETY: the tables are never written, so sharing them shares only reads.
unsafe impl Sync for NoHeapTables {}

pub static NO_HEAP: NoHeapTables =
    NoHeapTables([const { [const { Cell::new(&EMPTY_PAGE.0 as *const Page) }; TABLE_LEN] }; 2]);

impl Page {
    /// Sets up an unused page to hold `reserved` blocks of `block_size` bytes from `area`.
    pub fn init(&self, class: u8, block_size: usize, area: *mut u8, reserved: usize, mem_is_zero: bool) {
        debug_assert!(self.block_size.get() == 0 && block_size >= 16 && reserved >= 1);
        self.free.store(ptr::null_mut(), Ordering::Relaxed);
        self.local_free.store(ptr::null_mut(), Ordering::Relaxed);
        self.thread_free.store(ptr::null_mut(), Ordering::Relaxed);
        self.used.store(0, Ordering::Relaxed);
        self.capacity.store(0, Ordering::Relaxed);
        self.reserved.set(reserved as u32);
        self.flags.store(if mem_is_zero { MEM_IS_ZERO } else { 0 }, Ordering::Relaxed);
        self.class.set(class);
        self.block_size.set(block_size);
        self.owner_block_size.set(block_size);
        self.div_magic.set((1u64 << DIV_SHIFT).div_ceil(block_size as u64));
        self.start_test.set(start_test(block_size));
        self.carved_end.store(0, Ordering::Relaxed);
        self.area.set(area);
        self.next.set(ptr::null_mut());
        self.prev.set(ptr::null_mut());
    }

    /// Marks the page unused. `capacity` goes to 0 too, so `block_of` finds no block in it:
    /// a late second free of one of its blocks (whose mark a purge may have wiped) is an
    /// invalid pointer, not a block linked into a page nobody owns. Its carved bytes leave
    /// the stats gauge.
    pub fn reset(&self) {
        let carved = self.capacity.load(Ordering::Relaxed) as usize * self.block_size.get();
        stats::gauge_add(Gauge::CarvedBytes, -(carved as isize));
        self.block_size.set(0);
        self.owner_block_size.set(0);
        self.reserved.set(0);
        self.set_capacity(0);
        self.flags.store(0, Ordering::Relaxed);
    }

    pub fn in_use(&self) -> bool {
        self.block_size.get() != 0
    }

    #[inline(always)]
    pub fn block_size(&self) -> usize {
        self.block_size.get()
    }

    /// The `used` count at which the owner's free gives the page back (see `retire_at`).
    #[inline(always)]
    pub fn retire_at(&self) -> u32 {
        self.retire_at.get()
    }

    /// Owner: the page is now (or no longer) its class's only page.
    pub fn set_alone(&self, alone: bool) {
        self.retire_at.set(if alone { u32::MAX } else { 0 });
    }

    /// `block_size`, for the owner's fast paths (from the owner's cache line).
    #[inline(always)]
    pub fn owner_block_size(&self) -> usize {
        self.owner_block_size.get()
    }

    pub fn class(&self) -> usize {
        self.class.get() as usize
    }

    pub fn area(&self) -> *mut u8 {
        self.area.get()
    }

    fn flag(&self, f: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & f != 0
    }

    /// Owner: sets or clears flag bits (a load and a store: only the owner writes flags).
    fn set_flags(&self, set: u8, clear: u8) {
        let f = self.flags.load(Ordering::Relaxed);
        self.flags.store((f | set) & !clear, Ordering::Relaxed);
    }

    /// Whether every block on `free` is zero but for its two header words.
    #[inline(always)]
    pub fn free_is_zero(&self) -> bool {
        self.flag(FREE_IS_ZERO)
    }

    /// Owner: the page hands out pointers at an offset into their blocks.
    pub fn set_has_aligned(&self) {
        self.set_flags(HAS_ALIGNED, 0);
    }

    /// Owner: the page hands out pointers 16 bytes into their blocks (after a sample header).
    pub fn set_sample_headers(&self) {
        self.set_flags(SAMPLE_HEADERS, 0);
    }

    /// Whether `free` has a block.
    #[inline(always)]
    pub fn has_free(&self) -> bool {
        !self.free_head().is_null()
    }

    /// The first block of `free`, null if none (owner: the malloc fast path reads it once).
    #[inline(always)]
    pub fn free_head(&self) -> *mut Block {
        self.free.load(Ordering::Relaxed)
    }

    /// `has_free` for a thread that is not the owner.
    fn has_free_acquire(&self) -> bool {
        !self.free.load(Ordering::Acquire).is_null()
    }

    /// Blocks handed out and not collected back (owner).
    #[inline(always)]
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }

    /// Owner: sets `used`. A release store, so a collector that reads it sees the list
    /// heads as they were (see [`Page::reset_if_all_freed_remotely`]).
    #[inline(always)]
    fn set_used(&self, n: u32) {
        self.used.store(n, Ordering::Release);
    }

    /// Pops a block from `free` and clears its freed mark; null if `free` is empty.
    #[cfg(test)]
    pub fn pop(&self) -> *mut Block {
        let b = self.free_head();
        if !b.is_null() {
            // SAFETY: `b` is the head of `free`, just read.
            unsafe { self.pop_head(b) };
        }
        b
    }

    /// Pops `b` off `free` and clears its freed mark.
    ///
    /// # Safety
    /// The caller is the owner and `b` is `free_head()`, not null.
    #[inline(always)]
    pub unsafe fn pop_head(&self, b: *mut Block) {
        self.set_used(self.used() + 1);
        // SAFETY: blocks on `free` are carved from this page's area, hold a valid link, and
        // are the owner's (the caller's) to write.
        unsafe {
            self.free.store((*b).next, Ordering::Release);
            (*b).mark.store(0, Ordering::Relaxed);
        }
    }

    /// The owner gives a block back. Returns the blocks still in use, or None, changing
    /// nothing, if the block is already free.
    ///
    /// # Safety
    /// `b` must be a carved block of this page (`block_of` said so); the caller is the owner.
    #[inline(always)]
    pub unsafe fn push_local(&self, b: *mut Block) -> Option<u32> {
        // SAFETY: per the contract the block is ours to read and, unless free, to write.
        unsafe {
            if Block::is_marked(b) {
                return None;
            }
            Block::set_mark(b);
            (*b).next = self.local_free.load(Ordering::Relaxed);
        }
        self.local_free.store(b, Ordering::Relaxed);
        let used = self.used() - 1;
        self.set_used(used);
        Some(used)
    }

    /// Another thread gives a block back: lock-free push onto `thread_free`. False, changing
    /// nothing, if the block is already free.
    ///
    /// # Safety
    /// `b` must be a carved block of this page (`block_of` said so).
    pub unsafe fn push_thread(&self, b: *mut Block) -> bool {
        let mark = freed_mark(b);
        // SAFETY: per the contract `b` is a block of this page; the swap claims it, so of two
        // racing frees only one goes on.
        if unsafe { (*b).mark.swap(mark, Ordering::Relaxed) } == mark {
            return false;
        }
        // SAFETY: the block is the caller's to write until the push publishes it.
        unsafe { self.push_thread_chain(b, b) };
        true
    }

    /// Prepends the linked blocks `head..=tail` to `thread_free`.
    ///
    /// # Safety
    /// The chain is the caller's, linked from `head` to `tail`, of blocks of this page.
    unsafe fn push_thread_chain(&self, head: *mut Block, tail: *mut Block) {
        let mut first = self.thread_free.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is the caller's to write until the swap publishes it.
            unsafe { (*tail).next = first };
            match self.thread_free.compare_exchange_weak(first, head, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(h) => first = h,
            }
        }
    }

    /// Whether other threads freed blocks the owner has not collected yet.
    pub fn has_thread_free(&self) -> bool {
        !self.thread_free.load(Ordering::Relaxed).is_null()
    }

    /// Owner, under its heap's segment lock: folds `thread_free` and `local_free` into
    /// `free` when `free` is empty. Returns true if `free` now has a block.
    pub fn collect(&self) -> bool {
        if self.has_free() {
            return true;
        }
        if self.has_thread_free() {
            self.collect_thread_free();
        }
        let local = self.local_free.swap(ptr::null_mut(), Ordering::Relaxed);
        if !local.is_null() {
            self.free.store(local, Ordering::Relaxed);
            self.set_flags(0, FREE_IS_ZERO);
        }
        self.has_free()
    }

    /// Owner (or whoever holds the page's bookkeeping), under the segment lock: takes every
    /// block other threads freed and moves it to `local_free`.
    pub fn collect_thread_free(&self) {
        let head = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
        if head.is_null() {
            return;
        }
        // SAFETY: blocks on thread_free were pushed by push_thread with a valid link and are
        // now exclusively ours.
        let (tail, n) = unsafe { chain_end(head) };
        // SAFETY: as above.
        unsafe { (*tail).next = self.local_free.load(Ordering::Relaxed) };
        self.local_free.store(head, Ordering::Relaxed);
        self.set_used(self.used() - n);
    }

    /// A thread that does not own the page, holding the owner's segment lock: if every block
    /// handed out has been freed by other threads (none is live, none is on the owner's own
    /// lists), forgets the blocks and marks the page uncarved, so its memory can be released
    /// while it stays the owner's (the owner's next slow path carves it afresh). Returns
    /// the bytes that were carved, or 0 if the page was left as it was.
    ///
    /// Sound while the owner runs: the owner makes `free` non-empty only on its slow path,
    /// under the lock we hold; it pushes on `local_free` only a live block, and there is
    /// none. Reading `used` (acquire) after `free` sees the list heads as they were when the
    /// owner wrote it.
    pub fn reset_if_all_freed_remotely(&self) -> usize {
        if self.has_free_acquire() {
            return 0;
        }
        let used = self.used.load(Ordering::Acquire);
        // An empty page (`used == 0`) is its owner's to give back.
        if used == 0 || !self.local_free.load(Ordering::Relaxed).is_null() {
            return 0;
        }
        let head = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
        if head.is_null() {
            return 0;
        }
        // SAFETY: the swap made the chain ours; its blocks hold valid links.
        let (tail, n) = unsafe { chain_end(head) };
        // Fewer: some block is live (or its free is still on the way).
        if n != used {
            // SAFETY: the chain is ours, linked from head to tail.
            unsafe { self.push_thread_chain(head, tail) };
            return 0;
        }
        let carved = self.capacity.load(Ordering::Relaxed) as usize * self.block_size.get();
        stats::gauge_add(Gauge::CarvedBytes, -(carved as isize));
        self.set_used(0);
        self.set_capacity(0);
        self.set_flags(0, FREE_IS_ZERO | MEM_IS_ZERO | HAS_ALIGNED | SAMPLE_HEADERS);
        carved
    }

    /// After [`Page::reset_if_all_freed_remotely`] and the release of its memory: the page's
    /// uncarved memory is zero.
    pub fn set_mem_is_zero(&self) {
        self.set_flags(MEM_IS_ZERO, 0);
    }

    /// Owner: carves more blocks onto `free`, each marked free. Returns false if the page is
    /// fully carved.
    pub fn extend(&self) -> bool {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let left = (self.reserved.get() - capacity) as usize;
        if left == 0 {
            return false;
        }
        let bs = self.block_size.get();
        let n = (EXTEND_BYTES / bs).clamp(1, left);
        // SAFETY: blocks capacity..capacity+n lie inside the page's area (n <= left), which the
        // segment reserved for this page; nobody else uses them yet.
        unsafe {
            let first = self.area.get().add(capacity as usize * bs);
            for i in 0..n {
                let b = first.add(i * bs).cast::<Block>();
                (*b).next = if i + 1 < n { first.add((i + 1) * bs).cast() } else { self.free.load(Ordering::Relaxed) };
                Block::set_mark(b);
            }
            self.free.store(first.cast(), Ordering::Relaxed);
        }
        // Fresh blocks are zero (but for the header words) if the memory was, and `free` was
        // empty before (callers only extend an empty list).
        if self.flag(MEM_IS_ZERO) {
            self.set_flags(FREE_IS_ZERO, 0);
        }
        self.set_capacity(capacity + n as u32);
        stats::gauge_add(Gauge::CarvedBytes, (n * bs) as isize);
        true
    }

    /// Sets the carved count (and the carved bytes `free` checks against).
    fn set_capacity(&self, n: u32) {
        self.capacity.store(n, Ordering::Relaxed);
        self.carved_end.store(n as usize * self.block_size.get(), Ordering::Relaxed);
    }

    /// `p` as a block if it is the start of a carved block (the common case, for `free`'s
    /// fast path: a subtraction, a compare and a multiply); None for any other pointer,
    /// which [`Page::block_of`] then judges.
    #[inline(always)]
    pub fn block_at(&self, p: *mut u8) -> Option<*mut Block> {
        let offset = (p as usize).wrapping_sub(self.area.get() as usize);
        if offset >= self.carved_end.load(Ordering::Relaxed) {
            return None;
        }
        let test = self.start_test.get();
        if (offset as u64).wrapping_mul(test) >= test {
            return None;
        }
        Some(p.cast())
    }

    /// Index of the block that holds byte `offset` of the area.
    #[inline(always)]
    pub fn block_index(&self, offset: usize) -> usize {
        ((offset as u64 * self.div_magic.get()) >> DIV_SHIFT) as usize
    }

    /// The start of the block that contains `p`, or null if `p` cannot be a pointer this
    /// page handed out: not a carved block's start, nor (on a page that served aligned
    /// requests) a pointer aligned to more than its distance from its block's start.
    #[inline(always)]
    pub fn block_of(&self, p: *mut u8) -> *mut Block {
        let area = self.area.get();
        let offset = (p as usize).wrapping_sub(area as usize);
        let idx = self.block_index(offset);
        let start = idx * self.block_size.get();
        if idx >= self.capacity.load(Ordering::Relaxed) as usize
            || (start != offset && !self.is_aligned_offset(p, offset - start))
        {
            return ptr::null_mut();
        }
        // SAFETY: idx < capacity, so the block lies inside the page's area.
        unsafe { area.add(start).cast() }
    }

    /// Whether `p`, `delta` bytes into its block, can be an aligned allocation's pointer (the
    /// page gave out such pointers, and `p` is aligned, to more than 16, beyond `delta`) or a
    /// sampled block's (16 bytes in, on a page of the sample heap).
    #[cold]
    fn is_aligned_offset(&self, p: *mut u8, delta: usize) -> bool {
        let align = 1usize << (p as usize).trailing_zeros();
        (self.flag(HAS_ALIGNED) && align > 16 && delta < align) || (self.flag(SAMPLE_HEADERS) && delta == 16)
    }

    /// Usable bytes from `p` (inside block `b`) to the end of the block.
    pub fn usable_from(&self, b: *mut Block, p: *mut u8) -> usize {
        self.block_size.get() - (p as usize - b as usize)
    }

    /// Owner, in a huge span: the single block is carved and handed out.
    pub fn set_single_block_in_use(&self) {
        self.start_test.set(1);
        self.set_capacity(1);
        self.set_used(1);
    }
}

/// The last block of the chain from `head` (not null) and the chain's length.
///
/// # Safety
/// The chain is the caller's, of blocks with valid links, ending in null.
unsafe fn chain_end(head: *mut Block) -> (*mut Block, u32) {
    let (mut tail, mut n) = (head, 1);
    // SAFETY: per the contract.
    unsafe {
        while !(*tail).next.is_null() {
            tail = (*tail).next;
            n += 1;
        }
    }
    (tail, n)
}

/// Most blocks one page can hold (a 64 KiB page of 16-byte blocks).
#[cfg(debug_assertions)]
const MAX_BLOCKS: usize = 4096;

#[cfg(debug_assertions)]
impl Page {
    /// Owner: checks the page's lists: each acyclic, inside the page, of carved block starts
    /// that carry the freed mark, no block on two lists, and `used` equal to the carved
    /// blocks that are on none of `free` and `local_free`. Blocks other threads push while
    /// this runs do not disturb it (pushes only prepend to `thread_free`).
    pub fn check(&self) -> Result<(), &'static str> {
        let cap = self.capacity.load(Ordering::Relaxed) as usize;
        let reserved = self.reserved.get() as usize;
        if cap > reserved || reserved > MAX_BLOCKS {
            return Err("capacity above the blocks the page holds");
        }
        let mut seen = [0u64; MAX_BLOCKS / 64];
        let nfree = self.check_list(self.free.load(Ordering::Relaxed), cap, &mut seen)?;
        let nlocal = self.check_list(self.local_free.load(Ordering::Relaxed), cap, &mut seen)?;
        let nthread = self.check_list(self.thread_free.load(Ordering::Acquire), cap, &mut seen)?;
        if self.used() as usize + nfree + nlocal != cap {
            return Err("used does not match the free lists");
        }
        if nthread > self.used() as usize {
            return Err("more blocks on thread_free than in use");
        }
        Ok(())
    }

    /// Walks one list, marking its blocks in `seen`; returns its length.
    fn check_list(&self, mut b: *mut Block, cap: usize, seen: &mut [u64]) -> Result<usize, &'static str> {
        let mut n = 0;
        while !b.is_null() {
            let offset = (b as usize).wrapping_sub(self.area.get() as usize);
            let idx = offset / self.block_size.get();
            if idx >= cap || idx * self.block_size.get() != offset {
                return Err("a free list holds a pointer that is no carved block of its page");
            }
            if seen[idx / 64] & (1 << (idx % 64)) != 0 {
                return Err("a block is twice on the free lists (a cycle, or two lists)");
            }
            seen[idx / 64] |= 1 << (idx % 64);
            // SAFETY: `b` is a carved block of this page (checked above).
            if unsafe { !Block::is_marked(b) } {
                return Err("a block on a free list lacks the freed mark");
            }
            n += 1;
            // SAFETY: as above; free blocks hold a link.
            b = unsafe { (*b).next };
        }
        Ok(n)
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

    /// The start test accepts exactly the multiples of the block size, for every class and
    /// every offset below 4 MiB near a block boundary (and every offset of the first 64 KiB),
    /// and a huge span's test only offset 0.
    #[test]
    fn start_test_is_exact() {
        for c in 0..NCLASSES {
            let bs = class_size(c);
            let t = start_test(bs);
            let is_start = |o: usize| (o as u64).wrapping_mul(t) < t;
            for o in 0..(64 << 10) {
                assert_eq!(is_start(o), o % bs == 0, "bs {bs} off {o}");
            }
            let mut off = 0usize;
            while off < (4 << 20) {
                for o in [off, off + 1, off + 8, off + 16, off + bs / 2, off + bs - 16, off + bs - 1] {
                    assert_eq!(is_start(o), o % bs == 0, "bs {bs} off {o}");
                }
                off += bs;
            }
        }
        let t = start_test(64 << 20);
        assert!(0u64.wrapping_mul(t) < t);
        for o in [1u64, 16, 4096, 1 << 32, (64 << 20) - 16] {
            assert!(o.wrapping_mul(t) >= t);
        }
    }

    /// `check` accepts sound lists and finds a cycle, a block on two lists, an unmarked free
    /// block and a wrong `used`.
    #[test]
    fn check_finds_broken_lists() {
        let mut mem = vec![0u128; 4096];
        let area = mem.as_mut_ptr().cast::<u8>();
        let fresh = || {
            // SAFETY: an all-zero descriptor is an unused page.
            let page: Page = unsafe { core::mem::zeroed() };
            page.init(1, 32, area, 2048, true);
            assert!(page.extend());
            page
        };
        let page = fresh();
        assert_eq!(page.check(), Ok(()));
        let (a, b) = (page.pop(), page.pop());
        // SAFETY: `a` is a handed-out block of the page.
        assert!(unsafe { page.push_local(a) }.is_some());
        assert_eq!(page.check(), Ok(()));
        // SAFETY: `a` is free already: refused, nothing changes.
        assert!(unsafe { page.push_local(a) }.is_none());
        assert_eq!(page.check(), Ok(()));
        // A cycle on local_free.
        // SAFETY: test-only corruption of blocks we own.
        unsafe { (*a).next = a };
        assert!(page.check().is_err());
        // A handed-out block linked into `free` without its mark, and `used` off by one.
        let page = fresh();
        let c = page.pop();
        // SAFETY: test-only corruption.
        unsafe { (*c).next = page.free.load(Ordering::Relaxed) };
        page.free.store(c, Ordering::Relaxed);
        assert!(page.check().is_err());
        page.set_used(page.used() + 1);
        assert!(page.check().is_err());
        let _ = b;
    }
}
