//! The trim threshold decides whether freeing lowers the program break: by default a free
//! top beyond it goes back (after the purge delay); at "no limit" (glibc's
//! `mallopt(M_TRIM_THRESHOLD, -1)`, here `usize::MAX`) the break never goes down on its own,
//! only the memory is released, and `trim` still lowers it. Children with a zero purge
//! delay, so every release happens at once.

use tidemalloc::{Opt, free, malloc};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::{rss, sbrk0};

const MIB: usize = 1 << 20;

/// Grows the break by a 64 MiB block from the arena (the mmap threshold raised above it),
/// frees it, keeps allocating a little (slow paths run the purges); returns (break at the
/// peak, break after, RSS after).
fn grow_and_free() -> (usize, usize, usize) {
    assert!(tidemalloc::set_mmap_threshold(256 * MIB));
    let p = malloc(64 * MIB);
    assert!(!p.is_null());
    // SAFETY: a fresh block of 64 MiB.
    unsafe { p.write_bytes(7, 64 * MIB) };
    let peak = sbrk0();
    // SAFETY: live.
    unsafe { free(p) };
    for i in 0..50 {
        let v: Vec<usize> = (0..64).map(|k| malloc(24 + (i * 64 + k) % 900) as usize).collect();
        for p in v {
            // SAFETY: live blocks of ours.
            unsafe { free(p as *mut u8) };
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    (peak, sbrk0(), rss())
}

fn run(name: &str) {
    let out = common::run_child_env(name, name, &[("TIDEMALLOC_PURGE_DELAY", "0")]);
    assert!(out.status.success(), "child failed: {}", common::describe(&out));
}

#[test]
fn by_default_the_break_goes_down() {
    const NAME: &str = "by_default_the_break_goes_down";
    if common::is_child(NAME) {
        assert!(tidemalloc::uses_brk(), "set-up: the arena is not in the break");
        let start = sbrk0();
        let (peak, after, _) = grow_and_free();
        assert!(peak > start + 48 * MIB, "set-up: the break grew from {start:#x} to {peak:#x} only");
        assert!(after < peak - 32 * MIB, "the break stayed at {after:#x} (peak {peak:#x})");
        return;
    }
    run(NAME);
}

#[test]
fn trim_threshold_without_limit_keeps_the_break() {
    const NAME: &str = "trim_threshold_without_limit_keeps_the_break";
    if common::is_child(NAME) {
        assert!(tidemalloc::uses_brk(), "set-up: the arena is not in the break");
        assert!(tidemalloc::set_option(Opt::TrimThreshold, usize::MAX));
        let rss0 = rss();
        let (peak, after, rss1) = grow_and_free();
        assert_eq!(after, peak, "the break went down from {peak:#x} to {after:#x} with trimming off");
        // The memory itself still went back (madvise), and an explicit trim lowers the break.
        assert!(rss1 < rss0 + 16 * MIB, "RSS {} MiB after the frees (start {} MiB)", rss1 / MIB, rss0 / MIB);
        tidemalloc::trim(0);
        assert!(sbrk0() < peak - 32 * MIB, "trim(0) left the break at {:#x} (peak {peak:#x})", sbrk0());
        return;
    }
    run(NAME);
}
