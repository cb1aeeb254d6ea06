#!/usr/bin/env python3
"""A wide, mostly idle process tree: the workload of bench/monitor_overhead.py.

The parent starts ``--procs`` children (default 50). Each child holds ``--mib`` MiB
(default 10) of memory it has written to, so the pages are resident and private, then
mostly sleeps, rewriting a few pages at random every ``--touch-every`` seconds, until
``--seconds`` (default 20) have passed since the parent started; then it exits. The
parent waits for every child, prints one summary line and exits non-zero if any child
failed.

The point is to make a memory monitor walk many processes at every sample while the
workload itself costs almost no CPU, so that the monitor's own CPU time stands out.

Children are made two ways (``--mode``):

``fork`` (default)
    ``os.fork()`` of the parent: cheap to start, each child a separate process with
    its own pid, sharing the interpreter's pages copy-on-write.
``exec``
    a fresh ``python process_tree.py --child ...`` per child: a separate interpreter
    and command line each, closer to a pool of worker programs; a few MiB more RSS each
    and about a second more to start them all.

The summary line is ``process_tree: mode=... children_started=N children_failed=F
wall_s=...``; bench/monitor_overhead.py checks ``children_started``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Reads the command line."""
    parser = argparse.ArgumentParser(description="Start N mostly idle children that each hold some memory.")
    parser.add_argument("--procs", type=int, default=50, help="children to start (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the tree lives (default: %(default)s)")
    parser.add_argument("--mib", type=float, default=10.0, help="memory each child holds, MiB (default: %(default)s)")
    parser.add_argument(
        "--touch-every", type=float, default=0.5, help="seconds between a child's page writes (default: %(default)s)"
    )
    parser.add_argument(
        "--touch-pages", type=int, default=16, help="pages a child rewrites each time (default: %(default)s)"
    )
    parser.add_argument("--mode", choices=("fork", "exec"), default="fork", help="how children are made (default: fork)")
    parser.add_argument("--quiet", action="store_true", help="print nothing unless something fails")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--until-monotonic", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.procs < 0 or args.seconds < 0 or args.mib < 0 or args.touch_every <= 0 or args.touch_pages < 0:
        parser.error("--procs, --seconds, --mib and --touch-pages must be >= 0 and --touch-every > 0")
    return args


def hold_and_idle(index: int, mib: float, until: float, touch_every: float, touch_pages: int) -> None:
    """A child's life: write every page of its buffer, then sleep and rewrite a few pages now and then."""
    size = max(PAGE, int(mib * 2**20))
    buffer = bytearray(size)
    # Write one byte per page so every page is resident and private to this child.
    pages = size // PAGE
    for page in range(pages):
        buffer[page * PAGE] = 1
    rng = random.Random(index)
    # Stagger the children so their wake-ups do not all fall on the same instant.
    time.sleep(min(max(0.0, until - time.monotonic()), rng.uniform(0.0, touch_every)))
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        for _ in range(touch_pages):
            page = rng.randrange(pages)
            buffer[page * PAGE] = (buffer[page * PAGE] + 1) & 0xFF
        time.sleep(min(left, touch_every))


def start_forked(args: argparse.Namespace, index: int, until: float) -> int:
    """Forks one child that runs hold_and_idle and leaves with os._exit."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            hold_and_idle(index, args.mib, until, args.touch_every, args.touch_pages)
        except BaseException:  # noqa: BLE001 - a forked child must never return into the parent's code
            code = 1
        finally:
            os._exit(code)
    return pid


def start_execed(args: argparse.Namespace, index: int, until: float) -> int:
    """Starts one child as a fresh interpreter running this file with --child."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"--index={index}",
        # CLOCK_MONOTONIC is one clock for the whole system on Linux, so the deadline carries over.
        f"--until-monotonic={until!r}",
        f"--mib={args.mib}",
        f"--touch-every={args.touch_every}",
        f"--touch-pages={args.touch_pages}",
    ]
    # Popen objects are dropped on purpose: the parent reaps every child itself with os.waitpid.
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, close_fds=True).pid


def run_parent(args: argparse.Namespace) -> int:
    """Starts the children, waits for all of them and prints the summary line."""
    started = time.monotonic()
    until = started + args.seconds
    children: set[int] = set()

    def stop(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    start = start_forked if args.mode == "fork" else start_execed
    for index in range(args.procs):
        children.add(start(args, index, until))
    started_all_s = time.monotonic() - started

    failed = 0
    while children:
        pid, status = os.waitpid(-1, 0)
        if pid in children:
            children.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0:
                failed += 1

    wall = time.monotonic() - started
    if failed or not args.quiet:
        print(
            f"process_tree: mode={args.mode} children_started={args.procs} children_failed={failed} "
            f"mib_each={args.mib:g} started_all_s={started_all_s:.3f} wall_s={wall:.3f}",
            flush=True,
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Runs as the parent, or as one exec'd child when --child is given."""
    args = parse_args(argv)
    if args.child:
        until = args.until_monotonic if args.until_monotonic is not None else time.monotonic() + args.seconds
        hold_and_idle(args.index, args.mib, until, args.touch_every, args.touch_pages)
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
