//! The allocation patterns of `benches/instr/ops.c`, through Rust's global allocator, for
//! instruction counts under callgrind: `TideMalloc` with `--features tide`, `System` (glibc,
//! or a peer preloaded) without. Usage: `rust-ops PATTERN N`; one operation is one
//! allocation and its free (for realloc: one realloc call).

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::hint::black_box;

#[cfg(feature = "tide")]
#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

const BATCH: usize = 1024;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("a valid layout")
}

/// `n / BATCH` rounds of `BATCH` blocks of `lo..=hi` bytes, freed in another order.
fn batch(n: usize, lo: usize, hi: usize) {
    let mut rng = 12345u32;
    let sizes: Vec<usize> = (0..BATCH)
        .map(|_| {
            rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
            lo + (rng >> 8) as usize % (hi - lo + 1)
        })
        .collect();
    let mut blocks = vec![std::ptr::null_mut::<u8>(); BATCH];
    for _ in 0..n / BATCH {
        for i in 0..BATCH {
            // SAFETY: a non-zero size; the block is written once and freed below.
            unsafe {
                blocks[i] = alloc(layout(sizes[i], 8));
                *blocks[i] = i as u8;
            }
        }
        let mut j = 0;
        for _ in 0..BATCH {
            // SAFETY: each block is freed once with the layout it was allocated with.
            unsafe { dealloc(blocks[j], layout(sizes[j], 8)) };
            j = (j + 389) % BATCH;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: rust-ops pair|batch|mixed|realloc|aligned|calloc N");
        std::process::exit(2);
    }
    let n: usize = args[2].parse().expect("N");
    match args[1].as_str() {
        "pair" => {
            for _ in 0..n {
                // SAFETY: a non-zero layout; the block is freed once, with it.
                unsafe { dealloc(black_box(alloc(layout(32, 8))), layout(32, 8)) };
            }
        }
        "batch" => batch(n, 32, 88),
        "mixed" => batch(n, 16, 1024),
        "realloc" => {
            for _ in 0..n / 256 {
                // SAFETY: each realloc is given the block's current layout and a non-zero
                // size; the byte written lies inside the grown block; freed once.
                unsafe {
                    let mut b = alloc(layout(16, 8));
                    for i in 1..=256usize {
                        b = realloc(b, layout(16 * i, 8), 16 + 16 * i);
                        *b.add(16 * i) = i as u8;
                    }
                    dealloc(b, layout(16 + 16 * 256, 8));
                }
            }
        }
        "aligned" => {
            for _ in 0..n {
                // SAFETY: a non-zero layout; the block is freed once, with it.
                unsafe { dealloc(black_box(alloc(layout(48, 64))), layout(48, 64)) };
            }
        }
        "calloc" => {
            for _ in 0..n {
                // SAFETY: a non-zero layout; the block is freed once, with it.
                unsafe { dealloc(black_box(alloc_zeroed(layout(200, 8))), layout(200, 8)) };
            }
        }
        p => {
            eprintln!("rust-ops: unknown pattern {p}");
            std::process::exit(2);
        }
    }
}
