//! The C allocation functions (`malloc`, `free`, ... and glibc's `__libc_` aliases, the
//! tuning and introspection calls, the `tidemalloc_*` extensions of `ffi/include/tidemalloc.h`),
//! exported unmangled. Compiled only with the crate feature `override`: then a Rust program
//! that uses tidemalloc exports them too, so the C code in it (libc included) uses tidemalloc
//! and there is one allocator in the process. The ffi crate (`libtidemalloc.so`/`.a`) is this
//! module and nothing else.
//!
//! Each function checks its arguments the way glibc 2.36 does (overflow, alignment validity),
//! sets `errno`, and forwards to the core; no allocator logic lives here. Nothing here
//! allocates through Rust's allocator: in a process where these are `malloc`, that would be
//! this very code.

// The exported names are C's.
#![allow(clippy::missing_safety_doc)]

use crate::Opt;
use core::ffi::{c_int, c_long, c_void};
use core::ptr;

const PAGE: usize = 4096;
/// Largest request any entry point accepts (glibc refuses sizes above PTRDIFF_MAX).
const MAX_REQUEST: usize = isize::MAX as usize;

/// Sets errno to ENOMEM and returns null.
#[cold]
fn enomem() -> *mut c_void {
    crate::set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// Forwards a finished allocation: null means ENOMEM.
#[inline(always)]
fn done(p: *mut u8) -> *mut c_void {
    if p.is_null() { enomem() } else { p.cast() }
}

#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    match crate::alloc_fast::<false>(size) {
        Some(b) => b.as_ptr().cast(),
        None => malloc_rest(size),
    }
}

/// `malloc` past the fast path (a tail call: the fast path keeps no frame).
#[inline(never)]
fn malloc_rest(size: usize) -> *mut c_void {
    done(crate::alloc_rest::<false>(size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller passes null or a block from this allocator (or gets a clear abort).
    // errno is kept: the core saves it on the slow paths that make system calls.
    unsafe { crate::free(p.cast()) };
}

#[unsafe(no_mangle)]
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(n) => match crate::alloc_fast::<true>(n) {
            Some(b) => b.as_ptr().cast(),
            None => calloc_rest(n),
        },
        None => enomem(),
    }
}

/// `calloc` of `n` bytes past the fast path.
#[inline(never)]
fn calloc_rest(n: usize) -> *mut c_void {
    if n > MAX_REQUEST {
        return enomem();
    }
    done(crate::alloc_rest::<true>(n))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // glibc frees the block and returns NULL.
        // SAFETY: the caller passes a live block.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    if size > MAX_REQUEST {
        return enomem();
    }
    // SAFETY: the caller passes a live block; on failure it is left intact.
    done(unsafe { crate::realloc(p.cast(), size) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(n) => unsafe { realloc(p, n) },
        None => enomem(),
    }
}

