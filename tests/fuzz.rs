//! The differential fuzzer (see `common/fuzz.rs`), bounded: 4 threads for about 30 s, on
//! tidemalloc as the global allocator (so the harness itself runs on it too), with a fixed
//! seed. `TIDEMALLOC_FUZZ_SEED` replays another seed; `TIDEMALLOC_FUZZ_SECONDS` runs longer
//! (a debug build: `check_invariants` does its work). The long mode is
//! `cargo bench --bench fuzz -- --seconds 3600`.

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

#[path = "common/fuzz.rs"]
mod fuzz;

use std::time::Duration;

/// The seed of the bounded run.
const SEED: u64 = 0x7D3E_F022_0000_0001;

#[test]
fn differential_fuzz() {
    let seconds = std::env::var("TIDEMALLOC_FUZZ_SECONDS").ok().and_then(|s| fuzz::parse_u64(&s)).unwrap_or(30);
    let cfg = fuzz::Config {
        seed: fuzz::seed_from_env(SEED),
        threads: 4,
        duration: Duration::from_secs(seconds),
        fork_one_in: 10_000,
        progress: None,
    };
    let summary = fuzz::run(&cfg);
    fuzz::say(&format!("{}\n", summary.line(&cfg)));
    let c = &summary.counts;
    // The run did what it is for (a loaded machine slows it, but not by this much).
    assert!(c.ops() >= 100_000, "only {} operations", c.ops());
    assert!(c.handoffs > 0 && c.received > 0 && c.reallocs > 0, "{c:?}");
}
