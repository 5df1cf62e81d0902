//! The C face of tidemalloc: `libtidemalloc.so` (for `LD_PRELOAD` or `-ltidemalloc`) and
//! `libtidemalloc.a`, declared in `include/tidemalloc.h`.
//!
//! A thin shell: the exported functions are the core crate's module `c_api` (feature
//! `override`), which a Rust program can also use directly. A cdylib or staticlib exports the
//! `#[no_mangle]` functions of its Rust dependencies; the `use` below keeps the module linked.

//!
//! Built with `panic = "abort"` (the release profile) the library is `no_std`: std's panic
//! machinery (its backtrace printer and DWARF reader, a third of the text) stays out, and
//! with it the pages a small process would map of it. Builds that unwind (tests) keep std,
//! which provides the unwinding runtime.

#![cfg_attr(not(panic = "unwind"), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub use tide::c_api::*;

// Without std nothing else asks for libc (and its static part, which holds `atexit` and
// `pthread_atfork`).
#[cfg(not(panic = "unwind"))]
#[link(name = "c")]
unsafe extern "C" {}

/// A panic inside the allocator is a bug in it: report where, and abort (like a failed
/// assertion in glibc's malloc), without allocating.
#[cfg(not(panic = "unwind"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    tide::msg::fatal_panic(info)
}
