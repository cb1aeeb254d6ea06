"""The %%memwarden cell magic, through IPython itself."""

import pytest


def test_the_magic_reports_a_cells_peaks_and_why_there_are_no_lines():
    pytest.importorskip("IPython")
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    shown = []
    import IPython.display as display

    original = display.display
    display.display = lambda obj, *a, **k: shown.append(obj)
    try:
        ip.run_line_magic("load_ext", "memwarden")
        ip.run_cell_magic("memwarden", "load", "import numpy as np\nx = np.ones(40 * 2**20 // 8)\n")
        html = shown[-1].data
        ip.run_cell_magic("memwarden", "--no-html", "y = 1\n")
    finally:
        display.display = original
    track = ip.user_ns["_memwarden"]
    assert ip.user_ns["x"].nbytes == 40 << 20, "the cell ran in the user's namespace"
    assert track.peak_rss_bytes > 40 << 20
    assert "process peak RSS" in html
    assert "memwarden run --profile" in html or "memwarden kernel install" in html
    # The cell's page comes anyway, with the figures there are, in a sandboxed frame.
    assert '<iframe sandbox="allow-scripts"' in html and "srcdoc=" in html
    assert ip.user_ns["_memwarden_report"].peak.rss_bytes == track.peak_rss_bytes
    assert "<iframe" not in shown[-1].data and "process peak RSS" in shown[-1].data


def test_a_memwarden_kernel_runs_under_the_profiler_and_shows_lines(tmp_path, monkeypatch):
    jupyter_client = pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    from memwarden import kernel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    kernel.install(user=False, prefix=str(tmp_path / "prefix"))
    manager = jupyter_client.KernelManager(kernel_name="memwarden")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        client.execute_interactive("%load_ext memwarden", timeout=60)
        outputs = []
        reply = client.execute_interactive(
            # A cache a function fills and nothing empties: the advice says to release it,
            # having read the cell's own lines (a cell is no file on disk).
            "%%memwarden fit\nimport numpy as np\nCACHE = []\ndef load(i):\n    a = np.ones(2**21)\n"
            "    CACHE.append(a)\n    return a.sum()\ntotal = sum(load(i) for i in range(10))\n",
            user_expressions={
                "peak": "_memwarden.peak_heap_bytes",
                "line": "[l.allocated_bytes for l in _memwarden.top_lines if l.line == 4]",
                "advice": "[a.rule for a in _memwarden_report.advice]",
            },
            output_hook=outputs.append,
            timeout=60,
        )
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    found = reply["content"]["user_expressions"]
    assert found["peak"]["status"] == "ok", found
    assert int(found["peak"]["data"]["text/plain"]) >= 160 << 20
    allocated = eval(found["line"]["data"]["text/plain"])
    assert allocated and allocated[0] >= 160 << 20, f"the cell's fourth line allocated it: {found}"
    assert "release" in eval(found["advice"]["data"]["text/plain"]), f"the cell gets advice: {found}"
    shown = [m["content"]["data"]["text/html"] for m in outputs if m["msg_type"] == "display_data"]
    assert shown, outputs
    page = shown[-1]
    assert "<b>Advice</b>" in page and "saves about" in page, page[:2000]
    assert "srcdoc=" in page and "Memory by stack" in page.replace("&#x27;", "'"), "the full report, inline"
