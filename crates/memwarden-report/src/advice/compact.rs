//! Compact structures: a line whose memory at the peak is mostly small Python objects.
//!
//! Evidence: a user line holding at least [`super::LARGE_BYTES`] and [`super::LARGE_SHARE`]
//! of the heap peak in Python's small-object arenas (stacks under the `[small objects]`
//! frame: objects under 512 B), at least [`SMALL_SHARE`] of what the line held.
//!
//! The profiler sees arenas, not objects, so neither the objects' count nor their types are
//! known: the array's size is estimated from the bytes, as if they were numbers in a list
//! (the most common case, and the least favourable to the fix: tuples, dicts and strings
//! shrink more).

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::Report;
use memwarden_format::units::format_size;

use super::frames::{at_peak, by_user_line, how_measured, percent};

/// Share of a line's memory at the peak that must be small objects.
const SMALL_SHARE: f64 = 0.5;

/// Bytes a number takes in a list: a float or small int object (24 B in pymalloc's 24-B
/// size class; an int up to 2^30 is 28 B, in the 32-B class) and the list's 8-B pointer.
const BYTES_PER_BOXED_NUMBER: u64 = 32;
/// Bytes the same number takes in a float64 or int64 array.
const BYTES_PER_ARRAY_NUMBER: u64 = 8;

/// Advice for each large user line made mostly of small objects.
pub fn advise(report: &Report) -> Vec<Advice> {
    let Some(profile) = &report.profile else {
        return Vec::new();
    };
    let mut advice = Vec::new();
    for line in by_user_line(at_peak(profile)) {
        let small = line.small_object_bytes;
        if !super::is_large(small, profile.peak_bytes)
            || (small as f64) < SMALL_SHARE * line.bytes as f64
        {
            continue;
        }
        let as_array = small * BYTES_PER_ARRAY_NUMBER / BYTES_PER_BOXED_NUMBER;
        advice.push(Advice {
            technique: Technique::Compact,
            rule: "compact".to_owned(),
            frame: Some(line.frame.clone()),
            source: super::source_of(profile, line.frame),
            evidence: format!(
                "{} of small Python objects (under 512 B, in pymalloc's arenas) at the heap peak, \
                 {} of what the line held and {} of the {} peak ({}); their types are not \
                 recorded: a census of object types, planned for memwarden's Python package, \
                 would name them",
                format_size(small),
                percent(small, line.bytes),
                percent(small, profile.peak_bytes),
                format_size(profile.peak_bytes),
                how_measured(profile)
            ),
            saving_bytes: Some(small - as_array),
            saving_basis: format!(
                "as numbers in a list ({BYTES_PER_BOXED_NUMBER} B each: a 24-B object and an \
                 8-B pointer) they would take {BYTES_PER_ARRAY_NUMBER} B each in a float64 or \
                 int64 array: about {} instead of {} (estimated from bytes, object counts are \
                 not recorded; tuples, dicts and strings shrink more)",
                format_size(as_array),
                format_size(small)
            ),
            fix: "hold the values in a numpy array (np.fromiter(values, dtype=np.float64)) or \
                  array.array; records as columns or a structured array rather than a list of \
                  tuples or dicts; __slots__ for many instances of a class"
                .to_owned(),
        });
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::fixtures::{frame, profile, report, user, MIB};
    use memwarden_format::capture::{SMALL_OBJECTS_FILE, SMALL_OBJECTS_FUNCTION};
    use memwarden_format::report::ProfileMode;
    use memwarden_format::report::StackBytes;

    fn objects_under(line: u32) -> Vec<memwarden_format::report::StackFrame> {
        vec![
            frame(SMALL_OBJECTS_FILE, 0, SMALL_OBJECTS_FUNCTION),
            user(line),
        ]
    }

    #[test]
    fn a_line_of_small_objects_is_advised_with_the_array_estimate() {
        let p = profile(
            ProfileMode::Sampled,
            300 * MIB,
            vec![
                StackBytes::new(objects_under(4), 200 * MIB),
                StackBytes::new(vec![user(4)], 20 * MIB),
                StackBytes::new(vec![user(9)], 80 * MIB),
            ],
        );
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1, "{advice:#?}");
        assert_eq!(advice[0].frame, Some(user(4)));
        assert_eq!(advice[0].saving_bytes, Some(150 * MIB));
        assert!(advice[0]
            .saving_basis
            .contains("about 50.00 MiB instead of 200.00 MiB"));
        assert!(advice[0].evidence.contains("91% of what the line held"));
    }

    #[test]
    fn buffers_and_few_objects_get_none() {
        let p = profile(
            ProfileMode::Exact,
            1000 * MIB,
            vec![
                StackBytes::new(vec![user(4)], 900 * MIB),
                StackBytes::new(objects_under(4), 100 * MIB),
                StackBytes::new(objects_under(6), 10 * MIB),
            ],
        );
        assert_eq!(advise(&report(p)), Vec::new());
    }
}
