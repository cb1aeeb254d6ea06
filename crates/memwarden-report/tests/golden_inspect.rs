//! Golden files of `memwarden inspect`'s text: the gate's outcome and the format trials of
//! `--measure`, on typed results as `memwarden_inspect` builds them (fixed paths and sizes).
//!
//! Refresh deliberately: `MEMWARDEN_BLESS=1 cargo test -p memwarden-report`, then read
//! `git diff crates/memwarden-report/tests/golden/` (see `support/mod.rs`).

mod support;

use memwarden_inspect::gate::{Outcome, Unreadable, SCHEMA};
use memwarden_inspect::safety::JudgedImport;
use memwarden_inspect::trials::{FileTrials, Trial};
use memwarden_inspect::{ArrayInfo, FileReport, Finding, LoaderPrediction, Severity, Verdict};
use memwarden_report::text::{render_inspect, render_trials};
use support::assert_golden;

const MIB: u64 = 1 << 20;

fn file(path: &str, format: &str, file_bytes: u64) -> FileReport {
    FileReport {
        path: path.to_owned(),
        format: format.to_owned(),
        file_bytes,
        pickle_protocol: None,
        arrays: Vec::new(),
        payload_bytes: 0,
        mmappable: false,
        mmap_note: String::new(),
        loader: String::new(),
        predicted_load_peak_bytes: None,
        prediction_rule: String::new(),
        other_loaders: Vec::new(),
        read_as: Vec::new(),
        verdict: Verdict::Safe,
        imports: Vec::new(),
        findings: Vec::new(),
    }
}

fn array(name: Option<&str>, dtype: &str, shape: Option<Vec<u64>>, bytes: u64) -> ArrayInfo {
    ArrayInfo {
        name: name.map(str::to_owned),
        dtype: dtype.to_owned(),
        shape,
        bytes,
        kind: "safetensors".to_owned(),
    }
}

fn import(module: &str, name: &str, severity: Option<Severity>, reason: &str) -> JudgedImport {
    JudgedImport {
        module: module.to_owned(),
        name: name.to_owned(),
        severity,
        reason: reason.to_owned(),
    }
}

fn finding(severity: Severity, offset: Option<u64>, message: &str) -> Finding {
    Finding {
        severity,
        offset,
        message: message.to_owned(),
    }
}

/// A safetensors file with more arrays than are listed, memory-mappable.
fn safe_file() -> FileReport {
    let mut report = file("models/encoder.safetensors", "safetensors", 40 * MIB + 4096);
    report.arrays = (0..10)
        .map(|i| {
            array(
                Some(&format!("encoder.layers.{i}.weight")),
                "F32",
                Some(vec![1024, 1024 + i]),
                4 * MIB + i * 4096,
            )
        })
        .collect();
    report.arrays.push(array(None, "F16", None, 512));
    report.payload_bytes = report.arrays.iter().map(|a| a.bytes).sum();
    report.mmappable = true;
    report.mmap_note = "safetensors.safe_open maps the file".to_owned();
    report.loader = "safetensors.torch.load_file".to_owned();
    report.predicted_load_peak_bytes = Some(40 * MIB);
    report.prediction_rule = "each tensor copied once from the mapped file".to_owned();
    report.other_loaders = vec![LoaderPrediction {
        loader: "safetensors.numpy.load_file".to_owned(),
        predicted_load_peak_bytes: 40 * MIB,
        rule: "each array copied once".to_owned(),
    }];
    report
}

/// A pickle that imports allowlisted constructors and one that runs a command.
fn unsafe_file() -> FileReport {
    let mut report = file("models/model.pkl", "pickle", 3 * MIB);
    report.pickle_protocol = Some(4);
    report.read_as = vec!["joblib".to_owned()];
    report.verdict = Verdict::Unsafe;
    report.imports = vec![
        import(
            "numpy.core.multiarray",
            "_reconstruct",
            None,
            "allowlisted constructor",
        ),
        import(
            "os",
            "system",
            Some(Severity::Critical),
            "runs commands or processes",
        ),
        import(
            "sklearn.pipeline",
            "Pipeline",
            Some(Severity::Medium),
            "known ML code, not on the allowlist",
        ),
    ];
    report.findings = vec![
        finding(Severity::Info, None, "protocol 4 frames"),
        finding(Severity::High, Some(1234), "REDUCE calls os.system"),
    ];
    report.arrays = vec![ArrayInfo {
        kind: "numpy".to_owned(),
        ..array(Some("coef_"), "<f8", Some(vec![300, 1000]), 2_400_000)
    }];
    report.payload_bytes = 2_400_000;
    report.loader = "pickle.load".to_owned();
    report.predicted_load_peak_bytes = Some(5 * MIB);
    report.prediction_rule = "payload plus the file read into memory".to_owned();
    report.mmap_note = "pickle copies every array".to_owned();
    report
}

