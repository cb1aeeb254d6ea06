#!/usr/bin/env python3
"""Instructions the allocation profilers add to the workloads, counted by valgrind.

The wall-time bench (profiler_bench.py) is at the mercy of this shared VM's load; an
instruction count is not. Every tool runs each workload (bench/workloads/*.py, smaller:
`--scale`) with the target Python process(es) under
`valgrind --tool=callgrind --dump-before=fork --trace-children=yes`, and the `summary:`
lines (Ir: instructions executed in user space) of every file valgrind wrote are summed:

- memwarden supervises from outside, so valgrind goes after its `--`, around python alone:
  the supervisor, its sampling and its analysis at the end are not counted;
- memray, Fil and scalene profile in-process, so valgrind wraps the whole command (Fil's
  launcher re-executes python under ld.so with its preload; valgrind follows the exec).

Callgrind, not cachegrind: a forked child inherits its parent's counters under both, so
pool.py's workers would count the parent's start-up again; `--dump-before=fork` writes the
parent's count so far to a file of its own and zeroes it before each fork, so every
instruction is counted once.

Start-up is measured apart: the same command on a script holding only the workload's
imports. The table gives, per workload and tool, the instructions, the ratio to bare, and
the ratio with start-up taken out of both, (total - start-up) / (bare total - bare start-up).

    bench/.venv-peers/bin/python bench/profiler_instructions.py --json bench/out/instructions.json

Valgrind counts the same instructions from run to run up to the profilers' own randomness
(memwarden's sampling draws, memray's timer thread, thread interleaving) and the memory
layout, so one run each is enough: `--repeat 2` on one workload shows the spread.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import profiler_bench as bench

# Each workload's default --scale: bare under callgrind takes 15-35 s on the 2-core VM, the
# work itself outweighs the start-up, and the slowest run (Fil on objects, 4x the
# instructions) stays under 2 minutes.
DEFAULT_SCALES = {"objects": 0.1, "numpy_peak": 0.5, "leak": 0.25, "threads": 0.4, "pool": 0.25, "small_arrays": 0.1}
TIMEOUT_S = 600


def valgrind(out):
    return [
        "valgrind", "--tool=callgrind", "--dump-before=fork", "--trace-children=yes",
        "--callgrind-out-file=" + os.path.join(out, "cg.%p"), "--log-file=" + os.path.join(out, "valgrind.%p"),
    ]


def startup_script(workload, directory):
    """A script with only the workload's top-level imports: what every run pays before work."""
    with open(os.path.join(bench.HERE, "workloads", workload + ".py")) as f:
        imports = [line for line in f if re.match(r"(import|from) \S", line)]
    path = os.path.join(directory, f"startup_{workload}.py")
    with open(path, "w") as f:
        f.write("".join(imports))
    return path


def read_counts(out):
    """One entry per process valgrind ran: pid, command, instructions (the `summary:` lines
    of its files: cg.PID, and cg.PID.N for each part dumped before a fork)."""
    processes = {}
    for path in glob.glob(os.path.join(out, "cg.*")):
        pid = int(os.path.basename(path).split(".")[1])
        entry = processes.setdefault(pid, {"pid": pid, "command": "", "instructions": 0})
        summary = None
        with open(path) as f:
            for line in f:
                if line.startswith("cmd:"):
                    entry["command"] = line[4:].strip()
                elif line.startswith("summary:"):
                    summary = int(line.split()[1])
        if summary is None or entry["instructions"] is None:
            entry["instructions"] = None  # a file valgrind did not finish
        else:
            entry["instructions"] += summary
    return sorted(processes.values(), key=lambda p: p["pid"])


def valgrind_errors(out):
    """Lines of valgrind's logs that say a process did not run as it would natively. SIGTERM
    is not one: pool.py's `with Pool(...)` ends by terminating its idle workers, natively too."""
    errors = []
    for path in glob.glob(os.path.join(out, "valgrind.*")):
        with open(path) as f:
            errors += [line.strip() for line in f
                       if re.search(r"unhandled instruction|Process terminating|unrecognised|Unsupported|Fatal", line)
                       and "(SIGTERM)" not in line]
    return errors


