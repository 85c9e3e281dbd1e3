"""simulations/method_table.py over small synthetic reports and bench files (a formatter:
what it must get right is which figure lands in which cell, and how it says what is absent)."""

import json

import pytest

from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import FEDERATED_METHODS, SimConfig
from tests.simulations.script_helpers import comparison, load_script, run_script, write_json

mt = load_script("method_table")

# Per method: (global acc, personalized acc, global-vs-full interval, personalized-vs-full).
FIGURES = {
    "bottleneck": (0.952, 0.956, (0.002, -0.015, 0.022), (0.007, -0.009, 0.025)),
    "lora": (0.930, 0.941, (-0.019, -0.035, -0.004), (-0.008, -0.020, 0.006)),
    "ia3": (0.900, 0.930, (-0.049, -0.080, -0.020), (-0.019, -0.040, 0.001)),
    "bitfit": (0.910, 0.935, (-0.039, -0.060, -0.018), (-0.014, -0.030, 0.002)),
    "prefix": (0.700, 0.850, (-0.249, -0.300, -0.200), (-0.099, -0.150, -0.050)),
    "prompt": (0.600, 0.820, (-0.349, -0.400, -0.300), (-0.129, -0.180, -0.080)),
}
UPLOAD = {"bottleneck": 241597.0, "lora": 156900.0, "ia3": 85000.0}


def report(method: str, **config) -> dict:
    g, p, gi, pi = FIGURES[method]
    return {
        "adapter": {"method": method, "trainable_params": 1000, "fraction_of_base": 1000 / 22.5e6},
        "config": SimConfig(dataset="bbc", method=method).to_dict() | config,
        "final": {
            "global_accuracy": g,
            "personalized_accuracy": p,
            "full_model_fedavg_accuracy": 0.9492,
        },
        "comparisons": {
            "global_vs_full_model_fedavg": comparison(*gi),
            "personalized_vs_full_model_fedavg": comparison(*pi),
        },
        "communication": {
            "upload_bytes_per_client_round": UPLOAD.get(method, 50000.0),
            "full_model_bytes_per_client_round": 90291579,
        },
    }


def bench(per_method_export: bool) -> dict:
    """bench.json as committed before issue #15 (core: bottleneck and LoRA only; export:
    only the bottleneck's top-level figures), or with per-method export entries."""
    export = {
        "seq128": {"overhead_pct": 0.37, "merged_lora_overhead_pct": -3.37},
        "seq32": {"overhead_pct": 5.34, "merged_lora_overhead_pct": -1.77},
    }
    if per_method_export:
        export["methods"] = {
            "lora": {"seq128": {"overhead_pct": 8.5}, "seq32": {"overhead_pct": 12.25}},
            "prompt": {"seq128": {"overhead_pct": 9.0}, "seq32": {"overhead_pct": 31.0}},
        }
    core = {m: {"train_step_ms": ms} for m, ms in (("bottleneck", 217.6), ("lora", 254.0))}
    return {
        "machine": {"cpu": "test cpu", "cores": 2, "date": "2026-12-02"},
        "core": {"int8": core},
        "export": {"int8": export},
    }


@pytest.fixture
def inputs(tmp_path):
    paths = {m: write_json(tmp_path / m / "report.json", report(m)) for m in FEDERATED_METHODS}
    return paths, write_json(tmp_path / "bench.json", bench(per_method_export=True))


def _args(paths, bench_path, out):
    args = ["--bench", str(bench_path), "--out", str(out)]
    for m, p in paths.items():
        args += ["--report", f"{m}={p}"]
    return args


def _cells(md: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r] for r in rows[1:]}


def test_rows_hold_each_runs_figures_and_intervals(inputs, tmp_path, capsys):
    paths, bench_path = inputs
    mt.main(_args(paths, bench_path, tmp_path / "out"))
    md = (tmp_path / "out" / "table.md").read_text()
    assert md in capsys.readouterr().out  # printed as written
    cells = _cells(md)
    assert list(cells) == list(FEDERATED_METHODS)
    b = cells["bottleneck"]
    assert b[2] == "241.6 kB"
    assert (b[3], b[4]) == ("0.952", "+0.002 [-0.015, +0.022]")  # spans 0: no star
    assert (b[5], b[6]) == ("0.956", "+0.007 [-0.009, +0.025]")
    assert cells["lora"][4] == "-0.019 [-0.035, -0.004] *"  # excludes 0
    assert cells["prefix"][6] == "-0.099 [-0.150, -0.050] *"
    data = json.loads((tmp_path / "out" / "table.json").read_text())
    row = {r["method"]: r for r in data["rows"]}["ia3"]
    assert row["global_vs_full_model_fedavg"]["ci95_high"] == -0.020
    assert row["upload_bytes_per_client_round"] == 85000.0


