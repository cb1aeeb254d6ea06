//! Stream instead of materialising: a whole file or dataset loaded at once, holding a
//! large share of the heap peak.
//!
//! Evidence: a user line holding at least [`super::LARGE_BYTES`] and [`super::LARGE_SHARE`]
//! of the heap peak that loads whole: a library loader under it (numpy's `load` without
//! `mmap_mode`, `loadtxt`/`genfromtxt`, pandas' `read_csv` without `chunksize`,
//! `torch.load` without `mmap=True`, json's `load`), or, for loaders that run no Python
//! frame, its text (`readlines()`, `json.load(`, `pickle.load(`, `.read()`); and a line that
//! turns an iterator into a list (`list(gen)`), counting the items its callees made.

use std::collections::HashMap;

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::{Report, StackBytes, StackFrame};
use memwarden_format::units::format_size;

use super::frames::{at_peak, by_user_line, how_measured, is_library, percent};

/// What a line loads whole, and how to stream it instead.
struct Load {
    what: &'static str,
    fix: &'static str,
}

/// Whether a library frame the line called loads whole, given the line's text.
type CallsLoader = fn(&StackFrame, &str) -> bool;
/// Whether the line's text loads whole.
type ReadsWhole = fn(&str) -> bool;

/// The library loaders a user line may call.
const LIBRARY_LOADS: &[(CallsLoader, Load)] = &[
    (
        |f, text| {
            f.file.contains("/numpy/") && f.file.contains("npyio") && f.function == "load"
                && !text.contains("mmap_mode")
        },
        Load {
            what: "np.load without mmap_mode reads the whole array into the heap",
            fix: "np.load(path, mmap_mode='r'): pages are read as used and stay file-backed, which the kernel can drop",
        },
    ),
    (
        |f, _| {
            f.file.contains("/numpy/")
                && f.file.contains("npyio")
                && (f.function == "loadtxt" || f.function == "genfromtxt")
        },
        Load {
            what: "np.loadtxt/genfromtxt parses the whole text file at once",
            fix: "convert the file once to .npy and np.load(path, mmap_mode='r'), or read row blocks (max_rows=, skiprows=)",
        },
    ),
    (
        |f, text| {
            f.file.contains("/pandas/io/parsers/")
                && (f.function.starts_with("read_csv") || f.function.starts_with("read_table"))
                && !text.contains("chunksize")
                && !text.contains("iterator=True")
        },
        Load {
            what: "read_csv without chunksize builds the whole frame",
            fix: "pd.read_csv(path, chunksize=100_000) and reduce each chunk; usecols= and dtype= shrink what is kept",
        },
    ),
    (
        |f, text| {
            f.file.ends_with("torch/serialization.py")
                && f.function == "load"
                && !text.contains("mmap=True")
        },
        Load {
            what: "torch.load without mmap=True copies every tensor into memory",
            fix: "torch.load(path, mmap=True), or safetensors: tensors stay file-backed until used",
        },
    ),
    (
        |f, _| f.file.ends_with("/json/__init__.py") && f.function == "load",
        Load {
            what: "json.load reads the whole document, then builds every object",
            fix: "parse incrementally (ijson), or write JSON Lines and read one record per line",
        },
    ),
];

/// Loads that run no Python frame of their own, told by the line's text; the first match
/// wins.
const TEXT_LOADS: &[(ReadsWhole, Load)] = &[
    (
        |text| text.contains(".readlines()"),
        Load {
            what: "readlines() makes a list of every line of the file",
            fix: "iterate over the file (for line in f:) and keep only what each line contributes",
        },
    ),
    (
        |text| text.contains("json.load("),
        Load {
            what: "json.load reads the whole document, then builds every object",
            fix: "parse incrementally (ijson), or write JSON Lines and read one record per line",
        },
    ),
    (
        |text| text.contains("pickle.load(") || text.contains("joblib.load("),
        Load {
            what: "a pickle loads whole: it has no partial read",
            fix: "store large arrays as .npy and np.load(path, mmap_mode='r'), or split the pickle into pieces loaded as needed",
        },
    ),
    (
        |text| text.contains(".read()"),
        Load {
            what: ".read() reads the whole file into one object",
            fix: "read fixed-size chunks (for chunk in iter(lambda: f.read(1 << 20), b'')), or mmap.mmap the file",
        },
    ),
];

