//! Seeded multi-threaded stress test with a shadow model.
//!
//! Eight threads run a deterministic (per-thread seeded) mix of alloc / realloc / free /
//! hand-over through `std::alloc` with random sizes (1 B to 4 MiB, mostly small) and random
//! alignments (1 to 4 KiB mostly, up to 1 MiB sometimes). Blocks are handed to other threads
//! over channels and freed or realloc'ed there. Every block carries a pattern derived from
//! its id, checked on receipt, before every realloc and before every free; alignment is
//! checked after every alloc and realloc. At a few checkpoints all threads stop and the
//! live blocks of all of them are checked not to overlap. At the end everything is freed and
//! `stats().in_use` must be back where it started.
//!
//! Two rounds of at least 2 million operations each: with the adaptive mmap threshold, then
//! with the threshold fixed at 128 KiB (big blocks in their own mappings, mremap).
//! `TIDEMALLOC_STRESS_OPS` raises the number of operations per round (default and minimum
//! 2 million).

use std::alloc::{Layout, alloc, dealloc, realloc};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::Rng;

const THREADS: usize = 8;
const DEFAULT_OPS: usize = 2_000_000;
/// Live blocks a thread keeps at most (beyond it, it frees instead of allocating).
const MAX_LIVE: usize = 1000;
/// Stops at which all threads' live blocks are checked against each other.
const CHECKPOINTS: usize = 4;
const SEED: u64 = 0x7157_2E55_0000_0001;

/// A live block of the shadow model.
struct Blk {
    addr: usize,
    size: usize,
    align: usize,
    id: u64,
}

impl Blk {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).unwrap()
    }

    fn check(&self) {
        assert_eq!(
            self.addr % self.align,
            0,
            "block {} at {:#x} lost its alignment {}",
            self.id,
            self.addr,
            self.align
        );
        // SAFETY: the block is live and `size` bytes long.
        unsafe { common::check(self.addr as *const u8, self.size, self.id) };
    }
}

/// 90% up to 1 KiB, 9% up to 256 KiB, 1% up to 4 MiB.
fn rand_size(rng: &mut Rng) -> usize {
    let r = rng.below(1000);
    if r < 900 {
        if rng.percent(50) { rng.log_range(1, 1024) } else { rng.range(1, 1024) }
    } else if r < 990 {
        rng.range(1025, 256 << 10)
    } else {
        rng.range((256 << 10) + 1, 4 << 20)
    }
}

/// Powers of two from 1 to 4 KiB; one time in 200 from 8 KiB to 1 MiB.
fn rand_align(rng: &mut Rng) -> usize {
    if rng.below(200) == 0 { 1 << rng.range(13, 20) } else { 1 << rng.below(13) }
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    allocs: usize,
    frees: usize,
    reallocs: usize,
    sends: usize,
    received: usize,
}

impl Counts {
    fn ops(&self) -> usize {
        self.allocs + self.frees + self.reallocs + self.sends
    }
}

struct Shared {
    barrier: Barrier,
    /// Live blocks (address, size, id) published at a checkpoint.
    published: Mutex<Vec<(usize, usize, u64)>>,
}

fn free_block(b: Blk) {
    b.check();
    // SAFETY: the block is live and was allocated with this layout.
    unsafe { dealloc(b.addr as *mut u8, b.layout()) };
}

fn alloc_block(rng: &mut Rng, id: u64) -> Blk {
    let size = rand_size(rng);
    let align = rand_align(rng);
    let layout = Layout::from_size_align(size, align).unwrap();
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc(layout) };
    assert!(!p.is_null(), "alloc({size}, align {align}) returned null");
    assert_eq!(p as usize % align, 0, "alloc({size}, align {align}) returned misaligned {p:p}");
    // SAFETY: the block is fresh and `size` bytes long.
    unsafe { common::fill(p, size, id) };
    Blk { addr: p as usize, size, align, id }
}

