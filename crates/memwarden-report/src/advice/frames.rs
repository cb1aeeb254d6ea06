//! The user's line of a stack, and memory gathered by it.
//!
//! Advice points at the line the user can change: `x = np.load(path)` in their script, not
//! numpy's `read_array` that allocated for it. So a stack is charged to its innermost frame
//! that is the user's code, not a library's: not under `site-packages`/`dist-packages` or
//! the interpreter's standard library (the same roots [`crate::imports`] folds), not a
//! frozen module. `<string>` (`python -c`) and `<stdin>` are the user's.

use std::collections::HashMap;

use memwarden_format::report::{Profile, StackBytes, StackFrame};

pub use crate::lines::{is_library, user_frame};

/// Memory charged to one user line.
pub struct UserLine<'a> {
    /// The line.
    pub frame: &'a StackFrame,
    /// Bytes its stacks hold.
    pub bytes: u64,
    /// Of `bytes`, small Python objects (pymalloc arenas, `[small objects]`).
    pub small_object_bytes: u64,
    /// Its stacks, each with the index of the user's frame in it; largest first.
    pub stacks: Vec<(usize, &'a StackBytes)>,
}

impl UserLine<'_> {
    /// The library frames the line called, innermost first, over all its stacks.
    pub fn callees(&self) -> impl Iterator<Item = &StackFrame> {
        self.stacks.iter().flat_map(|(at, s)| &s.stack[..*at])
    }
}

/// `stacks` gathered by their user line, largest first. Memory of an import (a frame with
/// `imports`) is left out: importing a module is not something these rules advise on.
pub fn by_user_line(stacks: &[StackBytes]) -> Vec<UserLine<'_>> {
    let mut lines: HashMap<&StackFrame, UserLine<'_>> = HashMap::new();
    for entry in stacks {
        let Some((at, frame)) = user_frame(&entry.stack) else {
            continue;
        };
        if frame.imports.is_some() {
            continue;
        }
        let line = lines.entry(frame).or_insert_with(|| UserLine {
            frame,
            bytes: 0,
            small_object_bytes: 0,
            stacks: Vec::new(),
        });
        line.bytes += entry.bytes;
        if crate::lines::is_small_objects(&entry.stack) {
            line.small_object_bytes += entry.bytes;
        }
        line.stacks.push((at, entry));
    }
    let mut lines: Vec<UserLine<'_>> = lines.into_values().collect();
    for line in &mut lines {
        line.stacks.sort_by(|a, b| {
            b.1.bytes
                .cmp(&a.1.bytes)
                .then_with(|| a.1.stack.cmp(&b.1.stack))
        });
    }
    lines.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.frame.cmp(b.frame)));
    lines
}

/// Every stack at the peak: the flame graph's (all of them, slivers merged) when the
/// report has it, else the largest ones.
pub fn at_peak(profile: &Profile) -> &[StackBytes] {
    if profile.flame_at_peak.is_empty() {
        &profile.at_peak
    } else {
        &profile.flame_at_peak
    }
}

/// As [`at_peak`], for the memory held at exit.
pub fn at_exit(profile: &Profile) -> &[StackBytes] {
    if profile.flame_leaked.is_empty() {
        &profile.leaked
    } else {
        &profile.flame_leaked
    }
}

/// Bytes each user line held at each point of the profile's timeline, as
/// `(t_s, bytes)` series: only the points where one of its stacks was among the heaviest
/// (a line absent from a point is unknown there, not zero).
pub fn timeline_by_user_line(profile: &Profile) -> HashMap<&StackFrame, Vec<(f64, u64)>> {
    let mut series: HashMap<&StackFrame, Vec<(f64, u64)>> = HashMap::new();
    for point in &profile.timeline {
        let mut here: HashMap<&StackFrame, u64> = HashMap::new();
        for held in &point.top {
            let Some(stack) = profile.timeline_stacks.get(held.stack_id as usize) else {
                continue;
            };
            if let Some((_, frame)) = user_frame(stack).filter(|(_, f)| f.imports.is_none()) {
                *here.entry(frame).or_default() += held.bytes;
            }
        }
        for (frame, bytes) in here {
            series.entry(frame).or_default().push((point.t_s, bytes));
        }
    }
    series
}

/// `part` as a whole percentage of `whole`.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "—".to_owned();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// How the profile's byte figures were had, for evidence: estimates or exact.
pub fn how_measured(profile: &Profile) -> &'static str {
    match profile.mode {
        memwarden_format::report::ProfileMode::Sampled => "sampled estimate",
        memwarden_format::report::ProfileMode::Exact => "every allocation recorded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::fixtures::{frame, NUMPY};
    use memwarden_format::report::StackBytes;

    #[test]
    fn the_users_line_is_under_the_library_frames() {
        let stack = vec![
            frame(&format!("{NUMPY}/lib/_format_impl.py"), 847, "read_array"),
            frame(&format!("{NUMPY}/lib/_npyio_impl.py"), 483, "load"),
            frame("<frozen runpy>", 88, "_run_code"),
            frame("train.py", 4, "main"),
        ];
        assert_eq!(user_frame(&stack).map(|(at, f)| (at, f.line)), Some((3, 4)));
        assert!(is_library("/usr/lib/python3.11/json/__init__.py"));
        assert!(!is_library("<string>"));
        assert!(!is_library("/home/me/lib/pythonic/train.py"));
        let stacks = [
            StackBytes::new(stack.clone(), 10),
            StackBytes::new(vec![stack[3].clone()], 5),
        ];
        let lines = by_user_line(&stacks);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].bytes, lines[0].stacks.len()), (15, 2));
        assert_eq!(lines[0].callees().count(), 3);
    }
}
