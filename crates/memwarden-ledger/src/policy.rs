//! `memwarden.toml`: budgets per model and stage, and how much a version may regress.
//!
//! ```toml
//! [defaults]
//! regression_pct = 5.0     # a metric may grow this much over the previous version
//! noise_sigmas = 3.0       # plus this many standard deviations of repeated runs
//! min_noise_pct = 0.5      # (at least this much)
//! max_noise_pct = 20.0     # (and at most this much, however noisy the runs were)
//! sampled_noise_pct = 15.0 # floor for figures sampled at ticks, when they gate
//! gate_sampled = []        # sampled figures that gate: "peak_pss", "peak_gpu", "peak_rss"
//!
//! [models.fraud-detector]
//! regression_pct = 10.0
//!
//! [models.fraud-detector.stages.inference]
//! peak_rss = "2GiB"
//! peak_pss = "1.5GiB"
//! peak_gpu = "8GiB"
//! peak_heap = "1GiB"
//! leaked = "100MiB"
//! ```
//!
//! ```toml
//! [inspect]                # memwarden inspect
//! require = "safe"         # or "review": the least safe verdict accepted
//! max_load_peak = "8GiB"   # largest predicted load peak accepted
//! ```
//!
//! Settings of a stage override its model's, which override `[defaults]`, which override
//! the built-in defaults above. Unknown keys, unknown stages and malformed sizes are errors
//! that name the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memwarden_format::units::parse_size;
use serde::{Deserialize, Deserializer};

use crate::record::Metric;

/// Built-in allowed regression, in percent.
pub const DEFAULT_REGRESSION_PCT: f64 = 5.0;
/// Built-in number of standard deviations of run-to-run noise tolerated.
pub const DEFAULT_NOISE_SIGMAS: f64 = 3.0;
/// Built-in floor of the noise tolerance, in percent.
pub const DEFAULT_MIN_NOISE_PCT: f64 = 0.5;
/// Built-in cap of the noise tolerance, in percent: learned noise above it means the
/// runs are not comparable (or the figure is not fit to gate), and a gate that allowed
/// it could not fail; such a gate fails instead of passing everything.
pub const DEFAULT_MAX_NOISE_PCT: f64 = 20.0;
/// Built-in floor of the noise tolerance of figures sampled at ticks, in percent: a peak
/// shorter than the sampling interval is caught only in part, so repeated runs of the same
/// code differ by that much (peak PSS of a 0.5 s workload held 135–243 MiB over runs of
/// one version, against 220 MiB resident).
pub const DEFAULT_SAMPLED_NOISE_PCT: f64 = 15.0;

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Unreadable.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Malformed: the message has the line, the column and the key.
    #[error("invalid policy file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending key.
        message: String,
    },
}

/// A size in a policy (`"2GiB"`, `"500MB"`, or a number of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as \"2GiB\" or \"500MB\", or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, bytes: u64) -> Result<Size, E> {
                Ok(Size(bytes))
            }
            fn visit_i64<E: serde::de::Error>(self, bytes: i64) -> Result<Size, E> {
                u64::try_from(bytes).map(Size).map_err(|_| {
                    E::custom(format!(
                        "a size cannot be negative (got {bytes}); write e.g. \"2GiB\""
                    ))
                })
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "a size is a whole number of bytes or a text such as \"1.5GiB\" (got {value})"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Size, E> {
                parse_size(text).map(Size).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Reads an optional number and checks it is finite and within `range`; the message names
/// the key, the range and what was given (toml adds the file's line and column).
fn bounded<'de, D: Deserializer<'de>>(
    deserializer: D,
    key: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f64>, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && range.contains(&value) {
        Ok(Some(value))
    } else {
        Err(serde::de::Error::custom(format!(
            "{key} must be a number from {} to {} (got {value})",
            range.start(),
            range.end()
        )))
    }
}

/// Allowed range of `regression_pct`: from no growth at all to an eleven-fold one.
const REGRESSION_RANGE: std::ops::RangeInclusive<f64> = 0.0..=1000.0;
/// Allowed range of `noise_sigmas`: beyond 10 standard deviations a gate no longer fails
/// on anything the noise could not explain many times over.
const SIGMAS_RANGE: std::ops::RangeInclusive<f64> = 0.0..=10.0;
/// Allowed range of `min_noise_pct`.
const MIN_NOISE_RANGE: std::ops::RangeInclusive<f64> = 0.0..=100.0;

fn regression_pct<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    bounded(d, "regression_pct", REGRESSION_RANGE)
}

fn noise_sigmas<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    bounded(d, "noise_sigmas", SIGMAS_RANGE)
}

