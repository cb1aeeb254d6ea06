//! The archive readers on arbitrary bytes: the zip directory (both loaders' views), every
//! entry opened and read within small limits, the torch lookup, and the tar member list.
//! They must return, never panic.
#![no_main]

use std::io::{self, Cursor, Read};

use libfuzzer_sys::fuzz_target;
use memwarden_inspect::archive::{tar, zip};
use memwarden_inspect::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_zip_entries: 1_000,
        max_header_bytes: 1 << 20,
        max_decompression_ratio: 50,
        ..Limits::default()
    };
    let len = data.len() as u64;
    let mut cursor = Cursor::new(data);
    let _ = tar::read_members(&mut cursor, len, &limits);
    let Ok(archive) = zip::read_directory(&mut cursor, len, &limits) else {
        return;
    };
    let _ = zip::lookup_like_torch(&archive, "data.pkl");
    for entry in archive.entries.iter().chain(archive.zipfile_entries.iter().flatten()) {
        if let Ok(source) = zip::open_entry(&mut cursor, entry, &limits) {
            let _ = io::copy(&mut source.take(1 << 20), &mut io::sink());
        }
    }
});
