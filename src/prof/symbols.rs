//! Address → function name without malloc: `/proc/self/maps` parsing, an ELF64 symbol-table
//! reader over a read-only mapping of the file, and a Rust legacy-mangling demangler.
//!
//! Usable at exit or in a signal handler: the only calls made are the syscalls `open`,
//! `fstat`, `mmap`, `munmap`, `read` and `close`, and nothing allocates or locks. Files are
//! never trusted: every offset and size read from an ELF file is bounds-checked, and bad data
//! gives `None`, never a panic.
//!
//! To symbolize `addr`: find its [`MapsEntry`] (e.g. [`find_mapping`] over a buffer filled by
//! [`read_file`] from `/proc/self/maps`), open the mapped file with [`Elf::open`], and look up
//! [`MapsEntry::file_offset`] with [`Elf::symbol_for_file_offset`]; print with [`demangle`].

use core::ffi::CStr;
use core::fmt::{self, Write};

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapsEntry<'a> {
    /// First address of the mapping.
    pub start: usize,
    /// One past its last address.
    pub end: usize,
    /// File offset mapped at `start`.
    pub offset: u64,
    /// `r`/`-`, `w`/`-`, `x`/`-`, `p`/`s`.
    pub perms: [u8; 4],
    /// Exactly as the kernel prints it: empty for anonymous memory, `[heap]`, `[vdso]` and the
    /// like for special mappings, and with a " (deleted)" suffix for unlinked files.
    pub path: &'a [u8],
}

const DELETED: &[u8] = b" (deleted)";

impl MapsEntry<'_> {
    /// Whether `addr` is inside the mapping.
    pub fn contains(&self, addr: usize) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether the mapping is executable.
    pub fn is_exec(&self) -> bool {
        self.perms[2] == b'x'
    }

    /// Whether the mapped file was deleted (or replaced) since it was mapped.
    pub fn is_deleted(&self) -> bool {
        self.path.ends_with(DELETED)
    }

    /// The file's path without the " (deleted)" suffix; empty for anonymous mappings. Names in
    /// brackets are not files.
    pub fn file_path(&self) -> &[u8] {
        self.path.strip_suffix(DELETED).unwrap_or(self.path)
    }

    /// The offset in the mapped file of `addr`, which is what [`Elf::symbol_for_file_offset`]
    /// takes; `None` when `addr` is outside the mapping.
    pub fn file_offset(&self, addr: usize) -> Option<u64> {
        if !self.contains(addr) {
            return None;
        }
        self.offset.checked_add((addr - self.start) as u64)
    }
}

/// Parses one line of `/proc/self/maps` (a trailing newline is allowed):
/// `start-end perms offset major:minor inode [path]`, hexadecimal except the inode.
pub fn parse_maps_line(line: &[u8]) -> Option<MapsEntry<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let (start, rest) = hex(line)?;
    let rest = rest.strip_prefix(b"-")?;
    let (end, rest) = hex(rest)?;
    let rest = rest.strip_prefix(b" ")?;
    let perms: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let rest = rest[4..].strip_prefix(b" ")?;
    let (offset, rest) = hex(rest)?;
    let rest = rest.strip_prefix(b" ")?;
    let (_major, rest) = hex(rest)?;
    let rest = rest.strip_prefix(b":")?;
    let (_minor, rest) = hex(rest)?;
    let rest = rest.strip_prefix(b" ")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let rest = &rest[digits..];
    // The kernel pads with spaces to a column before the path; the path itself may contain
    // spaces, so everything after the padding is the path.
    let path = match rest.iter().position(|&b| b != b' ') {
        Some(i) if i > 0 => &rest[i..],
        Some(_) => return None,
        None => &[][..],
    };
    let start = usize::try_from(start).ok()?;
    let end = usize::try_from(end).ok()?;
    if start > end {
        return None;
    }
    Some(MapsEntry { start, end, offset, perms, path })
}

/// Leading hexadecimal number (1 to 16 digits) and what follows it.
fn hex(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        v = v.checked_mul(16)?.checked_add(d as u64)?;
        n += 1;
    }
    if n == 0 { None } else { Some((v, &s[n..])) }
}

/// The mapping containing `addr` in the text of a maps file.
pub fn find_mapping(maps: &[u8], addr: usize) -> Option<MapsEntry<'_>> {
    maps.split(|&b| b == b'\n').filter_map(parse_maps_line).find(|e| e.contains(addr))
}

