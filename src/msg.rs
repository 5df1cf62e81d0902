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

/// Reports a caller's misuse of the allocator (`what` names the function and the problem)
/// with the pointer, then aborts like glibc does.
#[cold]
#[inline(never)]
pub fn fatal_pointer(what: &str, p: *const u8) -> ! {
    crate::eprint_noalloc!("tidemalloc: {what}: {p:p}\n");
    crate::os::abort()
}
