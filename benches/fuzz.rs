//! The differential fuzzer's long mode (see `tests/common/fuzz.rs`), on tidemalloc as the
//! global allocator: `cargo bench --bench fuzz -- --seconds 3600 [--threads N] [--seed S]`.
//! Without `--seed` (or `TIDEMALLOC_FUZZ_SEED`) the seed is new each run; it is printed at
//! the start and in every failure, and replays with `TIDEMALLOC_FUZZ_SEED=S` or `--seed S`.

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

#[path = "../tests/common/fuzz.rs"]
mod fuzz;

use std::time::Duration;

fn main() {
    let mut seconds = 600;
    let mut threads = 4;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next().and_then(|v| fuzz::parse_u64(&v)).unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--seconds" => seconds = value("--seconds"),
            "--threads" => threads = value("--threads").max(1) as usize,
            "--seed" => seed = Some(value("--seed")),
            "--bench" => {} // added by cargo bench
            other => panic!("unknown argument {other:?} (--seconds N, --threads N, --seed S)"),
        }
    }
    let cfg = fuzz::Config {
        seed: seed.unwrap_or_else(|| fuzz::seed_from_env(fuzz::fresh_seed())),
        threads,
        duration: Duration::from_secs(seconds),
        fork_one_in: 30_000,
        progress: Some(Duration::from_secs(60)),
    };
    let summary = fuzz::run(&cfg);
    println!("{}", summary.line(&cfg));
}
