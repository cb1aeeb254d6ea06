#!/usr/bin/env python3
"""Writes ../src/safety/allowlist.rs: the exact (module, qualified name) pairs a pickle may import.

Walked with Python 3.11.7 and the pins in requirements.txt:
    numpy 2.4.6, scipy 1.17.1, scikit-learn 1.9.1, joblib 1.6.0
PyTorch is not walked (it is not installed here): its names are written by hand in TORCH
below, read from torch's own `torch/_weights_only_unpickler.py` (what `weights_only=True`
loads), `torch/_utils.py` and `torch/storage.py`.

Run from the repository root:
    python3.11 -m venv .venv
    .venv/bin/pip install -r crates/memwarden-inspect/allowlist/requirements.txt
    .venv/bin/python crates/memwarden-inspect/allowlist/generate.py          # rewrite the table
    .venv/bin/python crates/memwarden-inspect/allowlist/generate.py --check  # is it current, and
        # do pickles of real fitted models import only names in it?

What the table holds:
- classes *defined* in a walked module (`cls.__module__ == module`), under the name pickle
  writes for them (`__module__`, `__qualname__`), nested classes included; exceptions and
  warnings left out, and the modules in SKIP_MODULES and classes in SKIP_CLASSES, which read
  or write files, load other pickles, compile or run code;
- Cython `__pyx_unpickle_<Class>` helpers defined in a walked module: they allocate their own
  class and restore its fields, nothing else;
- numpy's ufuncs on `numpy` (elementwise math, pickled by name: `numpy.log1p` in a
  FunctionTransformer);
- the functions and stdlib names in HAND and TORCH, each with why it is needed and which of its
  arguments it calls (the `calls` column: the pickle walker requires those arguments to be
  allowlisted names, `None` or strings);
- the same objects under the names older writers used: numpy 1.x `numpy.core.*`, SciPy < 1.8
  `scipy.sparse.csr` ..., and the Python 2 spellings that pickle's fix_imports maps for
  protocols 0-2 (`__builtin__`, `copy_reg`).
Functions in general are not kept: a function is only on the table if HAND or TORCH names it.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import io
import multiprocessing.process
import pickle
import pkgutil
import platform
import sys
import threading
import warnings
from importlib import metadata
from pathlib import Path

import _compat_pickle

PINS = {"numpy": "2.4.6", "scipy": "1.17.1", "scikit-learn": "1.9.1", "joblib": "1.6.0"}
PYTHON = (3, 11)
OUTPUT = Path(__file__).resolve().parent.parent / "src" / "safety" / "allowlist.rs"

# Packages walked for classes; of SciPy, only the sparse containers' own modules.
ROOTS = ["numpy", "sklearn", "scipy.sparse"]

# Never imported, never listed: they read or write files, load pickles, fetch URLs, compile or
# run code, or are test and build tooling.
SKIP_MODULES = [
    "numpy.f2py",  # evaluates Fortran expressions with eval, runs compilers
    "numpy.distutils",
    "numpy.testing",  # runstring is exec; extbuild compiles and imports C
    "numpy.ctypeslib",  # load_library loads shared libraries
    "numpy.lib.npyio",  # load/save, NpzFile, DataSource (files, URLs, allow_pickle)
    "numpy.lib._npyio_impl",
    "numpy.lib._datasource",
    "numpy.lib.format",  # read_array(allow_pickle=True) loads pickles
    "numpy.lib._format_impl",
    "numpy._core._internal",  # ctypes helpers
    "numpy.lib._iotools",  # genfromtxt's converters
    "numpy._core.memmap",  # memmap maps, creates or truncates the file it is given
    "numpy._pytesttester",
    "numpy._pyinstaller",
    "numpy.random._examples",  # cffi/numba examples that load libraries on import
    "numpy.typing",
    "numpy._typing",
    "numpy.conftest",
    "sklearn.datasets",  # fetchers download and write; loaders read files
    "sklearn.utils._testing",  # TempMemmap, scripts run in subprocesses
    "sklearn.utils._mocking",
    "sklearn.utils.estimator_checks",
    "sklearn.utils._test_common",
    "sklearn._build_utils",
    "sklearn.__check_build",
    "sklearn.externals",  # vendored code, not estimator state
    "sklearn.callback._transport",  # sockets between processes
    "sklearn.callback._scoring_monitor",  # ScoringMonitor.__setstate__ opens a socket listener
    "sklearn.callback._progressbar",  # a Thread subclass
    "sklearn.conftest",
    "scipy.sparse._generate_sparsetools",  # a build script
]
SKIP_SEGMENTS = {"tests", "test", "conftest", "__main__", "setup", "benchmarks"}

# Classes defined in walked modules that are left out all the same.
SKIP_CLASSES = {
    ("numpy", "memmap"): "maps, creates or truncates the file named by its argument",
    ("numpy.lib._stride_tricks_impl", "DummyArray"):
        "its __array_interface__ carries a raw pointer: arrays made from it read any address",
    ("sklearn.utils.parallel", "Parallel"): "runs the callables it is given in worker processes",
}

# Not data: exceptions and warnings; threads, processes and files.
LEFT_OUT_BASES = (BaseException, threading.Thread, multiprocessing.process.BaseProcess, io.IOBase)

# Functions and stdlib names, written by hand: (module, qualified name, calls, why).
# `calls` lists the argument positions the callable calls in turn while loading.
HAND = [
    # numpy: how ndarray, scalars and masked arrays pickle (numpy 2.x writes `numpy._core.*`;
    # the alias pass below adds the `numpy.core.*` names numpy 1.x writes).
    ("numpy._core.multiarray", "_reconstruct", [0],
     "ndarray.__new__(arg 0, shape, dtype): arg 0's __array_finalize__ runs"),
    ("numpy._core.multiarray", "scalar", [], "a numpy scalar from its dtype and bytes"),
    ("numpy._core.numeric", "_frombuffer", [],
     "protocol 5: frombuffer(buf, dtype).reshape(shape), calls nothing it is given"),
    ("numpy.ma.core", "_mareconstruct", [0, 1],
     "ndarray.__new__(arg 1, ...) then arg 0.__new__(arg 0, data, mask=...): numpy/ma/core.py"),
    # numpy.random: checked against numpy/random/_pickle.py in numpy 2.4.6.
    ("numpy.random._pickle", "__randomstate_ctor", [1],
     "RandomState(arg 0) if it is a BitGenerator, else RandomState(arg1(arg 0)): calls arg 1"),
    ("numpy.random._pickle", "__generator_ctor", [1],
     "Generator(arg 0) if it is a BitGenerator, else Generator(arg1(arg 0)): calls arg 1"),
    ("numpy.random._pickle", "__bit_generator_ctor", [0],
     "calls arg 0 when it is a class; a string is looked up in a fixed dict of bit generators"),
    # scikit-learn: KDTree/BallTree and DistanceMetric pickle as newObj(cls) + state.
    ("sklearn.neighbors._kd_tree", "newObj", [0], "arg 0.__new__(arg 0): _binary_tree.pxi.tp"),
    ("sklearn.neighbors._ball_tree", "newObj", [0], "arg 0.__new__(arg 0): _binary_tree.pxi.tp"),
    ("sklearn.metrics._dist_metrics", "newObj", [0], "arg 0.__new__(arg 0): _dist_metrics.pyx.tp"),
    # joblib: arrays persisted beside the pickle. NDArrayWrapper/ZNDArrayWrapper (joblib < 0.10)
    # make joblib np.load the file named in their state (allow_pickle=True).
    ("joblib.numpy_pickle", "NumpyArrayWrapper", [], "array bytes follow in the file"),
    ("joblib.numpy_pickle_compat", "NDArrayWrapper", [], "joblib < 0.10 array in a side file"),
    ("joblib.numpy_pickle_compat", "ZNDArrayWrapper", [], "joblib < 0.10 zlib array in a side file"),
    # The standard library: how protocols 0-2 rebuild plain objects and bytes.
    ("copyreg", "_reconstructor", [1],
     "base.__new__(cls, state) and base.__init__(obj, state): calls arg 1 (copyreg.py)"),
    ("_codecs", "encode", [], "protocol 2 bytes: encode(text, 'latin1'); codecs come from `encodings`"),
    # Containers and scalars: nothing that evaluates, imports, opens or gets attributes.
    ("builtins", "set", [], "container"),
    ("builtins", "frozenset", [], "container"),
    ("builtins", "list", [], "container (a defaultdict's factory)"),
    ("builtins", "tuple", [], "container"),
    ("builtins", "dict", [], "container"),
    ("builtins", "slice", [], "scalar"),
    ("builtins", "range", [], "scalar"),
    ("builtins", "complex", [], "scalar"),
    ("builtins", "int", [], "scalar"),
    ("builtins", "float", [], "scalar"),
    ("builtins", "bool", [], "scalar"),
    ("builtins", "str", [], "scalar"),
    ("builtins", "bytes", [], "protocol 2 writes b'' as bytes()"),
    ("builtins", "bytearray", [], "scalar"),
    ("builtins", "object", [], "copyreg._reconstructor's base for plain classes"),
    ("collections", "OrderedDict", [], "container"),
    ("collections", "defaultdict", [],
     "container; calls its factory on a missing key later, never while loading"),
    ("collections", "Counter", [], "container"),
    ("collections", "deque", [], "container"),
    ("datetime", "datetime", [], "scalar"),
    ("datetime", "date", [], "scalar"),
    ("datetime", "time", [], "scalar"),
    ("datetime", "timedelta", [], "scalar"),
    ("datetime", "timezone", [], "scalar"),
]

# PyTorch, by hand from torch's weights_only allowlist (`_get_allowed_globals` in
# torch/_weights_only_unpickler.py) and the rebuild functions in torch/_utils.py.
TORCH_STORAGES = [
    "DoubleStorage", "FloatStorage", "HalfStorage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "BFloat16Storage",
    "ComplexDoubleStorage", "ComplexFloatStorage", "QInt8Storage", "QInt32Storage",
    "QUInt8Storage", "QUInt4x2Storage", "QUInt2x4Storage",
]
TORCH_TENSOR_TYPES = [
    "DoubleTensor", "FloatTensor", "HalfTensor", "BFloat16Tensor", "LongTensor", "IntTensor",
    "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor", "ComplexDoubleTensor",
    "ComplexFloatTensor",
]
# str(dtype) for torch.storage._dtype_to_storage_type_map(), _new_dtypes(), uint1-7 and
# int1-7, plus the aliases older code wrote (float, double, half, long, int, short).
TORCH_DTYPES = [
    "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "bfloat16", "complex128", "complex64", "qint8", "qint32", "quint8", "quint4x2",
    "quint2x4", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz",
    "float8_e8m0fnu", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2", "complex32",
    "uint16", "uint32", "uint64", *[f"uint{n}" for n in range(1, 8)],
    *[f"int{n}" for n in range(1, 8)],
    "float", "double", "half", "long", "int", "short", "cfloat", "cdouble",
]
TORCH_QSCHEMES = [
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
    "per_channel_symmetric", "per_channel_affine_float_qparams",
]
TORCH = [
    ("torch._utils", "_rebuild_tensor", [], "tensor over a storage"),
    ("torch._utils", "_rebuild_tensor_v2", [], "tensor over a storage; hooks stored, not run"),
    ("torch._utils", "_rebuild_tensor_v3", [], "tensor over a storage with its dtype"),
    ("torch._utils", "_rebuild_parameter", [], "Parameter(data, requires_grad)"),
    ("torch._utils", "_rebuild_parameter_with_state", [], "Parameter plus attributes"),
    ("torch._utils", "_rebuild_qtensor", [], "quantized tensor"),
    ("torch._utils", "_rebuild_sparse_tensor", [], "sparse tensor from indices and values"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage", [], "meta-device tensor"),
    ("torch._utils", "_rebuild_wrapper_subclass", [0],
     "allocates an instance of arg 0 (a Tensor subclass)"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy", [], "torch.from_numpy(arg 0).to(...)"),
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor", [], "arg 0.to(device)"),
    ("torch._tensor", "_rebuild_from_type_v2", [0, 1],
     "arg 0(*args), then as_subclass(arg 1) and arg 1's __setstate__"),
    ("torch.serialization", "_get_layout", [], "looks a layout up by name in a fixed cache"),
    ("torch", "Size", [], "shape"),
    ("torch", "Tensor", [], "tensor class"),
    ("torch", "device", [], "device"),
    ("torch.nn.parameter", "Parameter", [], "parameter class"),
    ("torch", "TypedStorage", [], "storage class"),
    ("torch", "UntypedStorage", [], "storage class"),
    ("torch.storage", "TypedStorage", [], "storage class"),
    ("torch.storage", "UntypedStorage", [], "storage class"),
    *[("torch", name, [], "legacy storage class") for name in TORCH_STORAGES],
    *[("torch.cuda", name, [], "legacy CUDA storage class") for name in TORCH_STORAGES],
    *[(module, name, [], "legacy tensor type")
      for module in ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse")
      for name in TORCH_TENSOR_TYPES],
    *[("torch", name, [], "dtype") for name in TORCH_DTYPES],
    *[("torch", name, [], "quantization scheme") for name in TORCH_QSCHEMES],
]

# Modules older writers named: the objects found there must be the very objects already listed.
PY2_SPELLED = ["__builtin__", "copy_reg"]
SCIPY_SPARSE_LEGACY = [
    "scipy.sparse.base", "scipy.sparse.bsr", "scipy.sparse.compressed", "scipy.sparse.coo",
    "scipy.sparse.csc", "scipy.sparse.csr", "scipy.sparse.data", "scipy.sparse.dia",
    "scipy.sparse.dok", "scipy.sparse.lil",
]


def skipped(name: str) -> bool:
    if any(name == m or name.startswith(m + ".") for m in SKIP_MODULES):
        return True
    # numpy's C test modules (`_multiarray_tests` ...) can corrupt memory on purpose.
    return any(part in SKIP_SEGMENTS or part.endswith("_tests") for part in name.split("."))


def walk(root: str) -> list:
    """The modules under `root`, imported; packages are not imported when skipped."""
    modules = []

    def visit(name: str) -> None:
        if skipped(name):
            return
        try:
            module = importlib.import_module(name)
        except (Exception, SystemExit):
            return
        modules.append(module)
        for info in pkgutil.iter_modules(getattr(module, "__path__", None) or [], name + "."):
            # scipy: only the sparse containers' own modules, not linalg or csgraph.
            if root == "scipy.sparse" and info.ispkg:
                continue
            visit(info.name)

    visit(root)
    return modules


def resolve(module_name: str, qualname: str):
    """What pickle's find_class returns for (module, qualname) under protocol 4."""
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def classes_in(module) -> list[tuple[str, str, object]]:
    found = []
    name = module.__name__

    def visit(owner) -> None:
        for value in list(vars(owner).values()):
            if not isinstance(value, type) or value.__module__ != name:
                continue
            qualname = value.__qualname__
            if "<locals>" in qualname or any(q == qualname for _, q, _ in found):
                continue
            prefix = "" if owner is module else owner.__qualname__ + "."
            if not qualname.startswith(prefix):
                continue  # an alias to a class defined elsewhere in the module
            found.append((name, qualname, value))
            visit(value)

    visit(module)
    return found


