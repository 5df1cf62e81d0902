//! Layer `prof`: the sampling heap profiler (`TIDEMALLOC_PROF=1`, `TIDEMALLOC_LEAKS=1`).
//!
//! - **Sampling.** Each heap runs a clock of bytes allocated (`stats::LocalInUse`) and a next
//!   sample point on it, drawn from an exponential distribution of mean `TIDEMALLOC_PROF_RATE`
//!   bytes: the sample points form a Poisson process over the byte stream, so every byte has
//!   the same chance and an allocation of `s` charged bytes is sampled with probability
//!   `p = 1 - exp(-s/rate)`. A sample weighs `1/p` objects and `size/p` bytes: unbiased
//!   estimates of the totals. With profiling off the sample point is 2^62 bytes away and
//!   the malloc fast path's one extra branch (the sign of the add it already makes) never
//!   fires.
//! - **Identifying samples at free** (arranged in `lib.rs`): a sampled small block comes from
//!   the sample heap (`heap::with_sample_heap`: owned by no thread, used under its lock),
//!   with the sample in 16 bytes before the pointer; a sampled huge block keeps it in its
//!   segment header, a large block in its mapping's header. `free` reaches all three on the
//!   paths it takes for them anyway; the small-block free path pays nothing.
//! - **Stacks** come from the unwind tables (`stack`), are kept in a lock-free table
//!   (`table`), and are written out as a pprof profile (`pprof`) or a leak report (`leaks`).
//! - While a thread takes a sample its clock is paused, so an allocation made meanwhile (by
//!   the unwinder, or by a signal handler) is not sampled and cannot re-enter the sample
//!   heap's lock or the unwinder.
//!
//! Nothing here allocates through malloc. Recording a sample, a free and a dump take no lock
//! of the profiler's (the sample heap's lock is the heap layer's, taken only to allocate a
//! sampled small block); a dump makes only system calls, so it works in a signal handler,
//! and a fork at any moment leaves the table usable.

pub mod gzip;
mod leaks;
mod math;
mod pprof;
pub mod proto;
mod scratch;
mod stack;
pub mod symbols;
mod table;

use crate::options::{self, Opt};
use core::cell::Cell;
use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::*};
use table::OBJ_ONE;

/// Names of allocation entry points: frames with these names (innermost first) are the
/// allocator's, not the program's, and are left out.
pub(crate) fn is_allocator_frame(name: &str) -> bool {
    const EXACT: [&str; 19] = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "__rust_alloc",
        "__rust_alloc_zeroed",
        "__rust_realloc",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
        "__libc_memalign",
        "__libc_valloc",
        "__libc_pvalloc",
        "free",
    ];
    const PREFIX: [&str; 7] =
        ["tidemalloc::", "tidemalloc_", "__rdl_", "__rg_", "alloc::alloc::", "<tidemalloc::", "_Zn"];
    EXACT.contains(&name) || PREFIX.iter().any(|p| name.starts_with(p))
}

/// Default mean bytes between samples.
pub const DEFAULT_RATE: usize = 512 << 10;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Mean bytes between samples; 1 records every allocation.
static RATE: AtomicUsize = AtomicUsize::new(DEFAULT_RATE);

/// Samples recorded, and samples that could not be taken (no mapping could be made: the
/// allocation was then served unsampled).
static SAMPLES: AtomicUsize = AtomicUsize::new(0);
static MISSED: AtomicUsize = AtomicUsize::new(0);
/// Estimated live bytes of all samples, the highest value recorded, and the value above which
/// a new peak is recorded.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static PEAK_BYTES: AtomicI64 = AtomicI64::new(0);
static PEAK_TRIGGER: AtomicI64 = AtomicI64::new(0);
/// Set while one thread copies the live figures into the peak ones.
static COPYING: AtomicBool = AtomicBool::new(false);

/// Set-up, before any heap exists: reads the options and maps the stack table. Does not
/// allocate.
pub fn init() {
    let on = options::get(Opt::Prof) != 0 || options::get(Opt::Leaks) != 0;
    RATE.store(options::get(Opt::ProfRate).max(1), Relaxed);
    if on && table::init() {
        ENABLED.store(true, Relaxed);
        pprof::init_names();
    }
}

/// Finds the stack unwinder (see `stack::load_unwinder`): true if stacks can be captured.
pub(crate) fn load_unwinder(may_load: bool) -> bool {
    stack::load_unwinder(may_load)
}

