//! The C face of tidemalloc: `libtidemalloc.so` (for `LD_PRELOAD` or `-ltidemalloc`) and
//! `libtidemalloc.a`, declared in `include/tidemalloc.h`.
//!
//! A thin shell: the exported functions are the core crate's module `c_api` (feature
//! `override`), which a Rust program can also use directly. A cdylib or staticlib exports the
//! `#[no_mangle]` functions of its Rust dependencies; the `use` below keeps the module linked.

//!
//! Built with `panic = "abort"` (the release profile) on x86-64 the library is `no_std`:
//! std's panic machinery (its backtrace printer and DWARF reader, 60% of the text) stays
//! out, and with it the pages a small process would map of it and libgcc_s. Builds that
//! unwind (`cargo build` without `--release`, tests) keep std, which provides the unwinding
//! runtime, and so do other architectures (the core crate uses std's `thread_local!` there).

#![cfg_attr(all(not(panic = "unwind"), target_arch = "x86_64"), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub use tide::c_api::*;

// Without std nothing else asks for libc (and its static part, which holds `atexit` and
// `pthread_atfork`); before glibc 2.34 the dl* and pthread functions were in libraries of
// their own (since, these are empty and `--as-needed` drops them).
#[cfg(all(not(panic = "unwind"), target_arch = "x86_64"))]
#[link(name = "c")]
#[link(name = "dl")]
#[link(name = "pthread")]
unsafe extern "C" {}

/// With profiling on, loads the stack unwinder (libgcc_s) if the program has none: from an
/// ELF constructor, where dlopen may run, unlike inside malloc.
extern "C" fn load_unwinder() {
    tide::load_profiler_unwinder();
}

#[used]
#[unsafe(link_section = ".init_array")]
static LOAD_UNWINDER: extern "C" fn() = load_unwinder;

/// A panic inside the allocator is a bug in it: report where, and abort (like a failed
/// assertion in glibc's malloc), without allocating.
#[cfg(all(not(panic = "unwind"), target_arch = "x86_64"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    tide::msg::fatal_panic(info)
}