def collect() -> tuple[dict, dict]:
    """(module, qualname) -> (calls, why), and id(object) -> (module, qualname) for aliases."""
    entries: dict[tuple[str, str], tuple[list[int], str]] = {}
    objects: dict[int, tuple[str, str]] = {}
    for root in ROOTS:
        for module in walk(root):
            for module_name, qualname, cls in classes_in(module):
                if issubclass(cls, LEFT_OUT_BASES) or (module_name, qualname) in SKIP_CLASSES:
                    continue
                try:
                    if resolve(module_name, qualname) is not cls:
                        continue
                except Exception:
                    continue
                entries[(module_name, qualname)] = ([], "")
                objects[id(cls)] = (module_name, qualname)
            for attr, value in list(vars(module).items()):
                if attr.startswith("__pyx_unpickle_") and callable(value) and \
                        getattr(value, "__module__", None) == module.__name__:
                    entries[(module.__name__, attr)] = ([], "")
    import numpy

    for attr, value in vars(numpy).items():
        if isinstance(value, numpy.ufunc) and attr == value.__name__:
            entries[("numpy", attr)] = ([], "")
            objects[id(value)] = ("numpy", attr)
    for module_name, qualname, calls, why in HAND:
        if not module_name.startswith("torch"):
            resolve(module_name, qualname)  # fails loudly when numpy or sklearn moved it
        entries[(module_name, qualname)] = (calls, why)
    for module_name, qualname, calls, why in TORCH:
        entries[(module_name, qualname)] = (calls, why)
    add_aliases(entries, objects)
    return entries, objects


