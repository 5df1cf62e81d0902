//! Size classes: 16-byte steps up to 128 bytes, then eight classes per power of two (each
//! at most 12.5% above the one below) up to 8 KiB, then four per power of two (25%) up to
//! 512 KiB. Larger arena requests are huge spans. The finer steps below 8 KiB, where most
//! blocks are, halve the rounding waste there (25% steps wasted about a tenth of a block on
//! average); above it blocks are few and a class more costs its own partly used page.

/// Number of size classes.
pub const NCLASSES: usize = 80;
/// Largest block size served from a size class.
pub const MAX_CLASS_SIZE: usize = 512 << 10;

/// log2 of the largest block size with eight classes per power of two.
const FINE_MAX_SHIFT: u32 = 13;
/// The first class above `1 << FINE_MAX_SHIFT`.
const COARSE_FIRST: usize = 8 + (FINE_MAX_SHIFT as usize - 7) * 8;

/// Requests up to this size find their class in a table (and their page in a heap's direct
/// table, by the same index).
pub const TABLE_MAX: usize = 1024;
/// Entries of tables indexed by [`table_index`].
pub const TABLE_LEN: usize = TABLE_MAX / 16 + 1;

/// The index of a request of `size <= TABLE_MAX` bytes in the class table.
#[inline(always)]
pub fn table_index(size: usize) -> usize {
    debug_assert!(size <= TABLE_MAX);
    (size + 15) >> 4
}

/// The table indexes whose requests are of class `c` (empty above `TABLE_MAX`).
pub fn table_indexes(c: usize) -> core::ops::Range<usize> {
    let lo = if c == 0 { 0 } else { class_size(c - 1) / 16 + 1 };
    let hi = (class_size(c) / 16 + 1).min(TABLE_LEN);
    lo.min(hi)..hi
}

/// Class of every request up to `TABLE_MAX` bytes, by `(size + 15) / 16`.
static CLASS_TABLE: [u8; TABLE_LEN] = {
    let mut t = [0u8; TABLE_LEN];
    let mut i = 1;
    while i < t.len() {
        t[i] = class_by_rule(i * 16) as u8;
        i += 1;
    }
    t
};

/// The size class for a request of `size` bytes (`size <= MAX_CLASS_SIZE`).
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    if size <= TABLE_MAX {
        return CLASS_TABLE[table_index(size)] as usize;
    }
    class_by_rule(size)
}

/// The size class for `size` bytes, computed.
const fn class_by_rule(size: usize) -> usize {
    if size <= 128 {
        return (size.saturating_sub(1)) >> 4;
    }
    let s = size - 1;
    let msb = usize::BITS - 1 - s.leading_zeros(); // >= 7
    if msb < FINE_MAX_SHIFT {
        8 + ((msb - 7) as usize) * 8 + ((s >> (msb - 3)) & 7)
    } else {
        COARSE_FIRST + ((msb - FINE_MAX_SHIFT) as usize) * 4 + ((s >> (msb - 2)) & 3)
    }
}

/// Block size of class `c`.
pub const fn class_size(c: usize) -> usize {
    if c < 8 {
        return (c + 1) * 16;
    }
    if c < COARSE_FIRST {
        let msb = 7 + (c - 8) / 8;
        return (1 << msb) + ((c - 8) % 8 + 1) * (1 << (msb - 3));
    }
    let msb = FINE_MAX_SHIFT as usize + (c - COARSE_FIRST) / 4;
    (1 << msb) + ((c - COARSE_FIRST) % 4 + 1) * (1 << (msb - 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_tightly() {
        assert_eq!(class_size(NCLASSES - 1), MAX_CLASS_SIZE);
        assert_eq!((0..NCLASSES).map(|c| table_indexes(c).len()).sum::<usize>(), TABLE_LEN);
        for c in 1..NCLASSES {
            let (lo, hi) = (class_size(c - 1), class_size(c));
            assert!(hi > lo && hi % 16 == 0);
            if (128..8192).contains(&lo) {
                assert!(hi * 8 <= lo * 9, "classes {lo} and {hi} are more than 12.5% apart");
            } else if lo >= 64 {
                assert!(hi * 4 <= lo * 5, "classes {lo} and {hi} are more than 25% apart");
            }
        }
        for size in 0..=MAX_CLASS_SIZE {
            let c = class_of(size);
            if size <= TABLE_MAX {
                assert!(table_indexes(c).contains(&table_index(size)), "size {size} class {c}");
            }
            assert!(class_size(c) >= size.max(1), "size {size} class {c}");
            assert!(c == 0 || class_size(c - 1) < size, "size {size} not in its smallest class");
        }
    }
}
