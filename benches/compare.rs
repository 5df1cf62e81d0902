//! `cargo bench --bench compare`: runs the project's workloads under glibc malloc, tidemalloc
//! (LD_PRELOAD) and whichever of jemalloc, mimalloc and tcmalloc are installed, interleaving
//! the allocators (A B C D E, A B C D E, ...), and reports medians, ratios to glibc and
//! geometric means: a table in the terminal, CSV, Markdown and an SVG chart in
//! `target/compare/`.
//!
//! Options (after `--`): `--quick` (one round, scale 0.2), `--rounds N`, `--scale X`,
//! `--threads N`, `--only NAME[,NAME...]` (workload names, substring match), `--instructions`
//! (also count instructions per operation under callgrind for every allocator, as `cargo
//! bench --bench instructions` does, into the same report), `--prof` (adds a column
//! `tidemalloc+prof`: tidemalloc with the heap profiler on at its default rate, writing its
//! profiles to `target/compare/prof/`).

#[path = "instr/mod.rs"]
mod instr;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const PEERS: [(&str, &str, &str); 3] = [
    ("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "libjemalloc2"),
    ("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2", "libmimalloc2.0"),
    ("tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
];

struct Options {
    rounds: usize,
    scale: f64,
    threads: usize,
    only: Vec<String>,
    instructions: bool,
    prof: bool,
}

fn parse_args() -> Options {
    let mut o = Options { rounds: 5, scale: 1.0, threads: 2, only: Vec::new(), instructions: false, prof: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| die(&format!("{name} needs a value")));
        match a.as_str() {
            "--quick" => {
                o.rounds = 1;
                o.scale = 0.2;
            }
            "--rounds" => o.rounds = value("--rounds").parse().unwrap_or_else(|_| die("--rounds N")),
            "--scale" => o.scale = value("--scale").parse().unwrap_or_else(|_| die("--scale X")),
            "--threads" => o.threads = value("--threads").parse().unwrap_or_else(|_| die("--threads N")),
            "--only" => o.only.extend(value("--only").split(',').map(str::to_owned)),
            "--instructions" => o.instructions = true,
            "--prof" => o.prof = true,
            "--bench" => {} // passed by cargo bench
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench compare -- [--quick] [--rounds N] [--scale X] [--threads N] [--only NAME,...] [--instructions] [--prof]"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other} (try --help)")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("compare: {msg}");
    std::process::exit(2)
}

/// One allocator column.
struct Alloc {
    name: String,
    /// Library to preload (none for glibc; for tidemalloc the freshly built .so).
    preload: Option<PathBuf>,
    /// Environment variables set for the run.
    env: Vec<(String, String)>,
}

/// How a workload is started.
enum Launch {
    /// A program of ours: `bin SCALE THREADS`.
    Own(PathBuf),
    /// The Rust workload: the System build (preloaded for peers) or the TideMalloc build.
    Rust { system: PathBuf, tide: PathBuf },
    /// A real program: argv, with stdin from a file (optional).
    Real { argv: Vec<String>, stdin: Option<PathBuf> },
}

struct Workload {
    name: &'static str,
    what: &'static str,
    launch: Launch,
}

/// One measured run.
#[derive(Clone)]
struct Run {
    wall: f64,
    cpu: f64,
    maxrss_kb: u64,
    /// None when the run succeeded; the failure otherwise.
    failure: Option<String>,
    stdout: String,
}

fn main() {
    let opts = parse_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() { target } else { root.join(target) };
    let out = target.join("compare");
    fs::create_dir_all(out.join("bin")).expect("create target/compare");

    let machine = machine_description();
    eprintln!("compare: {machine}");
    let so = build_library(&root, &target);
    let mut allocs = vec![
        Alloc { name: "glibc".into(), preload: None, env: Vec::new() },
        Alloc { name: "tidemalloc".into(), preload: Some(so.clone()), env: Vec::new() },
    ];
    if opts.prof {
        let dir = out.join("prof");
        fs::create_dir_all(&dir).expect("create target/compare/prof");
        let prefix = dir.join("profile").to_string_lossy().into_owned();
        let env = vec![("TIDEMALLOC_PROF".into(), "1".into()), ("TIDEMALLOC_PROF_PREFIX".into(), prefix)];
        allocs.push(Alloc { name: "tidemalloc+prof".into(), preload: Some(so), env });
    }
    for (name, path, pkg) in PEERS {
        if Path::new(path).exists() {
            allocs.push(Alloc { name: name.into(), preload: Some(path.into()), env: Vec::new() });
        } else {
            eprintln!("compare: {name} skipped: not installed (apt-get install {pkg})");
        }
    }

    let workloads: Vec<Workload> = workloads(&root, &out, &opts)
        .into_iter()
        .filter(|w| opts.only.is_empty() || opts.only.iter().any(|o| w.name.contains(o.as_str())))
        .collect();
    if workloads.is_empty() {
        die("no workload selected");
    }

    // runs[workload][alloc] = runs in round order
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); allocs.len()]; workloads.len()];
    let start = Instant::now();
    for round in 0..opts.rounds {
        for (wi, w) in workloads.iter().enumerate() {
            for (ai, a) in allocs.iter().enumerate() {
                eprint!(
                    "\r\x1b[Kcompare: round {}/{} {:<18} {:<11} elapsed {:>5.0}s",
                    round + 1,
                    opts.rounds,
                    w.name,
                    a.name,
                    start.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                let r = run_once(w, a, &opts, &out);
                if let Some(f) = &r.failure {
                    eprintln!("\ncompare: {} under {} FAILED: {f}", w.name, a.name);
                }
                runs[wi][ai].push(r);
            }
        }
    }
    eprintln!("\r\x1b[Kcompare: done in {:.0}s", start.elapsed().as_secs_f64());

    let report = Report::new(&workloads, &allocs, &runs);
    let header = format!(
        "tidemalloc compare: {} round(s), scale {}, {} thread(s); {}\n{}",
        opts.rounds,
        opts.scale,
        opts.threads,
        utc_now(),
        machine
    );
    println!("{header}\n");
    println!("{}", report.text_table());
    fs::write(out.join("results.csv"), report.csv(&header)).expect("write results.csv");
    fs::write(out.join("results.md"), report.markdown(&header)).expect("write results.md");
    fs::write(out.join("chart.svg"), report.svg(&header)).expect("write chart.svg");
    println!("\nwritten: {0}/results.csv, {0}/results.md, {0}/chart.svg", out.display());
    if opts.instructions {
        instructions_report(&root, &out, &allocs);
    }
}

