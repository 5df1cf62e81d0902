//! Where blocks live: small blocks inside the program break (`[heap]` in /proc/self/maps),
//! blocks at or above the mmap threshold in their own anonymous mappings, and the threshold
//! moving that line at run time (4 KiB, 64 MiB, 0, 32 MiB, back to the 128 KiB default).
//!
//! The threshold is process-global, so the threshold changes run in one test function, and
//! the tests of this file run one at a time.

use tidemalloc::{Opt, free, get_mmap_threshold, malloc, set_mmap_threshold, stats};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::{heap_ranges, in_heap, mapping_of};

const DEFAULT_THRESHOLD: usize = 128 << 10;

/// The tests of this file look at process-wide counters and options: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const DEFAULT_LARGE_CACHE: usize = 64 << 20;

/// Restores the process-wide options even if an assertion fails.
struct Restore;
impl Drop for Restore {
    fn drop(&mut self) {
        set_mmap_threshold(DEFAULT_THRESHOLD);
        tidemalloc::set_option(Opt::LargeCache, DEFAULT_LARGE_CACHE);
    }
}

/// A block allocated with `malloc`, its pattern written.
struct Block {
    p: *mut u8,
    size: usize,
    id: u64,
}

impl Block {
    fn new(size: usize, id: u64) -> Block {
        let p = malloc(size);
        assert!(!p.is_null(), "malloc({size}) failed");
        assert_eq!(p as usize % 16, 0);
        // SAFETY: a fresh block of `size` bytes.
        unsafe { common::fill(p, size, id) };
        Block { p, size, id }
    }
    fn addr(&self) -> usize {
        self.p as usize
    }
    fn free(self) {
        // SAFETY: the block is live and `size` bytes long.
        unsafe {
            common::check(self.p, self.size, self.id);
            free(self.p);
        }
    }
}

/// Asserts that the block lies in the program break: inside a `[heap]` line, below the
/// current break.
fn assert_in_heap(b: &Block, what: &str) {
    let heap = heap_ranges();
    assert!(
        in_heap(&heap, b.addr(), b.size),
        "{what}: block {:p} (+{}) is not inside [heap] {heap:x?}; its mapping: {:?}",
        b.p,
        b.size,
        mapping_of(b.addr())
    );
    assert!(b.addr() + b.size <= common::sbrk0(), "{what}: block {:p} ends above the break", b.p);
}

/// Asserts that the block lies outside the break, in an anonymous read-write mapping that
/// covers all of it, and returns that mapping.
fn assert_in_own_mapping(b: &Block, what: &str) -> common::MapLine {
    let heap = heap_ranges();
    for &(s, e) in &heap {
        assert!(
            b.addr() + b.size <= s || b.addr() >= e,
            "{what}: block {:p} (+{}) overlaps [heap] {s:#x}-{e:#x}",
            b.p,
            b.size
        );
    }
    let (rs, re) = tidemalloc::brk_range();
    assert!(b.addr() + b.size <= rs || b.addr() >= re, "{what}: block {:p} inside brk_range {rs:#x}-{re:#x}", b.p);
    let m = mapping_of(b.addr()).unwrap_or_else(|| panic!("{what}: block {:p} is in no mapping", b.p));
    assert!(m.contains(b.addr(), b.size), "{what}: block {:p} (+{}) not covered by its mapping {m:?}", b.p, b.size);
    assert!(m.is_anonymous(), "{what}: block {:p} is in a non-anonymous mapping {m:?}", b.p);
    assert_eq!(&m.perms, "rw-p", "{what}: block {:p} mapping {m:?}", b.p);
    m
}

