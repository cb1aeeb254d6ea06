//! Fewer temporaries: a chained array expression that allocates many times what it keeps.
//!
//! Evidence, from the per-line table (`profile.lines`) for a line of the user's code:
//! - it allocated at least [`MIN_ALLOCATED_BYTES`] over the run, at least [`MIN_RATIO`]
//!   times what it held at the heap peak;
//! - its allocations are large: on average at least [`MIN_MEAN_BYTES`] (in sampled mode
//!   also at least twice the sampling interval, since a sampled allocation much smaller than
//!   the interval weighs about one interval): whole arrays, not the churn of a loop reading
//!   a file a buffer at a time;
//! - its text chains at least [`MIN_OPERATIONS`] arithmetic operations (`a * 2 + b`), each
//!   of which makes a temporary array. A loop that loads one batch after another allocates
//!   as much, but chains nothing.

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::{ProfileMode, Report};
use memwarden_format::units::format_size;

use super::frames::is_library;

/// Allocated over the run: under it, churn costs little.
const MIN_ALLOCATED_BYTES: u64 = 64 << 20;
/// Allocated per byte held at the peak.
const MIN_RATIO: u64 = 4;
/// Mean allocation: whole arrays.
const MIN_MEAN_BYTES: u64 = 1 << 20;
/// Binary operations in the line: two make at least one temporary.
const MIN_OPERATIONS: usize = 2;

/// Binary arithmetic operations in a line of Python (`**` and `//` are one; augmented
/// assignments, which work in place, and unary signs are not counted; strings and comments
/// are skipped).
fn operations(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut count = 0;
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(_) if c == '\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '#' => break,
            None if c == '\'' || c == '"' => quote = Some(c),
            None if "+-*/@%".contains(c) => {
                let doubled = (c == '*' || c == '/') && chars.get(i + 1) == Some(&c);
                let next = chars.get(i + 1 + usize::from(doubled));
                let previous = chars[..i].iter().rev().find(|c| !c.is_whitespace());
                let operand = previous.is_some_and(|p| p.is_alphanumeric() || "_)].".contains(*p));
                let exponent =
                    matches!(previous, Some('e' | 'E')) && i >= 2 && chars[i - 2].is_ascii_digit();
                if operand && !exponent && next != Some(&'=') && next != Some(&'>') {
                    count += 1;
                }
                i += usize::from(doubled);
            }
            None => {}
        }
        i += 1;
    }
    count
}

/// Advice for each user line of chained array operations that churned.
pub fn advise(report: &Report) -> Vec<Advice> {
    let Some(profile) = &report.profile else {
        return Vec::new();
    };
    let min_mean = match profile.mode {
        ProfileMode::Exact => MIN_MEAN_BYTES,
        ProfileMode::Sampled => MIN_MEAN_BYTES.max(2 * profile.sample_bytes.unwrap_or(0)),
    };
    let mut advice = Vec::new();
    for line in &profile.lines {
        let frame = &line.frame;
        if frame.line == 0 || is_library(&frame.file) || frame.imports.is_some() {
            continue;
        }
        let mean = line.allocated_bytes / line.allocations.max(1);
        if line.allocated_bytes < MIN_ALLOCATED_BYTES
            || line.allocated_bytes < MIN_RATIO * line.peak_bytes
            || mean < min_mean
        {
            continue;
        }
        let Some(source) = super::source_of(profile, frame) else {
            continue;
        };
        let chained = operations(&source);
        if chained < MIN_OPERATIONS {
            continue;
        }
        let counted = match profile.mode {
            ProfileMode::Exact => format!(
                "{} allocations of {} on average",
                line.allocations,
                format_size(mean)
            ),
            ProfileMode::Sampled => format!(
                "{} sampled allocations, {} each on average (samples, not objects)",
                line.allocations,
                format_size(mean)
            ),
        };
        let held = if line.peak_bytes > 0 {
            format!(
                "{:.0}× the {} it held at the heap peak",
                line.allocated_bytes as f64 / line.peak_bytes as f64,
                format_size(line.peak_bytes)
            )
        } else {
            "and held nothing at the heap peak".to_owned()
        };
        advice.push(Advice {
            technique: Technique::Temporaries,
            rule: "temporaries".to_owned(),
            frame: Some(frame.clone()),
            source: Some(source),
            evidence: format!(
                "allocated {} over the run, {held}, in {counted}; the line chains {chained} \
                 operations, each making a temporary array",
                format_size(line.allocated_bytes)
            ),
            saving_bytes: None,
            saving_basis: format!(
                "not estimated: how many temporaries were alive at once is not recorded; each \
                 is about {}, and in-place operations leave at most one alive",
                format_size(mean)
            ),
            fix: "compute in place into one buffer (np.multiply(a, 2, out=buf); buf += b), or \
                  numexpr.evaluate('2*a + b'), which makes no full-size temporaries"
                .to_owned(),
        });
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::fixtures::{profile, report, source, user, MIB};
    use memwarden_format::report::{LineStats, StackFrame};

    fn line(
        frame: StackFrame,
        peak_bytes: u64,
        allocated_bytes: u64,
        allocations: u64,
    ) -> LineStats {
        LineStats {
            frame,
            peak_bytes,
            small_object_bytes: 0,
            leaked_bytes: 0,
            allocated_bytes,
            allocations,
        }
    }

    #[test]
    fn operations_are_counted_as_python_reads_them() {
        assert_eq!(operations("c = a * 2 + b ** 2 - a / 4  # x + y"), 5);
        assert_eq!(operations("a += b * 2"), 1);
        assert_eq!(operations("f(x=-1, y=1e-5, s='a+b+c')"), 0);
        assert_eq!(operations("def f(a) -> int: return a//2"), 1);
    }

    #[test]
    fn a_chained_expression_that_churns_is_advised() {
        let mut p = profile(ProfileMode::Sampled, 200 * MIB, Vec::new());
        p.lines = vec![line(user(8), 80 * MIB, 800 * MIB, 20)];
        source(&mut p, &user(8), "out = np.sqrt(a * a + b * b) / 2");
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1, "{advice:#?}");
        assert_eq!(advice[0].frame, Some(user(8)));
        assert!(advice[0].evidence.contains("10× the 80.00 MiB"));
        assert!(advice[0]
            .evidence
            .contains("20 sampled allocations, 40.00 MiB each"));
        assert_eq!(advice[0].saving_bytes, None);
    }

    #[test]
    fn a_batch_loop_or_small_churn_gets_none() {
        let mut p = profile(ProfileMode::Sampled, 200 * MIB, Vec::new());
        p.lines = vec![
            // One batch after another: large, but nothing chained.
            line(user(3), 40 * MIB, 2000 * MIB, 50),
            // A file read a buffer at a time: chained text, but small allocations.
            line(user(5), 0, 500 * MIB, 1000),
        ];
        source(&mut p, &user(3), "batch = np.load(paths[i])");
        source(&mut p, &user(5), "total += len(line) * 2 + 1");
        assert_eq!(advise(&report(p)), Vec::new());
    }
}
