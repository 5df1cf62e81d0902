//! Running out of memory: requests fail with null, nothing crashes, and memory freed after
//! the failure can be allocated again.
//!
//! The limits (RLIMIT_DATA and RLIMIT_AS at the current usage + 256 MiB) are set in a child
//! process: the test re-executes its own binary with a marker in the environment.
//! Impossible sizes (usize::MAX, isize::MAX, ...) are checked in-process.

use tidemalloc::{aligned_alloc, calloc, free, malloc, realloc, realloc_aligned, usable_size};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::Rng;

const MIB: usize = 1 << 20;
const HEADROOM: usize = 256 * MIB;

/// A live block with its pattern.
#[derive(Clone, Copy)]
struct Blk {
    p: *mut u8,
    size: usize,
    id: u64,
}

/// Allocates and writes the first and last bytes' pattern only (touching all of hundreds
/// of MiB is not the point here); None if malloc returned null.
fn try_block(size: usize, id: u64) -> Option<Blk> {
    let p = malloc(size);
    if p.is_null() {
        return None;
    }
    // SAFETY: a fresh block of `size` bytes.
    unsafe {
        common::fill(p, size.min(64), id);
        *p.add(size - 1) = common::expected_byte(id, size - 1);
    }
    Some(Blk { p, size, id })
}

fn check_block(b: &Blk, when: &str) {
    // SAFETY: the block is live and `size` bytes long.
    unsafe {
        if let Err(e) = common::check_limit(b.p, b.size.min(64), b.size.min(64), b.id) {
            panic!("{when}: {e}");
        }
        assert_eq!(
            *b.p.add(b.size - 1),
            common::expected_byte(b.id, b.size - 1),
            "{when}: last byte of block {}",
            b.id
        );
    }
}

fn free_block(b: Blk, when: &str) {
    check_block(&b, when);
    // SAFETY: live, freed once.
    unsafe { free(b.p) };
}

fn set_limit(resource: libc::__rlimit_resource_t, bytes: usize) {
    let lim = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: `lim` is a valid rlimit.
    let rc = unsafe { libc::setrlimit(resource, &lim) };
    assert_eq!(rc, 0, "setrlimit failed");
}

/// Allocates blocks of `size_of()` into `out` until malloc returns null; returns the bytes
/// obtained. `out` has room reserved beforehand: nothing else may allocate at the limit.
fn fill_until_null(out: &mut Vec<Blk>, rng: &mut Rng, next_id: &mut u64, size_of: impl Fn(&mut Rng) -> usize) -> usize {
    let mut total = 0;
    loop {
        assert!(out.len() < out.capacity(), "more blocks than room was reserved for");
        let size = size_of(rng);
        match try_block(size, *next_id) {
            Some(b) => {
                out.push(b);
                total += size;
                *next_id += 1;
            }
            None => return total,
        }
    }
}

