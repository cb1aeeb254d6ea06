//! The per-line table of a profile: for each line, what its stacks held at the peak and at
//! exit and what it allocated over the run.

use std::collections::HashMap;

use memwarden_format::capture::SMALL_OBJECTS_FUNCTION;
use memwarden_format::report::{LineAllocations, LineStats, StackBytes, StackFrame};

/// Most lines a profile lists: the heaviest by each of peak, exit and allocated bytes.
pub const MAX_LINES: usize = 100;

/// Whether `file` is library code: an installed package, the standard library, a frozen
/// module (`<string>` and `<stdin>` are the user's).
pub fn is_library(file: &str) -> bool {
    file.starts_with("<frozen ") || crate::imports::library_root(file).is_some()
}

/// The line a stack is charged to: the line the user can change, its innermost frame
/// with a line number in the user's own code (`x = np.ones(n)`, not numpy's `empty` under
/// it); else its innermost frame with a line number (all of it library code); else its
/// innermost frame (a pseudo frame such as `[before Python started]`). Pseudo frames
/// above a line (`[small objects]`, `[thread NAME]`) are charged to it.
pub fn line_of(stack: &[StackFrame]) -> Option<&StackFrame> {
    user_frame(stack)
        .map(|(_, frame)| frame)
        .or_else(|| stack.iter().find(|f| f.line > 0))
        .or_else(|| stack.first())
}

/// The innermost frame of `stack` in the user's own code, with its index.
pub fn user_frame(stack: &[StackFrame]) -> Option<(usize, &StackFrame)> {
    stack
        .iter()
        .enumerate()
        .find(|(_, f)| f.line > 0 && !is_library(&f.file))
}

/// Whether a stack's memory is small Python objects (pymalloc arenas).
pub fn is_small_objects(stack: &[StackFrame]) -> bool {
    stack
        .first()
        .is_some_and(|f| f.line == 0 && f.function == SMALL_OBJECTS_FUNCTION)
}

