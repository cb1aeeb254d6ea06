//! The HDF5 reader on arbitrary bytes: each input is prefixed with the HDF5 signature, and
//! its first byte (modulo 4) is the superblock version, so that every input reaches the
//! superblock, object header, attribute and dense-storage parsers. Whole-file inspection,
//! through a real file: it must return, never panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use memwarden_inspect::{inspect_file, Limits, Options};

fuzz_target!(|data: &[u8]| {
    let Some((&version, rest)) = data.split_first() else {
        return;
    };
    let mut file = tempfile::Builder::new()
        .suffix(".h5")
        .tempfile()
        .expect("temp file");
    file.write_all(b"\x89HDF\r\n\x1a\n").expect("write");
    file.write_all(&[version % 4]).expect("write");
    file.write_all(rest).expect("write");
    let limits = Limits {
        max_opcodes: 100_000,
        ..Limits::default()
    };
    let _ = inspect_file(
        file.path(),
        &Options {
            limits,
            ..Options::default()
        },
    );
});
