//! The differential fuzzer, shared by the bounded test (`tests/fuzz.rs`) and the long mode
//! (`benches/fuzz.rs`): both include this file with `#[path]`.
//!
//! Several threads run seeded random operations on tidemalloc's Rust API against a shadow
//! model of their live blocks: malloc, calloc, realloc, aligned_alloc (memalign /
//! posix_memalign / valloc / pvalloc-like alignments, zeroed or not), free, free_sized (the
//! Rust API has none: `free`), usable_size; blocks are handed to other threads, which check,
//! resize and free them. Every block carries a pattern derived from its id and offset,
//! checked on receipt and before every free and resize; realloc must keep the old contents up
//! to min(old, new); calloc'ed memory must read zero; every block must have its alignment and
//! a usable size of at least the request (its last usable byte is written: it must not belong
//! to a neighbour). Now and then: `trim`, a flip of the mmap threshold (4 KiB, 64 KiB,
//! 128 KiB, 1 MiB), `check_invariants`, and (thread 0) a fork whose child checks a few live
//! blocks, frees some (also blocks of other threads, freed in the child), allocates, and
//! `_exit`s; the parent checks its exit status.
//!
//! Sizes: 40% tiny (1-64 B), 40% small (up to 8 KiB), 19% medium (up to 512 KiB), 1% large
//! (up to 8 MiB). A thread keeps at most `SLOTS` blocks and `LIVE_CAP` bytes.
//!
//! Each thread's operations come from its own generator, seeded from the run's seed and its
//! index: a seed replays the same random streams, but blocks handed between threads arrive
//! when timing says, so a run of several threads may diverge; with one thread a replay is
//! exact. Failures panic with the seed in the message.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Blocks a thread keeps at most.
const SLOTS: usize = 1024;
/// Bytes a thread keeps live at most (beyond it, new blocks are tiny).
const LIVE_CAP: usize = 48 << 20;
/// Blocks up to this size are filled and checked byte for byte; bigger ones on their first
/// FULL bytes, one word every 4 KiB and their last 8 bytes.
const FULL: usize = 1024;
/// The mmap thresholds the fuzzer switches between.
const THRESHOLDS: [usize; 4] = [4 << 10, 64 << 10, 128 << 10, 1 << 20];
/// Operations between two `check_invariants` calls of a thread.
const CHECK_EVERY: u64 = 20_000;

// ---- generator ----

/// splitmix64.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// The seed: `TIDEMALLOC_FUZZ_SEED` (decimal or 0x-hex) if set, else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("TIDEMALLOC_FUZZ_SEED") {
        Ok(s) => parse_u64(&s).unwrap_or_else(|| panic!("TIDEMALLOC_FUZZ_SEED={s:?} is not a number")),
        Err(_) => default,
    }
}

pub fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A seed from the clock and the process id (for runs without a given seed).
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut r = Rng::new(t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32));
    r.next_u64()
}

