//! Release what is retained: memory a user line still held at exit, or a structure that
//! only grew over the run.
//!
//! Evidence, per user line (one piece of advice naming both when both hold):
//! - held at exit: at least [`super::LARGE_BYTES`] and [`super::LARGE_SHARE`] of the heap
//!   peak, still held when the program finished, by memory that outlived the call that
//!   made it ([`outlived_its_call`]): not a module's own variable (`x = np.ones(n)` or
//!   `rows = build()` at the top level of a script holds its value to the end by design),
//!   but memory a function made that something global kept after the function returned
//!   (a cache, a list at module level appended to, a closure);
//! - grew steadily: in the profile's timeline (the heaviest stacks at each monitor tick),
//!   the line's bytes rose in at least [`RISING_SHARE`] of its steps and at least
//!   [`MIN_RISES`] of them, never fell by more than [`FALL_SHARE`] before its highest
//!   point (a release after it, such as a cache cleared at the end, ends the growth), over at least
//!   [`RUN_SHARE`] of the run's timeline, to at least twice where they started and by at
//!   least [`super::LARGE_BYTES`]: a cache or a list that only grows. One load that takes
//!   long rises too; the evidence says how long it rose.

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::{Profile, Report, StackFrame};
use memwarden_format::units::format_size;

use super::frames::{
    at_exit, at_peak, by_user_line, how_measured, is_library, percent, timeline_by_user_line,
};

/// Share of a line's steps between timeline points that must rise: a structure appended
/// to more slowly than the monitor ticks stays flat between appends.
const RISING_SHARE: f64 = 0.5;
/// Fewest rising steps: at the default 50 ms interval, 0.4 s of growth.
const MIN_RISES: usize = 8;
/// A step down by more than this share of the line's bytes is a release: it did not only grow.
const FALL_SHARE: f64 = 0.05;
/// Share of the run's timeline the growth must span: one long load rises only while it
/// reads.
const RUN_SHARE: f64 = 0.25;

/// How a line grew over the run, from its `(t_s, bytes)` series and the run's timeline
/// span in seconds: `(rises, steps, first bytes, last bytes, seconds)`.
fn growth(series: &[(f64, u64)], run_s: f64) -> Option<(usize, usize, u64, u64, f64)> {
    // The growth ends at the line's highest point; a release after it (a cache cleared at
    // the end) is not part of it.
    let max = series.iter().map(|p| p.1).max()?;
    let highest = series.iter().rposition(|p| p.1 == max)?;
    let series = &series[..=highest];
    let steps = series.len().checked_sub(1)?;
    let rises = series.windows(2).filter(|w| w[1].1 > w[0].1).count();
    let falls = series
        .windows(2)
        .any(|w| (w[1].1 as f64) < (1.0 - FALL_SHARE) * w[0].1 as f64);
    let (first, last) = (series.first()?, series.last()?);
    let seconds = last.0 - first.0;
    let grew = rises >= MIN_RISES
        && rises as f64 >= RISING_SHARE * steps as f64
        && !falls
        && seconds >= RUN_SHARE * run_s
        && last.1 >= 2 * first.1
        && last.1 - first.1 >= super::LARGE_BYTES;
    grew.then_some((rises, steps, first.1, last.1, seconds))
}

/// Whether the memory of `stack` (innermost frame first) outlived the call that made it:
/// the program is over, so every call under its top level has returned; memory made by
/// one is still held only if something global kept it, unless the top-level line bound
/// the call's result to a module variable (`rows = build()`). Memory made by the top
/// level itself is a module variable. A stack with no top-level frame (a thread's, a
/// worker's) returned from its outermost function. Unknown line text proves nothing.
fn outlived_its_call(profile: &Profile, stack: &[StackFrame]) -> bool {
    let Some((at, top)) = stack
        .iter()
        .enumerate()
        .rev()
        .find(|(_, f)| f.function == "<module>" && f.line > 0 && !is_library(&f.file))
    else {
        return true;
    };
    if at == 0
        || stack[..at]
            .iter()
            .all(|f| is_library(&f.file) || f.line == 0)
    {
        return false;
    }
    crate::sources::text(profile, top).is_some_and(|text| !binds(text))
}

