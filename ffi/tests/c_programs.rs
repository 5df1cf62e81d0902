//! The C face of tidemalloc, tested from C and C++: the programs in `tests/c/` are compiled
//! with gcc/g++ and run on the release `libtidemalloc.so`, preloaded (`LD_PRELOAD`) or linked
//! (`-ltidemalloc` with `LD_LIBRARY_PATH`).
//!
//! - `api.c`: every exported function and glibc's edge cases (preloaded and linked);
//!   `api beyond-memory`: requests larger than RAM + swap fail;
//! - `glibc_compare.c`: mallopt's answers, errno of the memalign family and M_PERTURB,
//!   compared line by line with the same program's output on glibc;
//! - `stress.c`: 8 threads, > 1 million random operations, blocks freed by other threads
//!   (preloaded and linked);
//! - `fork.c`: 300 forks while 4 threads allocate and use stdio; again with the threads
//!   calling `malloc_trim`; again with child threads (which glibc starts with the thread
//!   pointers of the parent's workers) freeing the workers' blocks;
//! - `sigfork.c`: a single-threaded program whose SIGALRM handler forks (an interval timer
//!   fires every 2 ms) while the main flow allocates, trims and forks: the handler's fork
//!   lands inside the main flow's fork and malloc (preloaded and linked); again after a
//!   thread ran and exited; again multi-threaded, with SIGALRM raised inside fork() while
//!   tidemalloc's pre-fork handler holds its locks;
//! - `thread_exit.c`: 2000 threads exiting with live blocks, racing exits, key destructors
//!   that allocate after tidemalloc's exit handler;
//! - `tiny.c`: tidemalloc's fixed cost in a tiny process stays under 512 kB, without libgcc_s;
//! - `late_thread.c`: 2000 threads whose first allocation comes in the last destructor round
//!   leave neither RSS nor break behind;
//! - `abort.c`: misuse dies by SIGABRT with a message naming tidemalloc, free and the pointer;
//! - `dlopen.c`: the library loaded with dlopen leaves the program break to glibc's malloc;
//! - `dlopen_threads.c`: threads allocating through a dlopen'ed library (its initial-exec TLS);
//! - `oom.c`: RLIMIT_AS/RLIMIT_DATA exhaustion through every entry point, then recovery;
//! - `newdelete.cpp`: C++ new/delete, sized and aligned forms, containers, threads;
//! - `stats_file.c`: `TIDEMALLOC_STATS_FILE` takes the exit statistics off stderr, one file
//!   per process across fork and exec; `tidemalloc_stats_json` as snprintf.
//!
//! - `leaks.c`: `TIDEMALLOC_LEAKS=1` at rate 1 names the one leaking function and its count;
//! - `prof_sites.c`: the pprof profile's estimates per C function within 10%, checked here
//!   and with `go tool pprof -top`;
//! - `prof_signal.c`: profile dumps from a signal handler, inside other dumps, while threads
//!   allocate and the program forks children that dump.
//!
//! Without gcc/g++ the tests print `SKIP: ...` and pass, except under CI (env var `CI`
//! set), where they fail.

mod common;

use common::{Run, clean_env, lib, require, run, scratch_dir};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How a program gets tidemalloc.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Preload,
    Link,
}

fn src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(name)
}

fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("c-programs"))
}

/// Compiles `source` (C11, or C++17 for .cpp) into the build directory, once per test
/// process; with `Via::Link` the binary is linked against libtidemalloc.so. Returns the
/// binary.
fn compile(source: &str, via: Via) -> PathBuf {
    static BUILT: Mutex<Vec<(String, bool, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = (source.to_string(), via == Via::Link);
    if let Some((_, _, bin)) = built.iter().find(|(s, l, _)| (s, l) == (&key.0, &key.1)) {
        return bin.clone();
    }
    let bin = compile_now(source, via);
    built.push((key.0, key.1, bin.clone()));
    bin
}

fn compile_now(source: &str, via: Via) -> PathBuf {
    let lib = lib();
    let cxx = source.ends_with(".cpp");
    let stem = source.split('.').next().unwrap_or(source);
    let out = build_dir().join(format!("{stem}{}", if via == Via::Link { "-linked" } else { "" }));
    let mut cmd = Command::new(if cxx { "g++" } else { "gcc" });
    cmd.args(if cxx { &["-std=c++17", "-fsized-deallocation"][..] } else { &["-std=gnu11"][..] })
        // -fno-builtin: GCC may delete a malloc/free pair whose memory is not used.
        .args(["-O1", "-g", "-pthread", "-Wall", "-Werror", "-fno-builtin"])
        .arg("-I")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("include"))
        .arg(src(source))
        .arg("-o")
        .arg(&out);
    if source == "initsig.c" {
        // Its sysconf must interpose libc's for the library, preloaded or linked.
        cmd.arg("-Wl,--export-dynamic-symbol=sysconf");
    }
    if via == Via::Link {
        // --no-as-needed: a C++ program may reference tidemalloc only weakly (its malloc is
        // called from libstdc++), and the library must still be loaded.
        cmd.arg("-L").arg(&lib.dir).args(["-Wl,--no-as-needed", "-ltidemalloc"]);
    }
    let r = run(&mut cmd, Duration::from_secs(120));
    assert!(r.success(), "compiling {source} failed:\n{}", r.tail(40));
    out
}

