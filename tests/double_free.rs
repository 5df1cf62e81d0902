//! Every double free of a small or huge block is caught before any list is corrupted: by the
//! owner or by another thread, right after the first free or after other frees, into the
//! page of a live thread or of one that exited. Each case runs in a child process that must
//! die of SIGABRT with `tidemalloc: free(): double free detected: 0x...` naming the pointer.
//!
//! Also: blocks that hold every byte pattern a program may leave in them (including what the
//! allocator itself writes into freed blocks) are not mistaken for freed ones.

use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc;
use tidemalloc::{free, malloc};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;

fn expect_abort(name: &str, what: &str) {
    common::expect_abort(name, what, &[]);
}

/// `n` blocks of `size` bytes, each filled.
fn blocks(n: usize, size: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let p = malloc(size);
            assert!(!p.is_null());
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            p as usize
        })
        .collect()
}

/// Frees `p` and reports it first, so the parent can match the message.
fn free_announced(p: usize) {
    eprintln!("PTR={:p}", p as *const u8);
    // SAFETY: on purpose, `p` may have been freed already: that is the error under test.
    unsafe { free(p as *mut u8) };
}

fn free_all(v: &[usize]) {
    for &p in v {
        // SAFETY: live blocks of ours.
        unsafe { free(p as *mut u8) };
    }
}

#[test]
fn owner_double_free_with_another_free_between() {
    const NAME: &str = "owner_double_free_with_another_free_between";
    if common::is_child(NAME) {
        let v = blocks(16, 48);
        // SAFETY: v[3] and v[5] are live.
        unsafe {
            free(v[3] as *mut u8);
            free(v[5] as *mut u8);
        }
        free_announced(v[3]);
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free detected");
}

#[test]
fn owner_double_free_after_many_frees_and_allocations() {
    const NAME: &str = "owner_double_free_after_many_frees_and_allocations";
    if common::is_child(NAME) {
        let v = blocks(4000, 48);
        let victim = v[1234];
        // SAFETY: live.
        unsafe { free(victim as *mut u8) };
        // Free many others in its page and elsewhere and allocate again, so the lists are
        // collected and the freed block moves between them, without handing it out again
        // (lists are LIFO: the blocks freed after it go first).
        free_all(&v[..1000]);
        free_all(&v[2000..]);
        let again = blocks(500, 48);
        if again.contains(&victim) {
            eprintln!("test set-up: the victim was handed out again");
            std::process::exit(3);
        }
        free_announced(victim);
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free detected");
}

/// A thread that allocates `n` blocks of `size` bytes, sends their addresses, and stays
/// alive (idle) until told to go.
fn owner_thread(n: usize, size: usize) -> (Vec<usize>, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        tx.send(blocks(n, size)).unwrap();
        let _ = go_rx.recv();
    });
    (rx.recv().unwrap(), go_tx, h)
}