/// Instructions per operation under callgrind for every allocator, next to the timing table:
/// printed, and appended to results.md and results.csv.
fn instructions_report(root: &Path, out: &Path, allocs: &[Alloc]) {
    if !instr::have_valgrind() {
        eprintln!("compare: --instructions skipped: valgrind is not installed (apt-get install valgrind)");
        return;
    }
    let bin = instr::build(root, out).unwrap_or_else(|e| die(&e));
    let list: Vec<(String, Option<PathBuf>)> =
        allocs.iter().filter(|a| a.env.is_empty()).map(|a| (a.name.clone(), a.preload.clone())).collect();
    let table = instr::Table::measure(&bin, &list);
    println!("\ninstructions per operation (callgrind; the loop included):\n\n{}", table.text());
    let (system, tide) = instr::build_rust(root, out).unwrap_or_else(|e| die(&e));
    let rust = instr::Table::measure_rust(&system, &tide, &list);
    println!("the same through Rust's global allocator (rust-ops):\n\n{}", rust.text());
    let append = |name: &str, text: String| {
        let path = out.join(name);
        let mut f = fs::OpenOptions::new().append(true).open(&path).expect("open the report");
        f.write_all(text.as_bytes()).expect("append to the report");
    };
    append(
        "results.md",
        format!(
            "\n## Instructions per operation (callgrind)\n\n{}\nThrough Rust's global allocator (`rust-ops`):\n\n{}",
            table.markdown(),
            rust.markdown()
        ),
    );
    append("results.csv", format!("\n{}\n{}", table.csv(), rust.csv()));
    println!("appended to {0}/results.md and {0}/results.csv", out.display());
}

// ---------------------------------------------------------------- building

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn check(status: std::io::Result<std::process::ExitStatus>, what: &str) {
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => die(&format!("{what} failed: {s}")),
        Err(e) => die(&format!("{what} could not start: {e}")),
    }
}

