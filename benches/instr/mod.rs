//! Instruction counts per allocation operation, from valgrind's callgrind (which counts the
//! same on a busy machine as on an idle one). Shared by `cargo bench --bench instructions`
//! and `cargo bench --bench compare -- --instructions`.
//!
//! Each pattern of `benches/instr/ops.c` runs under every allocator (LD_PRELOAD) with two
//! operation counts; (instructions(2N) - instructions(N)) / N is the cost of one operation
//! (an allocation and its free, the loop included), start-up and exit excluded.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The patterns of ops.c, with what one operation is.
pub const PATTERNS: [(&str, &str); 6] = [
    ("pair", "free(malloc(32))"),
    ("batch", "1,024 blocks of 32-88 B, freed in another order"),
    ("mixed", "1,024 blocks of 16-1,024 B, freed in another order"),
    ("realloc", "realloc growing a block by 16 B"),
    ("aligned", "free(aligned_alloc(64, 48))"),
    ("calloc", "free(calloc(1, 200))"),
];

/// Operations in the shorter run (the longer one does twice as many).
const N: u64 = 102_400;

/// Compiles ops.c into `out`.
pub fn build(root: &Path, out: &Path) -> Result<PathBuf, String> {
    let bin = out.join("instr-ops");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(root.join("benches/instr/ops.c"))
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    if !st.success() {
        return Err(format!("gcc benches/instr/ops.c: {st}"));
    }
    Ok(bin)
}

/// Builds `rust-ops` (`benches/rust_workload/src/ops.rs`, the same patterns through Rust's
/// global allocator) twice under `out`: with `System` (glibc, or whatever is preloaded) and
/// with `TideMalloc`. Returns (system, tide).
pub fn build_rust(root: &Path, out: &Path) -> Result<(PathBuf, PathBuf), String> {
    let mut bins = Vec::new();
    for tide in [false, true] {
        let dir = out.join(if tide { "rust-tide" } else { "rust-system" });
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.current_dir(root.join("benches/rust_workload"))
            .args(["build", "--release", "--quiet", "--bin", "rust-ops"])
            .env("CARGO_TARGET_DIR", &dir);
        if tide {
            c.args(["--features", "tide"]);
        }
        let st = c.status().map_err(|e| format!("cargo: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build rust-ops: {st}"));
        }
        bins.push(dir.join("release/rust-ops"));
    }
    let tide = bins.pop().unwrap();
    Ok((bins.pop().unwrap(), tide))
}

/// Whether valgrind runs.
pub fn have_valgrind() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Total instructions of one run of `ops PATTERN n` under `preload` (None: glibc).
fn total(bin: &Path, preload: Option<&Path>, pattern: &str, n: u64) -> Result<u64, String> {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"]).arg(bin).arg(pattern).arg(n.to_string());
    // valgrind hands LD_PRELOAD on to the program it runs.
    match preload {
        Some(p) => cmd.env("LD_PRELOAD", p),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    let out = cmd.output().map_err(|e| format!("valgrind: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("ops {pattern} failed under valgrind: {}", err.lines().last().unwrap_or("")));
    }
    err.lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no 'Collected' line in callgrind's output".to_string())
}

/// Instructions per operation of `pattern` under `preload`.
pub fn per_op(bin: &Path, preload: Option<&Path>, pattern: &str) -> Result<f64, String> {
    let a = total(bin, preload, pattern, N)?;
    let b = total(bin, preload, pattern, 2 * N)?;
    Ok(b.saturating_sub(a) as f64 / N as f64)
}

/// A table of instructions per operation: `names` are the allocators (columns), `rows[p][a]`
/// the figure for pattern p under allocator a (None: failed).
pub struct Table {
    pub names: Vec<String>,
    pub rows: Vec<Vec<Option<f64>>>,
}

impl Table {
    /// Measures every pattern under every allocator (`(name, preload)`, None for glibc).
    pub fn measure(bin: &Path, allocs: &[(String, Option<PathBuf>)]) -> Table {
        let runs: Vec<_> = allocs.iter().map(|(n, p)| (n.clone(), bin.to_path_buf(), p.clone())).collect();
        Self::measure_runs(&runs)
    }

    /// The Rust table: `rust-ops` with `System` (glibc, then each peer preloaded) and with
    /// `TideMalloc` (nothing preloaded). `allocs` as for [`Table::measure`], glibc first and
    /// tidemalloc second.
    pub fn measure_rust(system: &Path, tide: &Path, allocs: &[(String, Option<PathBuf>)]) -> Table {
        let runs: Vec<_> = allocs
            .iter()
            .map(|(n, p)| match n.as_str() {
                "tidemalloc" => ("tidemalloc (TideMalloc)".to_string(), tide.to_path_buf(), None),
                "glibc" => ("glibc (System)".to_string(), system.to_path_buf(), None),
                _ => (format!("{n} (System)"), system.to_path_buf(), p.clone()),
            })
            .collect();
        Self::measure_runs(&runs)
    }

    /// Measures every pattern for every `(name, program, preload)`.
    pub fn measure_runs(runs: &[(String, PathBuf, Option<PathBuf>)]) -> Table {
        let mut rows = Vec::new();
        for (pattern, _) in PATTERNS {
            let mut row = Vec::new();
            for (name, bin, preload) in runs {
                eprint!("\r\x1b[Kinstructions: {pattern} under {name}");
                match per_op(bin, preload.as_deref(), pattern) {
                    Ok(v) => row.push(Some(v)),
                    Err(e) => {
                        eprintln!("\ninstructions: {pattern} under {name}: {e}");
                        row.push(None);
                    }
                }
            }
            rows.push(row);
        }
        eprintln!("\r\x1b[Kinstructions: done");
        Table { names: runs.iter().map(|(n, _, _)| n.clone()).collect(), rows }
    }

    fn cell(v: Option<f64>) -> String {
        v.map_or("failed".into(), |v| format!("{v:.1}"))
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("| pattern | one operation |");
        for n in &self.names {
            s += &format!(" {n} |");
        }
        s += "\n|---|---|";
        s += &"---|".repeat(self.names.len());
        s += "\n";
        for ((p, what), row) in PATTERNS.iter().zip(&self.rows) {
            s += &format!("| {p} | {what} |");
            for v in row {
                s += &format!(" {} |", Self::cell(*v));
            }
            s += "\n";
        }
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from("pattern");
        for n in &self.names {
            s += &format!(",{n}");
        }
        s += "\n";
        for ((p, _), row) in PATTERNS.iter().zip(&self.rows) {
            s += p;
            for v in row {
                s += &format!(",{}", v.map_or(String::new(), |v| format!("{v:.1}")));
            }
            s += "\n";
        }
        s
    }

    pub fn text(&self) -> String {
        let widths: Vec<usize> = self.names.iter().map(|n| (n.len() + 2).max(12)).collect();
        let mut s = format!("{:<9}", "pattern");
        for (n, w) in self.names.iter().zip(&widths) {
            s += &format!("{n:>w$}");
        }
        s += "\n";
        for ((p, _), row) in PATTERNS.iter().zip(&self.rows) {
            s += &format!("{p:<9}");
            for (v, w) in row.iter().zip(&widths) {
                s += &format!("{:>w$}", Self::cell(*v));
            }
            s += "\n";
        }
        s
    }
}
