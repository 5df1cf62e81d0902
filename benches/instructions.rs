//! `cargo bench --bench instructions`: instructions per malloc/free operation under callgrind
//! for glibc, tidemalloc (LD_PRELOAD) and every installed peer, on the fixed C patterns of
//! `benches/instr/ops.c` (see `benches/instr/mod.rs`). Prints a table and writes
//! `target/compare/instructions.{md,csv}`. These are the figures to quote for fast paths on a
//! noisy machine: callgrind counts the same whatever else runs.

#[path = "instr/mod.rs"]
mod instr;

use std::path::{Path, PathBuf};
use std::process::Command;

const PEERS: [(&str, &str); 3] = [
    ("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
    ("tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
];

fn main() {
    if !instr::have_valgrind() {
        eprintln!("instructions: valgrind is not installed (apt-get install valgrind)");
        std::process::exit(2);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() { target } else { root.join(target) };
    let out = target.join("compare");
    std::fs::create_dir_all(&out).expect("create target/compare");
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--release", "-p", "tidemalloc-ffi"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p tidemalloc-ffi failed");
    let bin = instr::build(&root, &out).unwrap_or_else(|e| panic!("{e}"));
    let mut allocs =
        vec![("glibc".to_string(), None), ("tidemalloc".to_string(), Some(target.join("release/libtidemalloc.so")))];
    for (name, path) in PEERS {
        if Path::new(path).exists() {
            allocs.push((name.to_string(), Some(PathBuf::from(path))));
        } else {
            eprintln!("instructions: {name} not installed, skipped");
        }
    }
    let table = instr::Table::measure(&bin, &allocs);
    println!("instructions per operation (callgrind; the loop included):\n");
    println!("{}", table.text());
    let (system, tide) = instr::build_rust(&root, &out).unwrap_or_else(|e| panic!("{e}"));
    let rust = instr::Table::measure_rust(&system, &tide, &allocs);
    println!("the same through Rust's global allocator (rust-ops):\n");
    println!("{}", rust.text());
    std::fs::write(
        out.join("instructions.md"),
        format!("{}\nThrough Rust's global allocator (`rust-ops`):\n\n{}", table.markdown(), rust.markdown()),
    )
    .expect("write instructions.md");
    std::fs::write(out.join("instructions.csv"), format!("{}\n{}", table.csv(), rust.csv()))
        .expect("write instructions.csv");
    println!("written: {0}/instructions.md, {0}/instructions.csv", out.display());
}
