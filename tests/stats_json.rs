//! The statistics as JSON and where the memory is: `stats_json` parses and names every field
//! of `Stats`; the figures follow known allocations (10,000 blocks of 100 B fill pages and
//! leave free pages behind when freed, which trim releases; a freed large block sits in the
//! cache at its mapping's size; a huge block is counted as one) and add up to what is
//! reserved; `format_info_xml` carries them. Child processes (the test binary re-executed)
//! check `TIDEMALLOC_SHOW_STATS=json`, `TIDEMALLOC_STATS_FILE` and the warnings on malformed
//! values.
//!
//! The counters are process-wide: the tests that measure them run one at a time.

use serde_json::Value;
use std::path::Path;
use tidemalloc::{Stats, free, malloc, stats};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

mod common;
use common::{describe, is_child, rss, run_child_env};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const SEGMENT: usize = 4 * MIB;
/// A segment's header (its page descriptors): the start of page 0.
const HEADER: usize = 16 * KIB;

/// `stats_json` parsed.
fn json() -> Value {
    let mut text = String::with_capacity(tidemalloc::STATS_TEXT_MAX);
    tidemalloc::stats_json(&mut text).unwrap();
    assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "not one line: {text:?}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats_json is not JSON ({e}): {text}"))
}

fn field(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("no integer {name:?} in {v}"))
}

/// The figures that must hold in any snapshot: the arena's parts fit in it with at most
/// the alignment padding of two runs of the break left over, live small blocks fit in the
/// pages in use, and the mapped parts fit in the mappings.
fn check_sums(s: &Stats) {
    let arena = s.reserved_brk + s.reserved_arena_mmap;
    let placed = s.page_bytes
        + s.free_pages_dirty
        + s.free_pages_clean
        + s.huge_bytes
        + s.free_spans_dirty
        + s.free_spans_clean
        + s.meta_segment_headers;
    assert!(placed <= arena, "the arena's parts ({placed}) exceed the arena ({arena}): {s:#?}");
    assert_eq!(placed + s.arena_other, arena, "{s:#?}");
    assert!(s.arena_other < 2 * SEGMENT, "{} bytes of the arena unaccounted for: {s:#?}", s.arena_other);
    assert_eq!(
        s.page_bytes + s.free_pages_dirty + s.free_pages_clean,
        s.segments * (SEGMENT - HEADER),
        "pages in use and free pages make the segments: {s:#?}"
    );
    assert_eq!(s.meta_segment_headers, (s.segments + s.huge_blocks) * HEADER);
    let small = s.in_use - s.large_bytes - s.huge_bytes;
    assert_eq!(small + s.free_in_pages, s.page_bytes, "live small blocks and free room make the pages: {s:#?}");
    assert!(s.uncarved_in_pages <= s.free_in_pages, "{s:#?}");
    let mapped = s.large_bytes + s.large_cache_bytes + s.reserved_arena_mmap + s.meta_heaps + s.meta_large_table;
    assert!(mapped <= s.reserved_mmap, "the mapped parts ({mapped}) exceed the mappings: {s:#?}");
    assert!(s.mmap_other < MIB, "{} bytes of mappings unaccounted for: {s:#?}", s.mmap_other);
    assert!(s.meta_heaps > 0 && s.segments > 0, "{s:#?}");
    assert!(s.reserved_arena_peak >= arena && s.peak_in_use >= s.in_use);
}

/// The figures checked in this process's own heap run in a child process, one after the
/// other on one thread: in the test binary, other tests' threads (finishing, exiting,
/// spawning children) allocate and free meanwhile, and exact page and mapping counts would
/// see their half-done changes.
#[test]
fn figures_in_a_process_of_their_own() {
    const NAME: &str = "figures_in_a_process_of_their_own";
    if is_child(NAME) {
        json_names_every_field();
        small_blocks_fill_pages_and_free_pages_stay_until_trimmed();
        a_freed_large_block_is_in_the_cache_at_its_mapping_size();
        a_huge_block_is_counted_as_one();
        dirty_figures_follow_rss();
        malloc_info_xml_carries_the_figures();
        return;
    }
    let out = run_child_env(NAME, NAME, &[]);
    assert!(out.status.success(), "{}", describe(&out));
}

