//! Memory that threads leave behind goes back to the OS:
//! - blocks of an exited thread, freed later by another thread, are released within the
//!   purge delay while the program keeps allocating, with no trim call;
//! - blocks that thread-exit destructors allocated (after tidemalloc's own exit handler, so
//!   from the backup heap) and that other threads freed are released by `trim(0)` too.
//!
//! Each case runs in a child process so RSS is its own (read from /proc/self/statm).

use std::time::{Duration, Instant};
use tidemalloc::{free, malloc, trim};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::rss;

const MIB: usize = 1 << 20;

fn run(name: &str) {
    let out = common::run_child(name, name);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed: {}", common::describe(&out));
}

/// `bytes` worth of 1000-byte blocks, every page touched.
fn fill(bytes: usize) -> Vec<usize> {
    (0..bytes / 1000)
        .map(|i| {
            let p = malloc(1000);
            assert!(!p.is_null());
            // SAFETY: a fresh block of 1000 bytes.
            unsafe { p.write_bytes(i as u8, 1000) };
            p as usize
        })
        .collect()
}

fn free_all(v: Vec<usize>) {
    for p in v {
        // SAFETY: live blocks of ours.
        unsafe { free(p as *mut u8) };
    }
}

/// Keeps allocating and freeing (small blocks of a few sizes, so slow paths run) for `d`.
fn keep_busy(d: Duration) {
    let t0 = Instant::now();
    let mut i = 0usize;
    while t0.elapsed() < d {
        let v: Vec<usize> = (0..256).map(|k| malloc(16 + (i + k) % 300) as usize).collect();
        free_all(v);
        i += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn exited_threads_memory_freed_later_goes_back_without_trim() {
    const NAME: &str = "exited_threads_memory_freed_later_goes_back_without_trim";
    if common::is_child(NAME) {
        let base = rss();
        let blocks = std::thread::spawn(|| fill(200 * MIB)).join().unwrap();
        let full = rss();
        assert!(full > base + 150 * MIB, "set-up: RSS only went from {base} to {full}");
        free_all(blocks);
        keep_busy(Duration::from_millis(2500));
        let after = rss();
        eprintln!(
            "RSS: {} MiB at start, {} MiB full, {} MiB 2.5 s after the frees",
            base / MIB,
            full / MIB,
            after / MIB
        );
        assert!(after < base + 40 * MIB, "RSS stayed at {} MiB (start {} MiB)", after / MIB, base / MIB);
        return;
    }
    run(NAME);
}

/// Key destructor that allocates: created after tidemalloc's key, so it runs after
/// tidemalloc's exit handler and allocates from the backup heap.
extern "C" fn late_destructor(arg: *mut libc::c_void) {
    // Allocate a lot in the destructor (the backup heap serves it) and leave it for the main
    // thread to free.
    let v = fill(20 * MIB);
    let boxed = Box::new(v);
    // SAFETY: `arg` is the Sender the thread stored.
    let tx = unsafe { Box::from_raw(arg.cast::<std::sync::mpsc::Sender<Box<Vec<usize>>>>()) };
    let _ = tx.send(boxed);
}

#[test]
fn backup_heap_memory_goes_back_to_trim() {
    const NAME: &str = "backup_heap_memory_goes_back_to_trim";
    if common::is_child(NAME) {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: a valid out-pointer and destructor.
        assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(late_destructor)) }, 0);
        let base = rss();
        let (tx, rx) = std::sync::mpsc::channel::<Box<Vec<usize>>>();
        let mut held = Vec::new();
        for _ in 0..3 {
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Leave some memory in abandoned segments too.
                let v = fill(10 * MIB);
                let ptr = Box::into_raw(Box::new(tx));
                // SAFETY: the key is valid; the destructor takes ownership of the sender.
                unsafe { libc::pthread_setspecific(key, ptr.cast()) };
                v
            })
            .join()
            .map(|v| held.push(v))
            .unwrap();
        }
        drop(tx);
        let late: Vec<Box<Vec<usize>>> = rx.iter().collect();
        assert_eq!(late.len(), 3, "set-up: the late destructors did not all run");
        let full = rss();
        for v in held {
            free_all(v);
        }
        for v in late {
            free_all(*v);
        }
        trim(0);
        let after = rss();
        eprintln!("RSS: {} MiB at start, {} MiB full, {} MiB after free and trim", base / MIB, full / MIB, after / MIB);
        assert!(full > base + 60 * MIB, "set-up: RSS only went from {base} to {full}");
        assert!(after < base + 16 * MIB, "trim left {} MiB (start {} MiB)", after / MIB, base / MIB);
        return;
    }
    run(NAME);
}