fn min_noise_pct<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    bounded(d, "min_noise_pct", MIN_NOISE_RANGE)
}

fn max_noise_pct<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    bounded(d, "max_noise_pct", MIN_NOISE_RANGE)
}

fn sampled_noise_pct<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    bounded(d, "sampled_noise_pct", MIN_NOISE_RANGE)
}

/// `gate_sampled`: names of metrics.
fn gate_sampled<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Metric>>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|name| {
            Metric::parse(name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "gate_sampled: unknown figure '{name}'; choose from {}",
                    Metric::ALL.map(Metric::name).join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The stages a run can belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Training.
    Train,
    /// Evaluation.
    Eval,
    /// Inference / serving.
    Inference,
    /// Tests.
    Test,
}

impl Stage {
    /// Every stage.
    pub const ALL: [Stage; 4] = [Stage::Train, Stage::Eval, Stage::Inference, Stage::Test];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Train => "train",
            Stage::Eval => "eval",
            Stage::Inference => "inference",
            Stage::Test => "test",
        }
    }

    /// Parses a stage name.
    pub fn parse(text: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// Regression settings, each optional so that levels can override one another.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerances {
    /// Allowed growth over the previous version, in percent.
    #[serde(default, deserialize_with = "regression_pct")]
    pub regression_pct: Option<f64>,
    /// Standard deviations of run-to-run noise tolerated on top.
    #[serde(default, deserialize_with = "noise_sigmas")]
    pub noise_sigmas: Option<f64>,
    /// Floor of the noise tolerance, in percent.
    #[serde(default, deserialize_with = "min_noise_pct")]
    pub min_noise_pct: Option<f64>,
    /// Cap of the noise tolerance, in percent.
    #[serde(default, deserialize_with = "max_noise_pct")]
    pub max_noise_pct: Option<f64>,
    /// Floor of the noise tolerance of sampled figures, in percent.
    #[serde(default, deserialize_with = "sampled_noise_pct")]
    pub sampled_noise_pct: Option<f64>,
    /// Figures sampled at ticks that gate regressions.
    #[serde(default, deserialize_with = "gate_sampled")]
    pub gate_sampled: Option<Vec<Metric>>,
}

impl Tolerances {
    fn or(self, fallback: Tolerances) -> Tolerances {
        Tolerances {
            regression_pct: self.regression_pct.or(fallback.regression_pct),
            noise_sigmas: self.noise_sigmas.or(fallback.noise_sigmas),
            min_noise_pct: self.min_noise_pct.or(fallback.min_noise_pct),
            max_noise_pct: self.max_noise_pct.or(fallback.max_noise_pct),
            sampled_noise_pct: self.sampled_noise_pct.or(fallback.sampled_noise_pct),
            gate_sampled: self.gate_sampled.or(fallback.gate_sampled),
        }
    }
}