fn errno() -> i32 {
    // SAFETY: __errno_location always returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Reads all of the file at `path` into `buf` (looping until end of file, as `/proc` files
/// come in pieces and report size 0); returns the length. `None` if the file cannot be read
/// or does not fit in `buf`.
pub fn read_file(path: &CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let r = read_all(fd, buf);
    // SAFETY: `fd` was opened above and is closed exactly once.
    unsafe { libc::close(fd) };
    r
}

fn read_all(fd: i32, buf: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    loop {
        if n == buf.len() {
            // Full: it fits only if the file ends exactly here.
            let mut probe = [0u8; 1];
            return if read_some(fd, &mut probe)? == 0 { Some(n) } else { None };
        }
        match read_some(fd, &mut buf[n..])? {
            0 => return Some(n),
            k => n += k,
        }
    }
}

/// One `read`, retried on EINTR.
fn read_some(fd: i32, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Some((r as usize).min(buf.len()));
        }
        if errno() != libc::EINTR {
            return None;
        }
    }
}

const PT_LOAD: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHT_DYNSYM: u32 = 11;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const STB_LOCAL: u8 = 0;
const STB_GLOBAL: u8 = 1;
const SHN_LORESERVE: u16 = 0xff00;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// `count` table entries of `entsize` bytes at `off` lie inside a file of `len` bytes.
fn table_fits(len: usize, off: u64, entsize: usize, count: usize) -> bool {
    let Ok(off) = usize::try_from(off) else { return false };
    entsize.checked_mul(count).and_then(|n| n.checked_add(off)).is_some_and(|end| end <= len)
}

/// A section header, the fields used.
#[derive(Clone, Copy)]
struct Section {
    ty: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

/// A symbol that matched, with what ranks aliases of one address.
#[derive(Clone, Copy)]
struct Found<'a> {
    name: &'a [u8],
    value: u64,
    size: u64,
    bind: u8,
}

impl Found<'_> {
    /// Among symbols that all cover the address: the innermost (highest start), then the
    /// public-looking name (`malloc` over `__libc_malloc`: fewer leading underscores), then
    /// global over weak over local binding. Ties keep the first seen.
    fn better_than(&self, o: &Found<'_>) -> bool {
        if self.value != o.value {
            return self.value > o.value;
        }
        let us = |n: &[u8]| n.iter().take_while(|&&b| b == b'_').count();
        if us(self.name) != us(o.name) {
            return us(self.name) < us(o.name);
        }
        let rank = |b: u8| match b {
            STB_GLOBAL => 0,
            STB_LOCAL => 2,
            _ => 1,
        };
        rank(self.bind) < rank(o.bind)
    }
}

/// A function symbol in an index (see [`Elf::index_functions`]): zeroed memory is a valid
/// (empty) entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexedSym {
    value: u64,
    size: u64,
    /// Offset of the name in the string table of section `table`.
    name: u32,
    table: u16,
    shndx: u16,
    bind: u8,
}

/// An ELF64 little-endian file mapped read-only; unmapped on drop.
pub struct Elf {
    base: *const u8,
    len: usize,
    phoff: usize,
    phnum: usize,
    phentsize: usize,
    shoff: usize,
    shnum: usize,
    shentsize: usize,
}

// SAFETY: the mapping is private, read-only and owned by the `Elf`; nothing mutates it through
// the `Elf`, so moving it to or sharing it with another thread is sound.
unsafe impl Send for Elf {}
// SAFETY: as above, all access is reads of immutable memory.
unsafe impl Sync for Elf {}

impl Drop for Elf {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `open`, unmapped only here.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

impl Elf {
    /// Maps the file at `path` and validates its ELF header and the bounds of its program and
    /// section header tables. `None` for anything that is not a well-formed ELF64 LE file.
    pub fn open(path: &CStr) -> Option<Elf> {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let elf = Self::map_fd(fd);
        // SAFETY: `fd` was opened above and is closed exactly once; the mapping outlives it.
        unsafe { libc::close(fd) };
        let mut elf = elf?;
        elf.parse_header().then_some(elf)
    }

