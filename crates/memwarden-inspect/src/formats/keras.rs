//! Keras model configs: the JSON that `keras.models.load_model` turns into objects.
//!
//! Loading a Keras model builds every object its config names. Two things in a config run
//! code of the file's choosing: a `Lambda` layer (its `function` is marshalled Python
//! bytecode in a Keras 2 `.h5`, a serialized `__lambda__` in Keras 3), and a `module` that
//! is not Keras's own (Keras 3 before 3.9 imports any module a config names and calls what
//! it finds there: CVE-2025-1550). So every object in the config with a `class_name` is
//! judged against an exact allowlist of Keras's built-in public names.
//!
//! The allowlist follows `keras/src/saving/serialization_lib.py` (keras-team/keras):
//! `deserialize_keras_object` resolves a `module` of `keras` or `keras.*` through Keras's
//! exported API (`api_export.get_symbol_from_name`), refuses the loading functions it lists
//! in `LOADING_APIS` (the CVE-2025-8747 / CVE-2025-9906 bypasses), looks up functions of
//! module `builtins` among its `BUILTIN_MODULES` (activations, constraints, initializers,
//! losses, metrics, optimizers, regularizers), and refuses `__lambda__` in `safe_mode`; the
//! name tables below are the exports of `keras/api/<module>/__init__.py`. Keras 2 configs
//! name classes without a module, resolved among the same built-ins or the user's
//! `custom_objects`.
//!
//! Severity: code the file carries (Lambda, pickled modules, a dangerous module or a
//! loading function) is Critical; a module outside Keras is High (its code runs, and the
//! user must supply it); a Keras-looking name memwarden does not know is Medium.

use serde_json::{Map, Value};

use crate::{FileReport, Finding, Severity, Verdict};

/// Findings kept per config; beyond, one finding counts the rest.
const MAX_FINDINGS: usize = 100;

/// Classes exported by `keras.layers` (Keras 3), without the ones judged apart below
/// (`Lambda`, `TFSMLayer`, `TorchModuleWrapper`, `JaxLayer`, `FlaxLayer`).
const LAYERS: &str = "\
    Activation ActivityRegularization AdaptiveAveragePooling1D AdaptiveAveragePooling2D \
    AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D \
    Add AdditiveAttention AlphaDropout Attention AugMix AutoContrast Average AveragePooling1D \
    AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D BatchNormalization \
    Bidirectional CategoryEncoding CenterCrop Concatenate \
    ContrastLimitedAdaptiveHistogramEqualization Conv1D Conv1DTranspose Conv2D Conv2DTranspose \
    Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D Convolution1D \
    Convolution1DTranspose Convolution2D Convolution2DTranspose Convolution3D \
    Convolution3DTranspose Cropping1D Cropping2D Cropping3D CutMix Dense DepthwiseConv1D \
    DepthwiseConv2D Discretization Dot Dropout ELU EinsumDense Embedding Equalization Flatten \
    GRU GRUCell GaussianDropout GaussianNoise GlobalAveragePooling1D GlobalAveragePooling2D \
    GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D GlobalMaxPool1D \
    GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D \
    GroupNormalization GroupQueryAttention HashedCrossing Hashing Identity InputLayer \
    InputSpec IntegerLookup LSTM LSTMCell Layer LayerNormalization LeakyReLU Masking \
    MaxNumBoundingBoxes MaxPool1D MaxPool2D MaxPool3D MaxPooling1D MaxPooling2D MaxPooling3D \
    Maximum MelSpectrogram Minimum MixUp MultiHeadAttention Multiply Normalization PReLU \
    Permute Pipeline RMSNormalization RNN RandAugment RandomBrightness RandomColorDegeneration \
    RandomColorJitter RandomContrast RandomCrop RandomElasticTransform RandomErasing \
    RandomFlip RandomGaussianBlur RandomGrayscale RandomHue RandomInvert RandomPerspective \
    RandomPosterization RandomRotation RandomSaturation RandomSharpness RandomShear \
    RandomTranslation RandomZoom ReLU RepeatVector Rescaling Reshape Resizing \
    ReversibleEmbedding STFTSpectrogram SeparableConv1D SeparableConv2D SeparableConvolution1D \
    SeparableConvolution2D SimpleRNN SimpleRNNCell Softmax Solarization SpatialDropout1D \
    SpatialDropout2D SpatialDropout3D SpectralNormalization StackedRNNCells StringLookup \
    Subtract TernaryDense TextVectorization TimeDistributed UnitNormalization UpSampling1D \
    UpSampling2D UpSampling3D Wrapper ZeroPadding1D ZeroPadding2D ZeroPadding3D";

