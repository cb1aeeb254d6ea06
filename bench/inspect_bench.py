#!/usr/bin/env python3
"""memwarden inspect: speed, memory, predicted vs measured load peaks, and detection,
side by side with picklescan.

1. Speed and memory of inspecting big files: a 1 GiB joblib, a 2 GiB safetensors and a
   2 GiB PyTorch-layout checkpoint (memwarden's peak RSS measured by `memwarden run`).
2. Predicted load peak vs the peak measured in a fresh Python process (high-water mark
   reset after the imports with /proc/self/clear_refs, then the usual loader), for numpy,
   scikit-learn and joblib artifacts of several sizes.
3. Detection on the hostile fixtures, and scan time, against picklescan (PyPI).

Usage: bench/inspect_bench.py [--memwarden target/release/memwarden] [--python .venv/bin/python]
       [--out bench/out/inspect] [--sizes-mib 64,256]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser()
parser.add_argument("--memwarden", default=str(REPO / "target/release/memwarden"))
parser.add_argument("--python", default=str(REPO / ".venv/bin/python"))
parser.add_argument("--out", default=str(REPO / "bench/out/inspect"))
parser.add_argument("--sizes-mib", default="64,256")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
py = args.python
print("reproduce:", " ".join([sys.executable, *sys.argv]))


def run_py(code: str) -> str:
    return subprocess.run([py, "-c", code], check=True, capture_output=True, text=True).stdout


def inspect(path: Path) -> tuple[dict, float, int]:
    """The report, the inspection's wall seconds and its peak RSS in bytes."""
    run_json = out / "run.json"
    proc = subprocess.run([args.memwarden, "run", "-q", "--json", str(run_json), "--", args.memwarden, "inspect", str(path), "--json", "-"], capture_output=True, text=True)
    run = json.loads(run_json.read_text())
    return json.loads(proc.stdout), run["duration_s"], run["processes"][0]["peak_rss_bytes"]


# --- 1. big files ---------------------------------------------------------------------------
def big_files() -> list[Path]:
    paths = []
    joblib_path = out / "big_1g.joblib"
    if not joblib_path.exists():
        run_py(f"import numpy as np, joblib; joblib.dump({{f'w{{i}}': np.ones(2**26, np.float32) for i in range(4)}}, {str(joblib_path)!r})")
    paths.append(joblib_path)
    st = out / "big_2g.safetensors"
    if not st.exists():
        header = {f"layer{i}.weight": {"dtype": "F32", "shape": [8192, 8192], "data_offsets": [i * 2**28, (i + 1) * 2**28]} for i in range(8)}
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(st, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + 8 * 2**28)  # sparse zeros: valid, cheap to make
    paths.append(st)
    pt = out / "big_2g.pt"
    if not pt.exists():
        fixtures = REPO / "crates/memwarden-inspect/tests/fixtures/make_fixtures.py"
        code = (
            "import runpy, sys, numpy as np\n"
            f"sys.argv = ['x', {str(out / 'fx')!r}]\n"
            f"ns = runpy.run_path({str(fixtures)!r})\n"
            "sys.modules['torch'], sys.modules['torch._utils'] = ns['fake_torch'], ns['fake_utils']\n"
            f"ns['torch_zip'](__import__('pathlib').Path({str(pt)!r}), {{f'layer{{i}}.weight': np.zeros((8192, 8192), np.float32) for i in range(8)}})\n"
        )
        run_py(code)
    paths.append(pt)
    return paths


rows_speed = []
for path in big_files():
    report, seconds, rss = inspect(path)
    f = report["files"][0]
    rows_speed.append({"file": path.name, "format": f["format"], "file_gib": round(f["file_bytes"] / 2**30, 2), "arrays": len(f["arrays"]), "seconds": round(seconds, 4), "peak_rss_mib": round(rss / 2**20, 1)})

# --- 2. predicted vs measured load peaks ------------------------------------------------------
LOADERS = {
    "pickle-p2": ("pickle.dump(obj, open(p, 'wb'), protocol=2)", "import pickle\nx = pickle.load(open(p, 'rb'))"),
    "pickle-p4": ("pickle.dump(obj, open(p, 'wb'), protocol=4)", "import pickle\nx = pickle.load(open(p, 'rb'))"),
    "pickle-p5": ("pickle.dump(obj, open(p, 'wb'), protocol=5)", "import pickle\nx = pickle.load(open(p, 'rb'))"),
    "joblib": ("joblib.dump(obj, p)", "import joblib\nx = joblib.load(p)"),
    "joblib-zlib3": ("joblib.dump(obj, p, compress=3)", "import joblib\nx = joblib.load(p)"),
    "npz": ("np.savez(p, **obj)", "x = dict(np.load(p))"),
    "safetensors": ("from safetensors.numpy import save_file; save_file(obj, p)", "from safetensors.numpy import load_file\nx = load_file(p)"),
}