fn build_library(root: &Path, target: &Path) -> PathBuf {
    eprintln!("compare: building libtidemalloc.so (release)");
    check(
        cargo()
            .current_dir(root)
            .args(["build", "--release", "-p", "tidemalloc-ffi"])
            .env("CARGO_TARGET_DIR", target)
            .status(),
        "cargo build -p tidemalloc-ffi",
    );
    target.join("release/libtidemalloc.so")
}

fn compile_c(root: &Path, out: &Path, name: &str) -> PathBuf {
    let src = root.join("benches/workloads").join(format!("{name}.c"));
    let bin = out.join("bin").join(name);
    // Rebuild when the program or the header the workloads share is newer than the binary.
    let header = root.join("benches/workloads/workload.h");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (modified(&bin), modified(&src), modified(&header)) {
        (Some(b), Some(s), Some(h)) => b >= s && b >= h,
        _ => false,
    };
    if !fresh {
        check(
            Command::new("gcc").args(["-O2", "-pthread", "-o"]).arg(&bin).arg(&src).status(),
            &format!("gcc {}", src.display()),
        );
    }
    bin
}

fn build_rust_workload(root: &Path, out: &Path, tide: bool) -> PathBuf {
    let dir = out.join(if tide { "rust-tide" } else { "rust-system" });
    eprintln!("compare: building the Rust workload ({})", if tide { "TideMalloc" } else { "System" });
    let mut c = cargo();
    c.current_dir(root.join("benches/rust_workload"))
        .args(["build", "--release", "--quiet"])
        .env("CARGO_TARGET_DIR", &dir);
    if tide {
        c.args(["--features", "tide"]);
    }
    check(c.status(), "cargo build (rust_workload)");
    dir.join("release/rust-workload")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn workloads(root: &Path, out: &Path, opts: &Options) -> Vec<Workload> {
    let own = |name: &'static str, what: &'static str| Workload {
        name,
        what,
        launch: Launch::Own(compile_c(root, out, name)),
    };
    let mut w = vec![
        own("tree_churn", "trees and lists of 16-512 B nodes, built and torn down"),
        own("bignum", "bignum arithmetic: many short-lived small blocks"),
        own("server", "threads allocate, hand blocks to each other, free what they receive"),
        own("prodcons", "one thread allocates, another frees"),
        own("realloc_strings", "strings and vectors growing by appends"),
        own("realloc_double", "buffers growing by doubling to 1 GiB"),
        own("large_churn", "256 KiB-32 MiB blocks allocated, touched, freed"),
        own("fragmentation", "allocate, free every other block, allocate other sizes"),
        own("tiny_leak", "a tiny process: 2048 small blocks live, 1 in 50 replaced ones leaked"),
        own("phased", "live set up to 200 MB and down to 2 MB, 3 times; RSS in the low phases"),
        own("thread_exit", "short-lived threads hand most blocks to a holder thread and exit"),
        own("bignum_small", "100k small numbers (24-48 B blocks) computed in allocation order"),
        own("prodcons_tiny", "16-64 B blocks passed through a lock-free ring, freed by the consumer"),
        own("false_sharing", "threads write blocks while others write the blocks they handed over"),
    ];
    w.push(Workload {
        name: "rust_btree_json",
        what: "Rust: BTreeMap of strings, serde_json round trip (TideMalloc vs System global allocator)",
        launch: Launch::Rust {
            system: build_rust_workload(root, out, false),
            tide: build_rust_workload(root, out, true),
        },
    });
    let data = out.join("data");
    fs::create_dir_all(&data).expect("create data dir");
    let n = |base: f64| ((base * opts.scale) as u64).max(1);
    if have("python3") {
        let script = data.join("script.py");
        fs::write(
            &script,
            format!(
                "import json\nd = {{}}\nfor i in range({n}):\n    d['key%d' % i] = [str(j) * (j % 7) for j in range(i % 13)]\n\
                 s = json.dumps(d)\nd2 = json.loads(s)\nassert d == d2\nwords = ' '.join(sorted(d.keys(), key=lambda k: k[::-1]))\n\
                 print(len(s), len(words), sum(len(v) for v in d2.values()))\n",
                n = n(400_000.0)
            ),
        )
        .unwrap();
        w.push(Workload {
            name: "python3",
            what: "python3: dicts, lists, strings, json",
            launch: Launch::Real { argv: vec!["python3".into(), script.display().to_string()], stdin: None },
        });
    } else {
        eprintln!("compare: python3 workload skipped: not installed (apt-get install python3)");
    }
    if have("sqlite3") {
        let sql = data.join("bulk.sql");
        fs::write(
            &sql,
            format!(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER);\nCREATE INDEX tk ON t(k);\nBEGIN;\n\
                 WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{n})\n\
                 INSERT INTO t SELECT x, printf('k%08d', (x*7919) % {n}), x % 1000 FROM c;\nCOMMIT;\n\
                 SELECT count(*), sum(v) FROM t;\nSELECT v, count(*) FROM t GROUP BY v ORDER BY 2 DESC, 1 LIMIT 5;\n\
                 SELECT k FROM t WHERE k > 'k00100000' ORDER BY k LIMIT 3;\n",
                n = n(500_000.0)
            ),
        )
        .unwrap();
        w.push(Workload {
            name: "sqlite3",
            what: "sqlite3: bulk insert with an index, then queries",
            launch: Launch::Real { argv: vec!["sqlite3".into(), ":memory:".into()], stdin: Some(sql) },
        });
    } else {
        eprintln!("compare: sqlite3 workload skipped: not installed (apt-get install sqlite3)");
    }
    if have("gcc") {
        let src = data.join("generated.c");
        let mut text = String::from("#include <stdio.h>\n");
        for i in 0..n(600.0) {
            let _ = writeln!(
                text,
                "static int f{i}(int x) {{ int s = 0; for (int j = 0; j < x; j++) {{ s += (j * {i}) ^ (s >> 3); if (s > {i}) s -= x; }} return s + {i}; }}"
            );
        }
        text.push_str("int main(void) { int s = 0;\n");
        for i in 0..n(600.0) {
            let _ = writeln!(text, "  s += f{i}({});", i % 17);
        }
        text.push_str("  printf(\"%d\\n\", s); return 0; }\n");
        fs::write(&src, text).unwrap();
        let obj = data.join("generated.o");
        w.push(Workload {
            name: "gcc",
            what: "gcc -O2 compiling a generated file",
            launch: Launch::Real {
                argv: vec![
                    "gcc".into(),
                    "-O2".into(),
                    "-c".into(),
                    src.display().to_string(),
                    "-o".into(),
                    obj.display().to_string(),
                ],
                stdin: None,
            },
        });
    } else {
        eprintln!("compare: gcc workload skipped: not installed (apt-get install gcc)");
    }
    w
}

