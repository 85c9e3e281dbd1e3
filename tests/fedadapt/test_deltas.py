import pytest
import torch

from fedadapt.deltas import apply_delta, check_delta, compute_delta
from fedadapt.errors import DeltaError


@pytest.fixture
def states():
    torch.manual_seed(0)
    g = {"a.weight": torch.randn(4, 3), "b.bias": torch.randn(5)}
    local = {k: v + 0.1 * torch.randn_like(v) for k, v in g.items()}
    return g, local


def test_apply_inverts_compute(states):
    g, local = states
    d = compute_delta(local, g)
    out = apply_delta(g, d)
    for k in g:
        torch.testing.assert_close(out[k], local[k])
    assert g["a.weight"] is not out["a.weight"]


def test_partial_delta_keeps_frozen_tensors(states):
    g, local = states
    d = compute_delta(local, g)
    del d["b.bias"]
    assert torch.equal(apply_delta(g, d)["b.bias"], g["b.bias"])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"zzz": torch.zeros(1)}, "unknown tensor names"),
        ({"a.weight": torch.zeros(3, 4)}, "shape"),
        ({"a.weight": torch.zeros(4, 3, dtype=torch.int32)}, "floating-point"),
        ({"a.weight": torch.full((4, 3), float("nan"))}, "NaN or Inf"),
        ({"b.bias": torch.tensor([0, 0, float("inf"), 0, 0])}, "NaN or Inf"),
    ],
)
def test_bad_deltas_are_named(states, bad, match):
    g, _ = states
    with pytest.raises(DeltaError, match=match):
        check_delta(bad, g)
    with pytest.raises(DeltaError, match=match):
        apply_delta(g, bad)


def test_compute_refuses_mismatched_states(states):
    g, local = states
    local.pop("b.bias")
    with pytest.raises(DeltaError, match="differ"):
        compute_delta(local, g)