def measure_load(path: Path, load: str) -> int:
    probe = (
        # The classes' modules are imported first: what is measured is the data's cost.
        "import numpy as np, sklearn, joblib, sklearn.ensemble, sklearn.tree\n"
        "def status(key):\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))\n"
        f"p = {str(path)!r}\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS:')\n"
        f"{load}\n"
        "print(status('VmHWM:') - base)\n"
    )
    return int(run_py(probe).strip().splitlines()[-1])


rows_predict = []
for mib in [int(s) for s in args.sizes_mib.split(",")]:
    for name, (save, load) in LOADERS.items():
        path = out / f"arrays_{mib}m.{name}"
        n = mib * 2**20 // 4 // 2
        run_py(f"import numpy as np, pickle, joblib\nobj = {{'a': np.random.rand({n}).astype(np.float32), 'b': np.random.rand({n}).astype(np.float32)}}\np = {str(path)!r}\n{save}\n")
        if name == "npz" and not path.exists():
            path = path.with_name(path.name + ".npz")
        report, _, _ = inspect(path)
        f = report["files"][0]
        predicted = f["predicted_load_peak_bytes"]
        # Compare with the prediction for the loader this benchmark uses.
        for other in f.get("other_loaders", []):
            if other["loader"] == "safetensors.numpy.load_file" and name == "safetensors":
                predicted = other["predicted_load_peak_bytes"]
        measured = min(measure_load(path, load) for _ in range(2))
        rows_predict.append({"artifact": f"2 float32 arrays, {mib} MiB, {name}", "predicted_mib": round(predicted / 2**20, 1), "measured_mib": round(measured / 2**20, 1), "error_pct": round(100 * (predicted - measured) / measured, 1)})
    # a real scikit-learn model of about this size
    path = out / f"forest_{mib}m.joblib"
    run_py(
        "import numpy as np, joblib\nfrom sklearn.ensemble import RandomForestRegressor\n"
        f"X = np.random.rand(20000, 8); y = np.random.rand(20000)\n"
        f"m = RandomForestRegressor(n_estimators={max(1, mib // 8)}, min_samples_leaf=1, random_state=0).fit(X, y)\n"
        f"joblib.dump(m, {str(path)!r})\n"
    )
    report, _, _ = inspect(path)
    predicted = report["files"][0]["predicted_load_peak_bytes"]
    measured = min(measure_load(path, "x = joblib.load(p)") for _ in range(2))
    rows_predict.append({"artifact": f"scikit-learn RandomForest ({path.stat().st_size / 2**20:.0f} MiB), joblib", "predicted_mib": round(predicted / 2**20, 1), "measured_mib": round(measured / 2**20, 1), "error_pct": round(100 * (predicted - measured) / measured, 1)})

# --- 3. detection and speed against picklescan ----------------------------------------------
fx = out / "fx"
subprocess.run([py, str(REPO / "crates/memwarden-inspect/tests/fixtures/make_fixtures.py"), str(fx)], check=True, capture_output=True)
picklescan = shutil.which("picklescan", path=str(Path(py).parent))
hostile = ["reduce_system_p0.pkl", "reduce_system_p4.pkl", "eval.pkl", "nested.pkl", "memo_trick.pkl", "computed_global.pkl", "joblib_with_payload.joblib", "objects.npy"]
rows_detect = []
for name in hostile:
    report, _, _ = inspect(fx / name)
    ours = report["files"][0]["verdict"] if report["files"] else "unreadable"
    theirs = "n/a"
    if picklescan:
        proc = subprocess.run([picklescan, "-p", str(fx / name)], capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        theirs = "flagged" if ("dangerous" in text.lower() or proc.returncode == 1) else ("error" if proc.returncode == 2 else "missed")
    rows_detect.append({"file": name, "memwarden": ours, "picklescan": theirs})
scan_times = []
for path in [out / "big_1g.joblib", out / f"arrays_{args.sizes_mib.split(',')[-1]}m.pickle-p4"]:
    t = time.perf_counter()
    subprocess.run([args.memwarden, "inspect", str(path), "--json", "-"], capture_output=True)
    ours = time.perf_counter() - t
    theirs = None
    if picklescan:
        t = time.perf_counter()
        subprocess.run([picklescan, "-p", str(path)], capture_output=True)
        theirs = time.perf_counter() - t
    scan_times.append({"file": path.name, "memwarden_s": round(ours, 3), "picklescan_s": round(theirs, 3) if theirs else None, "ratio": round(ours / theirs, 3) if theirs else None})

version = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0] if cmd else "n/a"
result = {
    "machine": f"{platform.processor() or platform.machine()}, Linux {platform.release()}",
    "python": run_py("import sys, numpy, sklearn, joblib; print(sys.version.split()[0], numpy.__version__, sklearn.__version__, joblib.__version__)").strip(),
    "picklescan": run_py("import importlib.metadata as m; print(m.version('picklescan'))").strip() if picklescan else None,
    "speed": rows_speed,
    "predictions": rows_predict,
    "detection": rows_detect,
    "scan_times": scan_times,
}
(out / "inspect_bench.json").write_text(json.dumps(result, indent=1))
for key in ("speed", "predictions", "detection", "scan_times"):
    rows = result[key]
    print(f"\n{key}")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
print("\nversions:", result["python"], "picklescan", result["picklescan"])
