//! rust-workload: allocation-heavy Rust program for tidemalloc's benchmark harness.
//!
//! Usage: `rust-workload SCALE THREADS`. Prints `checksum <u64>`; exits 1 on a
//! consistency failure.
//!
//! 1. Builds a `BTreeMap<String, Vec<String>>` of 200 000 * SCALE entries, then
//!    mutates it (appends to values, removes entries, inserts new ones) and hashes it.
//! 2. Builds a document of 180 000 * SCALE records (strings, numbers, nested vectors;
//!    about 63 MB of JSON at SCALE 1.0), split into THREADS chunks processed in
//!    parallel: each chunk is serialized with serde_json to a `String`, parsed back,
//!    compared with the original and also parsed into a `serde_json::Value`.
//!
//! Record i depends only on i, so the checksum is the same for every THREADS.
//! Built with `--features tide`, tidemalloc is the global allocator; otherwise the
//! system allocator (`std::alloc::System`, i.e. glibc malloc, or whatever LD_PRELOAD
//! puts in its place).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::process::exit;

#[cfg(feature = "tide")]
#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

#[cfg(not(feature = "tide"))]
#[global_allocator]
static A: std::alloc::System = std::alloc::System;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn word(&mut self, min: u64, max: u64) -> String {
        let len = min + self.below(max - min + 1);
        (0..len).map(|_| (b'a' + self.below(26) as u8) as char).collect()
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

fn fail(what: &str) -> ! {
    eprintln!("rust-workload: consistency failure: {what}");
    exit(1);
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Child {
    label: String,
    weight: u32,
    flags: Vec<bool>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Record {
    id: u64,
    name: String,
    email: Option<String>,
    score: f64,
    tags: Vec<String>,
    values: Vec<i64>,
    attrs: BTreeMap<String, String>,
    children: Vec<Child>,
}

fn make_record(i: u64) -> Record {
    let mut r = Rng::new(0x7265_636f_7264 ^ i);
    let name = r.word(3, 24);
    let email = if r.below(4) == 0 { None } else { Some(format!("{}@{}.example", name, r.word(3, 10))) };
    let ntags = r.below(6) as usize;
    let tags = (0..ntags).map(|_| r.word(2, 12)).collect();
    let nvals = r.below(12) as usize;
    let values = (0..nvals).map(|_| r.next() as i64 >> r.below(60)).collect();
    let nattrs = r.below(4) as usize;
    let attrs = (0..nattrs).map(|_| (r.word(2, 8), r.word(0, 20))).collect();
    let nchildren = r.below(4) as usize;
    let children = (0..nchildren)
        .map(|_| Child {
            label: r.word(1, 16),
            weight: r.next() as u32,
            flags: (0..r.below(5)).map(|_| r.below(2) == 1).collect(),
        })
        .collect();
    Record {
        id: i,
        name,
        email,
        // dyadic, so it survives a decimal round trip exactly
        score: (r.below(1 << 20) as f64 - (1 << 19) as f64) / 1024.0,
        tags,
        values,
        attrs,
        children,
    }
}

fn record_hash(rec: &Record) -> u64 {
    let mut h = fnv(FNV0, &rec.id.to_le_bytes());
    h = fnv(h, rec.name.as_bytes());
    if let Some(e) = &rec.email {
        h = fnv(h, e.as_bytes());
    }
    h = fnv(h, &rec.score.to_bits().to_le_bytes());
    for t in &rec.tags {
        h = fnv(h, t.as_bytes());
    }
    for v in &rec.values {
        h = fnv(h, &v.to_le_bytes());
    }
    for (k, v) in &rec.attrs {
        h = fnv(fnv(h, k.as_bytes()), v.as_bytes());
    }
    for c in &rec.children {
        h = fnv(fnv(h, c.label.as_bytes()), &c.weight.to_le_bytes());
        h = fnv(h, &c.flags.iter().map(|&b| b as u8).collect::<Vec<u8>>());
    }
    mix(h)
}

fn count_values(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(count_values).sum::<u64>(),
        serde_json::Value::Object(o) => 1 + o.values().map(count_values).sum::<u64>(),
        _ => 1,
    }
}

/// Phase 1: BTreeMap<String, Vec<String>> built, mutated, hashed.
fn map_phase(n: u64) -> u64 {
    let mut r = Rng::new(0x6d6170);
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut keys: Vec<String> = Vec::new();
    for _ in 0..n {
        let key = format!("key-{:012x}-{}", r.next() >> 16, r.word(0, 8));
        let nv = r.below(8) as usize;
        let vals: Vec<String> = (0..nv).map(|_| r.word(4, 40)).collect();
        if map.insert(key.clone(), vals).is_none() {
            keys.push(key);
        }
    }
    let mut removed = 0u64;
    for _ in 0..n {
        let idx = r.below(keys.len() as u64) as usize;
        match r.below(4) {
            0 => {
                // remove and replace by a fresh key
                let old = std::mem::replace(&mut keys[idx], format!("new-{:012x}", r.next() >> 16));
                match map.remove(&old) {
                    Some(v) => removed += v.len() as u64,
                    None => fail("key missing from map"),
                }
                let vals: Vec<String> = (0..r.below(6)).map(|_| r.word(4, 40)).collect();
                if map.insert(keys[idx].clone(), vals).is_some() {
                    fail("fresh key already present");
                }
            }
            1 => {
                let v = map.get_mut(&keys[idx]).unwrap_or_else(|| fail("key missing from map"));
                v.clear();
                v.shrink_to_fit();
            }
            _ => {
                let w = r.word(1, 64);
                let v = map.get_mut(&keys[idx]).unwrap_or_else(|| fail("key missing from map"));
                v.push(w);
            }
        }
    }
    if map.len() != keys.len() {
        fail("map size");
    }
    let mut h = fnv(FNV0, &removed.to_le_bytes());
    for (k, v) in &map {
        h = fnv(h, k.as_bytes());
        for s in v {
            h = fnv(h, s.as_bytes());
        }
    }
    h
}

/// Phase 2, one chunk of records: build, serialize, parse back, compare.
fn json_chunk(lo: u64, hi: u64) -> (u64, u64) {
    let doc: Vec<Record> = (lo..hi).map(make_record).collect();
    let text = serde_json::to_string(&doc).unwrap_or_else(|e| fail(&format!("serialize: {e}")));
    verbose(&format!("chunk {lo}..{hi}: {} bytes of JSON", text.len()));
    let back: Vec<Record> = serde_json::from_str(&text).unwrap_or_else(|e| fail(&format!("parse: {e}")));
    if back != doc {
        fail("JSON round trip changed the document");
    }
    drop(doc);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| fail(&format!("parse: {e}")));
    let nodes = count_values(&value);
    drop(value);
    drop(text);
    let h = back.iter().fold(0u64, |acc, rec| acc.wrapping_add(record_hash(rec)));
    (h, nodes)
}

/// Progress on stderr when RUST_WORKLOAD_VERBOSE is set.
fn verbose(msg: &str) {
    if std::env::var_os("RUST_WORKLOAD_VERBOSE").is_some() {
        eprintln!("[{:.3} s] {msg}", start().elapsed().as_secs_f64());
    }
}

fn start() -> &'static std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now)
}

