"""The pytest plugin, on suites run by pytester in a fresh pytest process (the plugin
starts pytest again under the profiler, which an in-process run cannot show)."""

import os
import re
import subprocess
import sys
import tempfile

import pytest

SUITE = """
import numpy as np
import pytest

KEEP = []

@pytest.mark.limit_memory("100 MB")
def test_within():
    x = np.ones(30 * 2**20 // 8)
    assert x.sum() > 0

@pytest.mark.limit_memory("10 MB")
def test_over():
    x = np.ones(40 * 2**20 // 8)   # the big one
    assert x.sum() > 0

@pytest.mark.limit_leaks("1 MB")
def test_leaks():
    KEEP.append(np.ones(5 * 2**20 // 8))

@pytest.mark.limit_memory("1 MB")
def test_crashes():
    x = np.ones(20 * 2**20 // 8)
    raise ZeroDivisionError("the test's own failure")

@pytest.mark.parametrize("mib", [
    pytest.param(5, marks=pytest.mark.limit_memory("20 MB")),
    pytest.param(50, marks=pytest.mark.limit_memory("20 MB")),
])
def test_cases(mib):
    x = np.ones(mib * 2**20 // 8)
    assert x.sum() > 0
"""


def outcomes(result):
    return {
        line.split("::")[-1].split(" ")[0]: line.split(" ")[0]
        for line in result.outlines
        if "::" in line and line.split(" ")[0] in ("PASSED", "FAILED")
    }


