#!/usr/bin/env python3
"""memwarden's allocation profiler against memray, Fil and scalene, in one run.

Every tool profiles the same six workloads (bench/workloads/*.py) with the same Python;
runs are interleaved (bare, tool 1, tool 2, ..., bare, ...) so drift on this shared VM hits
all tools alike. For each workload and tool it reports:

- slowdown: median wall time with the tool / median wall time bare (start-up included);
- peak: the tool's reported peak heap against the reference (tracemalloc's traced peak,
  summed over processes, from a separate untimed run);
- right line: whether the tool's largest stack at the peak passes through the line the
  workload marks `# @peak`;
- capture: bytes the tool wrote (memwarden: disk blocks of its sparse captures);
- extra memory: the tool run's largest process RSS minus the bare run's.

    bench/.venv-peers/bin/python bench/profiler_bench.py --repeat 3 --json bench/out/profiler.json

Set up the peers once: python3 -m venv bench/.venv-peers &&
bench/.venv-peers/bin/pip install memray filprofiler scalene numpy
"""

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOADS = ["objects", "numpy_peak", "leak", "threads", "pool", "small_arrays"]
TOOLS = ["bare", "memwarden", "memwarden-exact", "memray", "fil", "scalene"]
TIMEOUT_S = 120

# Runs a command, then writes the largest RSS of any of its descendants (KiB) and their
# CPU time (user + system, seconds) to a file.
WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1], 'w').write('%d %f' % (u.ru_maxrss, u.ru_utime + u.ru_stime))\n"
    "sys.exit(code)\n"
)


def peak_line(workload):
    with open(os.path.join(HERE, "workloads", workload + ".py")) as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith("# @peak"):
                return number
    raise SystemExit(f"{workload}.py has no # @peak line")


def command(tool, script, out, args, script_args=(), wrap=()):
    """The command line that runs `script` (with `script_args`) under `tool`, writing into `out`.

    `wrap` is a prefix (valgrind, for the instruction count) for the process that runs the
    workload: memwarden supervises from outside, so it goes after memwarden's `--`, around
    python alone; memray, Fil and scalene profile in-process, so it goes around all of it."""
    python = args.python
    bin_dir = os.path.dirname(python)
    wrap, script_args = list(wrap), list(script_args)
    memwarden = [args.memwarden, "run", "--quiet", "--cgroup", "off", "--json", os.path.join(out, "report.json"),
                 "--capture-dir", os.path.join(out, "captures")]
    return {
        "bare": wrap + [python, script] + script_args,
        "memwarden": memwarden + ["--profile", "--"] + wrap + [python, script] + script_args,
        "memwarden-exact": memwarden + ["--profile=exact", "--"] + wrap + [python, script] + script_args,
        "memray": wrap + [python, "-m", "memray", "run", "--quiet", "--follow-fork", "-o", os.path.join(out, "memray.bin"),
                          script] + script_args,
        "fil": wrap + [os.path.join(bin_dir, "fil-profile"), "-o", os.path.join(out, "fil"), "--no-browser", "run", script]
        + script_args,
        # scalene passes the program its arguments after `---`.
        "scalene": wrap + [os.path.join(bin_dir, "scalene"), "run", "-o", os.path.join(out, "scalene.json"), script]
        + (["---"] + script_args if script_args else []),
    }[tool]


def disk_bytes(path):
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(base, name)).st_blocks * 512
    return total


def on_line(frames, workload, line):
    """Whether any (file, line) frame is the workload's marked line."""
    return any(f.endswith(workload + ".py") and int(n) == line for f, n in frames)


def read_memwarden(out, workload, line):
    report = json.load(open(os.path.join(out, "report.json")))
    profile = report.get("profile") or {}
    top = (profile.get("at_peak") or [{}])[0].get("stack", [])
    return {
        "peak_bytes": profile.get("peak_bytes"),
        "right_line": on_line([(f["file"], f["line"]) for f in top], workload, line),
        "capture_bytes": disk_bytes(os.path.join(out, "captures")),
    }


MEMRAY_READER = r"""
import glob, json, sys
from memray import FileReader
peak = 0
by_stack = {}
for path in glob.glob(sys.argv[1] + "*"):
    reader = FileReader(path)
    peak += reader.metadata.peak_memory
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        key = tuple((f, l) for _, f, l in record.stack_trace())
        by_stack[key] = by_stack.get(key, 0) + record.size
top = max(by_stack.items(), key=lambda kv: kv[1])[0] if by_stack else ()
print(json.dumps({"peak_bytes": peak, "top": top}))
"""


def read_memray(out, workload, line, python):
    result = subprocess.run([python, "-c", MEMRAY_READER, os.path.join(out, "memray.bin")],
                            capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    return {
        "peak_bytes": data["peak_bytes"],
        "right_line": on_line(data["top"], workload, line),
        "capture_bytes": sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "memray.bin*"))),
    }


def read_fil(out, workload, line):
    prof = glob.glob(os.path.join(out, "fil", "*", "peak-memory.prof"))
    if not prof:
        return {"peak_bytes": None, "right_line": False, "capture_bytes": disk_bytes(os.path.join(out, "fil"))}
    stacks = []
    for text in open(prof[0]):
        stack, _, count = text.rstrip("\n").rpartition(" ")
        frames = re.findall(r"([^;]+?):(\d+) \(", stack)
        stacks.append((int(count), [(f.strip(), n) for f, n in frames]))
    top = max(stacks)[1] if stacks else []
    return {
        "peak_bytes": sum(c for c, _ in stacks),
        "right_line": on_line(top, workload, line),
        "capture_bytes": disk_bytes(os.path.join(out, "fil")),
    }


