//! Layer `os`: every system call tidemalloc makes, and nothing else.
//!
//! Invariants:
//! - No function here allocates (no Rust global allocator, no libc call that may call malloc).
//! - Every call is counted in [`crate::stats`], so tests can see what the allocator asked of
//!   the kernel.
//! - The program break is moved only through glibc's `brk`/`sbrk`, never the raw system
//!   call: glibc caches the break in `__curbrk`, and its own malloc (still serving C code in a
//!   Rust program) must see every move we make.

use crate::stats::{self, Counter};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The page size this build assumes (x86-64 and aarch64 Linux with 4 KiB pages). Checked
/// against `sysconf` when the allocator initialises.
pub const PAGE_SIZE: usize = 4096;

/// The current program break, as glibc knows it.
pub fn brk_current() -> usize {
    // SAFETY: sbrk(0) only reads the break; it cannot fail or allocate.
    unsafe { libc::sbrk(0) as usize }
}

/// Moves the program break to `addr`. Returns false if the kernel refused (RLIMIT_DATA, a
/// mapping in the way).
///
/// # Safety
/// Lowering the break unmaps everything above `addr`: the caller must own all of it.
pub unsafe fn brk_set(addr: usize) -> bool {
    stats::count(Counter::BrkCalls);
    // SAFETY: per this function's contract, the memory between `addr` and the current break
    // (when lowering) belongs to the caller; raising the break touches no existing memory.
    unsafe { libc::brk(addr as *mut libc::c_void) == 0 }
}

/// Maps `len` bytes (a multiple of the page size) of fresh, zeroed, private anonymous memory.
/// Returns null on failure. No MAP_NORESERVE: the kernel's overcommit check refuses absurd
/// sizes here, so they fail with ENOMEM instead of killing the program when touched.
pub fn mmap_anon(len: usize) -> *mut u8 {
    stats::count(Counter::MmapCalls);
    // SAFETY: an anonymous private mapping at an address of the kernel's choice cannot alias
    // any existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    stats::add_mmap_bytes(len as isize);
    p.cast()
}

/// Maps `len` bytes aligned to `align` (a power of two, at least the page size) by mapping
/// `len + align` and unmapping the slack on both sides. Returns null on failure.
pub fn mmap_aligned(len: usize, align: usize) -> *mut u8 {
    let Some(over) = len.checked_add(align) else {
        return ptr::null_mut();
    };
    let raw = mmap_anon(over);
    if raw.is_null() {
        return raw;
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = over - head - len;
    // SAFETY: both slack ranges lie inside the mapping we just made and nobody else knows it.
    // A slack range that cannot be unmapped stays mapped, unused: only address space is lost.
    unsafe {
        if head > 0 {
            munmap(raw, head);
        }
        if tail > 0 {
            munmap((aligned + len) as *mut u8, tail);
        }
    }
    aligned as *mut u8
}

/// Unmaps `len` bytes at `p`. False if the kernel refused (ENOMEM: the split would exceed
/// the mapping count limit): the memory is then still mapped and still holds its contents.
///
/// # Safety
/// `p..p+len` must be a page-aligned range of our own mappings that nothing uses any more.
pub unsafe fn munmap(p: *mut u8, len: usize) -> bool {
    stats::count(Counter::MunmapCalls);
    // SAFETY: per the contract, the range is ours and unused.
    let ok = unsafe { libc::munmap(p.cast(), len) } == 0;
    if ok {
        stats::add_mmap_bytes(-(len as isize));
    } else {
        stats::count(Counter::ReleaseFailures);
    }
    ok
}

/// Resizes the mapping at `p` from `old_len` to `new_len` bytes. With `may_move` the kernel
/// may move it (page tables move, no byte is copied). Returns null on failure, leaving the
/// old mapping intact.
///
/// # Safety
/// `p..p+old_len` must be exactly one of our own mappings (or a prefix of one).
pub unsafe fn mremap(p: *mut u8, old_len: usize, new_len: usize, may_move: bool) -> *mut u8 {
    stats::count(Counter::MremapCalls);
    let flags = if may_move { libc::MREMAP_MAYMOVE } else { 0 };
    // SAFETY: per the contract, the mapping is ours; on failure the kernel leaves it as it was.
    let q = unsafe { libc::mremap(p.cast(), old_len, new_len, flags) };
    if q == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    stats::add_mmap_bytes(new_len as isize - old_len as isize);
    q.cast()
}

/// Tells the kernel the pages of `p..p+len` may be dropped: their next touch faults in zeros.
/// False if the kernel refused (EINVAL on locked pages, under `mlock`/`mlockall`): the pages
/// then keep their contents, so the caller must treat them as dirty, not as zero.
///
/// # Safety
/// The range must be page aligned, ours, and hold nothing anybody still needs.
pub unsafe fn madvise_free(p: *mut u8, len: usize) -> bool {
    stats::count(Counter::MadviseCalls);
    // SAFETY: per the contract, the contents of the range are dead.
    let ok = unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) } == 0;
    if !ok {
        stats::count(Counter::ReleaseFailures);
    }
    ok
}