def count(tool, workload, script, script_args, args):
    out = tempfile.mkdtemp(prefix=f"instructions-{tool}-{workload}-")
    # A fixed hash seed: string hashing otherwise changes dict work from run to run. One
    # OpenBLAS thread: idle OpenBLAS threads spin-wait for work, and how long they spin under
    # valgrind (which runs one thread at a time) depends on scheduling, not on the tool.
    env = bench.workload_env(PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1")
    start = time.perf_counter()
    try:
        code = subprocess.run(bench.command(tool, script, out, args, script_args, wrap=valgrind(out)), cwd=out, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        shutil.rmtree(out, ignore_errors=True)
        return {"error": f"timed out after {TIMEOUT_S} s"}
    result = {"wall_s": time.perf_counter() - start, "exit": code, "processes": read_counts(out)}
    result["instructions"] = sum(p["instructions"] or 0 for p in result["processes"])
    errors = valgrind_errors(out)
    if code != 0 or errors or any(p["instructions"] is None for p in result["processes"]):
        result["error"] = f"exit {code}" + "".join(f"; {e}" for e in errors[:3])
    if tool.startswith("memwarden") and script_args:
        # The preload must have run inside valgrind: the report has a profile, and at the
        # default scales its largest stack at the peak is the workload's `# @peak` line.
        try:
            report = bench.read_memwarden(out, workload, bench.peak_line(workload))
            result["profile_bytes"], result["right_line"] = report["peak_bytes"], report["right_line"]
        except Exception as error:
            result["error"] = f"{result.get('error', 'no profile')}; report: {type(error).__name__}: {error}"
    if args.keep:
        result["out"] = out
    else:
        shutil.rmtree(out, ignore_errors=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=os.path.join(bench.HERE, ".venv-peers", "bin", "python"))
    parser.add_argument("--memwarden", default=os.path.join(bench.ROOT, "target", "release", "memwarden"))
    parser.add_argument("--workloads", default=",".join(bench.WORKLOADS))
    parser.add_argument("--tools", default="bare,memwarden,memwarden-exact,memray,fil",
                        help="scalene can be named, but does not run under valgrind (see bench/README.md)")
    parser.add_argument("--scale", type=float, help="every workload's --scale (default: per workload, %s)" % DEFAULT_SCALES)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (workload, tool), to see the spread")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (callgrind files, reports)")
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args()
    tools = args.tools.split(",")
    scripts = tempfile.mkdtemp(prefix="instructions-startup-")
    results = {}
    for workload in args.workloads.split(","):
        scale = args.scale if args.scale is not None else DEFAULT_SCALES[workload]
        script = os.path.join(bench.HERE, "workloads", workload + ".py")
        startup = startup_script(workload, scripts)
        results[workload] = {"scale": scale, "runs": {t: [] for t in tools}}
        for _ in range(args.repeat):
            for tool in tools:
                run = count(tool, workload, script, ["--scale", str(scale)], args)
                run["startup"] = count(tool, workload, startup, [], args)
                results[workload]["runs"][tool].append(run)
                print(f"{workload:13} {tool:16} {run.get('instructions', 0):>15,} Ir  start-up "
                      f"{run['startup'].get('instructions', 0):>13,}  {run.get('wall_s', 0):6.1f} s  "
                      f"{run.get('error', '')}{run['startup'].get('error', '')}", file=sys.stderr)
    shutil.rmtree(scripts, ignore_errors=True)
    print(summarize(results, tools))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "python": args.python, "results": results}, f, indent=1)


def summarize(results, tools):
    lines = ["| workload (scale) | tool | instructions | × bare | start-up | × bare, start-up excluded | processes | memwarden's profile: peak, line |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for workload, data in results.items():
        bare = [r for r in data["runs"].get("bare", []) if not r.get("error") and not r["startup"].get("error")]
        bare_total = bare[0]["instructions"] if bare else None
        bare_work = bare_total - bare[0]["startup"]["instructions"] if bare else None
        for tool in tools:
            for run in data["runs"][tool]:
                if run.get("error") or run["startup"].get("error"):
                    lines.append(f"| {workload} ({data['scale']}) | {tool} | failed: {run.get('error') or run['startup']['error']} "
                                 f"| | | | | |")
                    continue
                total, startup = run["instructions"], run["startup"]["instructions"]
                ratio = f"{total / bare_total:.3f}" if bare_total else "?"
                work_ratio = f"{(total - startup) / bare_work:.3f}" if bare_work else "?"
                profile = ""
                if "profile_bytes" in run:
                    profile = (f"{run['profile_bytes'] / 2**20:.0f} MiB, "
                               + ("right line" if run["right_line"] else "**other line**")) if run["profile_bytes"] else "**none**"
                lines.append(f"| {workload} ({data['scale']}) | {tool} | {total:,} | {ratio} | {startup:,} | {work_ratio} | "
                             f"{len(run['processes'])} | {profile} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
