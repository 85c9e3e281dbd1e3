"""The personal head bias: a prior-shift correction fitted on the device."""

import pytest
import torch

from fedadapt.head_bias import fit_head_bias


def _skewed(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from a model that leans to class 0, on a client whose labels are 80% class 1."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < 0.8).long()
    signal = (labels.float() * 2 - 1) * 0.5 + torch.randn(n, generator=g) * 0.8
    logits = torch.stack([-signal / 2 + 0.6, signal / 2 - 0.6], dim=1)
    return logits, labels


def test_the_offset_moves_towards_the_local_majority_and_helps():
    logits, labels = _skewed()
    bias = fit_head_bias(logits, labels)
    assert bias[1] - bias[0] > 0.5
    before = (logits.argmax(-1) == labels).float().mean()
    after = ((logits + bias).argmax(-1) == labels).float().mean()
    assert after > before


def test_a_calibrated_model_on_balanced_labels_needs_almost_no_offset():
    labels = torch.tensor([0, 1] * 20)
    logits = torch.nn.functional.one_hot(labels, 2).float() * 2 - 1
    logits = torch.cat([logits, logits.flip(1)])  # as many confident misses, both ways
    labels = torch.cat([labels, labels])
    assert fit_head_bias(logits, labels).abs().max() < 1e-3


def test_a_client_with_one_label_gets_a_finite_offset():
    bias = fit_head_bias(torch.zeros(10, 3), torch.full((10,), 2))
    assert torch.isfinite(bias).all() and bias.argmax() == 2


def test_the_fit_is_deterministic():
    logits, labels = _skewed(seed=3)
    assert torch.equal(fit_head_bias(logits, labels), fit_head_bias(logits, labels))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="do not match"):
        fit_head_bias(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="l2"):
        fit_head_bias(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), l2=0.0)