fn main() {
    start();
    let args: Vec<String> = std::env::args().collect();
    let scale: f64 = args.get(1).map_or(Ok(1.0), |s| s.parse()).unwrap_or(-1.0);
    let threads: u64 = args.get(2).map_or(Ok(2), |s| s.parse()).unwrap_or(0);
    if !(scale > 0.0) || threads == 0 || threads > 1024 {
        eprintln!("usage: rust-workload SCALE THREADS");
        exit(2);
    }
    let n_map = ((200_000.0 * scale) as u64).max(100);
    let n_rec = ((180_000.0 * scale) as u64).max(threads);

    let map_hash = map_phase(n_map);
    verbose("map phase done");

    let per = n_rec / threads;
    let results: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = t * per;
                let hi = if t + 1 == threads { n_rec } else { lo + per };
                s.spawn(move || json_chunk(lo, hi))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| fail("thread panicked"))).collect()
    });
    verbose("json phase done");
    let mut doc_hash = 0u64;
    let mut nodes = 0u64;
    for (h, n) in results {
        doc_hash = doc_hash.wrapping_add(h);
        // a Value tree has 1 array node per chunk
        nodes += n - 1;
    }
    let checksum = mix(map_hash ^ mix(doc_hash) ^ nodes.rotate_left(32));
    println!("checksum {checksum}");
}
