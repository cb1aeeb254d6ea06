"""memwarden.census and memwarden.Report."""

import json

import memwarden


def test_census_counts_the_untracked_numbers_a_list_holds():
    numbers = [float(i) + 0.5 for i in range(300_000)]
    result = memwarden.census(top=5)
    floats = next(r for r in result.rows if r.type_name == "float")
    assert floats.count >= 300_000
    assert floats.bytes >= 300_000 * 24
    assert floats.array_bytes == floats.count * 8
    assert result.complete
    assert "float" in str(result)
    del numbers


def test_census_stops_at_its_time_limit_and_says_so():
    keep = [[i] for i in range(200_000)]
    result = memwarden.census(time_limit_s=0.0)
    assert not result.complete and "lower bound" in str(result)
    del keep


def test_a_capture_directory_loads_as_memwarden_report_capture_dir_renders_it(run_profiled, tmp_path):
    caps = tmp_path / "caps"
    run_profiled(
        """
        x = bytearray(50 * 2**20)
        print(len(x))
        """,
        "--capture-dir",
        str(caps),
    )
    report = memwarden.Report.load(caps)
    assert report.profile is not None and report.profile.peak_bytes >= 50 << 20
    # Every figure made from the profile is the analysis's, not the kept report's.
    assert report.peak.heap_bytes == report.profile.peak_bytes
    assert any("bytearray(50 * 2**20)" in s.text for s in report.profile.source_lines)


def test_a_report_reads_typed_with_names_decoded(run_profiled, tmp_path, memwarden_bin):
    out = tmp_path / "r.json"
    run_profiled(
        """
        import json
        x = bytearray(50 * 2**20)
        print(json.dumps(1))
        """,
        "--json",
        str(out),
    )
    report = memwarden.Report.load(out)
    assert report.peak.rss_bytes > 50 << 20
    assert report.profile is not None and report.profile.at_peak
    frame = report.profile.at_peak[0].stack[0]
    assert frame.file.endswith("script.py") and frame.line == 3
    assert frame.file_bytes() == frame.file.encode()
    assert memwarden.report.decode("caf\\xe9.py") == b"caf\xe9.py"
    assert isinstance(report.advice, list)


def test_something_that_is_no_report_is_refused(tmp_path):
    bogus = tmp_path / "x.json"
    bogus.write_text(json.dumps({"hello": 1}))
    try:
        memwarden.Report.load(bogus)
    except ValueError as e:
        assert "not a memwarden run report" in str(e)
    else:
        raise AssertionError("accepted")
