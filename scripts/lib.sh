# Shared by scripts/example.sh and scripts/test.sh: set up what a fresh machine lacks.
# shellcheck shell=bash

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# The Python environment the example, the tests and the benchmarks use: .venv at the
# repository root, with the example's requirements. MEMWARDEN_PYTHON picks the interpreter
# that creates it (default python3).
ensure_venv() {
    local root=$1
    local python=${MEMWARDEN_PYTHON:-python3}
    if [ ! -x "$root/.venv/bin/python" ]; then
        echo "==> creating $root/.venv with $($python --version 2>&1)"
        "$python" -m venv "$root/.venv"
    fi
    if ! "$root/.venv/bin/python" -c 'import numpy, sklearn, joblib' 2>/dev/null; then
        echo "==> installing the example's requirements into .venv (PyPI)"
        "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/examples/requirements.txt"
    fi
}

# What the tests need on top of the example's requirements (scripts/test-requirements.txt).
ensure_test_requirements() {
    local root=$1
    if ! "$root/.venv/bin/python" -c 'import h5py, lz4, websocket, auditwheel' 2>/dev/null; then
        echo "==> installing the tests' requirements into .venv (PyPI)"
        "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/test-requirements.txt"
    fi
}

# Debian packages the tests use: util-linux's `script` and `unshare`.
ensure_debian_tools() {
    local missing=()
    command -v script >/dev/null || missing+=(bsdutils)
    command -v unshare >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

# PostgreSQL from Debian's packages: the ledger tests start real servers from its binaries
# (initdb, pg_ctl), one per test, run as the `postgres` system user.
ensure_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "==> installing PostgreSQL (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    fi
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
}

# Chromium from Debian's packages: the HTML report's tests open the page in headless
# Chromium and drive it over the DevTools protocol (crates/memwarden-cli/tests/html_report.rs).
ensure_chromium() {
    if ! command -v chromium >/dev/null; then
        echo "==> installing Chromium (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    fi
}

# speedscope's own web app, from its npm package: the export test loads memwarden's
# speedscope file with speedscope's importer in Chromium. Unpacked into
# target/npm/speedscope-VERSION (npm comes from Debian's packages when missing).
SPEEDSCOPE_VERSION=1.25.0
ensure_speedscope() {
    local root=$1
    local dir="$root/target/npm/speedscope-$SPEEDSCOPE_VERSION"
    if [ ! -f "$dir/package/dist/release/index.html" ]; then
        if ! command -v npm >/dev/null; then
            echo "==> installing npm (apt-get)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
        fi
        echo "==> fetching speedscope $SPEEDSCOPE_VERSION (npm)"
        mkdir -p "$dir"
        (cd "$dir" && npm pack --silent "speedscope@$SPEEDSCOPE_VERSION" >/dev/null && tar xzf "speedscope-$SPEEDSCOPE_VERSION.tgz")
    fi
    export MEMWARDEN_TEST_SPEEDSCOPE="$dir/package/dist/release/index.html"
}
