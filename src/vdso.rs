//! The kernel's vDSO, read directly: `clock_gettime` without libc's wrapper.
//!
//! Why: libc's wrapper is one small function, but the first call faults its page in, and
//! the kernel maps the 64 KiB around it (fault-around): a small process pays 64 KiB of RSS
//! for a clock it reads on the slow paths. The vDSO's own function is what the wrapper calls.
//!
//! The vDSO is an ELF shared object the kernel maps into every process (its address is the
//! auxiliary vector's `AT_SYSINFO_EHDR`). Its dynamic section gives the symbol table, the
//! string table and the SysV hash table, whose second word is the number of symbols. Where
//! any of this is missing (no vDSO: valgrind, some sandboxes; no `DT_HASH`), the lookup
//! answers 0 and the caller uses libc.

use core::ffi::CStr;

/// The vDSO's name for clock_gettime (empty where it is not known: libc's is used).
#[cfg(target_arch = "x86_64")]
pub const CLOCK_GETTIME: &CStr = c"__vdso_clock_gettime";
#[cfg(any(target_arch = "aarch64", target_arch = "powerpc64", target_arch = "s390x", target_arch = "riscv64"))]
pub const CLOCK_GETTIME: &CStr = c"__kernel_clock_gettime";
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "riscv64"
)))]
pub const CLOCK_GETTIME: &CStr = c"";

/// An entry of the dynamic section (`Elf64_Dyn`).
#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

/// A symbol (`Elf64_Sym`).
#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

const DT_NULL: i64 = 0;
const DT_HASH: i64 = 4;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const STT_FUNC: u8 = 2;

/// The address of the function `name` in the vDSO, 0 if there is none.
pub fn function(name: &CStr) -> usize {
    if name.is_empty() {
        return 0;
    }
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    if base == 0 {
        return 0;
    }
    // SAFETY: the kernel maps a whole, valid ELF image at `base`, readable for the life of
    // the process; every offset read below comes from that image's own headers.
    unsafe { lookup(base, name) }
}

/// # Safety
/// `base` must be the address of a mapped, valid ELF image (the vDSO).
unsafe fn lookup(base: usize, name: &CStr) -> usize {
    // SAFETY: per the contract, the image starts with its ELF header.
    let eh = unsafe { &*(base as *const libc::Elf64_Ehdr) };
    if eh.e_ident[..4] != *b"\x7fELF" || eh.e_ident[4] != 2 {
        return 0; // not a 64-bit ELF image
    }
    // SAFETY: the program headers lie in the image, where its header says.
    let phdrs = unsafe {
        core::slice::from_raw_parts((base + eh.e_phoff as usize) as *const libc::Elf64_Phdr, eh.e_phnum as usize)
    };
    // Addresses inside the image are its link-time addresses plus the load bias.
    let Some(load) = phdrs.iter().find(|p| p.p_type == libc::PT_LOAD) else { return 0 };
    let bias = base.wrapping_add(load.p_offset as usize).wrapping_sub(load.p_vaddr as usize);
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC) else { return 0 };
    let (mut symtab, mut strtab, mut hash) = (0usize, 0usize, 0usize);
    let mut d = bias.wrapping_add(dynamic.p_vaddr as usize) as *const Dyn;
    loop {
        // SAFETY: the dynamic section ends with a DT_NULL entry.
        let e = unsafe { &*d };
        let at = bias.wrapping_add(e.val as usize);
        match e.tag {
            DT_NULL => break,
            DT_SYMTAB => symtab = at,
            DT_STRTAB => strtab = at,
            DT_HASH => hash = at,
            _ => {}
        }
        // SAFETY: not past DT_NULL, checked above.
        d = unsafe { d.add(1) };
    }
    if symtab == 0 || strtab == 0 || hash == 0 {
        return 0;
    }
    // SAFETY: the hash table's second word counts the symbol table's entries.
    let nsyms = unsafe { *(hash as *const u32).add(1) } as usize;
    // SAFETY: the symbol table has that many entries.
    let syms = unsafe { core::slice::from_raw_parts(symtab as *const Sym, nsyms) };
    for s in syms {
        let defined_function = s.shndx != 0 && s.info & 0xf == STT_FUNC;
        // SAFETY: a symbol's name is a NUL-terminated string in the string table.
        if defined_function && unsafe { CStr::from_ptr((strtab + s.name as usize) as *const libc::c_char) } == name {
            return bias.wrapping_add(s.value as usize);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_clock_gettime_and_it_agrees_with_libc() {
        let f = function(CLOCK_GETTIME);
        if f == 0 {
            // Only where the process has no vDSO (valgrind) or the name is not known: then
            // libc's wrapper is used.
            // SAFETY: getauxval has no preconditions.
            let no_vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } == 0;
            assert!(no_vdso || CLOCK_GETTIME.is_empty(), "a vDSO without {CLOCK_GETTIME:?}");
            return;
        }
        type ClockFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;
        // SAFETY: the vDSO's clock_gettime has this signature.
        let clock = unsafe { core::mem::transmute::<usize, ClockFn>(f) };
        let mut a = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let mut b = a;
        let mut c = a;
        // SAFETY: valid out-pointers.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut a);
            assert_eq!(clock(libc::CLOCK_MONOTONIC, &mut b), 0);
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut c);
        }
        let ns = |t: libc::timespec| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
        assert!(ns(a) <= ns(b) && ns(b) <= ns(c), "vDSO clock out of order with libc's");
        assert_eq!(function(c"no_such_function"), 0);
    }
}