    fn map_fd(fd: i32) -> Option<Elf> {
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: `st` is a valid, writable `stat`.
        if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
            return None;
        }
        let len = usize::try_from(st.st_size).ok()?;
        if len < EHDR_SIZE {
            return None;
        }
        // SAFETY: a fresh private read-only mapping of `len` bytes of a regular file; the
        // kernel picks the address, so no existing memory is affected.
        let p = unsafe { libc::mmap(core::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0) };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Elf { base: p as *const u8, len, phoff: 0, phnum: 0, phentsize: 0, shoff: 0, shnum: 0, shentsize: 0 })
    }

    /// The whole file.
    fn data(&self) -> &[u8] {
        // SAFETY: `base` is a live read-only mapping of `len` bytes for as long as `self`.
        // Pages past a later truncation of the file would fault (SIGBUS): a known limit of
        // reading files through mmap, which no check here can rule out.
        unsafe { core::slice::from_raw_parts(self.base, self.len) }
    }

    fn parse_header(&mut self) -> bool {
        let d = self.data();
        // Magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT.
        if d.get(..7) != Some(&[0x7f, b'E', b'L', b'F', 2, 1, 1][..]) {
            return false;
        }
        let (Some(phoff), Some(shoff), Some(phentsize), Some(phnum), Some(shentsize), Some(shnum)) =
            (u64_at(d, 32), u64_at(d, 40), u16_at(d, 54), u16_at(d, 56), u16_at(d, 58), u16_at(d, 60))
        else {
            return false;
        };
        let (phentsize, mut phnum, shentsize, mut shnum) =
            (phentsize as usize, phnum as usize, shentsize as usize, shnum as usize);
        if shoff != 0 && shentsize < SHDR_SIZE {
            return false;
        }
        // Extended numbering: counts too big for the header live in section 0.
        if shoff != 0 && table_fits(self.len, shoff, shentsize, 1) {
            let s0 = shoff as usize;
            if shnum == 0 {
                shnum = u64_at(d, s0 + 32).and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
            }
            if phnum == 0xffff {
                phnum = u32_at(d, s0 + 44).map_or(0, |n| n as usize);
            }
        }
        if shoff == 0 {
            shnum = 0;
        }
        if phoff == 0 {
            phnum = 0;
        }
        if (phnum > 0 && (phentsize < PHDR_SIZE || !table_fits(self.len, phoff, phentsize, phnum)))
            || (shnum > 0 && !table_fits(self.len, shoff, shentsize, shnum))
        {
            return false;
        }
        // Fits in the file, so these casts are lossless.
        (self.phoff, self.phnum, self.phentsize) = (phoff as usize, phnum, phentsize);
        (self.shoff, self.shnum, self.shentsize) = (shoff as usize, shnum, shentsize);
        true
    }

    fn section(&self, i: usize) -> Option<Section> {
        if i >= self.shnum {
            return None;
        }
        let d = self.data();
        let o = self.shoff + i * self.shentsize;
        Some(Section {
            ty: u32_at(d, o + 4)?,
            flags: u64_at(d, o + 8)?,
            addr: u64_at(d, o + 16)?,
            offset: u64_at(d, o + 24)?,
            size: u64_at(d, o + 32)?,
            link: u32_at(d, o + 40)?,
            entsize: u64_at(d, o + 56)?,
        })
    }

    /// A section's bytes in the file, if they are all inside it.
    fn section_data(&self, s: &Section) -> Option<&[u8]> {
        if s.ty == SHT_NOBITS {
            return None;
        }
        let off = usize::try_from(s.offset).ok()?;
        let size = usize::try_from(s.size).ok()?;
        self.data().get(off..off.checked_add(size)?)
    }

    /// The virtual address (as linked, before load bias) that file offset `off` is loaded at,
    /// from the `PT_LOAD` segment whose file bytes contain it.
    pub fn file_offset_to_vaddr(&self, off: u64) -> Option<u64> {
        let d = self.data();
        (0..self.phnum).find_map(|i| {
            let o = self.phoff + i * self.phentsize;
            let (ty, p_offset, p_vaddr, p_filesz) =
                (u32_at(d, o)?, u64_at(d, o + 8)?, u64_at(d, o + 16)?, u64_at(d, o + 32)?);
            let delta = off.checked_sub(p_offset)?;
            (ty == PT_LOAD && delta < p_filesz).then(|| p_vaddr.checked_add(delta))?
        })
    }

    /// The function containing file offset `file_off` (an address's
    /// [`MapsEntry::file_offset`]): its raw (mangled) name and the offset into it.
    pub fn symbol_for_file_offset(&self, file_off: u64) -> Option<(&[u8], u64)> {
        self.symbol_for_vaddr(self.file_offset_to_vaddr(file_off)?)
    }

    /// The function containing link-time virtual address `vaddr`, from `.symtab` if that has
    /// one, else from `.dynsym` (all a stripped file keeps).
    ///
    /// Functions are `STT_FUNC` and `STT_GNU_IFUNC` symbols, plus `STT_NOTYPE` symbols with a
    /// size in an executable section (hand-written assembly without `.type`). A function
    /// covers `[st_value, st_value + st_size)`; a function of size 0 (also from assembly)
    /// covers up to the next function of its section, when `vaddr` lies in that section and
    /// no sized function matches.
    pub fn symbol_for_vaddr(&self, vaddr: u64) -> Option<(&[u8], u64)> {
        // Index of the section holding `vaddr`, for the size-0 fallback.
        let home = (0..self.shnum).find(|&i| {
            self.section(i).is_some_and(|s| {
                s.flags & SHF_ALLOC != 0 && s.ty != SHT_NOBITS && vaddr >= s.addr && vaddr - s.addr < s.size
            })
        });
        for ty in [SHT_SYMTAB, SHT_DYNSYM] {
            for i in 0..self.shnum {
                let Some(s) = self.section(i).filter(|s| s.ty == ty) else { continue };
                if let Some(f) = self.search(&s, vaddr, home) {
                    return Some((f.name, vaddr - f.value));
                }
            }
        }
        None
    }

    /// Entries an index of this file's functions may need (see [`Elf::index_functions`]).
    pub fn index_bound(&self) -> usize {
        let mut n = 0;
        for i in 0..self.shnum {
            if let Some(s) = self.section(i).filter(|s| s.ty == SHT_SYMTAB || s.ty == SHT_DYNSYM) {
                n += usize::try_from(s.size).unwrap_or(0) / SYM_SIZE;
            }
        }
        n
    }

    /// Fills `out` with the function symbols (as [`Elf::symbol_for_vaddr`] counts them) of
    /// `.symtab`, or of `.dynsym` when there is no `.symtab`, sorted by start, for
    /// [`Elf::lookup_indexed`]: a binary search instead of a pass over the table per lookup.
    /// Returns the number of entries (at most `out.len()`).
    pub fn index_functions(&self, out: &mut [IndexedSym]) -> usize {
        let mut n = 0;
        for ty in [SHT_SYMTAB, SHT_DYNSYM] {
            for i in 0..self.shnum {
                let Some(s) = self.section(i).filter(|s| s.ty == ty) else { continue };
                n += self.index_table(&s, i, &mut out[n..]);
            }
            if n > 0 {
                break;
            }
        }
        let out = &mut out[..n];
        out.sort_unstable_by_key(|e| e.value);
        n
    }

    fn index_table(&self, symtab: &Section, table: usize, out: &mut [IndexedSym]) -> usize {
        let Some(syms) = self.section_data(symtab) else { return 0 };
        let entsize = match usize::try_from(symtab.entsize) {
            Ok(0) => SYM_SIZE,
            Ok(n) if n >= SYM_SIZE => n,
            _ => return 0,
        };
        let mut n = 0;
        for sym in syms.chunks_exact(entsize) {
            if n == out.len() {
                break;
            }
            let (Some(name), Some(value), Some(size), Some(shndx)) =
                (u32_at(sym, 0), u64_at(sym, 8), u64_at(sym, 16), u16_at(sym, 6))
            else {
                continue;
            };
            let (info, ty) = (sym[4], sym[4] & 0xf);
            if shndx == 0 || shndx >= SHN_LORESERVE || name == 0 {
                continue;
            }
            let eligible = match ty {
                STT_FUNC | STT_GNU_IFUNC => true,
                STT_NOTYPE => size > 0 && self.section(shndx as usize).is_some_and(|s| s.flags & SHF_EXECINSTR != 0),
                _ => false,
            };
            if eligible {
                out[n] = IndexedSym { value, size, name, table: table as u16, shndx, bind: info >> 4 };
                n += 1;
            }
        }
        n
    }

    /// [`Elf::symbol_for_vaddr`] through an index from [`Elf::index_functions`] (sized
    /// functions containing `vaddr`, the innermost preferred; else a size-0 function of the
    /// same section right below it).
    pub fn lookup_indexed(&self, index: &[IndexedSym], vaddr: u64) -> Option<(&[u8], u64)> {
        let end = index.partition_point(|e| e.value <= vaddr);
        let mut best: Option<Found<'_>> = None;
        // Functions containing `vaddr` start at most this many entries below (nested or
        // aliased symbols); beyond, only a huge enclosing function could, which is rare.
        for e in index[end.saturating_sub(64)..end].iter().rev() {
            if vaddr - e.value < e.size {
                let f = Found { name: self.indexed_name(e)?, value: e.value, size: e.size, bind: e.bind };
                if best.is_none_or(|b| f.better_than(&b)) {
                    best = Some(f);
                }
            }
        }
        if best.is_none()
            && let Some(e) = end.checked_sub(1).map(|i| &index[i]).filter(|e| e.size == 0)
            && self.section(e.shndx as usize).is_some_and(|s| vaddr >= s.addr && vaddr - s.addr < s.size)
        {
            best = Some(Found { name: self.indexed_name(e)?, value: e.value, size: 0, bind: e.bind });
        }
        best.map(|f| (f.name, vaddr - f.value))
    }

    fn indexed_name(&self, e: &IndexedSym) -> Option<&[u8]> {
        let symtab = self.section(e.table as usize)?;
        let strtab = self.section(symtab.link as usize).filter(|s| s.ty == SHT_STRTAB)?;
        cstr_at(self.section_data(&strtab)?, e.name as usize).filter(|n| !n.is_empty())
    }

    fn search(&self, symtab: &Section, vaddr: u64, home: Option<usize>) -> Option<Found<'_>> {
        let entsize = match usize::try_from(symtab.entsize).ok()? {
            0 => SYM_SIZE,
            n if n < SYM_SIZE => return None,
            n => n,
        };
        let syms = self.section_data(symtab)?;
        let strtab = self.section(symtab.link as usize).filter(|s| s.ty == SHT_STRTAB)?;
        let strs = self.section_data(&strtab)?;
        let mut exact: Option<Found<'_>> = None;
        // The eligible symbol of `home` starting nearest below `vaddr`, sized or not.
        let mut nearest: Option<Found<'_>> = None;
        for sym in syms.chunks_exact(entsize) {
            let (Some(name), Some(value), Some(size), Some(shndx)) =
                (u32_at(sym, 0), u64_at(sym, 8), u64_at(sym, 16), u16_at(sym, 6))
            else {
                continue;
            };
            let (info, shndx) = (sym[4], shndx);
            let ty = info & 0xf;
            if shndx == 0 || shndx >= SHN_LORESERVE || value > vaddr {
                continue; // Undefined (imports), absolute or special, or above the address.
            }
            let eligible = match ty {
                STT_FUNC | STT_GNU_IFUNC => true,
                STT_NOTYPE => size > 0 && self.section(shndx as usize).is_some_and(|s| s.flags & SHF_EXECINSTR != 0),
                _ => false,
            };
            if !eligible {
                continue;
            }
            let Some(name) = cstr_at(strs, name as usize).filter(|n| !n.is_empty()) else { continue };
            let f = Found { name, value, size, bind: info >> 4 };
            if vaddr - value < size {
                if exact.is_none_or(|e| f.better_than(&e)) {
                    exact = Some(f);
                }
            } else if home == Some(shndx as usize)
                && nearest.is_none_or(|n| value > n.value || (value == n.value && size > 0 && n.size == 0))
            {
                nearest = Some(f);
            }
        }
        exact.or(nearest.filter(|n| n.size == 0))
    }
}

