//! Two allocators in one Rust program: tidemalloc as `#[global_allocator]` *without* the
//! `override` feature, glibc's malloc called from C (here `libc::malloc`) on other threads.
//! Both would move the program break with nothing shared between them; tidemalloc must leave
//! the break to glibc (its arena then lives in anonymous mappings) and neither may lose a byte.
//!
//! The program is the crate `tests/two_allocators/` (outside the workspace, so that cargo's
//! feature unification cannot enable `override` in it): two threads move glibc's break with
//! 64 KiB .. 1 MiB blocks and malloc_trim, two move tidemalloc's arena, for 6 seconds, every
//! block checked. Before the fix it died (SIGSEGV, "malloc(): corrupted top size", or a lost
//! pattern) in 6 runs out of 6.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

#[test]
fn glibc_malloc_and_tidemalloc_in_one_rust_program() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/two_allocators");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = Instant::now();
    let out = Command::new(cargo)
        .args(["build", "--release", "--offline"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build for tests/two_allocators");
    assert!(out.status.success(), "building tests/two_allocators failed:\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("built tests/two_allocators in {:.1?}", t.elapsed());
    let bin = target.join("release/two-allocators");
    let out = Command::new(&bin)
        .arg("6")
        // Every thread's glibc malloc in glibc's main arena, which lives in the break.
        .env("MALLOC_ARENA_MAX", "1")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .output()
        .expect("run two-allocators");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "two-allocators failed: {:?}", out.status);
    assert!(stdout.contains("two_allocators: ok"), "no summary line");
    assert!(stdout.contains("brk_calls 0 reserved_brk 0"), "tidemalloc moved the break beside glibc's malloc");
}
