//! Where a setting was written in the config file, for messages about it
//! that come after parsing (a certificate that does not load, an interface
//! that is missing).

/// A position in the config file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// Line number.
    pub line: usize,
    /// Column number (in characters).
    pub col: usize,
}
