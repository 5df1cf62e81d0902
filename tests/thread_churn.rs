//! Thread churn: 10,000 short-lived threads (8 at a time), each allocating blocks of mixed
//! sizes (16 B .. 64 KiB, and some above the 128 KiB threshold), freeing half of them itself
//! and handing the other half to the main thread, which frees them after the thread exited.
//! The memory the allocator reserves must stay bounded (exited threads' segments are
//! reclaimed, not stranded) and `in_use` must come back to where it started.

use std::time::Instant;
use tidemalloc::{free, malloc, stats};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::Rng;

const THREADS: usize = 10_000;
const BATCH: usize = 8;
const EARLY: usize = 500;

/// A block handed from a worker to the main thread (address, size, id).
struct Handed(usize, usize, u64);

fn worker(n: usize) -> Vec<Handed> {
    let mut rng = Rng::new(0xC4_0000 + n as u64);
    let count = rng.range(8, 24);
    let mut blocks = Vec::with_capacity(count + 2);
    for k in 0..count {
        let size = rng.log_range(16, 64 << 10);
        blocks.push((size, k));
    }
    // One thread in four also has large blocks.
    if n.is_multiple_of(4) {
        blocks.push((rng.range((128 << 10) + 1, 1 << 20), count));
        blocks.push((rng.range(128 << 10, 3 << 20), count + 1));
    }
    let mut mine = Vec::new();
    let mut handed = Vec::new();
    for (i, &(size, k)) in blocks.iter().enumerate() {
        let id = ((n as u64) << 16) | k as u64;
        let p = malloc(size);
        assert!(!p.is_null(), "thread {n}: malloc({size}) failed");
        // SAFETY: a fresh block of `size` bytes.
        unsafe { common::fill(p, size, id) };
        if i % 2 == 0 {
            handed.push(Handed(p as usize, size, id));
        } else {
            mine.push((p, size, id));
        }
    }
    for (p, size, id) in mine {
        // SAFETY: a live block of `size` bytes, freed once.
        unsafe {
            common::check(p, size, id);
            free(p);
        }
    }
    handed
}

#[test]
fn ten_thousand_short_lived_threads() {
    let t0 = Instant::now();
    let start = stats();
    let mut early = None;
    let mut spawned = 0;
    let mut handed_total = 0;
    while spawned < THREADS {
        let handles: Vec<_> = (spawned..spawned + BATCH).map(|n| std::thread::spawn(move || worker(n))).collect();
        spawned += BATCH;
        for h in handles {
            for Handed(p, size, id) in h.join().expect("worker panicked") {
                // SAFETY: the worker handed over a live block of `size` bytes; it has exited.
                unsafe {
                    common::check(p as *const u8, size, id);
                    free(p as *mut u8);
                }
                handed_total += 1;
            }
        }
        if spawned >= EARLY && early.is_none() {
            early = Some(stats());
        }
    }
    let early = early.unwrap();
    let end = stats();
    eprintln!("thread churn: {spawned} threads, {handed_total} blocks freed by main, {:?}", t0.elapsed());
    eprintln!("  start {start:?}\n  early {early:?}\n  end   {end:?}");

    let reserved = |s: &tidemalloc::Stats| s.reserved_brk + s.reserved_mmap;
    assert!(
        reserved(&end) <= 2 * reserved(&early) + (64 << 20),
        "reserved memory grew from {} after {EARLY} threads to {} after {THREADS}",
        reserved(&early),
        reserved(&end)
    );
    let slack = 2 << 20;
    assert!(
        end.in_use <= start.in_use + slack && end.in_use + slack >= start.in_use,
        "in_use did not come back: start {} end {}",
        start.in_use,
        end.in_use
    );
    assert_eq!(end.large_blocks, start.large_blocks, "large blocks leaked");
}
