from fedadapt.server.report import bootstrap_diff, comparisons
from fedadapt.simconfig import SimConfig


def test_bootstrap_interval_brackets_the_mean_and_excludes_zero_for_a_clear_gain():
    a = [0.9, 0.8, 0.85, 0.95, 0.9, 0.8]
    b = [0.7, 0.6, 0.7, 0.75, 0.7, 0.65]
    r = bootstrap_diff(a, b)
    assert r["ci95_low"] <= r["mean_diff"] <= r["ci95_high"]
    assert r["ci95_low"] > 0 and r["clients"] == 6


def test_noise_gives_an_interval_over_zero():
    r = bootstrap_diff([0.5, 0.7, 0.6, 0.4], [0.6, 0.5, 0.6, 0.5])
    assert r["ci95_low"] < 0 < r["ci95_high"]


def test_comparisons_pair_by_client():
    per = {
        0: {"personalized_accuracy": 0.8, "local_only_accuracy": 0.7},
        1: {"personalized_accuracy": 0.9, "local_only_accuracy": 0.6},
    }
    c = comparisons(per, seed=0)
    assert c["personalized_vs_local_only"]["clients"] == 2
    assert abs(c["personalized_vs_local_only"]["mean_diff"] - 0.2) < 1e-9


def test_metrics_csv_keeps_a_round_with_node_ids_and_laps_in_its_columns(tmp_path):
    from fedadapt.server.report import ROUND_FIELDS, write_metrics_csv

    row = {"round": 1, "clients": 2, "ray_nodes": ["aa", "bb"], "sample_s": 0.01}
    row["rejected"] = {"timeout": 2, "non-finite": 1}  # its str() held a comma
    write_metrics_csv(tmp_path / "m.csv", [row])
    header, line = (tmp_path / "m.csv").read_text().splitlines()
    cells = dict(zip(header.split(","), line.split(","), strict=True))
    assert {"sample_s", "train_s", "aggregate_s", "evaluate_s"} <= set(ROUND_FIELDS)
    assert cells["ray_nodes"] == "aa bb" and cells["sample_s"] == "0.01"
    assert cells["evaluate_s"] == ""
    assert cells["rejected"] == "non-finite=1 timeout=2"


def test_the_personal_stack_is_compared_and_averaged_only_where_it_was_measured():
    """fedrep-head-bias devices report the stack before the bias too (FedRep's figure)."""
    from types import SimpleNamespace

    from fedadapt.server.report import assemble

    per = {
        0: {"personal_stack_accuracy": 0.8, "full_model_personalized_accuracy": 0.7},
        1: {"personal_stack_accuracy": 0.6, "full_model_personalized_accuracy": 0.6},
    }
    c = comparisons(per, seed=0)["personal_stack_vs_full_model_fedavg_personalized"]
    assert c["clients"] == 2 and abs(c["mean_diff"] - 0.05) < 1e-9
    plain = {0: {"personalized_accuracy": 0.8, "full_model_personalized_accuracy": 0.7}}
    assert "personal_stack_vs_full_model_fedavg_personalized" not in comparisons(plain, seed=0)

    cfg = SimConfig()
    base = SimpleNamespace(describe=lambda: {"params": 10}, sha256="ab", params=10)
    final = assemble(cfg, base, 1, [], [], per, 1, 0.0)["final"]
    assert abs(final["personal_stack_accuracy"] - 0.7) < 1e-9
    assert "personal_stack_accuracy" not in assemble(cfg, base, 1, [], [], plain, 1, 0.0)["final"]
