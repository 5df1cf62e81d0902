//! Memory goes back to the OS: 1 GiB of small blocks (64 B .. 4 KiB, every page touched),
//! all freed in random order. Right after, RSS exceeds the start by at most twice the dirty
//! cap (arena and heap);
//! after the purge delay (and some allocation activity) RSS is back near where it started,
//! the program break is lower than at the peak and `reserved_brk` has dropped; after
//! `trim(0)` RSS is near the start and the break is lower still.
//!
//! Its own binary, so that nothing else allocates meanwhile.

use tidemalloc::{Opt, free, malloc, stats};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::{Rng, rss, sbrk0};

const TOTAL: usize = 1 << 30;
const MIB: usize = 1 << 20;

#[test]
fn freeing_a_gib_of_small_blocks_returns_memory() {
    let mut rng = Rng::new(0x4E7_0000);
    let mut blocks: Vec<(usize, usize)> = Vec::with_capacity(TOTAL / 1024);
    let rss0 = rss();
    let brk0 = sbrk0();
    let s0 = stats();

    let mut total = 0;
    while total < TOTAL {
        let size = rng.range(64, 4096);
        let p = malloc(size);
        assert!(!p.is_null(), "malloc({size}) failed after {total} bytes");
        // Touch every page of the block; the first word names the block.
        // SAFETY: a fresh block of `size` bytes.
        unsafe {
            p.cast::<u64>().write(p as u64 ^ size as u64);
            let mut o = 4096 - (p as usize % 4096);
            while o < size {
                p.add(o).write(0x5A);
                o += 4096;
            }
            p.add(size - 1).write(0xA5);
        }
        blocks.push((p as usize, size));
        total += size;
    }
    let rss_peak = rss();
    let brk_peak = sbrk0();
    let s_peak = stats();
    eprintln!(
        "memory_return: {} blocks; rss {} -> {} MiB, break +{} MiB, {s_peak:?}",
        blocks.len(),
        rss0 / MIB,
        rss_peak / MIB,
        (brk_peak - brk0) / MIB
    );
    assert!(rss_peak >= rss0 + 900 * MIB, "1 GiB of touched blocks is not resident: rss {rss0} -> {rss_peak}");
    assert!(brk_peak >= brk0 + 900 * MIB, "1 GiB of small blocks did not come from the break");
    assert!(s_peak.reserved_brk >= s0.reserved_brk + 900 * MIB);
    assert!(s_peak.in_use >= s0.in_use + TOTAL);

    rng.shuffle(&mut blocks);
    for &(p, size) in &blocks {
        let p = p as *mut u8;
        // SAFETY: a live block of `size` bytes, freed once.
        unsafe {
            assert_eq!(p.cast::<u64>().read(), p as u64 ^ size as u64, "block {p:p} was overwritten");
            assert_eq!(p.add(size - 1).read(), 0xA5, "block {p:p} was overwritten");
            free(p);
        }
    }
    drop(blocks);

    // Stage 1: right after the frees. Freed segments may stay resident ("dirty") for the
    // purge delay, up to the dirty cap: RSS is at most that cap above the start.
    let dirty_max = tidemalloc::get_option(Opt::DirtyMax);
    let purge_delay = tidemalloc::get_option(Opt::PurgeDelay);
    let rss1 = rss();
    let s1 = stats();
    eprintln!("memory_return: right after free: rss {} MiB, {s1:?}", rss1 / MIB);
    let mut failures = Vec::new();
    if s1.in_use > s0.in_use + MIB {
        failures.push(format!("in_use {} after freeing everything (start {})", s1.in_use, s0.in_use));
    }
    // Freed memory stays resident for the purge delay: in the arena and in the heap, each up
    // to the dirty cap.
    if rss1 > rss0 + 2 * dirty_max + 64 * MIB {
        failures.push(format!(
            "right after the frees RSS is {} MiB: more than twice the dirty cap ({} MiB) + 64 MiB above the start ({} MiB)",
            rss1 / MIB,
            dirty_max / MIB,
            rss0 / MIB
        ));
    }

    // Stage 1b: after the purge delay, once the program allocates again (a few small blocks,
    // slow paths included), RSS is back near the start and the break went down.
    std::thread::sleep(std::time::Duration::from_millis(purge_delay as u64 + 300));
    for size in (16..=4096).step_by(16) {
        let ps: Vec<*mut u8> = (0..8).map(|_| malloc(size)).collect();
        for p in ps {
            assert!(!p.is_null());
            // SAFETY: live, freed once.
            unsafe { free(p) };
        }
    }
    let rss1 = rss();
    let brk1 = sbrk0();
    let s1 = stats();
    eprintln!(
        "memory_return: after the purge delay: rss {} MiB, break {:+} MiB from the peak, {s1:?}",
        rss1 / MIB,
        (brk1 as isize - brk_peak as isize) / MIB as isize
    );
    if rss1 > rss0 + 64 * MIB {
        failures.push(format!(
            "RSS did not fall back within 64 MiB after the purge delay ({purge_delay} ms): start {} MiB, peak {} MiB, now {} MiB",
            rss0 / MIB,
            rss_peak / MIB,
            rss1 / MIB
        ));
    }
    if brk1 >= brk_peak {
        failures.push(format!("the program break did not go down: peak {brk_peak:#x}, after free {brk1:#x}"));
    }
    if s1.reserved_brk >= s_peak.reserved_brk {
        failures
            .push(format!("reserved_brk did not drop: peak {}, after free {}", s_peak.reserved_brk, s1.reserved_brk));
    }

    // Stage 2: an explicit trim(0) gives back the free top of the break. Nothing is in use,
    // so at least half of what the break grew must go.
    assert!(tidemalloc::trim(0), "trim(0) returned nothing although everything was free");
    let rss2 = rss();
    let brk2 = sbrk0();
    let s2 = stats();
    eprintln!(
        "memory_return: after trim(0): rss {} MiB, break {:+} MiB from the peak, {s2:?}",
        rss2 / MIB,
        (brk2 as isize - brk_peak as isize) / MIB as isize
    );
    if rss2 > rss0 + 64 * MIB {
        failures.push(format!("after trim(0) RSS is {} MiB (start {} MiB)", rss2 / MIB, rss0 / MIB));
    }
    // The break cannot go below a block that is still live: the test harness's own output
    // buffer (grown by the eprintln! above, after the peak) may sit at the top. So require
    // that the break went down, not how far.
    if brk2 >= brk_peak {
        failures.push(format!("after trim(0) the break is not below the peak: {brk2:#x} (peak {brk_peak:#x})"));
    }
    if s2.reserved_brk >= s_peak.reserved_brk {
        failures.push(format!(
            "after trim(0) reserved_brk is {} MiB (start {} MiB, peak {} MiB)",
            s2.reserved_brk / MIB,
            s0.reserved_brk / MIB,
            s_peak.reserved_brk / MIB
        ));
    }
    assert!(failures.is_empty(), "memory was not returned:\n  {}", failures.join("\n  "));
}
