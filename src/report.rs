//! The counters out: as text (`malloc_stats`, `TIDEMALLOC_SHOW_STATS=1`), as one line of
//! JSON (`TIDEMALLOC_SHOW_STATS=json`, `stats_json`, `tidemalloc_stats_json`), as glibc's
//! `malloc_info` XML, and at exit on stderr or into the file `TIDEMALLOC_STATS_FILE` names
//! (`%p` the pid, so every process of a tree writes its own). Nothing here allocates: the
//! text goes into fixed buffers, the file's pattern into a static one.

use crate::lock::Lock;
use crate::msg::{Lossy, StackBuf};
use crate::options::{self, Opt};
use crate::os;
use crate::stats::Stats;
use core::fmt::{self, Write};

/// Most bytes any of the texts takes (every figure at its largest; checked by a test).
pub const TEXT_MAX: usize = 4096;

/// Version of the JSON's field set (its `"version"`): raised when a field changes meaning
/// or goes; new fields may appear without it.
const JSON_VERSION: u32 = 1;

/// The counters as text, one `label value` line each: the first ten lines as they always
/// were, then the other fields in the struct's order, named as in the JSON with spaces.
pub fn write_text(s: &Stats, out: &mut impl Write) -> fmt::Result {
    let f = s.fields();
    out.write_str("tidemalloc stats:\n")?;
    // The first lines always put `large blocks` after the system calls.
    for (name, v) in f[..4].iter().chain(&f[5..10]).chain(&f[4..5]).chain(&f[10..]) {
        let mut label = StackBuf::<32>::new();
        for (i, word) in name.split('_').enumerate() {
            label.write_str(if i == 0 { "" } else { " " })?;
            label.write_str(word)?;
        }
        writeln!(out, "  {:<21}{v:>14}", label.as_str())?;
    }
    Ok(())
}

/// The counters as one line of JSON: `{"version":1,"pid":...,` then every field of
/// [`Stats`] by name.
pub fn write_json(s: &Stats, pid: u32, out: &mut impl Write) -> fmt::Result {
    write!(out, "{{\"version\":{JSON_VERSION},\"pid\":{pid}")?;
    for (name, v) in s.fields() {
        write!(out, ",\"{name}\":{v}")?;
    }
    out.write_str("}\n")
}

/// The counters as XML in the shape of glibc's `malloc_info`: one heap (the arena, every
/// thread's heap together), its free bytes as `rest` (pieces counted: free pages and free
/// spans; free blocks inside pages are in the size only), the large blocks as `mmap`, the
/// arena as `system` and `aspace`; then a `tidemalloc` element with every field of [`Stats`].
pub fn write_xml(s: &Stats, out: &mut impl Write) -> fmt::Result {
    let arena = s.reserved_brk + s.reserved_arena_mmap;
    let (free, pieces, max) = (s.arena_free(), s.free_pages + s.free_spans, s.reserved_arena_peak);
    let rest = |out: &mut dyn Write| {
        write!(
            out,
            "<total type=\"fast\" count=\"0\" size=\"0\"/>\n<total type=\"rest\" count=\"{pieces}\" size=\"{free}\"/>\n"
        )
    };
    let system = |out: &mut dyn Write| {
        write!(
            out,
            "<system type=\"current\" size=\"{arena}\"/>\n<system type=\"max\" size=\"{max}\"/>\n<aspace type=\"total\" size=\"{arena}\"/>\n<aspace type=\"mprotect\" size=\"{arena}\"/>\n"
        )
    };
    out.write_str("<malloc version=\"tidemalloc-1\">\n<heap nr=\"0\">\n<sizes>\n</sizes>\n")?;
    rest(out)?;
    system(out)?;
    out.write_str("</heap>\n")?;
    rest(out)?;
    writeln!(out, "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>", s.large_blocks, s.large_bytes)?;
    system(out)?;
    out.write_str("<tidemalloc")?;
    for (name, v) in s.fields() {
        write!(out, " {name}=\"{v}\"")?;
    }
    out.write_str("/>\n</malloc>\n")
}

// ---- at exit ----

/// Longest path accepted, its NUL included (Linux's PATH_MAX).
const PATH_MAX: usize = 4096;

/// `TIDEMALLOC_STATS_FILE`, copied at initialisation (empty: not set).
struct Pattern {
    bytes: [u8; PATH_MAX],
    len: usize,
}

static STATS_FILE: Lock<Pattern> = Lock::new(Pattern { bytes: [0; PATH_MAX], len: 0 });

/// Reads `TIDEMALLOC_STATS_FILE` at initialisation. True if the counters are to be written
/// there at exit. Empty means not set; a pattern too long for a path is ignored, with a
/// warning.
pub(crate) fn load_from_env() -> bool {
    let Some(v) = os::getenv(b"TIDEMALLOC_STATS_FILE") else { return false };
    if v.is_empty() {
        return false;
    }
    if v.len() >= PATH_MAX {
        crate::eprint_noalloc!(
            "tidemalloc: warning: ignoring TIDEMALLOC_STATS_FILE: {} bytes, longer than a path ({})\n",
            v.len(),
            PATH_MAX - 1
        );
        return false;
    }
    let mut p = STATS_FILE.lock();
    p.bytes[..v.len()].copy_from_slice(v);
    p.len = v.len();
    true
}