/// Runs a compiled program on tidemalloc with a time limit.
fn exec(bin: &Path, args: &[&str], via: Via, limit_secs: u64) -> Run {
    let lib = lib();
    let mut cmd = Command::new(bin);
    clean_env(cmd.args(args));
    match via {
        Via::Preload => cmd.env("LD_PRELOAD", &lib.so),
        Via::Link => cmd.env("LD_LIBRARY_PATH", &lib.dir),
    };
    let r = run(&mut cmd, Duration::from_secs(limit_secs));
    eprintln!("{} {}: {:.1?}", bin.display(), args.join(" "), r.elapsed);
    r
}

/// Checks with ldd that a linked binary loads libtidemalloc.so from the target directory.
fn assert_links_tidemalloc(bin: &Path) {
    let lib = lib();
    let r = run(Command::new("ldd").arg(bin).env("LD_LIBRARY_PATH", &lib.dir), Duration::from_secs(30));
    assert!(r.success(), "ldd {} failed:\n{}", bin.display(), r.tail(20));
    let line = r.stdout.lines().find(|l| l.contains("libtidemalloc.so")).unwrap_or_else(|| {
        panic!("{} does not load libtidemalloc.so:\n{}", bin.display(), r.stdout);
    });
    assert!(line.contains(&*lib.so.to_string_lossy()), "ldd resolves libtidemalloc.so elsewhere: {line}");
}

fn gcc(test: &str) -> bool {
    require(test, "gcc", "gcc")
}

fn assert_passed(r: &Run, what: &str, last_line: &str) {
    assert!(r.success(), "{what} failed:\n{}", r.tail(30));
    assert!(r.stdout.contains(last_line), "{what}: no '{last_line}' in its output:\n{}", r.tail(30));
}

// ---- api.c ----

#[test]
fn api_preloaded() {
    if !gcc("api_preloaded") {
        return;
    }
    let bin = compile("api.c", Via::Preload);
    let r = exec(&bin, &[], Via::Preload, 120);
    assert_passed(&r, "api (LD_PRELOAD)", "api: all");
}

#[test]
fn api_linked() {
    if !gcc("api_linked") {
        return;
    }
    let bin = compile("api.c", Via::Link);
    assert_links_tidemalloc(&bin);
    let r = exec(&bin, &[], Via::Link, 120);
    assert_passed(&r, "api (-ltidemalloc)", "api: all");
}

/// A request larger than the machine (RAM + swap) must fail with ENOMEM as it does with
/// glibc under the kernel's default heuristic overcommit.
#[test]
fn api_beyond_memory() {
    if !gcc("api_beyond_memory") {
        return;
    }
    let bin = compile("api.c", Via::Preload);
    let r = exec(&bin, &["beyond-memory"], Via::Preload, 60);
    assert_passed(&r, "api beyond-memory", "api beyond-memory: all");
}

// ---- glibc_compare.c ----

/// Runs `glibc_compare ARGS` once on glibc and once preloaded, and checks the outputs match.
fn same_as_glibc(args: &[&str], env: &[(&str, &str)]) {
    let lib = lib();
    let bin = compile("glibc_compare.c", Via::Preload);
    let mut outs = Vec::new();
    for preload in [false, true] {
        let mut cmd = Command::new(&bin);
        clean_env(cmd.args(args));
        cmd.envs(env.iter().copied());
        if preload {
            cmd.env("LD_PRELOAD", &lib.so);
        }
        let r = run(&mut cmd, Duration::from_secs(60));
        assert!(r.success(), "glibc_compare {args:?} (preload {preload}) failed:\n{}", r.tail(20));
        outs.push(r.stdout);
    }
    let (glibc, tide) = (&outs[0], &outs[1]);
    let diff: Vec<String> = glibc
        .lines()
        .zip(tide.lines())
        .filter(|(g, t)| g != t)
        .map(|(g, t)| format!("  glibc:      {g}\n  tidemalloc: {t}"))
        .collect();
    assert!(
        diff.is_empty() && glibc.lines().count() == tide.lines().count(),
        "tidemalloc answers differently from glibc ({} lines differ):\n{}",
        diff.len(),
        diff.join("\n")
    );
    eprintln!("glibc_compare {args:?}: {} lines, all as glibc's", glibc.lines().count());
}

