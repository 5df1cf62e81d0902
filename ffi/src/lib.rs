//! The C face of tidemalloc: `libtidemalloc.so` (for `LD_PRELOAD` or `-ltidemalloc`) and
//! `libtidemalloc.a`, declared in `include/tidemalloc.h`.
//!
//! A thin shell: the exported functions are the core crate's module `c_api` (feature
//! `override`), which a Rust program can also use directly. A cdylib or staticlib exports the
//! `#[no_mangle]` functions of its Rust dependencies; the `use` below keeps the module linked.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub use tide::c_api::*;
