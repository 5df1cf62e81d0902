//! gzip (RFC 1952) around a small DEFLATE (RFC 1951) compressor, for writing `profile.pb.gz`.
//!
//! The profiler runs inside malloc, so nothing here allocates: the caller provides the output
//! buffer and the LZ77 hash table. Compression is greedy LZ77 over the 32 KiB window, one
//! remembered position per hash bucket, coded with the fixed Huffman tables (BTYPE=01), so
//! there are no code tables to build or transmit. Input goes in blocks of at most 65535 bytes,
//! and a block that fixed coding would make bigger than itself is re-emitted as a stored block:
//! that keeps the worst case at a few bytes per block over the input size ([`gzip_bound`]).

/// DEFLATE's window: the farthest back a match may point.
const WINDOW: usize = 32 * 1024;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
/// Input bytes per block: the most a stored block can hold, so any block can fall back to one.
const BLOCK: usize = 65535;
/// A 3-byte match farther than this costs more bits than three literals.
const TOO_FAR: usize = 4096;
/// Largest hash table used (entries, as a power of two); a bigger `scratch` is left unused.
const MAX_HASH_BITS: u32 = 24;
/// End-of-block symbol.
const EOB: usize = 256;

/// Upper bound on [`gzip`]'s output for `n` input bytes, for any input.
///
/// Every block costs at most its stored size (the compressor falls back to stored blocks), i.e.
/// its bytes plus 42 bits of header, padding and LEN/NLEN; the gzip header and trailer add 18.
/// The bound rounds that up generously and saturates instead of overflowing.
pub const fn gzip_bound(n: usize) -> usize {
    n.saturating_add((n / BLOCK + 1).saturating_mul(8)).saturating_add(32)
}

/// Compresses `input` into `out` as a complete gzip member; returns the length written.
///
/// `scratch` is the hash table: the largest power-of-two prefix of it is used (up to 2^24
/// entries; 2^15 is a good size) and cleared first, so its contents on entry do not matter. A
/// smaller table only costs compression; an empty one gives literal-only (still valid) output.
/// Returns `None` if `out` is too small, which cannot happen when `out.len() >=
/// gzip_bound(input.len())`.
pub fn gzip(input: &[u8], out: &mut [u8], scratch: &mut [u32]) -> Option<usize> {
    let (table, hash_shift): (&mut [u32], u32) = match scratch.len().checked_ilog2() {
        Some(bits) => {
            let bits = bits.min(MAX_HASH_BITS);
            (&mut scratch[..1usize << bits], 32 - bits)
        }
        None => (&mut [], 32),
    };
    table.fill(0);

    let mut bw = BitWriter { out, pos: 0, acc: 0, nbits: 0 };
    // ID1 ID2, CM=deflate, FLG=0, MTIME=0 (none), XFL=0, OS=3 (Unix).
    for b in [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3] {
        bw.byte(b);
    }

    if input.is_empty() {
        // One final fixed block holding only end-of-block.
        bw.put(1 | (1 << 1), 3);
        put_lit(&mut bw, EOB);
    } else {
        let mut start = 0;
        while start < input.len() {
            let end = start + (input.len() - start).min(BLOCK);
            let last = end == input.len();
            let snap = bw.snapshot();
            let before = bw.bit_len();
            fixed_block(&mut bw, input, start, end, last, table, hash_shift);
            let fixed_bits = bw.bit_len() - before;
            let pad = (8 - (before + 3) % 8) % 8;
            let stored_bits = 3 + pad + 32 + 8 * (end - start) as u64;
            if stored_bits < fixed_bits {
                // The window spans blocks of any type, so hash entries made while trying the
                // fixed block still point at valid earlier data.
                bw.restore(snap);
                stored_block(&mut bw, &input[start..end], last);
            }
            start = end;
        }
    }

    bw.align();
    for b in crc32(input).to_le_bytes() {
        bw.byte(b);
    }
    // ISIZE is the input length modulo 2^32.
    for b in (input.len() as u32).to_le_bytes() {
        bw.byte(b);
    }
    if bw.pos > bw.out.len() { None } else { Some(bw.pos) }
}

