#!/usr/bin/env python3
"""memwarden.track's GPU figures on a machine with a CUDA GPU and torch (issue 14, item 5).

    pip install . torch && python bench/gpu/track_gpu.py

Allocates known tensors in nested blocks and checks each block's `peak_gpu_bytes`
(torch.cuda.max_memory_allocated above the block's start) and `peak_gpu_reserved_bytes`
(max_memory_reserved): the outer block must see the inner block's 512 MiB even though the
inner block reset torch's peak counters. Exit 0 when
every check holds, 1 when one fails, 2 without CUDA (said, not passed).
"""

import sys

import memwarden

MIB = 1 << 20


def main() -> int:
    try:
        import torch
    except ImportError:
        print("no torch: pip install torch (a CUDA build)")
        return 2
    if not torch.cuda.is_available():
        print("torch has no CUDA device here: nothing measured")
        return 2
    with memwarden.track("outer") as outer:
        a = torch.empty(256 * MIB, dtype=torch.uint8, device="cuda")
        with memwarden.track("inner") as inner:
            b = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda")
            del b
        c = torch.empty(128 * MIB, dtype=torch.uint8, device="cuda")
        del a, c
    checks = {
        "inner saw its 512 MiB": inner.peak_gpu_bytes is not None and 512 * MIB <= inner.peak_gpu_bytes < 520 * MIB,
        "outer saw 256 + 512 MiB at once": outer.peak_gpu_bytes is not None and 768 * MIB <= outer.peak_gpu_bytes < 780 * MIB,
        # The caching allocator keeps freed blocks: reserved is at least what was allocated.
        "inner's reserved covers its allocated": (inner.peak_gpu_reserved_bytes or 0) >= (inner.peak_gpu_bytes or 1),
        "outer's reserved covers its allocated": (outer.peak_gpu_reserved_bytes or 0) >= (outer.peak_gpu_bytes or 1),
    }
    print(f"inner {inner.peak_gpu_bytes} ({inner.peak_gpu_reserved_bytes} reserved), "
          f"outer {outer.peak_gpu_bytes} ({outer.peak_gpu_reserved_bytes} reserved)")
    for name, ok in checks.items():
        print(("ok    " if ok else "FAILED ") + name)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