/// `keras.initializers`, classes and functions.
const INITIALIZERS: &str = "\
    Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer \
    Initializer LecunNormal LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal \
    RandomUniform STFT STFTInitializer TruncatedNormal VarianceScaling Zeros constant \
    glorot_normal glorot_uniform he_normal he_uniform identity lecun_normal lecun_uniform ones \
    orthogonal random_normal random_uniform stft truncated_normal variance_scaling zeros";

/// `keras.regularizers` and `keras.constraints`.
const REGULARIZERS_CONSTRAINTS: &str = "\
    L1 L1L2 L2 OrthogonalRegularizer Regularizer l1 l1_l2 l2 orthogonal_regularizer Constraint \
    MaxNorm MinMaxNorm NonNeg UnitNorm max_norm min_max_norm non_neg unit_norm";

/// `keras.activations` (functions).
const ACTIVATIONS: &str = "\
    celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh \
    leaky_relu linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_shrink \
    softmax softplus softsign sparse_plus sparse_sigmoid sparsemax squareplus swish tanh \
    tanh_shrink threshold";

/// `keras.optimizers` and `keras.optimizers.schedules`.
const OPTIMIZERS: &str = "\
    Adadelta Adafactor Adagrad Adam AdamW Adamax Ftrl Lamb Lion LossScaleOptimizer Muon Nadam \
    Optimizer RMSprop SGD ScheduleFreeAdamW CosineDecay CosineDecayRestarts ExponentialDecay \
    InverseTimeDecay LearningRateSchedule PiecewiseConstantDecay PolynomialDecay";

/// `keras.losses` and `keras.metrics`, classes and functions.
const LOSSES_METRICS: &str = "\
    BinaryCrossentropy BinaryFocalCrossentropy CTC CategoricalCrossentropy \
    CategoricalFocalCrossentropy CategoricalGeneralizedCrossEntropy CategoricalHinge Circle \
    CosineSimilarity Dice Hinge Huber KLDivergence LogCosh Loss MeanAbsoluteError \
    MeanAbsolutePercentageError MeanSquaredError MeanSquaredLogarithmicError Poisson \
    SparseCategoricalCrossentropy SquaredHinge Tversky binary_crossentropy \
    binary_focal_crossentropy categorical_crossentropy categorical_focal_crossentropy \
    categorical_generalized_cross_entropy categorical_hinge circle cosine_similarity ctc dice \
    hinge huber kl_divergence log_cosh mean_absolute_error mean_absolute_percentage_error \
    mean_squared_error mean_squared_logarithmic_error poisson sparse_categorical_crossentropy \
    squared_hinge tversky AUC Accuracy BinaryAccuracy BinaryIoU CategoricalAccuracy \
    ConcordanceCorrelation F1Score FBetaScore FalseNegatives FalsePositives IoU LogCoshError \
    Mean MeanIoU MeanMetricWrapper Metric OneHotIoU OneHotMeanIoU PearsonCorrelation Precision \
    PrecisionAtRecall R2Score Recall RecallAtPrecision RootMeanSquaredError \
    SensitivityAtSpecificity SparseCategoricalAccuracy SparseTopKCategoricalAccuracy \
    SpecificityAtSensitivity Sum TopKCategoricalAccuracy TrueNegatives TruePositives \
    binary_accuracy categorical_accuracy concordance_correlation pearson_correlation \
    sparse_categorical_accuracy sparse_top_k_categorical_accuracy top_k_categorical_accuracy";

/// Classes of `keras`, `keras.models` and `keras.dtype_policies`.
const MODELS_POLICIES: &str = "\
    DTypePolicy FloatDTypePolicy Function Input InputSpec KerasTensor Layer Model Sequential \
    AWQDTypePolicy DTypePolicyMap GPTQDTypePolicy Int4DTypePolicy QuantizedDTypePolicy \
    QuantizedFloat8DTypePolicy TernaryDTypePolicy";