/// The NUL-terminated string at `off` in a string table; `None` if it runs off the end.
fn cstr_at(strs: &[u8], off: usize) -> Option<&[u8]> {
    let s = strs.get(off..)?;
    Some(&s[..s.iter().position(|&b| b == 0)?])
}

/// Writes `name` demangled: Rust legacy symbols (`_ZN` `<len><ident>`… `E`) as `a::b::c`, with
/// the trailing `h<16 hex digits>` hash dropped and `$..$` escapes decoded. Anything else
/// (Rust v0 `_R…`, C++, C) is written unchanged, bytes that are not UTF-8 as U+FFFD.
pub fn demangle(name: &[u8], out: &mut impl Write) -> fmt::Result {
    match legacy_parts(name) {
        Some((body, suffix)) => {
            let mut rest = body;
            let mut first = true;
            while let Some((ident, after)) = next_ident(rest) {
                rest = after;
                if rest.is_empty() && !first && is_hash(ident) {
                    break;
                }
                if !first {
                    out.write_str("::")?;
                }
                first = false;
                write_ident(ident, out)?;
            }
            write_lossy(suffix, out)
        }
        None => write_lossy(name, out),
    }
}

/// For a legacy-mangled name, its `<len><ident>…` body and the suffix to print after it.
/// `None` unless the whole name has that shape (so C++ names, which continue with parameter
/// types after the `E`, are left alone).
fn legacy_parts(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = name.strip_prefix(b"_ZN").or_else(|| name.strip_prefix(b"__ZN"))?;
    let mut rest = s;
    let mut count = 0;
    while rest.first().is_some_and(u8::is_ascii_digit) {
        let (ident, after) = next_ident(rest)?;
        if !ident.is_ascii() {
            return None;
        }
        rest = after;
        count += 1;
    }
    let body = &s[..s.len() - rest.len()];
    let suffix = rest.strip_prefix(b"E")?;
    if count == 0 {
        return None;
    }
    // LLVM's `.llvm.<digits>` is an artifact of LTO; keep other `.suffix`es (e.g. `.cold`).
    let suffix = if suffix.starts_with(b".llvm.") {
        &[][..]
    } else if suffix.is_empty() || suffix.starts_with(b".") {
        suffix
    } else {
        return None;
    };
    Some((body, suffix))
}

