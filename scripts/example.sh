#!/usr/bin/env bash
# The main job, from a fresh clone: build memwarden, set up the example's Python
# environment, and run the bundled ML workload (train, evaluate, save a scikit-learn model)
# under memwarden with the allocation profiler on. Writes out/report.json (with the Python
# lines holding memory at the peak and at exit, and advice), out/report.html (the same as one
# self-contained page to open in a browser) and out/peak.folded, prints the summary,
# and records the run as
# example-classifier@1 (stage train) in the embedded SQLite ledger (MEMWARDEN_LEDGER or
# --ledger choose another); `memwarden history example-classifier` shows it.
#
# Extra arguments go to memwarden run, e.g. scripts/example.sh --budget 2GiB
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(repo_root)
cd "$root"

echo "==> building memwarden (release)"
cargo build --release --quiet -p memwarden-cli -p memwarden-preload
ensure_venv "$root"

mkdir -p out
echo "==> memwarden run --profile -- python examples/train_eval_save.py"
exec ./target/release/memwarden run --profile --json out/report.json --html out/report.html --folded out/peak.folded \
    --model example-classifier --version 1 --stage train --input examples/train_eval_save.py "$@" -- \
    .venv/bin/python examples/train_eval_save.py --out out/model.joblib
