"""A 1.25 GiB numpy peak inside a function, released before the end."""
import numpy as np
from _scale import scaled
from _truth import report


def standardize(n):
    x = np.random.default_rng(0).random(n)
    spread = np.repeat(x - x.mean(), 3)  # @peak
    del x
    spread /= np.sqrt(np.dot(spread, spread) / spread.size)
    return float(spread.sum())


print(round(standardize(scaled(256 * 1024 * 1024 // 8)), 3))
report()
