//! The profile as pprof's `profile.proto`, gzipped: one sample per stack with six values
//! (objects and bytes allocated since start, live now, live at the peak), the executable
//! mappings of `/proc/self/maps` (so `go tool pprof` finds the binaries and symbolises the
//! addresses itself, with line numbers where debug info has them), and a `drop_frames`
//! pattern that hides the allocator's own frames.
//!
//! All memory comes from `os` mappings made for the dump and unmapped after it; only
//! system calls are made (open, read, write, close, mmap), so a dump may run in a signal
//! handler. One dump at a time: a second one, in another thread or in a signal handler,
//! fails with EBUSY.

use super::gzip;
use super::proto::Writer;
use super::scratch::{Indexed, Map, Scratch, file_maps, map_of, read_maps};
use super::stack::MAX_DEPTH;
use super::symbols;
use super::table::{self, OBJ_ONE};
use crate::msg::StackBuf;
use crate::os;
use core::ffi::CStr;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};

static DUMPING: AtomicBool = AtomicBool::new(false);
/// Sequence number of the next automatically named profile.
static SEQ: AtomicUsize = AtomicUsize::new(0);
/// `TIDEMALLOC_PROF_PREFIX` (a pointer into `environ`), or empty for the default.
static PREFIX: AtomicUsize = AtomicUsize::new(0);
static PREFIX_LEN: AtomicUsize = AtomicUsize::new(0);

/// Frames pprof drops (with everything they call): the allocation entry points, so each
/// sample's innermost frame is the program's.
const DROP_FRAMES: &str = "(malloc|calloc|realloc|reallocarray|free|posix_memalign|aligned_alloc|memalign|valloc|pvalloc|__libc_(malloc|calloc|realloc|free|memalign|valloc|pvalloc)|tidemalloc::.*|tidemalloc_.*|_?_rust_(alloc|realloc|alloc_zeroed|dealloc).*|__rdl_.*|__rg_.*|alloc::alloc::.*|<tidemalloc::TideMalloc as .*|operator new.*|_Znwm|_Znam|_ZnwmRKSt9nothrow_t|_ZnamRKSt9nothrow_t|_ZnwmSt11align_val_t|_ZnamSt11align_val_t)";

/// Fixed strings of the string table, by index.
const STRINGS: [&str; 11] = [
    "",
    "alloc_objects",
    "count",
    "alloc_space",
    "bytes",
    "inuse_objects",
    "inuse_space",
    "peak_objects",
    "peak_space",
    "space",
    DROP_FRAMES,
];
const S_COUNT: u64 = 2;
const S_BYTES: u64 = 4;
const S_INUSE_SPACE: u64 = 6;
const S_SPACE: u64 = 9;
const S_DROP: u64 = 10;
/// (type, unit) of the six values of every sample.
const SAMPLE_TYPES: [(u64, u64); 6] =
    [(1, S_COUNT), (3, S_BYTES), (5, S_COUNT), (6, S_BYTES), (7, S_COUNT), (8, S_BYTES)];

pub fn init_names() {
    if let Some(p) = os::getenv(b"TIDEMALLOC_PROF_PREFIX").filter(|p| !p.is_empty()) {
        PREFIX.store(p.as_ptr() as usize, Relaxed);
        PREFIX_LEN.store(p.len(), Relaxed);
    }
}

fn prefix() -> &'static [u8] {
    let (p, n) = (PREFIX.load(Relaxed), PREFIX_LEN.load(Relaxed));
    if p == 0 {
        return b"tidemalloc";
    }
    // SAFETY: the pointer and length came from a `&'static [u8]` into `environ`.
    unsafe { core::slice::from_raw_parts(p as *const u8, n) }
}

/// In a fork child: a dump that another thread of the parent was writing does not go on
/// here, so its flag must not block the child's dumps.
pub fn forget_dump_in_progress() {
    DUMPING.store(false, Relaxed);
}

