//! The tar reader on arbitrary bytes whose 512-byte blocks carry valid checksums (each
//! non-zero block's checksum field is rewritten, as `tarfile` computes it, so that inputs
//! get past the checksum to the numeric fields, pax records and GNU long names): the member
//! list, `extractfile` of the legacy PyTorch members, and whole-file inspection (the legacy
//! PyTorch tar reader) through a real file. They must return, never panic.
#![no_main]

use std::io::{Cursor, Write};

use libfuzzer_sys::fuzz_target;
use memwarden_inspect::archive::tar;
use memwarden_inspect::{inspect_file, Limits, Options};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    for block in bytes.chunks_exact_mut(512) {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
    let limits = Limits {
        max_opcodes: 100_000,
        max_zip_entries: 1_000,
        ..Limits::default()
    };
    let len = bytes.len() as u64;
    if let Ok(members) = tar::read_members(&mut Cursor::new(&bytes), len, &limits) {
        for name in ["storages", "tensors", "pickle"] {
            let _ = tar::extractfile_like_tarfile(&members, name);
        }
    }
    let mut file = tempfile::Builder::new()
        .suffix(".pt")
        .tempfile()
        .expect("temp file");
    file.write_all(&bytes).expect("write");
    let _ = inspect_file(
        file.path(),
        &Options {
            limits,
            ..Options::default()
        },
    );
});