/// The atexit handler: the counters, as `TIDEMALLOC_SHOW_STATS` says (JSON, else text), on
/// stderr or into the stats file.
pub(crate) extern "C" fn at_exit() {
    let s = crate::stats();
    let mut text = StackBuf::<TEXT_MAX>::new();
    let _ = if options::get(Opt::ShowStats) == options::SHOW_STATS_JSON {
        write_json(&s, os::pid(), &mut text)
    } else {
        write_text(&s, &mut text)
    };
    let p = STATS_FILE.lock();
    if p.len == 0 {
        os::write_fd(2, text.as_bytes());
    } else {
        write_file(&p.bytes[..p.len], text.as_bytes());
    }
}

/// Writes `text` into the file named by `pattern` with the pid for `%p`; a failure is one
/// warning line on stderr.
fn write_file(pattern: &[u8], text: &[u8]) {
    let mut buf = [0u8; PATH_MAX];
    let Some(path) = expand(pattern, os::pid(), &mut buf) else {
        return warn_file(pattern, "too long with the pid in it", 0);
    };
    let fd = match os::create_file(path) {
        Ok(fd) => fd,
        Err(e) => return warn_file(path.to_bytes(), "cannot open", e),
    };
    let written = os::write_all(fd, text);
    let e = os::errno();
    if !os::close(fd) {
        return warn_file(path.to_bytes(), "cannot close", os::errno());
    }
    if !written {
        warn_file(path.to_bytes(), "cannot write", e);
    }
}

#[cold]
fn warn_file(path: &[u8], what: &str, errno: i32) {
    let mut b = StackBuf::<{ PATH_MAX + 256 }>::new();
    let _ = write!(b, "tidemalloc: warning: TIDEMALLOC_STATS_FILE: {what} {}", Lossy(path));
    if errno != 0 {
        let _ = write!(b, " (errno {errno})");
    }
    let _ = b.write_str("; statistics not written\n");
    os::write_stderr(b.as_bytes());
}

/// The path `pattern` names for process `pid`, NUL-terminated in `buf`: `%p` is the pid,
/// `%%` a `%`, anything else as is. None if it does not fit.
fn expand<'a>(pattern: &[u8], pid: u32, buf: &'a mut [u8; PATH_MAX]) -> Option<&'a core::ffi::CStr> {
    let mut digits = StackBuf::<16>::new();
    let _ = write!(digits, "{pid}");
    let mut n = 0;
    let mut i = 0;
    while i < pattern.len() {
        let (piece, step): (&[u8], usize) = match &pattern[i..] {
            [b'%', b'p', ..] => (digits.as_bytes(), 2),
            [b'%', b'%', ..] => (b"%", 2),
            [c, ..] => (core::slice::from_ref(c), 1),
            [] => break,
        };
        buf.get_mut(n..n + piece.len())?.copy_from_slice(piece);
        n += piece.len();
        i += step;
    }
    *buf.get_mut(n)? = 0;
    core::ffi::CStr::from_bytes_with_nul(&buf[..=n]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(pattern: &str, pid: u32) -> Option<String> {
        let mut buf = [0u8; PATH_MAX];
        expand(pattern.as_bytes(), pid, &mut buf).map(|c| c.to_str().unwrap().to_string())
    }

    #[test]
    fn pattern_expansion() {
        assert_eq!(expanded("/tmp/s.%p", 4242).as_deref(), Some("/tmp/s.4242"));
        assert_eq!(expanded("%p-%p", 7).as_deref(), Some("7-7"));
        assert_eq!(expanded("a%%p%", 7).as_deref(), Some("a%p%"));
        assert_eq!(expanded("%x%", 7).as_deref(), Some("%x%"));
        let long = "x".repeat(PATH_MAX - 1);
        assert_eq!(expanded(&long, 1).map(|s| s.len()), Some(PATH_MAX - 1));
        assert_eq!(expanded(&format!("{}%p", &long[..PATH_MAX - 3]), 12).map(|s| s.len()), Some(PATH_MAX - 1));
        assert_eq!(expanded(&format!("{}%p", &long[..PATH_MAX - 2]), 12).map(|s| s.len()), None);
    }

    /// Every text fits its buffer with every figure at its largest.
    #[test]
    fn texts_fit_their_buffers() {
        let mut s = Stats::default();
        // SAFETY: Stats is repr(C) and made of usize fields only.
        let words =
            unsafe { core::slice::from_raw_parts_mut(&mut s as *mut Stats as *mut usize, size_of::<Stats>() / 8) };
        words.fill(usize::MAX / 8); // arena_free adds five of them
        let mut out = String::new();
        write_text(&s, &mut out).unwrap();
        assert!(out.len() + 100 < TEXT_MAX, "text: {} bytes", out.len());
        out.clear();
        write_json(&s, u32::MAX, &mut out).unwrap();
        assert!(out.len() + 100 < TEXT_MAX, "json: {} bytes", out.len());
        out.clear();
        write_xml(&s, &mut out).unwrap();
        assert!(out.len() + 100 < TEXT_MAX, "xml: {} bytes", out.len());
    }

    /// `fields` names every field of the struct once.
    #[test]
    fn fields_cover_the_struct() {
        let f = Stats::default().fields();
        assert_eq!(f.len() * size_of::<usize>(), size_of::<Stats>());
        for (i, (a, _)) in f.iter().enumerate() {
            assert!(f[i + 1..].iter().all(|(b, _)| a != b), "{a} twice");
        }
    }
}
