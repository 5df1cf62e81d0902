//! The calling thread's heap pointer, in one word of initial-exec thread-local storage.
//!
//! Rust's `thread_local!` in a shared object (libtidemalloc.so) uses the general-dynamic
//! model: every access calls `__tls_get_addr`, about a dozen instructions on the malloc fast
//! path. Here the word is declared in `.tbss` with assembly and read through its GOT entry
//! (`@gottpoff`): one load from the GOT and one `fs:`-relative load, in an executable and a
//! shared object alike. A shared object with initial-exec TLS needs room in glibc's static
//! TLS block: preloaded, it is laid out with the executable's; loaded with `dlopen`, it takes
//! 8 bytes of the surplus glibc reserves for exactly this (hundreds of bytes), which the
//! `dlopen` test checks. The symbol is hidden, so two copies of tidemalloc in one process
//! (a preloaded library and a Rust program's own) each keep their own word.
//!
//! The word starts as the address of `page::NO_HEAP` (its first table), so the malloc fast
//! path can read through it before the thread has a heap. It lives in `.tdata` with a
//! relocation: glibc applies relocations before it copies a TLS image (at start-up, after
//! `dlopen`, and for every new thread).
//!
//! Other architectures use `thread_local!`.

#[cfg(target_arch = "x86_64")]
mod imp {
    // Each access below carries the word's definition, guarded by `.ifndef` so an object
    // file defines it once, and weak so the objects of one link share it. (A definition in
    // `global_asm!` alone is invisible to the archive index of an rlib, and a program linked
    // without LTO would miss it.)
    // The symbol's name carries the crate's version, so two different versions of tidemalloc
    // linked into one program keep two words (two copies of one version in one link share
    // it, and would share their heaps: link one copy).
    macro_rules! word {
        () => {
            concat!(
                "tidemalloc_thread_heap_v",
                env!("CARGO_PKG_VERSION_MAJOR"),
                "_",
                env!("CARGO_PKG_VERSION_MINOR"),
                "_",
                env!("CARGO_PKG_VERSION_PATCH")
            )
        };
    }

    macro_rules! define_word {
        () => {
            concat!(
                ".ifndef ",
                word!(),
                "\n",
                ".pushsection .tdata.",
                word!(),
                ",\"awT\",@progbits\n",
                ".p2align 3\n",
                ".weak ",
                word!(),
                "\n",
                ".hidden ",
                word!(),
                "\n",
                ".type ",
                word!(),
                ",@object\n",
                ".size ",
                word!(),
                ",8\n",
                word!(),
                ":\n",
                ".quad {init}\n",
                ".popsection\n",
                ".endif\n",
            )
        };
    }

    /// The word's value (`page::NO_HEAP` before the thread's first allocation).
    #[inline(always)]
    #[allow(named_asm_labels)] // the label is defined once per object: see `define_word`
    pub fn get() -> *mut u8 {
        let v: *mut u8;
        // SAFETY: reads the calling thread's copy of the TLS word defined here: its offset
        // from the thread pointer comes from the GOT, and %fs is the thread pointer.
        unsafe {
            core::arch::asm!(
                define_word!(),
                concat!("mov {v}, qword ptr [rip + ", word!(), "@GOTTPOFF]"),
                "mov {v}, qword ptr fs:[{v}]",
                v = out(reg) v,
                init = sym crate::page::NO_HEAP,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        v
    }

    /// Sets the word.
    #[inline(always)]
    #[allow(named_asm_labels)] // as in `get`
    pub fn set(value: *mut u8) {
        // SAFETY: writes the calling thread's copy of the TLS word defined here.
        unsafe {
            core::arch::asm!(
                define_word!(),
                concat!("mov {t}, qword ptr [rip + ", word!(), "@GOTTPOFF]"),
                "mov qword ptr fs:[{t}], {v}",
                t = out(reg) _,
                v = in(reg) value,
                init = sym crate::page::NO_HEAP,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use core::cell::Cell;

    thread_local! {
        static WORD: Cell<*mut u8> = const { Cell::new(core::ptr::addr_of!(crate::page::NO_HEAP) as *mut u8) };
    }

    #[inline(always)]
    pub fn get() -> *mut u8 {
        WORD.get()
    }

    #[inline(always)]
    pub fn set(value: *mut u8) {
        WORD.set(value)
    }
}

pub use imp::{get, set};