/// mallopt's return values, the memalign family's errno, M_PERTURB: as glibc 2.36.
#[test]
fn mallopt_errno_and_perturb_as_glibc() {
    if !gcc("mallopt_errno_and_perturb_as_glibc") {
        return;
    }
    same_as_glibc(&[], &[]);
}

/// MALLOC_PERTURB_ in the environment, as glibc.
#[test]
fn malloc_perturb_env_as_glibc() {
    if !gcc("malloc_perturb_env_as_glibc") {
        return;
    }
    same_as_glibc(&["perturb-env"], &[("MALLOC_PERTURB_", "90")]);
}

// ---- stress.c ----

fn check_stress(r: &Run, what: &str) {
    assert_passed(r, what, "stress: ok");
    let summary = r.stdout.lines().find(|l| l.contains(" operations: ")).expect("summary line");
    let words: Vec<&str> = summary.split_whitespace().collect();
    let ops: u64 = words.windows(2).find(|w| w[1] == "operations:").and_then(|w| w[0].parse().ok()).unwrap_or(0);
    assert!(ops >= 1_000_000, "{what}: only {ops} operations: {summary}");
    eprintln!("{what}: {summary}");
}

#[test]
fn stress_preloaded() {
    if !gcc("stress_preloaded") {
        return;
    }
    let bin = compile("stress.c", Via::Preload);
    let r = exec(&bin, &["12345"], Via::Preload, 300);
    check_stress(&r, "stress (LD_PRELOAD)");
}

#[test]
fn stress_linked() {
    if !gcc("stress_linked") {
        return;
    }
    let bin = compile("stress.c", Via::Link);
    assert_links_tidemalloc(&bin);
    let r = exec(&bin, &["777"], Via::Link, 300);
    check_stress(&r, "stress (-ltidemalloc)");
}

// ---- fork.c ----

#[test]
fn fork_while_threads_allocate() {
    if !gcc("fork_while_threads_allocate") {
        return;
    }
    let bin = compile("fork.c", Via::Preload);
    let r = exec(&bin, &[], Via::Preload, 120);
    assert_eq!(r.status.signal(), None, "fork test killed by a signal (SIGALRM = deadlock):\n{}", r.tail(30));
    assert_passed(&r, "fork", "all exited 0");
}

/// Same, with the other threads calling malloc_trim: trim takes other threads' heap locks,
/// which must not stay taken in the child.
#[test]
fn fork_while_threads_trim() {
    if !gcc("fork_while_threads_trim") {
        return;
    }
    let bin = compile("fork.c", Via::Preload);
    let r = exec(&bin, &["trim"], Via::Preload, 120);
    assert_eq!(r.status.signal(), None, "fork test killed by a signal (SIGALRM = deadlock):\n{}", r.tail(30));
    assert_passed(&r, "fork trim", "all exited 0");
}

/// Child threads run on the cached stacks of the parent's other threads (glibc), so they have
/// those threads' thread pointers; one frees every block its parent-side namesake had live,
/// while the parent's threads call malloc_trim.
#[test]
fn fork_child_threads_reuse_parent_thread_ids() {
    if !gcc("fork_child_threads_reuse_parent_thread_ids") {
        return;
    }
    let bin = compile("fork.c", Via::Preload);
    let r = exec(&bin, &["reuse"], Via::Preload, 120);
    assert_eq!(r.status.signal(), None, "fork test killed by a signal (SIGALRM = deadlock):\n{}", r.tail(30));
    assert_passed(&r, "fork reuse", "all exited 0");
}

// ---- initsig.c ----

