//! Tunables: one static table, read once from the environment at initialisation (without
//! allocating), changeable at run time through the Rust API and `mallopt`.
//!
//! Values accept K, M and G suffixes (powers of 1024); `TIDEMALLOC_SHOW_STATS` takes `0`, `1`
//! or `json`. A malformed value prints a warning on stderr and the default stays.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Which tunable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    /// Requests of at least this many bytes get their own mapping (default 128 KiB).
    MmapThreshold,
    /// Free memory at the top of the break beyond this is returned by lowering the break.
    TrimThreshold,
    /// Extra bytes to ask for each time the break grows (glibc's M_TOP_PAD).
    TopPad,
    /// Most large mappings alive at once; beyond it large requests come from the arena.
    MmapMax,
    /// Bytes of freed large mappings kept for reuse (saves page faults on large churn).
    LargeCache,
    /// Print the counters at exit: 0 no, [`SHOW_STATS_TEXT`] as text, [`SHOW_STATS_JSON`] as
    /// one line of JSON (`TIDEMALLOC_SHOW_STATS` is `0`, `1` or `json`). Read at start-up:
    /// whether anything is printed at exit is decided then.
    ShowStats,
    /// Milliseconds a freed segment stays resident for reuse before it is purged.
    PurgeDelay,
    /// Most bytes of freed, still-resident segments; beyond it the oldest are purged at once.
    DirtyMax,
    /// glibc's perturb byte (`M_PERTURB`, `MALLOC_PERTURB_`), 0 for off: allocated memory
    /// (but calloc's and fresh mappings) is filled with its complement, freed memory with it.
    Perturb,
    /// Heap profiling (`TIDEMALLOC_PROF=1`): sample allocations, write a pprof profile at
    /// exit. Read at start-up only.
    Prof,
    /// Mean bytes allocated between samples (1: every allocation). Read at start-up only.
    ProfRate,
    /// Report the sampled blocks still live at exit, by stack (`TIDEMALLOC_LEAKS=1`).
    Leaks,
    /// A background thread releases free memory on the purge delay even while the program
    /// makes no call (`TIDEMALLOC_BACKGROUND_PURGE=1`). Read at start-up only.
    BackgroundPurge,
}

struct Spec {
    opt: Opt,
    default: usize,
    max: usize,
    env: &'static [u8],
    glibc_env: &'static [u8],
}

/// [`Opt::ShowStats`]: the counters as text (`TIDEMALLOC_SHOW_STATS=1`).
pub const SHOW_STATS_TEXT: usize = 1;
/// [`Opt::ShowStats`]: the counters as JSON (`TIDEMALLOC_SHOW_STATS=json`).
pub const SHOW_STATS_JSON: usize = 2;

/// Largest supported mmap threshold: sizes up to here can come from the arena.
pub const MAX_MMAP_THRESHOLD: usize = 1 << 30;

const SPECS: [Spec; 13] = [
    Spec {
        opt: Opt::MmapThreshold,
        default: 128 << 10,
        max: MAX_MMAP_THRESHOLD,
        env: b"TIDEMALLOC_MMAP_THRESHOLD",
        glibc_env: b"MALLOC_MMAP_THRESHOLD_",
    },
    Spec {
        opt: Opt::TrimThreshold,
        default: 128 << 10,
        // usize::MAX: never trim on free (mallopt(M_TRIM_THRESHOLD, -1)).
        max: usize::MAX,
        env: b"TIDEMALLOC_TRIM_THRESHOLD",
        glibc_env: b"MALLOC_TRIM_THRESHOLD_",
    },
    Spec { opt: Opt::TopPad, default: 0, max: 1 << 30, env: b"TIDEMALLOC_TOP_PAD", glibc_env: b"MALLOC_TOP_PAD_" },
    Spec {
        opt: Opt::MmapMax,
        default: 65536,
        max: usize::MAX / 2,
        env: b"TIDEMALLOC_MMAP_MAX",
        glibc_env: b"MALLOC_MMAP_MAX_",
    },
    Spec {
        opt: Opt::LargeCache,
        default: 128 << 20,
        max: usize::MAX / 2,
        env: b"TIDEMALLOC_LARGE_CACHE",
        glibc_env: b"",
    },
    Spec { opt: Opt::ShowStats, default: 0, max: SHOW_STATS_JSON, env: b"TIDEMALLOC_SHOW_STATS", glibc_env: b"" },
    Spec { opt: Opt::PurgeDelay, default: 100, max: 1 << 40, env: b"TIDEMALLOC_PURGE_DELAY", glibc_env: b"" },
    Spec { opt: Opt::DirtyMax, default: 256 << 20, max: usize::MAX / 2, env: b"TIDEMALLOC_DIRTY_MAX", glibc_env: b"" },
    Spec { opt: Opt::Perturb, default: 0, max: 255, env: b"TIDEMALLOC_PERTURB", glibc_env: b"MALLOC_PERTURB_" },
    Spec { opt: Opt::Prof, default: 0, max: 1, env: b"TIDEMALLOC_PROF", glibc_env: b"" },
    Spec {
        opt: Opt::ProfRate,
        default: crate::prof::DEFAULT_RATE,
        max: 1 << 40,
        env: b"TIDEMALLOC_PROF_RATE",
        glibc_env: b"",
    },
    Spec { opt: Opt::Leaks, default: 0, max: 1, env: b"TIDEMALLOC_LEAKS", glibc_env: b"" },
    Spec { opt: Opt::BackgroundPurge, default: 0, max: 1, env: b"TIDEMALLOC_BACKGROUND_PURGE", glibc_env: b"" },
];