/// A file whose pickle cannot be verified, judged unsafe with no import flagged.
fn unverifiable_file() -> FileReport {
    let mut report = file("models/odd.pt", "pytorch", 800);
    report.verdict = Verdict::Unsafe;
    report.findings = vec![finding(
        Severity::High,
        Some(64),
        "cannot be verified: the pickle is encrypted or compressed in a way no loader reads",
    )];
    report.prediction_rule = "no prediction: the payload cannot be read".to_owned();
    report.mmap_note = "torch.load(mmap=True) needs the zip format".to_owned();
    report
}

/// A torch file whose every import is an allowlisted constructor.
fn allowlisted_file() -> FileReport {
    let mut report = file("models/small.pt", "pytorch", 2048);
    report.pickle_protocol = Some(2);
    report.imports = vec![
        import(
            "torch._utils",
            "_rebuild_tensor_v2",
            None,
            "allowlisted constructor",
        ),
        import(
            "collections",
            "OrderedDict",
            None,
            "allowlisted constructor",
        ),
    ];
    report.loader = "torch.load".to_owned();
    report.predicted_load_peak_bytes = Some(1024);
    report.prediction_rule = "storages copied once".to_owned();
    report.mmappable = true;
    report.mmap_note = "torch.load(mmap=True)".to_owned();
    report
}

#[test]
fn inspect_outcome() {
    let outcome = Outcome {
        schema: SCHEMA,
        files: vec![safe_file(), allowlisted_file(), unsafe_file(), unverifiable_file()],
        unreadable: vec![Unreadable {
            path: "models/broken.npy".to_owned(),
            error: "truncated: the file ends at byte 80 in the middle of a structure".to_owned(),
        }],
        skipped: vec!["models/README.md".to_owned(), "models/config.json".to_owned()],
        violations: vec![
            "models/model.pkl: judged unsafe, the policy accepts safe at most".to_owned(),
            "models/odd.pt: judged unsafe, the policy accepts safe at most".to_owned(),
            "models/encoder.safetensors: predicted load peak 40.00 MiB exceeds max_load_peak 32.00 MiB".to_owned(),
        ],
        pass: false,
    };
    assert_golden("inspect_outcome", &render_inspect(&outcome));
}

#[test]
fn inspect_safe_only() {
    let outcome = Outcome {
        schema: SCHEMA,
        files: vec![safe_file()],
        unreadable: Vec::new(),
        skipped: Vec::new(),
        violations: Vec::new(),
        pass: true,
    };
    assert_golden("inspect_safe_only", &render_inspect(&outcome));
}

fn trial(
    format: &str,
    original: bool,
    file_bytes: u64,
    save_s: Option<f64>,
    load_s: f64,
    load_peak_bytes: u64,
) -> Trial {
    Trial {
        format: format.to_owned(),
        original,
        file_bytes,
        save_s,
        load_s,
        load_peak_bytes,
    }
}

/// Two files as `--measure` prints them, one after the other: one whose recommendation
/// loads without code and saves memory, one whose best format costs a little more.
#[test]
fn trials() {
    let saved = FileTrials {
        path: "models/model.pkl".to_owned(),
        trials: vec![
            trial("pickle", true, 80 * MIB, None, 0.4213, 160 * MIB),
            trial("joblib", false, 80 * MIB + 300, Some(0.9), 0.5, 82 * MIB),
            trial(
                "safetensors",
                false,
                80 * MIB + 128,
                Some(0.25),
                0.125,
                80 * MIB,
            ),
            trial("npz", false, 81 * MIB, Some(1.5), 0.6, 81 * MIB),
        ],
        skipped: vec![
            (
                "joblib-compressed".to_owned(),
                "loading models/x.joblib as joblib-compressed failed: MemoryError".to_owned(),
            ),
            ("skops".to_owned(), "skops is not installed".to_owned()),
        ],
        recommended: Some("safetensors".to_owned()),
        saving_bytes: (80 * MIB) as i64,
        saving_pct: 50.0,
    };
    let costlier = FileTrials {
        path: "models/tiny.joblib".to_owned(),
        trials: vec![
            trial("joblib", true, 4096, None, 0.05, 2 * MIB),
            trial(
                "pickle",
                false,
                4000,
                Some(0.01),
                0.04,
                2 * MIB + 100 * 1024,
            ),
        ],
        skipped: Vec::new(),
        recommended: Some("pickle".to_owned()),
        saving_bytes: -(100 * 1024),
        saving_pct: -4.88,
    };
    let nothing = FileTrials {
        path: "models/empty.npy".to_owned(),
        trials: Vec::new(),
        skipped: vec![(
            "npy".to_owned(),
            "loading models/empty.npy as npy failed: ValueError".to_owned(),
        )],
        recommended: None,
        saving_bytes: 0,
        saving_pct: 0.0,
    };
    let text = [saved, costlier, nothing]
        .iter()
        .map(render_trials)
        .collect::<String>();
    assert_golden("trials", &text);
}