/// Allocations while the first malloc's initialisation is under way: from a signal handler
/// on the initialising thread, in a child a handler forked there, in a child of a thread
/// that forked there. Each case alone (each hung before), then all three in one run.
fn check_initsig(via: Via) {
    let bin = compile("initsig.c", via);
    for mode in ["handler", "handler-fork", "thread-fork", ""] {
        let args: &[&str] = if mode.is_empty() { &[] } else { &[mode] };
        let r = exec(&bin, args, via, 60);
        let what = format!("initsig {} ({via:?})", if mode.is_empty() { "all" } else { mode });
        assert!(!r.timed_out && r.status.signal().is_none(), "{what}: killed (SIGALRM = hang):\n{}", r.tail(30));
        assert_passed(&r, &what, "all passed");
    }
    // Statistics at exit, from every process that finished an initialisation: the main
    // process, the two children that took it over (the handler's, whose thread already had
    // a heap, and the other thread's) and the child of the main flow after it.
    let lib = lib();
    let mut cmd = Command::new(&bin);
    clean_env(&mut cmd).env("TIDEMALLOC_SHOW_STATS", "1").env("INITSIG_EXIT", "1");
    match via {
        Via::Preload => cmd.env("LD_PRELOAD", &lib.so),
        Via::Link => cmd.env("LD_LIBRARY_PATH", &lib.dir),
    };
    let r = run(&mut cmd, Duration::from_secs(60));
    assert_passed(&r, "initsig with statistics", "all passed");
    let reports = r.stderr.matches("tidemalloc stats:").count();
    assert_eq!(
        reports,
        4,
        "initsig: statistics from {reports} processes, not 4 (a child did not take over):\n{}",
        r.tail(10)
    );
}

#[test]
fn allocation_during_initialisation_preloaded() {
    if !gcc("allocation_during_initialisation_preloaded") {
        return;
    }
    check_initsig(Via::Preload);
}

#[test]
fn allocation_during_initialisation_linked() {
    if !gcc("allocation_during_initialisation_linked") {
        return;
    }
    check_initsig(Via::Link);
}

// ---- sigfork.c ----

/// Runs `sigfork` for 3 seconds; a deadlock ends it by its 30 s watchdog (SIGTERM) or the
/// 60 s limit here.
fn check_sigfork(via: Via, mode: &[&str], what: &str) {
    let bin = compile("sigfork.c", via);
    if via == Via::Link {
        assert_links_tidemalloc(&bin);
    }
    let mut args = vec!["3"];
    args.extend_from_slice(mode);
    let r = exec(&bin, &args, via, 60);
    assert!(
        !r.timed_out && r.status.signal().is_none(),
        "{what}: killed (SIGTERM from its watchdog or the time limit: deadlock):\n{}",
        r.tail(30)
    );
    assert_passed(&r, what, "no deadlock, all other children exited 0");
    eprintln!("{what}: {}", r.stdout.trim());
}

/// A signal handler forks while the main flow is inside fork() or malloc (single-threaded).
#[test]
fn fork_from_signal_handler_preloaded() {
    if !gcc("fork_from_signal_handler_preloaded") {
        return;
    }
    check_sigfork(Via::Preload, &[], "sigfork (LD_PRELOAD)");
}

#[test]
fn fork_from_signal_handler_linked() {
    if !gcc("fork_from_signal_handler_linked") {
        return;
    }
    check_sigfork(Via::Link, &[], "sigfork (-ltidemalloc)");
}

/// As above in a process that had a second thread, which exited: glibc's single-threaded flag
/// stays false, the thread count says one thread.
#[test]
fn fork_from_signal_handler_after_threads_exited() {
    if !gcc("fork_from_signal_handler_after_threads_exited") {
        return;
    }
    check_sigfork(Via::Preload, &["exited"], "sigfork exited");
}

/// Multi-threaded: a signal handler forks while its thread is inside fork().
#[test]
fn fork_from_signal_handler_inside_fork_with_threads() {
    if !gcc("fork_from_signal_handler_inside_fork_with_threads") {
        return;
    }
    check_sigfork(Via::Preload, &["threads"], "sigfork threads");
}

// ---- thread_exit.c ----

#[test]
fn thread_exit() {
    if !gcc("thread_exit") {
        return;
    }
    let bin = compile("thread_exit.c", Via::Preload);
    let r = exec(&bin, &[], Via::Preload, 180);
    assert_passed(&r, "thread_exit", "thread_exit: ok");
}

// ---- late_thread.c ----

/// Threads whose first allocation comes in the last round of key destructors (tidemalloc's
/// exit handler never runs for them) leave no heap and no segment behind.
#[test]
fn threads_first_allocating_in_the_last_destructor_round() {
    if !gcc("threads_first_allocating_in_the_last_destructor_round") {
        return;
    }
    let bin = compile("late_thread.c", Via::Preload);
    let r = exec(&bin, &[], Via::Preload, 120);
    assert_passed(&r, "late_thread", "late_thread: ok");
}

