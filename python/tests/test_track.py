"""memwarden.track and memwarden.budget, in a profiled process and in a plain one."""

import subprocess
import sys
import textwrap

import pytest

import memwarden

MIB = 1 << 20


def test_a_blocks_heap_peak_top_line_and_leak_under_the_profiler(run_profiled):
    figures = run_profiled(
        """
        import json, numpy as np, memwarden
        keep = []
        with memwarden.track("fit") as t:
            tmp = np.ones(40 * 2**20 // 8)   # @tmp
            del tmp
            keep.append(np.ones(10 * 2**20 // 8))
        print(json.dumps({"peak": t.peak_heap_bytes, "left": t.leaked_bytes,
                          "rss": t.peak_rss_bytes, "lines": [(l.line, l.allocated_bytes) for l in t.top_lines],
                          "sampled": t.sampled, "notes": t.notes}))
        """
    )
    assert 39 * MIB <= figures["peak"] <= 52 * MIB, figures  # a sampled estimate
    assert 9 * MIB <= figures["left"] <= 12 * MIB, figures
    assert figures["rss"] > 40 * MIB
    assert figures["lines"] and figures["lines"][0][0] == 5, "the 40 MiB line first"
    assert figures["sampled"] is True


def test_nested_blocks_are_each_right(run_profiled):
    figures = run_profiled(
        """
        import json, numpy as np, memwarden
        with memwarden.track("outer") as outer:
            a = np.ones(60 * 2**20 // 8); del a
            with memwarden.track("inner") as inner:
                b = np.ones(20 * 2**20 // 8); del b
            c = np.ones(5 * 2**20 // 8)
        print(json.dumps([outer.peak_heap_bytes, inner.peak_heap_bytes]))
        """,
        "--profile=exact",
    )
    outer, inner = figures
    assert 60 * MIB <= outer < 64 * MIB, figures
    assert 20 * MIB <= inner < 22 * MIB, figures


def test_a_plain_process_gets_its_resident_peak_and_says_why_there_are_no_lines(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, memwarden
            with memwarden.track() as outer:
                with memwarden.track() as t:
                    x = bytearray(80 * 2**20)
                    del x
            print(json.dumps([t.peak_rss_bytes, t.peak_rss_exact, outer.peak_rss_bytes, t.peak_heap_bytes, t.notes]))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rss, exact, outer, heap, notes = __import__("json").loads(done.stdout)
    assert exact and rss > 80 * MIB and outer >= rss, (rss, outer)
    assert heap is None and any("memwarden run --profile" in n for n in notes), notes


def test_under_memwarden_run_the_high_water_mark_is_left_to_the_runner(run_profiled, tmp_path):
    figures = run_profiled(
        """
        import json, memwarden
        big = bytearray(200 * 2**20); del big
        with memwarden.track() as t:
            x = bytearray(30 * 2**20)
        print(json.dumps([t.peak_rss_bytes, t.peak_rss_exact, t.notes]))
        """,
        "--json",
        str(tmp_path / "r.json"),
    )
    rss, exact, notes = figures
    assert not exact and any("lower bound" in n for n in notes)
    report = __import__("json").loads((tmp_path / "r.json").read_text())
    assert report["peak"]["rss_bytes"] > 200 * MIB, "the runner's peak is the process's true one"


def test_a_budget_raises_with_the_figures_and_a_bad_one_fails_when_decorating(run_profiled):
    figures = run_profiled(
        """
        import json, numpy as np, memwarden

        @memwarden.budget("10 MiB")
        def predict():
            return float(np.ones(30 * 2**20 // 8).sum())

        try:
            predict()
            print(json.dumps(None))
        except memwarden.MemoryBudgetExceeded as e:
            print(json.dumps([str(e), e.track.peak_heap_bytes]))
        """
    )
    message, peak = figures
    assert peak >= 29 * MIB and "budget 10.00 MiB" in message and "predict" in message, figures
    with pytest.raises(ValueError):
        memwarden.budget("ten megs")
    with pytest.raises(ValueError):
        memwarden.track(budget="2 GiBs")


def test_a_block_is_recorded_in_the_ledger_under_its_model_version_and_stage(tmp_path, memwarden_bin, monkeypatch):
    import json

    monkeypatch.setenv("MEMWARDEN_HOME", str(tmp_path / "home"))
    ledger = str(tmp_path / "ledger.sqlite")
    with memwarden.track("fit", model="fraud", version="3", stage="eval", tags={"data": "2026-11"}, ledger=ledger) as t:
        x = bytearray(30 * MIB)
    del x
    assert t.recorded and "recorded fraud@3 (eval)" in t.recorded, t.recorded
    history = subprocess.run(
        [memwarden_bin, "--ledger", ledger, "history", "fraud", "--json"], capture_output=True, text=True
    )
    assert history.returncode == 0, history.stderr
    rows = json.loads(history.stdout)
    rows = rows if isinstance(rows, list) else rows.get("rows", rows)
    assert any(r["version"] == "3" and r["stage"] == "eval" and r["max_peak_rss_bytes"] >= 30 * MIB for r in rows), rows
    with pytest.raises(ValueError):
        memwarden.track(model="fraud")
    with pytest.raises(ValueError):
        memwarden.track(model="fraud", version="3", stage="deploy")


def test_a_blocks_lines_count_only_the_allocations_it_made(run_profiled):
    allocated, allocations = run_profiled(
        """
        import json, memwarden, numpy as np
        def make():
            return np.ones(2**20)
        t = memwarden.track()
        kept = []
        for i in range(8):  # one stack for all eight: five before the block, three in it
            if i == 5:
                t.__enter__()
            kept.append(make())
        t.__exit__(None, None, None)
        line = [l for l in t.top_lines if l.function == "make"][0]
        print(json.dumps([line.allocated_bytes, line.allocations]))
        """,
        "--profile=exact",
    )
    assert allocated >= 3 * 8 * MIB and allocated < 4 * 8 * MIB, allocated
    # At most two allocations an array (its data, numpy's shape and strides); the eight
    # arrays of the whole process would make at least eight.
    assert 3 <= allocations <= 6, f"the five arrays made before the block are not its own: {allocations}"