/// Whether a top-level statement binds a name: an assignment (`x = f()`, `a, b = f()`,
/// `x: T = f()`, `d[k] = f()`), or a `for`/`with`/`import` statement; a bare expression
/// (`main()`) does not.
fn binds(statement: &str) -> bool {
    let statement = statement.trim_start();
    if ["for ", "with ", "async ", "import ", "from "]
        .iter()
        .any(|k| statement.starts_with(k))
    {
        return true;
    }
    let (mut depth, mut quote) = (0i32, None);
    let bytes = statement.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q && bytes.get(i.wrapping_sub(1)) != Some(&b'\\') => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'#') => return false,
            (None, b'(' | b'[' | b'{') => depth += 1,
            (None, b')' | b']' | b'}') => depth -= 1,
            (None, b'=') if depth == 0 => {
                let before = i.checked_sub(1).map(|j| bytes[j]);
                let after = bytes.get(i + 1).copied();
                let comparison =
                    after == Some(b'=') || matches!(before, Some(b'=' | b'!' | b'<' | b'>'));
                if !comparison {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Seconds the profile's timeline spans.
fn run_s(profile: &Profile) -> f64 {
    match (profile.timeline.first(), profile.timeline.last()) {
        (Some(first), Some(last)) => last.t_s - first.t_s,
        _ => 0.0,
    }
}

/// The evidence that `frame` grew, if it did.
fn grew(profile: &Profile, series: Option<&Vec<(f64, u64)>>) -> Option<String> {
    let (rises, steps, first, last, seconds) = growth(series?, run_s(profile))?;
    Some(format!(
        "grew in {rises} of {steps} monitor ticks, from {} to {} over {seconds:.1} s",
        format_size(first),
        format_size(last)
    ))
}

/// Advice for each user line that retained a large share to the end, or grew steadily.
pub fn advise(report: &Report) -> Vec<Advice> {
    let Some(profile) = &report.profile else {
        return Vec::new();
    };
    let over_time = timeline_by_user_line(profile);
    let peak = by_user_line(at_peak(profile));
    let exit = by_user_line(at_exit(profile));
    // What each line held at exit in memory that outlived the call that made it.
    let retained: Vec<(&StackFrame, u64)> = exit
        .iter()
        .map(|l| {
            let bytes = l
                .stacks
                .iter()
                .filter(|(_, s)| outlived_its_call(profile, &s.stack))
                .map(|(_, s)| s.bytes)
                .sum();
            (l.frame, bytes)
        })
        .filter(|&(_, bytes)| super::is_large(bytes, profile.peak_bytes))
        .collect();
    let mut lines: Vec<&StackFrame> = retained.iter().map(|&(frame, _)| frame).collect();
    let mut growing: Vec<&StackFrame> = over_time
        .iter()
        .filter(|(_, series)| growth(series, run_s(profile)).is_some())
        .map(|(frame, _)| *frame)
        .filter(|frame| !lines.contains(frame))
        .collect();
    growing.sort();
    lines.extend(growing);
    let mut advice = Vec::new();
    for frame in lines {
        let held_at_exit = retained
            .iter()
            .find(|(f, _)| *f == frame)
            .map(|&(_, bytes)| bytes);
        let at_peak = peak
            .iter()
            .find(|l| l.frame == frame)
            .map_or(0, |l| l.bytes);
        let mut facts = Vec::new();
        if let Some(bytes) = held_at_exit {
            facts.push(format!(
                "still held {} at exit, {} of the {} heap peak, after the call that made it \
                 returned (kept by something global, not bound to a module variable)",
                format_size(bytes),
                percent(bytes, profile.peak_bytes),
                format_size(profile.peak_bytes)
            ));
        }
        let growth = grew(profile, over_time.get(frame));
        facts.extend(growth.clone());
        if at_peak > 0 {
            facts.push(format!("held {} at the peak", format_size(at_peak)));
        }
        let fix = if growth.is_some() {
            "bound it: keep running aggregates instead of every item, or a bounded cache \
             (functools.lru_cache(maxsize=N), collections.deque(maxlen=N)); if it must hold \
             everything, preallocate one array"
        } else {
            "drop the reference once it is used (del it, or let it go out of scope by moving \
             the work into a function); for a cache, bound it (functools.lru_cache(maxsize=N))"
        };
        advice.push(Advice {
            technique: Technique::Release,
            rule: "release".to_owned(),
            frame: Some(frame.clone()),
            source: super::source_of(profile, frame),
            evidence: format!("{} ({})", facts.join("; "), how_measured(profile)),
            saving_bytes: (at_peak > 0).then_some(at_peak),
            saving_basis: if at_peak > 0 {
                "up to what the line held at the heap peak, if released (or bounded) before it"
                    .to_owned()
            } else {
                "none at the peak: the line held nothing then, so releasing it lowers only what \
                 the process holds afterwards"
                    .to_owned()
            },
            fix: fix.to_owned(),
        });
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::fixtures::{frame, profile, report, source, tick, user, MIB};
    use memwarden_format::report::ProfileMode;
    use memwarden_format::report::StackBytes;

    fn top(line: u32) -> StackFrame {
        frame("train.py", line, "<module>")
    }

    #[test]
    fn memory_that_outlived_its_call_is_advised_at_its_line() {
        let mut p = profile(
            ProfileMode::Sampled,
            300 * MIB,
            vec![StackBytes::new(vec![user(6)], 200 * MIB)],
        );
        p.leaked = vec![
            StackBytes::new(vec![user(6), top(30)], 200 * MIB),
            StackBytes::new(vec![user(8), top(30)], 10 * MIB),
        ];
        source(&mut p, &top(30), "main()");
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1, "{advice:#?}");
        assert_eq!(advice[0].frame, Some(user(6)));
        assert_eq!(advice[0].saving_bytes, Some(200 * MIB));
        assert!(advice[0]
            .evidence
            .starts_with("still held 200.00 MiB at exit, 67%"));
    }

    /// A script's own variables hold their values to the end: `x = np.ones(n)` at the top
    /// level, `rows = build()`; and memory whose top-level line is not known proves nothing.
    #[test]
    fn module_variables_held_at_exit_get_none() {
        let mut p = profile(ProfileMode::Sampled, 300 * MIB, Vec::new());
        p.leaked = vec![
            StackBytes::new(vec![top(3)], 100 * MIB),
            StackBytes::new(vec![user(6), top(31)], 100 * MIB),
            StackBytes::new(vec![user(7), top(32)], 100 * MIB),
            StackBytes::new(vec![user(8), top(33)], 100 * MIB),
        ];
        source(&mut p, &top(3), "x = np.ones(n)");
        source(
            &mut p,
            &top(31),
            "rows, n = build(path, mode='r')  # main == x",
        );
        source(&mut p, &top(32), "for batch in stream(loader):");
        assert_eq!(advise(&report(p)), Vec::new());
    }

    #[test]
    fn statements_that_bind_and_those_that_do_not() {
        for text in [
            "x = f()",
            "a, b = f()",
            "x: int = f()",
            "d['k=v'] = f()",
            "with f() as g:",
            "for x in f():",
        ] {
            assert!(binds(text), "{text}");
        }
        for text in [
            "main()",
            "f(a=1, b == 2)",
            "print(x == y)",
            "run('a = b')",
            "f() # x = 1",
            "x >= f()",
        ] {
            assert!(!binds(text), "{text}");
        }
    }

    #[test]
    fn a_line_that_only_grows_is_advised_even_when_freed_at_the_end() {
        let cache = vec![user(9)];
        let mut p = profile(
            ProfileMode::Exact,
            200 * MIB,
            vec![StackBytes::new(cache.clone(), 160 * MIB)],
        );
        for i in 0..20u64 {
            tick(&mut p, i as f64 * 0.05, &[(&cache, (i + 1) * 8 * MIB)]);
        }
        // Cleared at the end, over two ticks.
        tick(&mut p, 1.0, &[(&cache, 100 * MIB)]);
        tick(&mut p, 1.05, &[(&cache, 0)]);
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1, "{advice:#?}");
        assert!(advice[0]
            .evidence
            .contains("grew in 19 of 19 monitor ticks"));
        assert!(advice[0].fix.starts_with("bound it"));
    }

    #[test]
    fn steady_or_short_lived_memory_gets_none() {
        let steady = vec![user(3)];
        let brief = vec![user(4)];
        let mut p = profile(
            ProfileMode::Sampled,
            400 * MIB,
            vec![StackBytes::new(steady.clone(), 300 * MIB)],
        );
        for i in 0..20u64 {
            // Flat, then a load that rises over 3 ticks only.
            let load = if (5..8).contains(&i) {
                (i - 4) * 30 * MIB
            } else {
                0
            };
            tick(
                &mut p,
                i as f64 * 0.05,
                &[(&steady, 300 * MIB), (&brief, load)],
            );
        }
        p.leaked = vec![StackBytes::new(vec![user(3)], 8 * MIB)];
        assert_eq!(advise(&report(p)), Vec::new());
    }
}