/// Warns, when a profile or leak report is written, that its stacks are empty.
fn warn_if_no_unwinder() {
    if enabled() && !stack::has_unwinder() {
        crate::eprint_noalloc!("tidemalloc: warning: no unwinder (libgcc_s.so.1): the report has no stacks\n");
    }
}

/// Whether allocations are being sampled.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// The mean sampling interval in bytes.
pub fn rate() -> usize {
    RATE.load(Relaxed)
}

fn next_random(rng: &Cell<u64>) -> u64 {
    // xorshift64*: cheap, and good enough to space samples.
    let mut x = rng.get();
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng.set(x);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Bytes to the next sample point: exponentially distributed with mean `rate` (0 at rate 1:
/// every allocation is sampled).
pub fn interval(rng: &Cell<u64>) -> usize {
    let rate = rate();
    if rate <= 1 {
        return 0;
    }
    // A uniform value in (0, 1), never 0 (whose logarithm is infinite).
    let u = ((next_random(rng) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (-math::ln(u) * rate as f64).min((1u64 << 62) as f64) as usize
}

/// Probability that an allocation of `charged` bytes on the clock was sampled.
fn probability(charged: usize) -> f64 {
    let rate = rate();
    if rate <= 1 { 1.0 } else { -math::exp_m1(-(charged.max(1) as f64) / rate as f64) }
}

/// A recorded sample, kept in the sampled block's header: the bucket and probability (tag)
/// and the size asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Bucket index + 1 in the low 32 bits (0: no sample), the probability's f32 bits above.
    pub tag: usize,
    pub size: usize,
}

impl Sample {
    fn new(bucket: u32, p: f32, size: usize) -> Sample {
        Sample { tag: (bucket as usize + 1) | ((p.to_bits() as usize) << 32), size }
    }
    pub fn is_some(&self) -> bool {
        self.tag as u32 != 0
    }
    fn bucket(&self) -> u32 {
        self.tag as u32 - 1
    }
    /// The estimated objects (in 1/OBJ_ONE) and bytes this sample stands for.
    fn weight(&self) -> (u64, u64) {
        let p = f32::from_bits((self.tag >> 32) as u32) as f64;
        (math::round(OBJ_ONE as f64 / p) as u64, math::round(self.size as f64 / p) as u64)
    }
}

/// Records a sampled allocation of `size` bytes (`charged` on the sampling clock) and returns
/// its sample for the block's header. The stack starts at the program's call (the
/// allocator's frames are dropped).
#[inline(never)]
pub fn record(size: usize, charged: usize) -> Sample {
    let mut s = stack::capture(1);
    stack::strip_allocator_frames(&mut s);
    let id = table::intern(&s);
    let sample = Sample::new(id, probability(charged) as f32, size);
    let (objs, bytes) = sample.weight();
    if let Some(b) = table::bucket(id) {
        b.alloc_objs.fetch_add(objs, Relaxed);
        b.alloc_bytes.fetch_add(bytes, Relaxed);
        b.live_objs.fetch_add(objs as i64, Relaxed);
        b.live_bytes.fetch_add(bytes as i64, Relaxed);
    }
    SAMPLES.fetch_add(1, Relaxed);
    let live = LIVE_BYTES.fetch_add(bytes as i64, Relaxed) + bytes as i64;
    if live > PEAK_TRIGGER.load(Relaxed) {
        note_peak();
    }
    sample
}

/// A sampled block was freed (or moved by realloc).
pub fn release(s: Sample) {
    if !s.is_some() {
        return;
    }
    let (objs, bytes) = s.weight();
    if let Some(b) = table::bucket(s.bucket()) {
        b.live_objs.fetch_sub(objs as i64, Relaxed);
        b.live_bytes.fetch_sub(bytes as i64, Relaxed);
    }
    LIVE_BYTES.fetch_sub(bytes as i64, Relaxed);
}

/// An allocation could not be sampled (its mapping was refused).
pub fn missed() {
    MISSED.fetch_add(1, Relaxed);
}

/// Sampled live bytes passed the last peak by more than 1/64: copies every bucket's live
/// figures into its peak ones. The copy is not one atomic snapshot (other threads go on
/// allocating), and peaks closer than 1/64 apart are not told apart: the peak profile is the
/// live profile at a moment when sampled live bytes were within about 1.6% of their highest.
#[cold]
fn note_peak() {
    if COPYING.swap(true, Acquire) {
        return; // another thread (or the code this signal interrupted) is copying
    }
    table::for_each(|_, b| {
        b.peak_objs.store(b.live_objs.load(Relaxed), Relaxed);
        b.peak_bytes.store(b.live_bytes.load(Relaxed), Relaxed);
    });
    let live = LIVE_BYTES.load(Relaxed);
    PEAK_BYTES.store(live, Relaxed);
    PEAK_TRIGGER.store(live + live / 64, Relaxed);
    COPYING.store(false, Release);
}

/// Whether the peak figures are stale: live bytes now are at least the recorded peak, so the
/// live profile is the peak one.
fn live_is_peak() -> bool {
    LIVE_BYTES.load(Relaxed) >= PEAK_BYTES.load(Relaxed)
}

/// The profiler's own counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProfStats {
    pub enabled: bool,
    pub rate: usize,
    pub samples: usize,
    pub missed: usize,
    /// Distinct stacks recorded.
    pub stacks: usize,
    /// Bytes of the stack table in use (resident at most).
    pub table_bytes: usize,
    /// Bytes mapped for the stack table.
    pub table_mapped: usize,
    /// Estimated live bytes of all samples.
    pub live_estimate: i64,
}

pub fn prof_stats() -> ProfStats {
    ProfStats {
        enabled: enabled(),
        rate: rate(),
        samples: SAMPLES.load(Relaxed),
        missed: MISSED.load(Relaxed),
        stacks: table::count(),
        table_bytes: table::used_bytes(),
        table_mapped: if enabled() { table::TABLE_BYTES } else { 0 },
        live_estimate: LIVE_BYTES.load(Relaxed),
    }
}

/// In a fork child (only the forking thread exists): forgets work other threads of the
/// parent were doing (a dump, a peak copy), which never finishes here.
pub fn after_fork_child() {
    pprof::forget_dump_in_progress();
    COPYING.store(false, Relaxed);
}

/// Writes a pprof profile to `path`, or to the next automatic name when None. False (with
/// errno set) if profiling is off, a dump is running already, or the file could not be
/// written.
pub fn dump(path: Option<&CStr>) -> bool {
    warn_if_no_unwinder();
    pprof::dump(path)
}

/// At exit: the automatic profile (`TIDEMALLOC_PROF`) and the leak report
/// (`TIDEMALLOC_LEAKS`).
pub fn at_exit() {
    if !enabled() {
        return;
    }
    warn_if_no_unwinder();
    if options::get(Opt::Prof) != 0 {
        pprof::dump(None);
    }
    if options::get(Opt::Leaks) != 0 {
        leaks::report(2);
    }
}

/// Writes the leak report (sampled blocks still live, by stack) to `fd`.
pub fn leak_report(fd: i32) {
    warn_if_no_unwinder();
    leaks::report(fd);
}

/// `TIDEMALLOC_PROF_SIGNAL`: a signal (a number, or a name such as `USR1` or `SIGUSR2`)
/// whose arrival writes a profile to the next automatic name.
pub fn install_signal() {
    let Some(text) = crate::os::getenv(b"TIDEMALLOC_PROF_SIGNAL").filter(|t| !t.is_empty()) else { return };
    match parse_signal(text) {
        Some(sig) if crate::os::set_signal_handler(sig, on_dump_signal) => {}
        _ => crate::eprint_noalloc!(
            "tidemalloc: warning: ignoring TIDEMALLOC_PROF_SIGNAL={}: not a signal that can be caught\n",
            core::str::from_utf8(text).unwrap_or("?")
        ),
    }
}

extern "C" fn on_dump_signal(_sig: core::ffi::c_int) {
    let e = crate::os::errno();
    dump(None);
    crate::os::set_errno(e);
}

/// A signal number from its number or name (with or without `SIG`).
fn parse_signal(text: &[u8]) -> Option<i32> {
    // A fault signal would come back at once when the handler returns: a profile per fault.
    const FAULTS: [i32; 8] = [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGSYS,
        libc::SIGABRT,
        libc::SIGKILL,
    ];
    if let Some(n) = options::parse_size(text) {
        return i32::try_from(n).ok().filter(|&n| n > 0 && n < 65 && !FAULTS.contains(&n) && n != libc::SIGSTOP);
    }
    let name = text.strip_prefix(b"SIG").unwrap_or(text);
    const NAMES: [(&[u8], i32); 8] = [
        (b"USR1", libc::SIGUSR1),
        (b"USR2", libc::SIGUSR2),
        (b"HUP", libc::SIGHUP),
        (b"WINCH", libc::SIGWINCH),
        (b"URG", libc::SIGURG),
        (b"PROF", libc::SIGPROF),
        (b"TTIN", libc::SIGTTIN),
        (b"TTOU", libc::SIGTTOU),
    ];
    NAMES.iter().find(|(n, _)| *n == name).map(|&(_, s)| s)
}
