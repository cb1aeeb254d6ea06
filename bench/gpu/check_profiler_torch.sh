#!/usr/bin/env bash
# The allocation profiler on a real PyTorch stack (the lent GPU machine): CPU tensors,
# CUDA, intra-op thread pools, DataLoader workers. Checks that the profiled program runs
# unharmed, names the right lines, and how much slower it runs.
#   bench/gpu/check_profiler_torch.sh target/release/memwarden [python3]
set -uo pipefail
memwarden=${1:?memwarden binary}
python=${2:-python3}
out=${OUT:-/tmp/profiler-torch}
mkdir -p "$out"
cat > "$out/workload.py" <<'PY'
import sys, time
import torch
from torch.utils.data import DataLoader, Dataset

class Rows(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.full((4 * 1024 * 1024,), float(i))  # @worker

def cpu_features():
    return torch.ones(64 * 1024 * 1024)  # @cpu

def gpu_features():
    return torch.ones(256 * 1024 * 1024, device="cuda") if torch.cuda.is_available() else None

def matmul():
    a = torch.randn(2048, 2048)
    return [a @ a for _ in range(20)]  # @matmul

start = time.time()
x = cpu_features()
y = gpu_features()
z = matmul()
total = sum(float(b.sum()) for b in DataLoader(Rows(), batch_size=2, num_workers=2))
print("ok", round(total), torch.__version__, round(time.time() - start, 2))
PY
cd "$out"
TIMEFORMAT="wall %R s"
echo "== bare"; time "$python" workload.py
for mode in sampled exact; do
  echo "== --profile=$mode"
  time "$memwarden" run --profile=$mode --json "$out/report-$mode.json" -- "$python" workload.py 2>&1 | grep -v "^    " | head -20
  "$python" - "$out/report-$mode.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["profile"]
lines = {n + 1: l for n, l in enumerate(open("workload.py")) }
marks = {l.split("# @")[1].strip(): n for n, l in lines.items() if "# @" in l}
def at(entries, line):
    return sum(e["bytes"] for e in entries if any(f["file"].endswith("workload.py") and f["line"] == line for f in e["stack"]))
print("exit", r["exit"]["code"], "processes profiled", p["processes_profiled"], "warnings", r["warnings"])
print("cpu line at peak MiB", round(at(p["at_peak"], marks["cpu"]) / 2**20, 1), "(expect 256)")
print("cpu line leaked MiB", round(at(p["leaked"], marks["cpu"]) / 2**20, 1), "(expect 256)")
workers = [q for q in r["processes"] if q.get("profile") and q["pid"] != r["processes"][0]["pid"]]
print("worker processes with a profile", len(workers))
wl = sum(at(q["profile"]["at_peak"], marks["worker"]) for q in workers)
print("worker line at peak MiB (all workers)", round(wl / 2**20, 1), "(expect >= 16 per worker)")
threads = [e for e in p["at_peak"] + p["leaked"] if any(f["function"].startswith("[thread") for f in e["stack"])]
print("entries charged to named native threads", len(threads), [e["stack"][0]["function"] for e in threads][:3])
PY
done