/// CRC-32 (IEEE, reflected, as gzip uses) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// Fixed literal/length codes (RFC 1951 3.2.6), bit-reversed for LSB-first output: the low 16
/// bits hold the code, the high bits its length.
const FIXED_LIT: [u32; 288] = fixed_lit_table();

const fn fixed_lit_table() -> [u32; 288] {
    let mut t = [0u32; 288];
    let mut v = 0;
    while v < 288 {
        let (code, len) = match v {
            0..=143 => (0x30 + v as u32, 8),
            144..=255 => (0x190 + (v as u32 - 144), 9),
            256..=279 => (v as u32 - 256, 7),
            _ => (0xc0 + (v as u32 - 280), 8),
        };
        t[v] = reverse_bits(code, len) | (len << 16);
        v += 1;
    }
    t
}

/// Huffman codes are defined MSB-first but DEFLATE packs bits LSB-first, so codes are reversed.
const fn reverse_bits(code: u32, len: u32) -> u32 {
    let mut r = 0;
    let mut i = 0;
    while i < len {
        r = (r << 1) | ((code >> i) & 1);
        i += 1;
    }
    r
}

/// Packs bits LSB-first into `out`. Bytes past the end are dropped but still counted in `pos`,
/// so a block's coded size is known even when it does not fit (and may then be stored instead).
struct BitWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
}

impl BitWriter<'_> {
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.out.get_mut(self.pos) {
            *slot = b;
        }
        self.pos = self.pos.saturating_add(1);
    }

    /// Appends the low `n` (≤ 32) bits of `v`.
    fn put(&mut self, v: u32, n: u32) {
        self.acc |= (v as u64) << self.nbits;
        self.nbits += n;
        while self.nbits >= 8 {
            self.byte(self.acc as u8);
            self.acc >>= 8;
            self.nbits -= 8;
        }
    }

    /// Pads with zero bits to a byte boundary.
    fn align(&mut self) {
        if self.nbits > 0 {
            self.put(0, 8 - self.nbits);
        }
    }

    fn bit_len(&self) -> u64 {
        self.pos as u64 * 8 + self.nbits as u64
    }

    fn snapshot(&self) -> (usize, u64, u32) {
        (self.pos, self.acc, self.nbits)
    }

    fn restore(&mut self, (pos, acc, nbits): (usize, u64, u32)) {
        self.pos = pos;
        self.acc = acc;
        self.nbits = nbits;
    }
}

fn put_lit(bw: &mut BitWriter<'_>, sym: usize) {
    let c = FIXED_LIT[sym];
    bw.put(c & 0xffff, c >> 16);
}

/// Length 3..=258 → (symbol, extra bit count, extra value). Codes 257..=264 are lengths
/// 3..=10; after that each group of four codes doubles the span, except 258 which has its own.
fn length_code(len: usize) -> (usize, u32, u32) {
    if len == MAX_MATCH {
        return (285, 0, 0);
    }
    let x = (len - MIN_MATCH) as u32;
    if x < 8 {
        return (257 + x as usize, 0, 0);
    }
    let n = x.ilog2();
    let extra = n - 2;
    let hi = (x >> extra) & 3;
    (257 + 4 * (n as usize - 1) + hi as usize, extra, x - ((4 + hi) << extra))
}

/// Distance 1..=32768 → (code, extra bit count, extra value); each pair of codes after the
/// first four doubles the span.
fn distance_code(dist: usize) -> (u32, u32, u32) {
    let x = (dist - 1) as u32;
    if x < 4 {
        return (x, 0, 0);
    }
    let n = x.ilog2();
    let extra = n - 1;
    let hi = (x >> extra) & 1;
    (2 * n + hi, extra, x - ((2 + hi) << extra))
}

