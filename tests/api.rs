//! API behaviour: alignment for every power of two up to 4 MiB on both sides of the
//! threshold, usable sizes, zeroing (calloc, aligned_alloc_zeroed, GlobalAlloc::alloc_zeroed)
//! of reused memory, free(null), cross-thread frees, and the fatal errors (foreign pointer,
//! double free, interior pointer), which abort with a message naming the pointer. The fatal
//! cases run in a child process (the test binary re-executed).

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc};
use tidemalloc::{aligned_alloc, aligned_alloc_zeroed, calloc, free, malloc, realloc, usable_size};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;

const SIZES: [usize; 7] = [1, 100, 5000, 131_071, 131_072, 200_000, 3 << 20];

#[test]
fn every_power_of_two_alignment_on_both_sides_of_the_threshold() {
    for shift in 0..=22 {
        let align = 1usize << shift;
        for size in SIZES {
            let id = (shift * 100 + size) as u64;
            let p = aligned_alloc(align, size);
            assert!(!p.is_null(), "aligned_alloc({align}, {size}) failed");
            assert_eq!(p as usize % align, 0, "aligned_alloc({align}, {size}) = {p:p}");
            let z = aligned_alloc_zeroed(align, size);
            assert!(!z.is_null(), "aligned_alloc_zeroed({align}, {size}) failed");
            assert_eq!(z as usize % align, 0, "aligned_alloc_zeroed({align}, {size}) = {z:p}");
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size.
            let g = unsafe { alloc(layout) };
            assert!(!g.is_null(), "alloc({layout:?}) failed");
            assert_eq!(g as usize % align, 0, "alloc({layout:?}) = {g:p}");
            // SAFETY: all three are live blocks of at least `size` bytes.
            unsafe {
                assert!(usable_size(p) >= size, "usable_size of aligned_alloc({align}, {size}) = {}", usable_size(p));
                assert!(usable_size(z) >= size);
                assert!(usable_size(g) >= size);
                let zs = std::slice::from_raw_parts(z, size);
                assert!(zs.iter().all(|&b| b == 0), "aligned_alloc_zeroed({align}, {size}) is not zeroed");
                // Write all of each block: the three must not overlap.
                p.write_bytes(0xA1, size);
                z.write_bytes(0xB2, size);
                g.write_bytes(0xC3, size);
                for (q, v) in [(p, 0xA1u8), (z, 0xB2), (g, 0xC3)] {
                    let s = std::slice::from_raw_parts(q, size);
                    assert!(s.iter().all(|&b| b == v), "block {q:p} (align {align}, size {size}) was overwritten");
                }
                common::fill(p, size, id);
                free(p);
                free(z);
                dealloc(g, layout);
            }
        }
    }
}

#[test]
fn usable_size_is_at_least_the_request() {
    // SAFETY: null is allowed.
    assert_eq!(unsafe { usable_size(std::ptr::null()) }, 0);
    let mut sizes: Vec<usize> = (0..=4200).collect();
    sizes.extend([
        8191,
        8192,
        8193,
        65_535,
        65_536,
        65_537,
        131_071,
        131_072,
        524_288,
        524_289,
        1 << 20,
        (4 << 20) + 1,
    ]);
    for size in sizes {
        let p = malloc(size);
        assert!(!p.is_null(), "malloc({size}) failed");
        assert_eq!(p as usize % 16, 0, "malloc({size}) = {p:p} is not 16-aligned");
        // SAFETY: a live block.
        unsafe {
            let us = usable_size(p);
            assert!(us >= size, "usable_size(malloc({size})) = {us}");
            // The whole usable size is ours to write.
            p.write_bytes(0x77, us);
            free(p);
        }
    }
}

