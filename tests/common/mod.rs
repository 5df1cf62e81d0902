//! Helpers shared by the integration tests: a seeded PRNG, byte patterns that identify a
//! block, /proc readers and the re-exec of the test binary for child-process tests.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::process::{Command, Output};

// ---- deterministic PRNG (splitmix64) ----

/// A small deterministic PRNG (splitmix64): no `rand` crate needed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// Roughly log-uniform in `lo..=hi` (lo >= 1): small sizes are as likely as big ones
    /// per power of two.
    pub fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let lo_bits = usize::BITS - lo.leading_zeros();
        let hi_bits = usize::BITS - hi.leading_zeros();
        let bits = self.range(lo_bits as usize, hi_bits as usize) as u32;
        let top = (1usize << bits).min(hi);
        let bottom = (1usize << (bits - 1)).max(lo);
        self.range(bottom.min(top), top)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

// ---- patterns ----
//
// The expected content of byte `o` of block `id`: bytes 0..8 hold the id (little endian,
// xor a constant), byte `o >= 8` holds `(id * 31 + o) as u8`. The function does not depend
// on the block's size, so a realloc'ed block keeps a valid prefix.
//
// Blocks up to FULL_BYTES are written and checked completely; bigger ones on their first
// FULL_BYTES bytes, one word at every multiple of 4 KiB and their last 8 bytes (every page
// is touched, which keeps big blocks fast and still catches lost or moved pages).

/// Blocks up to this size are filled and checked byte for byte.
pub const FULL_BYTES: usize = 1024;
const TAG_XOR: u64 = 0xA5A5_5A5A_C3C3_3C3C;

fn tag(id: u64) -> u64 {
    id ^ TAG_XOR
}

/// The expected byte at offset `o` of block `id`.
pub fn expected_byte(id: u64, o: usize) -> u8 {
    if o < 8 { tag(id).to_le_bytes()[o] } else { (id.wrapping_mul(31) as u8).wrapping_add(o as u8) }
}

/// The expected 8 bytes at offsets `o..o+8` of block `id`, little endian.
#[inline]
fn expected_word(id: u64, o: usize) -> u64 {
    if o == 0 {
        return tag(id);
    }
    if o < 8 {
        let mut b = [0u8; 8];
        for (k, x) in b.iter_mut().enumerate() {
            *x = expected_byte(id, o + k);
        }
        return u64::from_le_bytes(b);
    }
    // Byte k is base + k (mod 256): add lane by lane without carries between lanes.
    let base = (id.wrapping_mul(31) as u8).wrapping_add(o as u8) as u64;
    let splat = base.wrapping_mul(0x0101_0101_0101_0101);
    let inc = 0x0706_0504_0302_0100u64;
    ((splat & 0x7F7F_7F7F_7F7F_7F7F) + inc) ^ (splat & 0x8080_8080_8080_8080)
}

/// Calls `f(offset, width)` for every position of a block of `size` bytes that is written
/// and checked (width 8: a word, width 1: a byte).
#[inline]
fn positions(size: usize, mut f: impl FnMut(usize, usize)) {
    let full = size.min(FULL_BYTES);
    let mut o = 0;
    while o + 8 <= full {
        f(o, 8);
        o += 8;
    }
    while o < full {
        f(o, 1);
        o += 1;
    }
    if size > FULL_BYTES {
        let mut o = 4096;
        while o + 8 <= size {
            f(o, 8);
            o += 4096;
        }
        f(size - 8, 8);
    }
}

/// Writes block `id`'s pattern into `size` bytes at `p`.
///
/// # Safety
/// `p..p+size` must be writable.
pub unsafe fn fill(p: *mut u8, size: usize, id: u64) {
    // SAFETY: every position lies inside `p..p+size` (contract).
    positions(size, |o, w| unsafe {
        if w == 8 {
            p.add(o).cast::<u64>().write_unaligned(expected_word(id, o));
        } else {
            p.add(o).write(expected_byte(id, o));
        }
    });
}

/// Checks the pattern of block `id` on the positions of a block of `size` bytes that lie
/// below `limit` (use `limit == size` for the whole block). Returns the first bad offset.
///
/// # Safety
/// `p..p+limit` must be readable.
pub unsafe fn check_limit(p: *const u8, size: usize, limit: usize, id: u64) -> Result<(), String> {
    let mut bad: Option<(usize, u64, u64)> = None;
    positions(size, |o, w| {
        if bad.is_some() || o + w > limit {
            return;
        }
        // SAFETY: the position lies below `limit`, inside the readable range (contract).
        unsafe {
            if w == 8 {
                let got = p.add(o).cast::<u64>().read_unaligned();
                let want = expected_word(id, o);
                if got != want {
                    bad = Some((o, got, want));
                }
            } else {
                let got = p.add(o).read();
                let want = expected_byte(id, o);
                if got != want {
                    bad = Some((o, got as u64, want as u64));
                }
            }
        }
    });
    match bad {
        None => Ok(()),
        Some((o, got, want)) => {
            Err(format!("block id {id} at {p:p} size {size}: offset {o}: got {got:#018x}, want {want:#018x}"))
        }
    }
}