/// Writes `s` to stderr with write(2): shown even when the test harness captures output or
/// the process then aborts.
pub fn say(s: &str) {
    let mut b = s.as_bytes();
    while !b.is_empty() {
        // SAFETY: the pointer and length describe a live byte slice.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

// ---- patterns ----

/// The expected 8 bytes at offset `o` of block `id` (any `o`; byte k of the word is byte
/// `o + k` of the block, so words and bytes agree).
#[inline]
fn word(id: u64, o: usize) -> u64 {
    if o.is_multiple_of(8) {
        // The 8 bytes share `o >> 8`, and their low offset bytes are (o as u8) | k.
        let h = byte(id, o) ^ o as u8;
        return (h as u64 * 0x0101_0101_0101_0101) ^ ((o as u8 as u64 * 0x0101_0101_0101_0101) | 0x0706_0504_0302_0100);
    }
    let mut w = 0u64;
    for k in 0..8 {
        w |= (byte(id, o + k) as u64) << (8 * k);
    }
    w
}

/// The expected byte at offset `o` of block `id`: it depends on both, so a block with a
/// neighbour's or an older block's contents, or moved by some bytes, does not pass.
#[inline]
fn byte(id: u64, o: usize) -> u8 {
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (o as u64 >> 8).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x >> 56) as u8 ^ o as u8
}

/// Calls `f(offset, width)` for every checked position of a block of `size` bytes.
#[inline]
fn positions(size: usize, mut f: impl FnMut(usize, usize) -> bool) -> bool {
    let full = size.min(FULL);
    let mut o = 0;
    while o + 8 <= full {
        if !f(o, 8) {
            return false;
        }
        o += 8;
    }
    while o < full {
        if !f(o, 1) {
            return false;
        }
        o += 1;
    }
    if size > FULL {
        let mut o = 4096;
        while o + 8 <= size {
            if !f(o, 8) {
                return false;
            }
            o += 4096;
        }
        return f(size - 8, 8);
    }
    true
}

/// Writes block `id`'s pattern into `size` bytes at `p`.
///
/// # Safety
/// `p..p+size` must be writable.
pub unsafe fn fill(p: *mut u8, size: usize, id: u64) {
    positions(size, |o, w| {
        // SAFETY: every position lies inside `p..p+size` (contract).
        unsafe {
            if w == 8 {
                p.add(o).cast::<u64>().write_unaligned(word(id, o));
            } else {
                p.add(o).write(byte(id, o));
            }
        }
        true
    });
}

/// Checks the pattern of block `id` (`size` bytes) on the positions below `limit`. Returns
/// the first bad offset. Allocates nothing (usable in a fork child).
///
/// # Safety
/// `p..p+limit` must be readable.
pub unsafe fn first_bad(p: *const u8, size: usize, limit: usize, id: u64) -> Option<usize> {
    let mut bad = None;
    positions(size, |o, w| {
        if o + w > limit {
            return true;
        }
        // SAFETY: the position lies below `limit` (contract).
        let ok = unsafe {
            if w == 8 { p.add(o).cast::<u64>().read_unaligned() == word(id, o) } else { p.add(o).read() == byte(id, o) }
        };
        if !ok {
            bad = Some(o);
        }
        ok
    });
    bad
}

/// First non-zero offset of `p..p+size`: every byte up to 64 KiB, then one in 256 and the
/// last 8. Allocates nothing.
///
/// # Safety
/// `p..p+size` must be readable.
pub unsafe fn first_nonzero(p: *const u8, size: usize) -> Option<usize> {
    let dense = size.min(64 << 10);
    // SAFETY: per the contract.
    let s = unsafe { std::slice::from_raw_parts(p, size) };
    if let Some(o) = s[..dense].iter().position(|&b| b != 0) {
        return Some(o);
    }
    let mut o = dense;
    while o < size {
        if s[o] != 0 {
            return Some(o);
        }
        o += 256;
    }
    (dense..size).rev().take(8).find(|&o| s[o] != 0)
}

// ---- the model ----

/// How a block was allocated (decides how it is resized).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    Malloc,
    Calloc,
    Aligned,
    AlignedZeroed,
}

/// A live block of the model.
#[derive(Clone, Copy, Debug)]
struct Blk {
    addr: usize,
    size: usize,
    align: usize,
    id: u64,
    how: How,
}

impl std::fmt::Display for Blk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block {:#x} ({:?}, {} bytes, align {}, id {:#x})",
            self.addr, self.how, self.size, self.align, self.id
        )
    }
}

/// Counts of what was done.
#[derive(Default, Clone, Copy, Debug)]
pub struct Counts {
    pub allocs: u64,
    pub frees: u64,
    pub reallocs: u64,
    pub usable: u64,
    pub checks: u64,
    pub handoffs: u64,
    pub received: u64,
    pub trims: u64,
    pub flips: u64,
    pub invariant_checks: u64,
    pub forks: u64,
}

impl Counts {
    pub fn ops(&self) -> u64 {
        self.allocs + self.frees + self.reallocs + self.usable + self.checks + self.handoffs
    }