/// Reused memory is zeroed by calloc: dirty a block of the same size, free it, calloc.
#[test]
fn calloc_zeroes_reused_memory() {
    for size in [1usize, 8, 16, 24, 64, 100, 1000, 4096, 8000, 60_000, 100_000, 131_072, 200_000, 600_000, 2 << 20] {
        for round in 0..40 {
            let p = malloc(size);
            assert!(!p.is_null());
            // SAFETY: live blocks of `size` bytes.
            unsafe {
                p.write_bytes(0xFF, size);
                free(p);
                let q = calloc(size);
                assert!(!q.is_null());
                let s = std::slice::from_raw_parts(q, size);
                if let Some(i) = s.iter().position(|&b| b != 0) {
                    panic!(
                        "calloc({size}) round {round}: byte {i} is {:#x} (reused block {q:p}, dirty block was {p:p})",
                        s[i]
                    );
                }
                q.write_bytes(0xEE, size);
                free(q);
            }
        }
    }
    // Many blocks at once: fill, free all, calloc all.
    for size in [48usize, 700, 5000, 150_000] {
        let ps: Vec<*mut u8> = (0..200).map(|_| malloc(size)).collect();
        for &p in &ps {
            assert!(!p.is_null());
            // SAFETY: a live block of `size` bytes.
            unsafe {
                p.write_bytes(0xFF, size);
            }
        }
        for &p in &ps {
            // SAFETY: live, freed once.
            unsafe { free(p) };
        }
        let qs: Vec<*mut u8> = (0..200).map(|_| calloc(size)).collect();
        for &q in &qs {
            assert!(!q.is_null());
            // SAFETY: a live block of `size` bytes.
            unsafe {
                assert!(
                    std::slice::from_raw_parts(q, size).iter().all(|&b| b == 0),
                    "calloc({size}) reused a dirty block"
                );
                free(q);
            }
        }
    }
}

#[test]
fn alloc_zeroed_zeroes_reused_memory() {
    for align in [1usize, 16, 64, 4096, 65536] {
        for size in [1usize, 33, 500, 4096, 70_000, 300_000] {
            let layout = Layout::from_size_align(size, align).unwrap();
            for _ in 0..20 {
                // SAFETY: non-zero sizes; each block is used within its layout.
                unsafe {
                    let p = alloc(layout);
                    assert!(!p.is_null());
                    p.write_bytes(0xFF, size);
                    dealloc(p, layout);
                    let q = alloc_zeroed(layout);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0);
                    let s = std::slice::from_raw_parts(q, size);
                    assert!(s.iter().all(|&b| b == 0), "alloc_zeroed({layout:?}) returned dirty memory at {q:p}");
                    q.write_bytes(0xFF, size);
                    dealloc(q, layout);
                }
            }
        }
    }
    // vec![0; n] goes through alloc_zeroed.
    for n in [10usize, 5000, 300_000] {
        let v = vec![0xFFu8; n];
        drop(v);
        let z = vec![0u8; n];
        assert!(z.iter().all(|&b| b == 0));
    }
}

#[test]
fn free_null_and_realloc_null() {
    // SAFETY: null is allowed.
    unsafe {
        free(std::ptr::null_mut());
        let p = realloc(std::ptr::null_mut(), 100);
        assert!(!p.is_null(), "realloc(null, 100) did not allocate");
        assert!(usable_size(p) >= 100);
        p.write_bytes(1, 100);
        free(p);
    }
}

/// Blocks freed by another thread (while their owner is alive) come back to the owner.
#[test]
fn cross_thread_free_then_owner_allocates_again() {
    use std::sync::mpsc::channel;
    const N: usize = 5000;
    const SIZE: usize = 48;
    let (to_freer, freer_rx) = channel::<Vec<(usize, u64)>>();
    let (done_tx, done_rx) = channel::<()>();
    let freer = std::thread::spawn(move || {
        for batch in freer_rx {
            for (p, id) in batch {
                // SAFETY: the owner handed over live blocks of SIZE bytes.
                unsafe {
                    common::check(p as *const u8, SIZE, id);
                    free(p as *mut u8);
                }
            }
            done_tx.send(()).unwrap();
        }
    });
    let owner = std::thread::spawn(move || {
        let mut reused_total = 0;
        let mut prev: std::collections::HashSet<usize> = std::collections::HashSet::new();
        for round in 0..5u64 {
            let batch: Vec<(usize, u64)> = (0..N as u64)
                .map(|i| {
                    let p = malloc(SIZE);
                    assert!(!p.is_null());
                    let id = round << 32 | i;
                    // SAFETY: a fresh block.
                    unsafe { common::fill(p, SIZE, id) };
                    (p as usize, id)
                })
                .collect();
            let addrs: std::collections::HashSet<usize> = batch.iter().map(|x| x.0).collect();
            assert_eq!(addrs.len(), N, "malloc returned the same block twice");
            let reused = addrs.intersection(&prev).count();
            if round > 0 {
                reused_total += reused;
            }
            prev = addrs;
            to_freer.send(batch).unwrap();
            done_rx.recv().unwrap();
        }
        drop(to_freer);
        reused_total
    });
    let reused = owner.join().unwrap();
    freer.join().unwrap();
    // Rounds 1..5 allocate 4 * N blocks after N blocks were freed remotely each time: the owner
    // must collect them and hand most of them out again.
    assert!(reused >= 4 * N / 2, "only {reused} of {} blocks freed by another thread were reused by the owner", 4 * N);
}

