#!/usr/bin/env python3
"""How much CPU does a memory monitor itself cost? memwarden against mprof.

Each tool runs bench/process_tree.py (by default 50 mostly idle children holding 10 MiB
each, for 20 s) under itself:

``memwarden``  ``memwarden run --quiet --json <tmp>/report.json -- <python> process_tree.py ...``
               at its default interval (50 ms);
``mprof``      ``mprof run --nopython --include-children --interval 0.05 --exit-code
               --output <tmp>/mprofile.dat <python> process_tree.py ...`` (memory_profiler);
``bare``       the workload alone, for its wall time.

What is measured is the CPU time of the tool's own process, not of the workload: the
harness reads ``utime + stime`` (fields 14 and 15 of ``/proc/<pid>/stat``, which count
every thread of the process and none of its children) every ``--poll-ms`` (100 ms), and
once more after the tool has exited but before it is reaped (the zombie's figures are
final), then divides by ``SC_CLK_TCK``. Wall time runs from just before the spawn to the
tool's exit. The share of one core is cpu_s / wall_s. Runs are interleaved (bare,
memwarden, mprof, bare, ...) so that drift in the machine's load hits every tool alike,
and the table gives medians over ``--repeat`` runs.

memwarden's own report carries ``monitor.self_cpu_s`` and ``monitor.self_cpu_share``
(from getrusage(RUSAGE_SELF)); they are printed beside the /proc figures as a cross-check.
Achieved samples per second are printed too: mprof sleeps a full interval after each
sample, so it samples less often than its interval says, and CPU per sample is the fairer
unit when the rates differ.

As a check that each tool really watched the whole tree, the peak RSS it saw is printed
(about 1 GiB for 50 children of 10 MiB: each child's RSS also counts the pages it shares
with the parent), and memwarden's report must list every process (``--procs`` + 1);
a run where it lists fewer is flagged and makes the comparison invalid.

Exit status: 0 on success; 1 when a run failed or memwarden did not see the whole tree;
2 when a tool or the workload is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOAD = HERE / "process_tree.py"
TOOLS = ("bare", "memwarden", "mprof")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One run of one tool."""

    tool: str
    index: int
    command: list[str]
    exit_code: int
    wall_s: float
    cpu_s: float | None
    cpu_share: float | None
    cpu_reads: int
    samples: int | None = None
    samples_per_s: float | None = None
    self_cpu_s: float | None = None
    self_cpu_share: float | None = None
    workload_line: str | None = None
    peak_mib: float | None = None
    processes_seen: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Reads the command line."""
    parser = argparse.ArgumentParser(
        description="Measure the CPU a memory monitor uses on a wide, idle process tree.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--procs", type=int, default=50, help="children in the workload")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the workload lives")
    parser.add_argument("--mib", type=float, default=10.0, help="MiB each child holds")
    parser.add_argument("--mode", choices=("fork", "exec"), default="fork", help="how the workload makes children")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool")
    parser.add_argument("--memwarden", type=Path, default=REPO / "target/release/memwarden", help="memwarden binary")
    parser.add_argument("--python", type=Path, default=REPO / ".venv/bin/python", help="python that runs the workload")
    parser.add_argument("--mprof", type=Path, default=None, help="mprof script (default: next to --python)")
    parser.add_argument("--interval-ms", type=int, default=50, help="sampling interval given to mprof")
    parser.add_argument(
        "--memwarden-interval-ms",
        type=int,
        default=None,
        help="pass --interval to memwarden (default: none, i.e. memwarden's own default, 50 ms)",
    )
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of: " + ", ".join(TOOLS))
    parser.add_argument("--poll-ms", type=int, default=100, help="how often /proc/<tool>/stat is read")
    parser.add_argument("--json", type=Path, default=None, help="also write all runs and the summary here")
    parser.add_argument("--keep", type=Path, default=None, help="keep tool outputs in this directory")
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown or not args.tools:
        parser.error(f"--tools: unknown {unknown}; choose from {', '.join(TOOLS)}")
    if args.repeat < 1 or args.poll_ms < 1 or args.interval_ms < 1:
        parser.error("--repeat, --poll-ms and --interval-ms must be positive")
    if args.mprof is None:
        args.mprof = args.python.parent / "mprof"
    # Make paths absolute so the printed reproduction command works from any directory.
    args.python = Path(os.path.abspath(args.python))
    args.memwarden = Path(os.path.abspath(args.memwarden))
    args.mprof = Path(os.path.abspath(args.mprof))
    return args


def check_inputs(args: argparse.Namespace) -> str | None:
    """Returns why the benchmark cannot run, or None."""

    def executable(path: Path) -> bool:
        return path.is_file() and os.access(path, os.X_OK)

    if not WORKLOAD.is_file():
        return f"workload not found: {WORKLOAD}"
    if not executable(args.python):
        return f"python not found or not executable: {args.python} (pass --python PATH)"
    if "memwarden" in args.tools and not executable(args.memwarden):
        return (
            f"memwarden binary not found or not executable: {args.memwarden}\n"
            "  build it first (cargo build --release -p memwarden-cli), pass --memwarden PATH,\n"
            "  or leave it out with --tools bare,mprof"
        )
    if "mprof" in args.tools and not executable(args.mprof):
        return f"mprof not found: {args.mprof} (pip install memory_profiler, or pass --mprof PATH)"
    return None


def read_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads, none of its children), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tool_version(args: argparse.Namespace, tool: str) -> str:
    """The tool's version string, as it reports it."""
    try:
        if tool == "memwarden":
            out = subprocess.run([str(args.memwarden), "--version"], capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"
        if tool == "mprof":
            out = subprocess.run([str(args.mprof), "run", "--version"], capture_output=True, text=True, timeout=60)
            text = (out.stdout or out.stderr).strip()
            return f"memory_profiler {text}" if text else "?"
        out = subprocess.run([str(args.python), "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def workload_command(args: argparse.Namespace) -> list[str]:
    """The workload, as every tool runs it."""
    return [
        str(args.python),
        str(WORKLOAD),
        f"--procs={args.procs}",
        f"--seconds={args.seconds:g}",
        f"--mib={args.mib:g}",
        f"--mode={args.mode}",
    ]


def tool_command(args: argparse.Namespace, tool: str, outdir: Path) -> list[str]:
    """The full command line of one run."""
    workload = workload_command(args)
    if tool == "memwarden":
        interval = [f"--interval={args.memwarden_interval_ms}ms"] if args.memwarden_interval_ms else []
        return [str(args.memwarden), "run", "--quiet", *interval, "--json", str(outdir / "report.json"), "--", *workload]
    if tool == "mprof":
        # --nopython: profile the interpreter as a plain executable. Without it, a program
        # ending in .py is run under `python -m memory_profiler`, which adds tracing to the
        # workload itself. The python path is the program here, so this only makes it explicit.
        return [
            str(args.mprof),
            "run",
            "--nopython",
            "--include-children",
            f"--interval={args.interval_ms / 1000:g}",
            "--exit-code",
            f"--output={outdir / 'mprofile.dat'}",
            *workload,
        ]
    return workload


def measure(command: list[str], outdir: Path, poll_s: float) -> tuple[int, float, float | None, int]:
    """Runs one command; returns its exit code, wall seconds, own CPU seconds and reads done."""
    stdout = open(outdir / "stdout.txt", "wb")  # noqa: SIM115 - closed below, after the child is gone
    stderr = open(outdir / "stderr.txt", "wb")  # noqa: SIM115
    exited = threading.Event()
    exit_time: list[float] = []
    try:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)

        def wait_without_reaping() -> None:
            # WNOWAIT leaves the process a zombie, whose /proc/<pid>/stat still holds its final times.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            exit_time.append(time.monotonic())
            exited.set()

        waiter = threading.Thread(target=wait_without_reaping, daemon=True)
        waiter.start()
        cpu: float | None = None
        reads = 0
        while not exited.wait(poll_s):
            value = read_cpu_s(proc.pid)
            if value is not None:
                cpu, reads = value, reads + 1
        waiter.join()
        # The process has exited and is not reaped yet: this read gives its final times.
        value = read_cpu_s(proc.pid)
        if value is not None:
            cpu, reads = value, reads + 1
        code = proc.wait()  # reaps
        return code, exit_time[0] - started, cpu, reads
    finally:
        stdout.close()
        stderr.close()


def read_memwarden_report(path: Path, run: Run) -> None:
    """Copies the monitor's self-reported cost and sample count into the run."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        run.extra["report_error"] = str(err)
        return
    monitor = report.get("monitor", {})
    run.self_cpu_s = monitor.get("self_cpu_s")
    run.self_cpu_share = monitor.get("self_cpu_share")
    run.samples = monitor.get("samples")
    run.extra["interval_ms"] = monitor.get("interval_ms")
    run.extra["report_duration_s"] = report.get("duration_s")
    run.processes_seen = len(report.get("processes", []))
    peak = report.get("peak", {}).get("rss_bytes")
    run.peak_mib = peak / 2**20 if isinstance(peak, (int, float)) else None


def read_mprof_output(path: Path, run: Run) -> None:
    """Counts the samples mprof wrote ("MEM <MiB> <time>" lines) and keeps the largest."""
    try:
        with open(path) as f:
            values = [float(line.split()[1]) for line in f if line.startswith("MEM ")]
    except (OSError, ValueError, IndexError) as err:
        run.extra["output_error"] = str(err)
        return
    run.samples = len(values)
    run.peak_mib = max(values) if values else None


def one_run(args: argparse.Namespace, tool: str, index: int, root: Path) -> Run:
    """Runs one tool once and collects everything known about the run."""
    outdir = root / f"{tool}-{index}"
    outdir.mkdir(parents=True, exist_ok=True)
    command = tool_command(args, tool, outdir)
    code, wall, cpu, reads = measure(command, outdir, args.poll_ms / 1000)
    run = Run(
        tool=tool,
        index=index,
        command=command,
        exit_code=code,
        wall_s=wall,
        cpu_s=cpu,
        cpu_share=(cpu / wall) if cpu is not None and wall > 0 else None,
        cpu_reads=reads,
    )
    lines = (outdir / "stdout.txt").read_text(errors="replace").splitlines()
    run.workload_line = next((line for line in lines if line.startswith("process_tree:")), None)
    if tool == "memwarden":
        read_memwarden_report(outdir / "report.json", run)
    elif tool == "mprof":
        read_mprof_output(outdir / "mprofile.dat", run)
    if run.samples is not None and wall > 0:
        run.samples_per_s = run.samples / wall
    return run


def median(values: list[float | None]) -> float | None:
    """Median of the known values, or None."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fmt(value: float | None, spec: str) -> str:
    """Formats a figure that may be unknown."""
    return "n/a" if value is None else format(value, spec)


def summarize(args: argparse.Namespace, runs: list[Run], versions: dict[str, str]) -> list[dict[str, Any]]:
    """Medians per tool, in the order the tools were asked for."""
    rows = []
    for tool in args.tools:
        mine = [r for r in runs if r.tool == tool]
        cpu_per_sample = [
            (r.cpu_s / r.samples) if r.cpu_s is not None and r.samples else None for r in mine
        ]
        if tool == "memwarden":
            interval = f"{args.memwarden_interval_ms or 50} ms" + ("" if args.memwarden_interval_ms else " (default)")
        elif tool == "mprof":
            interval = f"{args.interval_ms} ms"
        else:
            interval = "-"
        rows.append(
            {
                "tool": tool,
                "version": versions.get(tool, "?"),
                "interval": interval,
                "runs": len(mine),
                "median_wall_s": median([r.wall_s for r in mine]),
                "median_cpu_s": median([r.cpu_s for r in mine]),
                "median_cpu_share": median([r.cpu_share for r in mine]),
                "median_samples_per_s": median([r.samples_per_s for r in mine]),
                "median_cpu_ms_per_sample": median([c * 1000 if c is not None else None for c in cpu_per_sample]),
                "median_self_cpu_s": median([r.self_cpu_s for r in mine]),
                "median_self_cpu_share": median([r.self_cpu_share for r in mine]),
                "median_peak_mib": median([r.peak_mib for r in mine]),
                "min_processes_seen": min((r.processes_seen for r in mine if r.processes_seen is not None), default=None),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> float | None:
    """Prints the markdown table; returns memwarden's CPU share over mprof's, when both ran."""
    share = {row["tool"]: row["median_cpu_share"] for row in rows}
    ratio = None
    if share.get("memwarden") is not None and share.get("mprof"):
        ratio = share["memwarden"] / share["mprof"]
    print(
        "| tool | version | interval | runs | median wall s | median tool CPU s | "
        "median CPU share of one core | samples/s | CPU ms/sample | self-reported CPU s (share) | "
        "peak RSS seen MiB | vs mprof |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        tool = row["tool"]
        if tool == "bare":
            cpu_s, cpu_share, versus = "-", "-", "-"
        else:
            cpu_s = fmt(row["median_cpu_s"], ".3f")
            cpu_share = fmt(None if row["median_cpu_share"] is None else 100 * row["median_cpu_share"], ".2f") + " %"
            versus = "1.00" if tool == "mprof" and share.get("mprof") else (fmt(ratio, ".2f") if tool == "memwarden" else "-")
        self_cpu = "-"
        if tool == "memwarden":
            pct = None if row["median_self_cpu_share"] is None else 100 * row["median_self_cpu_share"]
            self_cpu = f"{fmt(row['median_self_cpu_s'], '.3f')} ({fmt(pct, '.2f')} %)"
        print(
            f"| {tool} | {row['version']} | {row['interval']} | {row['runs']} | {fmt(row['median_wall_s'], '.2f')} | "
            f"{cpu_s} | {cpu_share} | {fmt(row['median_samples_per_s'], '.1f')} | "
            f"{fmt(row['median_cpu_ms_per_sample'], '.3f')} | {self_cpu} | {fmt(row['median_peak_mib'], '.0f')} | {versus} |"
        )
    if ratio is not None:
        print(f"\nmemwarden used {ratio:.2f}x the CPU of mprof (median share of one core, /proc measurement).")
    return ratio


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "clk_tck": CLK_TCK,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table."""
    args = parse_args(argv)
    problem = check_inputs(args)
    if problem:
        print(f"monitor_overhead: {problem}", file=sys.stderr)
        return 2

    reproduce = [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--procs={args.procs}",
        f"--seconds={args.seconds:g}",
        f"--mib={args.mib:g}",
        f"--mode={args.mode}",
        f"--repeat={args.repeat}",
        f"--memwarden={args.memwarden}",
        f"--python={args.python}",
        f"--mprof={args.mprof}",
        f"--interval-ms={args.interval_ms}",
        f"--poll-ms={args.poll_ms}",
        f"--tools={','.join(args.tools)}",
    ]
    if args.memwarden_interval_ms:
        reproduce.append(f"--memwarden-interval-ms={args.memwarden_interval_ms}")
    host = machine()
    print(f"reproduce: {shlex.join(reproduce)}")
    print(f"machine: {host['cpu']}, {host['usable_cpus']} usable CPUs, Linux {host['kernel']}, "
          f"load average at start {host['loadavg_at_start'][0]:.2f}")
    versions = {tool: tool_version(args, tool) for tool in args.tools}

    keep = args.keep is not None
    root = Path(args.keep) if keep else Path(tempfile.mkdtemp(prefix="monitor_overhead-"))
    root.mkdir(parents=True, exist_ok=True)
    for tool in args.tools:
        print(f"{tool}: {shlex.join(tool_command(args, tool, root / f'{tool}-N'))}")
    print(flush=True)

    runs: list[Run] = []
    failed = False
    blind = False
    try:
        for index in range(args.repeat):
            for tool in args.tools:
                run = one_run(args, tool, index, root)
                runs.append(run)
                ok = run.exit_code == 0 and run.workload_line is not None and f"children_started={args.procs} " in run.workload_line
                note = ""
                if run.peak_mib is not None:
                    note += f" peak={run.peak_mib:.0f}MiB"
                if run.processes_seen is not None:
                    note += f" processes_seen={run.processes_seen}"
                if run.self_cpu_s is not None:
                    note += f" self-reported {run.self_cpu_s:.3f} s ({100 * (run.self_cpu_share or 0):.2f} %)"
                print(
                    f"run {index + 1}/{args.repeat} {tool:<9} exit={run.exit_code} wall={run.wall_s:6.2f}s "
                    f"cpu={fmt(run.cpu_s, '.3f')}s share={fmt(None if run.cpu_share is None else 100 * run.cpu_share, '.2f')}% "
                    f"samples={run.samples if run.samples is not None else '-'}{note}",
                    flush=True,
                )
                expected = args.procs + 1
                if run.processes_seen is not None and run.processes_seen < expected:
                    blind = True
                    print(f"  WARNING: memwarden's report lists {run.processes_seen} of the {expected} processes in "
                          "the tree, so its CPU figure is not the cost of watching the whole tree", file=sys.stderr)
                if not ok:
                    failed = True
                    err = (root / f"{tool}-{index}" / "stderr.txt").read_text(errors="replace")[-2000:]
                    print(f"  run failed (exit {run.exit_code}, workload line: {run.workload_line!r}); stderr tail:\n{err}",
                          file=sys.stderr)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    rows = summarize(args, runs, versions)
    ratio = print_table(rows)
    if blind:
        print("\nINVALID COMPARISON: memwarden did not see every process of the tree (see the warnings above); "
              "exit status 1.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "benchmark": "monitor_overhead",
            "reproduce": reproduce,
            "machine": host,
            "config": {
                "procs": args.procs,
                "seconds": args.seconds,
                "mib": args.mib,
                "mode": args.mode,
                "repeat": args.repeat,
                "mprof_interval_ms": args.interval_ms,
                "memwarden_interval_ms": args.memwarden_interval_ms,
                "poll_ms": args.poll_ms,
            },
            "summary": rows,
            "memwarden_over_mprof_cpu": ratio,
            "valid": not (failed or blind),
            "runs": [asdict(run) for run in runs],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed or blind else 0


if __name__ == "__main__":
    sys.exit(main())
