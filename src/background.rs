//! The opt-in background purge (`TIDEMALLOC_BACKGROUND_PURGE=1`): a thread that runs the
//! timed releases every half purge delay and scans the heaps every scan period, so a program
//! that goes idle still gives back what it freed (without it, releases run on the slow paths
//! of threads that call in).
//!
//! - Started lazily, from the slow path of a thread's own heap with no lock held: creating
//!   a thread allocates (its TLS vector), and that allocation must find nothing held. Not
//!   from the start-up allocations (the loader may not be ready for threads), nor from the
//!   locked heaps (the backup heap's user would wait for its own lock).
//! - It owns no heap and allocates nothing; it scans the heaps of every thread (see
//!   `heap::scan_idle_heaps`), so the free pages of a thread that went idle go back too.
//! - Fork: the child has no such thread; it starts one again the same way.

use crate::heap::{self, Heap};
use crate::options::{self, Opt};
use crate::os;
use core::sync::atomic::{AtomicU8, Ordering};

const OFF: u8 = 0;
const WANTED: u8 = 1;
const STARTING: u8 = 2;
const RUNNING: u8 = 3;
const FAILED: u8 = 4;

static STATE: AtomicU8 = AtomicU8::new(OFF);

/// Stack of the thread: the purge and scan paths are shallow.
const STACK: usize = 256 << 10;

/// At initialisation: whether the option asks for the thread.
pub fn init() {
    if options::get(Opt::BackgroundPurge) != 0 {
        STATE.store(WANTED, Ordering::Relaxed);
    }
}

/// From the slow path of `heap`, the calling thread's own heap: starts the thread if it is
/// wanted and not started. One load otherwise.
#[inline(always)]
pub fn start_if_wanted(heap: &Heap) {
    if STATE.load(Ordering::Relaxed) == WANTED {
        start(heap);
    }
}

#[cold]
#[inline(never)]
fn start(heap: &Heap) {
    let own = heap::current().is_some_and(|h| core::ptr::eq(h, heap));
    if !own || STATE.compare_exchange(WANTED, STARTING, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return;
    }
    let _errno = os::ErrnoGuard::new();
    static FORK_HANDLER: AtomicU8 = AtomicU8::new(0);
    if FORK_HANDLER.swap(1, Ordering::Relaxed) == 0 {
        // SAFETY: the handler has the required signature; pthread_atfork may allocate, and
        // we hold no lock.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
    }
    let ok = os::spawn_thread(run, STACK);
    STATE.store(if ok { RUNNING } else { FAILED }, Ordering::Relaxed);
    if !ok {
        crate::eprint_noalloc!("tidemalloc: warning: no background purge thread (pthread_create failed)\n");
    }
}

extern "C" fn after_fork_child() {
    // The thread did not come along; the child's next slow path starts another.
    if STATE.load(Ordering::Relaxed) != OFF {
        STATE.store(WANTED, Ordering::Relaxed);
    }
}

extern "C" fn run(_: *mut libc::c_void) -> *mut libc::c_void {
    os::set_thread_name(c"tidemalloc-bg");
    let mut next_scan = 0;
    loop {
        let delay = (options::get(Opt::PurgeDelay) as u64).max(1);
        os::sleep_ms((delay / 2).clamp(10, 1000));
        heap::purge_if_due(None);
        let now = os::now_ms();
        if now >= next_scan {
            heap::scan_idle_heaps();
            next_scan = now + heap::scan_period();
        }
    }
}
