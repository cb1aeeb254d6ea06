"""How much work a workload does: `--scale X` on its command line multiplies the count that
sets its length (rows, iterations, arrays, tasks). 1, the default, is the size the wall-time
bench runs; the instruction-count bench runs under valgrind (10-50x slower) at a fraction.
The sizes of single allocations do not change, so many small allocations stay many small
allocations, except in numpy_peak, whose work is one array: there it is the array's length."""
import sys


def scale():
    args = sys.argv[1:]
    if "--scale" in args:
        return float(args[args.index("--scale") + 1])
    return 1.0


def scaled(count, minimum=1):
    """count times the scale, rounded, never under minimum."""
    return max(minimum, round(count * scale()))