// ---------------------------------------------------------------- running

fn run_once(w: &Workload, a: &Alloc, opts: &Options, out: &Path) -> Run {
    let tidemalloc = a.name.starts_with("tidemalloc");
    let (mut cmd, preload) = match &w.launch {
        Launch::Own(bin) => {
            let mut c = Command::new(bin);
            c.arg(opts.scale.to_string()).arg(opts.threads.to_string());
            (c, a.preload.clone())
        }
        Launch::Rust { system, tide } => {
            let mut c = Command::new(if tidemalloc { tide } else { system });
            c.arg(opts.scale.to_string()).arg(opts.threads.to_string());
            (c, if tidemalloc { None } else { a.preload.clone() })
        }
        Launch::Real { argv, stdin } => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            if let Some(f) = stdin {
                c.stdin(fs::File::open(f).expect("open stdin file"));
            }
            (c, a.preload.clone())
        }
    };
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    cmd.envs(a.env.iter().map(|(k, v)| (k, v)));
    let stdout_path = out.join("stdout.tmp");
    let stderr_path = out.join("stderr.tmp");
    cmd.stdout(fs::File::create(&stdout_path).expect("create stdout file"));
    cmd.stderr(fs::File::create(&stderr_path).expect("create stderr file"));
    if matches!(w.launch, Launch::Real { stdin: None, .. } | Launch::Own(_) | Launch::Rust { .. }) {
        cmd.stdin(Stdio::null());
    }
    // SAFETY: setpgid is async-signal-safe; it puts the child in its own process group.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let t0 = Instant::now();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Run {
                wall: 0.0,
                cpu: 0.0,
                maxrss_kb: 0,
                failure: Some(format!("could not start: {e}")),
                stdout: String::new(),
            };
        }
    };
    let (status, usage) = wait4(child.id() as i32);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let failure = describe_failure(status).map(|f| {
        let err = fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        format!("{f}; stderr: {tail}")
    });
    Run { wall, cpu, maxrss_kb: usage.ru_maxrss as u64, failure, stdout }
}

