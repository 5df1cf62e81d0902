//! Call stacks, captured without allocating: libgcc's unwinder walks the frames from the
//! `.eh_frame` unwind tables every object carries (frame pointers are often missing from
//! distribution binaries, and the tables are there for C++ exceptions and Rust panics).
//! The unwinder finds the tables through `dl_iterate_phdr` and keeps its own static cache;
//! it does not call malloc for objects the dynamic loader knows.
//!
//! The unwinder is looked up when profiling starts ([`load_unwinder`]), not linked: a C
//! program that does not profile never maps `libgcc_s.so.1` for tidemalloc's sake (64 KiB
//! of resident pages in a small process). Where the process has none, `libtidemalloc.so`
//! loads it from its ELF constructor.

use super::scratch::{Indexed, Scratch, read_maps};
use super::symbols;
use crate::msg::StackBuf;
use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering::*};

/// Frames kept per stack (the innermost ones).
pub const MAX_DEPTH: usize = 64;

/// A captured stack: return addresses minus one (so each points into the call instruction,
/// which symbolises to the calling line), innermost first.
pub struct Stack {
    pub frames: [usize; MAX_DEPTH],
    pub depth: usize,
    /// Frames still to skip (the profiler's own).
    skip: usize,
}

/// `_URC_NO_REASON`: go on to the next frame.
const CONTINUE: c_int = 0;
/// `_URC_END_OF_STACK`: stop the walk.
const STOP: c_int = 5;

type Trace = extern "C" fn(*mut c_void, *mut c_void) -> c_int;
type BacktraceFn = unsafe extern "C" fn(Trace, *mut c_void) -> c_int;
type GetIpFn = unsafe extern "C" fn(*mut c_void) -> usize;

/// `_Unwind_Backtrace` and `_Unwind_GetIP` once [`load_unwinder`] found them, else 0.
static UNWIND_BACKTRACE: AtomicUsize = AtomicUsize::new(0);
static UNWIND_GET_IP: AtomicUsize = AtomicUsize::new(0);

/// Finds libgcc's unwinder in the process (C++ and Rust programs link it: both functions
/// from one object), or with `may_load` by loading `libgcc_s.so.1`. False if there is none.
/// Only after initialisation: dlsym and dlopen allocate; `may_load` only where dlopen may
/// run (an ELF constructor, not inside malloc: its first call may come from inside the
/// dynamic loader, holding locks dlopen takes).
pub fn load_unwinder(may_load: bool) -> bool {
    if has_unwinder() {
        return true;
    }
    let object_of = crate::os::object_base;
    let (mut bt, mut ip) = (crate::os::global_symbol(c"_Unwind_Backtrace"), crate::os::global_symbol(c"_Unwind_GetIP"));
    if bt == 0 || ip == 0 || object_of(bt) != object_of(ip) {
        if !may_load {
            return false;
        }
        let lib = c"libgcc_s.so.1";
        (bt, ip) =
            (crate::os::library_symbol(lib, c"_Unwind_Backtrace"), crate::os::library_symbol(lib, c"_Unwind_GetIP"));
        if bt == 0 || ip == 0 {
            return false;
        }
    }
    UNWIND_GET_IP.store(ip, Release);
    UNWIND_BACKTRACE.store(bt, Release);
    true
}

/// Whether stacks can be captured (the unwinder was found).
pub fn has_unwinder() -> bool {
    UNWIND_BACKTRACE.load(Acquire) != 0
}

/// `_Unwind_GetIP`. Only during a walk that [`capture`] started (which found it loaded).
fn get_ip(ctx: *mut c_void) -> usize {
    // SAFETY: capture starts a walk only after `load_unwinder` stored both functions (the
    // Release store of UNWIND_BACKTRACE orders this one before it), which have these types.
    unsafe { core::mem::transmute::<usize, GetIpFn>(UNWIND_GET_IP.load(Acquire))(ctx) }
}

