"""Reading a fleet's files for the console: a missing, torn or huge file is one line that
names it by its role (never the machine's path), and a file is parsed again only when it
changed."""

from __future__ import annotations

import os

from fedadapt.server.console.readers import FileCache, number, reason_counts
from fedadapt.server.console.runs import find_runs, read_run
from fedadapt.server.report import write_metrics_csv
from tests.server.console.helpers import copy_recorded_run, recorded_rounds


def test_missing_torn_and_huge_files_are_one_line_each(tmp_path):
    cache = FileCache(max_bytes=1024)
    assert cache.json(tmp_path / "no.json", "the thing") == (None, "the thing is missing")
    (tmp_path / "torn.json").write_text('{"a": [1, 2')
    value, why = cache.json(tmp_path / "torn.json", "x.json")
    assert value is None and why == "x.json is torn or not JSON (a write cut short?); it is skipped"
    (tmp_path / "big.json").write_text("[" + "1," * 1000 + "1]")
    value, why = cache.json(tmp_path / "big.json", "big.json")
    assert value is None and why.startswith("big.json is too large to show")
    (tmp_path / "r.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert cache.jsonl(tmp_path / "r.jsonl", "r") == (
        [{"a": 1}, {"a": 2}],
        "r: 1 torn line skipped",
    )


def test_a_torn_last_csv_line_is_dropped_even_when_its_cells_count_right(tmp_path):
    rows = recorded_rounds()[:3]
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, rows)
    whole = path.read_text()
    path.write_text(whole[:-2])  # the last cell cut: still as many commas, no newline
    got, why = FileCache().csv(path, "metrics.csv")
    assert [r["round"] for r in got] == ["1", "2"]
    assert why == "metrics.csv: 1 torn line skipped (a write cut short?)"
    path.write_text(whole)
    got, why = FileCache().csv(path, "metrics.csv")
    assert len(got) == 3 and why is None


def test_a_file_is_read_again_only_when_it_changed(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"v": 1}')
    cache = FileCache()
    assert cache.json(path, "a")[0] == {"v": 1}
    st = path.stat()
    path.write_text('{"v": 2}')  # the same size and mtime: the cached value stands
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.json(path, "a")[0] == {"v": 1}
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.json(path, "a")[0] == {"v": 2}


def test_cells_and_rejection_reasons():
    assert number("3") == 3 and number("0.5") == 0.5 and number("") is None
    assert number("nan") is None and number("inf") is None and number("x") is None
    assert reason_counts("norm-bound=2 malformed=1") == {"norm-bound": 2, "malformed": 1}
    assert reason_counts("{}") == {} and reason_counts(None) == {}


def test_runs_are_found_to_a_depth_of_two_and_read_round_by_round(tmp_path):
    copy_recorded_run(tmp_path / "results" / "quick")
    copy_recorded_run(tmp_path / "results" / "attacks" / "clean")
    (tmp_path / "results" / "attacks" / "clean" / "checkpoints").mkdir()
    found = find_runs(tmp_path / "results")
    assert list(found) == ["quick", "attacks/clean"]
    assert list(find_runs(found["quick"])) == ["."]
    run = read_run("quick", found["quick"], FileCache())
    rounds = recorded_rounds()
    assert run["state"] == "done" and run["rounds_done"] == run["rounds_total"] == len(rounds)
    assert run["rounds"]["global_accuracy"] == [r["global_accuracy"] for r in rounds]
    assert run["rounds"]["upload_bytes"] == [r["upload_bytes"] for r in rounds]
    assert {c["name"] for c in run["comparisons"]} >= {"personalized_vs_local_only"}
    assert run["notices"] == []


def test_rejected_replies_are_counted_by_reason_per_round(tmp_path):
    rows = [dict(r) for r in recorded_rounds()[:3]]
    rows[1]["rejected"] = {"norm-bound": 2, "malformed": 1}
    rows[2]["rejected"] = {"malformed": 4}
    (tmp_path / "run").mkdir()
    write_metrics_csv(tmp_path / "run" / "metrics.csv", rows)
    run = read_run("run", tmp_path / "run", FileCache())
    assert run["rounds"]["rejected"] == {"malformed": [0, 1, 4], "norm-bound": [0, 2, 0]}
    assert run["rounds"]["rejected_total"] == [0, 3, 4] and run["state"] == "running"
