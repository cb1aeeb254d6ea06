//! A serialization that loads without copies: a model or data load whose peak is about
//! twice its payload.
//!
//! Evidence: a user line that loads (`torch/serialization.py` `load` or numpy's `load`
//! under it; `pickle.load`, `pickle.loads`, `joblib.load`, `torch.load`, `np.load` in its
//! text), holding a large share of the heap peak ([`super::is_large`]), and either
//! - at least [`COPY_RATIO`] times its payload: what it held after the peak (the median of
//!   the timeline points after the peak where it appears, or at exit if more), or
//! - with no payload figure, two stacks each at least [`TWIN_SHARE`] of what it held: the
//!   bytes read and the objects made from them.

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::Report;
use memwarden_format::units::format_size;

use super::frames::{at_exit, at_peak, by_user_line, how_measured, timeline_by_user_line};

/// A load held at least this many times its payload at the peak holds a second copy. Not
/// 2: allocator rounding and sampled estimates put a true double anywhere from about 1.7,
/// and less than 0.6 of a payload more is not a whole copy.
const COPY_RATIO: f64 = 1.6;

/// Two stacks of one load each holding this share of it are two copies of a size.
const TWIN_SHARE: f64 = 0.4;

/// Which loader a line runs, told by the library frames it called and by its text.
fn loader(callees: &[&str], text: &str) -> Option<&'static str> {
    let calls = |needle: &str| callees.iter().any(|c| c.contains(needle));
    if calls("torch/serialization.py:load") || text.contains("torch.load(") {
        Some("torch.load(path, mmap=True), or safetensors (safe_open reads tensors one at a time)")
    } else if (calls("/numpy/") && calls("npyio")) || text.contains("np.load(") {
        Some("np.load(path, mmap_mode='r') of an uncompressed .npy (an .npz is read and inflated whole)")
    } else if text.contains("loads(") && text.contains(".read()") {
        Some("pickle.load(f) builds from the file as it reads, without the whole file's bytes beside the objects; for arrays, a mapped format (.npy with np.load(path, mmap_mode='r'), safetensors) loads nothing up front")
    } else if text.contains("pickle.load") || text.contains("joblib.load(") {
        Some("a format that loads by mapping: safetensors, or .npy with np.load(path, mmap_mode='r')")
    } else {
        None
    }
}