/// Writes all of `bytes` to stderr with write(2); errors are ignored (there is nowhere to
/// report them).
pub fn write_stderr(bytes: &[u8]) {
    write_fd(2, bytes);
}

/// Writes all of `bytes` to file descriptor `fd` with write(2), retrying short writes;
/// errors are ignored (see [`write_all`]).
pub fn write_fd(fd: i32, bytes: &[u8]) {
    let _ = write_all(fd, bytes);
}

/// Writes all of `bytes` to file descriptor `fd` with write(2), retrying short writes. False
/// if the kernel refused (errno says why).
pub fn write_all(fd: i32, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live byte slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// Creates (or truncates) the file at `path` for writing, mode 0644, closed on exec.
/// Returns its descriptor, or the errno of the failure.
pub fn create_file(path: &core::ffi::CStr) -> Result<i32, i32> {
    loop {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        // SAFETY: `path` is NUL-terminated; open does not allocate.
        let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644 as libc::c_uint) };
        if fd >= 0 {
            return Ok(fd);
        }
        if errno() != libc::EINTR {
            return Err(errno());
        }
    }
}

/// Closes `fd`. False if the kernel reported an error (on Linux the descriptor is closed
/// all the same; EINTR is no error).
pub fn close(fd: i32) -> bool {
    // SAFETY: the caller owns `fd` and does not use it again.
    unsafe { libc::close(fd) == 0 || errno() == libc::EINTR }
}

/// The process id.
pub fn pid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// Ends the process with SIGABRT, without unwinding and without allocating.
pub fn abort() -> ! {
    // SAFETY: abort takes no arguments and never returns.
    unsafe { libc::abort() }
}

/// Gives the CPU to another thread (used by locks that found their holder busy).
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Keeps the calling thread's errno across a slow path that may make system calls: `free`
/// must leave errno as it found it (glibc guarantees it), and only its slow paths call the
/// kernel, so only they pay for saving it.
pub struct ErrnoGuard(i32);

impl ErrnoGuard {
    #[inline(always)]
    pub fn new() -> Self {
        ErrnoGuard(errno())
    }
}

impl Drop for ErrnoGuard {
    #[inline(always)]
    fn drop(&mut self) {
        set_errno(self.0);
    }
}

/// Sets the calling thread's errno.
pub fn set_errno(value: i32) {
    // SAFETY: __errno_location always returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = value };
}

/// A number that identifies the calling thread among live threads, never 0: the address of
/// its thread control block. Costs one instruction; needs no thread-local storage set-up.
#[inline(always)]
pub fn thread_id() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let tp: usize;
        // SAFETY: on x86-64 Linux %fs:0 holds the thread pointer (the TCB's self pointer); the
        // load has no side effects.
        unsafe { core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags)) };
        tp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let tp: usize;
        // SAFETY: TPIDR_EL0 holds the thread pointer on aarch64 Linux; reading it has no side
        // effects.
        unsafe { core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags)) };
        tp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // SAFETY: pthread_self has no preconditions and does not allocate.
        unsafe { libc::pthread_self() as usize }
    }
}

type ClockFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// The clock_gettime to call: the vDSO's (see `vdso`), else libc's; 0 until first asked.
static CLOCK: AtomicUsize = AtomicUsize::new(0);

/// Looks the clock up once (threads racing here all find the same answer).
#[cold]
#[inline(never)]
fn find_clock() -> usize {
    let f = match crate::vdso::function(crate::vdso::CLOCK_GETTIME) {
        0 => libc::clock_gettime as ClockFn as usize,
        a => a,
    };
    CLOCK.store(f, Relaxed);
    f
}

/// `clock_gettime(id)` (no system call either way).
#[inline(always)]
fn clock(id: libc::clockid_t) -> libc::timespec {
    let f = match CLOCK.load(Relaxed) {
        0 => find_clock(),
        f => f,
    };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `f` is a clock_gettime (vDSO or libc) with this signature; `ts` is a valid
    // out-pointer.
    unsafe { core::mem::transmute::<usize, ClockFn>(f)(id, &mut ts) };
    ts
}

