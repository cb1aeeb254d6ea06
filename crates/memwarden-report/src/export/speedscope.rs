//! speedscope's file format (`https://www.speedscope.app/file-format-schema.json`): one
//! "sampled" profile per view, weighted in bytes, so speedscope draws the memory at the peak
//! and the memory held at exit as flame graphs (its "left heavy" view sums them by stack).

use std::collections::HashMap;

use memwarden_format::report::{Report, StackBytes, StackFrame};
use serde_json::{json, Value};

/// The speedscope file of `report`'s profile: "memory at the peak" and "held at exit" over
/// the whole tree (every stack, frames under 0.1% of the peak merged), then each profiled
/// process's largest stacks at its own peak. `None` without a profile.
pub fn speedscope(report: &Report) -> Option<String> {
    let profile = report.profile.as_ref()?;
    let mut frames = Frames::default();
    let mut profiles = vec![
        frames.profile("memory at the peak (tree)", &profile.flame_at_peak),
        frames.profile("held at exit (tree)", &profile.flame_leaked),
    ];
    for process in &report.processes {
        if let Some(own) = process.profile.as_ref().filter(|p| !p.at_peak.is_empty()) {
            let name = format!(
                "pid {} at its peak: {}",
                process.pid,
                process.cmdline.join(" ")
            );
            profiles.push(frames.profile(&name, &own.at_peak));
        }
    }
    let file = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": format!("memwarden: {}", report.command.join(" ")),
        "exporter": format!("memwarden {}", report.memwarden_version),
        "activeProfileIndex": 0,
        "shared": {"frames": frames.list},
        "profiles": profiles,
    });
    Some(file.to_string())
}

/// speedscope's shared frame table.
#[derive(Default)]
struct Frames {
    list: Vec<Value>,
    index: HashMap<StackFrame, usize>,
}

impl Frames {
    fn id(&mut self, frame: &StackFrame) -> usize {
        if let Some(&id) = self.index.get(frame) {
            return id;
        }
        let mut entry = json!({
            "name": format!("{}{}", frame.function, frame.import_note()),
            "file": frame.file,
        });
        if frame.line > 0 {
            entry["line"] = json!(frame.line);
        }
        self.list.push(entry);
        self.index.insert(frame.clone(), self.list.len() - 1);
        self.list.len() - 1
    }

    /// One sampled profile: a sample per stack (outermost frame first), weighted by bytes.
    fn profile(&mut self, name: &str, stacks: &[StackBytes]) -> Value {
        let held: Vec<&StackBytes> = stacks.iter().filter(|s| s.bytes > 0).collect();
        let samples: Vec<Vec<usize>> = held
            .iter()
            .map(|s| s.stack.iter().rev().map(|f| self.id(f)).collect())
            .collect();
        let weights: Vec<u64> = held.iter().map(|s| s.bytes).collect();
        json!({
            "type": "sampled",
            "name": name,
            "unit": "bytes",
            "startValue": 0,
            "endValue": weights.iter().sum::<u64>(),
            "samples": samples,
            "weights": weights,
        })
    }
}