/// The child: runs with low limits.
fn out_of_memory_body() {
    let mut rng = Rng::new(0xFA11);
    let mut next_id = 1u64;
    // Survivors of every kind, allocated before the limit and checked after each failure.
    let survivors: Vec<Blk> = [100usize, 5000, 60_000, 300_000, 3 * MIB]
        .iter()
        .map(|&s| {
            let b = try_block(s, next_id).expect("survivor");
            // SAFETY: a live block of `s` bytes: write all of it.
            unsafe { common::fill(b.p, s, b.id) };
            next_id += 1;
            b
        })
        .collect();
    let check_survivors = |when: &str| {
        for b in &survivors {
            // SAFETY: live blocks.
            unsafe { common::check(b.p, b.size, b.id) };
            let _ = when;
        }
    };
    let mut blocks: Vec<Blk> = Vec::with_capacity(1 << 20);
    let vm_size = common::status_kb("VmSize");
    let vm_data = common::status_kb("VmData");
    eprintln!("child: VmSize {} MiB, VmData {} MiB; limits + {} MiB", vm_size / MIB, vm_data / MIB, HEADROOM / MIB);
    set_limit(libc::RLIMIT_DATA, vm_data + HEADROOM);
    set_limit(libc::RLIMIT_AS, vm_size + HEADROOM);

    // ---- from here on nothing may allocate but the code under test ----
    let tib = malloc(1 << 40);
    assert!(tib.is_null(), "a 1 TiB request succeeded under a 256 MiB limit");
    assert!(calloc(1 << 40).is_null());
    assert!(aligned_alloc(4096, 1 << 40).is_null());

    let large = fill_until_null(&mut blocks, &mut rng, &mut next_id, |r| r.range(MIB, 8 * MIB));
    let medium = fill_until_null(&mut blocks, &mut rng, &mut next_id, |r| r.range(8 << 10, 500 << 10));
    let small = fill_until_null(&mut blocks, &mut rng, &mut next_id, |r| r.range(16, 4096));
    let first_round = large + medium + small;
    check_survivors("after the first failure");

    // More failures of every kind while at the limit: all return null, all blocks stay.
    assert!(malloc(64 * MIB).is_null());
    assert!(calloc(64 * MIB).is_null());
    assert!(aligned_alloc(1 << 16, 64 * MIB).is_null());
    assert!(aligned_alloc(8 * MIB, 16).is_null(), "an 8 MiB aligned block fit at the limit");
    let s = survivors[0];
    // SAFETY: a live block; on failure it stays valid.
    unsafe {
        assert!(realloc(s.p, 64 * MIB).is_null(), "a small block grew to 64 MiB at the limit");
        assert!(realloc_aligned(s.p, 64, 64 * MIB).is_null());
    }
    let big = survivors[4];
    // SAFETY: a live large block; on failure it stays valid.
    unsafe { assert!(realloc(big.p, 128 * MIB).is_null(), "a large block grew to 128 MiB at the limit") };
    check_survivors("after failed reallocs");
    for b in &blocks {
        check_block(b, "at the limit");
    }

    // Free everything, then memory is there again.
    let n = blocks.len();
    rng.shuffle(&mut blocks);
    for b in blocks.drain(..) {
        free_block(b, "freeing at the limit");
    }
    check_survivors("after freeing everything");
    // One block of half of what the first round got must fit again.
    let half = first_round / 2;
    let one = try_block(half, next_id);
    assert!(one.is_some(), "after freeing {} MiB, a {} MiB block failed", first_round / MIB, half / MIB);
    free_block(one.unwrap(), "half block");
    // Second round the other way round: the arena runs out first (the break, then the
    // mmap'ed segments it falls back on), then the large blocks.
    let again_small = fill_until_null(&mut blocks, &mut rng, &mut next_id, |r| r.range(16, 4096));
    let again_medium = fill_until_null(&mut blocks, &mut rng, &mut next_id, |r| r.range(8 << 10, 500 << 10));
    let again_large = fill_until_null(&mut blocks, &mut rng, &mut next_id, |r| r.range(MIB, 8 * MIB));
    let second_round = again_small + again_medium + again_large;
    check_survivors("after the second failure");
    assert!(malloc(1 << 40).is_null());
    for b in blocks.drain(..) {
        free_block(b, "second round");
    }
    check_survivors("at the end");
    for b in survivors {
        free_block(b, "survivor");
    }
    eprintln!(
        "child: first round {} MiB in {n} blocks (large {} MiB, medium {} MiB, small {} MiB); second round {} MiB (small {} MiB, medium {} MiB, large {} MiB)",
        first_round / MIB,
        large / MIB,
        medium / MIB,
        small / MIB,
        second_round / MIB,
        again_small / MIB,
        again_medium / MIB,
        again_large / MIB,
    );
    // The allocator used the headroom, and got most of it again after the frees.
    assert!(
        first_round >= HEADROOM / 2,
        "only {} MiB allocated under a {} MiB headroom",
        first_round / MIB,
        HEADROOM / MIB
    );
    assert!(
        second_round >= first_round / 2,
        "second round {} MiB, first {} MiB",
        second_round / MIB,
        first_round / MIB
    );
    // Everything was freed, so small blocks alone must get most of it back (size classes
    // waste less than a quarter): memory the allocator keeps for itself (caches of freed
    // blocks) has to be given up before a request fails.
    assert!(
        again_small >= first_round / 4 * 3,
        "after freeing all {} MiB, small blocks failed after {} MiB (stats at the end: {:?})",
        first_round / MIB,
        again_small / MIB,
        tidemalloc::stats()
    );
}

