"""4 x 10^5 small numpy arrays kept in a list (many allocations of a few hundred bytes)."""
import numpy as np
from _scale import scaled
from _truth import report


def embeddings(n):
    return [np.arange(64, dtype=np.float32) * i for i in range(n)]  # @peak


for _ in range(3):
    vectors = embeddings(scaled(400_000))
    print(len(vectors), float(vectors[-1][-1]))
    del vectors
report()
