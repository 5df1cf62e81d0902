//! Test side of the heap profiler: decodes a gzipped pprof profile (`profile.proto`) with
//! prost and attributes its samples to functions with tidemalloc's own symbol reader.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::path::Path;
// The includer names the core crate `tm` (`use tidemalloc as tm;`, in the ffi crate `use tide as tm;`).
use crate::tm::prof::symbols;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
}

pub fn decode_file(path: &Path) -> Profile {
    let gz = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).expect("gunzip");
    <Profile as prost::Message>::decode(&raw[..]).expect("decode profile.proto")
}

/// The six values of one site, summed over the samples whose stack passes through it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Values {
    pub alloc_objects: i64,
    pub alloc_space: i64,
    pub inuse_objects: i64,
    pub inuse_space: i64,
    pub peak_objects: i64,
    pub peak_space: i64,
}

/// Demangled function names of every location (None where no symbol was found).
pub fn location_names(p: &Profile) -> HashMap<u64, String> {
    let mut elves: HashMap<u64, Option<symbols::Elf>> = HashMap::new();
    let mut names = HashMap::new();
    for l in &p.location {
        let Some(m) = p.mapping.iter().find(|m| m.id == l.mapping_id && l.mapping_id != 0) else { continue };
        let elf = elves.entry(m.id).or_insert_with(|| {
            let path = CString::new(p.string_table[m.filename as usize].as_str()).unwrap();
            symbols::Elf::open(&path)
        });
        let Some(elf) = elf else { continue };
        let off = l.address - m.memory_start + m.file_offset;
        if let Some((raw, _)) = elf.symbol_for_file_offset(off) {
            let mut s = String::new();
            symbols::demangle(raw, &mut s).unwrap();
            names.insert(l.id, s);
        }
    }
    names
}

/// Sums the samples whose stack has a function named `func` (or ending in `::func`).
pub fn site_values(p: &Profile, func: &str, _exe: &Path) -> Values {
    let names = location_names(p);
    let matches = |n: &str| n == func || n.ends_with(&format!("::{func}"));
    let mut v = Values::default();
    for s in &p.sample {
        if !s.location_id.iter().any(|id| names.get(id).is_some_and(|n| matches(n))) {
            continue;
        }
        v.alloc_objects += s.value[0];
        v.alloc_space += s.value[1];
        v.inuse_objects += s.value[2];
        v.inuse_space += s.value[3];
        v.peak_objects += s.value[4];
        v.peak_space += s.value[5];
    }
    v
}

/// The innermost function of each sample with its allocated bytes.
pub fn leaf_names(p: &Profile, _exe: &Path) -> Vec<(String, i64)> {
    let names = location_names(p);
    p.sample
        .iter()
        .filter_map(|s| s.location_id.first().and_then(|id| names.get(id)).map(|n| (n.clone(), s.value[1])))
        .collect()
}
