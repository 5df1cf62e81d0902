//! Call stacks, captured without allocating: libgcc's unwinder walks the frames from the
//! `.eh_frame` unwind tables every object carries (frame pointers are often missing from
//! distribution binaries, and the tables are there for C++ exceptions and Rust panics).
//! The unwinder finds the tables through `dl_iterate_phdr` and keeps its own static cache;
//! it does not call malloc for objects the dynamic loader knows.

use super::scratch::read_maps;
use super::symbols;
use crate::msg::StackBuf;
use core::ffi::{CStr, c_int, c_void};
use core::fmt::Write as _;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

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

unsafe extern "C" {
    fn _Unwind_Backtrace(trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
}

extern "C" fn on_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Stack` that `capture` passed, alive and borrowed only here during
    // the walk; `ctx` is the unwinder's context for this frame.
    let (s, ip) = unsafe { (&mut *arg.cast::<Stack>(), _Unwind_GetIP(ctx)) };
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
/// own. `inline(never)`: the skip count counts real frames.
#[inline(never)]
pub fn capture(skip: usize) -> Stack {
    let mut s = Stack { frames: [0; MAX_DEPTH], depth: 0, skip: skip + 1 };
    // SAFETY: the callback only touches `s`, which outlives the walk.
    unsafe { _Unwind_Backtrace(on_frame, (&mut s as *mut Stack).cast()) };
    s
}

// ---- the allocator's own frames ----

/// Frames classified so far: `ip << 1 | is_allocator`, 0 for an empty slot (direct-mapped;
/// a collision just classifies again).
static CLASSIFIED: [AtomicUsize; 1024] = [const { AtomicUsize::new(0) }; 1024];

/// Drops the innermost frames that belong to the allocator (its entry points, found by
/// symbol name: see `super::is_allocator_frame`), so a stack starts at the program's call.
pub fn strip_allocator_frames(s: &mut Stack) {
    let n = s.frames[..s.depth].iter().take_while(|&&ip| is_allocator_ip(ip)).count();
    s.frames.copy_within(n..s.depth, 0);
    s.depth -= n;
}

fn is_allocator_ip(ip: usize) -> bool {
    let slot = &CLASSIFIED[(ip ^ (ip >> 10)) % CLASSIFIED.len()];
    let v = slot.load(Relaxed);
    if v >> 1 == ip {
        return v & 1 != 0;
    }
    let ours = classify(ip);
    slot.store(ip << 1 | ours as usize, Relaxed);
    ours
}

/// Looks the frame's function up in the symbol tables of its object (a few system calls:
/// done once per distinct address).
#[cold]
fn classify(ip: usize) -> bool {
    let Some((mut maps, len)) = read_maps() else { return false };
    let Some(e) = symbols::find_mapping(&maps.bytes()[..len], ip) else { return false };
    let Some(off) = e.file_offset(ip) else { return false };
    let mut path = StackBuf::<4100>::new();
    let _ = path.write_str(core::str::from_utf8(e.file_path()).unwrap_or(""));
    let _ = path.write_str("\0");
    let Ok(path) = CStr::from_bytes_with_nul(path.as_bytes()) else { return false };
    let Some(elf) = symbols::Elf::open(path) else { return false };
    let Some((raw, _)) = elf.symbol_for_file_offset(off) else { return false };
    let mut name = StackBuf::<512>::new();
    let _ = symbols::demangle(raw, &mut name);
    core::str::from_utf8(name.as_bytes()).is_ok_and(super::is_allocator_frame)
}
