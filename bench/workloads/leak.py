"""A 200 MiB leak: a cache that is filled and never emptied, plus temporary churn."""
import numpy as np
from _scale import scaled
from _truth import report

CACHE = []


def predict(batch, keep):
    scratch = np.ones((batch, 1024))
    if keep:
        CACHE.append(np.array(scratch[:, :256], copy=True))  # @peak
    return float(scratch.sum())


total = 0.0
for i in range(scaled(3000)):
    total += predict(1024, i % 30 == 0)
print(total, len(CACHE))
report()