#[test]
fn remote_double_free() {
    const NAME: &str = "remote_double_free";
    if common::is_child(NAME) {
        let (v, _go, _h) = owner_thread(64, 32);
        // SAFETY: live, owned by the other thread.
        unsafe { free(v[10] as *mut u8) };
        free_announced(v[10]);
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free detected");
}

#[test]
fn remote_double_free_with_other_remote_frees_between() {
    const NAME: &str = "remote_double_free_with_other_remote_frees_between";
    if common::is_child(NAME) {
        let (v, _go, _h) = owner_thread(64, 32);
        // SAFETY: live, owned by the other thread.
        unsafe { free(v[10] as *mut u8) };
        free_all(&v[20..40]);
        free_announced(v[10]);
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free detected");
}

#[test]
fn remote_free_then_owner_free() {
    const NAME: &str = "remote_free_then_owner_free";
    if common::is_child(NAME) {
        let (tx, rx) = mpsc::channel();
        let (back_tx, back_rx) = mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let v = blocks(64, 80);
            tx.send(v[7]).unwrap();
            back_rx.recv().unwrap();
            free_announced(v[7]);
        });
        let p = rx.recv().unwrap();
        // SAFETY: live, owned by the other thread.
        unsafe { free(p as *mut u8) };
        back_tx.send(()).unwrap();
        h.join().unwrap();
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free detected");
}

#[test]
fn owner_free_then_remote_free() {
    const NAME: &str = "owner_free_then_remote_free";
    if common::is_child(NAME) {
        let (tx, rx) = mpsc::channel();
        let (_go, go_rx) = mpsc::channel::<()>();
        let _h = std::thread::spawn(move || {
            let v = blocks(64, 80);
            // SAFETY: live, ours.
            unsafe { free(v[7] as *mut u8) };
            tx.send(v[7]).unwrap();
            let _ = go_rx.recv();
        });
        free_announced(rx.recv().unwrap());
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free detected");
}

#[test]
fn double_free_into_an_exited_threads_segment() {
    const NAME: &str = "double_free_into_an_exited_threads_segment";
    if common::is_child(NAME) {
        let v = std::thread::spawn(|| blocks(64, 256)).join().unwrap();
        // SAFETY: live; its segment is abandoned.
        unsafe { free(v[3] as *mut u8) };
        free_announced(v[3]);
        unreachable!("double free returned");
    }
    expect_abort(NAME, "double free detected");
}

#[test]
fn huge_double_free() {
    const NAME: &str = "huge_double_free";
    if common::is_child(NAME) {
        // Huge blocks come from the arena when the threshold is above their size.
        assert!(tidemalloc::set_mmap_threshold(64 << 20));
        let keep = malloc(6 << 20);
        let p = malloc(9 << 20);
        assert!(!keep.is_null() && !p.is_null());
        // SAFETY: live.
        unsafe { free(p) };
        free_announced(p as usize);
        unreachable!("double free returned");
    }
    // After its free a huge span is no segment at all: the pointer is not ours any more.
    expect_abort(NAME, "free(): ");
}

#[test]
fn double_free_after_its_page_was_released_and_purged() {
    const NAME: &str = "double_free_after_its_page_was_released_and_purged";
    if common::is_child(NAME) {
        // Three pages' worth of 48-byte blocks; empty the page of the last one, which goes
        // back to its segment and (purge delay 0) has its memory released, mark and all.
        let v = blocks(3000, 48);
        let page = |p: usize| p >> 16;
        let last = page(*v.last().unwrap());
        let (gone, kept): (Vec<usize>, Vec<usize>) = v.iter().partition(|&&p| page(p) == last);
        assert!(!kept.is_empty() && gone.len() > 10, "set-up: {} blocks in the last page", gone.len());
        free_all(&gone);
        // Slow paths run the purge: 20 KiB blocks come from other (medium) segments, and
        // nothing small is allocated meanwhile, so the emptied page is not reused.
        let mut big = [std::ptr::null_mut::<u8>(); 40];
        for _ in 0..3 {
            for b in big.iter_mut() {
                *b = malloc(20000);
            }
            for &b in &big {
                // SAFETY: live blocks of ours.
                unsafe { free(b) };
            }
        }
        free_announced(gone[0]);
        unreachable!("a late double free returned");
    }
    let out = common::run_child_env(NAME, NAME, &[("TIDEMALLOC_PURGE_DELAY", "0")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "no SIGABRT: {}", common::describe(&out));
    assert!(err.lines().any(|l| l.starts_with("tidemalloc: free(): ")), "no message: {}", common::describe(&out));
}

/// Blocks whose contents look like anything (every word of them set to its own address, to
/// its complement, to the patterns a freed block holds) are freed without complaint.
#[test]
fn no_false_double_free_on_any_contents() {
    let sizes = [16usize, 24, 32, 48, 64, 128, 1000, 4096, 20000];
    for round in 0..4 {
        let mut live = Vec::new();
        for &s in &sizes {
            for _ in 0..200 {
                let p = malloc(s);
                assert!(!p.is_null());
                let words = s / 8;
                // SAFETY: `p` holds `s` bytes, aligned to 16.
                unsafe {
                    let w = p.cast::<usize>();
                    for i in 0..words {
                        let v = match round {
                            0 => p as usize,
                            1 => !(p as usize),
                            2 => w.add(i) as usize,
                            _ => usize::MAX,
                        };
                        w.add(i).write(v);
                    }
                }
                live.push(p);
            }
        }
        // A copy of a freed block's bytes written into a live one must not make it look freed.
        let a = malloc(64);
        let b = malloc(64);
        // SAFETY: both live, 64 bytes.
        unsafe {
            free(a);
            let c = malloc(64); // likely `a` again
            std::ptr::copy_nonoverlapping(c, b, 64);
            free(c);
            free(b);
        }
        for p in live {
            // SAFETY: live blocks of ours.
            unsafe { free(p) };
        }
    }
}