/// Splits `<decimal length><ident>` off the front.
fn next_ident(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut len: usize = 0;
    for &d in &s[..digits] {
        len = len.checked_mul(10)?.checked_add((d - b'0') as usize)?;
    }
    let rest = &s[digits..];
    (len > 0 && len <= rest.len()).then(|| rest.split_at(len))
}

fn is_hash(ident: &[u8]) -> bool {
    ident.len() == 17 && ident[0] == b'h' && ident[1..].iter().all(u8::is_ascii_hexdigit)
}

/// One identifier with its escapes decoded; an escape it does not know is written as is.
fn write_ident(ident: &[u8], out: &mut impl Write) -> fmt::Result {
    // `_$` starts identifiers that would otherwise begin with an escape.
    let mut s = if ident.starts_with(b"_$") { &ident[1..] } else { ident };
    while let Some(&c) = s.first() {
        if s.starts_with(b"..") {
            out.write_str("::")?;
            s = &s[2..];
            continue;
        }
        if c == b'$'
            && let Some(end) = s[1..].iter().position(|&b| b == b'$')
            && let Some(ch) = escape(&s[1..1 + end])
        {
            out.write_char(ch)?;
            s = &s[end + 2..];
            continue;
        }
        // ASCII was checked by `legacy_parts`, so each byte is a char.
        out.write_char(c as char)?;
        s = &s[1..];
    }
    Ok(())
}