fn wait4(pid: i32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child; both out-pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return (status, usage);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            die("wait4 failed");
        }
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

fn describe_failure(status: i32) -> Option<String> {
    if libc::WIFSIGNALED(status) {
        Some(format!("CRASHED (signal {})", libc::WTERMSIG(status)))
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        Some(format!("exit status {}", libc::WEXITSTATUS(status)))
    } else {
        None
    }
}

// ---------------------------------------------------------------- reporting

/// Medians of one cell.
#[derive(Clone, Copy, Default)]
struct Cell {
    wall: f64,
    cpu: f64,
    rss_kb: f64,
    /// The workload's own RSS readings (`RSS_LINES`), if it printed them.
    own_rss_kb: [Option<f64>; RSS_LINES.len()],
    ok: bool,
}

struct Report {
    names: Vec<String>,
    whats: Vec<String>,
    allocs: Vec<String>,
    cells: Vec<Vec<Cell>>,
    notes: Vec<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Lines `KEY <n>` with an RSS in KiB that a workload reads itself when it chooses, and the
/// label of each in the report: `final_rss_kb` (fragmentation: after freeing) and
/// `low_rss_kb` (phased: in its low phases). Reported with their ratio to glibc's, not
/// compared.
const RSS_LINES: [(&str, &str); 2] = [("final_rss_kb", "final"), ("low_rss_kb", "low")];

/// The value of the output line `key <n>`, if any.
fn reported(stdout: &str, key: &str) -> Option<f64> {
    stdout.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The lines of a workload's output that must be equal under every allocator.
fn answer(stdout: &str) -> String {
    stdout.lines().filter(|l| !RSS_LINES.iter().any(|(key, _)| l.starts_with(key))).collect::<Vec<_>>().join("\n")
}

fn geomean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0);
    for x in v.filter(|x| x.is_finite() && *x > 0.0) {
        s += x.ln();
        n += 1;
    }
    if n == 0 { f64::NAN } else { (s / n as f64).exp() }
}

impl Report {
    fn new(workloads: &[Workload], allocs: &[Alloc], runs: &[Vec<Vec<Run>>]) -> Report {
        let mut notes = Vec::new();
        let mut cells = Vec::new();
        for (wi, w) in workloads.iter().enumerate() {
            let reference = runs[wi][0].iter().find(|r| r.failure.is_none()).map(|r| answer(&r.stdout));
            let mut row = Vec::new();
            for (ai, a) in allocs.iter().enumerate() {
                let rs = &runs[wi][ai];
                let mut ok = true;
                for r in rs {
                    if let Some(f) = &r.failure {
                        ok = false;
                        notes.push(format!("{} under {}: {f}", w.name, a.name));
                    } else if reference.as_ref().is_some_and(|x| *x != answer(&r.stdout)) {
                        ok = false;
                        notes.push(format!("{} under {}: WRONG OUTPUT (differs from glibc's)", w.name, a.name));
                    }
                }
                let good: Vec<&Run> = rs.iter().filter(|r| r.failure.is_none()).collect();
                let own_rss_kb = RSS_LINES.map(|(key, _)| {
                    let v: Vec<f64> = good.iter().filter_map(|r| reported(&r.stdout, key)).collect();
                    (!v.is_empty()).then(|| median(v))
                });
                row.push(Cell {
                    wall: median(good.iter().map(|r| r.wall).collect()),
                    cpu: median(good.iter().map(|r| r.cpu).collect()),
                    rss_kb: median(good.iter().map(|r| r.maxrss_kb as f64).collect()),
                    own_rss_kb,
                    ok,
                });
            }
            cells.push(row);
        }
        notes.dedup();
        Report {
            names: workloads.iter().map(|w| w.name.to_string()).collect(),
            whats: workloads.iter().map(|w| w.what.to_string()).collect(),
            allocs: allocs.iter().map(|a| a.name.clone()).collect(),
            cells,
            notes,
        }
    }