/// Aligned allocation shared by the memalign family; `align` is a power of two. An alignment
/// or size no block can meet is ENOMEM, as in glibc.
fn aligned(align: usize, size: usize) -> *mut c_void {
    if size > MAX_REQUEST || align > MAX_REQUEST {
        return enomem();
    }
    done(crate::aligned_alloc(align, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // Out of memory leaves errno at ENOMEM, as glibc's does.
    let p = aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer.
    unsafe { *out = p };
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // C17, as glibc 2.38+: an alignment that is not a power of two (0 included) is EINVAL.
    if !align.is_power_of_two() {
        crate::set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    aligned(align, size)
}

#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // glibc rounds a non-power-of-two alignment up to the next power of two; above 2^63 there
    // is none (EINVAL); an alignment no block can meet is ENOMEM (in `aligned`).
    if align > usize::MAX / 2 + 1 {
        crate::set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    aligned(align.max(1).next_power_of_two(), size)
}

#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    aligned(PAGE, size)
}

#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.checked_add(PAGE - 1) {
        Some(n) => aligned(PAGE, (n & !(PAGE - 1)).max(PAGE)),
        None => enomem(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: the caller passes null or a live block.
    unsafe { crate::usable_size(p.cast()) }
}

/// C23: frees a block allocated with `size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// C23: frees a block allocated by aligned_alloc with `align` and `size`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

// ---- glibc's aliases: code that calls these and frees with `free` must keep working ----

#[unsafe(no_mangle)]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc(size)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_calloc(count: usize, size: usize) -> *mut c_void {
    calloc(count, size)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { realloc(p, size) }
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    valloc(size)
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc(size)
}

// ---- glibc's tuning and introspection ----

const M_MXFAST: c_int = 1;
const M_TRIM_THRESHOLD: c_int = -1;
const M_TOP_PAD: c_int = -2;
const M_MMAP_THRESHOLD: c_int = -3;
const M_MMAP_MAX: c_int = -4;
const M_CHECK_ACTION: c_int = -5;
const M_PERTURB: c_int = -6;
const M_ARENA_TEST: c_int = -7;
const M_ARENA_MAX: c_int = -8;
/// glibc's largest M_MXFAST (80 * sizeof(size_t) / 4).
const MAX_FAST_SIZE: usize = 80 * size_of::<usize>() / 4;

/// glibc 2.36's `mallopt`: 1 for every parameter, known or not, except M_MXFAST above its
/// maximum (0). glibc converts the value to `size_t` (so -1 means "no limit") except for
/// M_MMAP_MAX (an int: a negative maximum allows no mapping) and M_PERTURB (a byte). Values
/// beyond tidemalloc's range are clamped to it. What each does here: see the README.
#[unsafe(no_mangle)]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    let unsigned = value as c_long as usize;
    match param {
        M_MXFAST => return (unsigned <= MAX_FAST_SIZE) as c_int,
        M_TRIM_THRESHOLD => crate::options::set_clamped(Opt::TrimThreshold, unsigned),
        M_TOP_PAD => crate::options::set_clamped(Opt::TopPad, unsigned),
        M_MMAP_THRESHOLD => crate::options::set_clamped(Opt::MmapThreshold, unsigned),
        M_MMAP_MAX => crate::options::set_clamped(Opt::MmapMax, value.max(0) as usize),
        M_PERTURB => crate::options::set_clamped(Opt::Perturb, value as u8 as usize),
        // Nothing to do: tidemalloc has one heap per thread and always aborts on misuse.
        M_CHECK_ACTION | M_ARENA_TEST | M_ARENA_MAX => {}
        _ => {}
    }
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    crate::trim(pad) as c_int
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
pub struct Mallinfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (int fields, which wrap for large heaps as in glibc).
#[repr(C)]
pub struct Mallinfo {
    pub arena: c_int,
    pub ordblks: c_int,
    pub smblks: c_int,
    pub hblks: c_int,
    pub hblkhd: c_int,
    pub usmblks: c_int,
    pub fsmblks: c_int,
    pub uordblks: c_int,
    pub fordblks: c_int,
    pub keepcost: c_int,
}

#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    // As glibc's: the arena (brk and mmap'ed segments) apart from the mmap'ed large blocks;
    // uordblks + fordblks == arena; usmblks is always 0.
    let s = crate::stats();
    let arena = s.reserved_brk + s.reserved_arena_mmap;
    let used = s.in_use.saturating_sub(s.large_bytes).min(arena);
    Mallinfo2 {
        arena,
        ordblks: 0,
        smblks: 0,
        hblks: s.large_blocks,
        hblkhd: s.large_bytes,
        usmblks: 0,
        fsmblks: 0,
        uordblks: used,
        fordblks: arena - used,
        keepcost: 0,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    let i = |v: usize| v as c_int;
    Mallinfo {
        arena: i(m.arena),
        ordblks: i(m.ordblks),
        smblks: i(m.smblks),
        hblks: i(m.hblks),
        hblkhd: i(m.hblkhd),
        usmblks: i(m.usmblks),
        fsmblks: i(m.fsmblks),
        uordblks: i(m.uordblks),
        fordblks: i(m.fordblks),
        keepcost: i(m.keepcost),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    crate::write_stats(2);
}

/// Writes the counters as XML on `fp` (glibc's format, with tidemalloc's figures). The text
/// is formatted in a stack buffer; only stdio's own buffer may be allocated (through us).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_info(options: c_int, fp: *mut libc::FILE) -> c_int {
    if options != 0 {
        crate::set_errno(libc::EINVAL);
        return -1;
    }
    let mut buf = crate::msg::StackBuf::<{ crate::STATS_TEXT_MAX }>::new();
    crate::format_info_xml(&mut buf);
    let b = buf.as_bytes();
    // SAFETY: `fp` is the caller's open stream; the buffer is live for the call.
    let n = unsafe { libc::fwrite(b.as_ptr().cast(), 1, b.len(), fp) };
    if n == b.len() { 0 } else { -1 }
}

// ---- tidemalloc's own extensions (see include/tidemalloc.h) ----

/// Fills `struct tidemalloc_stats` of the header, which is laid out as `crate::Stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tidemalloc_get_stats(out: *mut crate::Stats) {
    // SAFETY: the caller passes a valid out-pointer.
    unsafe { out.write(crate::stats()) };
}

/// The counters as one line of JSON (the text `TIDEMALLOC_SHOW_STATS=json` prints), as
/// `snprintf` writes: at most `len` bytes into `buf`, NUL included; returns the length of
/// the whole text (without the NUL), so a result `>= len` means it was cut. `buf` may be
/// null when `len` is 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tidemalloc_stats_json(buf: *mut libc::c_char, len: usize) -> usize {
    let out: &mut [u8] = if buf.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: the caller passes `len` writable bytes at `buf`.
        unsafe { core::slice::from_raw_parts_mut(buf.cast(), len) }
    };
    let mut w = crate::msg::CutBuf::new(out);
    let _ = crate::stats_json(&mut w);
    w.needed
}

#[unsafe(no_mangle)]
pub extern "C" fn tidemalloc_set_mmap_threshold(bytes: usize) -> c_int {
    crate::set_mmap_threshold(bytes) as c_int
}

#[unsafe(no_mangle)]
pub extern "C" fn tidemalloc_get_mmap_threshold() -> usize {
    crate::get_mmap_threshold()
}

#[unsafe(no_mangle)]
pub extern "C" fn tidemalloc_print_stats(fd: c_int) {
    crate::write_stats(fd);
}

#[unsafe(no_mangle)]
pub extern "C" fn tidemalloc_trim(pad: usize) -> c_int {
    crate::trim(pad) as c_int
}

/// Writes a heap profile to `path` (NULL: the automatic name); 0 on success, -1 with errno
/// set on failure (ENOSYS: profiling is off; EBUSY: a dump is running).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tidemalloc_prof_dump(path: *const libc::c_char) -> c_int {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    let path = (!path.is_null()).then(|| unsafe { core::ffi::CStr::from_ptr(path) });
    if crate::prof_dump(path) { 0 } else { -1 }
}

/// Writes the leak report (sampled blocks still live, by stack) to `fd`.
#[unsafe(no_mangle)]
pub extern "C" fn tidemalloc_leak_report(fd: c_int) {
    crate::leak_report(fd);
}
