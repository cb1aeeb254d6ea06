#!/usr/bin/env bash
# Everything CI checks, from a fresh clone: formatting, lints, and every test (unit,
# integration on real processes, real numpy and the real cgroup of this machine).
# Installs what it needs: the Python packages from PyPI into .venv, speedscope from npm,
# util-linux tools, PostgreSQL and Chromium with apt-get when missing; then every test must
# run, none may skip.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(repo_root)
cd "$root"

ensure_debian_tools
ensure_postgres
ensure_chromium
ensure_speedscope "$root"
ensure_venv "$root"
ensure_test_requirements "$root"
export MEMWARDEN_TEST_PYTHON="$root/.venv/bin/python"
# What the tests need is installed now, so a test that cannot run here (no root for
# `unshare -m`, no writable memory cgroup, no PostgreSQL) fails instead of skipping.
# MEMWARDEN_TEST_REQUIRE_ALL=0 lets a machine that lacks one run the rest, each skipped
# test printing a SKIPPED line that says why.
export MEMWARDEN_TEST_REQUIRE_ALL="${MEMWARDEN_TEST_REQUIRE_ALL:-1}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --quiet --all-targets -- -D warnings
echo "==> cargo build (the profiler tests inject target/debug/libmemwarden_preload.so)"
cargo build --quiet --workspace
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
    cargo test --quiet --doc
else
    cargo test --no-fail-fast
fi
echo "==> all tests passed"