fn json_names_every_field() {
    let v = json();
    let s = stats();
    let obj = v.as_object().expect("an object");
    assert_eq!(field(&v, "version"), 1);
    assert_eq!(field(&v, "pid"), std::process::id() as u64);
    let names: Vec<&str> = s.fields().iter().map(|(n, _)| *n).collect();
    assert_eq!(obj.len(), names.len() + 2, "fields: {:?}", obj.keys().collect::<Vec<_>>());
    for (name, value) in s.fields() {
        let j = field(&v, name);
        // Taken just before: the monotonic counters can only have grown since.
        if name.ends_with("_calls") || name == "release_failures" {
            assert!(j <= value as u64, "{name}: json {j}, later {value}");
        }
    }
    check_sums(&s);
}

fn small_blocks_fill_pages_and_free_pages_stay_until_trimmed() {
    const N: usize = 10_000;
    let mut blocks: Vec<*mut u8> = Vec::with_capacity(N);
    tidemalloc::trim(0);
    let s0 = stats();
    for i in 0..N {
        let p = malloc(100);
        assert!(!p.is_null());
        // SAFETY: a fresh block of 100 bytes.
        unsafe { p.write_bytes(i as u8, 100) };
        blocks.push(p);
    }
    let s1 = stats();
    check_sums(&s1);
    let grew = s1.in_use - s0.in_use;
    let pages_grew = s1.page_bytes - s0.page_bytes;
    eprintln!(
        "10,000 x 100 B: in_use +{grew}, page_bytes +{pages_grew}, free_in_pages {}, uncarved {}",
        s1.free_in_pages, s1.uncarved_in_pages
    );
    assert!(s1.in_use >= 1_000_000 && (1_000_000..=N * 128).contains(&grew), "in_use grew by {grew}");
    // Whole 64 KiB pages were taken for them: at most about one page more than they fill.
    assert!((grew - 128 * KIB..=grew + 192 * KIB).contains(&pages_grew), "page_bytes grew by {pages_grew}");
    assert!(
        s1.free_in_pages <= s0.free_in_pages + 192 * KIB,
        "free_in_pages {} -> {}",
        s0.free_in_pages,
        s1.free_in_pages
    );

    for &p in &blocks {
        // SAFETY: live, freed once.
        unsafe { free(p) };
    }
    let s2 = stats();
    check_sums(&s2);
    let kept = |s: &Stats| s.free_pages_dirty + s.free_spans_dirty;
    eprintln!(
        "freed: page_bytes {}, dirty free pages {}, dirty spans {}",
        s2.page_bytes, s2.free_pages_dirty, s2.free_spans_dirty
    );
    assert!(s2.page_bytes + 900_000 <= s1.page_bytes, "pages in use {} -> {}", s1.page_bytes, s2.page_bytes);
    assert!(kept(&s2) >= kept(&s1) + 900_000, "freed pages are not kept resident: {} -> {}", kept(&s1), kept(&s2));

    assert!(tidemalloc::trim(0), "trim(0) released nothing");
    let s3 = stats();
    check_sums(&s3);
    eprintln!("trimmed: dirty free pages {}, dirty spans {}", s3.free_pages_dirty, s3.free_spans_dirty);
    assert!(kept(&s3) + 900_000 <= kept(&s2), "trim left the free pages resident: {} -> {}", kept(&s2), kept(&s3));
    assert_eq!(s3.free_spans_dirty, 0, "trim purges every free span");
}

fn a_freed_large_block_is_in_the_cache_at_its_mapping_size() {
    // Fixed, so that freeing the block does not raise it (the dynamic threshold).
    let threshold = tidemalloc::get_mmap_threshold();
    assert!(tidemalloc::set_mmap_threshold(128 * KIB));
    tidemalloc::trim(0);
    let s0 = stats();
    assert_eq!((s0.large_cache_blocks, s0.large_cache_bytes), (0, 0), "trim empties the cache");
    let p = malloc(MIB);
    assert!(!p.is_null());
    // SAFETY: a live block; the mapping starts at a page boundary before it.
    let mapping = unsafe { tidemalloc::usable_size(p) } + p as usize % 4096;
    let s1 = stats();
    check_sums(&s1);
    assert_eq!(s1.large_blocks, s0.large_blocks + 1);
    assert_eq!(s1.large_bytes, s0.large_bytes + mapping, "the live block counts its mapping");
    assert!(s1.meta_large_table > 0, "the registry's table is mapped");
    // SAFETY: live, freed once.
    unsafe { free(p) };
    let s2 = stats();
    check_sums(&s2);
    assert_eq!(s2.large_blocks, s0.large_blocks);
    assert_eq!((s2.large_cache_blocks, s2.large_cache_bytes), (1, mapping), "the cache holds the mapping");
    assert!(mapping > MIB && mapping <= MIB + 8 * KIB);
    tidemalloc::trim(0);
    let s3 = stats();
    assert_eq!((s3.large_cache_blocks, s3.large_cache_bytes), (0, 0), "trim unmaps the cache");
    assert!(s3.reserved_mmap + mapping <= s2.reserved_mmap + 64 * KIB);
    tidemalloc::set_mmap_threshold(threshold);
}