    fn add(&mut self, o: &Counts) {
        self.allocs += o.allocs;
        self.frees += o.frees;
        self.reallocs += o.reallocs;
        self.usable += o.usable;
        self.checks += o.checks;
        self.handoffs += o.handoffs;
        self.received += o.received;
        self.trims += o.trims;
        self.flips += o.flips;
        self.invariant_checks += o.invariant_checks;
        self.forks += o.forks;
    }
}

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub threads: usize,
    pub duration: Duration,
    /// Thread 0 forks, one time in this many operations (0: never).
    pub fork_one_in: u64,
    /// Print a progress line this often (None: never).
    pub progress: Option<Duration>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub counts: Counts,
    pub elapsed: Duration,
}

impl Summary {
    pub fn line(&self, cfg: &Config) -> String {
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64();
        format!(
            "fuzz: seed {:#x}, {} threads, {} ops in {:.1} s ({:.0} ops/s): {} allocs, {} frees, {} reallocs, {} usable_size, {} checks, {} hand-offs, {} trims, {} threshold flips, {} invariant checks, {} forks",
            cfg.seed,
            cfg.threads,
            c.ops(),
            secs,
            c.ops() as f64 / secs.max(1e-9),
            c.allocs,
            c.frees,
            c.reallocs,
            c.usable,
            c.checks,
            c.handoffs,
            c.trims,
            c.flips,
            c.invariant_checks,
            c.forks
        )
    }
}

struct Shared {
    seed: u64,
    inboxes: Vec<Mutex<Vec<Blk>>>,
    stop: AtomicBool,
    failed: AtomicBool,
    ops: AtomicU64,
    /// Threads that have freed their blocks at the end (and send no more).
    done: AtomicUsize,
}

struct Worker<'a> {
    t: usize,
    rng: Rng,
    shared: &'a Shared,
    slots: Vec<Option<Blk>>,
    live_bytes: usize,
    next_id: u64,
    counts: Counts,
    fork_one_in: u64,
}

macro_rules! fail {
    ($w:expr, $($arg:tt)*) => {{
        $w.shared.failed.store(true, Ordering::Relaxed);
        panic!(
            "fuzz failure (seed {:#x}, thread {}; replay: TIDEMALLOC_FUZZ_SEED={:#x}): {}",
            $w.shared.seed, $w.t, $w.shared.seed, format!($($arg)*)
        )
    }};
}

/// 40% tiny (1-64), 40% small (65 B - 8 KiB), 19% medium (8 KiB - 512 KiB), 1% large
/// (512 KiB - 8 MiB); within each band, log-uniform half of the time.
fn rand_size(rng: &mut Rng) -> usize {
    let (lo, hi): (usize, usize) = match rng.below(100) {
        0..40 => (1, 64),
        40..80 => (65, 8 << 10),
        80..99 => ((8 << 10) + 1, 512 << 10),
        _ => ((512 << 10) + 1, 8 << 20),
    };
    if rng.one_in(2) {
        let lo_bits = usize::BITS - lo.leading_zeros();
        let hi_bits = usize::BITS - hi.leading_zeros();
        let bits = rng.range(lo_bits as usize, hi_bits as usize) as u32;
        let top = (1usize << bits).min(hi);
        let bottom = (1usize << (bits - 1)).max(lo);
        rng.range(bottom.min(top), top)
    } else {
        rng.range(lo, hi)
    }
}

/// Alignments of the memalign family: posix_memalign's (a power of two, at least the pointer
/// size) mostly up to a page, sometimes up to 4 MiB; valloc's (a page).
fn rand_align(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0 => 4096,
        1 => 1 << rng.range(13, 22),
        _ => 1 << rng.range(3, 12),
    }
}

