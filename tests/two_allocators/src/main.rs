//! Two allocators in one process, hammering the program break at once: two threads call
//! glibc's malloc/free/malloc_trim with 64 KiB .. 1 MiB blocks (below glibc's mmap threshold,
//! raised to 4 MiB, so they live in glibc's main arena in the break: run it with
//! `MALLOC_ARENA_MAX=1`), two threads allocate 1 KiB .. 120 KiB blocks through tidemalloc
//! (`#[global_allocator]`, no `override` feature) and call `tidemalloc::trim(0)`. Every block
//! is filled with a pattern and checked before it is freed. Exits 0 after `SECONDS` seconds
//! (argument 1, default 6) with a summary; a lost pattern exits 1; a crash is a signal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

static STOP: AtomicBool = AtomicBool::new(false);
static ROUNDS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// Writes the pattern of block `id` into `p..p+n`: its first and last words and one word per
/// 4 KiB (every page is touched).
///
/// # Safety
/// `p` is a live block of at least `n >= 8` bytes, aligned to 8.
unsafe fn fill(p: *mut u8, n: usize, id: u64) {
    let mut o = 0;
    while o + 8 <= n {
        // SAFETY: in bounds and aligned per the contract.
        unsafe { (p.add(o) as *mut u64).write(id ^ o as u64) };
        o += 4096;
    }
    // SAFETY: as above (n >= 8).
    unsafe { (p.add((n - 8) & !7) as *mut u64).write(!id) };
}

/// Checks what [`fill`] wrote.
///
/// # Safety
/// As for [`fill`].
unsafe fn check(p: *const u8, n: usize, id: u64, who: &str) {
    let mut o = 0;
    // SAFETY: as in fill.
    let last = unsafe { (p.add((n - 8) & !7) as *const u64).read() };
    while o + 8 <= n {
        if o + 8 > ((n - 8) & !7) {
            break;
        }
        // SAFETY: as in fill.
        let v = unsafe { (p.add(o) as *const u64).read() };
        if v != id ^ o as u64 {
            eprintln!("two_allocators: {who} block {p:p} ({n} bytes) lost its contents at offset {o}");
            std::process::exit(1);
        }
        o += 4096;
    }
    if last != !id {
        eprintln!("two_allocators: {who} block {p:p} ({n} bytes) lost its last word");
        std::process::exit(1);
    }
}

fn glibc_thread(seed: u64) {
    let mut rng = Rng(seed);
    let mut id = seed << 32;
    while !STOP.load(Relaxed) {
        let n = rng.range(4, 24);
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let size = rng.range(64 << 10, 1 << 20);
            // SAFETY: glibc's malloc has no preconditions.
            let p = unsafe { libc::malloc(size) }.cast::<u8>();
            assert!(!p.is_null(), "glibc malloc({size}) failed");
            id += 1;
            // SAFETY: a fresh block of `size` bytes from malloc (16-aligned).
            unsafe { fill(p, size, id) };
            blocks.push((p, size, id));
        }
        while let Some((p, size, id)) = blocks.pop() {
            // SAFETY: live glibc block of `size` bytes.
            unsafe {
                check(p, size, id, "glibc");
                libc::free(p.cast());
            }
        }
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        ROUNDS[0].fetch_add(1, Relaxed);
    }
}

fn tide_thread(seed: u64) {
    let mut rng = Rng(seed);
    let mut id = seed << 32;
    while !STOP.load(Relaxed) {
        let n = rng.range(100, 400);
        let mut blocks: Vec<(Vec<u8>, u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let size = rng.range(1 << 10, 120 << 10) & !7;
            let mut v = vec![0u8; size];
            id += 1;
            // SAFETY: the Vec's buffer is `size` bytes, 16-aligned (tidemalloc's minimum).
            unsafe { fill(v.as_mut_ptr(), size, id) };
            blocks.push((v, id));
        }
        for (v, id) in blocks.drain(..) {
            // SAFETY: as above.
            unsafe { check(v.as_ptr(), v.len(), id, "tidemalloc") };
        }
        tidemalloc::trim(0);
        ROUNDS[1].fetch_add(1, Relaxed);
    }
}

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(6);
    // SAFETY: mallopt has no preconditions; before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    let start = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|i| std::thread::spawn(move || if i % 2 == 0 { glibc_thread(i + 1) } else { tide_thread(i + 1) }))
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    STOP.store(true, Relaxed);
    for t in threads {
        t.join().expect("a thread panicked");
    }
    let s = tidemalloc::stats();
    println!(
        "two_allocators: ok: {} glibc rounds, {} tidemalloc rounds in {:.1?}; tidemalloc brk_calls {} reserved_brk {} reserved_mmap {}",
        ROUNDS[0].load(Relaxed),
        ROUNDS[1].load(Relaxed),
        start.elapsed(),
        s.brk_calls,
        s.reserved_brk,
        s.reserved_mmap
    );
}
