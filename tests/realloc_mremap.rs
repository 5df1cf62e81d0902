//! realloc: large blocks grow with mremap (no copy), blocks that still fit stay in place,
//! crossings of the threshold copy, a large block shrunk far below the threshold moves into
//! the arena, and aligned reallocs keep their alignment and data.
//!
//! The tests look at process-wide counters, so they take a lock to run one at a time.

use std::alloc::{Layout, alloc, dealloc, realloc as std_realloc};
use std::sync::Mutex;
use tidemalloc::{free, malloc, realloc, stats, usable_size};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::{heap_ranges, in_heap};

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs the tests one at a time, with the mmap threshold fixed at its default: freed large
/// blocks would otherwise raise it (glibc's dynamic threshold) and move 1 MiB blocks into
/// the arena.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(tidemalloc::set_mmap_threshold(128 << 10));
    g
}

const MAGIC: u64 = 0x6d72_656d_6170_0000;

fn word_at(o: usize) -> u64 {
    MAGIC ^ (o as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Writes a word at every 4 KiB of `p[from..to)` and at `to - 8`.
///
/// # Safety
/// `p..p+to` must be writable.
unsafe fn write_pages(p: *mut u8, from: usize, to: usize) {
    let mut o = from.next_multiple_of(4096);
    // SAFETY: every offset is inside the block (contract).
    unsafe {
        while o + 8 <= to {
            p.add(o).cast::<u64>().write_unaligned(word_at(o));
            o += 4096;
        }
        p.add(to - 8).cast::<u64>().write_unaligned(word_at(to - 8));
    }
}

/// Checks the words written by `write_pages(p, 0, size)` (the end word of `size` only if
/// `check_end`).
///
/// # Safety
/// `p..p+size` must be readable.
unsafe fn check_pages(p: *const u8, size: usize, what: &str) {
    let mut o = 0;
    // SAFETY: every offset is inside the block (contract).
    unsafe {
        while o + 8 <= size {
            let got = p.add(o).cast::<u64>().read_unaligned();
            assert_eq!(got, word_at(o), "{what}: word at offset {o:#x} of {p:p} changed");
            o += 4096;
        }
        let got = p.add(size - 8).cast::<u64>().read_unaligned();
        assert_eq!(got, word_at(size - 8), "{what}: last word of {p:p} ({size} bytes) changed");
    }
}

#[test]
fn mremap_doubling_keeps_data_without_copying() {
    let _g = serial();
    let mut size = 64usize << 20;
    let mut p = malloc(size);
    assert!(!p.is_null());
    // SAFETY: `p` is a live block of `size` bytes.
    unsafe { write_pages(p, 0, size) };
    let probe_offsets = [0usize, 4096 * 7, (32 << 20) + 4096 * 3, size - 4096];
    let mut doublings = 0;
    let first = stats();
    while size < (1 << 30) {
        let new_size = size * 2;
        // Physical pages of a few probes: mremap moves page tables, so they must not change.
        let pfns: Vec<u64> = probe_offsets.iter().map(|&o| common::pfn(p as usize + o)).collect();
        eprintln!("realloc {size} -> {}: physical frames of the probes {pfns:x?}", size * 2);
        let s0 = stats();
        // SAFETY: `p` is a live block.
        let q = unsafe { realloc(p, new_size) };
        let s1 = stats();
        assert!(!q.is_null(), "realloc {size} -> {new_size} failed");
        assert_eq!(s1.mremap_calls, s0.mremap_calls + 1, "realloc {size} -> {new_size}: one mremap call expected");
        assert_eq!(s1.mmap_calls, s0.mmap_calls, "realloc {size} -> {new_size} mapped new memory (a copy?)");
        assert_eq!(s1.munmap_calls, s0.munmap_calls, "realloc {size} -> {new_size} unmapped memory (a copy?)");
        assert_eq!(s1.large_blocks, s0.large_blocks, "realloc changed the number of large blocks");
        let grown = s1.in_use as isize - s0.in_use as isize;
        assert!(
            (grown - size as isize).abs() <= 64 << 10,
            "realloc {size} -> {new_size}: in_use grew by {grown}, expected {size}"
        );
        assert_eq!(s1.reserved_mmap as isize - s0.reserved_mmap as isize, size as isize, "reserved_mmap delta");
        // SAFETY: `q` is a live block of `new_size` >= `size` bytes.
        unsafe {
            assert!(usable_size(q) >= new_size);
            check_pages(q, size, &format!("after realloc {size} -> {new_size}"));
        }
        for (&o, &before) in probe_offsets.iter().zip(&pfns) {
            let after = common::pfn(q as usize + o);
            if before != 0 {
                assert_eq!(after, before, "realloc {size} -> {new_size}: the page at offset {o:#x} was copied");
            }
        }
        // SAFETY: the new tail is part of the live block.
        unsafe { write_pages(q, size, new_size) };
        p = q;
        size = new_size;
        doublings += 1;
    }
    assert_eq!(doublings, 4);
    let last = stats();
    assert_eq!(last.mremap_calls, first.mremap_calls + doublings);
    // SAFETY: `p` is a live block of `size` bytes.
    unsafe {
        check_pages(p, size, "at 1 GiB");
        free(p);
    }
    let end = stats();
    assert!(end.in_use + (900 << 20) < last.in_use, "freeing the 1 GiB block did not lower in_use");
}

#[test]
fn realloc_in_place_when_it_fits() {
    let _g = serial();
    // Small blocks.
    for size in [24usize, 100, 1000, 5000, 60_000] {
        let p = malloc(size);
        assert!(!p.is_null());
        // SAFETY: `p` is a live block of `size` bytes; every realloc keeps it live.
        unsafe {
            common::fill(p, size, size as u64);
            let us = usable_size(p);
            assert!(us >= size);
            let q = realloc(p, size - size / 10);
            assert_eq!(q, p, "shrinking a {size}-byte block slightly moved it");
            let q = realloc(q, us);
            assert_eq!(q, p, "growing a {size}-byte block to its usable size {us} moved it");
            common::check_limit(q, size, size - size / 10, size as u64).unwrap();
            free(q);
        }
    }
    // A large block: shrinking a little and growing within the usable size keep it where it
    // is without a system call; shrinking by more than half stays in place with mremap.
    let size = 1 << 20;
    let p = malloc(size);
    assert!(!p.is_null());
    // SAFETY: `p` is live; every realloc below keeps it live at the same address (checked).
    unsafe {
        common::fill(p, size, 77);
        let us = usable_size(p);
        let s0 = stats();
        let q = realloc(p, size - 1000);
        assert_eq!(q, p, "shrinking a 1 MiB block by 1000 bytes moved it");
        let q = realloc(q, us);
        assert_eq!(q, p, "growing a 1 MiB block to its usable size moved it");
        let s1 = stats();
        assert_eq!(s1.mremap_calls, s0.mremap_calls, "in-place realloc made an mremap call");
        assert_eq!(s1.mmap_calls, s0.mmap_calls);
        common::check_limit(q, size, size - 1000, 77).unwrap();
        let q = realloc(q, 300 << 10);
        assert_eq!(q, p, "shrinking a 1 MiB block to 300 KiB moved it");
        let s2 = stats();
        assert_eq!(s2.mremap_calls, s1.mremap_calls + 1, "shrinking by more than half: one mremap");
        assert!(s2.in_use + (600 << 10) <= s1.in_use, "in_use did not drop after shrinking");
        assert!(usable_size(q) >= 300 << 10 && usable_size(q) < 1 << 20);
        common::check_limit(q, size, 300 << 10, 77).unwrap();
        free(q);
    }
}

#[test]
fn small_to_large_crossing_copies() {
    let _g = serial();
    let p = malloc(1000);
    assert!(!p.is_null());
    // SAFETY: `p` is live; `q` replaces it.
    unsafe {
        common::fill(p, 1000, 5);
        let s0 = stats();
        let q = realloc(p, 1 << 20);
        assert!(!q.is_null());
        assert_ne!(q, p, "a 1000-byte block grown to 1 MiB stayed in the arena");
        let s1 = stats();
        assert_eq!(s1.large_blocks, s0.large_blocks + 1, "the grown block is not a large block");
        assert!(!in_heap(&heap_ranges(), q as usize, 1 << 20), "the 1 MiB block is inside [heap]");
        common::check_limit(q, 1000, 1000, 5).unwrap();
        // Large to larger: mremap, data kept.
        common::fill(q, 1 << 20, 5);
        let r = realloc(q, 8 << 20);
        assert!(!r.is_null());
        assert_eq!(stats().mremap_calls, s1.mremap_calls + 1);
        common::check_limit(r, 1 << 20, 1 << 20, 5).unwrap();
        free(r);
    }
}

#[test]
fn large_shrunk_far_below_the_threshold_moves_into_the_arena() {
    let _g = serial();
    let size = 1 << 20;
    let p = malloc(size);
    assert!(!p.is_null());
    // SAFETY: `p` is live; `q` replaces it.
    unsafe {
        common::fill(p, size, 9);
        let s0 = stats();
        let q = realloc(p, 100);
        assert!(!q.is_null());
        let s1 = stats();
        assert_ne!(q, p, "a 1 MiB block shrunk to 100 bytes stayed in its mapping");
        assert_eq!(s1.large_blocks + 1, s0.large_blocks, "the large block was not released");
        // The arena is in the break when tidemalloc is the process's malloc (the `override`
        // feature), in anonymous mappings otherwise.
        if tidemalloc::uses_brk() {
            assert!(in_heap(&heap_ranges(), q as usize, 100), "the 100-byte block {q:p} is not in [heap]");
            let (rs, re) = tidemalloc::brk_range();
            assert!(
                q as usize >= rs && q as usize + 100 <= re,
                "the 100-byte block {q:p} is outside brk_range {rs:#x}-{re:#x}"
            );
        }
        assert!(usable_size(q) >= 100 && usable_size(q) < 4096);
        assert!(s1.in_use + (size - 4096) <= s0.in_use, "in_use did not drop by the large block");
        common::check_limit(q, size, 100, 9).unwrap();
        free(q);
    }
}

#[test]
fn aligned_realloc_keeps_alignment_and_data() {
    let _g = serial();
    let sizes = [100usize, 5000, 300_000, 2 << 20, 50, 200_000, 10, 9 << 20, 70_000];
    for align in [64usize, 4096, 65536] {
        let mut size = sizes[0];
        let mut layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let mut p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0);
        let id = align as u64;
        // SAFETY: `p` is live and `size` bytes long.
        unsafe { common::fill(p, size, id) };
        for &new_size in &sizes[1..] {
            // SAFETY: `p` is live with `layout`.
            let q = unsafe { std_realloc(p, layout, new_size) };
            assert!(!q.is_null(), "realloc align {align}: {size} -> {new_size} failed");
            assert_eq!(q as usize % align, 0, "realloc align {align}: {size} -> {new_size} gave misaligned {q:p}");
            // SAFETY: `q` holds min(size, new_size) bytes of the old contents.
            unsafe {
                if let Err(e) = common::check_limit(q, size, size.min(new_size), id) {
                    panic!("realloc align {align}: {size} -> {new_size} lost data: {e}");
                }
                assert!(usable_size(q) >= new_size);
                common::fill(q, new_size, id);
            }
            p = q;
            size = new_size;
            layout = Layout::from_size_align(size, align).unwrap();
        }
        // SAFETY: `p` is live with `layout`.
        unsafe {
            common::check(p, size, id);
            dealloc(p, layout);
        }
    }
}