/// Whether a line's text turns an iterator into a list: `list(`, `tuple(` or `sorted(` of
/// a call, a generator expression or a `map`.
fn materialises(text: &str) -> bool {
    ["list(", "tuple(", "sorted("].iter().any(|call| {
        text.match_indices(call).any(|(at, _)| {
            let preceded = text[..at].chars().next_back();
            let rest = &text[at + call.len()..];
            !preceded.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                && (rest.contains('(') || rest.contains(" for "))
        })
    })
}

/// Bytes at the peak held by every stack that passes through each user frame, wherever it
/// is in the stack: for a line that builds a list from a generator, the list and the items
/// the generator made, charged to the generator's own lines.
fn under_each_line(stacks: &[StackBytes]) -> HashMap<&StackFrame, u64> {
    let mut under: HashMap<&StackFrame, u64> = HashMap::new();
    for entry in stacks {
        let mut seen: Vec<&StackFrame> = Vec::new();
        for frame in entry
            .stack
            .iter()
            .filter(|f| f.line > 0 && !is_library(&f.file))
        {
            if frame.imports.is_none() && !seen.contains(&frame) {
                seen.push(frame);
                *under.entry(frame).or_default() += entry.bytes;
            }
        }
    }
    under
}

/// Advice for each large user line that loads whole.
pub fn advise(report: &Report) -> Vec<Advice> {
    let Some(profile) = &report.profile else {
        return Vec::new();
    };
    let mut advice = Vec::new();
    for line in by_user_line(at_peak(profile)) {
        if !super::is_large(line.bytes, profile.peak_bytes) {
            continue;
        }
        let source = super::source_of(profile, line.frame);
        let text = source.as_deref().unwrap_or("");
        let library = line.callees().find_map(|callee| {
            LIBRARY_LOADS
                .iter()
                .find(|(calls, _)| calls(callee, text))
                .map(|(_, load)| load)
        });
        let Some(load) = library.or_else(|| {
            TEXT_LOADS
                .iter()
                .find(|(reads, _)| reads(text))
                .map(|(_, load)| load)
        }) else {
            continue;
        };
        advice.push(Advice {
            technique: Technique::Stream,
            rule: "stream".to_owned(),
            frame: Some(line.frame.clone()),
            source,
            evidence: format!(
                "held {} at the heap peak, {} of {} ({}); {}",
                format_size(line.bytes),
                percent(line.bytes, profile.peak_bytes),
                format_size(profile.peak_bytes),
                how_measured(profile),
                load.what
            ),
            saving_bytes: Some(line.bytes),
            saving_basis: "what the line held at the peak: streamed it holds one chunk, mapped it \
                           holds file-backed pages the kernel can drop"
                .to_owned(),
            fix: load.fix.to_owned(),
        });
    }
    // A list built from a generator holds the items the generator made, which are charged
    // to the generator's lines: what the building line holds is all that is under it.
    let mut under: Vec<(&StackFrame, u64)> = under_each_line(at_peak(profile))
        .into_iter()
        .filter(|&(_, bytes)| super::is_large(bytes, profile.peak_bytes))
        .collect();
    under.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    for (frame, bytes) in under {
        let source = super::source_of(profile, frame);
        let text = source.as_deref().unwrap_or("");
        if !materialises(text)
            || advice
                .iter()
                .any(|a: &Advice| a.frame.as_ref() == Some(frame))
        {
            continue;
        }
        advice.push(Advice {
            technique: Technique::Stream,
            rule: "stream".to_owned(),
            frame: Some(frame.clone()),
            source,
            evidence: format!(
                "held {} at the heap peak, {} of {} ({}), counting the items made by what it \
                 calls; it turns an iterator into a list of every item",
                format_size(bytes),
                percent(bytes, profile.peak_bytes),
                format_size(profile.peak_bytes),
                how_measured(profile),
            ),
            saving_bytes: Some(bytes),
            saving_basis: "what the line and the items it collected held at the peak: iterated, \
                           one item is held at a time"
                .to_owned(),
            fix: "iterate over the generator itself (for item in gen: ...), or reduce it as it \
                  goes (sum(gen), max(gen)): each item is freed once used"
                .to_owned(),
        });
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::fixtures::{frame, profile, report, source, user, MIB, NUMPY};
    use memwarden_format::report::ProfileMode;
    use memwarden_format::report::StackBytes;

    fn np_load(line: u32) -> Vec<StackFrame> {
        vec![
            frame(&format!("{NUMPY}/lib/_format_impl.py"), 847, "read_array"),
            frame(&format!("{NUMPY}/lib/_npyio_impl.py"), 483, "load"),
            user(line),
            frame("train.py", 40, "<module>"),
        ]
    }

    #[test]
    fn a_whole_array_load_is_advised_at_the_users_line() {
        let mut p = profile(
            ProfileMode::Sampled,
            400 * MIB,
            vec![
                StackBytes::new(np_load(12), 300 * MIB),
                StackBytes::new(vec![user(20)], 100 * MIB),
            ],
        );
        source(&mut p, &user(12), "x = np.load(path)");
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1, "{advice:#?}");
        assert_eq!(advice[0].frame, Some(user(12)));
        assert_eq!(advice[0].saving_bytes, Some(300 * MIB));
        assert!(advice[0]
            .evidence
            .contains("75% of 400.00 MiB (sampled estimate)"));
        assert!(advice[0].fix.contains("mmap_mode='r'"));
    }

    #[test]
    fn readlines_is_told_by_the_text() {
        let mut p = profile(
            ProfileMode::Exact,
            200 * MIB,
            vec![StackBytes::new(vec![user(7)], 150 * MIB)],
        );
        source(&mut p, &user(7), "rows = f.readlines()");
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1);
        assert!(advice[0].fix.contains("for line in f"));
    }

    /// `list(gen)`: the items are made (and charged) in the generator's own lines; the
    /// building line holds them all.
    #[test]
    fn a_list_of_a_generators_items_is_advised_at_the_line_that_builds_it() {
        let make = frame("train.py", 2, "numbers");
        let objects = frame("<python objects>", 0, "[small objects]");
        let mut p = profile(
            ProfileMode::Sampled,
            160 * MIB,
            vec![
                StackBytes::new(
                    vec![
                        objects,
                        make.clone(),
                        user(6),
                        frame("train.py", 9, "<module>"),
                    ],
                    120 * MIB,
                ),
                StackBytes::new(vec![user(6), frame("train.py", 9, "<module>")], 30 * MIB),
            ],
        );
        source(&mut p, &user(6), "values = list(numbers(4_000_000))");
        source(&mut p, &make, "yield i * 1.5");
        let advice = advise(&report(p));
        assert_eq!(advice.len(), 1, "{advice:#?}");
        assert_eq!(advice[0].frame, Some(user(6)));
        assert_eq!(advice[0].saving_bytes, Some(150 * MIB));
        for text in [
            "list(x for x in y)",
            "tuple(map(f, y))",
            "sorted(read(path))",
        ] {
            assert!(materialises(text), "{text}");
        }
        for text in [
            "list(rows)",
            "mylist(f(x))",
            "self.list(f(x))",
            "x = [1, 2]",
        ] {
            assert!(!materialises(text), "{text}");
        }
    }

    #[test]
    fn a_mapped_load_a_small_one_or_a_plain_line_get_none() {
        let mut p = profile(
            ProfileMode::Sampled,
            1000 * MIB,
            vec![
                StackBytes::new(np_load(12), 300 * MIB),
                StackBytes::new(np_load(13), 50 * MIB),
                StackBytes::new(vec![user(14)], 600 * MIB),
            ],
        );
        source(&mut p, &user(12), "x = np.load(path, mmap_mode='r')");
        source(&mut p, &user(13), "y = np.load(other)");
        source(&mut p, &user(14), "z = np.ones(n)");
        assert_eq!(advise(&report(p)), Vec::new());
    }
}
