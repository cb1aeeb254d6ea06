"""Tests of the Python package, run in a virtual environment the package was installed into
(`crates/memwarden-cli/tests/python_package.rs` makes it and runs them)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def memwarden_bin():
    # Not shutil.which: its search path splits on ':', which this venv's path may hold.
    found = os.path.join(os.path.dirname(sys.executable), "memwarden")
    assert os.access(found, os.X_OK), "the package's `memwarden` command is installed beside this interpreter"
    return found


@pytest.fixture
def run_profiled(tmp_path, memwarden_bin):
    """Runs a script under `memwarden run --profile`; its stdout's last line, as JSON."""

    def run(source, *options):
        script = tmp_path / "script.py"
        script.write_text(textwrap.dedent(source))
        mode = [] if any(o.startswith("--profile") for o in options) else ["--profile"]
        done = subprocess.run(
            [memwarden_bin, "run", "--quiet", *mode, *options, "--", sys.executable, str(script)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run