/// A coarse monotonic clock in milliseconds (vDSO: no system call).
pub fn now_ms() -> u64 {
    let ts = clock(libc::CLOCK_MONOTONIC_COARSE);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Wall-clock time in nanoseconds since the epoch (for profile time stamps).
pub fn realtime_ns() -> i64 {
    let ts = clock(libc::CLOCK_REALTIME);
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The kernel's id of the calling thread (gettid).
pub fn kernel_tid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Whether thread `tid` of process `pid` has ended: tgkill with signal 0 (which sends
/// nothing) finds no such thread. Any other answer, including a refusal, means not known to
/// be gone.
pub fn thread_gone(pid: i32, tid: i32) -> bool {
    let _errno = ErrnoGuard::new();
    // SAFETY: signal 0 only checks that the thread exists.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
    r != 0 && errno() == libc::ESRCH
}

/// The process id.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Creates (or truncates) the file `path` with mode 0644 and writes `bytes` to it. False,
/// with errno set, if it could not be opened or written in full.
pub fn write_file(path: &core::ffi::CStr, mut bytes: &[u8]) -> bool {
    // SAFETY: `path` is NUL-terminated; the flags and mode are plain values.
    let fd =
        unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return false;
    }
    let mut ok = true;
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live byte slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            ok = false;
            break;
        }
        bytes = &bytes[n as usize..];
    }
    let e = errno();
    // SAFETY: `fd` is the descriptor opened above.
    let closed = unsafe { libc::close(fd) } == 0;
    if !ok {
        set_errno(e);
    }
    ok && closed
}

/// Installs `handler` for signal `sig` (with SA_RESTART, so interrupted system calls of the
/// program resume). False if the signal cannot be caught.
pub fn set_signal_handler(sig: i32, handler: extern "C" fn(libc::c_int)) -> bool {
    // SAFETY: an all-zero sigaction is valid; the fields set below are plain values.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa` is initialised; the old action is not wanted.
    unsafe { libc::sigaction(sig, &sa, ptr::null_mut()) == 0 }
}

