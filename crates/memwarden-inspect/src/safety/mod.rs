//! Judging the imports of a pickle.
//!
//! Unpickling calls whatever the pickle names, so safety is decided by *what* it names.
//! The allowlist holds the constructors ML artifacts need (numpy's array rebuilds, dtypes
//! and scalars; PyTorch's tensor and parameter rebuilds, storages and dtypes; joblib's
//! array wrapper; scikit-learn's and SciPy sparse classes; plain containers). Everything
//! else is flagged by severity: *critical* for what runs commands, evaluates code or opens
//! files and sockets; *high* for other builtins and callables that chain calls
//! (`functools.partial`, `operator.*`) or anything unknown; *medium* for known ML
//! libraries' names that are not on the allowlist.

use serde::Serialize;

use crate::pickle::Import;
use crate::{Finding, Severity, Verdict};

/// An import with its judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgedImport {
    /// Module.
    pub module: String,
    /// Attribute.
    pub name: String,
    /// `None` when allowlisted.
    pub severity: Option<Severity>,
    /// Why.
    pub reason: String,
}

const ALLOWED_EXACT: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "Counter"),
    ("collections", "deque"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "object"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("__builtin__", "set"),
    ("__builtin__", "object"),
    ("copyreg", "_reconstructor"),
    ("copy_reg", "_reconstructor"),
    ("_codecs", "encode"),
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("joblib.numpy_pickle_compat", "NDArrayWrapper"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
];

/// numpy's bit generators and seed sequences, which estimators with a `random_state`
/// carry (their Cython `__pyx_unpickle_*` helpers rebuild them from plain state).
const NUMPY_RANDOM: &[(&str, &str)] = &[
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._pcg64", "PCG64DXSM"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._philox", "Philox"),
    ("numpy.random._sfc64", "SFC64"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("numpy.random._generator", "Generator"),
    ("numpy.random.mtrand", "RandomState"),
];

const NUMPY_MODULES: &[&str] = &[
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
];
const NUMPY_NAMES: &[&str] = &["_reconstruct", "scalar", "_frombuffer"];

const CRITICAL_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "importlib",
    "runpy",
    "pty",
    "socket",
    "shutil",
    "ctypes",
    "code",
    "codeop",
    "commands",
    "webbrowser",
    "multiprocessing",
    "asyncio",
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "types",
    "pathlib",
    "tempfile",
    "urllib",
    "http",
    "ftplib",
    "smtplib",
    "telnetlib",
    "pdb",
    "bdb",
    "platform",
    "signal",
    "threading",
    "_thread",
    "zipimport",
    "pip",
    "setuptools",
    "distutils",
];
const CRITICAL_BUILTINS: &[&str] = &[
    "eval",
    "exec",
    "compile",
    "__import__",
    "open",
    "input",
    "breakpoint",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "execfile",
    "file",
    "reload",
    "memoryview",
    "help",
];
const ML_PREFIXES: &[&str] = &[
    "sklearn.",
    "scipy.",
    "pandas.",
    "xgboost.",
    "lightgbm.",
    "catboost.",
    "torch.",
    "numpy.",
    "joblib.",
    "statsmodels.",
    "transformers.",
    "tokenizers.",
    "keras.",
    "tensorflow.",
    "onnx.",
    "skops.",
];

/// The names a pickle may call: the built-in allowlist plus a team's exact
/// (module, qualified name) pairs from `memwarden.toml`.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    extra: std::collections::HashSet<(String, String)>,
}

impl Allowlist {
    /// The built-in allowlist plus `extra` exact pairs.
    pub fn with_extra(extra: impl IntoIterator<Item = (String, String)>) -> Self {
        Allowlist {
            extra: extra.into_iter().collect(),
        }
    }

    /// The arguments (by position) that calling `module.name` calls in turn
    /// (`copyreg._reconstructor` calls `base`, its argument 1). Empty for most entries.
    pub fn called_arguments(&self, _module: &str, _name: &str) -> &'static [usize] {
        &[]
    }

    /// Judges one import.
    pub fn judge(&self, module: &str, name: &str) -> JudgedImport {
        if self.extra.contains(&(module.to_owned(), name.to_owned())) {
            return JudgedImport {
                module: module.to_owned(),
                name: name.to_owned(),
                severity: None,
                reason: "allowlisted by the policy file".to_owned(),
            };
        }
        judge(module, name)
    }
}