def test_figures_the_bench_has_not_measured_read_not_measured(inputs, tmp_path):
    paths, bench_path = inputs
    mt.main(_args(paths, bench_path, tmp_path / "out"))
    cells = _cells((tmp_path / "out" / "table.md").read_text())
    assert cells["lora"][7:] == ["254 ms", "+8.5% / +12.2%"]
    assert cells["prompt"][7:] == ["not measured", "+9.0% / +31.0%"]
    for m in ("ia3", "bitfit", "prefix"):
        assert cells[m][7:] == ["not measured", "not measured"]
    row = json.loads((tmp_path / "out" / "table.json").read_text())["rows"][2]
    assert row["method"] == "ia3" and row["train_step_ms"] is None


def test_a_bench_from_before_per_method_export_gives_the_bottleneck_its_figures(inputs, tmp_path):
    paths, _ = inputs
    old = write_json(tmp_path / "old-bench.json", bench(per_method_export=False))
    mt.main(_args(paths, old, tmp_path / "out"))
    md = (tmp_path / "out" / "table.md").read_text()
    cells = _cells(md)
    # the top-level export figures are the bottleneck graph's (same shape as the runs')
    assert cells["bottleneck"][7:] == ["218 ms", "+0.4% / +5.3%"]
    assert cells["lora"][8] == "not measured"
    assert "LoRA merged into the base weights instead: -3.4% / -1.8%" in md


def test_a_missing_report_is_one_line_naming_it(inputs, tmp_path):
    paths, bench_path = inputs
    paths["ia3"].unlink()
    res = run_script("method_table", *_args(paths, bench_path, tmp_path / "out"))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing inputs: ia3 report" in lines[0]
    assert str(paths["ia3"]) in lines[0] and "lora report" not in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_missing_bench_file_is_named_too(inputs, tmp_path):
    paths, _ = inputs
    res = run_script("method_table", *_args(paths, tmp_path / "nope.json", tmp_path / "out"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "missing inputs: bench" in res.stderr


def test_a_report_without_baselines_or_of_another_method_is_refused(inputs, tmp_path):
    paths, bench_path = inputs
    no_baselines = report("bitfit")
    del no_baselines["comparisons"]
    write_json(paths["bitfit"], no_baselines)
    with pytest.raises(FedAdaptError, match=r"no comparisons\.global_vs_full_model_fedavg"):
        mt.main(_args(paths, bench_path, tmp_path / "out"))
    write_json(paths["bitfit"], report("ia3"))
    with pytest.raises(FedAdaptError, match="is a 'ia3' run, not 'bitfit'"):
        mt.main(_args(paths, bench_path, tmp_path / "out"))


def test_config_differences_beyond_the_method_are_noted(inputs, tmp_path):
    paths, bench_path = inputs
    write_json(paths["prompt"], report("prompt", rounds=5))
    mt.main(_args(paths, bench_path, tmp_path / "out"))
    md = (tmp_path / "out" / "table.md").read_text()
    assert "Config differs in rounds" in md and "'prompt': 5" in md
    assert "Config differs in method" not in md  # the one difference the table is about


def test_bench_figures_name_the_machine_of_their_own_section(inputs, tmp_path):
    paths, _ = inputs
    b = bench(per_method_export=True)
    b["machine"] = {"cpu": "latest-run cpu", "cores": 2, "date": "2026-12-02T10:55"}
    b["machines"] = {"core": {"cpu": "core cpu", "cores": 2, "date": "2026-12-02T08:15"}}
    mt.main(_args(paths, write_json(tmp_path / "b.json", b), tmp_path / "out"))
    md = (tmp_path / "out" / "table.md").read_text()
    assert "core (core cpu, 2 cores, 2026-12-02T08:15)" in md
    # export has no entry of its own in `machines`: the file's `machine` stands in
    assert "export (latest-run cpu, 2 cores, 2026-12-02T10:55)" in md


def test_a_config_key_an_older_report_lacks_is_named_not_recorded(inputs, tmp_path):
    paths, bench_path = inputs
    old = report("bottleneck")
    del old["config"]["ditto_lambda"]
    write_json(paths["bottleneck"], old)
    mt.main(_args(paths, bench_path, tmp_path / "out"))
    diff = json.loads((tmp_path / "out" / "table.json").read_text())["config_differences"]
    assert diff["ditto_lambda"]["bottleneck"] == "not recorded"
    assert diff["ditto_lambda"]["lora"] == 0.1
