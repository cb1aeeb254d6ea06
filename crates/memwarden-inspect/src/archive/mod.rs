//! Archive readers that read as the loaders read: [`zip`] as PyTorch's miniz and Python's
//! `zipfile` do (PyTorch checkpoints, `.npz`), [`tar`] as Python's `tarfile` does (PyTorch's
//! legacy checkpoints, torch < 0.4). A scanner that parses an archive differently from the
//! loader is bypassed by the difference, so each reader follows its loader's source, cited
//! in the module, including where the loaders disagree with each other.

pub mod tar;
pub mod zip;

/// The 7z signature: `7z\xBC\xAF\x27\x1C`.
pub const SEVEN_Z_MAGIC: [u8; 6] = *b"7z\xBC\xAF\x27\x1C";

/// Whether `head` starts with the 7z signature (a 7z archive, which memwarden cannot open).
pub fn is_7z(head: &[u8]) -> bool {
    head.starts_with(&SEVEN_Z_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::is_7z;

    #[test]
    fn seven_zip_signature() {
        assert!(is_7z(b"7z\xBC\xAF\x27\x1C\x00\x04"));
        assert!(!is_7z(b"7z\xBC\xAF\x27"));
        assert!(!is_7z(b"PK\x03\x04"));
    }
}