/// Names Keras 2 (tf.keras) configs use that Keras 3 no longer exports, and Keras's own
/// markers for values (`serialization_lib.serialize_keras_object`).
const LEGACY_AND_MARKERS: &str = "\
    Functional TFOpLambda SlicingOpLambda TensorFlowOpLayer ThresholdedReLU LocallyConnected1D \
    LocallyConnected2D CuDNNGRU CuDNNLSTM DenseFeatures SyncBatchNormalization AbstractRNNCell \
    PeepholeLSTMCell RandomFourierFeatures Policy Custom>Adam Custom>AdamW Custom>SGD \
    Custom>RMSprop Custom>Adagrad Custom>Adadelta Custom>Adamax Custom>Nadam Custom>Ftrl \
    __keras_tensor__ __tensor__ __numpy__ __bytes__ __ellipsis__ __slice__";

/// Modules a config may name, each with the names it may name there.
const MODULES: &[(&str, &[&str])] = &[
    ("keras", &[MODELS_POLICIES]),
    ("keras.layers", &[LAYERS]),
    ("keras.initializers", &[INITIALIZERS]),
    ("keras.regularizers", &[REGULARIZERS_CONSTRAINTS]),
    ("keras.constraints", &[REGULARIZERS_CONSTRAINTS]),
    ("keras.activations", &[ACTIVATIONS]),
    ("keras.optimizers", &[OPTIMIZERS]),
    ("keras.optimizers.schedules", &[OPTIMIZERS]),
    ("keras.losses", &[LOSSES_METRICS]),
    ("keras.metrics", &[LOSSES_METRICS]),
    ("keras.models", &[MODELS_POLICIES]),
    ("keras.dtype_policies", &[MODELS_POLICIES]),
    ("keras.src.models.functional", &["Functional"]),
    ("keras.src.models.sequential", &["Sequential"]),
    ("keras.src.models.model", &["Model"]),
    // Functions Keras serializes by bare name (`builtins` + a name in BUILTIN_MODULES).
    (
        "builtins",
        &[
            ACTIVATIONS,
            LOSSES_METRICS,
            INITIALIZERS,
            REGULARIZERS_CONSTRAINTS,
        ],
    ),
];

/// Keras functions that load, fetch or write files, or turn safe mode off: reachable from
/// a config before Keras 3.11 (CVE-2025-8747, CVE-2025-9906; `LOADING_APIS` since).
const KERAS_DANGEROUS_NAMES: &str = "\
    enable_unsafe_deserialization load_model load_weights get_file load_img save_model \
    save_weights save_img plot_model set_global_attribute";

/// Top-level modules whose callables run commands, evaluate code or touch files and the
/// network.
const DANGEROUS_MODULES: &str = "\
    os posix nt subprocess builtins __builtin__ sys shutil socket pickle _pickle dill marshal \
    importlib runpy ctypes pty code codeop webbrowser urllib http requests pathlib tempfile \
    multiprocessing signal types io commands pdb timeit platform asyncio ftplib smtplib \
    telnetlib operator functools torch numpy joblib cloudpickle";

/// TensorFlow functions a Keras 2 `TFOpLambda` may call that reach files, Python code or
/// raw kernels.
const TF_OP_DENYLIST: &str = "\
    io. py_func py_function numpy_function raw_ops debugging print summary saved_model data. \
    gfile load_library load_op_library system";

/// Judges a Keras config (`model_config`, `training_config`, or a `.keras` zip's
/// `config.json`): adds a finding for every object loading it would build that is not a
/// Keras built-in, and raises `report.verdict` to what they imply.
pub(crate) fn judge_config(config_json: &str, at_offset: Option<u64>, report: &mut FileReport) {
    let mut judge = Judge {
        offset: at_offset,
        findings: Vec::new(),
        dropped: 0,
    };
    match serde_json::from_str::<Value>(config_json) {
        Ok(config) => judge.walk(&config),
        Err(error) => judge.add(
            Severity::High,
            format!(
                "the Keras config is not JSON ({error}): what loading builds cannot be verified"
            ),
        ),
    }
    if judge.dropped > 0 {
        let severity = judge
            .findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Info);
        judge.findings.push(Finding {
            severity,
            offset: at_offset,
            message: format!("... and {} more Keras config findings", judge.dropped),
        });
    }
    for finding in &judge.findings {
        let implied = match finding.severity {
            Severity::Critical | Severity::High => Verdict::Unsafe,
            Severity::Medium => Verdict::Review,
            Severity::Info => Verdict::Safe,
        };
        report.verdict = report.verdict.max(implied);
    }
    report.findings.append(&mut judge.findings);
}

