"""A 2-worker multiprocessing pool; each task holds 300 MiB at its peak."""
import multiprocessing as mp
import numpy as np
from _scale import scaled
from _truth import report


def task(seed):
    block = np.full(300 * 1024 * 1024 // 8, seed, dtype=np.float64)  # @peak
    value = float(block[::4096].sum())
    report()
    return value


if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        print(pool.map(task, range(scaled(80, minimum=2))))
    report()