fn a_huge_block_is_counted_as_one() {
    let threshold = tidemalloc::get_mmap_threshold();
    // Below the threshold and above the largest class: a huge block of one segment.
    assert!(tidemalloc::set_mmap_threshold(8 * MIB));
    let s0 = stats();
    let p = malloc(MIB);
    assert!(!p.is_null());
    let s1 = stats();
    check_sums(&s1);
    assert_eq!(s1.huge_blocks, s0.huge_blocks + 1);
    assert_eq!(s1.huge_bytes, s0.huge_bytes + SEGMENT - HEADER);
    // SAFETY: live, freed once.
    unsafe { free(p) };
    let s2 = stats();
    check_sums(&s2);
    assert_eq!((s2.huge_blocks, s2.huge_bytes), (s0.huge_blocks, s0.huge_bytes));
    assert!(s2.free_spans_dirty >= SEGMENT, "its segment is a dirty free span: {s2:#?}");
    tidemalloc::set_mmap_threshold(threshold);
}

/// The dirty figures are resident memory: 64 MiB of freed blocks keep RSS up while they say
/// so, and trim takes both down together.
fn dirty_figures_follow_rss() {
    let dirty = |s: &Stats| (s.free_pages_dirty + s.free_spans_dirty) as isize;
    let blocks: Vec<usize> = (0..64 * MIB / 4000).map(|_| malloc(4000) as usize).collect();
    for &p in &blocks {
        // SAFETY: fresh blocks of 4000 bytes.
        unsafe { (p as *mut u8).write_bytes(1, 4000) };
    }
    for &p in &blocks {
        // SAFETY: live, freed once.
        unsafe { free(p as *mut u8) };
    }
    let (r1, s1) = (rss() as isize, stats());
    tidemalloc::trim(0);
    let (r2, s2) = (rss() as isize, stats());
    check_sums(&s2);
    eprintln!("rss {} -> {} MiB, dirty {} -> {} MiB", r1 >> 20, r2 >> 20, dirty(&s1) >> 20, dirty(&s2) >> 20);
    assert!(dirty(&s1) >= 60 * MIB as isize, "64 MiB freed, dirty {}", dirty(&s1));
    let (rss_drop, dirty_drop) = (r1 - r2, dirty(&s1) - dirty(&s2));
    assert!(
        (rss_drop - dirty_drop).abs() < 8 * MIB as isize,
        "RSS fell by {rss_drop}, the dirty figures by {dirty_drop}"
    );
}

fn malloc_info_xml_carries_the_figures() {
    let mut xml = String::with_capacity(tidemalloc::STATS_TEXT_MAX);
    tidemalloc::format_info_xml(&mut xml);
    let s = stats();
    assert!(xml.starts_with("<malloc ") && xml.ends_with("</malloc>\n"), "{xml}");
    assert!(xml.len() < tidemalloc::STATS_TEXT_MAX);
    let tide = xml.lines().find(|l| l.starts_with("<tidemalloc ")).expect("a tidemalloc element");
    for (name, _) in s.fields() {
        assert!(tide.contains(&format!(" {name}=\"")), "no {name} in {tide}");
    }
    let attr = |line: &str, name: &str| -> usize {
        let at = line.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        line[at..].split('"').next().unwrap().parse().unwrap()
    };
    let mmap = xml.lines().find(|l| l.starts_with("<total type=\"mmap\"")).expect("mmap total");
    assert_eq!(attr(mmap, "count"), attr(tide, "large_blocks"));
    assert_eq!(attr(mmap, "size"), attr(tide, "large_bytes"));
    let rest = xml.lines().find(|l| l.starts_with("<total type=\"rest\"")).expect("rest total");
    let free: usize = ["free_in_pages", "free_pages_dirty", "free_pages_clean", "free_spans_dirty", "free_spans_clean"]
        .iter()
        .map(|n| attr(tide, n))
        .sum();
    assert_eq!(attr(rest, "size"), free, "rest is the arena's free bytes");
    let current = xml.lines().find(|l| l.starts_with("<system type=\"current\"")).expect("system current");
    assert_eq!(attr(current, "size"), attr(tide, "reserved_brk") + attr(tide, "reserved_arena_mmap"));
}

// ---- at exit, in child processes ----

