"""SecAgg+ on the Simulation Engine: the unmasked mean matches plain FedAvg within the bound."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from safetensors.torch import load_file

from fedadapt.data.partitions import client_data
from fedadapt.errors import ConfigError
from fedadapt.model_setup import build_fresh_global
from fedadapt.server.secagg import QUANTIZATION_RANGE, quantization_bound
from fedadapt.simconfig import SimConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "bad", [{"strategy": "median"}, {"dp_noise_multiplier": 1.0}, {"codec": "int8"}]
)
def test_secagg_refuses_what_needs_single_deltas(bad):
    with pytest.raises(ConfigError, match="secagg"):
        SimConfig(secagg=True, **bad)


def test_quantization_bound_follows_range_weight_and_clients():
    cfg = SimConfig(secagg=True, clip_norm=0.5, secagg_max_weight=100.0)
    one = quantization_bound(cfg, [50])
    assert one == pytest.approx(2 * 0.5 / QUANTIZATION_RANGE / 0.5)
    assert quantization_bound(cfg, [50, 50]) == pytest.approx(one)  # n steps over n ratios
    wider = SimConfig(secagg=True, secagg_clipping_range=4.0, secagg_max_weight=100.0)
    assert quantization_bound(wider, [50]) == pytest.approx(8 * one)


def _run(tmp_path: Path, name: str, **overrides) -> tuple[Path, str]:
    cfg = {
        "num_clients": 3,
        "clients_per_round": 3,
        "rounds": 1,
        "local_epochs": 1,
        "personal_epochs": 1,
        "baselines": False,
        "clip_norm": 0.05,  # small enough that clipping acts
        "seed": 0,
        **overrides,
    }
    out, config = tmp_path / name, tmp_path / f"{name}.toml"
    config.write_text(tomli_w.dumps(cfg))
    res = subprocess.run(
        [sys.executable, "-m", "fedadapt", "simulate", "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_secagg_mean_matches_plain_fedavg_within_quantization_error(tmp_path):
    plain_out, _ = _run(tmp_path, "plain", strategy="fedavg")  # the default is robust now
    secure_out, log = _run(tmp_path, "secagg", secagg=True)
    assert "Secure aggregation completed" in log
    row = json.loads((secure_out / "report.json").read_text())["rounds"][0]
    assert row["rejected"] == {} and 0 < row["train_loss"] < 10  # every reply's loss counted

    plain = load_file(plain_out / "checkpoints" / "round-0001.safetensors")
    secure = load_file(secure_out / "checkpoints" / "round-0001.safetensors")
    cfg = SimConfig(num_clients=3, clients_per_round=3, clip_norm=0.05, secagg=True)
    start = build_fresh_global(cfg)
    bound = quantization_bound(cfg, [len(client_data(cfg, p).train_labels) for p in range(3)])
    moved = max((plain[f"global/{k}"] - v).abs().max().item() for k, v in start.items())
    err = max((plain[k] - secure[k]).abs().max().item() for k in plain if k.startswith("global/"))
    assert moved > 100 * bound  # the round changed the adapter far beyond the quantization
    assert 0 < err <= bound  # quantized and masked, yet the same mean


def test_bad_metrics_in_a_secagg_reply_are_skipped_inside_flowers_own_aggregate_fit():
    """The legacy FedAvg that SecAgg+ drives calls our metrics function inside Flower's
    workflow, where an exception ends the run: a missing or malformed train_loss (or
    num-examples) is left out of the loss mean and counted, never raised."""
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from fedadapt.server.secagg import legacy_strategy

    params = ndarrays_to_parameters([np.ones(2, dtype=np.float32)])  # the unmasked mean
    replies = [
        (10, {"train_loss": 0.5}),
        (5, {}),  # no train_loss: a KeyError before
        (3, {"train_loss": "low"}),
        (4, {"train_loss": float("nan")}),
        (6, {"train_loss": -1.0}),
        (0, {"train_loss": 9.0}),  # no weight to give its loss
        (2, {"train_loss": 1.0}),
    ]
    results = [(None, FitRes(Status(Code.OK, ""), params, n, metrics)) for n, metrics in replies]
    seen: dict = {}
    params_out, _ = legacy_strategy(["w"], len(results), seen).aggregate_fit(1, results, [])
    assert params_out is not None
    assert seen["num_examples"] == [n for n, _ in replies]  # judged by secagg_rejections
    assert seen["train_loss"] == pytest.approx((10 * 0.5 + 2 * 1.0) / 12)
    assert dict(seen["skipped"]) == {"train-loss": 4, "num-examples": 1}

    zero = [(None, FitRes(Status(Code.OK, ""), params, 0, {"train_loss": 0.1}))] * 2
    params_out, _ = legacy_strategy(["w"], 2, seen).aggregate_fit(1, zero, [])
    assert params_out is params  # claims summing to 0: no division inside the workflow
    assert seen["num_examples"] == [0, 0] and dict(seen["skipped"]) == {"num-examples": 2}


def test_metrics_as_flowers_secagg_workflow_hands_them_are_read():
    """The workflow converts each reply with Flower's own `recorddict_to_fitres`, whose
    metrics are a ConfigRecord, not a dict: they must count, not be skipped as malformed."""
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from fedadapt.server.secagg import round_metrics

    params = ndarrays_to_parameters([np.ones(2, dtype=np.float32)])
    sent = [FitRes(Status(Code.OK, ""), params, n, {"train_loss": loss}) for n, loss in
            ((3, 0.5), (1, 0.1))]  # fmt: skip
    wire = [compat.fitres_to_recorddict(f, keep_input=True) for f in sent]
    received = [compat.recorddict_to_fitres(r, keep_input=True) for r in wire]
    assert not isinstance(received[0].metrics, dict)  # what made every reply "malformed"
    counts, loss, skipped = round_metrics([(f.num_examples, f.metrics) for f in received])
    assert counts == [3, 1] and not skipped
    assert loss == pytest.approx((3 * 0.5 + 1 * 0.1) / 4)


def test_a_secagg_round_with_no_valid_loss_reports_nan_not_an_error():
    from fedadapt.server.secagg import round_metrics

    counts, loss, skipped = round_metrics([(3, {"loss": 0.2}), (4, None)])
    assert counts == [3, 4] and loss != loss  # NaN: nothing to average
    assert dict(skipped) == {"train-loss": 1, "metrics": 1}