fn hash3(input: &[u8], i: usize, shift: u32) -> usize {
    let x = input[i] as u32 | (input[i + 1] as u32) << 8 | (input[i + 2] as u32) << 16;
    // A table of one entry gives shift 32: everything lands in slot 0.
    x.wrapping_mul(0x9E37_79B1).checked_shr(shift).unwrap_or(0) as usize
}

/// Codes `input[start..end]` as one fixed-Huffman block. Matches may reach back before `start`
/// (into earlier blocks) but not past `end`, so a stored block can replace this one exactly.
fn fixed_block(
    bw: &mut BitWriter<'_>,
    input: &[u8],
    start: usize,
    end: usize,
    last: bool,
    table: &mut [u32],
    shift: u32,
) {
    bw.put(last as u32 | (1 << 1), 3);
    let mut i = start;
    while i < end {
        let mut best = 0;
        let mut dist = 0;
        if !table.is_empty() && i + MIN_MATCH <= input.len() {
            let h = hash3(input, i, shift);
            // Positions are stored truncated to u32; any stale or wrapped entry just yields a
            // candidate that the byte comparison below rejects, so no entry is ever trusted.
            let d = (i as u32).wrapping_sub(table[h]) as usize;
            table[h] = i as u32;
            if (1..=WINDOW).contains(&d) && d <= i {
                let max = (end - i).min(MAX_MATCH);
                let l = input[i - d..i - d + max].iter().zip(&input[i..i + max]).take_while(|(a, b)| a == b).count();
                if l >= MIN_MATCH && !(l == MIN_MATCH && d > TOO_FAR) {
                    best = l;
                    dist = d;
                }
            }
        }
        if best == 0 {
            put_lit(bw, input[i] as usize);
            i += 1;
            continue;
        }
        let (sym, ebits, eval) = length_code(best);
        put_lit(bw, sym);
        bw.put(eval, ebits);
        let (code, ebits, eval) = distance_code(dist);
        bw.put(reverse_bits(code, 5), 5);
        bw.put(eval, ebits);
        // Remember the positions inside the match too: repeated data then keeps finding
        // recent, long matches.
        let stop = (i + best).min(input.len().saturating_sub(MIN_MATCH - 1));
        for p in i + 1..stop {
            table[hash3(input, p, shift)] = p as u32;
        }
        i += best;
    }
    put_lit(bw, EOB);
}