def test_markers_limit_each_tests_own_allocations(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    seen = outcomes(result)
    assert seen == {
        "test_within": "PASSED",
        "test_over": "FAILED",
        "test_leaks": "FAILED",
        "test_crashes": "FAILED",
        "test_cases[5]": "PASSED",
        "test_cases[50]": "FAILED",
    }, result.stdout.str()
    text = result.stdout.str()
    peak = re.search(r"Test allocated ([\d.]+) MiB at its peak, over its limit of 10.00 MiB", text)
    assert peak and 39.5 <= float(peak.group(1)) <= 42, text
    assert "sampled estimate" in text and re.search(r" test_over: allocated (39|40|41)\.\d\d MiB", text), "the top line is named"
    # Sampled: what the test left is an estimate, and pytest's own frees count against it.
    left = re.search(r"Test left ([\d.]+) MiB allocated at its end", text)
    assert left and 3.5 <= float(left.group(1)) <= 6.5, text
    assert "ZeroDivisionError: the test's own failure" in text
    assert "over its limit of 1.00 MiB" not in text, "a crash is the crash, not a budget"


def test_the_table_and_a_default_limit(pytester):
    pytester.makepyfile(
        test_plain="""
        import numpy as np
        BIG = [np.ones(4 * 2**20 // 8)]
        def test_frees_more_than_it_allocates():
            BIG.clear()
        def test_small():
            assert np.ones(1000).sum() == 1000
        def test_big():
            assert np.ones(30 * 2**20 // 8).sum() > 0
        """
    )
    result = pytester.runpytest_subprocess("--memwarden", "--memwarden-limit", "20MiB", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    text = result.stdout.str()
    assert "memwarden: memory per test" in text and "test_plain.py::test_big" in text
    assert "-4.00 MiB" in text, "what a test freed shows as negative"


def test_xdist_workers_are_measured_too(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=4)
    assert re.search(r"Test allocated (39|40|41)\.\d\d MiB at its peak", result.stdout.str())


def test_without_the_profiler_the_limits_fall_back_to_tracemalloc(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("--memwarden-no-preload", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=4)
    text = result.stdout.str()
    assert "Measured with tracemalloc (--memwarden-no-preload" in text


def test_a_size_that_does_not_parse_is_a_usage_error(pytester):
    pytester.makepyfile(
        test_bad="""
        import pytest
        @pytest.mark.limit_memory("lots")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    assert "invalid memory size 'lots'" in result.stderr.str() + result.stdout.str()


TREE_SUITE = """
import multiprocessing as mp
import subprocess
import sys

import numpy as np
import pytest

def work(mib):
    return float(np.ones(mib * 2**20 // 8).sum())

@pytest.mark.limit_memory("30 MB")
def test_forked_pool():
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(work, [40, 40], chunksize=1)

@pytest.mark.limit_memory("30 MB")
def test_subprocess():
    subprocess.run([sys.executable, "-c", "import numpy as np; np.ones(40 * 2**20 // 8).sum()"], check=True)

@pytest.mark.limit_memory("30 MB")
def test_own_process_only():
    work(10)
"""


def test_tests_that_start_processes_are_measured_as_a_tree(pytester):
    pytester.makepyfile(test_tree=TREE_SUITE)
    result = pytester.runpytest_subprocess("--memwarden", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    # Both workers of the pool hold 40 MiB at once (a barrier-free pool may run them one
    # after the other, so at least one).
    pool = re.search(r"Test allocated ([\d.]+) MiB at its peak.*with (\d) process", text)
    assert pool and float(pool.group(1)) >= 40, text
    # The line to change is the workers' own, and the failure names it.
    assert re.search(r"with 2 processes it started\. Top lines: \S*test_tree\.py:9 work: allocated (8\d|79)\.", text), text
    assert re.search(r"test_subprocess.*\n?.*with 1 process it started", text), text
    own = [line for line in text.splitlines() if "test_tree.py::test_own_process_only" in line and "MiB" in line]
    assert own and "it started" not in own[0], own


def test_xdist_workers_measure_the_processes_their_tests_start(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_tree=TREE_SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "--memwarden", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    pool = re.search(r"([\d.]+) MiB .*test_tree.py::test_forked_pool .*with 2 processes it started", text)
    assert pool and float(pool.group(1)) >= 40, text
    assert re.search(r"test_tree.py::test_subprocess .*with 1 process it started", text), text


def test_baselines_learn_then_fail_only_beyond_the_noise(pytester, tmp_path, monkeypatch, memwarden_bin):
    pytester.makepyfile(
        test_base="""
        import os
        import numpy as np
        def test_grows():
            assert np.ones(int(os.environ.get("MIB", "20")) * 2**20 // 8).sum() > 0
        def test_steady():
            assert np.ones(2**20).sum() > 0
        """
    )
    ledger = str(tmp_path / "ledger.sqlite")
    monkeypatch.setenv("MEMWARDEN_HOME", str(tmp_path / "home"))
    args = ("--memwarden-baseline", "--memwarden-ledger", ledger, "--memwarden-model", "suite", "-p", "no:cacheprovider")
    for _ in range(3):
        learning = pytester.runpytest_subprocess(*args)
        learning.assert_outcomes(passed=2)
    assert "2 still learning theirs" in learning.stdout.str()
    assert re.search(r"recorded suite@\S+ \(test\) as 2 runs", learning.stdout.str()), learning.stdout.str()

    monkeypatch.setenv("MIB", "21")  # within 5% + noise
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=2)
    monkeypatch.setenv("MIB", "40")
    grown = pytester.runpytest_subprocess(*args)
    grown.assert_outcomes(passed=1, failed=1)
    text = grown.stdout.str()
    assert "grew beyond its baseline in the ledger: heap peak" in text and "REGRESSION" in text, text
    assert "test_base.py:4 test_grows" in text, "the top line is named"

    # An increase made on purpose: accepted, then the new figure is the baseline's start.
    pytester.runpytest_subprocess(*args, "--memwarden-accept-baseline").assert_outcomes(passed=2)
    again = pytester.runpytest_subprocess(*args)
    again.assert_outcomes(passed=2)
    assert "still learning" in again.stdout.str()

    history = subprocess.run([memwarden_bin, "history", "suite", "--ledger", ledger], capture_output=True, text=True)
    assert history.returncode == 0 and "test" in history.stdout, history.stdout + history.stderr
    # Each record has its test's process peak, the kernel's high-water mark, not a blank.
    rows = [line for line in history.stdout.splitlines() if " test " in line]
    assert rows and all(" 0 B " not in row for row in rows), history.stdout


def test_baselines_with_an_unreadable_ledger_say_so_and_keep_the_records(pytester, tmp_path, monkeypatch):
    pytester.makepyfile(test_one="def test_one():\n    assert [0] * 10\n")
    monkeypatch.setenv("MEMWARDEN_HOME", str(tmp_path / "home"))
    bad = tmp_path / "not-a-ledger.sqlite"
    bad.write_text("this is not a database")
    result = pytester.runpytest_subprocess("--memwarden-baseline", "--memwarden-ledger", str(bad), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert "not recorded:" in text and "kept in" in text, text


@pytest.mark.parametrize("launcher", ["memwarden run --profile", "memwarden pytest"])
def test_started_under_the_profiler_nothing_restarts(pytester, memwarden_bin, tmp_path, launcher):
    pytester.makepyfile(test_suite=SUITE)
    if launcher == "memwarden pytest":
        command = [memwarden_bin, "pytest"]
    else:
        command = [memwarden_bin, "run", "--quiet", "--profile", "--json", str(tmp_path / "run.json"), "--",
                   sys.executable, "-m", "pytest"]
    before = set(os.listdir(tempfile.gettempdir()))
    done = subprocess.run(
        [*command, "-p", "no:cacheprovider", "-rA"],
        cwd=pytester.path, capture_output=True, text=True,
        env={**os.environ, "MEMWARDEN_HOME": str(tmp_path / "home")},
    )
    text = done.stdout
    assert text.count("test session starts") == 1, text
    assert re.search(r"Test allocated (39|40|41)\.\d\d MiB at its peak, over its limit of 10.00 MiB", text), text
    assert "6 passed" not in text and "4 failed, 2 passed" in text, text
    left = {name for name in set(os.listdir(tempfile.gettempdir())) - before if name.startswith("memwarden-pytest-")}
    assert not left, f"the captures are removed at the end: {left}"


def test_when_the_profiler_cannot_be_preloaded_the_reason_is_given(pytester, memwarden_bin):
    pytester.makepyfile(test_suite=SUITE)
    done = subprocess.run(
        [memwarden_bin, "pytest", "-p", "no:cacheprovider"],
        cwd=pytester.path, capture_output=True, text=True,
        env={**os.environ, "MEMWARDEN_PRELOAD": "/nonexistent/libmemwarden_preload.so"},
    )
    assert "memwarden pytest: MEMWARDEN_PRELOAD names '/nonexistent/libmemwarden_preload.so', which is not a file" in done.stderr
    text = done.stdout
    assert "4 failed, 2 passed" in text, text
    assert "Measured with tracemalloc (MEMWARDEN_PRELOAD names" in text, "the real reason, not 'not installed'"