/// Budgets and tolerances of one stage.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagePolicy {
    /// Budget for the tree's peak RSS.
    pub peak_rss: Option<Size>,
    /// Budget for the tree's peak PSS.
    pub peak_pss: Option<Size>,
    /// Budget for peak GPU memory.
    pub peak_gpu: Option<Size>,
    /// Budget for the profiler's heap peak.
    pub peak_heap: Option<Size>,
    /// Budget for memory still allocated at exit.
    pub leaked: Option<Size>,
    /// Allowed growth over the previous version, in percent.
    #[serde(default, deserialize_with = "regression_pct")]
    pub regression_pct: Option<f64>,
    /// Standard deviations of run-to-run noise tolerated on top.
    #[serde(default, deserialize_with = "noise_sigmas")]
    pub noise_sigmas: Option<f64>,
    /// Floor of the noise tolerance, in percent.
    #[serde(default, deserialize_with = "min_noise_pct")]
    pub min_noise_pct: Option<f64>,
    /// Cap of the noise tolerance, in percent.
    #[serde(default, deserialize_with = "max_noise_pct")]
    pub max_noise_pct: Option<f64>,
    /// Floor of the noise tolerance of sampled figures, in percent.
    #[serde(default, deserialize_with = "sampled_noise_pct")]
    pub sampled_noise_pct: Option<f64>,
    /// Figures sampled at ticks that gate regressions.
    #[serde(default, deserialize_with = "gate_sampled")]
    pub gate_sampled: Option<Vec<Metric>>,
}

/// Settings of one model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    /// Allowed growth over the previous version, in percent.
    #[serde(default, deserialize_with = "regression_pct")]
    pub regression_pct: Option<f64>,
    /// Standard deviations of run-to-run noise tolerated on top.
    #[serde(default, deserialize_with = "noise_sigmas")]
    pub noise_sigmas: Option<f64>,
    /// Floor of the noise tolerance, in percent.
    #[serde(default, deserialize_with = "min_noise_pct")]
    pub min_noise_pct: Option<f64>,
    /// Cap of the noise tolerance, in percent.
    #[serde(default, deserialize_with = "max_noise_pct")]
    pub max_noise_pct: Option<f64>,
    /// Floor of the noise tolerance of sampled figures, in percent.
    #[serde(default, deserialize_with = "sampled_noise_pct")]
    pub sampled_noise_pct: Option<f64>,
    /// Figures sampled at ticks that gate regressions.
    #[serde(default, deserialize_with = "gate_sampled")]
    pub gate_sampled: Option<Vec<Metric>>,
    /// Per stage.
    #[serde(default)]
    pub stages: BTreeMap<Stage, StagePolicy>,
}

/// What `memwarden inspect` accepts in model files.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectPolicy {
    /// The least safe verdict accepted: `safe` (default) or `review`.
    pub require: Option<RequiredSafety>,
    /// Largest predicted load peak accepted.
    pub max_load_peak: Option<Size>,
    /// Exact names a pickle may call on top of the built-in allowlist, each
    /// `"module:qualified.name"` (a team's own classes).
    #[serde(default)]
    pub allow: Vec<AllowedName>,
}

/// One exact `module:qualified.name` pair of `[inspect] allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedName {
    /// The module, as the pickle names it.
    pub module: String,
    /// The name in it (dotted for nested classes).
    pub name: String,
}

impl<'de> Deserialize<'de> for AllowedName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.split_once(':') {
            Some((module, name))
                if !module.is_empty()
                    && !name.is_empty()
                    && !name.contains('*')
                    && !module.contains('*') =>
            {
                Ok(AllowedName {
                    module: module.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(serde::de::Error::custom(format!(
                "[inspect] allow entry '{text}': write one exact name as \"module:QualifiedName\" (no wildcards), e.g. \"my_team.models:Ranker\""
            ))),
        }
    }
}

impl InspectPolicy {
    /// The `allow` entries as (module, name) pairs.
    pub fn allowed_pairs(&self) -> Vec<(String, String)> {
        self.allow
            .iter()
            .map(|a| (a.module.clone(), a.name.clone()))
            .collect()
    }
}

/// A safety level a policy can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequiredSafety {
    /// Only files judged safe.
    Safe,
    /// Files judged safe or needing review (never unsafe ones).
    Review,
}

/// A whole policy file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Settings for every model.
    #[serde(default)]
    pub defaults: Tolerances,
    /// Model-file checks (`memwarden inspect`).
    #[serde(default)]
    pub inspect: InspectPolicy,
    /// Per model.
    #[serde(default)]
    pub models: BTreeMap<String, ModelPolicy>,
    /// Where it was read from (`None`: built-in defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The settings that apply to one model and stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// Budgets by metric.
    pub budgets: BTreeMap<Metric, u64>,
    /// Allowed growth, percent.
    pub regression_pct: f64,
    /// Noise standard deviations tolerated.
    pub noise_sigmas: f64,
    /// Noise floor, percent.
    pub min_noise_pct: f64,
    /// Noise cap, percent.
    pub max_noise_pct: f64,
    /// Noise floor of sampled figures, percent.
    pub sampled_noise_pct: f64,
    /// Sampled figures that gate.
    pub gate_sampled: Vec<Metric>,
}

