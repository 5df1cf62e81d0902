//! Memory for the profiler's passes over its data (dumps, reports, symbol lookups): anonymous
//! mappings from `os`, unmapped when dropped, never the program's malloc.

use super::symbols;
use crate::os;

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
