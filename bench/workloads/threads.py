"""Four threads, each building its own 150 MiB of arrays at once."""
import threading
import numpy as np
from _scale import scaled
from _truth import report

barrier = threading.Barrier(4)
results = []


def shard(seed):
    parts = [np.full(1024 * 1024, seed, dtype=np.float64) for _ in range(19)]  # @peak
    barrier.wait()
    results.append(sum(float(p[0]) for p in parts))


for _ in range(scaled(15)):
    threads = [threading.Thread(target=shard, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(sorted(results))
report()