// ---- fatal errors, in child processes ----

/// Runs `test_name` as a child and checks it died of SIGABRT with a tidemalloc message that
/// contains `what` and the pointer the child printed as `PTR=0x...`.
fn expect_abort(test_name: &str, what: &str) {
    expect_abort_env(test_name, what, &[]);
}

fn expect_abort_env(test_name: &str, what: &str, env: &[(&str, &str)]) {
    common::expect_abort(test_name, what, env);
}

/// (Without the `override` feature only: with it, `libc::malloc` is tidemalloc's.)
#[cfg(not(feature = "override"))]
#[test]
fn free_of_a_foreign_pointer_aborts() {
    const NAME: &str = "free_of_a_foreign_pointer_aborts";
    if common::is_child(NAME) {
        // A block of glibc's malloc. With MALLOC_ARENA_MAX=1 it comes from glibc's main arena,
        // in the same program break as tidemalloc's small blocks.
        // SAFETY: glibc malloc; the pointer is then (wrongly, on purpose) given to tidemalloc.
        unsafe {
            let p = libc::malloc(64).cast::<u8>();
            assert!(common::in_heap(&common::heap_ranges(), p as usize, 64), "glibc's block {p:p} is not in [heap]");
            eprintln!("PTR={p:p}");
            free(p);
        }
        unreachable!("free of a foreign pointer returned");
    }
    expect_abort_env(NAME, "invalid pointer", &[("MALLOC_ARENA_MAX", "1")]);
}

#[test]
fn free_of_a_stack_pointer_aborts() {
    const NAME: &str = "free_of_a_stack_pointer_aborts";
    if common::is_child(NAME) {
        let mut x = [0u64; 4];
        let p = x.as_mut_ptr().cast::<u8>();
        eprintln!("PTR={p:p}");
        // SAFETY: none: the pointer is foreign on purpose.
        unsafe { free(p) };
        unreachable!("free of a stack pointer returned");
    }
    expect_abort(NAME, "invalid pointer");
}

