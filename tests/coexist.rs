//! C code in a Rust program calls `malloc` (here `libc::malloc`) while the Rust side allocates
//! through tidemalloc. Fifty rounds interleave C allocations (1000 blocks of 1 B .. 64 KiB)
//! with tidemalloc allocations (3 to 25 MiB of small blocks, some `Vec`s), then free one side
//! and the other in varying orders, with `malloc_trim(0)` and `tidemalloc::trim(0)` in
//! between. Every block of both sides must keep its contents; a few survive several rounds.
//!
//! - Without the `override` feature the C side is glibc's malloc, whose main arena lives in
//!   the program break: glibc owns the break, and tidemalloc must never move it (its arena
//!   comes from anonymous mappings).
//! - With `override`, `libc::malloc` is tidemalloc's own: one allocator, which owns the break.

use tidemalloc::{free, malloc, stats};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::{Rng, heap_ranges, in_heap};

const ROUNDS: usize = 50;
const GLIBC_PER_ROUND: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Glibc,
    Tide,
}

/// A live block of either allocator with its pattern.
struct Blk {
    side: Side,
    p: *mut u8,
    size: usize,
    id: u64,
}

impl Blk {
    fn new(side: Side, size: usize, id: u64) -> Blk {
        let p = match side {
            // SAFETY: glibc's malloc has no preconditions.
            Side::Glibc => unsafe { libc::malloc(size).cast::<u8>() },
            Side::Tide => malloc(size),
        };
        assert!(!p.is_null(), "{side:?} malloc({size}) failed");
        // SAFETY: a fresh block of `size` bytes.
        unsafe { common::fill(p, size, id) };
        Blk { side, p, size, id }
    }

    fn check(&self, when: &str) {
        // SAFETY: the block is live and `size` bytes long.
        if let Err(e) = unsafe { common::check_limit(self.p, self.size, self.size, self.id) } {
            panic!("{when}: {:?} block lost its contents: {e}", self.side);
        }
    }

    fn free(self, when: &str) {
        self.check(when);
        // SAFETY: the block is live and was allocated by this side's malloc.
        unsafe {
            match self.side {
                Side::Glibc => libc::free(self.p.cast()),
                Side::Tide => free(self.p),
            }
        }
    }
}

/// A `Vec` through the global allocator (tidemalloc) with a checkable content.
fn make_vec(rng: &mut Rng, id: u64) -> Vec<u64> {
    let n = rng.log_range(1, 20_000);
    (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9) ^ id).collect()
}

fn check_vec(v: &[u64], id: u64) {
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(x, (i as u64).wrapping_mul(0x9E37_79B9) ^ id, "Vec {id} lost its contents at {i}");
    }
}

/// Runs the body in a child process with `MALLOC_ARENA_MAX=1`: then every thread's glibc
/// malloc uses glibc's main arena, which lives in the program break. (A test thread has
/// its own mmap'ed glibc arena otherwise: the thread start-up already called glibc's malloc,
/// so `mallopt(M_ARENA_MAX, 1)` from the test comes too late.)
#[test]
fn glibc_and_tidemalloc_share_the_break() {
    const NAME: &str = "glibc_and_tidemalloc_share_the_break";
    if common::is_child(NAME) {
        return share_the_break();
    }
    let out = common::run_child_env(NAME, NAME, &[("MALLOC_ARENA_MAX", "1")]);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child failed: {}", common::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child did not run the test: {}",
        common::describe(&out)
    );
}

