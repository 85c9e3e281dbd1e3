"""simulations/personalization_table.py: one row per personalization mode on rt-full, the
fedrep row read from the fedrep-head-bias run's personal stack."""

import json

import pytest

from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig
from tests.simulations.script_helpers import (
    SIMULATIONS,
    comparison,
    load_script,
    run_script,
    write_json,
)

pt = load_script("personalization_table")


def report(mode: str, personalized: float, stack: float | None = None, **config) -> dict:
    cfg = SimConfig.load(SIMULATIONS / "rt-full.toml", personalization=mode, **config)
    final = {
        "global_accuracy": 0.786,
        "personalized_accuracy": personalized,
        "full_model_fedavg_accuracy": 0.812,
        "full_model_fedavg_personalized_accuracy": 0.831,
    }
    comparisons = {
        "personalized_vs_full_model_fedavg_personalized": comparison(
            personalized - 0.831, personalized - 0.841, personalized - 0.821
        ),
        "global_vs_full_model_fedavg": comparison(-0.026, -0.036, -0.016),
    }
    if stack is not None:
        final["personal_stack_accuracy"] = stack
        comparisons["personal_stack_vs_full_model_fedavg_personalized"] = comparison(
            stack - 0.831, stack - 0.841, stack - 0.821
        )
    return {"config": cfg.to_dict(), "final": final, "comparisons": comparisons}


@pytest.fixture
def paths(tmp_path):
    return {
        "head-bias": write_json(tmp_path / "hb.json", report("head-bias", 0.823)),
        "fedrep-head-bias": write_json(
            tmp_path / "frhb.json",
            report("fedrep-head-bias", 0.850, stack=0.845, full_model_from="x"),
        ),
        "ditto": write_json(
            tmp_path / "ditto.json", report("ditto", 0.800, ditto_lambda=0.1, full_model_from="x")
        ),
        "head-bias-rf8": write_json(
            tmp_path / "rf8.json",
            report("head-bias", 0.835, reduction_factor=8, full_model_from="x"),
        ),
        "head-bias-rf4": write_json(
            tmp_path / "rf4.json",
            report("head-bias", 0.840, reduction_factor=4, full_model_from="x"),
        ),
    }


def _args(paths, out) -> list[str]:
    return ["--out", str(out), *[a for m, p in paths.items() for a in ("--report", f"{m}={p}")]]


def test_the_fedrep_row_is_the_fedrep_head_bias_runs_personal_stack(paths, tmp_path):
    pt.main(_args(paths, tmp_path / "out"))
    rows = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    assert [(r["row"], r["personalization"]) for r in rows] == [
        ("head-bias", "head-bias"),
        ("fedrep", "fedrep"),
        ("fedrep-head-bias", "fedrep-head-bias"),
        ("ditto", "ditto"),
        ("head-bias-rf8", "head-bias"),
        ("head-bias-rf4", "head-bias"),
    ]
    fedrep, both = rows[1], rows[2]
    assert fedrep["personalized_accuracy"] == 0.845 and both["personalized_accuracy"] == 0.850
    goal = "personalized_vs_full_model_fedavg_personalized"
    assert fedrep[goal]["mean_diff"] == pytest.approx(0.845 - 0.831)
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| `fedrep` | 0.786 | 0.845 | +0.014 [+0.004, +0.024] * |" in md
    assert "| `ditto` | 0.786 | 0.800 | -0.031 [-0.041, -0.021] * |" in md
    assert "| `head-bias`, reduction_factor 8 | 0.786 | 0.835 | +0.004 [-0.006, +0.014] |" in md
    # the one key the rf8 row's global training differs in is named in the notes
    assert "- Config differs in reduction_factor: {" in md


def test_a_run_of_another_mode_is_refused_by_name(paths, tmp_path):
    ditto = paths["ditto"]
    paths["ditto"] = paths["head-bias"]
    with pytest.raises(FedAdaptError, match=r"hb\.json is a 'head-bias' run, not 'ditto'"):
        pt.main(_args(paths, tmp_path / "out"))
    # the rf8 row must be a head-bias run, although its name is not a mode
    paths["ditto"] = paths["head-bias-rf8"] = ditto
    with pytest.raises(FedAdaptError, match=r"ditto\.json is a 'ditto' run, not 'head-bias'"):
        pt.main(_args(paths, tmp_path / "out"))


def test_a_missing_report_is_one_line_naming_it(paths, tmp_path):
    paths["ditto"] = tmp_path / "nowhere.json"
    res = run_script("personalization_table", *_args(paths, tmp_path / "out"))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"personalization_table: missing inputs: the ditto report ({tmp_path / 'nowhere.json'})"
    ]


def test_a_run_not_made_yet_is_left_out_by_name_and_its_row_says_so(paths, tmp_path):
    del paths["ditto"]
    pt.main([*_args(paths, tmp_path / "out"), "--without", "ditto"])
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| `ditto` | not run | not run | not run | not run |" in md
    assert "| `fedrep` | 0.786 | 0.845 |" in md
    with pytest.raises(
        FedAdaptError,
        match="--without takes fedrep-head-bias or ditto or head-bias-rf8 or head-bias-rf4, not "
        "head-bias",
    ):
        pt.main([*_args(paths, tmp_path / "out"), "--without", "head-bias"])