// ---- tiny.c ----

/// What tidemalloc adds to a tiny process: its library's pages, the ones of libc it makes
/// resident, its metadata. Bounded, so that a dependency or start-up work that adds a
/// hundred KB is caught: loading libm cost 310 KB before the sampler had its own `ln`; std's
/// panic machinery (its backtrace printer and DWARF reader, linked into the library), the
/// libgcc_s it needs, and libc's clock_gettime page with the 60 KB the kernel maps around it
/// cost 320 KB more (700 KB in all, 380 KB without them). A program that does not profile
/// does not map libgcc_s.
#[test]
fn fixed_cost_of_a_tiny_process() {
    if !gcc("fixed_cost_of_a_tiny_process") {
        return;
    }
    let bin = compile("tiny.c", Via::Preload);
    let peak = |preload: bool| -> (i64, bool) {
        let mut cmd = Command::new(&bin);
        clean_env(&mut cmd);
        if preload {
            cmd.env("LD_PRELOAD", &lib().so);
        }
        let r = run(&mut cmd, Duration::from_secs(30));
        assert!(r.success(), "tiny failed:\n{}", r.tail(10));
        let mut lines = r.stdout.lines();
        let hwm = lines.next().and_then(|l| l.trim().parse().ok()).expect("VmHWM in kB");
        (hwm, lines.next() == Some("1"))
    };
    let median = |preload: bool| {
        let mut v: Vec<(i64, bool)> = (0..5).map(|_| peak(preload)).collect();
        assert!(v.iter().all(|r| !r.1), "libgcc_s mapped in a program that does not use it");
        v.sort();
        v[2].0
    };
    let (glibc, tide) = (median(false), median(true));
    eprintln!("tiny process peak RSS: {glibc} kB under glibc, {tide} kB under tidemalloc");
    assert!(tide - glibc < 512, "tidemalloc adds {} kB to a tiny process (limit 512)", tide - glibc);
}

// ---- abort.c ----

fn abort_mode(mode: &str) {
    abort_mode_naming(mode, "free");
}

/// Runs `abort MODE` and checks it died of SIGABRT with a message naming tidemalloc, `func`
/// and the pointer the program printed after "freeing" (or "reallocing").
fn abort_mode_naming(mode: &str, func: &str) {
    if !gcc(&format!("abort {mode}")) {
        return;
    }
    let bin = compile("abort.c", Via::Preload);
    let r = exec(&bin, &[mode], Via::Preload, 60);
    assert_eq!(r.status.signal(), Some(SIGABRT), "abort {mode}: not killed by SIGABRT:\n{}", r.tail(20));
    for word in ["tidemalloc", func, "0x"] {
        assert!(r.stderr.contains(word), "abort {mode}: stderr does not mention {word:?}:\n{}", r.stderr);
    }
    // The pointer named is the one that was freed (printed by the program as "freeing 0x...").
    let freed = r
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "freeing" && *w != "reallocing")
        .find(|w| w.starts_with("0x"))
        .map(|w| w.trim_end_matches(','));
    if let Some(p) = freed {
        assert!(r.stderr.contains(p), "abort {mode}: stderr does not name the pointer {p}:\n{}", r.stderr);
    }
}

const SIGABRT: i32 = 6;

#[test]
fn abort_double_free() {
    abort_mode("double");
}

#[test]
fn abort_invalid_stack_pointer() {
    abort_mode("invalid");
}

#[test]
fn abort_invalid_static_pointer() {
    abort_mode("static");
}

#[test]
fn abort_interior_pointer() {
    abort_mode("interior");
}

#[test]
fn abort_large_double_free() {
    abort_mode("large-double");
}

/// An interior pointer into a block whose page also served offset (aligned) blocks.
#[test]
fn abort_interior_pointer_in_aligned_page() {
    abort_mode("interior-aligned");
}

// ---- dlopen.c ----

/// Loaded with dlopen, tidemalloc is not the process's malloc: glibc's owns the break, and
/// tidemalloc must not move it.
#[test]
fn dlopened_library_leaves_the_break_to_glibc() {
    if !gcc("dlopened_library_leaves_the_break_to_glibc") {
        return;
    }
    let lib = lib();
    let bin = compile("dlopen.c", Via::Preload);
    let mut cmd = Command::new(&bin);
    clean_env(cmd.arg(&lib.so));
    let r = run(&mut cmd, Duration::from_secs(60));
    assert_passed(&r, "dlopen", "dlopen: ok");
}

