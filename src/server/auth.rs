//! The API key check: equal length and bytes, compared in constant time (`subtle`), so response timing tells an
//! attacker nothing about how much of a guess was right. The key file holds one line.

use crate::error::{Error, Result};
use std::path::Path;
use subtle::ConstantTimeEq;

/// Whether `given` is the key. Lengths are not secret (a key's length is fixed by whoever made it).
pub fn same(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && bool::from(given.ct_eq(key))
}

/// The key: the file's first line, trimmed; an empty or unreadable file is a usage error.
pub fn read_key(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("--api-key-file {}: cannot read it ({e})", path.display())))?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.len() < 16 {
        return Err(Error::Usage(format!(
            "--api-key-file {}: the key must be at least 16 characters on the first line",
            path.display()
        )));
    }
    Ok(key.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same(b"", b"0123456789abcdef"));
    }
}
