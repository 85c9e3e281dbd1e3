from pathlib import Path

import pytest

from fedadapt.errors import FedAdaptError
from fedadapt.report_tables import (
    check_present,
    config_differences,
    interval,
    load_json,
    lookup,
    require,
    shown,
    size,
)


def test_check_present_names_every_missing_input_at_once(tmp_path):
    here = tmp_path / "a.json"
    here.write_text("{}")
    inputs = {"a": here, "b": tmp_path / "b.json", "c": tmp_path / "c.json"}
    with pytest.raises(FedAdaptError) as e:
        check_present(inputs)
    assert str(e.value) == f"missing inputs: b ({inputs['b']}), c ({inputs['c']})"


def test_load_json_refuses_what_is_not_a_json_object(tmp_path):
    bad, listed = tmp_path / "bad.json", tmp_path / "list.json"
    bad.write_text("{not json")
    listed.write_text("[1]")
    with pytest.raises(FedAdaptError, match=r"the report .*bad\.json is unreadable"):
        load_json(bad, "the report")
    with pytest.raises(FedAdaptError, match="is not a JSON object"):
        load_json(listed, "the report")
    with pytest.raises(FedAdaptError, match="missing the report"):
        load_json(tmp_path / "absent.json", "the report")


def test_lookup_and_require_follow_dotted_paths():
    data = {"a": {"b": {"c": 0.0}}, "x": 1}
    assert lookup(data, "a.b.c") == 0.0 and lookup(data, "a.z") is None
    assert lookup(data, "x.y") is None  # through a non-mapping
    with pytest.raises(FedAdaptError, match=r"^r.json has no a\.z \(run it\)$"):
        require(data, "a.z", "r.json", "run it")


def test_interval_stars_only_an_interval_that_excludes_zero():
    cmp = {"mean_diff": 0.01, "ci95_low": 0.0, "ci95_high": 0.02}
    assert interval(cmp) == "+0.010 [+0.000, +0.020]"  # touches 0: no claim
    assert interval(cmp | {"ci95_low": 0.001}) == "+0.010 [+0.001, +0.020] *"
    assert interval({"mean_diff": -0.03, "ci95_low": -0.05, "ci95_high": -0.01}).endswith(" *")
    assert interval(None) == "not in report"


def test_size_switches_to_megabytes_at_one_million():
    assert size(241597.0) == "241.6 kB"
    assert size(90291579) == "90.3 MB"
    assert size(None) == "not measured"


def test_config_differences_list_only_keys_that_differ_outside_ignore():
    reports = {
        "a": {"config": {"rounds": 20, "method": "lora", "seed": 0}},
        "b": {"config": {"rounds": 5, "method": "ia3", "seed": 0}},
    }
    got = config_differences(reports, frozenset({"method"}))
    assert got == {"rounds": {"a": 20, "b": 5}}


def test_shown_paths_are_relative_below_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown(tmp_path / "results" / "report.json") == "results/report.json"
    assert shown(Path("/elsewhere/report.json")) == "/elsewhere/report.json"
