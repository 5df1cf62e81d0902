//! A class without a page of its own takes its first blocks from a larger class's page.
//!
//! Its own binary: another test's thread that exits with live blocks leaves an abandoned
//! segment, which a fresh heap adopts with its pages (a page of 960 or 1024 bytes among
//! them would change what the test sees).

use tidemalloc::{aligned_alloc, free, malloc, usable_size};

#[global_allocator]
static A: tidemalloc::TideMalloc = tidemalloc::TideMalloc;

/// A class without a page of its own takes its first blocks from the next larger class's
/// page while that one has free blocks carved (no 4 KiB page touched for a rarely used
/// class), at most 16, then gets its own page; the blocks are as good as any.
#[test]
fn a_class_without_a_page_borrows_its_first_blocks_from_a_larger_one() {
    std::thread::spawn(|| {
        // A fresh thread has a heap of its own, with no page of 960 or 1024 bytes. Twenty
        // blocks of 1024 are carved, then freed: their page keeps them.
        let big: Vec<*mut u8> = (0..20).map(|_| malloc(1000)).collect();
        // SAFETY: live blocks.
        assert!(big.iter().all(|&p| unsafe { usable_size(p) } == 1024));
        for p in big {
            // SAFETY: a live block, freed once.
            unsafe { free(p) };
        }
        let mut small = Vec::new();
        for i in 0..17 {
            let p = malloc(900);
            assert!(!p.is_null());
            // SAFETY: a fresh block of at least 900 bytes.
            unsafe { std::ptr::write_bytes(p, i as u8, 900) };
            small.push(p);
        }
        // SAFETY: live blocks.
        let sizes: Vec<usize> = small.iter().map(|&p| unsafe { usable_size(p) }).collect();
        assert!(sizes[..16].iter().all(|&s| s == 1024), "the first 16 are not borrowed: {sizes:?}");
        assert_eq!(sizes[16], 960, "the 17th does not come from a page of its own: {sizes:?}");
        for (i, p) in small.into_iter().enumerate() {
            // SAFETY: live blocks of 900 bytes, freed once.
            unsafe {
                assert!((0..900).all(|o| *p.add(o) == i as u8), "block {i} was overwritten");
                free(p);
            }
        }
    })
    .join()
    .unwrap();
    // A power-of-two class does not borrow: its blocks' alignment serves aligned requests.
    std::thread::spawn(|| {
        let b80: Vec<*mut u8> = (0..20).map(|_| malloc(80)).collect();
        for p in b80 {
            // SAFETY: a live block, freed once.
            unsafe { free(p) };
        }
        for _ in 0..20 {
            let p = aligned_alloc(64, 48);
            assert_eq!(p as usize % 64, 0, "aligned_alloc(64, 48) = {p:p}");
            // SAFETY: a live block, freed once.
            unsafe { free(p) };
        }
    })
    .join()
    .unwrap();
}
