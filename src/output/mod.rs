//! Pure pieces of the output path: the line splitter, the marker and annotation
//! scanners and the line index format.
//! Nothing here does I/O; the wrapper and the readers feed them bytes.

pub mod annotations;
pub mod index;
pub mod lines;
pub mod marker;

/// The `\n` bytes in `bytes` (SIMD).
pub(crate) fn count_newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}
