"""Pure-Python objects: a feature table built as a list of tuples, then aggregated."""
from _scale import scaled
from _truth import report


def build_rows(n):
    return [(i, "user%d" % i, i * 0.5, i % 7 == 0) for i in range(n)]  # @peak


def aggregate(rows):
    totals = {}
    for key, _, value, flag in rows:
        totals[key % 1000] = totals.get(key % 1000, 0.0) + (value if flag else 0.0)
    return totals


for _ in range(4):
    rows = build_rows(scaled(1_200_000))
    print(len(aggregate(rows)))
    del rows
report()