/// realloc of an interior pointer: the message names realloc (not malloc_usable_size).
#[test]
fn abort_realloc_of_interior_pointer() {
    abort_mode_naming("realloc-interior", "tidemalloc: realloc(): invalid pointer");
}

// ---- oom.c ----

#[test]
fn oom_under_rlimit() {
    if !gcc("oom_under_rlimit") {
        return;
    }
    let bin = compile("oom.c", Via::Preload);
    let r = exec(&bin, &[], Via::Preload, 120);
    assert_passed(&r, "oom", "oom: ok");
}

// ---- newdelete.cpp ----

#[test]
fn cxx_new_delete() {
    if !require("cxx_new_delete", "g++", "g++") {
        return;
    }
    let bin = compile("newdelete.cpp", Via::Preload);
    let r = exec(&bin, &[], Via::Preload, 120);
    assert_passed(&r, "newdelete (LD_PRELOAD)", "newdelete: all");
    let bin = compile("newdelete.cpp", Via::Link);
    assert_links_tidemalloc(&bin);
    let r = exec(&bin, &[], Via::Link, 120);
    assert_passed(&r, "newdelete (-ltidemalloc)", "newdelete: all");
}

// ---- dlopen_threads.c ----

/// The library loaded with dlopen: its initial-exec thread-local word fits glibc's static
/// TLS surplus, and threads calling it directly each get their own heap.
#[test]
fn dlopened_library_serves_threads() {
    if !gcc("dlopened_library_serves_threads") {
        return;
    }
    // Compiled plain (not linked against the library), run without LD_PRELOAD.
    let bin = compile("dlopen_threads.c", Via::Preload);
    let lib = lib();
    let mut cmd = Command::new(&bin);
    clean_env(cmd.arg(&lib.so));
    let r = run(&mut cmd, Duration::from_secs(60));
    assert_passed(&r, "dlopen_threads.c", "dlopen: ok");
}

// ---- stats_file.c ----

/// Runs `stats_file ARGS` preloaded with `TIDEMALLOC_SHOW_STATS=json` and
/// `TIDEMALLOC_STATS_FILE=<dir>/s.%p`; checks it passed and wrote no statistics on stderr.
/// Returns its stdout and the files it left, as (pid in the name, parsed JSON).
fn stats_files(args: &[&str]) -> (String, Vec<(u32, serde_json::Value)>) {
    let lib = lib();
    let bin = compile("stats_file.c", Via::Preload);
    let dir = build_dir().join(format!("stats-{}", args.first().unwrap_or(&"once")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the stats directory");
    let mut cmd = Command::new(&bin);
    clean_env(cmd.args(args))
        .env("LD_PRELOAD", &lib.so)
        .env("TIDEMALLOC_SHOW_STATS", "json")
        .env("TIDEMALLOC_STATS_FILE", dir.join("s.%p"));
    let r = run(&mut cmd, Duration::from_secs(60));
    assert_passed(&r, "stats_file", "stats_file: ok");
    assert!(
        !r.stderr.contains("tidemalloc") && !r.stderr.contains("\"version\""),
        "statistics (or a warning) on stderr:\n{}",
        r.tail(20)
    );
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).expect("read the stats directory") {
        let path = e.expect("directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let pid = name.strip_prefix("s.").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("file {name}"));
        let text = std::fs::read_to_string(&path).expect("read a stats file");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        assert_eq!(v["pid"].as_u64(), Some(pid as u64), "{name} describes another process: {text}");
        files.push((pid, v));
    }
    files.sort_by_key(|f| f.0);
    (r.stdout, files)
}

/// The pid a line `<prefix> N` of `stdout` names.
fn pid_after(stdout: &str, prefix: &str) -> u32 {
    let line = stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?}:\n{stdout}"));
    line[prefix.len()..].trim().parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn stats_file_instead_of_stderr() {
    if !gcc("stats_file_instead_of_stderr") {
        return;
    }
    let (stdout, files) = stats_files(&[]);
    let pid = pid_after(&stdout, "pid ");
    assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), [pid], "one file, named for the process");
    let v = &files[0].1;
    assert!(v["in_use"].as_u64() >= Some(300_000) && v["large_blocks"].as_u64() >= Some(1), "{v}");
    // tidemalloc_stats_json gave the same fields during the run.
    let during: serde_json::Value =
        serde_json::from_str(stdout.lines().find_map(|l| l.strip_prefix("json: ")).unwrap())
            .expect("tidemalloc_stats_json is JSON");
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&during), keys(v));
}