#[test]
fn double_free_aborts() {
    const NAME: &str = "double_free_aborts";
    if common::is_child(NAME) {
        let keep = malloc(64);
        let p = malloc(64);
        let keep2 = malloc(64);
        assert!(!keep.is_null() && !p.is_null() && !keep2.is_null());
        eprintln!("PTR={p:p}");
        // SAFETY: the second free is the error under test.
        unsafe {
            free(p);
            free(p);
        }
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free");
}

#[test]
fn free_of_an_interior_pointer_aborts() {
    const NAME: &str = "free_of_an_interior_pointer_aborts";
    if common::is_child(NAME) {
        let p = malloc(64);
        assert!(!p.is_null());
        // SAFETY: p + 8 is inside the block; freeing it is the error under test.
        unsafe {
            let q = p.add(8);
            eprintln!("PTR={q:p}");
            free(q);
        }
        unreachable!("free of an interior pointer returned");
    }
    expect_abort(NAME, "invalid pointer");
}

#[test]
fn double_free_of_a_large_block_aborts() {
    const NAME: &str = "double_free_of_a_large_block_aborts";
    if common::is_child(NAME) {
        // With the large-block cache off the mapping is gone after the first free; with the
        // threshold fixed 1 MiB is a large block.
        tidemalloc::set_option(tidemalloc::Opt::LargeCache, 0);
        tidemalloc::set_mmap_threshold(128 << 10);
        let p = malloc(1 << 20);
        assert!(!p.is_null());
        eprintln!("PTR={p:p}");
        // SAFETY: the second free is the error under test.
        unsafe {
            free(p);
            free(p);
        }
        unreachable!("double free of a large block returned");
    }
    expect_abort(NAME, "invalid pointer");
}

// ---- fork ----

/// The work of a forked child: every kind of allocation, and frees of blocks that a thread
/// which does not exist in the child allocated. True if all went well.
fn after_fork_work(foreign: &[(usize, usize, u64)]) -> bool {
    let mut blocks = Vec::new();
    for (i, size) in
        [16usize, 100, 3000, 20_000, 100_000, 200_000, 1 << 20, 5 << 20].into_iter().cycle().take(80).enumerate()
    {
        let p = malloc(size);
        if p.is_null() {
            return false;
        }
        // SAFETY: a fresh block.
        unsafe { common::fill(p, size, i as u64) };
        blocks.push((p, size, i as u64));
    }
    for (p, size, id) in blocks.iter_mut() {
        // SAFETY: live blocks; realloc keeps the contents.
        unsafe {
            if common::check_limit(*p, *size, *size, *id).is_err() {
                return false;
            }
            let q = realloc(*p, *size * 2);
            if q.is_null() || common::check_limit(q, *size, *size, *id).is_err() {
                return false;
            }
            *p = q;
        }
    }
    for (p, _, _) in blocks {
        // SAFETY: live, freed once.
        unsafe { free(p) };
    }
    for &(p, size, id) in foreign {
        // SAFETY: blocks the parent's helper thread allocated; live in this copy.
        unsafe {
            if common::check_limit(p as *const u8, size, size, id).is_err() {
                return false;
            }
            free(p as *mut u8);
        }
    }
    // Threads work in the child too.
    std::thread::spawn(|| {
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; i * 13 % 5000]).collect();
        v.iter().enumerate().all(|(i, x)| x.iter().all(|&b| b == i as u8))
    })
    .join()
    .unwrap_or(false)
}

#[test]
fn fork_while_other_threads_allocate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    const FORKS: usize = 40;

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let churners: Vec<_> = (0..3u64)
        .map(|t| {
            let stop = stop.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                if t == 0 {
                    let foreign: Vec<(usize, usize, u64)> = (0..64u64)
                        .map(|i| {
                            let size = 24 + (i as usize) * 997 % 300_000;
                            let p = malloc(size);
                            assert!(!p.is_null());
                            // SAFETY: a fresh block.
                            unsafe { common::fill(p, size, 1000 + i) };
                            (p as usize, size, 1000 + i)
                        })
                        .collect();
                    tx.send(foreign).unwrap();
                }
                // Thread 2 keeps taking the global locks (trim walks every structure); the others
                // allocate, half of the time large blocks (the large-block registry's lock).
                let mut rng = common::Rng::new(t);
                let mut live: Vec<(*mut u8, usize)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if t == 2 {
                        tidemalloc::trim(0);
                        let _ = tidemalloc::stats();
                    }
                    if live.len() < 500 && rng.percent(60) {
                        let size =
                            if rng.percent(50) { rng.range(128 << 10, 2 << 20) } else { rng.log_range(1, 16 << 10) };
                        let p = malloc(size);
                        assert!(!p.is_null());
                        // SAFETY: a fresh block.
                        unsafe { p.write_bytes(0x33, size.min(4096)) };
                        live.push((p, size));
                    } else if !live.is_empty() {
                        let (p, _) = live.swap_remove(rng.below(live.len()));
                        // SAFETY: live, freed once.
                        unsafe { free(p) };
                    }
                }
                for (p, _) in live {
                    // SAFETY: live, freed once.
                    unsafe { free(p) };
                }
            })
        })
        .collect();
    let foreign = rx.recv().unwrap();

    for n in 0..FORKS {
        // SAFETY: the child only runs `after_fork_work` and `_exit`s; it never returns into the
        // test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| after_fork_work(&foreign)).unwrap_or(false);
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        if let Err(e) = wait_forked(pid, Duration::from_secs(30)) {
            stop.store(true, Ordering::Relaxed);
            panic!("fork {n}: {e}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    for (p, size, id) in foreign {
        // SAFETY: live blocks of the helper thread.
        unsafe {
            common::check(p as *const u8, size, id);
            free(p as *mut u8);
        }
    }
}

/// Waits for the forked child `pid`; kills it after `limit`. Err unless it exited with 0.
fn wait_forked(pid: libc::pid_t, limit: std::time::Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + limit;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if std::time::Instant::now() > deadline {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("the child hung for {limit:?} (a lock held across fork?)"));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!(
            "the child failed: exited {} with {}, signal {}",
            libc::WIFEXITED(status),
            libc::WEXITSTATUS(status),
            if libc::WIFSIGNALED(status) { libc::WTERMSIG(status) } else { 0 }
        ))
    }
}