    fn time_ratio(&self, wi: usize, ai: usize) -> f64 {
        self.cells[wi][ai].wall / self.cells[wi][0].wall
    }

    fn rss_ratio(&self, wi: usize, ai: usize) -> f64 {
        self.cells[wi][ai].rss_kb / self.cells[wi][0].rss_kb
    }

    /// The workload's own RSS reading `RSS_LINES[k]` over glibc's (NaN if either is missing).
    fn own_rss_ratio(&self, wi: usize, ai: usize, k: usize) -> f64 {
        match (self.cells[wi][ai].own_rss_kb[k], self.cells[wi][0].own_rss_kb[k]) {
            (Some(v), Some(g)) => v / g,
            _ => f64::NAN,
        }
    }

    fn geo_time(&self, ai: usize) -> f64 {
        geomean((0..self.names.len()).map(|wi| self.time_ratio(wi, ai)))
    }

    fn geo_rss(&self, ai: usize) -> f64 {
        geomean((0..self.names.len()).map(|wi| self.rss_ratio(wi, ai)))
    }

    fn cell_text(&self, wi: usize, ai: usize) -> String {
        let c = self.cells[wi][ai];
        if !c.ok && !c.wall.is_finite() {
            return "FAILED".into();
        }
        let mut s = format!("{:.3}s", c.wall);
        if ai > 0 {
            let _ = write!(s, " ({:.2}x)", self.time_ratio(wi, ai));
        }
        let _ = write!(s, " {:.0}M", c.rss_kb / 1024.0);
        if ai > 0 {
            let _ = write!(s, " ({:.2}x)", self.rss_ratio(wi, ai));
        }
        for (k, (_, label)) in RSS_LINES.iter().enumerate() {
            if let Some(v) = c.own_rss_kb[k] {
                let _ = write!(s, " {label} {:.0}M", v / 1024.0);
                if ai > 0 {
                    let _ = write!(s, " ({:.2}x)", self.own_rss_ratio(wi, ai, k));
                }
            }
        }
        if !c.ok {
            s.push_str(" !");
        }
        s
    }

