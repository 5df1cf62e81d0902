//! The leak report: sampled blocks still live, grouped by stack, biggest first, with symbol
//! names from each object's symbol tables (`.symtab`, else `.dynsym`). At a rate of 1 every
//! allocation is sampled and the counts are exact.

use super::scratch::{Indexed, Map, Scratch, file_maps, map_of, read_maps};
use super::stack::MAX_DEPTH;
use super::symbols;
use super::table::{self, OBJ_ONE};
use crate::msg::StackBuf;
use crate::os;
use core::fmt::Write as _;
use core::sync::atomic::Ordering::Relaxed;

/// Stacks printed at most (the rest are summed up in one line).
const MAX_REPORTED: usize = 100;
/// Objects whose symbol tables are kept open while the report is written.
const ELF_CACHE: usize = 16;

struct Symbolizer<'a> {
    text: &'a [u8],
    maps: &'a [Map],
    /// Open files by their mapping's key, each with its function index.
    files: [Option<(usize, Indexed)>; ELF_CACHE],
    next_evict: usize,
}

impl Symbolizer<'_> {
    /// Writes `name+0xoff (path)` for `addr`, or what is known of it; true if the function
    /// is the allocator's.
    fn describe(&mut self, addr: usize, out: &mut StackBuf<1024>) -> bool {
        let Some((_, &map)) = map_of(self.maps, addr) else { return false };
        let file_off = map.file_offset(addr);
        let mut name = StackBuf::<512>::new();
        let mut fn_off = 0;
        if let Some(file) = self.file(&map)
            && let Some((raw, off)) = file.lookup(file_off)
        {
            let _ = symbols::demangle(raw, &mut name);
            fn_off = off;
        }
        let name = core::str::from_utf8(name.as_bytes()).unwrap_or("?");
        let path = core::str::from_utf8(map.path(self.text)).unwrap_or("?");
        if name.is_empty() {
            let _ = write!(out, "{path}+{file_off:#x}");
        } else {
            let _ = write!(out, "{name}+{fn_off:#x} ({path})");
        }
        !name.is_empty() && super::is_allocator_frame(name)
    }

    fn file(&mut self, map: &Map) -> Option<&Indexed> {
        let i = match self.files.iter().position(|f| matches!(f, Some((k, _)) if *k == map.key())) {
            Some(i) => i,
            None => {
                let file = Indexed::open(map.path(self.text))?;
                let i = self.next_evict;
                self.next_evict = (i + 1) % ELF_CACHE;
                self.files[i] = Some((map.key(), file));
                i
            }
        };
        self.files[i].as_ref().map(|(_, f)| f)
    }
}

/// Writes the report to `fd`.
pub fn report(fd: i32) {
    let Some((mut maps_buf, maps_len)) = read_maps() else { return };
    let lines = maps_buf.bytes()[..maps_len].iter().filter(|&&c| c == b'\n').count() + 1;
    let Some(mut maps_scratch) = Scratch::new(lines * size_of::<Map>()) else { return };
    let text: &[u8] = &maps_buf.bytes()[..maps_len];
    let maps = file_maps(text, maps_scratch.slice_of(), false);
    let Some(mut ids_scratch) = Scratch::new(table::count() * size_of::<u32>()) else { return };
    let ids = ids_scratch.slice_of::<u32>();
    let mut n = 0;
    let (mut total_objs, mut total_bytes) = (0u64, 0u64);
    table::for_each(|id, b| {
        let objs = b.live_objs.load(Relaxed);
        if objs > 0 && n < ids.len() {
            ids[n] = id;
            n += 1;
            total_objs += objs as u64;
            total_bytes += b.live_bytes.load(Relaxed).max(0) as u64;
        }
    });
    let ids = &mut ids[..n];
    let live_bytes = |id: &u32| table::bucket(*id).map_or(0, |b| b.live_bytes.load(Relaxed));
    ids.sort_unstable_by_key(|id| core::cmp::Reverse(live_bytes(id)));
    let exact = super::rate() <= 1;
    let mut head = StackBuf::<512>::new();
    let _ = writeln!(
        head,
        "tidemalloc: leak report: {} blocks, {} bytes still live, from {} stack{} ({})",
        round_objs(total_objs),
        total_bytes,
        n,
        if n == 1 { "" } else { "s" },
        if exact { "every allocation recorded: exact" } else { "estimated from samples" }
    );
    os::write_fd(fd, head.as_bytes());
    let mut sym = Symbolizer { text, maps, files: [const { None }; ELF_CACHE], next_evict: 0 };
    for (rank, &id) in ids.iter().enumerate().take(MAX_REPORTED) {
        report_stack(fd, rank, id, &mut sym);
    }
    if n > MAX_REPORTED {
        let mut b = StackBuf::<128>::new();
        let _ = writeln!(b, "tidemalloc: ... and {} more stacks", n - MAX_REPORTED);
        os::write_fd(fd, b.as_bytes());
    }
}

fn round_objs(v: u64) -> u64 {
    (v + OBJ_ONE / 2) / OBJ_ONE
}

fn report_stack(fd: i32, rank: usize, id: u32, sym: &mut Symbolizer) {
    let Some(b) = table::bucket(id) else { return };
    let mut frames = [0usize; MAX_DEPTH];
    let depth = b.frames(&mut frames);
    let mut line = StackBuf::<256>::new();
    let _ = writeln!(
        line,
        "tidemalloc: leak #{}: {} blocks, {} bytes, allocated at:",
        rank + 1,
        round_objs(b.live_objs.load(Relaxed).max(0) as u64),
        b.live_bytes.load(Relaxed)
    );
    os::write_fd(fd, line.as_bytes());
    let mut in_allocator = true;
    let mut shown = 0;
    for &addr in &frames[..depth] {
        let mut text = StackBuf::<1024>::new();
        let ours = sym.describe(addr, &mut text);
        in_allocator &= ours;
        if in_allocator {
            continue;
        }
        let mut l = StackBuf::<1200>::new();
        let _ = writeln!(l, "    #{shown} {addr:#x} {}", core::str::from_utf8(text.as_bytes()).unwrap_or("?"));
        os::write_fd(fd, l.as_bytes());
        shown += 1;
    }
    if depth == 0 {
        os::write_fd(fd, b"    (stack table full: stack not recorded)\n");
    }
}