/// `trim` called by another thread walks every heap's segments under their locks; a fork
/// at that moment must still leave the forking thread's heap usable in the child.
#[test]
fn fork_while_another_thread_trims() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const FORKS: usize = 50;
    use std::sync::atomic::AtomicUsize;
    let stop = Arc::new(AtomicBool::new(false));
    // Handshake: the forker bumps `go` when it has dirtied its pages, the trimmer sets
    // `trimming` to the same value and starts the trim that releases them; the fork follows
    // at once, while that trim runs.
    let go = Arc::new(AtomicUsize::new(0));
    let trimming = Arc::new(AtomicUsize::new(0));
    let trimmer = {
        let (stop, go, trimming) = (stop.clone(), go.clone(), trimming.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let g = go.load(Ordering::Acquire);
                if g == seen {
                    std::hint::spin_loop();
                    continue;
                }
                seen = g;
                trimming.store(g, Ordering::Release);
                tidemalloc::trim(0);
            }
        })
    };
    let mut anchors: Vec<*mut u8> = Vec::new();
    for n in 0..FORKS {
        // Dirty free pages in segments of this thread that stay in use (one block in 1024 of
        // the first 4 MiB lives on), and a whole empty segment after them: the trimmer
        // releases them under this heap's segment lock (madvise, and the arena's lock to
        // give the empty segment back).
        for p in anchors.drain(..) {
            // SAFETY: live, freed once.
            unsafe { free(p) };
        }
        let ps: Vec<*mut u8> = (0..3 * 8192).map(|_| malloc(512)).collect();
        for (i, &p) in ps.iter().enumerate() {
            assert!(!p.is_null());
            // SAFETY: a live block of 512 bytes.
            unsafe { p.write_bytes(0x44, 16) };
            if i % 1024 == 0 && i < 8192 {
                anchors.push(p);
            }
        }
        for (i, p) in ps.into_iter().enumerate() {
            if i % 1024 != 0 || i >= 8192 {
                // SAFETY: live, freed once.
                unsafe { free(p) };
            }
        }
        go.store(n + 1, Ordering::Release);
        while trimming.load(Ordering::Acquire) != n + 1 {
            std::hint::spin_loop();
        }
        // SAFETY: the child only allocates, frees and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| {
                // Enough blocks of every small class that fresh pages are needed.
                let ps: Vec<*mut u8> = (0..8000).map(|i| malloc(16 + (i % 64) * 64)).collect();
                let ok = ps.iter().all(|p| !p.is_null());
                for p in ps {
                    // SAFETY: live (or null), freed once.
                    unsafe { free(p) };
                }
                ok
            })
            .unwrap_or(false);
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        if let Err(e) = wait_forked(pid, std::time::Duration::from_secs(10)) {
            stop.store(true, Ordering::Relaxed);
            panic!("fork {n}: {e}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    trimmer.join().unwrap();
    for p in anchors {
        // SAFETY: live, freed once.
        unsafe { free(p) };
    }
}
