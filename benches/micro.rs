//! Criterion micro-benchmarks: tidemalloc against glibc (`System`), mimalloc and jemalloc,
//! each called directly through its `GlobalAlloc` (the harness itself uses `System`).
//!
//! `cargo bench --bench micro` (add `-- pair` etc. to filter).

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn allocators() -> Vec<(&'static str, &'static (dyn GlobalAlloc + Sync))> {
    static TIDE: tidemalloc::TideMalloc = tidemalloc::TideMalloc;
    static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;
    static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
    vec![("tidemalloc", &TIDE), ("system", &System), ("mimalloc", &MI), ("jemalloc", &JE)]
}

/// A small xorshift generator: the same sequence for every allocator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// malloc+free of one block, over and over.
fn pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair");
    for size in [16usize, 64, 256, 1024, 8192] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for (name, a) in allocators() {
            g.bench_with_input(BenchmarkId::new(name, size), &layout, |b, &l| {
                b.iter(|| {
                    // SAFETY: a valid layout; the block is freed with the same allocator.
                    unsafe {
                        let p = a.alloc(black_box(l));
                        *p = 1;
                        a.dealloc(black_box(p), l);
                    }
                })
            });
        }
    }
    g.finish();
}

/// 100k blocks of random sizes (16 B..4 KiB), then freed in random order.
fn random_batch(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let sizes: Vec<usize> = (0..N).map(|_| 16 + (rng.next() % 4080) as usize).collect();
    let mut order: Vec<usize> = (0..N).collect();
    for i in (1..N).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut g = c.benchmark_group("random_batch");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    for (name, a) in allocators() {
        g.bench_function(name, |b| {
            let mut ptrs = vec![std::ptr::null_mut(); N];
            b.iter(|| {
                for (i, &s) in sizes.iter().enumerate() {
                    // SAFETY: a valid layout; freed below with the same allocator.
                    unsafe {
                        let p = a.alloc(Layout::from_size_align_unchecked(s, 8));
                        *p = i as u8;
                        ptrs[i] = p;
                    }
                }
                for &i in &order {
                    // SAFETY: each block is freed once with its own layout.
                    unsafe { a.dealloc(ptrs[i], Layout::from_size_align_unchecked(sizes[i], 8)) };
                }
            })
        });
    }
    g.finish();
}

/// One buffer growing by doubling from 4 KiB to 64 MiB, touching each new page.
fn realloc_growth(c: &mut Criterion) {
    let mut g = c.benchmark_group("realloc_growth");
    g.sample_size(10);
    for (name, a) in allocators() {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut size = 4096usize;
                // SAFETY: valid layouts; each realloc passes the block's current layout.
                unsafe {
                    let mut p = a.alloc(Layout::from_size_align_unchecked(size, 8));
                    while size < 64 << 20 {
                        let new = size * 2;
                        p = a.realloc(p, Layout::from_size_align_unchecked(size, 8), new);
                        let mut off = size;
                        while off < new {
                            *p.add(off) = 1;
                            off += 4096;
                        }
                        size = new;
                    }
                    a.dealloc(p, Layout::from_size_align_unchecked(size, 8));
                }
            })
        });
    }
    g.finish();
}

/// A producer thread allocates 64-byte blocks in batches and a consumer frees them.
fn cross_thread(c: &mut Criterion) {
    const BATCH: usize = 1000;
    let mut g = c.benchmark_group("cross_thread");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, a) in allocators() {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (tx, rx) = mpsc::sync_channel::<Vec<usize>>(4);
                let layout = Layout::from_size_align(64, 8).unwrap();
                let consumer = std::thread::spawn(move || {
                    for batch in rx {
                        for p in batch {
                            // SAFETY: each block is freed once, with its layout.
                            unsafe { a.dealloc(p as *mut u8, layout) };
                        }
                    }
                });
                let start = Instant::now();
                for _ in 0..iters {
                    let batch: Vec<usize> = (0..BATCH)
                        // SAFETY: a valid layout.
                        .map(|_| unsafe { a.alloc(layout) } as usize)
                        .collect();
                    tx.send(batch).unwrap();
                }
                drop(tx);
                consumer.join().unwrap();
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = pair, random_batch, realloc_growth, cross_thread
}
criterion_main!(benches);