/// Writes the profile to `path` (None: `<prefix>.<pid>.<seq>.pb.gz`).
pub fn dump(path: Option<&CStr>) -> bool {
    if !super::enabled() {
        os::set_errno(libc::ENOSYS);
        return false;
    }
    if DUMPING.swap(true, Acquire) {
        os::set_errno(libc::EBUSY);
        return false;
    }
    let ok = match path {
        Some(p) => write_profile(p),
        None => {
            let mut name = StackBuf::<4200>::new();
            let _ = name.write_str(core::str::from_utf8(prefix()).unwrap_or("tidemalloc"));
            let _ = write!(name, ".{}.{}.pb.gz\0", os::getpid(), SEQ.fetch_add(1, Relaxed));
            match CStr::from_bytes_with_nul(name.as_bytes()) {
                Ok(p) => write_profile(p),
                Err(_) => false,
            }
        }
    };
    DUMPING.store(false, Release);
    ok
}

fn write_profile(path: &CStr) -> bool {
    let Some((mut maps_buf, maps_len)) = read_maps() else { return false };
    let nmaps_max = maps_buf.bytes()[..maps_len].iter().filter(|&&c| c == b'\n').count() + 1;
    let Some(mut maps_scratch) = Scratch::new(nmaps_max * size_of::<Map>()) else { return false };
    let text: &[u8] = &maps_buf.bytes()[..maps_len];
    let maps = file_maps(text, maps_scratch.slice_of::<Map>(), true);

    let nb = table::count();
    // Locations: one per distinct address, found through an open-addressing set with room
    // for twice the frames there are (a bucket published since counts at full depth). Sized
    // by the frames, not the buckets: the set is touched all over, so it is resident whole.
    let (mut frames, mut seen) = (0, 0);
    table::for_each_below(nb, |_, b| {
        frames += b.depth();
        seen += 1;
    });
    frames += (nb - seen.min(nb)) * MAX_DEPTH;
    let loc_cap = (frames * 2).next_power_of_two().max(1024);
    let Some(mut loc_scratch) = Scratch::new(loc_cap * size_of::<usize>()) else { return false };
    let locs = &mut loc_scratch.slice_of::<usize>()[..loc_cap];
    // Functions: at most one per location.
    let Some(mut fn_scratch) = Scratch::new(loc_cap * (size_of::<Func>() + size_of::<u32>())) else { return false };
    let Some(mut names) = Scratch::new(loc_cap * 64) else { return false };
    let (slots, funcs) = fn_scratch.bytes().split_at_mut(loc_cap * size_of::<u32>());
    // SAFETY: page-aligned zeroed memory, split at a multiple of 8: valid u32s and Funcs.
    let (slots, funcs) = unsafe {
        (
            core::slice::from_raw_parts_mut(slots.as_mut_ptr().cast::<u32>(), loc_cap),
            core::slice::from_raw_parts_mut(funcs.as_mut_ptr().cast::<Func>(), funcs.len() / size_of::<Func>()),
        )
    };
    let mut fns = Functions { slots, funcs, n: 0, names: names.bytes(), names_len: 0 };

    // Samples, locations, and the functions with their names (at most the names buffer).
    let out_len = nb * 100 + frames * 12 + loc_cap * 40 + loc_cap * 80 + maps_len * 2 + DROP_FRAMES.len() + 4096;
    let Some(mut out) = Scratch::new(out_len) else { return false };
    let mut w = Writer::new(out.bytes());
    write_header(&mut w);
    write_samples(&mut w, locs, nb);
    let Some(mut symbolised) = Scratch::new(maps.len()) else { return false };
    let symbolised = symbolised.slice_of::<bool>();
    write_locations(&mut w, locs, maps, text, &mut fns, symbolised);
    write_mappings(&mut w, maps, symbolised);
    write_functions(&mut w, &fns, maps.len());
    write_strings(&mut w, maps, text, &fns);
    if w.overflowed() {
        os::set_errno(libc::ENOMEM);
        return false;
    }
    let body = w.len();
    let Some(mut gz) = Scratch::new(gzip::gzip_bound(body)) else { return false };
    let Some(mut hash) = Scratch::new((1 << 15) * size_of::<u32>()) else { return false };
    let Some(n) = gzip::gzip(&out.bytes()[..body], gz.bytes(), hash.slice_of::<u32>()) else {
        os::set_errno(libc::ENOMEM);
        return false;
    };
    os::write_file(path, &gz.bytes()[..n])
}