struct Judge {
    offset: Option<u64>,
    findings: Vec<Finding>,
    dropped: usize,
}

impl Judge {
    fn add(&mut self, severity: Severity, message: String) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                severity,
                offset: self.offset,
                message,
            });
        } else {
            self.dropped += 1;
        }
    }

    fn walk(&mut self, value: &Value) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| self.walk(v)),
            Value::Object(object) => {
                if let Some(class_name) = object.get("class_name") {
                    self.judge_object(object, class_name);
                }
                object.values().for_each(|v| self.walk(v));
            }
            _ => {}
        }
    }

    fn judge_object(&mut self, object: &Map<String, Value>, class_name: &Value) {
        let Some(class_name) = class_name.as_str() else {
            return self.add(
                Severity::High,
                format!("a Keras object whose class_name is not a string ({class_name}): it cannot be verified"),
            );
        };
        let config = object.get("config");
        let layer = config
            .and_then(|c| c.get("name"))
            .or_else(|| object.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let module = object.get("module").and_then(Value::as_str);
        // A function is named by its config: {"class_name": "function", "config": "relu"}.
        let name = match (class_name, config.and_then(Value::as_str)) {
            ("function", Some(function)) => function,
            _ => class_name,
        };
        match class_name {
            "Lambda" => {
                return self.add(
                    Severity::Critical,
                    format!("Lambda layer `{layer}`: loading runs the Python code it carries (marshalled bytecode in Keras 2 .h5, CVE-2024-3660 and CVE-2025-9905; a serialized lambda in Keras 3)"),
                )
            }
            "__lambda__" => {
                return self.add(
                    Severity::Critical,
                    "a serialized Python lambda (`__lambda__`): loading with safe_mode=False runs its bytecode".to_owned(),
                )
            }
            "TorchModuleWrapper" => {
                return self.add(
                    Severity::Critical,
                    format!("TorchModuleWrapper `{layer}`: loading unpickles a torch module with torch.load (runs code when safe_mode is off)"),
                )
            }
            "TFSMLayer" => {
                return self.add(
                    Severity::High,
                    format!("TFSMLayer `{layer}`: loading reads a TensorFlow SavedModel from a path the config names"),
                )
            }
            "JaxLayer" | "FlaxLayer" => {
                return self.add(
                    Severity::High,
                    format!("{class_name} `{layer}`: loading calls functions the config names"),
                )
            }
            "TFOpLambda" | "SlicingOpLambda" => {
                let function = config.and_then(|c| c.get("function")).and_then(Value::as_str);
                if let Some(f) = function.filter(|f| TF_OP_DENYLIST.split_ascii_whitespace().any(|d| f.contains(d))) {
                    return self.add(
                        Severity::Critical,
                        format!("{class_name} `{layer}` calls tf.{f}: a TensorFlow function that reaches files or Python code"),
                    );
                }
            }
            _ => {}
        }
        let before = self.findings.len() + self.dropped;
        match module {
            Some(module) => self.judge_module(module, class_name, name),
            None if object.get("module").is_some_and(|m| !m.is_null()) => self.add(
                Severity::High,
                format!("Keras object `{class_name}` with a module that is not a string: it cannot be verified"),
            ),
            None if !known_builtin(name) => self.add(
                Severity::Medium,
                format!("`{name}` is not a Keras built-in: a custom object the loader takes from code you pass as custom_objects"),
            ),
            None => {}
        }
        let registered = object.get("registered_name").and_then(Value::as_str);
        if let Some(registered) = registered {
            let unchanged =
                [class_name, name, "function"].contains(&registered) || known_builtin(registered);
            if !unchanged && self.findings.len() + self.dropped == before {
                self.add(
                    Severity::Medium,
                    format!("`{name}` is registered as custom object `{registered}`: the loader takes it from code registered under that name"),
                );
            }
        }
    }

    fn judge_module(&mut self, module: &str, class_name: &str, name: &str) {
        let package = module.split('.').next().unwrap_or(module);
        let is_keras = package == "keras";
        if is_keras && listed(KERAS_DANGEROUS_NAMES, name) {
            return self.add(
                Severity::Critical,
                format!("the config calls {module}.{name}: a Keras loading or file function reachable from a config (CVE-2025-8747, CVE-2025-9906)"),
            );
        }
        let allowed = MODULES
            .iter()
            .find(|(m, _)| *m == module)
            .is_some_and(|(_, tables)| tables.iter().any(|t| listed(t, name)));
        if allowed {
            return;
        }
        if listed(DANGEROUS_MODULES, package) {
            return self.add(
                Severity::Critical,
                format!("the config names {module}.{name}: loading imports `{module}` and calls what it names (CVE-2025-1550)"),
            );
        }
        if is_keras && class_name == "function" && module.starts_with("keras.src") {
            return self.add(
                Severity::High,
                format!("the config calls Keras-internal function {module}.{name}: Keras before 3.9 imports and calls any function a config names"),
            );
        }
        if is_keras || matches!(package, "keras_hub" | "keras_cv" | "keras_nlp" | "tf_keras") {
            return self.add(
                Severity::Medium,
                format!("`{module}.{name}` is not a Keras built-in memwarden knows: check it before loading"),
            );
        }
        self.add(
            Severity::High,
            format!("custom object {module}.{name}: loading imports module `{module}` and runs its code (Keras before 3.9 imports any module a config names, CVE-2025-1550)"),
        );
    }
}

