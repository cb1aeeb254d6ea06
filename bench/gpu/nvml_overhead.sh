#!/usr/bin/env bash
# The monitor's own CPU with and without NVML sampling, on a process holding GPU memory
# for 10 s. Usage: bench/gpu/nvml_overhead.sh [memwarden] [out dir]
set -uo pipefail
memwarden=${1:-target/release/memwarden}
out=${2:-out/gpu}
mkdir -p "$out"
hold='import torch, time; x = torch.ones(2**30, device="cuda"); torch.cuda.synchronize(); time.sleep(10)'
for mode in nvml off; do
    if [ "$mode" = off ]; then export MEMWARDEN_NO_GPU=1; else unset MEMWARDEN_NO_GPU; fi
    "$memwarden" run -q --json "$out/$mode.json" -- python3 -c "$hold"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); m=r['monitor']; print(sys.argv[2], 'cpu_s', round(m['self_cpu_s'],3), 'share', round(100*m['self_cpu_share'],2), '% samples', m['samples'], 'gpu_peak', r['peak']['gpu_bytes'], 'duration', round(r['duration_s'],2))" "$out/$mode.json" "$mode"
done