def read_scalene(out, workload, line):
    path = os.path.join(out, "scalene.json")
    data = json.load(open(path))
    return {
        "peak_bytes": int(data.get("max_footprint_mb", 0) * 1024 * 1024),
        "right_line": on_line([(data.get("max_footprint_fname", ""), data.get("max_footprint_lineno", 0))], workload, line),
        "capture_bytes": os.path.getsize(path),
    }


def truth(workload, python):
    """tracemalloc's traced peak, summed over the workload's processes."""
    with tempfile.TemporaryDirectory() as directory:
        env = dict(os.environ, BENCH_TRUTH_DIR=directory)
        subprocess.run([python, os.path.join(HERE, "workloads", workload + ".py")], env=env,
                       stdout=subprocess.DEVNULL, check=True)
        return sum(int(open(p).read()) for p in glob.glob(os.path.join(directory, "*.peak")))


def workload_env(**extra):
    """The environment every tool runs a workload in."""
    # Fil runs the script without putting its directory on sys.path; _truth.py lives there.
    return dict(os.environ, PYTHONPATH=os.path.join(HERE, "workloads"), **extra)


def run_once(tool, workload, args):
    script = os.path.join(HERE, "workloads", workload + ".py")
    out = tempfile.mkdtemp(prefix=f"bench-{tool}-{workload}-")
    rss_file = os.path.join(out, "maxrss")
    start = time.perf_counter()
    try:
        code = subprocess.run([args.python, "-c", WRAPPER, rss_file] + command(tool, script, out, args),
                              cwd=out, env=workload_env(), timeout=TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        return {"wall_s": None, "error": f"timed out after {TIMEOUT_S} s"}
    wall = time.perf_counter() - start
    maxrss_kib, cpu_s = open(rss_file).read().split()
    result = {"wall_s": wall, "cpu_s": float(cpu_s), "maxrss_bytes": int(maxrss_kib) * 1024, "exit": code}
    line = peak_line(workload)
    try:
        if tool.startswith("memwarden"):
            result.update(read_memwarden(out, workload, line))
        elif tool == "memray":
            result.update(read_memray(out, workload, line, args.python))
        elif tool == "fil":
            result.update(read_fil(out, workload, line))
        elif tool == "scalene":
            result.update(read_scalene(out, workload, line))
    except Exception as error:  # a tool that wrote nothing usable is reported, not fatal
        result["error"] = f"{type(error).__name__}: {error}"
    subprocess.run(["rm", "-rf", out])
    return result


def warm_up():
    """This VM serves the first large allocation after memory was freed slowly: touch 2 GiB
    before every timed run, so that no run pays for the one before it."""
    block = bytearray(2 << 30)
    block[::4096] = b"\1" * len(block[::4096])
    del block


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=os.path.join(HERE, ".venv-peers", "bin", "python"))
    parser.add_argument("--memwarden", default=os.path.join(ROOT, "target", "release", "memwarden"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    tools = args.tools.split(",")
    results = {}
    for workload in workloads:
        results[workload] = {"truth_bytes": truth(workload, args.python), "runs": {t: [] for t in tools}}
        for _ in range(args.repeat):
            for tool in tools:
                warm_up()
                run = run_once(tool, workload, args)
                results[workload]["runs"][tool].append(run)
                print(f"{workload:13} {tool:16} {run.get('wall_s') or 0:7.2f} s {run.get('error', '')}", file=sys.stderr)
    table = summarize(results, tools)
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "python": args.python, "results": results}, f, indent=1)


def summarize(results, tools):
    lines = ["| workload | tool | slowdown (wall) | CPU time ratio | reported peak / reference | right line | capture | extra RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for workload, data in results.items():
        bare = [r["wall_s"] for r in data["runs"].get("bare", []) if r.get("wall_s")]
        bare_rss = max((r["maxrss_bytes"] for r in data["runs"].get("bare", []) if r.get("maxrss_bytes")), default=0)
        bare_median = statistics.median(bare) if bare else None
        bare_cpu = [r["cpu_s"] for r in data["runs"].get("bare", []) if r.get("cpu_s")]
        bare_cpu_median = statistics.median(bare_cpu) if bare_cpu else None
        for tool in tools:
            runs = [r for r in data["runs"][tool] if r.get("wall_s")]
            if not runs:
                lines.append(f"| {workload} | {tool} | failed: {data['runs'][tool][0].get('error')} | | | | | |")
                continue
            wall = statistics.median(r["wall_s"] for r in runs)
            slowdown = f"{wall / bare_median:.2f}×" if bare_median else "?"
            cpu = statistics.median(r["cpu_s"] for r in runs)
            cpu_ratio = f"{cpu / bare_cpu_median:.2f}×" if bare_cpu_median else "?"
            if tool == "bare":
                lines.append(f"| {workload} | bare | {wall:.2f} s | {cpu:.2f} s | reference {data['truth_bytes'] / 2**20:.0f} MiB | | | |")
                continue
            peaks = [r.get("peak_bytes") for r in runs if r.get("peak_bytes")]
            ratio = f"{statistics.median(peaks) / data['truth_bytes']:.3f}" if peaks and data["truth_bytes"] else "n/a"
            right = sum(1 for r in runs if r.get("right_line"))
            capture = statistics.median(r.get("capture_bytes", 0) for r in runs)
            extra = max(r["maxrss_bytes"] for r in runs) - bare_rss
            errors = {r["error"] for r in data["runs"][tool] if r.get("error")}
            note = f" ({'; '.join(sorted(errors))})" if errors else ""
            lines.append(
                f"| {workload} | {tool} | {slowdown}{note} | {cpu_ratio} | {ratio} | {right}/{len(runs)} | "
                f"{capture / 1024:.0f} KiB | {extra / 2**20:+.0f} MiB |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