fn realloc_block(rng: &mut Rng, b: &mut Blk) {
    b.check();
    let new_size = match rng.below(4) {
        0 => (b.size * 2).min(8 << 20),
        1 => (b.size / 2).max(1),
        2 => b.size + rng.range(1, 64),
        _ => rand_size(rng),
    };
    // SAFETY: the block is live, allocated with this layout; the new size is non-zero and
    // far below isize::MAX.
    let q = unsafe { realloc(b.addr as *mut u8, b.layout(), new_size) };
    assert!(!q.is_null(), "realloc({:#x}, {} -> {new_size}, align {}) returned null", b.addr, b.size, b.align);
    assert_eq!(q as usize % b.align, 0, "realloc({} -> {new_size}) lost alignment {}: {q:p}", b.size, b.align);
    // SAFETY: the new block holds at least min(old, new) bytes of the old contents.
    if let Err(e) = unsafe { common::check_limit(q, b.size, b.size.min(new_size), b.id) } {
        panic!("realloc {:#x} -> {q:p} ({} -> {new_size} bytes, align {}) lost data: {e}", b.addr, b.size, b.align);
    }
    // SAFETY: the block is live and `new_size` bytes long.
    unsafe { common::fill(q, new_size, b.id) };
    b.addr = q as usize;
    b.size = new_size;
}

/// All threads stop; every live block (including those in flight in channels) is checked
/// and published; thread 0 checks that no two live blocks overlap.
fn checkpoint(t: usize, shared: &Shared, rx: &Receiver<Blk>, live: &mut Vec<Blk>, counts: &mut Counts) {
    shared.barrier.wait(); // nobody sends any more
    tidemalloc::check_invariants();
    while let Ok(b) = rx.try_recv() {
        b.check();
        counts.received += 1;
        live.push(b);
    }
    for b in live.iter() {
        b.check();
    }
    shared.published.lock().unwrap().extend(live.iter().map(|b| (b.addr, b.size, b.id)));
    shared.barrier.wait();
    if t == 0 {
        let mut all = std::mem::take(&mut *shared.published.lock().unwrap());
        all.sort_unstable();
        for w in all.windows(2) {
            let ((a, sa, ia), (b, _, ib)) = (w[0], w[1]);
            assert!(a + sa <= b, "live blocks overlap: id {ia} at {a:#x}+{sa} and id {ib} at {b:#x}");
        }
        let mut ids: Vec<u64> = all.iter().map(|x| x.2).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "a block id is live twice");
    }
    shared.barrier.wait();
}

fn worker(t: usize, ops: usize, rx: Receiver<Blk>, txs: Vec<Sender<Blk>>, shared: Arc<Shared>) -> Counts {
    let mut rng = Rng::new(SEED.wrapping_mul(t as u64 + 1));
    let mut live: Vec<Blk> = Vec::with_capacity(2 * MAX_LIVE);
    let mut next_id = (t as u64 + 1) << 40;
    let mut counts = Counts::default();
    let per_stage = ops.div_ceil(CHECKPOINTS);
    for _stage in 0..CHECKPOINTS {
        for _ in 0..per_stage {
            while let Ok(b) = rx.try_recv() {
                b.check();
                counts.received += 1;
                live.push(b);
            }
            let r = rng.below(100);
            if live.is_empty() || (r < 40 && live.len() < MAX_LIVE) {
                live.push(alloc_block(&mut rng, next_id));
                next_id += 1;
                counts.allocs += 1;
            } else if r < 65 || live.len() >= MAX_LIVE {
                let i = rng.below(live.len());
                free_block(live.swap_remove(i));
                counts.frees += 1;
            } else if r < 88 {
                let i = rng.below(live.len());
                realloc_block(&mut rng, &mut live[i]);
                counts.reallocs += 1;
            } else {
                let i = rng.below(live.len());
                let b = live.swap_remove(i);
                b.check();
                let to = (t + 1 + rng.below(THREADS - 1)) % THREADS;
                txs[to].send(b).expect("receiver alive until the last checkpoint");
                counts.sends += 1;
            }
        }
        checkpoint(t, &shared, &rx, &mut live, &mut counts);
    }
    for b in live.drain(..) {
        free_block(b);
        counts.frees += 1;
    }
    counts
}

