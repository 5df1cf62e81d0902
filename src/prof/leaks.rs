//! The leak report: sampled blocks still live, grouped by stack, biggest first, with symbol
//! names from each object's symbol tables (`.symtab`, else `.dynsym`). At a rate of 1 every
//! allocation is sampled and the counts are exact.

use super::scratch::{Scratch, read_maps};
use super::stack::MAX_DEPTH;
use super::symbols::{self, Elf};
use super::table::{self, OBJ_ONE};
use crate::msg::StackBuf;
use crate::os;
use core::ffi::CStr;
use core::fmt::Write as _;
use core::sync::atomic::Ordering::Relaxed;

/// Stacks printed at most (the rest are summed up in one line).
const MAX_REPORTED: usize = 100;
/// Objects whose symbol tables are kept open while the report is written.
const ELF_CACHE: usize = 16;

struct Symbolizer<'a> {
    text: &'a [u8],
    maps: &'a [(usize, usize, u64, usize, usize)],
    /// Open files by the position of their path in the maps text, each with its function
    /// index and the index's length.
    elves: [Option<(usize, Elf, Scratch, usize)>; ELF_CACHE],
    next_evict: usize,
}

impl<'a> Symbolizer<'a> {
    /// Writes `name+0xoff (path)` for `addr`, or what is known of it.
    fn describe(&mut self, addr: usize, out: &mut StackBuf<1024>) -> bool {
        let i = self.maps.partition_point(|m| m.1 <= addr);
        let Some(&(start, end, offset, path_at, path_len)) = self.maps.get(i) else { return false };
        if addr < start || addr >= end {
            return false;
        }
        let path = &self.text[path_at..path_at + path_len];
        let file_off = (addr - start) as u64 + offset;
        let mut name = StackBuf::<512>::new();
        let mut fn_off = 0;
        if let Some((elf, index)) = self.elf(path_at, path)
            && let Some((raw, off)) = elf.file_offset_to_vaddr(file_off).and_then(|v| elf.lookup_indexed(index, v))
        {
            let _ = symbols::demangle(raw, &mut name);
            fn_off = off;
        }
        let name = core::str::from_utf8(name.as_bytes()).unwrap_or("?");
        let path = core::str::from_utf8(path).unwrap_or("?");
        if name.is_empty() {
            let _ = write!(out, "{path}+{file_off:#x}");
        } else {
            let _ = write!(out, "{name}+{fn_off:#x} ({path})");
        }
        !name.is_empty() && super::is_allocator_frame(name)
    }

    fn elf(&mut self, path_at: usize, path: &[u8]) -> Option<(&Elf, &[symbols::IndexedSym])> {
        let hit = self.elves.iter().position(|e| matches!(e, Some((at, ..)) if *at == path_at));
        let i = match hit {
            Some(i) => i,
            None => {
                let mut c = StackBuf::<4100>::new();
                let _ = c.write_str(core::str::from_utf8(path).ok()?);
                let _ = c.write_str("\0");
                let elf = Elf::open(CStr::from_bytes_with_nul(c.as_bytes()).ok()?)?;
                let mut index = Scratch::new(elf.index_bound().max(1) * size_of::<symbols::IndexedSym>())?;
                let n = elf.index_functions(index.slice_of());
                let i = self.next_evict;
                self.next_evict = (i + 1) % ELF_CACHE;
                self.elves[i] = Some((path_at, elf, index, n));
                i
            }
        };
        let (_, elf, index, n) = self.elves[i].as_mut()?;
        let index = &index.slice_of::<symbols::IndexedSym>()[..*n];
        Some((&*elf, index))
    }
}

/// Writes the report to `fd`.
pub fn report(fd: i32) {
    let Some((mut maps_buf, maps_len)) = read_maps() else { return };
    let lines = maps_buf.bytes()[..maps_len].iter().filter(|&&c| c == b'\n').count() + 1;
    let Some(mut maps_scratch) = Scratch::new(lines * size_of::<(usize, usize, u64, usize, usize)>()) else {
        return;
    };
    let text: &[u8] = &maps_buf.bytes()[..maps_len];
    let maps = file_maps(text, maps_scratch.slice_of());
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
    let mut sym = Symbolizer { text, maps, elves: [const { None }; ELF_CACHE], next_evict: 0 };
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

/// File-backed mappings of `text` as (start, end, file offset, path position, path length),
/// in address order.
fn file_maps<'a>(
    text: &[u8],
    out: &'a mut [(usize, usize, u64, usize, usize)],
) -> &'a [(usize, usize, u64, usize, usize)] {
    let mut n = 0;
    let mut at = 0;
    for line in text.split(|&c| c == b'\n') {
        let line_at = at;
        at += line.len() + 1;
        let Some(e) = symbols::parse_maps_line(line) else { continue };
        if e.file_path().first() != Some(&b'/') || n == out.len() {
            continue;
        }
        let path_at = line_at + (e.path.as_ptr() as usize - line.as_ptr() as usize);
        out[n] = (e.start, e.end, e.offset, path_at, e.file_path().len());
        n += 1;
    }
    &out[..n]
}
