"""`fedadapt simulate` end to end on Flower's Simulation Engine (Ray), with a tiny config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig

ROOT = Path(__file__).resolve().parents[3]
FINAL_KEYS = {
    "global_accuracy",
    "personalized_accuracy",
    "local_only_accuracy",
    "zero_shot_accuracy",
    "full_model_fedavg_accuracy",
    "local_majority_accuracy",
}
ROUND_KEYS = {
    "round",
    "clients",
    "upload_bytes",
    "download_bytes",
    "train_loss",
    "global_accuracy",
    "personalized_accuracy",
    "seconds",
}


def _simulate(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedadapt", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.integration
def test_simulate_writes_every_output(tmp_path):
    from fedadapt.updates.keys import keygen

    out, reg = tmp_path / "run", tmp_path / "registry"
    priv, _ = keygen(tmp_path / "keys")
    res = _simulate(
        "--config",
        "simulations/ci.toml",
        "--out",
        str(out),
        "--set",
        "publish_every=1",
        "--set",
        f"publish_registry='{reg}'",
        "--set",
        f"publish_key='{priv}'",
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[adapters] round 2/2" in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["final"]) >= FINAL_KEYS
    assert all(v is not None for v in report["final"].values())
    assert all(set(r) >= ROUND_KEYS for r in report["rounds"])
    assert {
        "personalized_vs_local_only",
        "personalized_vs_full_model_fedavg",
        "global_vs_full_model_fedavg",
    } <= set(report["comparisons"])
    comm = report["communication"]
    assert 0 < comm["upload_bytes_total"] < comm["full_model_fedavg_bytes_equivalent"] / 100
    assert report["adapter"]["fraction_of_base"] < 0.04
    assert (out / "metrics.csv").read_text().startswith("round,clients,")
    assert {p.name for p in (out / "plots").glob("*.png")} == {"accuracy.png", "upload_bytes.png"}
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "checkpoints" / "latest").exists()
    index = json.loads((reg / "index.json").read_text())  # published every round, signed
    assert [v["version"] for v in index["versions"]] == [1, 2]


@pytest.mark.slow
@pytest.mark.integration
def test_resumed_run_ends_with_the_same_global_adapter(tmp_path, uninterrupted_ci_run):
    ci, whole, part = ["--config", "simulations/ci.toml"], uninterrupted_ci_run, tmp_path / "part"
    first = _simulate(*ci, "--rounds", "2", "--out", str(part))  # with every baseline
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _simulate("--resume", str(part), "--rounds", "3")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming after round 2" in resumed.stdout
    assert "resuming the full-model baseline after round 2" in resumed.stdout
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(part / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
    report = json.loads((part / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert [r["round"] for r in report["full_model_fedavg_rounds"]] == [1, 2, 3]
    assert all(v is not None for v in report["final"].values())
    # resumed after its last round, a run keeps its final evaluation instead of repeating it
    again = _simulate("--resume", str(part))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "the final evaluation of round 3 is kept from the checkpoint" in again.stdout
    assert "[full-model FedAvg] round" not in again.stdout
    kept = json.loads((part / "report.json").read_text())["final"]
    adapter_side = ("global_accuracy", "personalized_accuracy", "local_only_accuracy")
    assert all(kept[k] == report["final"][k] for k in adapter_side)


def test_config_keys_match_flower_run_config():
    import tomllib

    flwr_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flwr_cfg == SimConfig().to_dict()


@pytest.mark.parametrize("name", ["quick", "rt-full", "bbc-dirichlet", "ci", "fleet-1000"])
def test_shipped_configs_load(name):
    SimConfig.load(ROOT / "simulations" / f"{name}.toml")


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="rounds_typo"):
        SimConfig.from_dict({"rounds_typo": 3})


def test_resume_config_keeps_the_run_and_may_drop_the_baselines(tmp_path):
    from fedadapt.launch.simulate import resume_config

    cfg = SimConfig(rounds=3, baselines=True, out=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    kept = resume_config(tmp_path)
    assert kept.resume and kept.baselines and kept.rounds == 3
    changed = resume_config(tmp_path, rounds=5, baselines=False)
    assert changed.rounds == 5 and not changed.baselines
    with pytest.raises(FedAdaptError, match="no run to resume"):
        resume_config(tmp_path / "missing")
