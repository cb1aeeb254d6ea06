#!/usr/bin/env python3
"""The Python package's costs: `track` around a block, the pytest plugin on a 200-test
suite, and how a test's heap peak as the plugin reports it compares with `memwarden run`.

Run with an interpreter that has memwarden installed (`pip install .`), numpy and pytest:

    python -m venv /tmp/mw && /tmp/mw/bin/pip install . numpy pytest pytest-memray
    /tmp/mw/bin/python bench/python_api_bench.py

1. `track`: the mean time to enter and leave an empty block, 2000 times, in a plain process
   and under `memwarden run --profile` (where it also reads the heap mark and the capture).
2. The plugin: a generated suite of 200 tests, each building a few numpy arrays, run
   `-p no:memwarden` (bare), plain (the plugin measures nothing: no marker), with a
   `limit_memory` marker on every test (pytest started again under the profiler), with
   `--memwarden` (the table too), with the markers under `memwarden pytest` and under
   `memwarden run --profile -- pytest` (no restart), and, when installed, pytest-memray's `--memray` on the marked suite (the
   peer); median wall time of 3 (MEMWARDEN_BENCH_REPEAT), interleaved;
   the suite again with tests that each sort a million numbers (about 20 ms of work).
3. Accuracy: one test allocating 64 MiB of numpy arrays through several lines (and freeing
   half before the peak); the plugin's reported peak against the heap increase of the same
   code under `memwarden run --profile=exact` (its report's heap timeline), and against the
   bytes the code allocates by construction.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

PY = sys.executable
REPEAT = int(os.environ.get("MEMWARDEN_BENCH_REPEAT", "3"))
MEMWARDEN = os.path.join(os.path.dirname(PY), "memwarden")


def timed(argv, cwd=None, env=None):
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


TRACK = """
import time, memwarden
n = 2000
start = time.perf_counter()
for _ in range(n):
    with memwarden.track():
        pass
print((time.perf_counter() - start) / n * 1e6)
"""


def bench_track(scratch):
    script = os.path.join(scratch, "track.py")
    with open(script, "w") as f:
        f.write(TRACK)
    plain = float(subprocess.run([PY, script], capture_output=True, text=True, check=True).stdout)
    profiled = float(
        subprocess.run([MEMWARDEN, "run", "--quiet", "--profile", "--", PY, script], capture_output=True, text=True, check=True).stdout
    )
    print(f"track enter+leave: {plain:.0f} µs plain, {profiled:.0f} µs under the profiler (mean of 2000)")


def suite(directory, marker, work):
    """200 tests; each sorts `work` random numbers (0: builds two small arrays only)."""
    os.makedirs(directory, exist_ok=True)
    mark = '@pytest.mark.limit_memory("100 MB")\n' if marker else ""
    with open(os.path.join(directory, "test_many.py"), "w") as f:
        f.write("import numpy as np\nimport pytest\n\n")
        for i in range(200):
            body = f"np.sort(np.random.rand({work}))" if work else "np.ones(100)"
            f.write(f"{mark}def test_{i}():\n    a = np.ones(20000 + {i})\n    b = a * 2 + {body}.sum()\n    assert b.sum() > 0\n\n")


def bench_plugin(scratch, work):
    plain_dir, marked_dir = os.path.join(scratch, f"plain{work}"), os.path.join(scratch, f"marked{work}")
    suite(plain_dir, False, work)
    suite(marked_dir, True, work)
    # Each tool alone: pytest-memray, when installed, also acts on limit_memory markers.
    pytest = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:memray"]
    runs = {
        "bare (-p no:memwarden)": (plain_dir, [*pytest, "-p", "no:memwarden"]),
        "plugin, no marker": (plain_dir, pytest),
        "plugin, limit_memory on every test": (marked_dir, pytest),
        "plugin, --memwarden table": (plain_dir, [*pytest, "--memwarden"]),
        # Started under the profiler from the first line: the plugin restarts nothing.
        "plugin under `memwarden pytest`, limit_memory on every test": (
            marked_dir, [MEMWARDEN, "pytest", *pytest[3:]]),
        "plugin under `memwarden run --profile`, limit_memory on every test": (
            marked_dir, [MEMWARDEN, "run", "--quiet", "--profile", "--", *pytest]),
    }
    import importlib.util

    if importlib.util.find_spec("pytest_memray") is not None:  # the peer: pip install pytest-memray
        runs["pytest-memray --memray, limit_memory on every test"] = (
            marked_dir, [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:memwarden", "--memray"])
    else:
        print("pytest-memray is not installed: its row is left out (pip install pytest-memray)")
    times = {name: [] for name in runs}
    for _ in range(REPEAT):
        for name, (directory, argv) in runs.items():
            elapsed, done = timed(argv, cwd=directory)
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-2000:])
                raise SystemExit(1)
            times[name].append(elapsed)
    bare = statistics.median(times["bare (-p no:memwarden)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"200 tests ({'sorting ' + str(work) + ' numbers each' if work else 'tiny'}), {name}: "
              f"{median:.2f} s ({median / bare:.2f}× bare)")


ACCURACY = """
import numpy as np
KEEP = []
def work():
    a = np.ones(16 * 2**20 // 8)
    b = np.ones(16 * 2**20 // 8)
    del a
    c = np.ones(32 * 2**20 // 8)
    KEEP.append((b, c))
    d = np.ones(16 * 2**20 // 8)
    del d
"""


def bench_accuracy(scratch):
    directory = os.path.join(scratch, "accuracy")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "work.py"), "w") as f:
        f.write(ACCURACY)
    with open(os.path.join(directory, "test_work.py"), "w") as f:
        f.write("import pytest, work\n\n@pytest.mark.limit_memory('1 MB')\ndef test_work():\n    work.work()\n")
    _, done = timed([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=directory)
    found = re.search(r"Test allocated ([\d.]+) MiB at its peak", done.stdout)
    plugin = float(found.group(1)) if found else None
    with open(os.path.join(directory, "run_work.py"), "w") as f:
        f.write("import time, work\ntime.sleep(0.8)\nwork.work()\ntime.sleep(0.3)\n")
    report = os.path.join(directory, "r.json")
    subprocess.run([MEMWARDEN, "run", "--quiet", "--profile=exact", "--interval", "5ms", "--json", report, "--", PY, "run_work.py"],
                   cwd=directory, check=True, capture_output=True)
    with open(report) as f:
        points = json.load(f)["profile"]["timeline"]
    # The heap once the imports are done, while the script sleeps before the work.
    before = [p["heap_bytes"] for p in points if 0.5 <= p["t_s"] <= 0.75][-1]
    increase = (max(p["heap_bytes"] for p in points) - before) / 2**20
    truth = 64.0  # a and b (32), a freed (16), c (48), d (64): b + c + d at the peak
    print(f"a test's own heap peak: plugin {plugin} MiB, memwarden run's heap increase {increase:.2f} MiB "
          f"(the code's own, by construction: {truth:.0f} MiB at its peak, b+c+d)")


def main():
    if not os.access(MEMWARDEN, os.X_OK):
        print("memwarden is not installed beside this interpreter: pip install . first")
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        bench_track(scratch)
        bench_plugin(scratch, 0)
        bench_plugin(scratch, 1_000_000)
        bench_accuracy(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