static VALUES: [AtomicUsize; SPECS.len()] = {
    let mut v = [const { AtomicUsize::new(0) }; SPECS.len()];
    let mut i = 0;
    while i < SPECS.len() {
        v[i] = AtomicUsize::new(SPECS[i].default);
        i += 1;
    }
    v
};

/// Requests below this many bytes take the malloc fast path: the smaller of the mmap
/// threshold and one more than the largest class, kept beside the threshold so the fast path
/// makes one comparison; 0 while the perturb byte is set, so every allocation takes the cold
/// path, which fills the block (the fast path pays nothing for the feature).
static SMALL_LIMIT: AtomicUsize = AtomicUsize::new(128 << 10);

/// Requests below this size come from a size class (see `SMALL_LIMIT`).
#[inline(always)]
pub fn small_limit() -> usize {
    SMALL_LIMIT.load(Relaxed)
}

/// `SMALL_LIMIT`, at most one more than the largest size of the class table: requests
/// below it take the fast path through a heap's direct table, with this one comparison.
static DIRECT_LIMIT: AtomicUsize = AtomicUsize::new(crate::size_class::TABLE_MAX + 1);

/// Requests below this size take the direct table's fast path (see `DIRECT_LIMIT`).
#[inline(always)]
pub fn direct_limit() -> usize {
    DIRECT_LIMIT.load(Relaxed)
}

/// Serialises [`store`]: `SMALL_LIMIT` is computed from two tunables that different threads
/// may change at once (a large free adapts the threshold while another thread sets the
/// perturb byte).
static STORE_LOCK: crate::lock::Lock<()> = crate::lock::Lock::new(());

/// Stores a tunable, keeping `SMALL_LIMIT` in step with the mmap threshold and the perturb
/// byte.
fn store(opt: Opt, value: usize) {
    let _serial = STORE_LOCK.lock();
    store_serialised(opt, value);
}

/// [`store`] for a caller that holds `STORE_LOCK`.
fn store_serialised(opt: Opt, value: usize) {
    VALUES[opt as usize].store(value, Relaxed);
    if matches!(opt, Opt::MmapThreshold | Opt::Perturb) {
        let limit = get(Opt::MmapThreshold).min(crate::size_class::MAX_CLASS_SIZE + 1);
        let small = if get(Opt::Perturb) != 0 { 0 } else { limit };
        SMALL_LIMIT.store(small, Relaxed);
        DIRECT_LIMIT.store(small.min(crate::size_class::TABLE_MAX + 1), Relaxed);
        crate::segment::set_fast_free(get(Opt::Perturb) == 0);
    }
}

/// Set once the program chose the mmap threshold, trim threshold, top pad or mmap max
/// itself (environment, `mallopt`, Rust API): from then on the threshold no longer adapts.
static FIXED: AtomicBool = AtomicBool::new(false);

/// Largest value the mmap threshold adapts up to (glibc's DEFAULT_MMAP_THRESHOLD_MAX).
pub const DYNAMIC_THRESHOLD_MAX: usize = 32 << 20;

fn fixes_threshold(opt: Opt) -> bool {
    matches!(opt, Opt::MmapThreshold | Opt::TrimThreshold | Opt::TopPad | Opt::MmapMax)
}

/// glibc's dynamic threshold: a freed large block of `len` bytes shows the program uses
/// blocks that size over and over, so (unless the program fixed the threshold) blocks up to
/// that size come from the arena from now on, where freed memory is reused without page
/// faults; the trim threshold follows at twice the mmap threshold.
pub fn adapt_threshold(len: usize) {
    if FIXED.load(Relaxed) || len <= get(Opt::MmapThreshold) || len > DYNAMIC_THRESHOLD_MAX {
        return;
    }
    // Busy: another thread stores, or a signal handler's free interrupted its own thread's
    // store. The adaptation is a heuristic: skip it rather than wait.
    let Some(_serial) = STORE_LOCK.try_lock() else { return };
    store_serialised(Opt::MmapThreshold, len);
    store_serialised(Opt::TrimThreshold, 2 * len);
}

/// In a fork child: the thread that held `STORE_LOCK` (another thread of the parent, or
/// this thread's code that a signal handler interrupted) does not store in the child.
pub(crate) fn reset_after_fork() {
    // SAFETY: per the above, the holder's guard is not used in this process (unless a signal
    // handler that forked returns into it, as `fork::fork_child` allows for every lock).
    unsafe { crate::lock::force_unlock(&STORE_LOCK) };
    // The holder may have stored a value but not the limits that follow from it.
    store(Opt::MmapThreshold, get(Opt::MmapThreshold));
}