/// One round: eight workers, `ops` operations in all; checks the counters afterwards.
fn round(name: &str, ops: usize) {
    let start = tidemalloc::stats();
    let t0 = Instant::now();

    let shared = Arc::new(Shared { barrier: Barrier::new(THREADS), published: Mutex::new(Vec::new()) });
    let (txs, rxs): (Vec<Sender<Blk>>, Vec<Receiver<Blk>>) = (0..THREADS).map(|_| channel()).unzip();
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let txs = txs.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("stress-{t}"))
                .spawn(move || worker(t, ops / THREADS, rx, txs, shared))
                .unwrap()
        })
        .collect();
    drop(txs);
    let counts: Vec<Counts> = handles.into_iter().map(|h| h.join().expect("worker panicked")).collect();

    let total: usize = counts.iter().map(Counts::ops).sum();
    let sends: usize = counts.iter().map(|c| c.sends).sum();
    let received: usize = counts.iter().map(|c| c.received).sum();
    let allocs: usize = counts.iter().map(|c| c.allocs).sum();
    let frees: usize = counts.iter().map(|c| c.frees).sum();
    let end = tidemalloc::stats();
    eprintln!("stress {name}: {total} ops in {:?}; per thread {counts:?}", t0.elapsed());
    eprintln!("stress {name}: start {start:?}\nstress {name}: end   {end:?}");

    assert!(total >= ops / THREADS * THREADS, "{name}: only {total} operations ran");
    assert_eq!(sends, received, "{name}: blocks were lost in hand-over");
    assert_eq!(allocs, frees, "{name}: the shadow model lost a block");
    assert!(
        end.peak_in_use >= start.in_use + (16 << 20),
        "{name}: peak_in_use {} never rose 16 MiB above the start {}",
        end.peak_in_use,
        start.in_use
    );
    let slack = 4 << 20;
    assert!(
        end.in_use <= start.in_use + slack && end.in_use + slack >= start.in_use,
        "{name}: in_use did not come back: start {} end {}",
        start.in_use,
        end.in_use
    );
    assert_eq!(end.large_blocks, start.large_blocks, "{name}: large blocks leaked");

    // Everything is free: trimming gives back all but a few segments.
    tidemalloc::trim(0);
    let trimmed = tidemalloc::stats();
    eprintln!("stress {name}: after trim(0) {trimmed:?}");
    let before = start.reserved_brk + start.reserved_mmap;
    let after = trimmed.reserved_brk + trimmed.reserved_mmap;
    assert!(
        after <= before + (64 << 20),
        "{name}: after freeing everything and trim(0) the allocator still holds {after} bytes (it held {before} at the start)"
    );
}

/// Two rounds: first with the mmap threshold as the allocator adapts it (freed large blocks
/// raise it, glibc-style, so most big blocks end up in the arena), then with the threshold
/// fixed at its 128 KiB default, so that every block above it is its own mapping and big
/// reallocs go through mremap while other threads work.
#[test]
fn stress_eight_threads_shadow_model() {
    let ops = std::env::var("TIDEMALLOC_STRESS_OPS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(DEFAULT_OPS)
        .max(DEFAULT_OPS);
    round("adaptive threshold", ops);
    assert!(tidemalloc::set_mmap_threshold(128 << 10));
    let before = tidemalloc::stats();
    round("threshold 128 KiB", ops);
    let after = tidemalloc::stats();
    assert!(
        after.mmap_calls >= before.mmap_calls + 1000 && after.mremap_calls >= before.mremap_calls + 100,
        "with a fixed threshold the big blocks did not use mmap and mremap: {before:?} -> {after:?}"
    );
}