extern "C" fn on_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Stack` that `capture` passed, alive and borrowed only here during
    // the walk; `ctx` is the unwinder's context for this frame.
    let (s, ip) = (unsafe { &mut *arg.cast::<Stack>() }, get_ip(ctx));
    if ip == 0 {
        return STOP;
    }
    if s.skip > 0 {
        s.skip -= 1;
        return CONTINUE;
    }
    s.frames[s.depth] = ip - 1;
    s.depth += 1;
    if s.depth == MAX_DEPTH { STOP } else { CONTINUE }
}

/// The calling thread's stack, without the `skip` innermost frames besides this function's
/// own; empty before [`load_unwinder`] found the unwinder (in a C program, the allocations
/// before the library's constructor ran). `inline(never)`: the skip count counts real
/// frames.
#[inline(never)]
pub fn capture(skip: usize) -> Stack {
    let mut s = Stack { frames: [0; MAX_DEPTH], depth: 0, skip: skip + 1 };
    let bt = UNWIND_BACKTRACE.load(Acquire);
    if bt != 0 {
        // SAFETY: `bt` is `_Unwind_Backtrace` (see `load_unwinder`); the callback only
        // touches `s`, which outlives the walk.
        unsafe { core::mem::transmute::<usize, BacktraceFn>(bt)(on_frame, (&mut s as *mut Stack).cast()) };
    }
    s
}

// ---- the allocator's own frames ----
//
// The innermost frames of a captured stack are the allocator's (the capture itself, the
// sample path, malloc or GlobalAlloc's entry): they are dropped so a stack starts at the
// program's call. Where tidemalloc is a shared object of its own (LD_PRELOAD, linked), that
// is every frame inside its text: a range check. Where it is linked into the program (a
// Rust program on `TideMalloc`), its code shares the text with the program's, and frames
// there are told apart by their function's name (`super::is_allocator_frame`), through a
// sorted index of the program's symbols made at the first sample and kept.

/// What is known of tidemalloc's own code: its text mapping, whether that is a shared object
/// of its own, and (otherwise) the index of the program's symbols.
struct Ours {
    start: usize,
    end: usize,
    /// File offset of `start`.
    offset: u64,
    own_object: bool,
    /// The program's file and its function index (linked-in case); never freed.
    file: Option<Indexed>,
}

/// 0: not looked up yet, 1: being looked up, 2: `OURS` is set, 3: the lookup failed.
static OURS_STATE: AtomicU8 = AtomicU8::new(0);
static OURS: AtomicPtr<Ours> = AtomicPtr::new(ptr::null_mut());

/// The allocator's text, once known (None while another thread looks it up, or if that
/// failed).
fn ours() -> Option<&'static Ours> {
    if OURS_STATE.load(Acquire) == 0 && OURS_STATE.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
        let p = find_ours();
        OURS.store(p, Relaxed);
        OURS_STATE.store(if p.is_null() { 3 } else { 2 }, Release);
    }
    if OURS_STATE.load(Acquire) != 2 {
        return None;
    }
    // SAFETY: published once, never freed.
    Some(unsafe { &*OURS.load(Relaxed) })
}

fn find_ours() -> *mut Ours {
    let here = capture as *const () as usize;
    let Some((mut maps, len)) = read_maps() else { return ptr::null_mut() };
    let text = &maps.bytes()[..len];
    let Some(e) = symbols::find_mapping(text, here) else { return ptr::null_mut() };
    // SAFETY: getauxval has no preconditions.
    let phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
    let program = symbols::find_mapping(text, phdr);
    let own_object = program.as_ref().map(|p| p.file_path()) != Some(e.file_path());
    let file = if own_object { None } else { Indexed::open(e.file_path()) };
    let Some(mut mem) = Scratch::new(size_of::<Ours>()) else { return ptr::null_mut() };
    let o = Ours { start: e.start, end: e.end, offset: e.offset, own_object, file };
    let p = mem.slice_of::<u8>().as_mut_ptr().cast::<Ours>();
    // SAFETY: the mapping is page aligned, large enough, and kept for ever (forgotten below).
    unsafe { p.write(o) };
    core::mem::forget(mem);
    p
}

impl Ours {
    fn contains(&self, ip: usize) -> bool {
        (self.start..self.end).contains(&ip)
    }

    /// Whether the frame at `ip` (inside our text) is the allocator's.
    fn is_allocator(&self, ip: usize) -> bool {
        if self.own_object {
            return true;
        }
        let Some(file) = &self.file else { return false };
        let Some((raw, _)) = file.lookup((ip - self.start) as u64 + self.offset) else { return false };
        let mut name = StackBuf::<512>::new();
        let _ = symbols::demangle(raw, &mut name);
        core::str::from_utf8(name.as_bytes()).is_ok_and(super::is_allocator_frame)
    }
}

/// Frames classified so far: `ip << 1 | is_allocator`, 0 for an empty slot (direct-mapped;
/// a collision just classifies again).
static CLASSIFIED: [AtomicUsize; 1024] = [const { AtomicUsize::new(0) }; 1024];

/// Drops the innermost frames that belong to the allocator.
pub fn strip_allocator_frames(s: &mut Stack) {
    let Some(ours) = ours() else { return };
    let n = s.frames[..s.depth].iter().take_while(|&&ip| ours.contains(ip) && is_allocator_ip(ours, ip)).count();
    s.frames.copy_within(n..s.depth, 0);
    s.depth -= n;
}

fn is_allocator_ip(ours: &Ours, ip: usize) -> bool {
    if ours.own_object {
        return true;
    }
    let slot = &CLASSIFIED[(ip ^ (ip >> 10)) % CLASSIFIED.len()];
    let v = slot.load(Relaxed);
    if v >> 1 == ip {
        return v & 1 != 0;
    }
    let mine = ours.is_allocator(ip);
    slot.store(ip << 1 | mine as usize, Relaxed);
    mine
}
