"""Taking the full-model FedAvg baseline from another run's report: only when it is this run's.

The check reads the source's recorded config, so these tests write small real reports; one
test takes the recorded rt-full report through each rt-full-* config as a run would.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedadapt.base.checkpoint import BASE_MODEL_NAME
from fedadapt.errors import FedAdaptError
from fedadapt.server.full_model_reuse import check_clients, load, merge, resolved
from fedadapt.simconfig import SimConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCE = SimConfig(num_clients=3, clients_per_round=2, rounds=2, personalization="head-bias")


def _write_report(folder: Path, cfg: SimConfig = SOURCE, clients=(0, 1, 2), **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    per_client = {
        str(c): {
            "global_accuracy": 0.5,
            "full_model_accuracy": 0.7 + c / 100,
            "full_model_personalized_accuracy": 0.8 + c / 100,
        }
        for c in clients
    }
    report = {
        "config": cfg.to_dict(),
        "base_model": {"name": BASE_MODEL_NAME},
        "per_client": per_client,
        "full_model_fedavg_rounds": [{"round": 1, "upload_bytes": 10, "download_bytes": 10}],
        **extra,
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def _asking(source: Path, **changes) -> SimConfig:
    return dataclasses.replace(SOURCE, full_model_from=str(source), **changes)


def test_a_run_with_another_adapter_method_takes_the_baseline(tmp_path) -> None:
    src = _write_report(tmp_path / "src")
    cfg = _asking(src, personalization="fedrep", method="lora", strategy="fedadam")
    reused = load(cfg)
    assert reused.report == src / "report.json"
    assert reused.per_client[2] == {
        "full_model_accuracy": 0.7 + 2 / 100,
        "full_model_personalized_accuracy": 0.8 + 2 / 100,
    }
    assert reused.rounds[0]["upload_bytes"] == 10
    per_client = {0: {"global_accuracy": 0.6}, 1: {}, 2: {}}
    check_clients(reused, per_client)
    merge(per_client, reused)
    assert per_client[0] == {
        "global_accuracy": 0.6,
        "full_model_accuracy": 0.7,
        "full_model_personalized_accuracy": 0.8,
    }


@pytest.mark.parametrize(
    ("key", "value", "there"),
    [
        ("seed", 1, "0"),
        ("rounds", 3, "2"),
        ("num_clients", 4, "3"),
        ("full_model_lr", 1e-3, "0.0001"),
    ],
)
def test_another_seed_rounds_or_client_count_is_refused(tmp_path, key, value, there) -> None:
    cfg = _asking(_write_report(tmp_path / "src"), **{key: value})
    with pytest.raises(FedAdaptError) as e:
        load(cfg)
    assert str(e.value) == (
        f"full_model_from: {tmp_path / 'src' / 'report.json'} is not this run's full-model "
        f"baseline: {key} = {there} there, {value!r} here"
    )


def test_a_full_model_personalized_another_way_is_refused(tmp_path) -> None:
    src = _write_report(tmp_path / "src")
    with pytest.raises(FedAdaptError, match="full-model personalization = 'head-bias' there, "):
        load(_asking(src, personalization="finetune"))
    with pytest.raises(FedAdaptError, match=r"head_bias_l2 = 0\.1 there, 0\.5 here"):
        load(_asking(src, personalization="ditto", head_bias_l2=0.5))


def test_other_clients_are_refused(tmp_path) -> None:
    reused = load(_asking(_write_report(tmp_path / "src", clients=(0, 1))))
    with pytest.raises(FedAdaptError) as e:
        check_clients(reused, [0, 2])
    assert "has the full-model baseline of other clients (1 of this run's missing, e.g. [2]; " in (
        str(e.value)
    )
    assert str(e.value).endswith("1 not in this run, e.g. [1])")


def test_a_missing_or_baseline_less_source_is_one_line(tmp_path) -> None:
    with pytest.raises(FedAdaptError, match=r"nowhere/report\.json does not exist \(run that"):
        load(_asking(tmp_path / "nowhere"))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "report.json").write_text("{")
    with pytest.raises(FedAdaptError, match=r"full_model_from: cannot read .*torn/report\.json"):
        load(_asking(tmp_path / "torn"))
    none = _write_report(tmp_path / "none", clients=())
    with pytest.raises(FedAdaptError, match="holds no per-client full-model accuracies"):
        load(_asking(none))
    other = _write_report(tmp_path / "other", base_model={"name": "bert-base-uncased"})
    with pytest.raises(FedAdaptError, match="base model = 'bert-base-uncased' there"):
        load(_asking(other))


def test_the_source_is_resolved_and_checked_before_the_run_starts(tmp_path) -> None:
    _write_report(tmp_path / "runs" / "src")
    cfg = resolved(_asking(Path("runs/src")), cwd=tmp_path)
    assert cfg.full_model_from == str(tmp_path / "runs" / "src")
    with pytest.raises(FedAdaptError, match="seed = 0 there, 7 here"):
        resolved(_asking(Path("runs/src"), seed=7), cwd=tmp_path)
    # without its own baselines a run still takes (so still checks) the reused one
    with pytest.raises(FedAdaptError, match="seed = 0 there, 7 here"):
        resolved(_asking(Path("runs/src"), seed=7, baselines=False), cwd=tmp_path)
    # a run without the full-model baseline does not need the source
    off = _asking(Path("runs/elsewhere"), full_model_baseline=False)
    assert resolved(off, cwd=tmp_path).full_model_from == str(tmp_path / "runs" / "elsewhere")


RT_FULL_VARIANTS = [
    "rt-full-fedrep",
    "rt-full-ditto",
    "rt-full-fedrep-head-bias",
    "rt-full-rf8",
    "rt-full-rf4",
]


@pytest.mark.parametrize("name", RT_FULL_VARIANTS)
def test_each_rt_full_variant_config_takes_the_recorded_rt_full_baseline(name) -> None:
    cfg = resolved(SimConfig.load(ROOT / "simulations" / f"{name}.toml"), cwd=ROOT)
    reused = load(cfg)
    assert len(reused.per_client) == 338
    assert len(reused.rounds) == 30
    rt_full = SimConfig.load(ROOT / "simulations" / "rt-full.toml")
    differing = {k for k, v in cfg.to_dict().items() if v != getattr(rt_full, k)}
    # evaluate_sample only thins the per-round evaluation (the final one covers every client);
    # the adapter's width changes the adapter runs, never the full-model baseline
    allowed = {"personalization", "ditto_lambda", "evaluate_sample", "reduction_factor"}
    assert differing - {"out", "full_model_from"} <= allowed


def _simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedadapt", "simulate", "--config", "simulations/ci.toml", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        check=False,
    )


def test_a_mismatched_source_is_refused_before_the_run_starts(tmp_path) -> None:
    ci = SimConfig.load(ROOT / "simulations" / "ci.toml")
    src = _write_report(tmp_path / "src", dataclasses.replace(ci, seed=1), clients=range(4))
    res = _simulate("--out", str(tmp_path / "run"), "--set", f"full_model_from={src}")
    assert res.returncode != 0
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"full_model_from: {src / 'report.json'} is not this run's full-model baseline: "
            "seed = 1 there, 0 here"
        )
    )
    assert not (tmp_path / "run" / "report.json").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_a_ditto_run_takes_the_full_model_baseline_instead_of_training_it(tmp_path) -> None:
    """ci.toml in Ditto mode on Flower's Simulation Engine without its own baselines, its
    full-model figures read from another run's report: no full-model round runs, and the
    comparisons use those figures."""
    ci = SimConfig.load(ROOT / "simulations" / "ci.toml")
    src = _write_report(tmp_path / "src", ci, clients=range(4))
    out = tmp_path / "run"
    # --no-baselines: the reused figures cost nothing, so they come even without this run's
    # own baselines (which would train every client locally at the end)
    res = _simulate(
        "--out", str(out), "--set", f"full_model_from={src}", "--set", "personalization=ditto",
        "--no-baselines",
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"the full-model FedAvg baseline is taken from {src / 'report.json'}" in res.stdout
    assert "[full-model FedAvg] round" not in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["personalization"] == "ditto"
    assert report["final"]["local_only_accuracy"] is None  # this run's own baselines skipped
    assert report["per_client"]["3"]["full_model_personalized_accuracy"] == 0.8 + 3 / 100
    assert report["full_model_fedavg_rounds"][0]["upload_bytes"] == 10
    paired = report["comparisons"]["personalized_vs_full_model_fedavg_personalized"]
    assert paired["clients"] == 4
    mean = sum(
        m["personalized_accuracy"] - m["full_model_personalized_accuracy"]
        for m in report["per_client"].values()
    )
    assert paired["mean_diff"] == pytest.approx(mean / 4)
