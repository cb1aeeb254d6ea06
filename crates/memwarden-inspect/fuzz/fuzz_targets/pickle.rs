//! The pickle walker on arbitrary bytes, both flavours, one pickle and every pickle of the
//! stream: it must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwarden_inspect::pickle::{scan, Extent, Flavor};
use memwarden_inspect::source::SliceSource;
use memwarden_inspect::{Limits, Options};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_opcodes: 100_000,
        ..Limits::default()
    };
    let options = Options {
        limits,
        ..Options::default()
    };
    for flavor in [Flavor::Plain, Flavor::Joblib] {
        for extent in [Extent::One, Extent::All] {
            let _ = scan(&mut SliceSource::new(data), 0, &options, flavor, extent);
        }
    }
});