/// Judges one import against the built-in allowlist.
pub fn judge(module: &str, name: &str) -> JudgedImport {
    let judged = |severity: Option<Severity>, reason: &str| JudgedImport {
        module: module.to_owned(),
        name: name.to_owned(),
        severity,
        reason: reason.to_owned(),
    };
    if ALLOWED_EXACT.contains(&(module, name)) {
        return judged(None, "allowlisted constructor");
    }
    if NUMPY_MODULES.contains(&module) && NUMPY_NAMES.contains(&name) {
        return judged(None, "numpy array rebuild");
    }
    if NUMPY_RANDOM.contains(&(module, name)) || module == "numpy.random._pickle" {
        return judged(None, "numpy random generator state");
    }
    if module == "torch" && (name.ends_with("Storage") || is_torch_dtype(name)) {
        return judged(None, "torch storage or dtype");
    }
    // A class name, public or private (`_BinMapper`): scikit-learn rebuilds estimators
    // from classes and their state.
    let is_class = name
        .trim_start_matches('_')
        .chars()
        .next()
        .is_some_and(char::is_uppercase)
        && !name.contains('.');
    if (module == "sklearn" || module.starts_with("sklearn.")) && is_class {
        return judged(None, "scikit-learn class");
    }
    if module.starts_with("scipy.sparse") && (name.ends_with("_matrix") || name.ends_with("_array"))
    {
        return judged(None, "SciPy sparse container");
    }
    let root = module.split('.').next().unwrap_or(module);
    if module == "?" {
        return judged(
            Some(Severity::Critical),
            "name computed at load time (non-literal STACK_GLOBAL)",
        );
    }
    if CRITICAL_MODULES.contains(&root) {
        return judged(
            Some(Severity::Critical),
            "can run commands, load code, or touch files, processes or the network",
        );
    }
    if matches!(root, "builtins" | "__builtin__") {
        if CRITICAL_BUILTINS.contains(&name) {
            return judged(
                Some(Severity::Critical),
                "evaluates code, imports modules or opens files",
            );
        }
        return judged(
            Some(Severity::High),
            "a builtin that is not on the allowlist",
        );
    }
    if matches!(
        root,
        "functools" | "operator" | "itertools" | "copyreg" | "copy_reg"
    ) || module.starts_with("?copyreg")
    {
        return judged(
            Some(Severity::High),
            "chains calls: can reach anything the pickle also names",
        );
    }
    let dotted = format!("{module}.");
    if ML_PREFIXES.iter().any(|prefix| dotted.starts_with(prefix)) {
        return judged(
            Some(Severity::Medium),
            "known ML library, but not on the allowlist: review what it does when called",
        );
    }
    judged(
        Some(Severity::High),
        "unknown module: loading imports it and calls what the pickle says",
    )
}

fn is_torch_dtype(name: &str) -> bool {
    const DTYPES: &[&str] = &[
        "float16",
        "float32",
        "float64",
        "bfloat16",
        "half",
        "float",
        "double",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "bool",
        "complex64",
        "complex128",
        "long",
        "int",
        "short",
    ];
    DTYPES.contains(&name)
}

/// Judges every import (each distinct one once) and combines them with the findings into a
/// verdict.
pub fn assess(
    allowlist: &Allowlist,
    imports: &[Import],
    findings: &[Finding],
) -> (Verdict, Vec<JudgedImport>) {
    let mut judged: Vec<JudgedImport> = Vec::new();
    for import in imports {
        if !judged
            .iter()
            .any(|j| j.module == import.module && j.name == import.name)
        {
            judged.push(allowlist.judge(&import.module, &import.name));
        }
    }
    let worst = judged
        .iter()
        .filter_map(|j| j.severity)
        .chain(findings.iter().map(|f| f.severity))
        .max();
    let verdict = match worst {
        Some(Severity::Critical | Severity::High) => Verdict::Unsafe,
        Some(Severity::Medium) => Verdict::Review,
        _ => Verdict::Safe,
    };
    (verdict, judged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judgements() {
        assert_eq!(
            judge("numpy.core.multiarray", "_reconstruct").severity,
            None
        );
        assert_eq!(
            judge(
                "sklearn.ensemble._hist_gradient_boosting.gradient_boosting",
                "HistGradientBoostingClassifier"
            )
            .severity,
            None
        );
        assert_eq!(judge("torch._utils", "_rebuild_tensor_v2").severity, None);
        assert_eq!(judge("torch", "FloatStorage").severity, None);
        assert_eq!(judge("os", "system").severity, Some(Severity::Critical));
        assert_eq!(judge("posix", "system").severity, Some(Severity::Critical));
        assert_eq!(judge("builtins", "eval").severity, Some(Severity::Critical));
        assert_eq!(
            judge("builtins", "getattr").severity,
            Some(Severity::Critical)
        );
        assert_eq!(judge("builtins", "list").severity, Some(Severity::High));
        assert_eq!(judge("functools", "partial").severity, Some(Severity::High));
        assert_eq!(
            judge("sklearn.utils", "something_callable").severity,
            Some(Severity::Medium)
        );
        assert_eq!(
            judge("my_company.models", "Thing").severity,
            Some(Severity::High)
        );
        assert_eq!(judge("torch", "load").severity, Some(Severity::Medium));
        assert_eq!(judge("numpy.random._pcg64", "PCG64").severity, None);
        assert_eq!(
            judge(
                "sklearn.ensemble._hist_gradient_boosting.binning",
                "_BinMapper"
            )
            .severity,
            None
        );
        assert_eq!(
            judge("sklearn.utils", "_private_function").severity,
            Some(Severity::Medium)
        );
    }
}