/// The current value of a tunable.
#[inline(always)]
pub fn get(opt: Opt) -> usize {
    VALUES[opt as usize].load(Relaxed)
}

/// Sets a tunable. Returns false (and changes nothing) if the value is out of range.
pub fn set(opt: Opt, value: usize) -> bool {
    let spec = &SPECS[opt as usize];
    if value > spec.max {
        return false;
    }
    store(opt, value);
    if fixes_threshold(opt) {
        FIXED.store(true, Relaxed);
    }
    true
}

/// Sets a tunable to `value`, or to its maximum if `value` is beyond it (mallopt's -1).
pub fn set_clamped(opt: Opt, value: usize) {
    set(opt, value.min(SPECS[opt as usize].max));
}

/// Reads every tunable from the environment: the glibc name first, then tidemalloc's own,
/// which wins when both are set.
pub(crate) fn load_from_env() {
    for spec in &SPECS {
        for name in [spec.glibc_env, spec.env] {
            if name.is_empty() {
                continue;
            }
            let Some(text) = crate::os::getenv(name) else { continue };
            let (value, expected) = match spec.opt {
                Opt::ShowStats => (parse_show_stats(text), "0, 1 or json"),
                _ => (parse_size(text), "a size like 65536, 64K, 32M or 1G"),
            };
            match value {
                Some(v) if v <= spec.max => {
                    store(spec.opt, v);
                    if fixes_threshold(spec.opt) {
                        FIXED.store(true, Relaxed);
                    }
                }
                _ => warn_bad_value(name, text, expected),
            }
        }
    }
}

#[cold]
fn warn_bad_value(name: &[u8], text: &[u8], expected: &str) {
    let name = core::str::from_utf8(name).unwrap_or("?");
    let text = core::str::from_utf8(text).unwrap_or("(not UTF-8)");
    crate::eprint_noalloc!("tidemalloc: warning: ignoring {name}={text}: expected {expected}\n");
}

/// `TIDEMALLOC_SHOW_STATS`: `0`, `1` (text) or `json` (either case).
fn parse_show_stats(text: &[u8]) -> Option<usize> {
    match text {
        b"0" => Some(0),
        b"1" => Some(SHOW_STATS_TEXT),
        t if t.eq_ignore_ascii_case(b"json") => Some(SHOW_STATS_JSON),
        _ => None,
    }
}

/// Parses a decimal byte count with an optional K, M or G suffix (powers of 1024, either
/// case, an optional trailing B or iB). None on anything else or on overflow.
pub fn parse_size(text: &[u8]) -> Option<usize> {
    let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: usize = 0;
    for &c in &text[..digits] {
        n = n.checked_mul(10)?.checked_add((c - b'0') as usize)?;
    }
    let Some((unit, rest)) = text[digits..].split_first() else { return Some(n) };
    let shift = match unit.to_ascii_lowercase() {
        b'b' if rest.is_empty() => return Some(n),
        b'k' => 10,
        b'm' => 20,
        b'g' => 30,
        _ => return None,
    };
    if !matches!(rest, b"" | b"b" | b"B" | b"ib" | b"iB") {
        return None;
    }
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::{Opt, get, parse_show_stats, parse_size, set, set_clamped};

    #[test]
    fn show_stats_values() {
        assert_eq!(parse_show_stats(b"0"), Some(0));
        assert_eq!(parse_show_stats(b"1"), Some(super::SHOW_STATS_TEXT));
        assert_eq!(parse_show_stats(b"json"), Some(super::SHOW_STATS_JSON));
        assert_eq!(parse_show_stats(b"JSON"), Some(super::SHOW_STATS_JSON));
        for bad in [&b""[..], b"2", b"yes", b"jsonl", b" json", b"1K"] {
            assert_eq!(parse_show_stats(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    /// mallopt's -1 (usize::MAX): a trim threshold of "no limit" (never trim on free), other
    /// options at their maximum.
    #[test]
    fn clamped_values() {
        let (t, m) = (get(Opt::TrimThreshold), get(Opt::MmapThreshold));
        set_clamped(Opt::TrimThreshold, usize::MAX);
        assert_eq!(get(Opt::TrimThreshold), usize::MAX);
        set_clamped(Opt::MmapThreshold, usize::MAX);
        assert_eq!(get(Opt::MmapThreshold), super::MAX_MMAP_THRESHOLD);
        assert!(set(Opt::TrimThreshold, t) && set(Opt::MmapThreshold, m));
    }

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size(b"0"), Some(0));
        assert_eq!(parse_size(b"131072"), Some(131072));
        assert_eq!(parse_size(b"64K"), Some(64 << 10));
        assert_eq!(parse_size(b"64k"), Some(64 << 10));
        assert_eq!(parse_size(b"32M"), Some(32 << 20));
        assert_eq!(parse_size(b"1G"), Some(1 << 30));
        assert_eq!(parse_size(b"2MiB"), Some(2 << 20));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"12X"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"99999999999999999999999"), None);
        assert_eq!(parse_size(b"999999999999G"), None);
    }
}