impl Worker<'_> {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        ((self.t as u64) << 48) | self.next_id
    }

    fn check(&self, b: &Blk, what: &str) {
        if !b.addr.is_multiple_of(b.align) {
            fail!(self, "{what}: {b} lost its alignment");
        }
        // SAFETY: the block is live and `size` bytes long.
        if let Some(o) = unsafe { first_bad(b.addr as *const u8, b.size, b.size, b.id) } {
            fail!(self, "{what}: {b}: pattern broken at offset {o}");
        }
    }

    /// Allocates a block of a random size, alignment and kind; None if the size would pass
    /// the thread's live-bytes cap (then a tiny block is taken instead).
    fn alloc(&mut self) -> Blk {
        let mut size = rand_size(&mut self.rng);
        if self.live_bytes + size > LIVE_CAP {
            size = self.rng.range(1, 64);
        }
        let (how, align) = match self.rng.below(20) {
            0..10 => (How::Malloc, 16),
            10..14 => (How::Calloc, 16),
            14..18 => (How::Aligned, rand_align(&mut self.rng)),
            18 => (How::AlignedZeroed, rand_align(&mut self.rng)),
            _ => {
                // pvalloc-like: a page-aligned block of whole pages.
                size = size.next_multiple_of(4096);
                (How::Aligned, 4096)
            }
        };
        let p = match how {
            How::Malloc => tidemalloc::malloc(size),
            How::Calloc => tidemalloc::calloc(size),
            How::Aligned => tidemalloc::aligned_alloc(align, size),
            How::AlignedZeroed => tidemalloc::aligned_alloc_zeroed(align, size),
        };
        if p.is_null() {
            fail!(self, "{how:?}(size {size}, align {align}) returned null");
        }
        if !(p as usize).is_multiple_of(align.max(16)) {
            fail!(self, "{how:?}(size {size}, align {align}) returned {p:p}: misaligned");
        }
        if matches!(how, How::Calloc | How::AlignedZeroed) {
            // SAFETY: a fresh block of `size` bytes.
            if let Some(o) = unsafe { first_nonzero(p, size) } {
                fail!(self, "{how:?}(size {size}, align {align}) = {p:p}: byte {o} is not zero");
            }
        }
        // SAFETY: as above.
        let usable = unsafe { tidemalloc::usable_size(p) };
        if usable < size {
            fail!(self, "{how:?}(size {size}, align {align}) = {p:p}: usable_size {usable} < {size}");
        }
        let id = self.new_id();
        // SAFETY: as above.
        unsafe { fill(p, size, id) };
        self.live_bytes += size;
        self.counts.allocs += 1;
        Blk { addr: p as usize, size, align: align.max(16), id, how }
    }

    fn free(&mut self, b: Blk, what: &str) {
        self.check(&b, what);
        self.live_bytes -= b.size;
        // SAFETY: the block is live and ours; nobody uses it afterwards. (free_sized: the
        // Rust API has none, so both are `free`.)
        unsafe { tidemalloc::free(b.addr as *mut u8) };
        self.counts.frees += 1;
    }

    fn realloc(&mut self, b: &mut Blk) {
        self.check(b, "before realloc");
        let new_size = match self.rng.below(5) {
            0 => (b.size * 2).min(8 << 20),
            1 => (b.size / 2).max(1),
            2 => b.size + self.rng.range(1, 64),
            3 => b.size.saturating_sub(self.rng.range(1, 64)).max(1),
            _ => rand_size(&mut self.rng),
        };
        // Growing past the thread's cap shrinks instead.
        let new_size = if self.live_bytes - b.size + new_size > LIVE_CAP { (b.size / 2).max(1) } else { new_size };
        let p = b.addr as *mut u8;
        // SAFETY: the block is live and ours, allocated with this alignment; the new size is
        // non-zero.
        let q = unsafe {
            if b.align <= 16 {
                tidemalloc::realloc(p, new_size)
            } else {
                tidemalloc::realloc_aligned(p, b.align, new_size)
            }
        };
        if q.is_null() {
            fail!(self, "realloc({b}, {new_size}) returned null");
        }
        if !(q as usize).is_multiple_of(b.align) {
            fail!(self, "realloc({b}, {new_size}) = {q:p}: lost the alignment");
        }
        let keep = b.size.min(new_size);
        // SAFETY: the new block holds at least `new_size` bytes.
        if let Some(o) = unsafe { first_bad(q, b.size, keep, b.id) } {
            fail!(self, "realloc({b}, {new_size}) = {q:p}: old contents lost at offset {o} (kept {keep} bytes)");
        }
        // SAFETY: as above.
        let usable = unsafe { tidemalloc::usable_size(q) };
        if usable < new_size {
            fail!(self, "realloc({b}, {new_size}) = {q:p}: usable_size {usable} < {new_size}");
        }
        // SAFETY: as above.
        unsafe { fill(q, new_size, b.id) };
        self.live_bytes = self.live_bytes - b.size + new_size;
        b.addr = q as usize;
        b.size = new_size;
        self.counts.reallocs += 1;
    }

    /// usable_size is at least the request, and the last usable byte is ours to write.
    fn usable(&mut self, b: &Blk) {
        // SAFETY: the block is live.
        let usable = unsafe { tidemalloc::usable_size(b.addr as *const u8) };
        if usable < b.size {
            fail!(self, "usable_size({b}) = {usable} < {}", b.size);
        }
        if usable > b.size {
            // SAFETY: the usable bytes beyond the request belong to the block; the pattern
            // only covers the request, so this changes nothing checked (but a neighbour's
            // pattern if the usable size were a lie).
            unsafe { (b.addr as *mut u8).add(usable - 1).write(0xEE) };
        }
        self.counts.usable += 1;
    }

    fn hand_off(&mut self, b: Blk) {
        let n = self.shared.inboxes.len();
        let to = (self.t + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        self.live_bytes -= b.size;
        self.shared.inboxes[to].lock().unwrap().push(b);
        self.counts.handoffs += 1;
    }

    fn receive(&mut self) {
        let got = std::mem::take(&mut *self.shared.inboxes[self.t].lock().unwrap());
        for b in got {
            self.check(&b, "received block");
            self.counts.received += 1;
            let i = self.rng.below(SLOTS as u64) as usize;
            if self.slots[i].is_none() && self.live_bytes + b.size <= LIVE_CAP {
                self.live_bytes += b.size;
                self.slots[i] = Some(b);
            } else {
                self.live_bytes += b.size;
                self.free(b, "received block, freed");
            }
        }
    }

    fn step(&mut self) {
        let i = self.rng.below(SLOTS as u64) as usize;
        match self.slots[i].take() {
            None => self.slots[i] = Some(self.alloc()),
            Some(mut b) => match self.rng.below(20) {
                0..5 => self.free(b, "before free"),
                5..9 => self.free(b, "before free_sized"),
                9..15 => {
                    self.realloc(&mut b);
                    self.slots[i] = Some(b);
                }
                15..17 => {
                    self.usable(&b);
                    self.slots[i] = Some(b);
                }
                17..19 if self.shared.inboxes.len() > 1 => self.hand_off(b),
                _ => {
                    self.check(&b, "check");
                    self.counts.checks += 1;
                    self.slots[i] = Some(b);
                }
            },
        }
    }

    fn run(&mut self, deadline: Instant) {
        let mut n: u64 = 0;
        loop {
            for _ in 0..64 {
                self.step();
                n += 1;
                if self.rng.one_in(4000) {
                    tidemalloc::trim(0);
                    self.counts.trims += 1;
                }
                if self.rng.one_in(5000) {
                    let th = THRESHOLDS[self.rng.below(THRESHOLDS.len() as u64) as usize];
                    if !tidemalloc::set_mmap_threshold(th) {
                        fail!(self, "set_mmap_threshold({th}) refused");
                    }
                    self.counts.flips += 1;
                }
                if self.t == 0 && self.fork_one_in > 0 && self.rng.one_in(self.fork_one_in) {
                    self.fork();
                }
                if n.is_multiple_of(CHECK_EVERY) {
                    tidemalloc::check_invariants();
                    self.counts.invariant_checks += 1;
                }
            }
            self.receive();
            self.shared.ops.fetch_add(64, Ordering::Relaxed);
            if self.shared.failed.load(Ordering::Relaxed) || self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if Instant::now() >= deadline {
                self.shared.stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        // Everything goes back: our blocks now, then (once nobody sends) what is in our inbox.
        for i in 0..SLOTS {
            if let Some(b) = self.slots[i].take() {
                self.free(b, "final free");
            }
        }
        self.shared.done.fetch_add(1, Ordering::AcqRel);
        while self.shared.done.load(Ordering::Acquire) < self.shared.inboxes.len() {
            if self.shared.failed.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.receive();
        tidemalloc::check_invariants();
        self.counts.invariant_checks += 1;
    }

    /// Forks: the child checks and frees a few of our blocks and of the blocks other threads
    /// sent us, allocates, checks the allocator's invariants and `_exit`s with a code saying
    /// what failed; the parent waits and checks it.
    fn fork(&mut self) {
        // Chosen before the fork: up to 8 of our blocks and 4 from our inbox (only this
        // thread takes blocks out of it, so they stay live).
        let mut ours = [None::<Blk>; 8];
        let mut k = 0;
        for b in self.slots.iter().flatten() {
            if k == ours.len() {
                break;
            }
            if self.rng.one_in(8) {
                ours[k] = Some(*b);
                k += 1;
            }
        }
        let mut sent = [None::<Blk>; 4];
        for (s, b) in sent.iter_mut().zip(self.shared.inboxes[self.t].lock().unwrap().iter()) {
            *s = Some(*b);
        }
        let salt = self.rng.next_u64();
        // SAFETY: fork has no preconditions; the child only calls tidemalloc, the pattern
        // checks (no allocation) and async-signal-safe functions, then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            fail!(self, "fork failed: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: we are the child.
            unsafe { fork_child(&ours, &sent, salt) };
        }
        let mut st = 0;
        loop {
            // SAFETY: `st` is a valid out-pointer; `pid` is our child.
            let r = unsafe { libc::waitpid(pid, &mut st, 0) };
            if r == pid {
                break;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                fail!(self, "waitpid failed: {}", std::io::Error::last_os_error());
            }
        }
        if libc::WIFSIGNALED(st) {
            let sig = libc::WTERMSIG(st);
            fail!(
                self,
                "fork child killed by signal {sig}{}",
                if sig == libc::SIGALRM { " (watchdog: deadlock)" } else { "" }
            );
        }
        let code = libc::WEXITSTATUS(st);
        if code != 0 {
            let why = match code {
                10 => "a block of the forking thread lost its pattern",
                11 => "a block another thread sent lost its pattern",
                12 => "malloc/calloc/realloc/aligned_alloc returned null",
                13 => "calloc'ed memory is not zero",
                14 => "a block is misaligned or its usable size too small",
                15 => "a block allocated in the child lost its pattern",
                _ => "unknown",
            };
            fail!(self, "fork child exited with {code}: {why}");
        }
        self.counts.forks += 1;
    }
}

/// The fork child's work; never returns. Only tidemalloc, the pattern checks and
/// async-signal-safe calls (no std I/O, locks or threads: other threads of the parent may
/// have held them).
///
/// # Safety
/// Only in a fork child, with blocks that were live in the parent.
unsafe fn fork_child(ours: &[Option<Blk>], sent: &[Option<Blk>], salt: u64) -> ! {
    let exit = |code: i32| -> ! {
        // SAFETY: _exit ends the child without running atexit handlers or destructors.
        unsafe { libc::_exit(code) }
    };
    // SAFETY: alarm is async-signal-safe; SIGALRM's default action ends a deadlocked child.
    unsafe { libc::alarm(20) };
    for (bs, code) in [(ours, 10), (sent, 11)] {
        for b in bs.iter().flatten() {
            // SAFETY: the block was live in the parent, so it is in the child.
            if unsafe { first_bad(b.addr as *const u8, b.size, b.size, b.id) }.is_some() {
                exit(code);
            }
        }
    }
    // Free half of our blocks and all the others' (their owners do not exist here).
    for (i, b) in ours.iter().enumerate() {
        if let Some(b) = b
            && i % 2 == 0
        {
            // SAFETY: live in the child, freed once.
            unsafe { tidemalloc::free(b.addr as *mut u8) };
        }
    }
    for b in sent.iter().flatten() {
        // SAFETY: as above.
        unsafe { tidemalloc::free(b.addr as *mut u8) };
    }
    let mut rng = Rng::new(salt);
    let mut mine = [(0usize, 0usize, 0u64, 16usize); 32];
    for (i, m) in mine.iter_mut().enumerate() {
        let size = if i % 8 == 7 { rng.range(200 << 10, 3 << 20) } else { rand_size(&mut rng).min(1 << 20) };
        let (p, zero, align) = match i % 4 {
            0 => (tidemalloc::malloc(size), false, 16),
            1 => (tidemalloc::calloc(size), true, 16),
            2 => (tidemalloc::aligned_alloc(4096, size), false, 4096),
            _ => (tidemalloc::aligned_alloc_zeroed(64, size), true, 64),
        };
        if p.is_null() {
            exit(12);
        }
        // SAFETY: a fresh block of `size` bytes.
        if zero && unsafe { first_nonzero(p, size) }.is_some() {
            exit(13);
        }
        // SAFETY: as above.
        if !(p as usize).is_multiple_of(align) || unsafe { tidemalloc::usable_size(p) } < size {
            exit(14);
        }
        let id = salt ^ i as u64;
        // SAFETY: as above.
        unsafe { fill(p, size, id) };
        *m = (p as usize, size, id, align);
    }
    for m in mine.iter_mut().step_by(3) {
        let new_size = m.1 / 2 + 1 + (m.1 & 0xFFF);
        // SAFETY: a live block of ours, allocated with alignment `m.3`.
        let q = unsafe {
            if m.3 <= 16 {
                tidemalloc::realloc(m.0 as *mut u8, new_size)
            } else {
                tidemalloc::realloc_aligned(m.0 as *mut u8, m.3, new_size)
            }
        };
        if q.is_null() {
            exit(12);
        }
        if !(q as usize).is_multiple_of(m.3) {
            exit(14);
        }
        // SAFETY: the new block holds `new_size` bytes, the old contents up to min.
        if unsafe { first_bad(q, m.1, m.1.min(new_size), m.2) }.is_some() {
            exit(15);
        }
        // SAFETY: as above.
        unsafe { fill(q, new_size, m.2) };
        *m = (q as usize, new_size, m.2, m.3);
    }
    tidemalloc::check_invariants();
    for &(p, size, id, _) in &mine {
        // SAFETY: live blocks of ours.
        if unsafe { first_bad(p as *const u8, size, size, id) }.is_some() {
            exit(15);
        }
        // SAFETY: as above, freed once.
        unsafe { tidemalloc::free(p as *mut u8) };
    }
    tidemalloc::check_invariants();
    exit(0)
}

/// Runs the fuzzer; panics (with the seed) on the first failure.
pub fn run(cfg: &Config) -> Summary {
    assert!(cfg.threads >= 1);
    say(&format!(
        "fuzz: seed {:#x}, {} threads, {:.0} s (replay: TIDEMALLOC_FUZZ_SEED={:#x})\n",
        cfg.seed,
        cfg.threads,
        cfg.duration.as_secs_f64(),
        cfg.seed
    ));
    let shared = Arc::new(Shared {
        seed: cfg.seed,
        inboxes: (0..cfg.threads).map(|_| Mutex::new(Vec::new())).collect(),
        stop: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        done: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let threshold_before = tidemalloc::get_mmap_threshold();
    let handles: Vec<_> = (0..cfg.threads)
        .map(|t| {
            let shared = Arc::clone(&shared);
            let fork_one_in = cfg.fork_one_in;
            let seed = cfg.seed;
            std::thread::Builder::new()
                .name(format!("fuzz-{t}"))
                .spawn(move || {
                    let mut w = Worker {
                        t,
                        rng: Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
                        shared: &shared,
                        slots: vec![None; SLOTS],
                        live_bytes: 0,
                        next_id: 0,
                        counts: Counts::default(),
                        fork_one_in,
                    };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run(deadline)));
                    if let Err(e) = r {
                        shared.failed.store(true, Ordering::Relaxed);
                        std::panic::resume_unwind(e);
                    }
                    w.counts
                })
                .expect("spawn a fuzz thread")
        })
        .collect();
    if let Some(every) = cfg.progress {
        let mut last = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= every {
                last = Instant::now();
                let ops = shared.ops.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                say(&format!(
                    "fuzz: {:.0} s, {ops} ops ({:.0} ops/s), seed {:#x}\n",
                    secs,
                    ops as f64 / secs,
                    cfg.seed
                ));
            }
        }
    }
    let mut counts = Counts::default();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(c) => counts.add(&c),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failure.get_or_insert(msg);
            }
        }
    }
    tidemalloc::set_mmap_threshold(threshold_before);
    if let Some(msg) = failure {
        panic!("{msg}");
    }
    Summary { counts, elapsed: started.elapsed() }
}
