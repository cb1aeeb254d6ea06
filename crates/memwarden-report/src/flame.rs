//! Stacks for flame graphs: every stack, with the frames too small to see merged.
//!
//! A run with 100 000 distinct stacks would make a page nobody can open, and most of them
//! hold a sliver. The stacks are laid out as a calling tree (outermost frame first); a
//! node holding under [`SHARE`] of the peak is merged, with its whole subtree, into one
//! `[other]` frame under its caller, which says how many frames it stands for. So the
//! stacks that remain are bounded by the peak, not by the run.

use std::collections::BTreeMap;

use memwarden_format::report::{StackBytes, StackFrame};

/// Share of the peak under which a frame is merged into `[other]`.
pub const SHARE: f64 = 0.001;

/// File of the frame that stands for merged frames.
pub const OTHER_FILE: &str = "<other>";

#[derive(Default)]
struct Node {
    bytes: u64,
    own_bytes: u64,
    children: BTreeMap<StackFrame, Node>,
}

impl Node {
    fn frames(&self) -> usize {
        1 + self.children.values().map(Node::frames).sum::<usize>()
    }
}

/// `stacks` (innermost frame first) with each frame holding under [`SHARE`] of `peak_bytes`
/// merged into an `[other]` frame under its caller; innermost frame first, largest first.
pub fn prune(stacks: &[StackBytes], peak_bytes: u64) -> Vec<StackBytes> {
    let mut root = Node::default();
    for entry in stacks.iter().filter(|e| e.bytes > 0) {
        let mut node = &mut root;
        node.bytes += entry.bytes;
        for frame in entry.stack.iter().rev() {
            node = node.children.entry(frame.clone()).or_default();
            node.bytes += entry.bytes;
        }
        node.own_bytes += entry.bytes;
    }
    let threshold = ((peak_bytes.max(root.bytes) as f64) * SHARE)
        .ceil()
        .max(1.0) as u64;
    let mut out = Vec::new();
    let mut path = Vec::new();
    emit(&root, threshold, &mut path, &mut out);
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.stack.cmp(&b.stack)));
    out
}

fn held(mut outer_first: Vec<StackFrame>, bytes: u64) -> StackBytes {
    outer_first.reverse();
    StackBytes::new(outer_first, bytes)
}

fn emit(node: &Node, threshold: u64, path: &mut Vec<StackFrame>, out: &mut Vec<StackBytes>) {
    if node.own_bytes > 0 && !path.is_empty() {
        out.push(held(path.clone(), node.own_bytes));
    }
    let (mut merged_bytes, mut merged_frames) = (0, 0);
    for (frame, child) in &node.children {
        if child.bytes < threshold {
            merged_bytes += child.bytes;
            merged_frames += child.frames();
            continue;
        }
        path.push(frame.clone());
        emit(child, threshold, path, out);
        path.pop();
    }
    if merged_bytes > 0 {
        let mut stack = path.clone();
        stack.push(StackFrame {
            file: OTHER_FILE.to_owned(),
            line: 0,
            function: format!(
                "[other: {merged_frames} frame{} under {:.1}% each]",
                if merged_frames == 1 { "" } else { "s" },
                SHARE * 100.0
            ),
            imports: None,
        });
        out.push(held(stack, merged_bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(line: u32) -> StackFrame {
        StackFrame::new("a.py", line, format!("f{line}"))
    }

    #[test]
    fn small_frames_are_merged_under_their_caller_and_totals_kept() {
        let mut stacks = vec![StackBytes {
            stack: vec![frame(2), frame(1)],
            bytes: 1_000_000,
            requested_bytes: None,
            reserved_bytes: None,
        }];
        for line in 10..2010 {
            stacks.push(StackBytes {
                stack: vec![frame(line), frame(3), frame(1)],
                bytes: 100,
                requested_bytes: None,
                reserved_bytes: None,
            });
        }
        let pruned = prune(&stacks, 1_200_000);
        let total: u64 = pruned.iter().map(|s| s.bytes).sum();
        assert_eq!(total, 1_200_000, "nothing is lost, only merged");
        assert_eq!(pruned.len(), 2);
        assert_eq!(pruned[0].stack, vec![frame(2), frame(1)]);
        let other = &pruned[1];
        assert_eq!(other.stack[1..], [frame(3), frame(1)]);
        assert_eq!(other.stack[0].file, OTHER_FILE);
        assert!(
            other.stack[0].function.contains("2000 frames"),
            "{}",
            other.stack[0].function
        );
    }

    #[test]
    fn a_hundred_thousand_stacks_shrink_to_what_the_peak_can_show() {
        let stacks: Vec<StackBytes> = (0..100_000u32)
            .map(|i| StackBytes {
                stack: vec![frame(100 + i), frame(i % 50 + 2), frame(1)],
                bytes: 1000 + u64::from(i % 7),
                requested_bytes: None,
                reserved_bytes: None,
            })
            .collect();
        let peak = stacks.iter().map(|s| s.bytes).sum();
        let pruned = prune(&stacks, peak);
        assert!(pruned.len() <= 1000, "{} stacks", pruned.len());
        assert_eq!(pruned.iter().map(|s| s.bytes).sum::<u64>(), peak);
    }
}
