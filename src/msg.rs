//! Messages on stderr without allocating: a fixed stack buffer that `core::fmt` writes into,
//! flushed with one write(2).

use core::fmt;

/// A stack buffer of `N` bytes that formatted text is written into; text past the end is cut.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf { buf: [0; N], len: 0 }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// The text written (up to the last whole character if it was cut).
    pub fn as_str(&self) -> &str {
        let b = self.as_bytes();
        match core::str::from_utf8(b) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
        }
    }
    /// Whether text was cut (the buffer is full).
    pub fn is_full(&self) -> bool {
        self.len == N
    }
}

/// Formatted text written into a caller's byte buffer as `snprintf` does: at most
/// `buf.len() - 1` bytes and a NUL (nothing if the buffer is empty), while `needed` counts
/// the whole text.
pub struct CutBuf<'a> {
    buf: &'a mut [u8],
    /// Bytes of text so far, written or not.
    pub needed: usize,
}

impl<'a> CutBuf<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        if let Some(first) = buf.first_mut() {
            *first = 0;
        }
        CutBuf { buf, needed: 0 }
    }
}

impl fmt::Write for CutBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(1);
        let at = self.needed.min(room);
        let n = s.len().min(room - at);
        self.buf[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        if !self.buf.is_empty() {
            self.buf[at + n] = 0;
        }
        self.needed += s.len();
        Ok(())
    }
}

/// Bytes shown as text: valid UTF-8 as is, anything else as `?`.
pub struct Lossy<'a>(pub &'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("?")?;
            }
        }
        Ok(())
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes formatted text to stderr in one write(2), without allocating.
#[macro_export]
#[doc(hidden)]
macro_rules! eprint_noalloc {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut b = $crate::msg::StackBuf::<512>::new();
        let _ = write!(b, $($arg)*);
        $crate::os::write_stderr(b.as_bytes());
    }};
}

/// Reports a panic (a bug in tidemalloc: an assertion that failed) with its place and
/// message, then aborts; what a `no_std` build's panic handler calls.
#[cold]
#[inline(never)]
pub fn fatal_panic(info: &core::panic::PanicInfo) -> ! {
    static PANICKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    // A panic while reporting one (formatting the message) aborts without a second try.
    if !PANICKING.swap(true, core::sync::atomic::Ordering::Relaxed) {
        crate::eprint_noalloc!("tidemalloc: internal error: {info}\n");
    }
    crate::os::abort()
}

/// Reports a caller's misuse of the allocator (`what` names the function and the problem)
/// with the pointer, then aborts like glibc does.
#[cold]
#[inline(never)]
pub fn fatal_pointer(what: &str, p: *const u8) -> ! {
    crate::eprint_noalloc!("tidemalloc: {what}: {p:p}\n");
    crate::os::abort()
}