fn escape(e: &[u8]) -> Option<char> {
    Some(match e {
        b"SP" => '@',
        b"BP" => '*',
        b"RF" => '&',
        b"LT" => '<',
        b"GT" => '>',
        b"LP" => '(',
        b"RP" => ')',
        b"C" => ',',
        [b'u', hex @ ..] if !hex.is_empty() && hex.len() <= 6 => {
            let mut v = 0u32;
            for &h in hex {
                v = v * 16 + (h as char).to_digit(16)?;
            }
            char::from_u32(v).filter(|c| !c.is_control())?
        }
        _ => return None,
    })
}

fn write_lossy(s: &[u8], out: &mut impl Write) -> fmt::Result {
    for chunk in s.utf8_chunks() {
        out.write_str(chunk.valid())?;
        if !chunk.invalid().is_empty() {
            out.write_char(char::REPLACEMENT_CHARACTER)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn maps_lines() {
        let e =
            parse_maps_line(b"55d4a3c00000-55d4a3c21000 r-xp 00002000 08:01 1234567                    /usr/bin/cat\n")
                .unwrap();
        assert_eq!(
            e,
            MapsEntry {
                start: 0x55d4a3c00000,
                end: 0x55d4a3c21000,
                offset: 0x2000,
                perms: *b"r-xp",
                path: b"/usr/bin/cat"
            }
        );
        assert!(e.is_exec() && !e.is_deleted());
        assert_eq!(e.file_offset(0x55d4a3c00010), Some(0x2010));
        assert_eq!(e.file_offset(0x55d4a3c21000), None);

        let anon = parse_maps_line(b"7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.path, b"");
        let anon = parse_maps_line(b"7f0000000000-7f0000001000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, b"");
        let vdso = parse_maps_line(b"7ffd5e7f0000-7ffd5e7f2000 r-xp 00000000 00:00 0                          [vdso]")
            .unwrap();
        assert_eq!(vdso.path, b"[vdso]");
        let sp = parse_maps_line(b"7f1-7f2 r--s 0000a000 fd:1b 99 /tmp/my dir/lib x.so (deleted)\n").unwrap();
        assert_eq!(sp.path, b"/tmp/my dir/lib x.so (deleted)");
        assert!(sp.is_deleted());
        assert_eq!(sp.file_path(), b"/tmp/my dir/lib x.so");
        assert_eq!(sp.perms, *b"r--s");
        let hi = parse_maps_line(b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]").unwrap();
        assert_eq!(hi.end, 0xffffffffff601000);

        for bad in [
            &b""[..],
            b"garbage",
            b"1000-2000",
            b"1000-2000 r-xp",
            b"1000-2000 r-xp 0 08:01",
            b"2000-1000 r-xp 0 08:01 1 /x",
            b"1000-2000 r-xp 0 08:01 1/x",
            b"1000-20000000000000000 r-xp 0 08:01 1 /x",
            b"1000 2000 r-xp 0 08:01 1 /x",
        ] {
            assert_eq!(parse_maps_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn read_file_sizes() {
        let mut buf = vec![0u8; 1 << 20];
        let n = read_file(c"/proc/self/maps", &mut buf).unwrap();
        assert!(n > 0);
        let text = &buf[..n];
        assert!(text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).all(|l| parse_maps_line(l).is_some()));
        assert!(text.ends_with(b"\n"));

        let path = std::env::temp_dir().join(format!("prof-enc-read-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let c = CString::new(path.to_str().unwrap()).unwrap();
        let mut ten = [0u8; 10];
        assert_eq!(read_file(&c, &mut ten), Some(10));
        assert_eq!(&ten, b"0123456789");
        assert_eq!(read_file(&c, &mut [0u8; 9]), None);
        assert_eq!(read_file(&c, &mut [0u8; 11]), Some(10));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_file(&c, &mut ten), None);
        assert_eq!(read_file(c"/proc/self/maps", &mut [0u8; 16]), None);
    }

    #[inline(never)]
    // SAFETY: the name is unique to this test; nothing else defines it.
    #[unsafe(no_mangle)]
    extern "C" fn prof_enc_symbols_test_target(x: u64) -> u64 {
        // Enough code that the middle of it is a different address from the start.
        core::hint::black_box(x).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(7) ^ 0x55
    }

    fn own_maps() -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 20];
        let n = read_file(c"/proc/self/maps", &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn lookup(addr: usize) -> Option<(Vec<u8>, u64, Vec<u8>)> {
        let maps = own_maps();
        let m = find_mapping(&maps, addr)?;
        let path = CString::new(m.file_path()).ok()?;
        let elf = Elf::open(&path)?;
        let (name, off) = elf.symbol_for_file_offset(m.file_offset(addr)?)?;
        Some((name.to_vec(), off, m.path.to_vec()))
    }

    #[test]
    fn own_function_by_address() {
        let f = prof_enc_symbols_test_target as extern "C" fn(u64) -> u64;
        assert_eq!(f(1), prof_enc_symbols_test_target(1));
        let addr = f as usize;
        let (name, off, _) = lookup(addr).expect("symbol for own function");
        assert_eq!(name, b"prof_enc_symbols_test_target");
        assert_eq!(off, 0);
        let (name, off, _) = lookup(addr + 3).unwrap();
        assert_eq!((name.as_slice(), off), (&b"prof_enc_symbols_test_target"[..], 3));

        // The same through /proc/self/exe, and a Rust function's mangled name.
        let elf = Elf::open(c"/proc/self/exe").unwrap();
        let maps = own_maps();
        let addr = own_maps as fn() -> Vec<u8> as usize;
        let m = find_mapping(&maps, addr).unwrap();
        let (name, _) = elf.symbol_for_file_offset(m.file_offset(addr).unwrap()).unwrap();
        let mut s = String::new();
        demangle(name, &mut s).unwrap();
        assert!(s.ends_with("symbols::tests::own_maps"), "{s}");
    }

    #[test]
    fn libc_functions_through_dynsym() {
        // Where `malloc` is overridden (tidemalloc's `override` feature) it may resolve to this
        // binary instead; the name must be found either way. `qsort` is always libc's.
        let malloc = libc::malloc as unsafe extern "C" fn(usize) -> *mut libc::c_void as usize;
        let (name, off, _) = lookup(malloc).expect("symbol for malloc");
        assert_eq!((name.as_slice(), off), (&b"malloc"[..], 0));
        type Cmp = Option<unsafe extern "C" fn(*const libc::c_void, *const libc::c_void) -> i32>;
        let qsort = libc::qsort as unsafe extern "C" fn(*mut libc::c_void, usize, usize, Cmp) as usize;
        let (name, off, path) = lookup(qsort).expect("symbol for qsort");
        assert!(path.windows(4).any(|w| w == b"libc"), "{}", String::from_utf8_lossy(&path));
        assert_eq!((name.as_slice(), off), (&b"qsort"[..], 0));
        let maps = own_maps();
        let m = find_mapping(&maps, malloc).unwrap();
        if m.path.windows(4).any(|w| w == b"libc") {
            // Stripped libc: only .dynsym, where `malloc` and `__libc_malloc` share an address.
            let elf = Elf::open(&CString::new(m.file_path()).unwrap()).unwrap();
            let (name, off) = elf.symbol_for_file_offset(m.file_offset(malloc + 5).unwrap()).unwrap();
            assert_eq!((name, off), (&b"malloc"[..], 5));
        }
    }

    #[test]
    fn rejects_non_elf() {
        assert!(Elf::open(c"/proc/self/maps").is_none()); // Not a regular file (size 0).
        assert!(Elf::open(c"/nonexistent/file").is_none());
        let path = std::env::temp_dir().join(format!("prof-enc-elf-{}", std::process::id()));
        let c = CString::new(path.to_str().unwrap()).unwrap();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        // Truncations and corruptions of a real ELF file: must not crash, and lookups on
        // whatever opens must stay in bounds.
        let mut cases: Vec<Vec<u8>> =
            vec![b"hello world, this is not an ELF file at all.........................".to_vec()];
        for cut in [64, 100, 4096, exe.len() / 2] {
            cases.push(exe[..cut].to_vec());
        }
        let mut seed = 0x1234_5678u64;
        for _ in 0..20 {
            let mut v = exe.clone();
            for _ in 0..200 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % v.len().min(1 << 16);
                v[i] = (seed >> 32) as u8;
            }
            // Section headers live at the end: corrupt those too.
            let n = v.len();
            for k in 0..64 {
                v[n - 1 - k * 37 % 4096] ^= 0xa5;
            }
            cases.push(v);
        }
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            if let Some(elf) = Elf::open(&c) {
                for off in [0, 0x1000, 0x2345, bytes.len() as u64 / 3, u64::MAX] {
                    let _ = elf.symbol_for_file_offset(off);
                }
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    fn dm(s: &str) -> String {
        let mut out = String::new();
        demangle(s.as_bytes(), &mut out).unwrap();
        out
    }

    #[test]
    fn demangling() {
        assert_eq!(dm("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"), "core::ptr::drop_in_place");
        assert_eq!(
            dm("_ZN70_$LT$alloc..vec..Vec$LT$T$C$A$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17h1234567890abcdefE"),
            "<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop"
        );
        // The first identifier above is 70 bytes; with a wrong length the name does not parse
        // and is written unchanged.
        let wrong =
            "_ZN71_$LT$alloc..vec..Vec$LT$T$C$A$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17h1234567890abcdefE";
        assert_eq!(dm(wrong), wrong);
        assert_eq!(
            dm("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h0000000000000000E"),
            "std::rt::lang_start::{{closure}}"
        );
        let id = "$RF$str$BP$$SP$x$u5b$$u5d$$u27$$u7b$$u7d$$LP$$RP$a.b";
        assert_eq!(dm(&format!("_ZN4test{}{id}E", id.len())), "test::&str*@x[]'{}()a.b");
        assert_eq!(dm("_ZN4test6_$u7b$E"), "test::{");
        assert_eq!(dm("_ZN3foo3barE"), "foo::bar");
        assert_eq!(dm("_ZN3foo17h0123456789abcdefE"), "foo");
        assert_eq!(dm("_ZN17h0123456789abcdefE"), "h0123456789abcdef"); // The only segment: kept.
        assert_eq!(dm("_ZN3foo3bar17h0123456789abcdefE.llvm.1234567"), "foo::bar");
        assert_eq!(dm("_ZN3foo3bar17h0123456789abcdefE.cold"), "foo::bar.cold");
        assert_eq!(dm("_ZN3foo4$xy$E"), "foo::$xy$"); // Unknown escape: as is.
        assert_eq!(dm("__ZN3foo3barE"), "foo::bar");
        // Not legacy Rust: unchanged.
        for s in [
            "malloc",
            "_ZN3foo3barEv",
            "_ZNK3foo3barEv",
            "_RNvCs1234_7mycrate3foo",
            "_ZN",
            "_ZNE",
            "_ZN3fooE_x",
            "_ZN99fooE",
            "",
        ] {
            assert_eq!(dm(s), s);
        }
        let mut out = String::new();
        demangle(b"bad\xffname", &mut out).unwrap();
        assert_eq!(out, "bad\u{fffd}name");
        assert!(is_hash(b"h0123456789abcdef") && !is_hash(b"h0123456789abcdeg"));
    }
}