/// A child that execs (the environment passes on) and one that forks and exits write their
/// own files.
#[test]
fn stats_file_per_process_across_fork_and_exec() {
    if !gcc("stats_file_per_process_across_fork_and_exec") {
        return;
    }
    let (stdout, files) = stats_files(&["spawn"]);
    let mut want =
        vec![pid_after(&stdout, "pid "), pid_after(&stdout, "exec child pid "), pid_after(&stdout, "fork child pid ")];
    want.sort();
    want.dedup();
    assert_eq!(want.len(), 3, "three processes:\n{stdout}");
    assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), want, "one file per process:\n{stdout}");
}

// ---- the heap profiler: leaks.c, prof_sites.c, prof_signal.c ----

#[path = "../../tests/pprof_decode/mod.rs"]
mod pprof_decode;
use tide as tm;

/// Runs `bin ARGS` preloaded, with `env` on top of a clean environment.
fn exec_env(bin: &Path, args: &[&str], env: &[(&str, &str)], limit_secs: u64) -> Run {
    let lib = lib();
    let mut cmd = Command::new(bin);
    clean_env(cmd.args(args)).env("LD_PRELOAD", &lib.so);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, Duration::from_secs(limit_secs))
}

/// The leak report at rate 1 names the one leaking function with its exact count, and
/// nothing else (the program frees everything else, some of it via realloc and calloc,
/// some large).
#[test]
fn leak_report_names_the_leak() {
    if !gcc("leak_report_names_the_leak") {
        return;
    }
    let bin = compile("leaks.c", Via::Preload);
    let r = exec_env(&bin, &[], &[("TIDEMALLOC_LEAKS", "1"), ("TIDEMALLOC_PROF_RATE", "1")], 60);
    assert!(r.success(), "leaks failed:\n{}", r.tail(30));
    let report: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("tidemalloc: leak")).collect();
    assert_eq!(report.len(), 2, "one summary and one stack:\n{}", r.stderr);
    assert!(report[0].contains("1000 blocks, 48000 bytes still live, from 1 stack"), "{}", r.stderr);
    assert!(report[0].contains("exact"), "{}", r.stderr);
    assert!(report[1].contains("leak #1: 1000 blocks, 48000 bytes"), "{}", r.stderr);
    let first_frame = r.stderr.lines().find(|l| l.trim_start().starts_with("#0 ")).expect("a frame");
    assert!(first_frame.contains("leak_thousand+"), "the innermost frame is the leaking function:\n{}", r.stderr);
    assert!(r.stderr.contains(" main+"), "the stack goes on to main:\n{}", r.stderr);
    // Without the variable: no report.
    let r = exec_env(&bin, &[], &[], 60);
    assert!(r.success() && !r.stderr.contains("tidemalloc"), "{}", r.tail(10));
}

/// Known amounts from known C functions: the profile's estimate per function is within 10%
/// (decoded here, functions named from the profile), and `go tool pprof -top` ranks them.
#[test]
fn profile_of_known_c_sites() {
    if !gcc("profile_of_known_c_sites") {
        return;
    }
    let bin = compile("prof_sites.c", Via::Preload);
    let dir = build_dir().join("prof-sites");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sites.pb.gz");
    let prefix = dir.join("exit");
    let env = [
        ("TIDEMALLOC_PROF", "1"),
        ("TIDEMALLOC_PROF_RATE", "4096"),
        ("TIDEMALLOC_PROF_PREFIX", prefix.to_str().unwrap()),
    ];
    let r = exec_env(&bin, &[path.to_str().unwrap()], &env, 120);
    assert!(r.success(), "prof_sites failed:\n{}", r.tail(30));
    let p = pprof_decode::decode_file(&path);
    let v = |f: &str| pprof_decode::site_values(&p, f, &bin);
    let within = |what: &str, got: i64, want: f64| {
        let err = (got as f64 - want).abs() / want;
        assert!(err <= 0.10, "{what}: estimated {got}, true {want} ({:.1}% off)", err * 100.0);
    };
    within("alloc_hundred in use", v("alloc_hundred").inuse_space, 100e6);
    within("alloc_ten in use", v("alloc_ten").inuse_space, 10e6);
    within("churn_fifty allocated", v("churn_fifty").alloc_space, 50e6);
    assert_eq!(v("churn_fifty").inuse_space, 0, "churn_fifty freed everything");
    for (leaf, bytes) in pprof_decode::leaf_names(&p, &bin) {
        assert!(!["malloc", "free", "calloc", "realloc"].contains(&leaf.as_str()), "leaf {leaf} ({bytes} B)");
    }
    // The exit-time profile was written too, named for the process.
    let exits: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(exits.iter().any(|n| n.to_string_lossy().starts_with("exit.")), "no exit profile: {exits:?}");

    if !require("profile_of_known_c_sites (go tool pprof)", "go", "golang-go") {
        return;
    }
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(&bin)
        .arg(&path)
        .env("HOME", build_dir())
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "go tool pprof failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |f: &str| text.lines().position(|l| l.ends_with(f)).unwrap_or_else(|| panic!("no {f}:\n{text}"));
    assert!(line("alloc_hundred") < line("alloc_ten"), "alloc_hundred should rank first:\n{text}");
    assert!(text.lines().all(|l| !l.ends_with(" malloc")), "malloc as a frame:\n{text}");
}

