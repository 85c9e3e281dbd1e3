"""HetLoRA tiers: the pad/truncate math, FFA-LoRA's exactness across ranks, config checks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save
from torch import nn

from fedadapt import hetlora
from fedadapt.adapters import LoraConfig
from fedadapt.errors import ConfigError, FedAdaptError
from fedadapt.simconfig import SimConfig

TIERS = (2, 4, 8)


def _branch(r: int, freeze_a: bool = True):
    """A rank-r LoRA branch as a tier builds it: same seed, alpha scaled to the global rank."""
    cfg = LoraConfig(r=r, lora_alpha=16.0 * r / 8, freeze_a=freeze_a, init_seed=3)
    return cfg.make_adapter(nn.Linear(24, 12), "encoder.layer.0.attention.self.query")


def test_a_of_a_lower_rank_is_a_prefix_of_the_global_a_and_scaling_is_shared():
    top = _branch(8)
    for r in (2, 4):
        low = _branch(r)
        assert torch.equal(low.lora_A.weight, top.lora_A.weight[:r])
        assert low.scaling == top.scaling == 2.0


def test_padded_mean_of_b_is_the_mean_of_dense_changes_when_a_is_frozen():
    g = torch.Generator().manual_seed(0)
    top = _branch(8)
    deltas, weights, dense = [], [3.0, 5.0, 2.0], []
    key = "q.lora_B.weight"
    for r in TIERS:
        branch = _branch(r)
        b = torch.randn(12, r, generator=g)  # what the client learned
        with torch.no_grad():
            branch.lora_B.weight.copy_(b)
        deltas.append({key: b})
        dense.append(branch.delta_weight())
    expected = sum(w * d for w, d in zip(weights, dense, strict=True)) / sum(weights)
    mean_b = hetlora.padded_mean(deltas, weights, {key: top.lora_B.weight})[key]
    with torch.no_grad():
        top.lora_B.weight.copy_(mean_b)
    torch.testing.assert_close(top.delta_weight(), expected, rtol=0, atol=1e-6)


def test_the_naive_mean_of_trained_a_and_b_is_not_exact():
    """The contrast that makes freeze_a matter: mean(B_i) mean(A_i) != mean(B_i A_i)."""
    g = torch.Generator().manual_seed(1)
    a = [torch.randn(8, 24, generator=g) for _ in range(2)]
    b = [torch.randn(12, 8, generator=g) for _ in range(2)]
    dense = (b[0] @ a[0] + b[1] @ a[1]) / 2
    naive = ((b[0] + b[1]) / 2) @ ((a[0] + a[1]) / 2)
    assert (naive - dense).abs().max() > 0.1


def test_truncate_then_pad_round_trips_and_pad_adds_zeros_only():
    g = torch.Generator().manual_seed(2)
    state = {
        "x.lora_A.weight": torch.randn(8, 24, generator=g),
        "x.lora_B.weight": torch.randn(12, 8, generator=g),
        "head.bias": torch.randn(3, generator=g),
    }
    for r in TIERS:
        cut = hetlora.truncate(state, r)
        assert cut["x.lora_A.weight"].shape == (r, 24)
        assert cut["x.lora_B.weight"].shape == (12, r)
        assert torch.equal(cut["head.bias"], state["head.bias"])
        back = hetlora.pad(cut, state)
        assert torch.equal(back["x.lora_B.weight"][:, :r], state["x.lora_B.weight"][:, :r])
        assert not back["x.lora_B.weight"][:, r:].any()
        assert not back["x.lora_A.weight"][r:].any()
        assert hetlora.truncate(back, r).keys() == cut.keys()
        assert all(torch.equal(hetlora.truncate(back, r)[k], cut[k]) for k in cut)


def test_truncating_below_the_rank_held_is_refused():
    with pytest.raises(FedAdaptError, match=r"x.lora_B.weight has rank 2, fewer than the 4"):
        hetlora.truncate({"x.lora_B.weight": torch.zeros(5, 2)}, 4)


def test_each_tier_downloads_bytes_in_proportion_to_its_rank():
    state = {"x.lora_A.weight": torch.zeros(8, 384), "x.lora_B.weight": torch.zeros(384, 8)}
    sizes = {r: len(save(hetlora.truncate(state, r))) for r in TIERS}
    assert sizes[2] < sizes[4] < sizes[8]
    # the tensor bytes differ by 2 · 384 fp32 values per rank; the header, by a few digits
    assert sizes[8] - sizes[2] == pytest.approx((8 - 2) * 2 * 384 * 4, abs=16)


def test_tier_of_a_client_is_drawn_from_the_seed_or_named_by_the_node_config():
    cfg = SimConfig(method="lora", lora_tier_ranks="2,4,8", num_clients=30, clients_per_round=5)
    drawn = [hetlora.client_rank(cfg, pid) for pid in range(30)]
    assert set(drawn) == set(TIERS)
    assert drawn == [hetlora.client_rank(cfg, pid) for pid in range(30)]
    assert hetlora.client_rank(cfg, 0, node_tier=0) == 2
    assert hetlora.client_rank(cfg, 0, node_tier=2) == 8
    with pytest.raises(FedAdaptError, match=r"tier = 3 is not an index into lora_tier_ranks"):
        hetlora.client_rank(cfg, 0, node_tier=3)
    with pytest.raises(FedAdaptError, match=r"tier must be an integer, got '1'"):
        hetlora.client_rank(cfg, 0, node_tier="1")
    assert hetlora.global_config(cfg).lora_r == 8
    assert hetlora.lora_alpha(hetlora.client_config(cfg, 2)) == 4.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora_tier_ranks": "2,x"}, r"lora_tier_ranks = '2,x' is not a comma-separated list"),
        ({"lora_tier_ranks": "0,4"}, r"lora_tier_ranks = '0,4' is not a comma-separated list"),
        ({"lora_tier_ranks": "4,4"}, r"lora_tier_ranks = '4,4' names a rank twice"),
        ({"lora_tier_ranks": "2,4", "method": "bottleneck"}, r"needs method = 'lora'"),
        ({"lora_tier_ranks": "2,4", "strategy": "median"}, r"it needs a linear strategy"),
        ({"lora_tier_ranks": "2,4", "secagg": True}, r"it needs a linear strategy"),
    ],
)
def test_bad_tier_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        SimConfig(**{"method": "lora", **overrides})


def test_without_tiers_the_lora_config_is_unchanged():
    cfg = SimConfig(method="lora", lora_r=4)
    assert hetlora.global_rank(cfg) == 4
    assert hetlora.lora_alpha(cfg) == 16.0