/// A live thread allocates 250 MB and hands every block to the main thread, then waits
/// (idle, alive); the main thread frees them all and runs `release`. Returns RSS at start,
/// full, and after `release` (the idle thread ends after the last reading).
fn free_into_idle_owner(release: impl FnOnce()) -> (usize, usize, usize) {
    let base = rss();
    let (blocks_tx, blocks_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        blocks_tx.send(fill(250 * MIB)).unwrap();
        let _ = end_rx.recv();
    });
    let blocks = blocks_rx.recv().unwrap();
    let full = rss();
    assert!(full > base + 200 * MIB, "set-up: RSS only went from {base} to {full}");
    free_all(blocks);
    release();
    let after = rss();
    drop(end_tx);
    t.join().unwrap();
    (base, full, after)
}

/// Blocks other threads freed into the pages of a live, idle thread go back to `trim(0)`
/// (on the old code RSS stayed at the 250 MB the thread had allocated).
#[test]
fn trim_collects_what_others_freed_into_an_idle_thread() {
    const NAME: &str = "trim_collects_what_others_freed_into_an_idle_thread";
    if common::is_child(NAME) {
        let (base, full, after) = free_into_idle_owner(|| assert!(trim(0), "trim(0) released nothing"));
        eprintln!("RSS: {} MiB at start, {} MiB full, {} MiB after free and trim", base / MIB, full / MIB, after / MIB);
        assert!(after < base + 16 * MIB, "trim left {} MiB (start {} MiB)", after / MIB, base / MIB);
        return;
    }
    run(NAME);
}

/// The same without trim: a program that keeps allocating on another thread sees the idle
/// thread's memory go back within the purge delay.
#[test]
fn what_others_freed_into_an_idle_thread_goes_back_without_trim() {
    const NAME: &str = "what_others_freed_into_an_idle_thread_goes_back_without_trim";
    if common::is_child(NAME) {
        let (base, full, after) = free_into_idle_owner(|| keep_busy(Duration::from_millis(2500)));
        eprintln!(
            "RSS: {} MiB at start, {} MiB full, {} MiB 2.5 s after the frees",
            base / MIB,
            full / MIB,
            after / MIB
        );
        assert!(after < base + 40 * MIB, "RSS stayed at {} MiB (start {} MiB)", after / MIB, base / MIB);
        return;
    }
    run(NAME);
}

/// After its pages were collected by others, the owner allocates into them again and every
/// block reads back what was written (the collection left no stale list behind).
#[test]
fn an_owner_whose_pages_were_collected_allocates_soundly() {
    const NAME: &str = "an_owner_whose_pages_were_collected_allocates_soundly";
    if common::is_child(NAME) {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<Vec<usize>>();
        let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
        let owner = std::thread::spawn(move || {
            for round in 0..4u8 {
                let v = fill(40 * MIB);
                // Keep a few blocks ourselves: those pages must survive the collection.
                let (mine, theirs): (Vec<usize>, Vec<usize>) = v.into_iter().partition(|p| p % 4096 < 8);
                go_tx.send(theirs).unwrap();
                back_rx.recv().unwrap(); // freed by main and trimmed meanwhile
                for &p in &mine {
                    // SAFETY: our live block of 1000 bytes, written by `fill`.
                    let s = unsafe { std::slice::from_raw_parts(p as *const u8, 1000) };
                    assert!(s.iter().all(|&b| b == s[0]), "round {round}: a kept block changed");
                }
                free_all(mine);
            }
        });
        for _ in 0..4 {
            let theirs = go_rx.recv().unwrap();
            free_all(theirs);
            trim(0);
            back_tx.send(()).unwrap();
        }
        owner.join().unwrap();
        return;
    }
    run(NAME);
}