#[test]
fn placement_follows_the_threshold() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _restore = Restore;
    assert_eq!(get_mmap_threshold(), DEFAULT_THRESHOLD, "default threshold");

    // ---- default threshold: small blocks in the break ----
    let smalls: Vec<Block> = (0..100).map(|i| Block::new(64, i)).collect();
    let b100k = Block::new(100 << 10, 1000);
    for b in &smalls {
        assert_in_heap(b, "64 B block");
    }
    assert_in_heap(&b100k, "100 KiB block");

    // brk_range() is a run of the break, inside [heap], below the break.
    let (rs, re) = tidemalloc::brk_range();
    assert!(rs < re, "brk_range() is empty: {rs:#x}-{re:#x}");
    assert_eq!(rs % (4 << 20), 0, "brk runs start segment aligned");
    assert!(re <= common::sbrk0(), "brk_range end {re:#x} above the break {:#x}", common::sbrk0());
    assert!(in_heap(&heap_ranges(), rs, re - rs), "brk_range {rs:#x}-{re:#x} not inside [heap] {:x?}", heap_ranges());
    assert!(stats().reserved_brk >= re - rs, "reserved_brk below the size of the current run");

    // ---- large blocks: each in its own mapping ----
    // With the large-block cache off, freeing a large block must unmap exactly its mapping.
    tidemalloc::set_option(Opt::LargeCache, 0);
    let before = stats();
    let l1 = Block::new(1 << 20, 2001);
    let l2 = Block::new(1 << 20, 2002);
    let l3 = Block::new(3 << 20, 2003);
    let after = stats();
    assert!(
        after.mmap_calls >= before.mmap_calls + 3,
        "3 large blocks made {} mmap calls",
        after.mmap_calls - before.mmap_calls
    );
    assert_eq!(after.large_blocks, before.large_blocks + 3);
    assert!(after.reserved_mmap >= before.reserved_mmap + (5 << 20));
    for b in [&l1, &l2, &l3] {
        assert_in_own_mapping(b, "large block");
    }
    // Freeing l2 unmaps its range, l1 and l3 stay mapped and intact.
    let (a2, s2) = (l2.addr(), l2.size);
    l2.free();
    let m = common::maps();
    assert!(
        !m.iter().any(|x| x.start < a2 + s2 && a2 < x.end),
        "the freed 1 MiB block's range {a2:#x}+{s2} is still mapped: {:?}",
        m.iter().filter(|x| x.start < a2 + s2 && a2 < x.end).collect::<Vec<_>>()
    );
    assert_in_own_mapping(&l1, "large block after a neighbour was freed");
    assert_in_own_mapping(&l3, "large block after a neighbour was freed");
    l1.free();
    l3.free();
    tidemalloc::set_option(Opt::LargeCache, DEFAULT_LARGE_CACHE);

    // ---- threshold 4 KiB: 16 KiB moves to mmap, 4000 B stays in the arena ----
    assert!(set_mmap_threshold(4096));
    assert_eq!(get_mmap_threshold(), 4096);
    let m0 = stats().mmap_calls;
    let b16k = Block::new(16 << 10, 3001);
    let m1 = stats().mmap_calls;
    assert!(m1 > m0, "a 16 KiB block with threshold 4 KiB made no mmap call");
    assert_in_own_mapping(&b16k, "16 KiB block, threshold 4 KiB");
    let b4000 = Block::new(4000, 3002);
    assert_in_heap(&b4000, "4000 B block, threshold 4 KiB");
    let b4096 = Block::new(4096, 3003);
    assert_in_own_mapping(&b4096, "4096 B block, threshold 4 KiB (at the threshold)");

    // ---- threshold 64 MiB: 1 MiB and 20 MiB come from the arena ----
    assert!(set_mmap_threshold(64 << 20));
    assert_eq!(get_mmap_threshold(), 64 << 20);
    let m0 = stats();
    let b1m = Block::new(1 << 20, 4001);
    let b20m = Block::new(20 << 20, 4002);
    let m1 = stats();
    assert_eq!(m1.mmap_calls, m0.mmap_calls, "1 MiB and 20 MiB blocks with threshold 64 MiB made mmap calls");
    assert_eq!(m1.large_blocks, m0.large_blocks);
    assert_in_heap(&b1m, "1 MiB block, threshold 64 MiB");
    assert_in_heap(&b20m, "20 MiB block, threshold 64 MiB");
    assert!(m1.in_use >= m0.in_use + (21 << 20), "in_use did not grow by the two arena blocks");
    // calloc of an arena block that reuses dirty memory of a freed one reads as zeros.
    for size in [20usize << 20, 6 << 20, 1 << 20] {
        for _ in 0..3 {
            let d = malloc(size);
            assert!(!d.is_null());
            // SAFETY: live blocks of `size` bytes.
            unsafe {
                d.write_bytes(0xFF, size);
                free(d);
                let z = tidemalloc::calloc(size);
                assert!(!z.is_null());
                let zs = std::slice::from_raw_parts(z, size);
                if let Some(i) = zs.iter().position(|&x| x != 0) {
                    panic!("calloc({size}) from the arena (threshold 64 MiB) has byte {i} = {:#x}", zs[i]);
                }
                free(z);
            }
        }
    }

    // ---- threshold 0: everything, even 1 byte, gets a mapping ----
    assert!(set_mmap_threshold(0));
    assert_eq!(get_mmap_threshold(), 0);
    let m0 = stats();
    let one = Block::new(1, 5001);
    let zero_sized = malloc(0);
    let m1 = stats();
    assert!(!zero_sized.is_null(), "malloc(0) returned null");
    assert!(m1.large_blocks >= m0.large_blocks + 2, "1 B and 0 B blocks with threshold 0 are not large blocks");
    assert_in_own_mapping(&one, "1 B block, threshold 0");
    let c = tidemalloc::calloc(10);
    assert!(!c.is_null());
    // SAFETY: `c` is a live 10-byte block.
    assert!(unsafe { std::slice::from_raw_parts(c, 10) }.iter().all(|&x| x == 0));
    assert_in_own_mapping(&Block { p: c, size: 10, id: 0 }, "calloc(10), threshold 0");

    // ---- threshold 32 MiB: 32 MiB - 1 from the arena, 32 MiB from mmap ----
    assert!(set_mmap_threshold(32 << 20));
    let below = Block::new((32 << 20) - 1, 6001);
    let at = Block::new(32 << 20, 6002);
    assert_in_heap(&below, "32 MiB - 1 block, threshold 32 MiB");
    assert_in_own_mapping(&at, "32 MiB block, threshold 32 MiB");

    // Out-of-range thresholds are refused and change nothing.
    assert!(!set_mmap_threshold(tidemalloc::MAX_MMAP_THRESHOLD + 1));
    assert_eq!(get_mmap_threshold(), 32 << 20);

    // ---- MmapMax: beyond that many live large blocks, large requests use the arena ----
    assert!(set_mmap_threshold(DEFAULT_THRESHOLD));
    let live_large = stats().large_blocks;
    tidemalloc::set_option(Opt::MmapMax, live_large + 2);
    let mm: Vec<Block> = (0..4).map(|i| Block::new(1 << 20, 6100 + i)).collect();
    tidemalloc::set_option(Opt::MmapMax, 65536);
    assert_in_own_mapping(&mm[0], "1st large block under MmapMax");
    assert_in_own_mapping(&mm[1], "2nd large block under MmapMax");
    assert_in_heap(&mm[2], "3rd large block beyond MmapMax");
    assert_in_heap(&mm[3], "4th large block beyond MmapMax");
    for b in mm {
        b.free();
    }

    // ---- back to the default ----
    assert!(set_mmap_threshold(DEFAULT_THRESHOLD));
    assert_eq!(get_mmap_threshold(), DEFAULT_THRESHOLD);
    let small = Block::new(100, 7001);
    let large = Block::new(DEFAULT_THRESHOLD, 7002);
    assert_in_heap(&small, "100 B block, default threshold");
    assert_in_own_mapping(&large, "128 KiB block, default threshold");

    // Blocks made under other thresholds are freed correctly under this one.
    for b in [b16k, b4000, b4096, b1m, b20m, one, below, at, small, large, b100k] {
        b.free();
    }
    // SAFETY: both are live blocks of this allocator.
    unsafe {
        free(zero_sized);
        free(c);
    }
    for b in smalls {
        b.free();
    }
}

