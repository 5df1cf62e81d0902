//! Protocol-buffers wire-format writer over a caller buffer, for pprof's `profile.proto`.
//!
//! It never allocates and never panics: a write that does not fit sets a sticky overflow flag
//! and is dropped, along with everything after it, so the caller checks [`Writer::overflowed`]
//! once at the end (and may retry with a bigger buffer). Overflow is exact: it is set if and
//! only if the complete encoding would not fit.
//!
//! Nested messages are written in place: [`Writer::begin`] reserves one byte for the length,
//! the body follows, and [`Writer::end`] writes the length, moving the body right when the
//! length needs more than one byte. Most pprof messages (samples, locations, lines) are under
//! 128 bytes, so the move is rare.

/// Wire type of varint fields.
const VARINT: u64 = 0;
/// Wire type of length-delimited fields (bytes, strings, messages, packed repeated).
const LEN: u64 = 2;

/// Appends protobuf fields to a borrowed buffer.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflowed: bool,
}

/// An open nested message, from [`Writer::begin`]; pass it to [`Writer::end`].
#[must_use = "a nested message must be closed with Writer::end"]
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    /// Where the reserved length byte is.
    at: usize,
}

/// Bytes in the varint encoding of `v` (1..=10).
pub const fn varint_len(v: u64) -> usize {
    // Each byte carries 7 bits; `| 1` makes 0 take one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Encodes `v` as a varint into the start of `out` (which must hold 10 bytes); returns its size.
fn encode_varint(mut v: u64, out: &mut [u8; 10]) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

impl<'a> Writer<'a> {
    /// A writer that fills `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, len: 0, overflowed: false }
    }

    /// Bytes written so far (those that fit).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some write did not fit; the output is then incomplete and must not be used.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The encoding so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        let dst = self.len.checked_add(bytes.len()).and_then(|end| self.buf.get_mut(self.len..end));
        match dst {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflowed = true,
        }
    }

    fn varint(&mut self, v: u64) {
        let mut tmp = [0u8; 10];
        let n = encode_varint(v, &mut tmp);
        self.put(&tmp[..n]);
    }

    /// Field numbers must be in 1..2^29 as protobuf requires; others are encoded as given
    /// (truncated to the tag's bits by the shift), not rejected.
    fn tag(&mut self, field: u32, wire_type: u64) {
        self.varint((field as u64) << 3 | wire_type);
    }

    /// A `uint64` (or `uint32`, `bool`, enum) field, written even when 0.
    pub fn uint64(&mut self, field: u32, v: u64) {
        self.tag(field, VARINT);
        self.varint(v);
    }

    /// A `uint64` field, omitted when 0 (proto3's default, which decoders assume for absent).
    pub fn uint64_nonzero(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.uint64(field, v);
        }
    }

    /// An `int64` field: two's complement as a varint (not zigzag), so negatives take 10 bytes.
    pub fn int64(&mut self, field: u32, v: i64) {
        self.uint64(field, v as u64);
    }

    /// An `int64` field, omitted when 0.
    pub fn int64_nonzero(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.int64(field, v);
        }
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, data: &[u8]) {
        self.tag(field, LEN);
        self.varint(data.len() as u64);
        self.put(data);
    }

    /// A `string` field (pprof's string table).
    pub fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// A packed `repeated uint64` field; nothing is written for an empty slice (as protobuf
    /// encoders do: absent and empty are the same).
    pub fn packed_uint64(&mut self, field: u32, vals: &[u64]) {
        if vals.is_empty() {
            return;
        }
        let body = vals.iter().fold(0u64, |n, &v| n.saturating_add(varint_len(v) as u64));
        self.tag(field, LEN);
        self.varint(body);
        for &v in vals {
            self.varint(v);
        }
    }

    /// A packed `repeated int64` field (two's complement varints); nothing for an empty slice.
    pub fn packed_int64(&mut self, field: u32, vals: &[i64]) {
        if vals.is_empty() {
            return;
        }
        let body = vals.iter().fold(0u64, |n, &v| n.saturating_add(varint_len(v as u64) as u64));
        self.tag(field, LEN);
        self.varint(body);
        for &v in vals {
            self.varint(v as u64);
        }
    }

    /// Opens a nested message field; write its fields, then call [`Writer::end`]. Marks nest
    /// (close the innermost first).
    pub fn begin(&mut self, field: u32) -> Mark {
        self.tag(field, LEN);
        let at = self.len;
        self.put(&[0]);
        Mark { at }
    }

    /// Closes the message opened by `mark`: writes its length, in as few bytes as possible.
    pub fn end(&mut self, mark: Mark) {
        if self.overflowed {
            return;
        }
        let body_start = mark.at.saturating_add(1);
        if body_start > self.len || self.buf.get(mark.at) != Some(&0) {
            // Not a mark of this writer's open message: flag instead of corrupting silently.
            self.overflowed = true;
            return;
        }
        let body_len = self.len - body_start;
        let mut tmp = [0u8; 10];
        let n = encode_varint(body_len as u64, &mut tmp);
        if n > 1 {
            let Some(new_len) = self.len.checked_add(n - 1).filter(|&l| l <= self.buf.len()) else {
                self.overflowed = true;
                return;
            };
            self.buf.copy_within(body_start..self.len, body_start + n - 1);
            self.len = new_len;
        }
        self.buf[mark.at..mark.at + n].copy_from_slice(&tmp[..n]);
    }

    /// Writes a nested message whose fields `body` writes: `begin`, `body`, `end`.
    pub fn message(&mut self, field: u32, body: impl FnOnce(&mut Self)) {
        let m = self.begin(field);
        body(self);
        self.end(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn enc(f: impl Fn(&mut Writer<'_>)) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        let mut w = Writer::new(&mut buf);
        f(&mut w);
        assert!(!w.overflowed());
        w.as_bytes().to_vec()
    }

    #[test]
    fn scalars() {
        assert_eq!(enc(|w| w.uint64(1, 150)), [0x08, 0x96, 0x01]);
        assert_eq!(enc(|w| w.uint64(1, 0)), [0x08, 0x00]);
        assert_eq!(enc(|w| w.uint64_nonzero(1, 0)), []);
        assert_eq!(enc(|w| w.int64_nonzero(1, 0)), []);
        assert_eq!(enc(|w| w.uint64(16, 1)), [0x80, 0x01, 0x01]);
        assert_eq!(enc(|w| w.uint64(2, u64::MAX)), [0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(enc(|w| w.int64(1, -1)), [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(enc(|w| w.int64(3, 300)), [0x18, 0xac, 0x02]);
        assert_eq!(enc(|w| w.string(2, "testing")), b"\x12\x07testing");
        assert_eq!(enc(|w| w.bytes(2, b"")), [0x12, 0x00]);
        assert_eq!(enc(|w| w.packed_uint64(4, &[3, 270, 86942])), [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]);
        assert_eq!(enc(|w| w.packed_uint64(4, &[])), []);
        assert_eq!(
            enc(|w| w.packed_int64(2, &[-1, 1])),
            [0x12, 11, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01]
        );
        for v in [0, 1, 127, 128, 16383, 16384, u64::MAX >> 1, u64::MAX] {
            let mut tmp = [0; 10];
            assert_eq!(varint_len(v), encode_varint(v, &mut tmp), "{v}");
        }
    }

    #[test]
    fn nested_by_hand() {
        // Field 3 { field 1 = 150 } → 1a 03 08 96 01.
        assert_eq!(
            enc(|w| {
                let m = w.begin(3);
                w.uint64(1, 150);
                w.end(m);
            }),
            [0x1a, 0x03, 0x08, 0x96, 0x01]
        );
        assert_eq!(
            enc(|w| {
                let m = w.begin(1);
                w.end(m);
            }),
            [0x0a, 0x00]
        );
        // Two levels, the inner body long enough for a 2-byte length (the outer then 2 too).
        let big = [7u8; 200];
        let out = enc(|w| {
            w.message(4, |w| {
                w.uint64(1, 5);
                w.message(4, |w| w.bytes(2, &big));
                w.uint64(3, 9);
            })
        });
        let mut want = vec![0x22, 0xd2, 0x01, 0x08, 0x05, 0x22, 0xcb, 0x01, 0x12, 0xc8, 0x01];
        want.extend_from_slice(&big);
        want.extend_from_slice(&[0x18, 0x09]);
        assert_eq!(out, want);
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Line {
        #[prost(uint64, tag = "1")]
        function_id: u64,
        #[prost(int64, tag = "2")]
        line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Location {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(uint64, tag = "2")]
        mapping_id: u64,
        #[prost(uint64, tag = "3")]
        address: u64,
        #[prost(message, repeated, tag = "4")]
        line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Profile {
        #[prost(message, repeated, tag = "2")]
        sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        location: Vec<Location>,
        #[prost(string, repeated, tag = "6")]
        string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        time_nanos: i64,
    }

    fn write_profile(w: &mut Writer<'_>) {
        for i in 0..50u64 {
            let ids: Vec<u64> = (1..=(i % 40) + 1).map(|k| k * 1000 + i).collect();
            w.message(2, |w| {
                w.packed_uint64(1, &ids);
                w.packed_int64(2, &[i as i64, -(i as i64) * 4096]);
            });
        }
        for id in 1..=30u64 {
            w.message(4, |w| {
                w.uint64(1, id);
                w.uint64_nonzero(2, id % 3);
                w.uint64(3, 0x5555_0000_0000 + id * 17);
                for l in 0..(id % 4) {
                    w.message(4, |w| {
                        w.uint64(1, id * 10 + l);
                        w.int64_nonzero(2, l as i64 - 1);
                    });
                }
            });
        }
        for s in ["", "alloc_space", "bytes", &"x".repeat(300)] {
            w.string(6, s);
        }
        w.int64(9, 1_700_000_000_000_000_000);
    }

    #[test]
    fn decodes_with_prost() {
        let bytes = enc(write_profile);
        let p = Profile::decode(&bytes[..]).expect("valid protobuf");
        assert_eq!(p.sample.len(), 50);
        assert_eq!(p.sample[7].location_id, (1..=8).map(|k| k * 1000 + 7).collect::<Vec<_>>());
        assert_eq!(p.sample[7].value, [7, -7 * 4096]);
        assert_eq!(p.location.len(), 30);
        assert_eq!(p.location[6].id, 7);
        assert_eq!(p.location[6].mapping_id, 1);
        assert_eq!(
            p.location[6].line,
            [Line { function_id: 70, line: -1 }, Line { function_id: 71, line: 0 }, Line { function_id: 72, line: 1 }]
        );
        assert_eq!(p.string_table[3].len(), 300);
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        // Byte-for-byte what prost itself produces (same field order, proto3 defaults).
        assert_eq!(p.encode_to_vec(), bytes);
    }

    #[test]
    fn overflow_is_exact_and_sticky() {
        let full = enc(write_profile);
        for size in (0..full.len()).step_by(7).chain(full.len() - 3..=full.len() + 1) {
            let mut buf = vec![0u8; size];
            let mut w = Writer::new(&mut buf);
            write_profile(&mut w);
            if size >= full.len() {
                assert!(!w.overflowed());
                assert_eq!(w.as_bytes(), full);
            } else {
                assert!(w.overflowed(), "{size}");
                assert!(w.len() <= size);
            }
        }
        let mut buf = [0u8; 2];
        let mut w = Writer::new(&mut buf);
        w.uint64(1, 150);
        assert!(w.overflowed());
        let len = w.len();
        w.uint64(1, 1); // Would fit, but output after a dropped write would be garbage.
        assert_eq!(w.len(), len);
        let m = w.begin(1);
        w.end(m);
        assert!(w.overflowed());
    }

    #[test]
    fn bad_mark_does_not_panic() {
        let mut buf = [0u8; 8];
        let mut other = [0u8; 64];
        let mut w2 = Writer::new(&mut other);
        for _ in 0..10 {
            w2.uint64(1, 1);
        }
        let foreign = w2.begin(1);
        let mut w = Writer::new(&mut buf);
        w.uint64(1, 1);
        w.end(foreign);
        assert!(w.overflowed());
    }
}