def add_aliases(entries: dict, objects: dict) -> None:
    # numpy 1.x wrote numpy.core.*; numpy 2.x moved the same objects to numpy._core.*.
    for (module_name, qualname), value in list(entries.items()):
        if module_name == "numpy._core" or module_name.startswith("numpy._core."):
            old = "numpy.core" + module_name[len("numpy._core"):]
            entries.setdefault((old, qualname), value)
    # SciPy < 1.8 wrote scipy.sparse.csr.csr_matrix ...: kept when the name is the same object.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in SCIPY_SPARSE_LEGACY:
            module = importlib.import_module(module_name)
            for attr in getattr(module, "__all__", []):
                target = objects.get(id(getattr(module, attr, None)))
                if target is not None:
                    entries.setdefault((module_name, attr), entries[target])
    # Protocols 0-2 with fix_imports: the loader maps Python 2 names before importing. Kept:
    # the spellings Python 2 and Python 3's protocol-2 writer use for these entries
    # (`__builtin__.set`, `__builtin__.long`, `copy_reg._reconstructor`), not every module
    # the mapping happens to send to the same place (`UserDict.OrderedDict`).
    for old_module in PY2_SPELLED:
        for (module_name, qualname), value in list(entries.items()):
            for (mapped_module, mapped_name), new in _compat_pickle.NAME_MAPPING.items():
                if mapped_module == old_module and new == (module_name, qualname):
                    entries.setdefault((mapped_module, mapped_name), value)
            if _compat_pickle.IMPORT_MAPPING.get(old_module) == module_name and \
                    (old_module, qualname) not in _compat_pickle.NAME_MAPPING:
                entries.setdefault((old_module, qualname), value)