fn share_the_break() {
    let start = stats();
    let mut rng = Rng::new(0xC0E_0000);
    let mut next_id = 1u64;
    let mut long_lived: Vec<(usize, Blk)> = Vec::new();
    let mut long_vecs: Vec<(usize, u64, Vec<u64>)> = Vec::new();
    let mut glibc_in_break = 0usize;
    let mut runs = std::collections::BTreeSet::new();
    let (mut glibc_trims, mut tide_trims) = (0, 0);

    for round in 0..ROUNDS {
        let mut glibc = Vec::with_capacity(GLIBC_PER_ROUND);
        let mut tide = Vec::new();
        let mut vecs = Vec::new();
        for i in 0..GLIBC_PER_ROUND {
            glibc.push(Blk::new(Side::Glibc, rng.range(1, 64 << 10), next_id));
            next_id += 1;
            // From about 3 MiB to 25 MiB of small blocks per round, so that tidemalloc grows
            // past what it kept from earlier rounds.
            for _ in 0..rng.range(1, 2 + round % 8) {
                tide.push(Blk::new(Side::Tide, rng.log_range(16, 16 << 10), next_id));
                next_id += 1;
            }
            if i % 50 == 0 {
                tide.push(Blk::new(Side::Tide, rng.range(16 << 10, 120 << 10), next_id));
                next_id += 1;
                vecs.push((next_id, make_vec(&mut rng, next_id)));
                next_id += 1;
            }
            runs.insert(tidemalloc::brk_range().0);
        }

        // Both sides are live: everything intact, glibc's blocks in the break.
        let heap = heap_ranges();
        for b in glibc.iter().chain(&tide) {
            b.check(&format!("round {round}, all live"));
        }
        glibc_in_break += glibc.iter().filter(|b| in_heap(&heap, b.p as usize, b.size)).count();

        // A few blocks of each side live on for a few rounds.
        for side in [&mut glibc, &mut tide] {
            for _ in 0..side.len() / 20 {
                let i = rng.below(side.len());
                long_lived.push((round + rng.range(1, 5), side.swap_remove(i)));
            }
        }
        if let Some(v) = vecs.pop() {
            long_vecs.push((round + rng.range(1, 5), v.0, v.1));
        }

        let when = format!("round {round}, freeing");
        let trim_glibc = round % 3 != 1;
        let trim_tide = round % 2 == 0;
        let mut trims = |after_first: bool| {
            if trim_glibc && after_first {
                // SAFETY: malloc_trim has no preconditions.
                unsafe { libc::malloc_trim(0) };
                glibc_trims += 1;
            }
            if trim_tide && !after_first {
                tidemalloc::trim(0);
                tide_trims += 1;
            }
        };
        match round % 4 {
            0 => {
                glibc.drain(..).for_each(|b| b.free(&when));
                trims(true);
                tide.drain(..).for_each(|b| b.free(&when));
                trims(false);
            }
            1 => {
                tide.drain(..).for_each(|b| b.free(&when));
                trims(false);
                glibc.drain(..).for_each(|b| b.free(&when));
                trims(true);
            }
            2 => {
                let mut all: Vec<Blk> = glibc.drain(..).chain(tide.drain(..)).collect();
                rng.shuffle(&mut all);
                let half = all.len() / 2;
                all.drain(..half).for_each(|b| b.free(&when));
                trims(true);
                trims(false);
                all.drain(..).for_each(|b| b.free(&when));
            }
            _ => {
                glibc.drain(..).rev().for_each(|b| b.free(&when));
                tide.drain(..).rev().for_each(|b| b.free(&when));
                trims(false);
                trims(true);
            }
        }
        for (id, v) in vecs {
            check_vec(&v, id);
        }

        // Survivors: all intact; those whose time has come are freed.
        let when = format!("round {round}, survivors");
        for (_, b) in &long_lived {
            b.check(&when);
        }
        for (_, id, v) in &long_vecs {
            check_vec(v, *id);
        }
        let (due, keep): (Vec<_>, Vec<_>) = long_lived.into_iter().partition(|(r, _)| *r <= round);
        long_lived = keep;
        due.into_iter().for_each(|(_, b)| b.free(&when));
        long_vecs.retain(|(r, _, _)| *r > round);
    }
    for (_, b) in long_lived {
        b.free("end");
    }
    drop(long_vecs);
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    tidemalloc::trim(0);

    let end = stats();
    eprintln!(
        "coexist: {} glibc blocks in the break, {} tidemalloc runs, {glibc_trims} malloc_trim, {tide_trims} trim\n  start {start:?}\n  end   {end:?}",
        glibc_in_break,
        runs.len()
    );
    if cfg!(feature = "override") {
        // One allocator: the C side's blocks were tidemalloc's, and it owns the break.
        assert!(tidemalloc::uses_brk(), "with the override feature tidemalloc does not use the break");
        assert!(end.brk_calls > start.brk_calls, "tidemalloc never moved the break");
        assert!(tidemalloc::brk_range().1 <= common::sbrk0(), "tidemalloc's run ends above the break");
    } else {
        assert!(
            glibc_in_break >= ROUNDS * GLIBC_PER_ROUND / 2,
            "only {glibc_in_break} glibc blocks were in the program break: glibc's malloc did not use the break"
        );
        assert!(!tidemalloc::uses_brk(), "tidemalloc uses the break beside glibc's malloc");
        assert_eq!((end.brk_calls, end.reserved_brk), (0, 0), "tidemalloc moved the break beside glibc's malloc");
        assert!(end.reserved_arena_mmap > 0, "tidemalloc's arena is not in anonymous mappings");
    }
    assert!(end.in_use <= start.in_use + (1 << 20), "in_use {} at the end (start {})", end.in_use, start.in_use);
}