/// Options come from the environment at start-up: tidemalloc's own names, glibc's names
/// (tidemalloc's win), suffixes; a malformed value warns and keeps the default.
#[test]
fn options_from_the_environment() {
    const NAME: &str = "options_from_the_environment";
    if let Ok(case) = std::env::var("TIDEMALLOC_TEST_CHILD") {
        if !case.starts_with(NAME) {
            return;
        }
        // The first allocation of the process already happened (the harness): the values
        // must be in force.
        let threshold = get_mmap_threshold();
        let b = Block::new(16 << 10, 1);
        let big = Block::new(1 << 20, 2);
        let heap = heap_ranges();
        println!(
            "CHILD threshold={threshold} trim={} top_pad={} small_in_heap={} big_in_heap={}",
            tidemalloc::get_option(Opt::TrimThreshold),
            tidemalloc::get_option(Opt::TopPad),
            in_heap(&heap, b.addr(), b.size),
            in_heap(&heap, big.addr(), big.size)
        );
        b.free();
        big.free();
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = |case: &str, env: &[(&str, &str)]| -> (String, String) {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("TIDEMALLOC_TEST_CHILD", format!("{NAME}-{case}"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "child {case}: {}", common::describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find_map(|l| l.split_once("CHILD ").map(|x| x.1.to_string()));
        (
            line.unwrap_or_else(|| panic!("child {case} printed nothing: {}", common::describe(&out))),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (l, _) = run(
        "own",
        &[("TIDEMALLOC_MMAP_THRESHOLD", "8K"), ("TIDEMALLOC_TRIM_THRESHOLD", "1M"), ("TIDEMALLOC_TOP_PAD", "4m")],
    );
    assert_eq!(l, format!("threshold=8192 trim={} top_pad={} small_in_heap=false big_in_heap=false", 1 << 20, 4 << 20));
    let (l, _) = run("glibc", &[("MALLOC_MMAP_THRESHOLD_", "4194304")]);
    assert_eq!(l, format!("threshold={} trim={} top_pad=0 small_in_heap=true big_in_heap=true", 4 << 20, 128 << 10));
    let (l, _) = run("both", &[("MALLOC_MMAP_THRESHOLD_", "4194304"), ("TIDEMALLOC_MMAP_THRESHOLD", "2048")]);
    assert_eq!(l, format!("threshold=2048 trim={} top_pad=0 small_in_heap=false big_in_heap=false", 128 << 10));
    let (l, err) = run("bad", &[("TIDEMALLOC_MMAP_THRESHOLD", "12X")]);
    assert_eq!(
        l,
        format!("threshold={DEFAULT_THRESHOLD} trim={} top_pad=0 small_in_heap=true big_in_heap=false", 128 << 10)
    );
    assert!(
        err.contains("tidemalloc: warning") && err.contains("TIDEMALLOC_MMAP_THRESHOLD=12X"),
        "no warning for a malformed value: {err}"
    );
}

/// glibc's dynamic threshold: unless the program fixed it, freeing a large block raises the
/// threshold to that block's size (up to 32 MiB), so the next block of that size comes from
/// the arena; the trim threshold follows at twice the mmap threshold. Runs in child
/// processes: the threshold must not have been fixed or moved yet.
#[test]
fn dynamic_threshold_follows_freed_large_blocks() {
    const NAME: &str = "dynamic_threshold_follows_freed_large_blocks";
    if let Ok(case) = std::env::var("TIDEMALLOC_TEST_CHILD") {
        if !case.starts_with(NAME) {
            return;
        }
        let fixed = case.ends_with("fixed");
        let t0 = get_mmap_threshold();
        assert_eq!(t0, DEFAULT_THRESHOLD);
        let a = Block::new(1 << 20, 1);
        assert_in_own_mapping(&a, "1 MiB block at the default threshold");
        a.free();
        let t1 = get_mmap_threshold();
        if fixed {
            assert_eq!(t1, DEFAULT_THRESHOLD, "a fixed threshold moved after a free");
            let b = Block::new(1 << 20, 2);
            assert_in_own_mapping(&b, "1 MiB block, fixed threshold");
            b.free();
            println!("CHILD ok");
            return;
        }
        assert!(t1 > 1 << 20 && t1 <= (1 << 20) + 8192, "threshold after freeing a 1 MiB block: {t1}");
        assert_eq!(tidemalloc::get_option(Opt::TrimThreshold), 2 * t1, "the trim threshold does not follow");
        let b = Block::new(1 << 20, 2);
        assert_in_heap(&b, "1 MiB block after the threshold rose");
        let c = Block::new(t1, 3);
        assert_in_own_mapping(&c, "block at the raised threshold");
        // Blocks beyond 32 MiB do not move the threshold.
        let d = Block::new(40 << 20, 4);
        assert_in_own_mapping(&d, "40 MiB block");
        d.free();
        assert_eq!(get_mmap_threshold(), t1, "a 40 MiB block moved the threshold");
        // A smaller large block does not lower it.
        c.free();
        let t2 = get_mmap_threshold();
        assert!(t2 >= t1);
        // Once the program sets the threshold, frees no longer move it.
        assert!(set_mmap_threshold(256 << 10));
        let e = Block::new(2 << 20, 5);
        assert_in_own_mapping(&e, "2 MiB block, threshold set to 256 KiB");
        e.free();
        assert_eq!(get_mmap_threshold(), 256 << 10, "a set threshold moved after a free");
        b.free();
        println!("CHILD ok");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (case, env) in [("dynamic", vec![]), ("fixed", vec![("TIDEMALLOC_MMAP_THRESHOLD", "128K")])] {
        let out = common::run_child_env(NAME, &format!("{NAME}-{case}"), &env);
        assert!(out.status.success(), "child {case}: {}", common::describe(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("CHILD ok"), "child {case}: {}", common::describe(&out));
    }
}
