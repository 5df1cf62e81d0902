//! Cross-thread frees racing the owner's page extension, collection and aligned
//! allocations, and trim from the freeing thread: run under ThreadSanitizer. Blocks pass
//! through a ring of atomics (not std's channel, whose uninstrumented internals TSan
//! misreads).
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

const RING: usize = 1024;
static SLOTS: [AtomicUsize; RING] = [const { AtomicUsize::new(0) }; RING];
static DONE: AtomicBool = AtomicBool::new(false);

fn main() {
    let producer = std::thread::spawn(|| {
        let mut i = 0usize;
        for n in 0..300_000usize {
            let size = 16 + (n * 7919) % 3000;
            let p = if n % 17 == 0 { tidemalloc::aligned_alloc(64, size) } else { tidemalloc::malloc(size) };
            unsafe { p.write_bytes(1, size) };
            while SLOTS[i].load(Acquire) != 0 {
                std::hint::spin_loop();
            }
            SLOTS[i].store(p as usize, Release);
            i = (i + 1) % RING;
            let q = tidemalloc::malloc(size);
            unsafe { tidemalloc::free(q) };
        }
        DONE.store(true, Release);
    });
    let consumer = std::thread::spawn(|| {
        let (mut i, mut n) = (0usize, 0usize);
        loop {
            let p = SLOTS[i].swap(0, Acquire);
            if p == 0 {
                if DONE.load(Acquire) && SLOTS.iter().all(|s| s.load(Acquire) == 0) {
                    break;
                }
                std::hint::spin_loop();
                continue;
            }
            unsafe { tidemalloc::free(p as *mut u8) };
            i = (i + 1) % RING;
            n += 1;
            if n % 2000 == 0 {
                tidemalloc::trim(0);
            }
        }
        n
    });
    producer.join().unwrap();
    let n = consumer.join().unwrap();
    println!("freed {n} blocks remotely");
}
