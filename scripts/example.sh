#!/usr/bin/env bash
# The main job, from a fresh clone: build memwarden, set up the example's Python
# environment, and run the bundled ML workload (train, evaluate, save a scikit-learn model)
# under memwarden. Writes out/report.json and prints the summary.
#
# Extra arguments go to memwarden run, e.g. scripts/example.sh --budget 2GiB
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(repo_root)
cd "$root"

echo "==> building memwarden (release)"
cargo build --release --quiet -p memwarden-cli
ensure_venv "$root"

mkdir -p out
echo "==> memwarden run -- python examples/train_eval_save.py"
exec ./target/release/memwarden run --json out/report.json "$@" -- \
    .venv/bin/python examples/train_eval_save.py --out out/model.joblib