/// A function of the profile: where its symbol starts (mapping, file offset) and its
/// demangled name in the names buffer.
#[derive(Clone, Copy, Default)]
struct Func {
    map: u32,
    name_len: u32,
    start: u64,
    name_at: usize,
}

/// The profile's functions, found by (mapping, start) through an open-addressing index.
struct Functions<'a> {
    /// Function index + 1 per slot, 0 when empty.
    slots: &'a mut [u32],
    funcs: &'a mut [Func],
    n: usize,
    names: &'a mut [u8],
    names_len: usize,
}

impl Functions<'_> {
    /// The id (1-based) of the function at `start` in mapping `map`, entered with the
    /// demangled `raw` name if new; None when out of room.
    fn intern(&mut self, map: usize, start: u64, raw: &[u8]) -> Option<u64> {
        let mask = self.slots.len() - 1;
        let mut i = ((start ^ (map as u64) << 48).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24) as usize & mask;
        let mut probes = 0;
        loop {
            let v = self.slots[i] as usize;
            if v == 0 {
                break;
            }
            probes += 1;
            if probes > self.slots.len() {
                return None;
            }
            let f = &self.funcs[v - 1];
            if f.map as usize == map && f.start == start {
                return Some(v as u64);
            }
            i = (i + 1) & mask;
        }
        if self.n == self.funcs.len() {
            return None;
        }
        let mut name = StackBuf::<1024>::new();
        let _ = symbols::demangle(raw, &mut name);
        let name = name.as_bytes();
        let at = self.names_len;
        if at + name.len() > self.names.len() {
            return None;
        }
        self.names[at..at + name.len()].copy_from_slice(name);
        self.names_len += name.len();
        self.funcs[self.n] = Func { map: map as u32, name_len: name.len() as u32, start, name_at: at };
        self.n += 1;
        self.slots[i] = self.n as u32;
        Some(self.n as u64)
    }

    fn name(&self, f: &Func) -> &[u8] {
        &self.names[f.name_at..f.name_at + f.name_len as usize]
    }
}

fn write_header(w: &mut Writer) {
    for (ty, unit) in SAMPLE_TYPES {
        let m = w.begin(1);
        w.uint64(1, ty);
        w.uint64(2, unit);
        w.end(m);
    }
}