def versions() -> str:
    found = {name: metadata.version(name) for name in PINS}
    python = platform.python_version()
    return f"Python {python}, " + ", ".join(f"{name} {v}" for name, v in found.items())


def check_versions() -> None:
    wrong = {n: metadata.version(n) for n, v in PINS.items() if metadata.version(n) != v}
    if sys.version_info[:2] != PYTHON or wrong:
        sys.exit(f"generate.py: needs Python {PYTHON[0]}.{PYTHON[1]} and {PINS}; found "
                 f"{platform.python_version()} and {wrong or 'the pins'} "
                 "(pip install -r crates/memwarden-inspect/allowlist/requirements.txt)")


def quote(text: str) -> str:
    assert all(32 <= ord(c) < 127 and c not in '"\\' for c in text), text
    return f'"{text}"'


def render(entries: dict) -> str:
    lines = [
        "// @generated by crates/memwarden-inspect/allowlist/generate.py: do not edit by hand.",
        "// Regenerate from the repository root with",
        "//     .venv/bin/python crates/memwarden-inspect/allowlist/generate.py",
        f"// Walked with {versions()}.",
        "// PyTorch names are written by hand in generate.py from torch's weights_only allowlist.",
        "",
        "//! The exact (module, qualified name) pairs a pickle may import, and the Python 2",
        "//! names pickle's `fix_imports` maps for protocols 0-2.",
        "",
        "/// (module, qualified name, argument positions the callable calls in turn while",
        "/// loading), sorted by module, then name. Why each function is here is written above",
        "/// it; classes are there because their module defines them.",
        "#[rustfmt::skip]",
        f"pub(super) static ALLOWED: &[(&str, &str, &[usize])] = &[",
    ]
    for (module_name, qualname) in sorted(entries):
        calls, why = entries[(module_name, qualname)]
        if why:
            lines.append(f"    // {why}")
        calls_text = "&[" + ", ".join(map(str, calls)) + "]"
        lines.append(f"    ({quote(module_name)}, {quote(qualname)}, {calls_text}),")
    lines.append("];")
    lines += [
        "",
        "/// `_compat_pickle.IMPORT_MAPPING`: a Python 2 module and the module the loader imports",
        "/// instead, sorted.",
        "#[rustfmt::skip]",
        "pub(super) static PY2_MODULES: &[(&str, &str)] = &[",
    ]
    for old, new in sorted(_compat_pickle.IMPORT_MAPPING.items()):
        lines.append(f"    ({quote(old)}, {quote(new)}),")
    lines.append("];")
    lines += [
        "",
        "/// `_compat_pickle.NAME_MAPPING`: a Python 2 module and name, and the module and name",
        "/// the loader imports instead, sorted.",
        "#[rustfmt::skip]",
        "pub(super) static PY2_NAMES: &[(&str, &str, &str, &str)] = &[",
    ]
    for (old_m, old_n), (new_m, new_n) in sorted(_compat_pickle.NAME_MAPPING.items()):
        lines.append(f"    ({quote(old_m)}, {quote(old_n)}, {quote(new_m)}, {quote(new_n)}),")
    lines.append("];")
    return "\n".join(lines) + "\n"


