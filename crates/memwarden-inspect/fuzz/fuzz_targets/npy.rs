//! The `.npy` reader, and through it the header's Python-literal parser, on arbitrary
//! bytes: each input is prefixed with `\x93NUMPY\x01\x00` and a header length that ends
//! the header at the input's first newline (or its end), as numpy writes it; what follows
//! is the array's data (a pickle, for an object dtype). Whole-file inspection, through a
//! real file: it must return, never panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use memwarden_inspect::{inspect_file, Limits, Options};

fuzz_target!(|data: &[u8]| {
    let header_len = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| i + 1)
        .min(usize::from(u16::MAX));
    let mut file = tempfile::Builder::new()
        .suffix(".npy")
        .tempfile()
        .expect("temp file");
    file.write_all(b"\x93NUMPY\x01\x00").expect("write");
    file.write_all(&(header_len as u16).to_le_bytes())
        .expect("write");
    file.write_all(data).expect("write");
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
