import pytest
import torch

from fedadapt.adapters import BottleneckConfig
from fedadapt.adapters.bottleneck import BottleneckBlock


@pytest.mark.parametrize("placement", ["pfeiffer", "houlsby", "parallel"])
def test_fresh_adapter_is_exactly_identity(fresh_model, batch, placement):
    model = fresh_model()
    with torch.no_grad():
        before = model.embed(*batch)
        model.add_adapter("a", BottleneckConfig(placement=placement))
        model.set_active("a")
        after = model.embed(*batch)
    assert (after - before).abs().max().item() == 0.0


def test_placements_wrap_the_right_blocks(fresh_model):
    model = fresh_model()
    model.add_adapter("p", BottleneckConfig(placement="pfeiffer"))
    model.add_adapter("h", BottleneckConfig(placement="houlsby"))
    blocks = {n for n, m in model.encoder.named_modules() if isinstance(m, BottleneckBlock)}
    assert len(blocks) == 12  # 6 FFN outputs + 6 attention outputs
    ffn = model.encoder.encoder.layer[3].output
    attn = model.encoder.encoder.layer[3].attention.output
    assert set(ffn.adapters) == {"p", "h"} and set(attn.adapters) == {"h"}


def test_trainable_fraction_under_4_percent(fresh_model):
    model = fresh_model()
    model.add_adapter("a", BottleneckConfig(placement="houlsby", reduction_factor=16))
    model.train_adapter("a")
    assert model.num_trainable() / model.base.params < 0.04


def test_hidden_size_overrides_reduction_factor(fresh_model):
    model = fresh_model()
    model.add_adapter("a", BottleneckConfig(hidden_size=8, reduction_factor=2))
    assert model.encoder.encoder.layer[0].output.adapters["a"].adapter_down.out_features == 8


def test_parallel_adapter_reads_the_block_input(fresh_model, batch):
    """A parallel adapter sees the residual input, a sequential one the dense output."""
    model = fresh_model()
    model.add_adapter("par", BottleneckConfig(placement="parallel"))
    block = model.encoder.encoder.layer[0].output
    model.set_active("par")
    seen = {}
    block.adapters["par"].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        model.embed(*batch)
    assert seen["x"].shape[-1] == 384  # hidden width, not the 1536 FFN width


def test_residual_false_replaces_the_input():
    from fedadapt.adapters.bottleneck import Bottleneck

    a = Bottleneck(8, 2, BottleneckConfig(residual=False))
    y = torch.randn(3, 8)
    torch.testing.assert_close(a(y), -y)  # fresh: up is zero, so y + change == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="placement"):
        BottleneckConfig(placement="sideways")
    with pytest.raises(ValueError, match="activation"):
        BottleneckConfig(activation="softsign")
