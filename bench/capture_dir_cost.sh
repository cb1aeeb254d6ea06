#!/usr/bin/env bash
# What a capture costs a short-lived process, by where captures are written: N runs of
# /bin/true bare, with the profiler library loaded but off, and profiling into a directory
# on the disk's file system and on tmpfs (/dev/shm, memwarden's default), sampled (where
# `true` records nothing, so it creates no capture) and exact (every process records, and
# creates one).
#   bench/capture_dir_cost.sh [N] [library]
set -euo pipefail
n=${1:-200}
library=${2:-target/release/libmemwarden_preload.so}
disk=$(mktemp -d "${TMPDIR:-/tmp}/memwarden-bench-XXXXXX")
shm=$(mktemp -d /dev/shm/memwarden-bench-XXXXXX)
trap 'rm -rf "$disk" "$shm"' EXIT
time_runs() {
    local start end
    start=$(date +%s.%N)
    for _ in $(seq "$n"); do "$@" /bin/true; done
    end=$(date +%s.%N)
    echo "scale=3; ($end - $start) * 1000 / $n" | bc
}
bare=$(time_runs env)
off=$(time_runs env LD_PRELOAD="$library")
on_disk=$(time_runs env LD_PRELOAD="$library" MEMWARDEN_CAPTURE_DIR="$disk")
on_shm=$(time_runs env LD_PRELOAD="$library" MEMWARDEN_CAPTURE_DIR="$shm")
exact_disk=$(time_runs env LD_PRELOAD="$library" MEMWARDEN_CAPTURE_DIR="$disk" MEMWARDEN_PROFILE_MODE=exact)
exact_shm=$(time_runs env LD_PRELOAD="$library" MEMWARDEN_CAPTURE_DIR="$shm" MEMWARDEN_PROFILE_MODE=exact)
fs=$(df --output=fstype "$disk" | tail -1)
echo "per process, ms: bare $bare | library loaded, profiling off $off | sampled: captures on $fs $on_disk, on tmpfs $on_shm | exact: captures on $fs $exact_disk, on tmpfs $exact_shm"
