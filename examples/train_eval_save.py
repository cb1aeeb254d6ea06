#!/usr/bin/env python3
"""A small, real machine-learning job for memwarden to watch.

What it is
    A scikit-learn workload in four phases, each printed as one line on stdout:

    1. ``generate``  a synthetic binary classification set (``make_classification``),
                     converted to float32 and split into train / held-out parts;
    2. ``train``     a ``HistGradientBoostingClassifier`` fitted on the train part;
    3. ``evaluate``  accuracy and ROC AUC on the held-out part;
    4. ``save``      the fitted model written with ``joblib.dump`` to ``--out``.

    At the defaults (200,000 rows x 200 features, 150 boosting iterations) the process
    peaks near 1 GiB of resident memory (1067 MiB, 1.04 GiB, measured), during ``generate``,
    where ``make_classification`` shuffles its float64 matrix, and runs in about 30 s on
    a 2-core machine. The peak scales with ``--rows`` x ``--features``.

    Only one process does the work: the model trains with OpenMP threads, which
    scikit-learn caps at the CPUs this process may use (2 on a 2-core machine), and
    no joblib worker pool is started, so nothing oversubscribes the cores.

How memwarden uses it
    It is the workload of the README's first command::

        target/release/memwarden run --json out/report.json -- \\
            .venv/bin/python examples/train_eval_save.py

    The job's own figure, ``ru_maxrss`` of this process, is printed on the last line
    ("peak_rss_mib") so the peak in memwarden's report can be checked against the
    kernel's high-water mark as seen from inside the process.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Reads the command line."""
    parser = argparse.ArgumentParser(
        description="Generate a synthetic dataset, train a gradient-boosted classifier, "
        "evaluate it on a held-out split and save it with joblib.",
    )
    parser.add_argument("--rows", type=int, default=200_000, help="samples to generate (default: %(default)s)")
    parser.add_argument("--features", type=int, default=200, help="features per sample (default: %(default)s)")
    parser.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (default: %(default)s)")
    parser.add_argument("--max-iter", type=int, default=150, help="boosting iterations (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=Path("out/model.joblib"), help="where to save the model (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.rows < 100 or args.features < 5:
        parser.error("--rows must be at least 100 and --features at least 5")
    if not 0.0 < args.test_size < 1.0:
        parser.error("--test-size must lie strictly between 0 and 1")
    return args


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def report(phase: str, started: float, **metrics: float | int | str) -> None:
    """Prints one line for a finished phase: name, seconds, metrics and the peak so far."""
    fields = " ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in metrics.items())
    print(f"{phase:<9} {time.perf_counter() - started:6.2f}s  {fields}  peak_rss_mib={peak_rss_mib():.0f}", flush=True)


def generate(rows: int, features: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Builds the dataset (float64 inside make_classification, kept as float32) and splits it."""
    informative = max(2, features // 4)
    x64, y = make_classification(
        n_samples=rows,
        n_features=features,
        n_informative=informative,
        n_redundant=features // 8,
        n_clusters_per_class=4,
        class_sep=0.6,
        flip_y=0.02,
        random_state=seed,
    )
    x = x64.astype(np.float32)
    del x64  # the float64 copy is the phase's (and the run's) memory peak
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return x_train, x_test, y_train, y_test


def main(argv: list[str] | None = None) -> int:
    """Runs the four phases and prints one line for each."""
    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"train_eval_save: rows={args.rows} features={args.features} seed={args.seed} cores={cores}", flush=True)
    total = time.perf_counter()

    started = time.perf_counter()
    x_train, x_test, y_train, y_test = generate(args.rows, args.features, args.test_size, args.seed)
    dataset_mib = (x_train.nbytes + x_test.nbytes) / 2**20
    report("generate", started, train_rows=len(y_train), test_rows=len(y_test), dataset_mib=f"{dataset_mib:.1f}")

    started = time.perf_counter()
    model = HistGradientBoostingClassifier(
        max_iter=args.max_iter,
        learning_rate=0.1,
        max_leaf_nodes=31,
        early_stopping=False,  # a fixed amount of work, so timings compare across runs
        random_state=args.seed,
    )
    model.fit(x_train, y_train)
    report("train", started, iterations=model.n_iter_)

    started = time.perf_counter()
    proba = model.predict_proba(x_test)[:, 1]
    accuracy = accuracy_score(y_test, (proba >= 0.5).astype(y_test.dtype))
    auc = roc_auc_score(y_test, proba)
    report("evaluate", started, accuracy=float(accuracy), roc_auc=float(auc))

    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.out)
    report("save", started, path=str(args.out), bytes=args.out.stat().st_size)

    print(f"done      {time.perf_counter() - total:6.2f}s  peak_rss_mib={peak_rss_mib():.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
