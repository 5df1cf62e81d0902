//! RSS follows the live set of huge blocks (whole segments from the arena) through churn: a
//! working set of 8 blocks of 1-24 MiB, every page touched, each step freeing one and
//! allocating another of a new size. Freed segments stay resident for the purge delay so
//! that the next block reuses them without page faults; a block that takes fresh segments
//! (no resident run fits it whole) faults them in, and the same amount of the oldest
//! resident memory goes in exchange. The purge delay is set out of reach, so what is
//! resident follows from the exchange alone, at any speed: resident free memory stayed
//! under 0.95 times the peak live set with it, and reached 1.08 times without it. (It is
//! not lower because a dirty segment is not all resident: a block that ends inside its last
//! segment leaves the rest untouched, and the next block to take that segment faults the
//! rest in without counting it. Counting it cost 5 times the time in `large_churn`.)
//!
//! Its own binary, so that nothing else allocates meanwhile.

use tidemalloc::{Opt, free, malloc};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::{Rng, rss};

const MIB: usize = 1 << 20;

#[test]
fn rss_follows_live_huge_blocks_through_churn() {
    // Blocks up to 24 MiB stay in the arena (no mmap, and no dynamic threshold).
    assert!(tidemalloc::set_option(Opt::MmapThreshold, 64 * MIB));
    // No purge by age (see the header).
    assert!(tidemalloc::set_option(Opt::PurgeDelay, 1 << 30));
    // No transparent huge pages: a fault in a block's untouched tail would bring in 2 MiB.
    // SAFETY: prctl with these arguments only sets a flag of this process.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) }, 0);
    let mut rng = Rng::new(0x004A_6EC4);
    let rss0 = rss();
    let (mut live, mut peak_live, mut peak_over) = (0usize, 0usize, 0isize);
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    for step in 0..1500 {
        if blocks.len() == 8 {
            let (p, size) = blocks.swap_remove(rng.below(8));
            // SAFETY: a live block of `size` bytes, freed once; its first byte names it.
            unsafe {
                assert_eq!((p as *const u8).read(), (p >> 12) as u8, "block {p:#x} was overwritten");
                free(p as *mut u8);
            }
            live -= size;
        }
        let size = rng.log_range(MIB, 24 * MIB);
        let p = malloc(size);
        assert!(!p.is_null(), "malloc({size}) failed at step {step}");
        // SAFETY: a fresh block of `size` bytes: touch every page.
        unsafe {
            let mut o = 0;
            while o < size {
                p.add(o).write((p as usize >> 12) as u8);
                o += 4096;
            }
        }
        blocks.push((p as usize, size));
        live += size;
        if step == 0 {
            assert_eq!(tidemalloc::stats().huge_blocks, 1, "the block is not a huge span of the arena");
        }
        peak_live = peak_live.max(live);
        // Above the live set: resident free memory, and the blocks' partly used last pages.
        peak_over = peak_over.max(rss() as isize - rss0 as isize - live as isize);
    }
    for (p, _) in blocks {
        // SAFETY: live blocks, freed once.
        unsafe { free(p as *mut u8) };
    }
    eprintln!("huge_churn: peak live {} MiB, RSS above live at most {} MiB", peak_live / MIB, peak_over / MIB as isize);
    assert!(
        peak_over < peak_live as isize,
        "resident memory beyond the live set reached {} MiB (peak live {} MiB)",
        peak_over / MIB as isize,
        peak_live / MIB
    );
}