/// A stored block: header bits, pad to a byte, LEN, NLEN, then the bytes verbatim.
fn stored_block(bw: &mut BitWriter<'_>, data: &[u8], last: bool) {
    bw.put(last as u32, 3);
    bw.align();
    let len = data.len() as u16;
    for b in len.to_le_bytes().into_iter().chain((!len).to_le_bytes()) {
        bw.byte(b);
    }
    // When it does not fit only the length is counted; `gzip` then reports the overflow.
    if let Some(dst) = bw.out.get_mut(bw.pos..bw.pos.saturating_add(data.len())) {
        dst.copy_from_slice(data);
    }
    bw.pos = bw.pos.saturating_add(data.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n).map(|_| xorshift(&mut seed) as u8).collect()
    }

    fn compress_with(input: &[u8], scratch: &mut [u32]) -> Vec<u8> {
        let mut out = vec![0u8; gzip_bound(input.len())];
        let n = gzip(input, &mut out, scratch).expect("bound is enough");
        assert!(n <= gzip_bound(input.len()));
        out.truncate(n);
        out
    }

    fn compress(input: &[u8]) -> Vec<u8> {
        let mut scratch = vec![0xdead_beefu32; 1 << 15];
        compress_with(input, &mut scratch)
    }

    fn decompress(gz: &[u8]) -> Vec<u8> {
        let mut d = flate2::read::GzDecoder::new(gz);
        let mut v = Vec::new();
        d.read_to_end(&mut v).expect("valid gzip");
        v
    }

    fn round_trip(input: &[u8]) -> usize {
        let gz = compress(input);
        assert_eq!(decompress(&gz), input);
        gz.len()
    }

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn empty_and_tiny() {
        assert_eq!(round_trip(b""), 20);
        round_trip(b"a");
        round_trip(b"ab");
        round_trip(b"abc");
        round_trip(b"aaaa");
    }

    #[test]
    fn repetitive_shrinks() {
        let data: Vec<u8> =
            b"main;malloc;tidemalloc::heap::alloc 4096\n".iter().copied().cycle().take(200_000).collect();
        let n = round_trip(&data);
        assert!(n < data.len() / 50, "{n}");
        let zeros = vec![0u8; 1 << 20];
        let n = round_trip(&zeros);
        // DEFLATE tops out near 1032:1 (258 bytes per 13-bit match).
        assert!(n < zeros.len() / 150, "{n}");
    }

    #[test]
    fn random_does_not_grow_past_bound() {
        for n in [1, 100, 65534, 65535, 65536, 200_000] {
            let data = random_bytes(n, 0x1234_5678_9abc_def1 ^ n as u64);
            round_trip(&data);
        }
        // Bytes 144..=255 cost 9 bits as fixed literals: the worst case for fixed coding.
        let mut seed = 7;
        let high: Vec<u8> = (0..150_000).map(|_| 144 + (xorshift(&mut seed) % 112) as u8).collect();
        round_trip(&high);
    }

    #[test]
    fn mixed_3mb() {
        let mut seed = 99u64;
        let mut data = Vec::with_capacity(3 << 20);
        while data.len() < 3 << 20 {
            match xorshift(&mut seed) % 4 {
                0 => data.extend(random_bytes(1000, xorshift(&mut seed))),
                1 => data.extend(std::iter::repeat_n(xorshift(&mut seed) as u8, 3000)),
                2 => {
                    // Copy from far back (exercises long distances and the window edge).
                    let back = (xorshift(&mut seed) as usize % 40_000).min(data.len());
                    let from = data.len() - back;
                    let take = back.min(500);
                    data.extend_from_within(from..from + take);
                }
                _ => data.extend(b"sample location function mapping string_table "),
            }
        }
        data.truncate(3 << 20);
        let n = round_trip(&data);
        assert!(n < data.len());
    }

    #[test]
    fn any_scratch_size_works() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 ^ (i / 1000) as u8).collect();
        for len in [0, 1, 2, 255, 256, 1000, 1 << 12, 1 << 16] {
            let mut scratch = vec![u32::MAX; len];
            let gz = compress_with(&data, &mut scratch);
            assert_eq!(decompress(&gz), data, "scratch {len}");
        }
    }

    #[test]
    fn too_small_output_is_none() {
        let data = random_bytes(10_000, 3);
        let gz = compress(&data);
        let mut scratch = vec![0u32; 256];
        for len in [0, 5, 19, gz.len() - 1] {
            let mut out = vec![0u8; len];
            assert_eq!(gzip(&data, &mut out, &mut scratch), None, "{len}");
        }
        let mut out = vec![0u8; gz.len()];
        assert_eq!(gzip(&data, &mut out, &mut scratch), Some(gz.len()));
        assert_eq!(out, gz);
    }

    #[test]
    fn code_tables() {
        assert_eq!(length_code(3), (257, 0, 0));
        assert_eq!(length_code(10), (264, 0, 0));
        assert_eq!(length_code(11), (265, 1, 0));
        assert_eq!(length_code(12), (265, 1, 1));
        assert_eq!(length_code(227), (284, 5, 0));
        assert_eq!(length_code(257), (284, 5, 30));
        assert_eq!(length_code(258), (285, 0, 0));
        assert_eq!(distance_code(1), (0, 0, 0));
        assert_eq!(distance_code(4), (3, 0, 0));
        assert_eq!(distance_code(5), (4, 1, 0));
        assert_eq!(distance_code(8), (5, 1, 1));
        assert_eq!(distance_code(24577), (29, 13, 0));
        assert_eq!(distance_code(32768), (29, 13, 8191));
    }
}
