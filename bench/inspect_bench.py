#!/usr/bin/env python3
"""memwarden inspect: speed, memory, predicted vs measured load peaks, and detection,
side by side with picklescan.

1. Speed and memory of inspecting big files: a 1 GiB joblib, a 2 GiB safetensors and a
   2 GiB PyTorch-layout checkpoint (memwarden's peak RSS measured by `memwarden run`).
2. Predicted load peak vs the peak measured in a fresh Python process (high-water mark
   reset after the imports with /proc/self/clear_refs, then the usual loader), for numpy,
   scikit-learn and joblib artifacts of several sizes.
3. The verdict corpus against picklescan (PyPI), in the same run: every hostile fixture
   (make_hostile.py's, with its family, and make_fixtures.py's) and every benign artifact
   (make_fixtures.py's benign.json) through memwarden, once in one process for all files and
   once per file, and through picklescan the same two ways: hostile files passed (exit 0),
   benign files stopped (exit not 0), seconds per file and the ratio. Files picklescan does
   not read (it warns it could not parse them, or scans nothing: xz, bz2, lz4 containers...)
   are timed and judged separately, so the ratio compares equal coverage. Then the scan time
   of sections 1 and 2's big files, where they exist.

Usage: bench/inspect_bench.py [--memwarden target/release/memwarden] [--python .venv/bin/python]
       [--out bench/out/inspect] [--sizes-mib 64,256] [--sections 1,2,3]
       [--picklescan PATH] [--repeat 3]

picklescan is found next to --python, in bench/.venv-peers/bin or on PATH; install it pinned:
  python3 -m venv bench/.venv-peers && bench/.venv-peers/bin/pip install picklescan==1.0.5 numpy   # numpy: its npy scanner
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser()
parser.add_argument("--memwarden", default=str(REPO / "target/release/memwarden"))
parser.add_argument("--python", default=str(REPO / ".venv/bin/python"))
parser.add_argument("--out", default=str(REPO / "bench/out/inspect"))
parser.add_argument("--sizes-mib", default="64,256")
parser.add_argument("--sections", default="1,2,3", help="which sections to run, e.g. 3")
parser.add_argument("--picklescan", default=None, help="the picklescan executable")
parser.add_argument("--repeat", type=int, default=3, help="runs per file and tool in section 3 (median)")
args = parser.parse_args()
sections = {int(x) for x in args.sections.split(",")}
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
for path in big_files() if 1 in sections else []:
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
for mib in [int(s) for s in args.sizes_mib.split(",")] if 2 in sections else []:
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

# --- 3. the verdict corpus against picklescan ------------------------------------------------
FIXTURES = REPO / "crates/memwarden-inspect/tests/fixtures"
# make_fixtures.py's own hostile files (its broken ones, truncated.joblib and garbage.pkl,
# are neither: they are not counted)
FX_HOSTILE = ["reduce_system_p0.pkl", "reduce_system_p4.pkl", "eval.pkl", "nested.pkl", "memo_trick.pkl", "computed_global.pkl", "joblib_with_payload.joblib", "objects.npy"]


def find_picklescan() -> str | None:
    if args.picklescan:
        return args.picklescan
    for where in (Path(py).parent, REPO / "bench/.venv-peers/bin"):
        found = shutil.which("picklescan", path=str(where))
        if found:
            return found
    return shutil.which("picklescan")


def timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc, time.perf_counter() - t


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def memwarden_verdicts(report: dict) -> dict[str, str]:
    said = {f["path"]: f["verdict"] for f in report.get("files", [])}
    said.update({u["path"]: "unreadable" for u in report.get("unreadable", [])})
    return said


def picklescan_reading(proc: subprocess.CompletedProcess) -> tuple[str, bool]:
    """(what picklescan said, whether it read the file's contents as a pickle or zip)."""
    text = proc.stdout + proc.stderr
    infected = next((int(l.split(":")[1]) for l in text.splitlines() if l.startswith("Infected files:")), 0)
    scanned = next((int(l.split(":")[1]) for l in text.splitlines() if l.startswith("Scanned files:")), 0)
    read = scanned > 0 and "could not parse" not in text
    if infected:
        return "flagged", read
    if proc.returncode == 0:
        return ("clean" if read else "skipped"), read
    return ("error" if "Unhandled exception" not in text else "crashed"), read


rows_corpus, corpus_summary = [], {}
picklescan = find_picklescan()
if 3 in sections:
    if picklescan:
        pinned = subprocess.run([str(Path(picklescan).parent / "python"), "-c", "import importlib.metadata as m; print(m.version('picklescan'))"], capture_output=True, text=True).stdout.strip()
        print(f"picklescan {pinned} ({picklescan})", flush=True)
    else:
        print("picklescan not found: memwarden alone (see --picklescan)", flush=True)
    fx, hx, pool = out / "fx", out / "hx", out / "corpus"
    for script, where in (("make_fixtures.py", fx), ("make_hostile.py", hx)):
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run([py, str(FIXTURES / script), str(where)], check=True, capture_output=True)
    files = [("hostile", e["family"], hx / e["file"]) for e in json.loads((hx / "manifest.json").read_text())]
    files += [("hostile", "make_fixtures", fx / n) for n in FX_HOSTILE]
    files += [("benign", "-", fx / n) for n in json.loads((fx / "benign.json").read_text())]
    # One directory per kind (names repeat across the two scripts), for the one-process runs.
    shutil.rmtree(pool, ignore_errors=True)
    for kind, _, path in files:
        (pool / kind).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, pool / kind / path.name)
    files = [(kind, family, pool / kind / path.name) for kind, family, path in files]

    per_file = {}
    for kind, family, path in files:
        ours, theirs, their_said, read = [], [], "n/a", False
        for _ in range(args.repeat):
            proc, seconds = timed([args.memwarden, "inspect", str(path), "--json", "-"])
            ours.append(seconds)
            code = proc.returncode
            try:
                verdict = next(iter(memwarden_verdicts(json.loads(proc.stdout)).values()), "?")
            except json.JSONDecodeError:
                verdict = "crashed"
            if picklescan:
                pproc, seconds = timed([picklescan, "-p", str(path)])
                theirs.append(seconds)
                their_said, read = picklescan_reading(pproc)
                their_code = pproc.returncode
        row = {
            "file": f"{kind}/{path.name}", "kind": kind, "family": family,
            "memwarden": f"{verdict} (exit {code})", "memwarden_ms": round(1000 * median(ours), 2),
            "picklescan": f"{their_said} (exit {their_code})" if picklescan else "n/a",
            "picklescan_ms": round(1000 * median(theirs), 1) if theirs else None,
            "picklescan_reads_it": read,
        }
        per_file[path] = (code, their_code if picklescan else None, read, median(ours), median(theirs) if theirs else None)
        rows_corpus.append(row)

    def one_process(paths: list[Path]) -> tuple[float, float | None]:
        """Seconds per file with one memwarden process for all paths, and one picklescan
        process over a directory holding exactly these files (median of --repeat runs)."""
        if not paths:
            return 0.0, None
        ours = [timed([args.memwarden, "inspect", *map(str, paths), "--json", "-"])[1] for _ in range(args.repeat)]
        theirs = None
        if picklescan:  # its own scan_file_path over the same list, in one interpreter
            code = "import sys\nfrom picklescan.scanner import scan_file_path\nfor p in sys.argv[1:]:\n    try: scan_file_path(p)\n    except Exception: pass\n"
            cmd = [str(Path(picklescan).parent / "python"), "-c", code, *map(str, paths)]
            theirs = median([timed(cmd)[1] for _ in range(args.repeat)]) / len(paths)
        return median(ours) / len(paths), theirs

    def summary(paths: list[Path]) -> dict:
        hostile = [p for p in paths if p.parent.name == "hostile"]
        benign = [p for p in paths if p.parent.name == "benign"]
        ours_all, theirs_all = one_process(paths)
        ours_each = [per_file[p][3] for p in paths]
        theirs_each = [per_file[p][4] for p in paths if per_file[p][4] is not None]
        mean = lambda xs: sum(xs) / len(xs) if xs else None
        row = {
            "files": len(paths),
            "hostile": len(hostile),
            "hostile passed by memwarden": sum(per_file[p][0] == 0 for p in hostile),
            "hostile passed by picklescan": sum(per_file[p][1] == 0 for p in hostile) if picklescan else None,
            "benign": len(benign),
            "benign stopped by memwarden": sum(per_file[p][0] != 0 for p in benign),
            "benign stopped by picklescan": sum(per_file[p][1] != 0 for p in benign) if picklescan else None,
            "memwarden ms/file, one process": round(1000 * ours_all, 3),
            "memwarden ms/file, per process": round(1000 * mean(ours_each), 2),
            "picklescan ms/file, one process": round(1000 * theirs_all, 2) if theirs_all else None,
            "picklescan ms/file, per process": round(1000 * mean(theirs_each), 1) if theirs_each else None,
        }
        row["picklescan/memwarden, one process"] = round(theirs_all / ours_all, 1) if theirs_all else None
        row["picklescan/memwarden, per process"] = round(mean(theirs_each) / mean(ours_each), 1) if theirs_each else None
        return row

    covered = [p for _, _, p in files if per_file[p][2] or not picklescan]
    skipped = [p for _, _, p in files if not per_file[p][2]]
    corpus_summary = {"equal coverage (files picklescan reads)": summary(covered), "files picklescan does not read": summary(skipped)}
    if not picklescan:
        corpus_summary = {"all files (picklescan not found)": summary([p for _, _, p in files])}

scan_times = []
for path in [out / "big_1g.joblib", out / f"arrays_{args.sizes_mib.split(',')[-1]}m.pickle-p4"]:
    if not path.exists():
        continue
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
    "picklescan": subprocess.run([str(Path(picklescan).parent / "python"), "-c", "import importlib.metadata as m; print(m.version('picklescan'))"], capture_output=True, text=True).stdout.strip() if picklescan else None,
    "speed": rows_speed,
    "predictions": rows_predict,
    "corpus": rows_corpus,
    "corpus_summary": [{"set": k, **v} for k, v in corpus_summary.items()],
    "scan_times": scan_times,
}
(out / "inspect_bench.json").write_text(json.dumps(result, indent=1))
for key in ("speed", "predictions", "corpus", "corpus_summary", "scan_times"):
    rows = result[key]
    if not rows:
        continue
    print(f"\n{key}")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
print("\nversions:", result["python"], "picklescan", result["picklescan"])