class Recorder(pickle.Unpickler):
    """Loads a pickle (our own, trusted) and records every (module, name) it imports."""

    def __init__(self, data: bytes, seen: set):
        super().__init__(io.BytesIO(data))
        self.seen = seen

    def find_class(self, module, name):
        self.seen.add((module, name))
        return super().find_class(module, name)


def fitted_models() -> dict:
    import numpy as np
    from scipy import sparse
    from sklearn.ensemble import (GradientBoostingClassifier, HistGradientBoostingClassifier,
                                  HistGradientBoostingRegressor, RandomForestClassifier)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    def with_generator(model):
        model.rng_ = np.random.default_rng(0)  # estimators often carry a numpy Generator
        return model

    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    labels = np.where(y == 1, "spam", "ham")
    texts = [f"word{i % 7} token{i % 3} text{i % 11}" for i in range(200)]
    return {
        "GradientBoostingClassifier(random_state=RandomState)":
            GradientBoostingClassifier(n_estimators=5, random_state=np.random.RandomState(1)).fit(X, y),
        "HistGradientBoostingClassifier":
            HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y),
        "HistGradientBoostingRegressor": HistGradientBoostingRegressor(max_iter=5).fit(X, X[:, 0]),
        "HistGradientBoostingClassifier carrying a Generator": with_generator(
            HistGradientBoostingClassifier(max_iter=5).fit(X, y)),
        "RandomForestClassifier": RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y),
        "LogisticRegression": LogisticRegression().fit(X, y),
        "TfidfVectorizer(dtype=np.float64)+LogisticRegression pipeline":
            make_pipeline(TfidfVectorizer(dtype=np.float64), LogisticRegression()).fit(texts, y),
        "StandardScaler": StandardScaler().fit(X),
        "string-label DecisionTreeClassifier": DecisionTreeClassifier().fit(X, labels),
        "string-label LogisticRegression": LogisticRegression().fit(X, labels),
        "KNeighborsClassifier(kd_tree)": KNeighborsClassifier(algorithm="kd_tree").fit(X, y),
        "SGDClassifier(hinge)": SGDClassifier(max_iter=5, tol=None).fit(X, y),
        "Generator": np.random.default_rng(0),
        "csr_matrix": sparse.csr_matrix(X > 1),
        "masked array": np.ma.masked_array([1, 2], mask=[0, 1]),
        "structured array": np.array([(1, 0.5, b"ab")], dtype=[("id", "<i4"), ("x", "<f8"), ("t", "S2")]),
        "plain values": {"lr": 0.01, "layers": [64, 32], "flags": (True, False), "tags": {"a"},
                         "blob": b"\x00\x01", "empty": b"", "z": 1j, "when": datetime.datetime(2024, 1, 2),
                         "counts": collections.Counter("aab"), "ordered": collections.OrderedDict(a=1)},
    }