#[test]
fn out_of_memory_returns_null_and_recovers() {
    const NAME: &str = "out_of_memory_returns_null_and_recovers";
    if common::is_child(NAME) {
        return out_of_memory_body();
    }
    let out = common::run_child(NAME, NAME);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child failed: {}", common::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child did not run the test: {}",
        common::describe(&out)
    );
}

#[test]
fn impossible_sizes_return_null() {
    assert!(malloc(usize::MAX).is_null());
    assert!(malloc(usize::MAX - 4096).is_null());
    assert!(malloc(isize::MAX as usize).is_null());
    assert!(malloc(isize::MAX as usize + 1).is_null());
    assert!(calloc(usize::MAX).is_null());
    assert!(calloc(usize::MAX / 2).is_null());
    assert!(aligned_alloc(16, usize::MAX).is_null());
    assert!(aligned_alloc(4096, usize::MAX - 8192).is_null());
    assert!(aligned_alloc(1 << 20, isize::MAX as usize).is_null());
    assert!(aligned_alloc(1 << 62, 16).is_null(), "a 2^62-aligned block cannot exist");
    assert!(aligned_alloc(1 << 63, 16).is_null(), "a 2^63-aligned block cannot exist");
    assert!(aligned_alloc(3, 16).is_null(), "alignment 3 is not a power of two");
    assert!(aligned_alloc(0, 16).is_null(), "alignment 0 is not a power of two");
    assert!(tidemalloc::aligned_alloc_zeroed(48, 16).is_null());
    // A 1 TiB alignment is possible in a 47-bit address space: null or a real, aligned block.
    let p = aligned_alloc(1 << 40, 16);
    if !p.is_null() {
        assert_eq!(p as usize % (1 << 40), 0);
        // SAFETY: a live block of at least 16 bytes.
        unsafe {
            p.write_bytes(0x5A, 16);
            assert!(usable_size(p) >= 16);
            free(p);
        }
    }
    // std::alloc with the largest layouts Layout allows.
    for align in [16usize, 4096, 1 << 20] {
        let layout = std::alloc::Layout::from_size_align(isize::MAX as usize - (align - 1), align).unwrap();
        // SAFETY: non-zero size.
        assert!(unsafe { std::alloc::alloc(layout) }.is_null(), "alloc of {layout:?}");
        // SAFETY: non-zero size.
        assert!(unsafe { std::alloc::alloc_zeroed(layout) }.is_null(), "alloc_zeroed of {layout:?}");
    }

    // realloc to an impossible size returns null and leaves the block intact, for small,
    // arena-huge and large blocks, plain and aligned.
    for (size, align) in [(100usize, 16usize), (5000, 16), (1 << 20, 16), (200, 64), (300_000, 4096), (1000, 1 << 16)] {
        let p = aligned_alloc(align, size);
        assert!(!p.is_null());
        // SAFETY: `p` is live; failed reallocs leave it live.
        unsafe {
            common::fill(p, size, size as u64);
            for new_size in [usize::MAX, usize::MAX - 4096, isize::MAX as usize, isize::MAX as usize + 1] {
                let q = if align == 16 { realloc(p, new_size) } else { realloc_aligned(p, align, new_size) };
                assert!(q.is_null(), "realloc of a {size}-byte block (align {align}) to {new_size:#x} succeeded");
                let layout = std::alloc::Layout::from_size_align(size, align).unwrap();
                if new_size <= isize::MAX as usize - (align - 1) {
                    assert!(std::alloc::realloc(p, layout, new_size).is_null());
                }
                common::check(p, size, size as u64);
            }
            free(p);
        }
    }
}
