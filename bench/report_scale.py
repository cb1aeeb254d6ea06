#!/usr/bin/env python3
"""Report generation at scale: a profiled run of 200 processes and 100 000 distinct stacks.

The workload forks PROCS children (in waves of WAVE); each runs FUNCS functions of its own
(named after the child, so no two children share a stack), each keeping a 64 KiB buffer
until the child ends, so every stack holds memory at the child's peak. It runs under
`memwarden run --profile=exact` (every allocation recorded, so every stack is seen), which
writes the JSON and HTML reports; then `memwarden report` renders the HTML again from the
JSON alone. For both, memwarden's own peak resident memory (VmHWM of the memwarden
process, read from /proc as it runs) and wall time are measured, with the sizes of the
report and the page; then the page is opened in headless Chromium (Debian's `chromium`,
driven by crates/memwarden-cli/tests/support/browser.py, which needs websocket-client) and
the time from navigation to the page being drawn and usable (`performance.now()` when its
script finishes) is read, five times.

    cargo build --release
    .venv/bin/python bench/report_scale.py --memwarden target/release/memwarden \\
        --python .venv/bin/python --out bench/out/scale --also-open out/report.html

Exit status: 0, or 1 when a run failed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WORKLOAD = r'''
import os, sys
PROCS, FUNCS, WAVE = {procs}, {funcs}, {wave}

def child(index):
    source = "\n".join(
        f"def f_{{index}}_{{i}}(keep):\n    keep.append(bytearray(65536))\n" for i in range(FUNCS)
    )
    scope = {{}}
    exec(compile(source, f"gen_{{index}}.py", "exec"), scope)
    keep = []
    for i in range(FUNCS):
        scope[f"f_{{index}}_{{i}}"](keep)
    os._exit(0)

started = 0
while started < PROCS:
    pids = []
    for _ in range(min(WAVE, PROCS - started)):
        pid = os.fork()
        if pid == 0:
            child(started)
        pids.append(pid)
        started += 1
    for pid in pids:
        os.waitpid(pid, 0)
'''


def run_watched(argv):
    """Runs argv; returns (wall seconds, the process's own VmHWM in bytes, exit status)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.02)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        print(err, file=sys.stderr)
    return wall, hwm, proc.returncode


def open_in_chromium(python, page, times=5):
    """Milliseconds from navigation until the page's script has drawn it, `times` times."""
    driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "memwarden-cli",
                          "tests", "support", "browser.py")
    steps = [{"do": "wait", "js": "document.documentElement.dataset.ready === '1'", "timeout_s": 60},
             {"do": "eval", "as": "ready_ms", "js": "Number(document.documentElement.dataset.readyMs)"}]
    found = []
    with tempfile.TemporaryDirectory() as scratch:
        steps_file = os.path.join(scratch, "steps.json")
        with open(steps_file, "w") as f:
            json.dump(steps, f)
        for _ in range(times):
            out = subprocess.run([python, driver, "--page", page, "--steps", steps_file,
                                  "--screenshots", scratch], capture_output=True, text=True)
            try:
                result = json.loads(out.stdout)
            except ValueError:
                return None, out.stderr.strip()[-300:]
            if result.get("error") or result["console_errors"] or result["exceptions"]:
                return None, json.dumps(result)[:300]
            found.append(result["values"]["ready_ms"])
    return found, None


def mib(n):
    return f"{n / 2**20:.1f} MiB"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memwarden", default="target/release/memwarden")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--procs", type=int, default=200)
    p.add_argument("--funcs", type=int, default=500)
    p.add_argument("--wave", type=int, default=20)
    p.add_argument("--out", default="bench/out/scale")
    p.add_argument("--also-open", action="append", default=[], metavar="PAGE",
                   help="another page to time in Chromium (e.g. the example's out/report.html)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    script = os.path.join(args.out, "workload.py")
    with open(script, "w") as f:
        f.write(WORKLOAD.format(procs=args.procs, funcs=args.funcs, wave=args.wave))
    report = os.path.join(args.out, "report.json")
    page = os.path.join(args.out, "run.html")
    again = os.path.join(args.out, "again.html")
    with tempfile.TemporaryDirectory() as caps:
        run = [args.memwarden, "run", "--quiet", "--profile=exact", "--capture-dir", caps,
               "--json", report, "--html", page, "--", args.python, script]
        print("$", " ".join(run))
        run_wall, run_hwm, rc = run_watched(run)
    if rc != 0:
        return 1
    render = [args.memwarden, "report", report, "--html", again]
    print("$", " ".join(render))
    render_wall, render_hwm, rc = run_watched(render)
    if rc != 0:
        return 1
    with open(report) as f:
        data = json.load(f)
    profile = data["profile"]
    processes = sum(1 for p in data["processes"] if p.get("profile"))
    print(f"processes profiled: {processes}; distinct stacks recorded: {args.procs * args.funcs} by construction; "
          f"flame stacks kept: {len(profile['flame_at_peak'])}; lines: {len(profile['lines'])}")
    print(f"run (measure + analyse + render): {run_wall:.2f} s wall, memwarden's own peak RSS {mib(run_hwm)}")
    print(f"report --html from the JSON:      {render_wall:.2f} s wall, memwarden's own peak RSS {mib(render_hwm)}")
    print(f"sizes: report.json {mib(os.path.getsize(report))}, run.html {mib(os.path.getsize(page))}")
    for name in [page] + args.also_open:
        times, why = open_in_chromium(args.python, name)
        if times is None:
            print(f"chromium: {name}: not measured: {why}")
        else:
            print(f"chromium: {name} ({mib(os.path.getsize(name))}) drawn and usable after "
                  f"{sorted(times)[len(times) // 2]:.0f} ms (median of {len(times)}: {', '.join(f'{t:.0f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
