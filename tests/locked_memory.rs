//! Memory whose release fails is neither zero nor fresh. Under `mlockall`, madvise(DONTNEED)
//! fails (EINVAL on locked pages): the allocator must notice, keep treating that memory as
//! dirty (calloc clears it), never trust a header left in it, and still give memory back
//! where it can (lowering the break works on locked memory). With a small RLIMIT_MEMLOCK,
//! mlockall itself fails, or growing memory does: allocations then fail cleanly or succeed,
//! and the heap stays sound.
//!
//! Each case runs in a child process (mlockall is process-wide) with a zero purge delay, so
//! every release is attempted at once.

use std::os::unix::process::ExitStatusExt;
use tidemalloc::{calloc, free, malloc, stats, trim};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;

fn run(name: &str) {
    let out = common::run_child_env(name, name, &[("TIDEMALLOC_PURGE_DELAY", "0")]);
    assert!(out.status.success(), "child failed (signal {:?}): {}", out.status.signal(), common::describe(&out));
}

fn lock_all() {
    // SAFETY: mlockall has no memory-safety preconditions.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    assert_eq!(rc, 0, "mlockall failed: {}", std::io::Error::last_os_error());
}

/// Number of non-zero bytes in `p..p+n`.
fn nonzero(p: *const u8, n: usize) -> usize {
    // SAFETY: the caller passes a live block of `n` bytes.
    unsafe { std::slice::from_raw_parts(p, n) }.iter().filter(|&&b| b != 0).count()
}

/// Dirties `count` blocks of `size` bytes with a pattern, frees them, asks for everything
/// to be released, then checks `count` calloc'd blocks of the same size read as zero.
fn calloc_after_failed_release(size: usize, count: usize) {
    let blocks: Vec<*mut u8> = (0..count).map(|_| malloc(size)).collect();
    for &p in &blocks {
        assert!(!p.is_null());
        // SAFETY: a live block of `size` bytes.
        unsafe { p.write_bytes(0xAB, size) };
    }
    for &p in &blocks {
        // SAFETY: live blocks of ours.
        unsafe { free(p) };
    }
    trim(0);
    let again: Vec<*mut u8> = (0..count).map(|_| calloc(size)).collect();
    for &p in &again {
        assert!(!p.is_null());
        let bad = nonzero(p, size);
        assert_eq!(bad, 0, "calloc({size}) returned {bad} non-zero bytes at {p:p} after a failed release");
    }
    for p in again {
        // SAFETY: live blocks of ours.
        unsafe { free(p) };
    }
}

#[test]
fn calloc_is_zero_when_madvise_fails_under_mlockall() {
    const NAME: &str = "calloc_is_zero_when_madvise_fails_under_mlockall";
    if common::is_child(NAME) {
        lock_all();
        let before = stats().release_failures;
        calloc_after_failed_release(3000, 3000);
        calloc_after_failed_release(48, 20000);
        calloc_after_failed_release(40 << 10, 200);
        assert!(stats().release_failures > before, "madvise never failed: the test did not test anything");
        return;
    }
    run(NAME);
}

#[test]
fn huge_calloc_is_zero_and_spans_come_back_under_mlockall() {
    const NAME: &str = "huge_calloc_is_zero_and_spans_come_back_under_mlockall";
    if common::is_child(NAME) {
        lock_all();
        // Huge blocks from the arena.
        assert!(tidemalloc::set_mmap_threshold(256 << 20));
        let keep = malloc(100);
        let size = 10 << 20;
        let mut peak_reserved = 0;
        for round in 0..40 {
            let a = malloc(size);
            let b = malloc(size / 2);
            assert!(!a.is_null() && !b.is_null());
            // SAFETY: live blocks of those sizes.
            unsafe {
                a.write_bytes(0xCD, size);
                b.write_bytes(0xEF, size / 2);
                free(a);
            }
            let z = calloc(size);
            assert!(!z.is_null());
            let bad = nonzero(z, size);
            assert_eq!(bad, 0, "round {round}: calloc(10 MiB) returned {bad} non-zero bytes");
            // SAFETY: live blocks of ours.
            unsafe {
                free(z);
                free(b);
            }
            let s = stats();
            peak_reserved = peak_reserved.max(s.reserved_brk + s.reserved_mmap);
        }
        // One round holds at most about 25 MiB; a span whose stale header kept it from
        // going back would add 10 MiB or more per round.
        assert!(peak_reserved < 96 << 20, "the arena grew to {} MiB over 40 rounds", peak_reserved >> 20);
        // SAFETY: live.
        unsafe { free(keep) };
        return;
    }
    run(NAME);
}

/// As an unprivileged user with a 64 KiB RLIMIT_MEMLOCK: mlockall(MCL_CURRENT) fails, and
/// after mlockall(MCL_FUTURE) growing memory may fail. Either way allocations return memory
/// or null (never crash), calloc is zero, and everything freed can be freed.
#[test]
fn small_memlock_limit() {
    const NAME: &str = "small_memlock_limit";
    if common::is_child(NAME) {
        // SAFETY: plain system calls; the child owns its process.
        unsafe {
            let lim = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
            assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim), 0);
            if libc::geteuid() == 0 {
                // Root ignores the limit (CAP_IPC_LOCK): become nobody.
                assert_eq!(libc::setgid(65534), 0, "setgid: {}", std::io::Error::last_os_error());
                assert_eq!(libc::setuid(65534), 0, "setuid: {}", std::io::Error::last_os_error());
            }
            assert_ne!(
                libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE),
                0,
                "mlockall succeeded under a 64 KiB limit"
            );
        }
        calloc_after_failed_release(3000, 2000);
        // SAFETY: as above.
        let future = unsafe { libc::mlockall(libc::MCL_FUTURE) } == 0;
        let mut got = Vec::new();
        let mut nulls = 0;
        for i in 0..2000usize {
            let size = [24, 3000, 70 << 10, 300 << 10, 5 << 20][i % 5];
            let p = calloc(size);
            if p.is_null() {
                nulls += 1;
                continue;
            }
            assert_eq!(nonzero(p, size), 0, "calloc({size}) not zero");
            // SAFETY: a live block of `size` bytes.
            unsafe { p.write_bytes(0x5A, size) };
            got.push(p);
            if got.len() > 64 {
                // SAFETY: live.
                unsafe { free(got.swap_remove(i % 64)) };
            }
        }
        for p in got {
            // SAFETY: live.
            unsafe { free(p) };
        }
        // The test harness needs memory again to report.
        // SAFETY: no preconditions.
        unsafe { libc::munlockall() };
        eprintln!("MCL_FUTURE accepted: {future}; {nulls} of 2000 allocations failed");
        return;
    }
    run(NAME);
}