/// What a child does: allocate a little, so that tidemalloc is initialised, and exit.
fn child_work() {
    let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(v.len(), 1000);
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory for a test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tidemalloc-stats-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The files in `dir`, as (name, contents).
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn show_stats_json_prints_one_json_line_on_stderr() {
    const NAME: &str = "show_stats_json_prints_one_json_line_on_stderr";
    if is_child(NAME) {
        return child_work();
    }
    let out = run_child_env(NAME, NAME, &[("TIDEMALLOC_SHOW_STATS", "json")]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    let line = err.lines().rfind(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON: {}", describe(&out)));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(field(&v, "pid") != std::process::id() as u64 && field(&v, "in_use") > 0, "{v}");
    assert!(!err.contains("tidemalloc stats:"), "text as well: {err}");
}

#[test]
fn show_stats_1_prints_text_on_stderr() {
    const NAME: &str = "show_stats_1_prints_text_on_stderr";
    if is_child(NAME) {
        return child_work();
    }
    let out = run_child_env(NAME, NAME, &[("TIDEMALLOC_SHOW_STATS", "1")]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    for label in ["tidemalloc stats:", "  in use ", "  large blocks ", "  free in pages ", "  meta large table "] {
        assert!(err.contains(label), "no {label:?} in {err}");
    }
}

#[test]
fn stats_file_takes_the_stats_off_stderr() {
    const NAME: &str = "stats_file_takes_the_stats_off_stderr";
    if is_child(NAME) {
        return child_work();
    }
    let dir = scratch("file");
    let pattern = dir.join("s.%p");
    let env = [("TIDEMALLOC_SHOW_STATS", "json"), ("TIDEMALLOC_STATS_FILE", pattern.to_str().unwrap())];
    let out = run_child_env(NAME, NAME, &env);
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    assert!(!err.contains("\"version\"") && !err.contains("tidemalloc"), "stats on stderr: {err}");
    let f = files(&dir);
    assert_eq!(f.len(), 1, "one file per process: {f:?}");
    let pid: u64 = f[0].0.strip_prefix("s.").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("name {}", f[0].0));
    let v: Value = serde_json::from_str(&f[0].1).unwrap_or_else(|e| panic!("{e}: {}", f[0].1));
    assert_eq!(field(&v, "pid"), pid, "the file is named with the pid of the process it describes");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_file_alone_turns_text_stats_on() {
    const NAME: &str = "stats_file_alone_turns_text_stats_on";
    if is_child(NAME) {
        return child_work();
    }
    let dir = scratch("text");
    let pattern = dir.join("100%%-%p.txt");
    let out = run_child_env(NAME, NAME, &[("TIDEMALLOC_STATS_FILE", pattern.to_str().unwrap())]);
    assert!(out.status.success(), "{}", describe(&out));
    let f = files(&dir);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].0.starts_with("100%-") && f[0].0.ends_with(".txt"), "name {}", f[0].0);
    assert!(f[0].1.starts_with("tidemalloc stats:\n"), "{}", f[0].1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_show_stats_warns_and_prints_nothing() {
    const NAME: &str = "malformed_show_stats_warns_and_prints_nothing";
    if is_child(NAME) {
        return child_work();
    }
    let out = run_child_env(NAME, NAME, &[("TIDEMALLOC_SHOW_STATS", "yes")]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("tidemalloc")).collect();
    assert_eq!(
        warnings,
        ["tidemalloc: warning: ignoring TIDEMALLOC_SHOW_STATS=yes: expected 0, 1 or json"],
        "{}",
        describe(&out)
    );
}

#[test]
fn unopenable_stats_file_is_one_warning() {
    const NAME: &str = "unopenable_stats_file_is_one_warning";
    if is_child(NAME) {
        return child_work();
    }
    let dir = scratch("missing");
    let pattern = dir.join("no-such-dir/s.%p");
    let out = run_child_env(NAME, NAME, &[("TIDEMALLOC_STATS_FILE", pattern.to_str().unwrap())]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("tidemalloc")).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].starts_with("tidemalloc: warning: TIDEMALLOC_STATS_FILE: cannot open ")
            && lines[0].contains("no-such-dir/s.")
            && lines[0].contains("(errno 2)"),
        "{}",
        lines[0]
    );
    let long = "x".repeat(5000);
    let out = run_child_env(NAME, NAME, &[("TIDEMALLOC_STATS_FILE", &long)]);
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("tidemalloc")).collect();
    assert_eq!(
        lines,
        ["tidemalloc: warning: ignoring TIDEMALLOC_STATS_FILE: 5000 bytes, longer than a path (4095)"],
        "{}",
        describe(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
