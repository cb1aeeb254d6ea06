//! The pickle walker on arbitrary bytes, both flavours: it must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwarden_inspect::pickle::{scan, Flavor};
use memwarden_inspect::source::SliceSource;
use memwarden_inspect::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_opcodes: 100_000, ..Limits::default() };
    for flavor in [Flavor::Plain, Flavor::Joblib] {
        let _ = scan(&mut SliceSource::new(data), 0, &limits, flavor);
    }
});
