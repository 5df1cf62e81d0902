//! `TIDEMALLOC_BACKGROUND_PURGE=1`: a program that frees what it held and then makes no
//! call at all still sees its RSS go back within the purge delay, whatever the history of
//! the memory (its own freed blocks and segments, blocks it freed into an idle thread's
//! pages, the large-block cache), and so does a fork child. Without the option nothing
//! runs while the program is idle (there is no background thread): the figures of that
//! case are printed for comparison.
//!
//! Each case runs in a child process so RSS is its own (read from /proc/self/statm).

use std::time::Duration;
use tidemalloc::{free, malloc};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::rss;

const MIB: usize = 1 << 20;

/// `bytes` worth of `size`-byte blocks, every page touched.
fn fill(bytes: usize, size: usize) -> Vec<usize> {
    (0..bytes / size)
        .map(|i| {
            let p = malloc(size);
            assert!(!p.is_null());
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            p as usize
        })
        .collect()
}

fn free_all(v: &[usize]) {
    for &p in v {
        // SAFETY: live blocks of ours, each freed once.
        unsafe { free(p as *mut u8) };
    }
}

/// Whether a thread of this process is named `tidemalloc-bg`.
fn has_background_thread() -> bool {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .any(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).is_ok_and(|c| c.trim() == "tidemalloc-bg"))
}

/// Allocates from several places, frees everything, goes idle for 3 s; returns RSS (start,
/// full, after).
fn free_then_idle() -> (usize, usize, usize) {
    let base = rss();
    let (tx, rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        tx.send(fill(100 * MIB, 1000)).unwrap();
        let _ = end_rx.recv(); // alive and idle until the end
    });
    let theirs = rx.recv().unwrap();
    let mine = fill(100 * MIB, 200);
    let large = fill(40 * MIB, 4 * MIB);
    let full = rss();
    free_all(&theirs);
    free_all(&mine);
    free_all(&large);
    drop((theirs, mine, large)); // the vectors too
    std::thread::sleep(Duration::from_millis(3000)); // no allocator call meanwhile
    let after = rss();
    drop(end_tx);
    worker.join().unwrap();
    (base, full, after)
}

#[test]
fn an_idle_program_gives_memory_back() {
    const NAME: &str = "an_idle_program_gives_memory_back";
    if common::is_child(NAME) {
        let on = std::env::var_os("TIDEMALLOC_BACKGROUND_PURGE").is_some();
        let (base, full, after) = free_then_idle();
        eprintln!(
            "background purge {}: RSS {} MiB at start, {} MiB full, {} MiB after 3 s idle",
            if on { "on" } else { "off" },
            base / MIB,
            full / MIB,
            after / MIB
        );
        assert!(full > base + 200 * MIB, "set-up: RSS only went from {base} to {full}");
        if on {
            assert!(has_background_thread(), "no thread named tidemalloc-bg");
            assert!(after < base + 24 * MIB, "RSS stayed at {} MiB (start {} MiB)", after / MIB, base / MIB);
            // A fork child has no background thread until its first slow path starts one.
            // SAFETY: the child only allocates, frees, sleeps and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let (b, f, a) = free_then_idle();
                let ok = f > b + 200 * MIB && a < b + 24 * MIB;
                eprintln!("fork child: RSS {} MiB at start, {} MiB full, {} MiB after", b / MIB, f / MIB, a / MIB);
                // SAFETY: leaving the child without running the parent's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: our child; a valid out-pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the fork child kept its memory");
        } else {
            assert!(!has_background_thread(), "a background thread runs without the option");
        }
        return;
    }
    for env in [&[("TIDEMALLOC_BACKGROUND_PURGE", "1")][..], &[]] {
        let out = common::run_child_env(NAME, NAME, env);
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "child failed: {}", common::describe(&out));
    }
}
