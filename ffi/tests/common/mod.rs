//! Shared by the tests that run real processes on `libtidemalloc.so`: building the release
//! library once, finding tools, running a command with a time limit.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (the directory above this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ffi/ has a parent").to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative to the workspace root if relative) or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root().join(d) }
        }
        _ => root().join("target"),
    }
}

/// The release `libtidemalloc.so` and the directory it is in (which holds the `.a` too).
pub struct Lib {
    pub so: PathBuf,
    pub dir: PathBuf,
}

/// Builds the release library once per test process (`cargo build --release -p
/// tidemalloc-ffi` from the workspace root, same target directory) and returns it.
pub fn lib() -> &'static Lib {
    static LIB: OnceLock<Lib> = OnceLock::new();
    LIB.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target = target_dir();
        let started = Instant::now();
        let out = Command::new(cargo)
            .args(["build", "--release", "-p", "tidemalloc-ffi"])
            .current_dir(root())
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build --release -p tidemalloc-ffi");
        assert!(
            out.status.success(),
            "cargo build --release -p tidemalloc-ffi failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = target.join("release");
        let so = dir.join("libtidemalloc.so");
        assert!(so.exists(), "{} missing after the build", so.display());
        eprintln!("built {} in {:.1?}", so.display(), started.elapsed());
        Lib { so, dir }
    })
}

/// Whether `tool --version` (or, for tools such as `go`, `tool version`) runs.
pub fn have(tool: &str) -> bool {
    ["--version", "version"].iter().any(|arg| {
        Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// True if the test may go on: `tool` is installed. Otherwise prints a SKIP line and returns
/// false, except under CI (env var CI set), which must run every test: there it panics.
pub fn require(test: &str, tool: &str, package: &str) -> bool {
    if have(tool) {
        return true;
    }
    let msg = format!("{test}: {tool} not installed (apt-get install {package})");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run this test");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// What a finished (or killed) process left.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Run {
    /// The last `n` lines of stdout and stderr, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let last = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "status: {:?}{}\n--- stdout (last {n} lines) ---\n{}\n--- stderr (last {n} lines) ---\n{}",
            self.status,
            if self.timed_out { " (killed: time limit)" } else { "" },
            last(&self.stdout),
            last(&self.stderr)
        )
    }

    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }
}

/// Runs `cmd` with piped output, killing it (SIGKILL) after `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            break s;
        }
        if started.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A grandchild that kept the pipes open could block these; the tests' children exit.
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Run { status, stdout, stderr, timed_out, elapsed: started.elapsed() }
}

/// Removes the allocator tunables of tidemalloc and glibc (`TIDEMALLOC_*`, `MALLOC_*_`) and
/// `LD_PRELOAD` from the environment `cmd` passes on, so runs see the defaults.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("TIDEMALLOC_") || (k.starts_with("MALLOC_") && k.ends_with('_')) || k == "LD_PRELOAD" {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// A fresh empty directory under the target directory, unique to this process and `name`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = target_dir().join("tidemalloc-tests").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}
