//! Memory for the profiler's passes over its data (dumps, reports, symbol lookups): anonymous
//! mappings from `os`, unmapped when dropped, never the program's malloc; and what those
//! passes read with it: the process's mappings and its objects' symbol tables.

use super::symbols::{self, Elf, IndexedSym};
use crate::msg::StackBuf;
use crate::os;
use core::ffi::CStr;
use core::fmt::Write as _;

/// A scratch mapping, unmapped when dropped.
pub struct Scratch {
    ptr: *mut u8,
    len: usize,
}

impl Scratch {
    pub fn new(len: usize) -> Option<Scratch> {
        let len = len.max(1).next_multiple_of(os::PAGE_SIZE);
        let ptr = os::mmap_anon(len);
        if ptr.is_null() { None } else { Some(Scratch { ptr, len }) }
    }
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is ours, `len` bytes long, and borrowed through `self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// The mapping as `T`s, read only (zeroed memory must be a valid `T`).
    pub fn slice<T: Copy>(&self) -> &[T] {
        // SAFETY: as in `slice_of`, shared.
        unsafe { core::slice::from_raw_parts(self.ptr.cast::<T>(), self.len / size_of::<T>()) }
    }

    /// The mapping as `T`s (zeroed memory must be a valid `T`).
    pub fn slice_of<T: Copy>(&mut self) -> &mut [T] {
        // SAFETY: as above; page-aligned memory is aligned for any T we use (integers,
        // plain structs of them), whose all-zero pattern is valid.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.cast::<T>(), self.len / size_of::<T>()) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more.
        unsafe { os::munmap(self.ptr, self.len) };
    }
}

/// `/proc/self/maps` read whole into a scratch mapping.
pub fn read_maps() -> Option<(Scratch, usize)> {
    let mut len = 256 << 10;
    while len <= 64 << 20 {
        let mut s = Scratch::new(len)?;
        if let Some(n) = symbols::read_file(c"/proc/self/maps", s.bytes()) {
            return Some((s, n));
        }
        len *= 4;
    }
    None
}

/// A file-backed mapping of the process, its path a range of the maps text.
#[derive(Clone, Copy, Default)]
pub struct Map {
    pub start: usize,
    pub end: usize,
    /// File offset of `start`.
    pub offset: u64,
    path_at: usize,
    path_len: usize,
}

impl Map {
    /// The mapped file's path (in `text`, the maps text it was read from).
    pub fn path<'t>(&self, text: &'t [u8]) -> &'t [u8] {
        &text[self.path_at..self.path_at + self.path_len]
    }

    /// Where in the maps text the path lies: the same number for the same line.
    pub fn key(&self) -> usize {
        self.path_at
    }

    pub fn contains(&self, addr: usize) -> bool {
        (self.start..self.end).contains(&addr)
    }

    pub fn file_offset(&self, addr: usize) -> u64 {
        (addr - self.start) as u64 + self.offset
    }
}

/// The file-backed mappings of the maps `text` (only executable ones with `exec_only`), in
/// address order, into `out` (which needs one entry per line at most).
pub fn file_maps<'a>(text: &[u8], out: &'a mut [Map], exec_only: bool) -> &'a [Map] {
    let mut n = 0;
    let mut at = 0;
    for line in text.split(|&c| c == b'\n') {
        let line_at = at;
        at += line.len() + 1;
        let Some(e) = symbols::parse_maps_line(line) else { continue };
        if (exec_only && e.perms[2] != b'x') || e.file_path().first() != Some(&b'/') || n == out.len() {
            continue;
        }
        let path_at = line_at + (e.path.as_ptr() as usize - line.as_ptr() as usize);
        out[n] = Map { start: e.start, end: e.end, offset: e.offset, path_at, path_len: e.file_path().len() };
        n += 1;
    }
    &out[..n]
}

/// The mapping of `maps` (address order) holding `addr`.
pub fn map_of(maps: &[Map], addr: usize) -> Option<(usize, &Map)> {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).filter(|m| m.contains(addr)).map(|m| (i, m))
}

/// An object file opened with a sorted index of its functions.
pub struct Indexed {
    elf: Elf,
    index: Scratch,
    len: usize,
}

impl Indexed {
    pub fn open(path: &[u8]) -> Option<Indexed> {
        let mut c = StackBuf::<4100>::new();
        c.write_str(core::str::from_utf8(path).ok()?).ok()?;
        c.write_str("\0").ok()?;
        let elf = Elf::open(CStr::from_bytes_with_nul(c.as_bytes()).ok()?)?;
        let mut index = Scratch::new(elf.index_bound().max(1) * size_of::<IndexedSym>())?;
        let len = elf.index_functions(index.slice_of());
        Some(Indexed { elf, index, len })
    }

    /// The (raw) name of the function at file offset `file_off`, and the offset into it.
    pub fn lookup(&self, file_off: u64) -> Option<(&[u8], u64)> {
        let vaddr = self.elf.file_offset_to_vaddr(file_off)?;
        self.elf.lookup_indexed(&self.index.slice::<IndexedSym>()[..self.len], vaddr)
    }
}
