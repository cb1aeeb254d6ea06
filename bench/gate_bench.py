#!/usr/bin/env python3
"""Does `memwarden check` mean what it says? Unchanged code must pass, a 10% regression fail.

For each workload (a short one, about 0.5 s, and a long one) this records VERSIONS
versions of *unchanged* code, RUNS runs each, in a fresh ledger, and asks `memwarden
check model@V` for every version after the first: each FAIL is a false alarm. Then it
records one more version whose memory is 10% larger (the workload's --scale) and checks
it: a PASS there is a missed regression. Real runs of real programs, not a CI test: the
result is statistical, so it is measured here and recorded in bench/RESULTS.md.

    python3 bench/gate_bench.py --memwarden target/release/memwarden --python .venv/bin/python

Exit status: 0 when every unchanged version passed and every regression failed, 1 otherwise.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# A workload holding MIB MiB of numpy data (touched) for SECONDS, in a few steps, as a
# training step does; --scale multiplies the memory.
WORKLOAD = r"""
import sys, time
import numpy as np
mib, seconds, scale = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
steps = 4
held = []
for _ in range(steps):
    held.append(np.ones(int(mib * scale * 2**20 / 8 / steps)))
    time.sleep(seconds / steps)
del held
"""

WORKLOADS = {
    # name: (MiB held, seconds)
    "short": (220, 0.5),
    "long": (220, 4.0),
}


def run(args, home, version, mib, seconds, scale, script):
    command = [
        args.memwarden, "--ledger", os.path.join(home, "ledger.sqlite"), "run", "--quiet",
        "--model", "gate-bench", "--version", str(version), "--stage", "train",
        "--", args.python, script, str(mib), str(seconds), str(scale),
    ]
    env = dict(os.environ, MEMWARDEN_HOME=home, MEMWARDEN_NO_GPU="1")
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"run of version {version} failed ({done.returncode}): {done.stderr}")


def check(args, home, version):
    command = [args.memwarden, "--ledger", os.path.join(home, "ledger.sqlite"), "check",
               f"gate-bench@{version}", "--json"]
    env = dict(os.environ, MEMWARDEN_HOME=home)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        sys.exit(f"check of version {version} failed ({done.returncode}): {done.stderr}")
    report = json.loads(done.stdout)
    failed = [v for v in report["verdicts"] if not v["pass"]]
    return report["pass"], failed, report["verdicts"]


def bench(args, name, mib, seconds, script):
    home = tempfile.mkdtemp(prefix=f"memwarden-gate-{name}-")
    false_alarms = []
    started = time.time()
    for version in range(1, args.versions + 1):
        for _ in range(args.runs):
            run(args, home, version, mib, seconds, 1.0, script)
        if version > 1:
            passed, failed, _ = check(args, home, version)
            if not passed:
                false_alarms.append((version, [v["explanation"] for v in failed]))
    regressed = args.versions + 1
    for _ in range(args.runs):
        run(args, home, regressed, mib, seconds, 1.0 + args.regression_pct / 100, script)
    caught, failed, verdicts = check(args, home, regressed)
    caught = not caught
    rss = next((v["explanation"] for v in verdicts if v.get("metric") == "peak_rss"), "")
    return {
        "workload": name,
        "mib": mib,
        "seconds": seconds,
        "versions_checked": args.versions - 1,
        "false_alarms": false_alarms,
        "regression_caught": caught,
        "regression_verdicts": [v["explanation"] for v in failed],
        "regression_rss": rss,
        "wall_s": round(time.time() - started, 1),
        "ledger_home": home,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memwarden", default="target/release/memwarden")
    parser.add_argument("--python", default=".venv/bin/python")
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--regression-pct", type=float, default=10.0)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    for path in (args.memwarden, args.python):
        if not os.path.exists(path):
            sys.exit(f"{path} not found: build memwarden (cargo build --release) and make the venv (scripts/test.sh)")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(WORKLOAD)
        script = f.name
    results = []
    for name in args.workloads.split(","):
        mib, seconds = WORKLOADS[name]
        result = bench(args, name, mib, seconds, script)
        results.append(result)
        print(
            f"{name}: {mib} MiB for {seconds} s, {args.versions} unchanged versions x {args.runs} runs: "
            f"{len(result['false_alarms'])} of {result['versions_checked']} checks failed (false alarms); "
            f"+{args.regression_pct:g}% regression {'caught' if result['regression_caught'] else 'MISSED'} "
            f"({result['wall_s']} s)"
        )
        for version, why in result["false_alarms"]:
            print(f"  false alarm at version {version}: {'; '.join(why)}")
        print(f"  regression: {result['regression_rss']}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    ok = all(not r["false_alarms"] and r["regression_caught"] for r in results)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