/// The location id of `addr` (1-based), entering it in the set if new. The set has room
/// for twice the frames of the buckets written; 0 if it is full all the same.
fn location_id(locs: &mut [usize], addr: usize) -> u64 {
    let mask = locs.len() - 1;
    let mut i = (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & mask;
    for _ in 0..locs.len() {
        if locs[i] == addr || locs[i] == 0 {
            locs[i] = addr;
            return i as u64 + 1;
        }
        i = (i + 1) & mask;
    }
    0
}

fn write_samples(w: &mut Writer, locs: &mut [usize], nb: usize) {
    let live_is_peak = super::live_is_peak();
    let mut frames = [0usize; MAX_DEPTH];
    let mut ids = [0u64; MAX_DEPTH];
    table::for_each_below(nb, |_, b| {
        let depth = b.frames(&mut frames);
        let mut n = 0;
        for &f in &frames[..depth] {
            ids[n] = location_id(locs, f.max(1));
            n += (ids[n] != 0) as usize;
        }
        let depth = n;
        let objs = |v: i64| (v.max(0) as u64 + OBJ_ONE / 2) / OBJ_ONE;
        let (live_o, live_b) = (b.live_objs.load(Relaxed), b.live_bytes.load(Relaxed));
        let (peak_o, peak_b) =
            if live_is_peak { (live_o, live_b) } else { (b.peak_objs.load(Relaxed), b.peak_bytes.load(Relaxed)) };
        let values = [
            objs(b.alloc_objs.load(Relaxed) as i64) as i64,
            b.alloc_bytes.load(Relaxed) as i64,
            objs(live_o) as i64,
            live_b.max(0),
            objs(peak_o) as i64,
            peak_b.max(0),
        ];
        let m = w.begin(2);
        w.packed_uint64(1, &ids[..depth]);
        w.packed_int64(2, &values);
        w.end(m);
    });
}

fn write_mappings(w: &mut Writer, maps: &[Map], symbolised: &[bool]) {
    for (i, m) in maps.iter().enumerate() {
        let e = w.begin(3);
        w.uint64(1, i as u64 + 1);
        w.uint64(2, m.start as u64);
        w.uint64(3, m.end as u64);
        w.uint64(4, m.offset);
        w.uint64(5, (STRINGS.len() + i) as u64);
        // has_functions: pprof keeps our names (`-symbolize=force` redoes them, with lines).
        w.uint64(7, symbolised.get(i).copied().unwrap_or(false) as u64);
        w.end(e);
    }
}

/// Writes every location, naming its function from the symbol tables of its mapping's file
/// where they have it (so the profile reads the same without the binaries, and whatever
/// pprof makes of the binary's layout). Locations go in address order, so one file is open
/// at a time, with a sorted index of its functions (a binary search per location).
fn write_locations(w: &mut Writer, locs: &[usize], maps: &[Map], text: &[u8], fns: &mut Functions, done: &mut [bool]) {
    let Some(mut order_buf) = Scratch::new(locs.len() * size_of::<(usize, usize)>()) else { return };
    let order = order_buf.slice_of::<(usize, usize)>();
    let mut n = 0;
    for (i, &addr) in locs.iter().enumerate() {
        if addr != 0 {
            order[n] = (addr, i + 1);
            n += 1;
        }
    }
    let order = &mut order[..n];
    order.sort_unstable();
    let mut open: Option<(usize, Indexed)> = None;
    for &(addr, id) in order.iter() {
        let e = w.begin(4);
        w.uint64(1, id as u64);
        if let Some((m, map)) = map_of(maps, addr) {
            w.uint64(2, m as u64 + 1);
            if open.as_ref().is_none_or(|o| o.0 != m) {
                drop(open.take()); // unmaps the previous file and its index first
                open = Indexed::open(map.path(text)).map(|f| (m, f));
                done[m] = open.is_some();
            }
            let file_off = map.file_offset(addr);
            if let Some((_, file)) = &open
                && let Some((raw, off)) = file.lookup(file_off)
                && let Some(fid) = fns.intern(m, file_off - off, raw)
            {
                let line = w.begin(4);
                w.uint64(1, fid);
                w.end(line);
            }
        }
        w.uint64(3, addr as u64);
        w.end(e);
    }
}

fn write_functions(w: &mut Writer, fns: &Functions, nmaps: usize) {
    for (i, _) in fns.funcs[..fns.n].iter().enumerate() {
        let e = w.begin(5);
        w.uint64(1, i as u64 + 1);
        let name = (STRINGS.len() + nmaps + i) as u64;
        w.uint64(2, name);
        w.uint64(3, name);
        w.end(e);
    }
}

fn write_strings(w: &mut Writer, maps: &[Map], text: &[u8], fns: &Functions) {
    for s in STRINGS {
        w.bytes(6, s.as_bytes());
    }
    for m in maps {
        w.bytes(6, m.path(text));
    }
    for f in &fns.funcs[..fns.n] {
        w.bytes(6, fns.name(f));
    }
    w.uint64(7, S_DROP);
    w.int64(9, os::realtime_ns());
    let pt = w.begin(11);
    w.uint64(1, S_SPACE);
    w.uint64(2, S_BYTES);
    w.end(pt);
    w.int64(12, super::rate() as i64);
    w.uint64(14, S_INUSE_SPACE);
}