def joblib_globals(obj) -> set:
    import joblib
    from joblib import numpy_pickle

    seen: set = set()
    original = numpy_pickle.NumpyUnpickler.find_class

    def find_class(self, module, name):
        seen.add((module, name))
        return original(self, module, name)

    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    numpy_pickle.NumpyUnpickler.find_class = find_class
    try:
        buffer.seek(0)
        joblib.load(buffer)
    finally:
        numpy_pickle.NumpyUnpickler.find_class = original
    return seen


def check(entries: dict) -> int:
    failures = 0
    on_disk = OUTPUT.read_text() if OUTPUT.exists() else ""
    if on_disk != render(entries):
        print(f"STALE: {OUTPUT} differs from what generate.py writes now")
        failures += 1
    for label, obj in fitted_models().items():
        seen: set = set()
        for protocol in (0, 1, 2, 4, 5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Recorder(pickle.dumps(obj, protocol=protocol), seen).load()
        seen |= joblib_globals(obj)
        missing = sorted(pair for pair in seen if pair not in entries)
        status = "ok" if not missing else f"MISSING {missing}"
        print(f"{label}: {len(seen)} distinct imports (protocols 0-5, joblib.dump): {status}")
        failures += bool(missing)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the checked-in table and pickle real models")
    args = parser.parse_args()
    check_versions()
    warnings.simplefilter("ignore")
    entries, _ = collect()
    if args.check:
        failures = check(entries)
        print(f"{len(entries)} entries; {'FAILED' if failures else 'all imports allowlisted'}")
        sys.exit(1 if failures else 0)
    OUTPUT.write_text(render(entries))
    print(f"wrote {OUTPUT}: {len(entries)} entries")


if __name__ == "__main__":
    main()