/// Checks the whole pattern of block `id` (`size` bytes at `p`); panics with details.
///
/// # Safety
/// `p..p+size` must be readable.
pub unsafe fn check(p: *const u8, size: usize, id: u64) {
    // SAFETY: per the contract.
    if let Err(e) = unsafe { check_limit(p, size, size, id) } {
        panic!("pattern mismatch: {e}");
    }
}

// ---- /proc ----

/// One line of /proc/self/maps.
#[derive(Clone, Debug)]
pub struct MapLine {
    pub start: usize,
    pub end: usize,
    pub perms: String,
    pub inode: u64,
    pub path: String,
}

impl MapLine {
    pub fn contains(&self, p: usize, len: usize) -> bool {
        p >= self.start && p + len.max(1) <= self.end
    }
    pub fn is_anonymous(&self) -> bool {
        self.inode == 0 && self.path.is_empty()
    }
}

pub fn maps() -> Vec<MapLine> {
    let text = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    text.lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next().unwrap();
            let perms = it.next().unwrap().to_string();
            let _offset = it.next();
            let _dev = it.next();
            let inode: u64 = it.next().unwrap().parse().unwrap();
            let path = it.collect::<Vec<_>>().join(" ");
            let (a, b) = range.split_once('-').unwrap();
            MapLine {
                start: usize::from_str_radix(a, 16).unwrap(),
                end: usize::from_str_radix(b, 16).unwrap(),
                perms,
                inode,
                path,
            }
        })
        .collect()
}

/// The `[heap]` lines of /proc/self/maps, merged where adjacent.
pub fn heap_ranges() -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = Vec::new();
    for m in maps().into_iter().filter(|m| m.path == "[heap]") {
        match v.last_mut() {
            Some(last) if last.1 == m.start => last.1 = m.end,
            _ => v.push((m.start, m.end)),
        }
    }
    v
}

/// Whether `p..p+len` lies inside one (merged) `[heap]` range.
pub fn in_heap(ranges: &[(usize, usize)], p: usize, len: usize) -> bool {
    ranges.iter().any(|&(s, e)| p >= s && p + len.max(1) <= e)
}

/// The maps line that contains address `p`.
pub fn mapping_of(p: usize) -> Option<MapLine> {
    maps().into_iter().find(|m| m.contains(p, 1))
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Resident set size in bytes (second field of /proc/self/statm).
pub fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").expect("read statm");
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * page_size()
}

/// A `kB` field of /proc/self/status (VmSize, VmData, ...), in bytes.
pub fn status_kb(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("read status");
    for l in s.lines() {
        if let Some(rest) = l.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
            return kb * 1024;
        }
    }
    panic!("no {field} in /proc/self/status");
}

/// The current program break.
pub fn sbrk0() -> usize {
    // SAFETY: sbrk(0) only reads the break.
    unsafe { libc::sbrk(0) as usize }
}

/// Physical frame number of the page holding `p` (0 if not present or not visible).
pub fn pfn(p: usize) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open("/proc/self/pagemap") else { return 0 };
    let mut b = [0u8; 8];
    if f.seek(SeekFrom::Start((p / page_size()) as u64 * 8)).is_err() || f.read_exact(&mut b).is_err() {
        return 0;
    }
    let v = u64::from_le_bytes(b);
    if v >> 63 == 0 { 0 } else { v & ((1 << 55) - 1) }
}

// ---- child processes ----

/// Whether this process is the child run for test `key` (see [`run_child`]).
pub fn is_child(key: &str) -> bool {
    std::env::var_os("TIDEMALLOC_TEST_CHILD").is_some_and(|v| v == key)
}

/// Re-executes this test binary running only `test_name`, with the child marker set to `key`,
/// and returns its output.
pub fn run_child(test_name: &str, key: &str) -> Output {
    run_child_env(test_name, key, &[])
}

/// Like [`run_child`] with extra environment variables. The child is killed (SIGKILL) if it
/// runs longer than two minutes: a child stuck at a memory limit must not hang the tests.
pub fn run_child_env(test_name: &str, key: &str, env: &[(&str, &str)]) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env("TIDEMALLOC_TEST_CHILD", key)
        // A panic's backtrace allocates a lot: keep it off in children that run at a limit.
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- child stdout ---\n{}\n--- child stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `test_name` as a child (with `env`) and checks it died of SIGABRT with a tidemalloc
/// message that contains `what` and the pointer the child printed as `PTR=0x...`.
pub fn expect_abort(test_name: &str, what: &str, env: &[(&str, &str)]) {
    use std::os::unix::process::ExitStatusExt;
    let out = run_child_env(test_name, test_name, env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "the child did not die of SIGABRT: {}", describe(&out));
    let ptr = err
        .lines()
        .find_map(|l| l.strip_prefix("PTR="))
        .unwrap_or_else(|| panic!("the child printed no pointer: {}", describe(&out)))
        .trim()
        .to_string();
    let line = err
        .lines()
        .find(|l| l.contains("tidemalloc"))
        .unwrap_or_else(|| panic!("no tidemalloc message: {}", describe(&out)));
    assert!(line.contains(what), "message {line:?} does not say {what:?}");
    assert!(line.contains(&ptr), "message {line:?} does not name the pointer {ptr}");
}
