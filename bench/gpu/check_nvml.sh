#!/usr/bin/env bash
# GPU check for `memwarden run` (run on a machine with an NVIDIA GPU and PyTorch):
# a process that holds 4 GiB of CUDA memory must show up in peak.gpu_bytes, per process
# and per device. Usage: bench/gpu/check_nvml.sh [memwarden binary] [output dir]
set -uo pipefail
memwarden=${1:-target/release/memwarden}
out=${2:-out/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
uname -r; cat /proc/self/cgroup | head -5
"$memwarden" run --json "$out/gpu.json" -- python3 -c "
import torch, time
x = torch.empty(4 * 2**30 // 4, device='cuda'); x.fill_(1); torch.cuda.synchronize()
time.sleep(2)
print('allocated by torch:', torch.cuda.memory_allocated())
"
echo "exit: $?"
python3 - "$out/gpu.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({k: r[k] for k in ("peak", "gpu", "limits", "monitor", "exit", "warnings")}, indent=1))
print("per process:", [(p["pid"], p["cmdline"][:1], p["peak_rss_bytes"], p["peak_gpu_bytes"]) for p in r["processes"]])
PY
"$memwarden" run --json "$out/hard.json" --hard-limit 300MiB -- python3 -c "import numpy as np, time; a = np.ones(600 * 2**20 // 8); time.sleep(1)"
echo "hard-limit exit: $?"
python3 -c "import json; r = json.load(open('$out/hard.json')); print(r['exit'], r['budget'])"