    fn text_table(&self) -> String {
        let mut rows =
            vec![std::iter::once("workload".to_string()).chain(self.allocs.iter().cloned()).collect::<Vec<_>>()];
        for wi in 0..self.names.len() {
            rows.push(
                std::iter::once(self.names[wi].clone())
                    .chain((0..self.allocs.len()).map(|ai| self.cell_text(wi, ai)))
                    .collect(),
            );
        }
        rows.push(
            std::iter::once("geomean time ratio".to_string())
                .chain((0..self.allocs.len()).map(|ai| format!("{:.3}", self.geo_time(ai))))
                .collect(),
        );
        rows.push(
            std::iter::once("geomean rss ratio".to_string())
                .chain((0..self.allocs.len()).map(|ai| format!("{:.3}", self.geo_rss(ai))))
                .collect(),
        );
        let widths: Vec<usize> =
            (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
        let mut s = String::new();
        for (i, r) in rows.iter().enumerate() {
            for (c, cell) in r.iter().enumerate() {
                let _ = write!(s, "{:<w$}  ", cell, w = widths[c]);
            }
            s.push('\n');
            if i == 0 {
                s.push_str(&"-".repeat(widths.iter().map(|w| w + 2).sum()));
                s.push('\n');
            }
        }
        s.push_str("\ncells: median wall time (ratio to glibc; < 1 is faster)  median peak RSS (ratio to glibc)\n");
        s.push_str(OWN_RSS_LEGEND);
        s.push('\n');
        s.push_str(&self.targets());
        for n in &self.notes {
            let _ = writeln!(s, "NOTE: {n}");
        }
        s
    }

    /// The project's targets, checked against this run.
    fn targets(&self) -> String {
        let Some(t) = self.allocs.iter().position(|a| a == "tidemalloc") else { return String::new() };
        let mut s = String::new();
        let speedup = 1.0 / self.geo_time(t);
        let _ = writeln!(
            s,
            "tidemalloc vs glibc: {speedup:.2}x faster on the geometric mean of wall time (target >= 1.25x)"
        );
        let slower: Vec<String> = (0..self.names.len())
            .filter(|&wi| self.time_ratio(wi, t) > 1.0)
            .map(|wi| format!("{} {:.2}x", self.names[wi], self.time_ratio(wi, t)))
            .collect();
        let _ = writeln!(
            s,
            "workloads where tidemalloc is slower than glibc: {}",
            if slower.is_empty() { "none".into() } else { slower.join(", ") }
        );
        let fat: Vec<String> = (0..self.names.len())
            .filter(|&wi| self.rss_ratio(wi, t) > 1.10)
            .map(|wi| format!("{} {:.2}x", self.names[wi], self.rss_ratio(wi, t)))
            .collect();
        let _ = writeln!(
            s,
            "workloads where peak RSS exceeds 1.10x glibc's: {}",
            if fat.is_empty() { "none".into() } else { fat.join(", ") }
        );
        if let Some(wi) = self.names.iter().position(|n| n == "realloc_double") {
            for peer in ["jemalloc", "mimalloc"] {
                if let Some(p) = self.allocs.iter().position(|a| a == peer) {
                    let _ = writeln!(
                        s,
                        "realloc_double: tidemalloc {:.1}x faster than {peer} (target >= 5x)",
                        self.cells[wi][p].wall / self.cells[wi][t].wall
                    );
                }
            }
        }
        s
    }

    fn csv(&self, header: &str) -> String {
        let mut s = String::new();
        for l in header.lines() {
            let _ = writeln!(s, "# {l}");
        }
        let keys: Vec<&str> = RSS_LINES.iter().map(|(key, _)| *key).collect();
        let ratios: Vec<String> = keys.iter().map(|key| format!("{}_ratio", key.trim_end_matches("_kb"))).collect();
        let _ = writeln!(
            s,
            "workload,allocator,wall_s,cpu_s,peak_rss_kb,{},time_ratio,rss_ratio,{},ok",
            keys.join(","),
            ratios.join(",")
        );
        for wi in 0..self.names.len() {
            for ai in 0..self.allocs.len() {
                let c = self.cells[wi][ai];
                let own: Vec<String> =
                    c.own_rss_kb.iter().map(|v| v.map(|v| format!("{v:.0}")).unwrap_or_default()).collect();
                let own_ratios: Vec<String> = (0..RSS_LINES.len())
                    .map(|k| self.own_rss_ratio(wi, ai, k))
                    .map(|r| if r.is_finite() { format!("{r:.4}") } else { String::new() })
                    .collect();
                let _ = writeln!(
                    s,
                    "{},{},{:.4},{:.4},{:.0},{},{:.4},{:.4},{},{}",
                    self.names[wi],
                    self.allocs[ai],
                    c.wall,
                    c.cpu,
                    c.rss_kb,
                    own.join(","),
                    self.time_ratio(wi, ai),
                    self.rss_ratio(wi, ai),
                    own_ratios.join(","),
                    c.ok
                );
            }
        }
        s
    }

    fn markdown(&self, header: &str) -> String {
        let mut s = String::new();
        for l in header.lines() {
            let _ = writeln!(s, "{l}  ");
        }
        s.push('\n');
        let _ = writeln!(s, "| workload | {} |", self.allocs.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(self.allocs.len()));
        for wi in 0..self.names.len() {
            let cells: Vec<String> = (0..self.allocs.len()).map(|ai| self.cell_text(wi, ai)).collect();
            let _ = writeln!(s, "| {} | {} |", self.names[wi], cells.join(" | "));
        }
        let g: Vec<String> = (0..self.allocs.len()).map(|ai| format!("{:.3}", self.geo_time(ai))).collect();
        let _ = writeln!(s, "| **geomean time ratio** | {} |", g.join(" | "));
        let g: Vec<String> = (0..self.allocs.len()).map(|ai| format!("{:.3}", self.geo_rss(ai))).collect();
        let _ = writeln!(s, "| **geomean peak-RSS ratio** | {} |", g.join(" | "));
        s.push_str(
            "\nEach cell: median wall time (ratio to glibc; below 1 is faster), median peak RSS (ratio to glibc).\n",
        );
        let _ = writeln!(s, "{OWN_RSS_LEGEND}.\n");
        for l in self.targets().lines() {
            let _ = writeln!(s, "- {l}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "- NOTE: {n}");
        }
        s.push_str("\nWorkloads:\n\n");
        for wi in 0..self.names.len() {
            let _ = writeln!(s, "- `{}`: {}", self.names[wi], self.whats[wi]);
        }
        s
    }

    /// Two panels of grouped bars: time ratio and peak-RSS ratio to glibc, per workload and
    /// allocator, with a line at 1.0 (glibc).
    fn svg(&self, header: &str) -> String {
        const COLORS: [&str; 5] = ["#888888", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];
        let nw = self.names.len();
        let na = self.allocs.len();
        let bar = 9.0;
        let group = bar * na as f64 + 14.0;
        let left = 60.0;
        let width = left + group * nw as f64 + 20.0;
        let panel_h = 220.0;
        let top = 70.0;
        let label_h = 90.0;
        let height = top + 2.0 * (panel_h + label_h) + 40.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (i, l) in header.lines().enumerate() {
            let _ = writeln!(s, r#"<text x="10" y="{}" font-size="12">{}</text>"#, 16 + 14 * i, xml(l));
        }
        let mut lx = 10.0;
        for (ai, a) in self.allocs.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                top - 22.0,
                COLORS[ai % 5],
                lx + 14.0,
                top - 13.0,
                xml(a)
            );
            lx += 20.0 + 7.0 * a.len() as f64;
        }
        let panels: [(&str, Ratio); 2] = [
            ("wall time / glibc (lower is better)", Report::time_ratio),
            ("peak RSS / glibc (lower is better)", Report::rss_ratio),
        ];
        for (pi, (title, f)) in panels.iter().enumerate() {
            let y0 = top + pi as f64 * (panel_h + label_h);
            let max = (0..nw)
                .flat_map(|w| (0..na).map(move |a| (w, a)))
                .map(|(w, a)| f(self, w, a))
                .filter(|v| v.is_finite())
                .fold(1.5f64, f64::max)
                .min(4.0);
            let scale = panel_h / max;
            let _ = writeln!(s, r#"<text x="{left}" y="{}" font-weight="bold">{}</text>"#, y0 + 12.0, xml(title));
            let base = y0 + panel_h + 20.0;
            for tick in [0.5, 1.0, 1.5, 2.0, 3.0, 4.0].into_iter().filter(|&t| t <= max) {
                let y = base - tick * scale;
                let stroke = if tick == 1.0 { "#000" } else { "#ddd" };
                let _ = writeln!(
                    s,
                    r#"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="{stroke}"/><text x="{}" y="{:.1}" text-anchor="end">{tick:.1}</text>"#,
                    width - 20.0,
                    left - 4.0,
                    y + 4.0
                );
            }
            for w in 0..nw {
                let gx = left + 7.0 + w as f64 * group;
                for a in 0..na {
                    let v = f(self, w, a);
                    if !v.is_finite() {
                        continue;
                    }
                    let h = v.min(max) * scale;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{:.1}" y="{:.1}" width="{bar}" height="{h:.1}" fill="{}"><title>{} {}: {v:.3}</title></rect>"#,
                        gx + a as f64 * bar,
                        base - h,
                        COLORS[a % 5],
                        xml(&self.names[w]),
                        xml(&self.allocs[a])
                    );
                }
                let lx = gx + bar * na as f64 / 2.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{lx:.1}" y="{:.1}" transform="rotate(45 {lx:.1} {:.1})">{}</text>"#,
                    base + 12.0,
                    base + 12.0,
                    xml(&self.names[w])
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// How the report describes the `RSS_LINES` figures.
const OWN_RSS_LEGEND: &str = "final / low: RSS the workload read itself (fragmentation: after freeing all but 1/8; \
     phased: the largest of its low-phase readings), median (ratio to glibc)";

/// A per-cell ratio of the report (workload, allocator).
type Ratio = fn(&Report, usize, usize) -> f64;

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

// ---------------------------------------------------------------- machine

fn machine_description() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // SAFETY: zeroed utsname is valid; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::uname(&mut u) };
    // SAFETY: uname NUL-terminates its fields.
    let kernel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned();
    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }.to_string_lossy().into_owned();
    format!("machine: {cpu}, {cores} cores, Linux {kernel}, glibc {glibc}")
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}