/// Whether a name without a module is one of Keras's built-ins.
fn known_builtin(name: &str) -> bool {
    [
        LAYERS,
        INITIALIZERS,
        REGULARIZERS_CONSTRAINTS,
        ACTIVATIONS,
        OPTIMIZERS,
        LOSSES_METRICS,
        MODELS_POLICIES,
        LEGACY_AND_MARKERS,
    ]
    .iter()
    .any(|table| listed(table, name))
}

/// Whether `name` is one of a table's whitespace-separated names.
fn listed(table: &str, name: &str) -> bool {
    table.split_ascii_whitespace().any(|entry| entry == name)
}

/// The fixtures of `tests/fixtures/make_keras_onnx.py`, written by real h5py.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Runs the fixture script into a new temporary directory. Fails, never skips, when no
    /// Python with h5py and numpy is found.
    pub(crate) fn make() -> tempfile::TempDir {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = std::env::var_os("MEMWARDEN_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate_dir.join("../../.venv/bin/python"));
        let has_h5py = Command::new(&python)
            .args(["-c", "import h5py, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            has_h5py,
            "these tests need Python with h5py and numpy ({} has not): run scripts/test.sh, or `{} -m pip install h5py numpy`, or set MEMWARDEN_TEST_PYTHON",
            python.display(),
            python.display()
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let output = Command::new(&python)
            .arg(crate_dir.join("tests/fixtures/make_keras_onnx.py"))
            .arg(dir.path())
            .output()
            .expect("run make_keras_onnx.py");
        assert!(
            output.status.success(),
            "make_keras_onnx.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::Path;

    use super::*;
    use crate::formats::hdf5;
    use crate::Limits;

    fn judged(config: &str) -> FileReport {
        let mut report = FileReport::new(Path::new("m.keras"), "keras", 0);
        judge_config(config, Some(7), &mut report);
        report
    }

    fn worst(report: &FileReport) -> Option<Severity> {
        report.findings.iter().map(|f| f.severity).max()
    }

    #[test]
    fn judges_each_kind_of_name() {
        let cases = [
            (r#"{"class_name": "Dense", "config": {"name": "d"}}"#, None),
            (
                r#"{"module": "keras.layers", "class_name": "Dense", "config": {}}"#,
                None,
            ),
            (
                r#"{"module": "builtins", "class_name": "function", "config": "relu"}"#,
                None,
            ),
            (
                r#"{"module": "keras.src.models.functional", "class_name": "Functional", "config": {}, "registered_name": "Functional"}"#,
                None,
            ),
            (
                r#"{"class_name": "MyLayer", "config": {}}"#,
                Some(Severity::Medium),
            ),
            (
                r#"{"module": "keras.layers", "class_name": "Dense", "config": {}, "registered_name": "pkg>Dense"}"#,
                Some(Severity::Medium),
            ),
            (
                r#"{"module": "keras.layers", "class_name": "NotALayer", "config": {}}"#,
                Some(Severity::Medium),
            ),
            (
                r#"{"module": "my_package.layers", "class_name": "MyLayer", "config": {}}"#,
                Some(Severity::High),
            ),
            (
                r#"{"module": "keras.src.utils.file_utils", "class_name": "function", "config": "rmtree"}"#,
                Some(Severity::High),
            ),
            (
                r#"{"layers": [{"class_name": "TFSMLayer", "config": {"filepath": "/x"}}]}"#,
                Some(Severity::High),
            ),
            (r#"{"layers": "#, Some(Severity::High)),
            (
                r#"{"module": "builtins", "class_name": "function", "config": "exec"}"#,
                Some(Severity::Critical),
            ),
            (
                r#"{"module": "subprocess", "class_name": "Popen", "config": {}}"#,
                Some(Severity::Critical),
            ),
            (
                r#"{"module": "keras.models", "class_name": "function", "config": "load_model"}"#,
                Some(Severity::Critical),
            ),
            (
                r#"{"module": "keras.config", "class_name": "function", "config": "enable_unsafe_deserialization"}"#,
                Some(Severity::Critical),
            ),
            (
                r#"{"class_name": "TFOpLambda", "config": {"name": "w", "function": "io.write_file"}}"#,
                Some(Severity::Critical),
            ),
            (
                r#"{"class_name": "TFOpLambda", "config": {"name": "a", "function": "math.add"}}"#,
                None,
            ),
        ];
        for (config, expected) in cases {
            let report = judged(config);
            assert_eq!(worst(&report), expected, "{config}: {:?}", report.findings);
            let verdict = match expected {
                Some(Severity::Critical | Severity::High) => Verdict::Unsafe,
                Some(Severity::Medium) => Verdict::Review,
                _ => Verdict::Safe,
            };
            assert_eq!(report.verdict, verdict, "{config}");
            assert!(report.findings.iter().all(|f| f.offset == Some(7)));
        }
    }

    #[test]
    fn a_flood_of_custom_objects_is_counted_not_listed() {
        let layer = r#"{"module": "evil", "class_name": "X", "config": {}}"#;
        let config = format!("[{}]", vec![layer; 5000].join(","));
        let report = judged(&config);
        assert_eq!(report.findings.len(), MAX_FINDINGS + 1);
        assert!(report.findings[MAX_FINDINGS].message.contains("4900 more"));
    }

    #[test]
    fn flags_hostile_keras_files_written_by_h5py() {
        let dir = fixtures::make();
        for (name, needle) in [
            ("keras2_lambda.h5", "Lambda layer `lambda_payload`"),
            ("keras2_os.h5", "os.system"),
        ] {
            let path = dir.path().join(name);
            let len = std::fs::metadata(&path).expect("metadata").len();
            let report = hdf5::inspect(&path, len, &Limits::default()).expect(name);
            assert_eq!(report.format, "keras-h5");
            assert_eq!(report.loader, "keras.models.load_model");
            assert_eq!(report.verdict, Verdict::Unsafe, "{name}");
            let critical = report
                .findings
                .iter()
                .find(|f| f.severity == Severity::Critical);
            assert!(
                critical.is_some_and(|f| f.message.contains(needle)),
                "{name}: {:?}",
                report.findings
            );
        }
        for (name, expected) in [
            ("model.keras", None),
            ("lambda.keras", Some(Severity::Critical)),
        ] {
            let file = std::fs::File::open(dir.path().join(name)).expect("open");
            let mut archive = zip::ZipArchive::new(file).expect("zip");
            let mut config = String::new();
            archive
                .by_name("config.json")
                .expect("config.json")
                .read_to_string(&mut config)
                .expect("read config.json");
            let report = judged(&config);
            assert_eq!(worst(&report), expected, "{name}: {:?}", report.findings);
            if expected.is_some() {
                assert!(report
                    .findings
                    .iter()
                    .any(|f| f.message.contains("lambda_payload")));
            }
        }
    }
}