/// Advice for each large load that held a second copy at the peak.
pub fn advise(report: &Report) -> Vec<Advice> {
    let Some(profile) = &report.profile else {
        return Vec::new();
    };
    let over_time = timeline_by_user_line(profile);
    let exit = by_user_line(at_exit(profile));
    let mut advice = Vec::new();
    for line in by_user_line(at_peak(profile)) {
        if !super::is_large(line.bytes, profile.peak_bytes) {
            continue;
        }
        let source = super::source_of(profile, line.frame);
        let callees: Vec<String> = line
            .callees()
            .map(|f| format!("{}:{}", f.file, f.function))
            .collect();
        let callees: Vec<&str> = callees.iter().map(String::as_str).collect();
        let Some(fix) = loader(&callees, source.as_deref().unwrap_or("")) else {
            continue;
        };
        // The load's copy outlives the peak's instant by a tick or two: what the line
        // settled at is the (lower) median of what it held after the peak.
        let after_peak = profile.peak_at_s.and_then(|peak_s| {
            let mut after: Vec<u64> = over_time
                .get(line.frame)?
                .iter()
                .filter(|(t_s, _)| *t_s > peak_s)
                .map(|&(_, bytes)| bytes)
                .collect();
            after.sort_unstable();
            after.get(after.len().saturating_sub(1) / 2).copied()
        });
        let at_end = exit.iter().find(|l| l.frame == line.frame).map(|l| l.bytes);
        let payload = after_peak
            .into_iter()
            .chain(at_end)
            .max()
            .filter(|&b| b > 0);
        let (evidence, copy_bytes) = match payload {
            Some(payload) if line.bytes as f64 >= COPY_RATIO * payload as f64 => (
                format!(
                    "held {} at the heap peak, {:.1}× the {} it held afterwards ({})",
                    format_size(line.bytes),
                    line.bytes as f64 / payload as f64,
                    format_size(payload),
                    how_measured(profile)
                ),
                line.bytes - payload,
            ),
            Some(_) => continue,
            None => {
                let twins: Vec<u64> = line.stacks.iter().map(|(_, s)| s.bytes).take(2).collect();
                match twins[..] {
                    [a, b] if b as f64 >= TWIN_SHARE * line.bytes as f64 => (
                        format!(
                            "held {} at the heap peak in two stacks of {} and {}: the bytes read and the objects made from them ({})",
                            format_size(line.bytes),
                            format_size(a),
                            format_size(b),
                            how_measured(profile)
                        ),
                        b,
                    ),
                    _ => continue,
                }
            }
        };
        advice.push(Advice {
            technique: Technique::Serialization,
            rule: "serialization".to_owned(),
            frame: Some(line.frame.clone()),
            source,
            evidence,
            saving_bytes: Some(copy_bytes),
            saving_basis: "the second copy: what the load held at the peak beyond its payload; \
                           a mapped format's bytes on disk are the objects"
                .to_owned(),
            fix: format!(
                "{fix}; memwarden inspect FILE shows the file's formats and its predicted load peak"
            ),
        });
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::fixtures::{frame, profile, report, source, tick, user, MIB};
    use memwarden_format::report::StackBytes;
    use memwarden_format::report::{ProfileMode, StackFrame};

    const TORCH: &str = "/venv/lib/python3.11/site-packages/torch/serialization.py";

    #[test]
    fn a_load_at_twice_its_payload_is_advised() {
        let stack = vec![user(5), frame("train.py", 9, "<module>")];
        let mut p = profile(
            ProfileMode::Sampled,
            320 * MIB,
            vec![StackBytes::new(stack.clone(), 300 * MIB)],
        );
        p.peak_at_s = Some(1.0);
        tick(&mut p, 0.95, &[(&stack, 300 * MIB)]);
        // The copy outlives the peak's instant by a tick.
        tick(&mut p, 1.05, &[(&stack, 300 * MIB)]);
        tick(&mut p, 1.10, &[(&stack, 150 * MIB)]);
        tick(&mut p, 1.15, &[(&stack, 150 * MIB)]);
        source(&mut p, &user(5), "model = pickle.loads(f.read())");
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1, "{advice:#?}");
        assert_eq!(advice[0].frame, Some(user(5)));
        assert_eq!(advice[0].saving_bytes, Some(150 * MIB));
        assert!(
            advice[0].evidence.contains("2.0× the 150.00 MiB"),
            "{}",
            advice[0].evidence
        );
        assert!(advice[0].fix.contains("pickle.load(f)"));
        assert!(advice[0].fix.contains("memwarden inspect FILE"));
    }

    #[test]
    fn two_stacks_of_a_torch_load_are_the_bytes_and_the_tensors() {
        let under = |f: &str| vec![frame(TORCH, 100, f), frame(TORCH, 1000, "load"), user(3)];
        let p = profile(
            ProfileMode::Exact,
            500 * MIB,
            vec![
                StackBytes::new(under("_read_record"), 200 * MIB),
                StackBytes::new(under("_load_storage"), 200 * MIB),
            ],
        );
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1);
        assert!(advice[0].fix.starts_with("torch.load(path, mmap=True)"));
        assert_eq!(advice[0].saving_bytes, Some(200 * MIB));
    }

    #[test]
    fn a_load_holding_only_its_payload_gets_none() {
        let stack: Vec<StackFrame> = vec![user(5)];
        let mut p = profile(
            ProfileMode::Sampled,
            200 * MIB,
            vec![StackBytes::new(stack.clone(), 150 * MIB)],
        );
        p.peak_at_s = Some(1.0);
        tick(&mut p, 1.5, &[(&stack, 150 * MIB)]);
        source(&mut p, &user(5), "model = pickle.load(f)");
        assert_eq!(advise(&report(p)), Vec::new());
    }
}
