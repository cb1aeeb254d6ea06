//! Folded stacks: `outer;...;inner bytes`, one stack per line.

use memwarden_format::names::escape_also;
use memwarden_format::report::{StackBytes, StackFrame};

/// A frame as one folded-stack entry: `function [import M] (file:line)`.
pub(crate) fn frame_label(frame: &StackFrame) -> String {
    let imports = frame.import_note();
    let label = if frame.line > 0 {
        format!(
            "{}{imports} ({}:{})",
            frame.function, frame.file, frame.line
        )
    } else {
        format!("{}{imports} ({})", frame.function, frame.file)
    };
    // `;` separates frames and a line ends a stack, in the folded format: names keep them
    // as `\x3b` and `\x0a` (the names' own escaping, so the bytes can be had back). The
    // count follows the last space, so spaces in names need nothing.
    escape_also(&label, |c| c == ';' || c.is_control()).into_owned()
}

/// Folded stacks (`outer;...;inner bytes`, one per line), the input of flamegraph.pl,
/// inferno and speedscope. Names are text in the `memwarden-escape` scheme
/// (`memwarden_format::names`), with `;` and control characters escaped too, so a line is
/// always one stack and a `;` always separates two frames.
pub fn folded(entries: &[StackBytes]) -> String {
    let mut out = String::new();
    for entry in entries.iter().filter(|entry| entry.bytes > 0) {
        let frames: Vec<String> = entry.stack.iter().rev().map(frame_label).collect();
        out.push_str(&frames.join(";"));
        out.push(' ');
        out.push_str(&entry.bytes.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use memwarden_format::names::unescape;

    fn frame(file: &str, line: u32, function: &str) -> StackFrame {
        StackFrame::new(file, line, function)
    }

    #[test]
    fn folded_stacks_are_one_line_each_with_one_frame_per_semicolon() {
        let mut import = frame("/p/train.py", 1, "<module>");
        import.imports = Some("numpy".to_owned());
        let entries = [
            StackBytes {
                stack: vec![frame(r"/p/a\xff.py", 3, "f;g\nh"), import],
                bytes: 7,
                requested_bytes: None,
                reserved_bytes: None,
            },
            StackBytes {
                stack: vec![frame("/usr/bin/python3", 0, "[before Python started]")],
                bytes: 5,
                requested_bytes: Some(9),
                reserved_bytes: Some(4),
            },
            StackBytes {
                stack: vec![frame("/p/untouched.py", 1, "<module>")],
                bytes: 0,
                requested_bytes: Some(64),
                reserved_bytes: Some(64),
            },
        ];
        let text = folded(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r"<module> [import numpy] (/p/train.py:1);f\x3bg\x0ah (/p/a\xff.py:3) 7",
                "[before Python started] (/usr/bin/python3) 5",
            ]
        );
        let inner = lines[0].split(';').nth(1).expect("two frames");
        assert_eq!(
            unescape(inner).expect("escaped"),
            b"f;g\nh (/p/a\xff.py:3) 7"
        );
    }
}