/// Dumps from a signal handler (TIDEMALLOC_PROF_SIGNAL), landing inside dumps of another
/// thread and of the same thread, while threads allocate and the program forks children
/// that dump: no deadlock, no crash, every file a profile.
#[test]
fn profile_dumps_under_signals_and_fork() {
    if !gcc("profile_dumps_under_signals_and_fork") {
        return;
    }
    let bin = compile("prof_signal.c", Via::Preload);
    let dir = build_dir().join("prof-signal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("sig");
    let env = [
        ("TIDEMALLOC_PROF", "1"),
        ("TIDEMALLOC_PROF_RATE", "65536"),
        ("TIDEMALLOC_PROF_SIGNAL", "USR1"),
        ("TIDEMALLOC_PROF_PREFIX", prefix.to_str().unwrap()),
    ];
    let r = exec_env(&bin, &[dir.to_str().unwrap(), "once"], &env, 60);
    assert_passed(&r, "prof_signal once", "prof_signal: ok");
    let pid = pid_after(&r.stdout, "pid ");
    for seq in 0..2 {
        // 0: the signal's dump; 1: the exit-time one.
        let f = dir.join(format!("sig.{pid}.{seq}.pb.gz"));
        assert!(f.exists(), "no {}", f.display());
        pprof_decode::decode_file(&f);
    }
    let r = exec_env(&bin, &[dir.to_str().unwrap()], &env, 120);
    assert_passed(&r, "prof_signal", "prof_signal: ok");
    let mut children = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        pprof_decode::decode_file(&path);
        children += path.file_name().unwrap().to_string_lossy().starts_with("child.") as usize;
    }
    assert_eq!(children, 20, "every child wrote its profile");
}

/// Allocations that re-enter the profiler while it samples (a signal handler's; libgcc's
/// inside the profiler's own unwind when a JIT registered unwind tables) do not hang.
#[test]
fn profiler_reentry_does_not_hang() {
    if !gcc("profiler_reentry_does_not_hang") {
        return;
    }
    let bin = compile("prof_reentry.c", Via::Preload);
    let dir = build_dir().join("prof-reentry");
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("p");
    let env =
        [("TIDEMALLOC_PROF", "1"), ("TIDEMALLOC_PROF_RATE", "1"), ("TIDEMALLOC_PROF_PREFIX", prefix.to_str().unwrap())];
    for mode in ["signal", "jit"] {
        let r = exec_env(&bin, &[mode], &env, 90);
        assert_passed(&r, &format!("prof_reentry {mode}"), "prof_reentry: ok");
    }
}

/// A fault signal as the dump signal is refused with a warning (the handler would return to
/// the faulting instruction: a profile per fault, for ever).
#[test]
fn fault_signal_is_refused_for_dumps() {
    if !gcc("fault_signal_is_refused_for_dumps") {
        return;
    }
    let bin = compile("leaks.c", Via::Preload);
    let prefix = build_dir().join("fault-signal");
    for sig in ["SEGV", "11", "BUS"] {
        let env = [
            ("TIDEMALLOC_PROF", "1"),
            ("TIDEMALLOC_PROF_SIGNAL", sig),
            ("TIDEMALLOC_PROF_PREFIX", prefix.to_str().unwrap()),
        ];
        let r = exec_env(&bin, &[], &env, 60);
        assert!(r.success(), "{}", r.tail(10));
        assert!(r.stderr.contains(&format!("ignoring TIDEMALLOC_PROF_SIGNAL={sig}")), "{sig}: {}", r.tail(10));
    }
}
