"""simulations/hetlora_table.py: per-tier rows from per-client figures of synthetic reports,
with the tier's upload derived from the real adapter (the base model is loaded)."""

import json
from collections import Counter

import pytest

from fedadapt import hetlora
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig
from tests.simulations.script_helpers import SIMULATIONS, load_script, run_script, write_json

ht = load_script("hetlora_table")
HET = SimConfig.load(SIMULATIONS / "bbc-hetlora.toml")
R8 = SimConfig.load(SIMULATIONS / "bbc-dirichlet.toml", method="lora", full_model_from="x")
R2 = SimConfig.load(SIMULATIONS / "bbc-hetlora.toml", lora_tier_ranks="2")
PIDS = range(HET.num_clients)
HEAD = 384 * 5 + 5  # BBC's 5 classes over MiniLM's 384 dims


def report(cfg: SimConfig, accuracy, upload: float) -> dict:
    """A LoRA run's report whose client `p` scored `accuracy(p)` (personalized: +0.02)."""
    per_client = {
        str(p): {"global_accuracy": accuracy(p), "personalized_accuracy": accuracy(p) + 0.02}
        for p in PIDS
    }
    mean = sum(accuracy(p) for p in PIDS) / len(PIDS)
    return {
        "adapter": {"method": "lora"},
        "config": cfg.to_dict(),
        "final": {"global_accuracy": mean, "personalized_accuracy": mean + 0.02},
        "communication": {"upload_bytes_per_client_round": upload},
        "per_client": per_client,
    }


def tier(p: int) -> int:
    return hetlora.client_rank(HET, p)


@pytest.fixture
def paths(tmp_path):
    # HetLoRA's rank-8 clients beat the homogeneous r=8 run by 0.05; its rank-2 clients
    # score what the homogeneous r=2 run scores.
    return {
        "het": write_json(
            tmp_path / "het.json", report(HET, lambda p: 0.9 if tier(p) == 8 else 0.8, 90e3)
        ),
        "r8": write_json(tmp_path / "r8.json", report(R8, lambda p: 0.85, 157.5e3)),
        "r2": write_json(tmp_path / "r2.json", report(R2, lambda p: 0.8, 46.7e3)),
    }


def _args(paths, out):
    return ["--out", str(out), *[a for run, p in paths.items() for a in (f"--{run}", str(p))]]


def _cells(md: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r] for r in rows}


@pytest.mark.slow
def test_tier_rows_pair_each_tiers_clients_across_the_three_runs(paths, tmp_path):
    ht.main(_args(paths, tmp_path / "out"))
    data = json.loads((tmp_path / "out" / "table.json").read_text())
    counts = Counter(tier(p) for p in PIDS)
    assert [(t["tier_rank"], t["clients"]) for t in data["tiers"]] == sorted(counts.items())
    assert data["all_clients"]["clients"] == HET.num_clients
    cells = _cells((tmp_path / "out" / "table.md").read_text())
    t8, t2 = cells["8"], cells["2"]
    assert t8[3] == "0.900 / 0.850 / 0.800"
    assert t8[4] == "+0.050 [+0.050, +0.050] *"  # Het − r8, global: excludes 0
    assert t8[8] == "+0.100 [+0.100, +0.100] *"  # Het − r2, personalized
    assert t2[5] == "+0.000 [+0.000, +0.000]"  # rank-2 clients: Het = r2, no star
    assert t2[7] == "-0.050 [-0.050, -0.050] *"
    assert cells["all"][2] == "90.0 kB measured"


@pytest.mark.slow
def test_tier_upload_is_the_real_adapters_trainable_tensors(paths, tmp_path):
    ht.main(_args(paths, tmp_path / "out"))
    data = json.loads((tmp_path / "out" / "table.json").read_text())
    for row in data["tiers"]:
        up, r = row["upload"], row["tier_rank"]
        # FFA-LoRA: only B (384 × r, query and value, 6 layers) and the head train
        assert up["trainable_params"] == 6 * 2 * 384 * r + HEAD
        assert 4 * up["trainable_params"] < up["delta_bytes"] < up["arrays_wire_bytes"]
        assert up["arrays_wire_bytes"] - 4 * up["trainable_params"] < 4000  # headers only
    runs = data["runs"]
    assert runs["r8"]["derived_upload_at_global_rank"] == data["tiers"][-1]["upload"]
    assert runs["r2"]["derived_upload_at_global_rank"] == data["tiers"][0]["upload"]
    md = (tmp_path / "out" / "table.md").read_text()
    assert "Config differs in lora_tier_ranks" in md and "Config differs in baselines" in md


def test_a_missing_report_is_one_line_naming_it(paths, tmp_path):
    paths["r2"].unlink()
    res = run_script("hetlora_table", *_args(paths, tmp_path / "out"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing inputs: homogeneous r=2 report" in lines[0]
    assert "HetLoRA report" not in lines[0]


def test_runs_that_are_not_what_the_table_compares_are_refused(paths, tmp_path):
    write_json(paths["r2"], report(R8, lambda p: 0.8, 1.0))  # rank 8 given as the r=2 run
    with pytest.raises(FedAdaptError, match="not a homogeneous rank-2 LoRA run"):
        ht.main(_args(paths, tmp_path / "out"))
    write_json(paths["het"], report(R2, lambda p: 0.8, 1.0))  # one tier only
    with pytest.raises(FedAdaptError, match="has no device tiers"):
        ht.main(_args(paths, tmp_path / "out"))
