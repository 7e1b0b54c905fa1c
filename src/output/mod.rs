//! Pure pieces of the output path: the line splitter, the marker scanner and the
//! line index format.
//! Nothing here does I/O; the wrapper and the readers feed them bytes.

pub mod index;
pub mod lines;
pub mod marker;