/// The address of `name` in the shared library `file` (loaded with dlopen if the process
/// does not have it yet, never unloaded), 0 if either is missing. Only after initialisation,
/// as for [`global_symbol`]: dlopen allocates.
pub fn library_symbol(file: &core::ffi::CStr, name: &core::ffi::CStr) -> usize {
    // SAFETY: `file` is NUL-terminated; the handle is kept (never dlclose'd).
    let h = unsafe { libc::dlopen(file.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return 0;
    }
    // SAFETY: `h` is a live handle and `name` NUL-terminated.
    unsafe { libc::dlsym(h, name.as_ptr()) as usize }
}

/// The address `dlsym(RTLD_DEFAULT, name)` finds (the definition the whole process binds
/// to), 0 if none. Only after initialisation: dlsym may take the loader's lock and allocate.
pub fn global_symbol(name: &core::ffi::CStr) -> usize {
    // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT searches the global scope.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) as usize }
}

/// The load address of the object (executable or shared library) that contains `addr`, 0 if
/// none (dladdr). Only after initialisation, as for [`global_symbol`].
pub fn object_base(addr: usize) -> usize {
    let mut info = libc::Dl_info {
        dli_fname: ptr::null(),
        dli_fbase: ptr::null_mut(),
        dli_sname: ptr::null(),
        dli_saddr: ptr::null_mut(),
    };
    // SAFETY: `info` is a valid out-pointer; dladdr only reads the loader's tables.
    if addr == 0 || unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0 {
        return 0;
    }
    info.dli_fbase as usize
}

/// The system page size, from sysconf.
pub fn sysconf_page_size() -> usize {
    // SAFETY: sysconf(_SC_PAGESIZE) has no preconditions and does not allocate.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

unsafe extern "C" {
    static environ: *const *const libc::c_char;
}

/// The value of environment variable `name`, read straight from `environ` without copying
/// or allocating. Returns None if unset.
pub fn getenv(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: `environ` is a null-terminated array of NUL-terminated strings set up by libc
    // before any code runs; we only read it (options are parsed once, at initialisation).
    unsafe {
        let mut entry = environ;
        if entry.is_null() {
            return None;
        }
        while !(*entry).is_null() {
            let s = core::ffi::CStr::from_ptr(*entry).to_bytes();
            if s.len() > name.len() && s.starts_with(name) && s[name.len()] == b'=' {
                return Some(&s[name.len() + 1..]);
            }
            entry = entry.add(1);
        }
    }
    None
}

// ---- threads and signals (for fork) ----

unsafe extern "C" {
    /// glibc (2.32 and later): non-zero while the process has never created a thread.
    static __libc_single_threaded: libc::c_char;
}

/// Whether the calling thread is the only thread of the process; false when that cannot be
/// told. Once true, it stays true until the calling thread itself creates a thread.
///
/// glibc's own flag answers first (no system call): it is true until the first
/// `pthread_create`. A process whose other threads have all exited is recognised by the
/// thread count in `/proc/self/stat` (read without allocating). Counting heaps would not do:
/// a thread without a heap may still be inside the allocator (trim, a free, its first malloc).
pub fn is_single_threaded() -> bool {
    // SAFETY: glibc's flag is a byte that only a thread creating a thread writes (and the
    // fork child); reading it as an atomic byte is sound, and a stale `false` only makes the
    // answer conservative.
    let flag = unsafe {
        (*ptr::addr_of!(__libc_single_threaded).cast::<core::sync::atomic::AtomicU8>())
            .load(core::sync::atomic::Ordering::Relaxed)
    };
    flag != 0 || thread_count() == Some(1)
}

/// The number of threads of this process (field 20 of `/proc/self/stat`); None if `/proc`
/// cannot be read. open, read and close are async-signal-safe and do not allocate.
pub fn thread_count() -> Option<usize> {
    // SAFETY: the path is a NUL-terminated string; open does not allocate.
    let fd = unsafe { libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // pid (comm) state ppid ... num_threads: the first 20 fields fit in a few hundred bytes.
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: the pointer and length describe the unused tail of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: `fd` is the descriptor opened above.
    unsafe { libc::close(fd) };
    parse_num_threads(&buf[..len])
}

/// Field 20 (num_threads) of a `/proc/<pid>/stat` line. The command name (field 2, in
/// parentheses) may hold spaces and parentheses: fields are counted after its last `)`.
fn parse_num_threads(stat: &[u8]) -> Option<usize> {
    let close = stat.iter().rposition(|&c| c == b')')?;
    // After ")": field 3 (state) is the first; num_threads is the 18th.
    let field = stat[close + 1..].split(|&c| c == b' ').filter(|f| !f.is_empty()).nth(17)?;
    let mut n = 0usize;
    for &c in field {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((c - b'0') as usize)?;
    }
    (!field.is_empty()).then_some(n)
}

/// Blocks every signal (but those glibc reserves) on the calling thread; returns the mask to
/// restore with [`set_signal_mask`].
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, valid when zeroed; both calls get valid pointers and
    // are async-signal-safe.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    }
}

/// Starts a detached thread running `f(arg)` with a stack of `stack` bytes and every
/// signal blocked (so none of the program's signals is delivered to it). False if it could
/// not be created. pthread_create itself allocates (the new thread's TLS vector), so the
/// caller must hold no lock that an allocation takes.
pub fn spawn_thread(f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void, stack: usize) -> bool {
    // SAFETY: attr and the thread id are valid out-pointers; the signal mask is restored
    // after the thread is made (a new thread inherits its creator's mask).
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            return false;
        }
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, stack);
        let old = block_signals();
        let mut t: libc::pthread_t = 0;
        let ok = libc::pthread_create(&mut t, &attr, f, ptr::null_mut()) == 0;
        set_signal_mask(&old);
        libc::pthread_attr_destroy(&mut attr);
        ok
    }
}

/// Names the calling thread (at most 15 bytes, NUL-terminated).
pub fn set_thread_name(name: &core::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Sleeps for `ms` milliseconds (less if a signal interrupts it).
pub fn sleep_ms(ms: u64) {
    let t = libc::timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long };
    // SAFETY: a valid timespec; the remainder is not wanted.
    unsafe { libc::nanosleep(&t, ptr::null_mut()) };
}

/// Sets the calling thread's signal mask (one returned by [`block_signals`]).
pub fn set_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` is a valid signal set; pthread_sigmask is async-signal-safe.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_threads_field() {
        let line = b"4242 (a) b (c)) S 1 2 3 0 -1 4194560 10 0 0 0 5 6 0 0 20 0 7 0 123 456 789\n";
        assert_eq!(parse_num_threads(line), Some(7));
        assert_eq!(parse_num_threads(b"1 (x) S 1 2"), None);
        assert_eq!(parse_num_threads(b"no parenthesis"), None);
    }

    /// Other tests of this binary run on threads of their own that come and go, so the count
    /// is checked for what must hold whatever they do: this thread and the one it started.
    #[test]
    fn thread_count_sees_a_new_thread() {
        assert!(thread_count().expect("/proc/self/stat") >= 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv().ok());
        assert!(thread_count().expect("/proc/self/stat") >= 2);
        tx.send(()).unwrap();
        t.join().unwrap();
    }
}