impl Policy {
    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut policy = Policy::parse(&text).map_err(|message| PolicyError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        policy.source = Some(path.to_owned());
        Ok(policy)
    }

    /// The policy a command uses: `explicit` (`--policy`) when given, else
    /// `./memwarden.toml` when present, else the built-in defaults.
    pub fn find(explicit: Option<&Path>) -> Result<Policy, PolicyError> {
        let default = Path::new("memwarden.toml");
        match explicit {
            Some(path) => Policy::load(path),
            None if default.exists() => Policy::load(default),
            None => Ok(Policy::default()),
        }
    }

    /// Parses policy text; the error has the line, column and key.
    pub fn parse(text: &str) -> Result<Policy, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The settings for `model` at `stage`.
    pub fn effective(&self, model: &str, stage: Stage) -> Effective {
        let model_policy = self.models.get(model);
        let stage_policy = model_policy.and_then(|m| m.stages.get(&stage));
        let stage_tolerances = stage_policy.map_or_else(Tolerances::default, |s| Tolerances {
            regression_pct: s.regression_pct,
            noise_sigmas: s.noise_sigmas,
            min_noise_pct: s.min_noise_pct,
            max_noise_pct: s.max_noise_pct,
            sampled_noise_pct: s.sampled_noise_pct,
            gate_sampled: s.gate_sampled.clone(),
        });
        let model_tolerances = model_policy.map_or_else(Tolerances::default, |m| Tolerances {
            regression_pct: m.regression_pct,
            noise_sigmas: m.noise_sigmas,
            min_noise_pct: m.min_noise_pct,
            max_noise_pct: m.max_noise_pct,
            sampled_noise_pct: m.sampled_noise_pct,
            gate_sampled: m.gate_sampled.clone(),
        });
        let t = stage_tolerances
            .or(model_tolerances)
            .or(self.defaults.clone());
        let mut budgets = BTreeMap::new();
        if let Some(s) = stage_policy {
            for (metric, size) in [
                (Metric::PeakRss, s.peak_rss),
                (Metric::PeakPss, s.peak_pss),
                (Metric::PeakGpu, s.peak_gpu),
                (Metric::PeakHeap, s.peak_heap),
                (Metric::Leaked, s.leaked),
            ] {
                if let Some(Size(bytes)) = size {
                    budgets.insert(metric, bytes);
                }
            }
        }
        Effective {
            budgets,
            regression_pct: t.regression_pct.unwrap_or(DEFAULT_REGRESSION_PCT),
            noise_sigmas: t.noise_sigmas.unwrap_or(DEFAULT_NOISE_SIGMAS),
            min_noise_pct: t.min_noise_pct.unwrap_or(DEFAULT_MIN_NOISE_PCT),
            max_noise_pct: t.max_noise_pct.unwrap_or(DEFAULT_MAX_NOISE_PCT),
            sampled_noise_pct: t.sampled_noise_pct.unwrap_or(DEFAULT_SAMPLED_NOISE_PCT),
            gate_sampled: t.gate_sampled.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[defaults]
regression_pct = 4.0

[models.fraud-detector]
regression_pct = 10.0

[models.fraud-detector.stages.inference]
peak_rss = "2GiB"
leaked = 1048576
min_noise_pct = 1.5
"#;

    #[test]
    fn levels_override_each_other() {
        let policy = Policy::parse(EXAMPLE).expect("parses");
        let e = policy.effective("fraud-detector", Stage::Inference);
        assert_eq!(e.budgets.get(&Metric::PeakRss), Some(&(2 << 30)));
        assert_eq!(e.budgets.get(&Metric::Leaked), Some(&(1 << 20)));
        assert_eq!(
            (e.regression_pct, e.min_noise_pct, e.noise_sigmas),
            (10.0, 1.5, DEFAULT_NOISE_SIGMAS)
        );
        let other = policy.effective("other", Stage::Train);
        assert!(other.budgets.is_empty());
        assert_eq!(other.regression_pct, 4.0);
        assert_eq!(
            Policy::default().effective("x", Stage::Test).regression_pct,
            DEFAULT_REGRESSION_PCT
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let err =
            Policy::parse("[models.m.stages.inference]\npeak_rs = \"1GiB\"\n").expect_err("typo");
        assert!(err.contains("line 2") && err.contains("peak_rs"), "{err}");
        let err =
            Policy::parse("[models.m.stages.serving]\npeak_rss = \"1GiB\"\n").expect_err("stage");
        assert!(
            err.contains("serving") && err.contains("inference"),
            "{err}"
        );
        let err =
            Policy::parse("[models.m.stages.train]\n\npeak_rss = \"2G\"\n").expect_err("size");
        assert!(err.contains("line 3") && err.contains("ambiguous"), "{err}");
        let err =
            Policy::parse("[defaults]\nregression_pct = -3\n[models.m]\n").expect_err("range");
        assert!(err.contains("regression_pct"), "{err}");
        let err = Policy::parse("[defaults\n").expect_err("syntax");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn numbers_out_of_range_or_not_finite_name_line_key_and_range() {
        for (text, key, range) in [
            (
                "[defaults]\nregression_pct = -5\n",
                "regression_pct",
                "0 to 1000",
            ),
            (
                "[defaults]\n\nnoise_sigmas = -3\n",
                "noise_sigmas",
                "0 to 10",
            ),
            (
                "[models.m]\nregression_pct = nan\n",
                "regression_pct",
                "0 to 1000",
            ),
            (
                "[models.m.stages.eval]\nnoise_sigmas = inf\n",
                "noise_sigmas",
                "0 to 10",
            ),
            (
                "[models.m.stages.eval]\nmin_noise_pct = -inf\n",
                "min_noise_pct",
                "0 to 100",
            ),
        ] {
            let err = Policy::parse(text).expect_err(text);
            let line = format!("line {}", text.lines().count());
            assert!(
                err.contains(&line) && err.contains(key) && err.contains(range),
                "{text:?}: {err}"
            );
        }
        let err = Policy::parse("[models.m.stages.train]\npeak_rss = -5\n").expect_err("size");
        assert!(
            err.contains("line 2") && err.contains("negative") && !err.contains("untagged"),
            "{err}"
        );
        let err = Policy::parse("[models.m.stages.train]\npeak_rss = 1.5\n").expect_err("size");
        assert!(err.contains("whole number"), "{err}");
        assert!(Policy::parse("[defaults]\nregression_pct = 0\nnoise_sigmas = 10\n").is_ok());
    }

    #[test]
    fn inspect_settings() {
        let policy = Policy::parse("[inspect]\nrequire = \"review\"\nmax_load_peak = \"8GiB\"\n")
            .expect("parses");
        assert_eq!(policy.inspect.require, Some(RequiredSafety::Review));
        assert_eq!(policy.inspect.max_load_peak, Some(Size(8 << 30)));
        let policy =
            Policy::parse("[inspect]\nallow = [\"my_team.models:Ranker\"]\n").expect("parses");
        assert_eq!(
            policy.inspect.allowed_pairs(),
            [("my_team.models".to_owned(), "Ranker".to_owned())]
        );
        assert!(Policy::parse("[inspect]\nallow = [\"my_team.*\"]\n").is_err());
        assert!(Policy::parse("[inspect]\nrequire = \"yolo\"\n")
            .expect_err("bad level")
            .contains("yolo"));
    }

    #[test]
    fn loading_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memwarden.toml");
        std::fs::write(&path, "[models.m]\nregresion_pct = 3\n").expect("w");
        let err = Policy::load(&path).expect_err("typo").to_string();
        assert!(
            err.contains("memwarden.toml")
                && err.contains("line 2")
                && err.contains("regresion_pct"),
            "{err}"
        );
    }
}
