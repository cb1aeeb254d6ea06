//! Whole-file inspection on arbitrary bytes: every format's reader (the first bytes pick
//! which), through a real file. It must return, never panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use memwarden_inspect::{inspect_file, Limits, Options};

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::Builder::new().suffix(".onnx").tempfile().expect("temp file");
    file.write_all(data).expect("write");
    let limits = Limits { max_opcodes: 100_000, ..Limits::default() };
    let _ = inspect_file(file.path(), &Options { limits, ..Options::default() });
});
