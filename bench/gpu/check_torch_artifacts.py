#!/usr/bin/env python3
"""Check memwarden inspect against real PyTorch (run where torch is installed).

1. Our reproduction of PyTorch's zip layout (crates/memwarden-inspect/tests/fixtures)
   must load in real torch with the tensors memwarden reports.
2. Real torch artifacts (state dicts of several dtypes, an optimizer state, a legacy
   pre-1.6 file, a whole pickled model) must get inventories that match torch's own view.
3. Predicted load peaks vs measured: torch.load (and mmap=True) of a ~1 GiB state dict,
   and safetensors' load_file of the same tensors, each in a fresh process.
4. Inspection time and memory for the big files.

Usage: check_torch_artifacts.py MEMWARDEN OUT_DIR    (writes OUT_DIR/torch_check.json)
"""

import json
import subprocess
import sys
from pathlib import Path

import torch

memwarden, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
here = Path(__file__).resolve().parents[2]
results = {"torch": torch.__version__, "checks": []}


def check(name, ok, detail):
    results["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
    print(("PASS " if ok else "FAIL ") + name + ": " + str(detail), flush=True)


def inspect(path):
    """memwarden inspect --json -, with its wall time and its peak RSS in KiB, measured by
    memwarden run (a child's ru_maxrss would count the pages of this big Python parent that
    a fork copied)."""
    report_path = out / "inspect-run.json"
    proc = subprocess.run([memwarden, "run", "-q", "--json", str(report_path), "--", memwarden, "inspect", str(path), "--json", "-"], capture_output=True, text=True)
    run = json.loads(report_path.read_text())
    seconds = run["duration_s"]
    return json.loads(proc.stdout), seconds, run["processes"][0]["peak_rss_bytes"] // 1024


def torch_view(obj, prefix=""):
    """name -> (dtype, shape, nbytes) of every tensor, as torch sees it."""
    view = {}
    if isinstance(obj, torch.Tensor):
        view[prefix] = (str(obj.dtype).replace("torch.", ""), list(obj.shape), obj.element_size() * obj.nelement())
    elif isinstance(obj, dict):
        for k, v in obj.items():
            view.update(torch_view(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            view.update(torch_view(v, f"{prefix}[{i}]"))
    return view


def same_names(view):
    """memwarden writes integer keys as [0], torch's dict walk above as .0: compare alike."""
    return {k.replace("[", ".").replace("]", ""): v for k, v in view.items()}


def memwarden_view(report):
    files = report["files"]
    if not files:
        return {"error": report.get("unreadable")}
    return {a["name"]: (a["dtype"], a["shape"], a["bytes"]) for a in files[0]["arrays"]}


# 1. our reproduced layout in real torch
fx = out / "fx"
subprocess.run([sys.executable, str(here / "crates/memwarden-inspect/tests/fixtures/make_fixtures.py"), str(fx)], check=True, capture_output=True)
for name in ["state_dict.pt", "state_dict_deflated.pt"]:
    loaded = torch.load(fx / name, weights_only=True)
    report, _, _ = inspect(fx / name)
    check(f"reproduced {name} loads in torch and matches", torch_view(loaded) == memwarden_view(report), {"torch": torch_view(loaded), "memwarden": memwarden_view(report)})

# 2. real artifacts
real = out / "real"
real.mkdir(exist_ok=True)
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
sd = model.state_dict()
sd["half"] = torch.ones(33, 7, dtype=torch.float16)
sd["bf16"] = torch.ones(5, dtype=torch.bfloat16)
sd["count"] = torch.tensor([3], dtype=torch.int64)
sd["view"] = torch.arange(100, dtype=torch.float32)[10:20]
torch.save(sd, real / "state_dict.pt")
torch.save(sd, real / "legacy.pt", _use_new_zipfile_serialization=False)
optimizer = torch.optim.Adam(model.parameters())
model(torch.randn(4, 64)).sum().backward()
optimizer.step()
torch.save(optimizer.state_dict(), real / "optim.pt")
torch.save(model, real / "model_full.pt")
for name in ["state_dict.pt", "legacy.pt", "optim.pt"]:
    loaded = torch.load(real / name, weights_only=True)
    report, _, _ = inspect(real / name)
    files = report["files"]
    verdict = files[0]["verdict"] if files else report["unreadable"]
    tv, mv = same_names(torch_view(loaded)), same_names(memwarden_view(report))
    # a view's bytes: torch counts the view, memwarden too (shape x itemsize)
    check(f"real {name}: inventory matches torch's, verdict safe", tv == mv and verdict == "safe", {"verdict": verdict, "torch": tv, "memwarden": mv})
report, _, _ = inspect(real / "model_full.pt")
f = report["files"][0]
check("real model_full.pt (whole pickled model) is not judged safe", f["verdict"] in ("review", "unsafe"), {"verdict": f["verdict"], "flagged": [i for i in f["imports"] if i["severity"]][:5]})

def measured(code, touch=True):
    """Peak resident memory added by `code` in a fresh process: the high-water mark is
    reset (clear_refs 5) after the imports, and every loaded tensor is read once so that
    lazily mapped data counts as it would in use."""
    probe = (
        "import torch\n"
        "def status(key):\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS:')\n"
        f"{code}\n"
        + ("float(sum(float(t.sum()) for t in x.values()))\n" if touch else "")
        + ""
        "print(status('VmHWM:') - base)\n"
    )
    return int(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


# 3. predicted vs measured load peaks, and 4. inspection cost, at several sizes
from safetensors.torch import save_file

for size_mib in (256, 1024, 2048):
    big = {f"layer{i}.weight": torch.randn(4096, 4096) for i in range(size_mib // 64)}  # 64 MiB each
    torch.save(big, real / "big.pt")
    save_file(big, str(real / "big.safetensors"))
    del big
    loads = {
        "big.pt": f"x = torch.load({str(real / 'big.pt')!r}, weights_only=True)",
        "big.safetensors": f"from safetensors.torch import load_file\nx = load_file({str(real / 'big.safetensors')!r})",
    }
    for name, code in loads.items():
        report, elapsed, rss_kib = inspect(real / name)
        f = report["files"][0]
        predicted = f["predicted_load_peak_bytes"]
        actual = measured(code)
        error = (predicted - actual) / max(actual, 1)
        check(f"{name} ({size_mib} MiB): predicted load peak within 10% of measured", abs(error) <= 0.10, {"predicted": predicted, "measured": actual, "error_pct": round(100 * error, 1)})
        check(f"{name} ({size_mib} MiB): inspected in under 100 ms and 32 MiB", elapsed < 0.1 and (rss_kib or 0) < 32 * 1024, {"seconds": round(elapsed, 4), "max_rss_kib": rss_kib, "file_bytes": f["file_bytes"]})
mapped = measured(f"x = torch.load({str(real / 'big.pt')!r}, weights_only=True, mmap=True)", touch=False)
check("big.pt with mmap=True adds little resident memory (memwarden says mappable)", mapped < 64 << 20, {"measured": mapped, "mmappable": inspect(real / "big.pt")[0]["files"][0]["mmappable"]})

(out / "torch_check.json").write_text(json.dumps(results, indent=1))
print("failed:", sum(not c["ok"] for c in results["checks"]), "of", len(results["checks"]))