/// The table: every line that held memory at the peak or at exit or allocated any, keeping
/// the [`MAX_LINES`] heaviest by each figure, ordered by bytes at the peak, then allocated.
pub fn line_stats(
    at_peak: &[StackBytes],
    leaked: &[StackBytes],
    allocations: &[LineAllocations],
) -> Vec<LineStats> {
    let mut by_line: HashMap<&StackFrame, LineStats> = HashMap::new();
    let entry = |frame: &StackFrame| -> LineStats {
        LineStats {
            frame: frame.clone(),
            peak_bytes: 0,
            small_object_bytes: 0,
            leaked_bytes: 0,
            allocated_bytes: 0,
            allocations: 0,
        }
    };
    for held in at_peak {
        if let Some(line) = line_of(&held.stack) {
            let stats = by_line.entry(line).or_insert_with(|| entry(line));
            stats.peak_bytes += held.bytes;
            if is_small_objects(&held.stack) {
                stats.small_object_bytes += held.bytes;
            }
        }
    }
    for held in leaked {
        if let Some(line) = line_of(&held.stack) {
            by_line
                .entry(line)
                .or_insert_with(|| entry(line))
                .leaked_bytes += held.bytes;
        }
    }
    for line in allocations {
        let stats = by_line
            .entry(&line.frame)
            .or_insert_with(|| entry(&line.frame));
        stats.allocated_bytes += line.allocated_bytes;
        stats.allocations += line.allocations;
    }
    let all: Vec<LineStats> = by_line.into_values().collect();
    let mut keep = vec![false; all.len()];
    let figures: [fn(&LineStats) -> u64; 3] =
        [|l| l.peak_bytes, |l| l.leaked_bytes, |l| l.allocated_bytes];
    for figure in figures {
        let mut order: Vec<usize> = (0..all.len()).filter(|&i| figure(&all[i]) > 0).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(figure(&all[i])));
        for i in order.into_iter().take(MAX_LINES) {
            keep[i] = true;
        }
    }
    let mut lines: Vec<LineStats> = all
        .into_iter()
        .zip(keep)
        .filter_map(|(line, keep)| keep.then_some(line))
        .collect();
    lines.sort_by(|a, b| {
        b.peak_bytes
            .cmp(&a.peak_bytes)
            .then(b.allocated_bytes.cmp(&a.allocated_bytes))
            .then_with(|| a.frame.cmp(&b.frame))
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use memwarden_format::capture::SMALL_OBJECTS_FILE;

    fn frame(file: &str, line: u32, function: &str) -> StackFrame {
        StackFrame::new(file, line, function)
    }

    #[test]
    fn pseudo_frames_are_charged_to_the_python_line_under_them() {
        let build = frame("train.py", 12, "build");
        let objects = frame(SMALL_OBJECTS_FILE, 0, SMALL_OBJECTS_FUNCTION);
        let at_peak = [
            StackBytes::new(
                vec![objects, build.clone(), frame("train.py", 40, "main")],
                300,
            ),
            StackBytes::new(vec![build.clone(), frame("train.py", 40, "main")], 100),
            StackBytes::new(
                vec![frame("/usr/bin/python3", 0, "[before Python started]")],
                5,
            ),
        ];
        let leaked = [StackBytes::new(vec![build.clone()], 50)];
        let allocations = [LineAllocations {
            frame: build.clone(),
            allocated_bytes: 1000,
            allocations: 7,
        }];
        let lines = line_stats(&at_peak, &leaked, &allocations);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].frame, build);
        assert_eq!(
            (
                lines[0].peak_bytes,
                lines[0].small_object_bytes,
                lines[0].leaked_bytes,
                lines[0].allocated_bytes,
                lines[0].allocations
            ),
            (400, 300, 50, 1000, 7)
        );
        assert_eq!(lines[1].frame.function, "[before Python started]");
    }

    #[test]
    fn library_lines_are_charged_to_the_users_line_that_called_them() {
        let ones = frame(
            "/venv/lib/python3.11/site-packages/numpy/_core/numeric.py",
            232,
            "ones",
        );
        let at_peak = [
            StackBytes::new(
                vec![
                    ones.clone(),
                    frame("w.py", 6, "load"),
                    frame("w.py", 14, "main"),
                ],
                40,
            ),
            StackBytes::new(vec![ones.clone(), frame("w.py", 10, "grow")], 20),
            StackBytes::new(
                vec![
                    ones.clone(),
                    frame("/usr/lib/python3.11/threading.py", 975, "run"),
                ],
                5,
            ),
        ];
        let lines = line_stats(&at_peak, &[], &[]);
        let shown: Vec<(&str, u32, u64)> = lines
            .iter()
            .map(|l| (l.frame.file.as_str(), l.frame.line, l.peak_bytes))
            .collect();
        assert_eq!(
            shown,
            [
                ("w.py", 6, 40),
                ("w.py", 10, 20),
                (ones.file.as_str(), 232, 5)
            ],
            "library code alone is its own innermost line"
        );
    }

    #[test]
    fn the_table_keeps_the_heaviest_lines_by_each_figure() {
        let allocations: Vec<LineAllocations> = (1..=3 * MAX_LINES as u32)
            .map(|i| LineAllocations {
                frame: frame("a.py", i, "f"),
                allocated_bytes: u64::from(i),
                allocations: 1,
            })
            .collect();
        let at_peak = [StackBytes::new(vec![frame("a.py", 1, "f")], 10)];
        let lines = line_stats(&at_peak, &[], &allocations);
        assert_eq!(
            lines.len(),
            MAX_LINES + 1,
            "the top by allocation, and the line held at the peak"
        );
        assert_eq!(lines[0].frame.line, 1);
        assert!(lines
            .iter()
            .skip(1)
            .all(|l| l.frame.line > 2 * MAX_LINES as u32));
    }
}
