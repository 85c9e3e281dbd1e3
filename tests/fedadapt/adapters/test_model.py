"""Named adapters on one model: add, activate, deactivate, swap, delete, compose."""

import pytest
import torch

from fedadapt.adapters import (
    BitFitConfig,
    BottleneckConfig,
    Fuse,
    IA3Config,
    LoraConfig,
    Parallel,
    Stack,
)
from fedadapt.adapters.inject import find_targets
from fedadapt.adapters.layer import AdapterLayer


def _randomize(model, name):
    with torch.no_grad():
        for p in model.adapter_parameters(name).values():
            p.normal_(0, 0.05)


def test_only_adapter_and_head_parameters_train(fresh_model):
    model = fresh_model()
    model.add_adapter("a", BottleneckConfig(), num_labels=2)
    model.add_adapter("l", LoraConfig(), num_labels=2)
    model.train_adapter("a")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".adapters.a." in k or k.startswith("heads.a.") for k in trainable)


@pytest.mark.parametrize(
    "cfg",
    [BottleneckConfig(), LoraConfig(), IA3Config(), BitFitConfig()],
    ids=["bottleneck", "lora", "ia3", "bitfit"],
)
def test_deactivate_swap_delete_restore_exact_outputs(fresh_model, batch, cfg):
    model = fresh_model()
    with torch.no_grad():
        base = model.embed(*batch)
        model.add_adapter("x", cfg)
        model.add_adapter("y", type(cfg)())
        _randomize(model, "x")
        _randomize(model, "y")
        model.set_active("x")
        with_x = model.embed(*batch)
        assert not torch.equal(with_x, base)
        model.deactivate()
        assert torch.equal(model.embed(*batch), base)
        model.set_active("x")
        model.swap("x", "y")
        with_y = model.embed(*batch)
        assert not torch.equal(with_y, with_x)
        model.swap("y", "x")
        assert torch.equal(model.embed(*batch), with_x)
        model.delete_adapter("x")
        model.delete_adapter("y")
        assert torch.equal(model.embed(*batch), base)
    assert not any(isinstance(m, AdapterLayer) for m in model.encoder.modules())


def test_stack_and_parallel_compose_bottlenecks(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("a", BottleneckConfig())
    model.add_adapter("b", BottleneckConfig())
    _randomize(model, "a")
    _randomize(model, "b")
    with torch.no_grad():
        outs = {}
        for setup in ("a", "b", Stack("a", "b"), Stack("b", "a"), Parallel("a", "b")):
            model.set_active(setup)
            outs[str(setup)] = model.embed(*batch)
    assert not torch.allclose(outs[str(Stack("a", "b"))], outs[str(Stack("b", "a"))])
    assert not torch.allclose(outs[str(Stack("a", "b"))], outs[str(Parallel("a", "b"))])
    assert not torch.allclose(outs[str(Parallel("a", "b"))], outs["a"])


def test_parallel_sums_bottleneck_contributions(fresh_model):
    model = fresh_model()
    model.add_adapter("a", BottleneckConfig())
    model.add_adapter("b", BottleneckConfig())
    _randomize(model, "a")
    _randomize(model, "b")
    block = model.encoder.encoder.layer[0].output
    hidden, residual = torch.randn(2, 3, 1536), torch.randn(2, 3, 384)
    with torch.no_grad():
        h0 = block.base_layer.dense(hidden)
        want = block.base_layer.LayerNorm(
            h0 + block.adapters["a"](h0) + block.adapters["b"](h0) + residual
        )
        model.set_active(Parallel("a", "b"))
        torch.testing.assert_close(block(hidden, residual), want)


def test_methods_nest_on_one_module(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("l", LoraConfig(target_modules=["query"]))
    model.add_adapter("b", BitFitConfig(target_modules=["query"]))
    q = model.encoder.encoder.layer[0].attention.self.query
    assert isinstance(q, AdapterLayer) and isinstance(q.base_layer, AdapterLayer)
    assert find_targets(model.encoder, ["query"])[0] == "encoder.layer.0.attention.self.query"
    model.set_active(Stack("l", "b"))
    with torch.no_grad():
        model.embed(*batch)


def test_heads_follow_the_active_adapter(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("sent", LoraConfig(), num_labels=2)
    model.add_adapter("topic", LoraConfig(), num_labels=5)
    model.set_active("sent")
    assert model(*batch).shape[-1] == 2
    model.swap("sent", "topic")
    assert model(*batch).shape[-1] == 5


def test_errors_name_the_problem(fresh_model):
    model = fresh_model()
    model.add_adapter("a", LoraConfig())
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("a", LoraConfig())
    with pytest.raises(KeyError, match="no adapter named 'zzz'"):
        model.set_active("zzz")
    with pytest.raises(ValueError, match="no module matches"):
        model.add_adapter("b", LoraConfig(target_modules=["nonexistent"]))


def test_composition_values():
    assert Stack("a", "b").names == ("a", "b")
    assert Stack("a") != Parallel("a")
    assert list(Parallel("x", "y")) == ["x", "y"]
    with pytest.raises(ValueError):
        Stack()


def _bumped(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(name).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_fusion_of_one_adapter_is_that_adapter(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("a", BottleneckConfig(), num_labels=2)
    _bumped(model, "a", 0)
    model.add_fusion(Fuse("a"))
    model.set_active("a")
    with torch.no_grad():
        want = model.embed(*batch)
        model.set_active(Fuse("a"))
        got = model.embed(*batch)
    assert torch.allclose(got, want, atol=1e-6)


def test_fusion_trains_only_its_own_layers_and_head(fresh_model, batch):
    model = fresh_model()
    for n, seed in (("a", 1), ("b", 2)):
        model.add_adapter(n, BottleneckConfig(), num_labels=2)
        _bumped(model, n, seed)
    key = model.add_fusion(Fuse("a", "b"), num_labels=3)
    model.train_fusion(Fuse("a", "b"))
    assert model.active_head == key and model(*batch).shape[-1] == 3
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.fusion_parameters(key).values()}
    model(*batch).sum().backward()
    assert all(p.grad is not None for p in model.fusion_parameters(key).values())
    model.set_active(Fuse("a", "b"))
    with torch.no_grad():
        fused = model.embed(*batch)
        model.set_active("a")
        only_a = model.embed(*batch)
    assert not torch.allclose(fused, only_a, atol=1e-4)
    model.delete_adapter("b")
    assert key not in model.heads
    with pytest.raises(KeyError):
        model.fusion_parameters(key)


def test_fuse_refuses_lora(fresh_model):
    model = fresh_model()
    model.add_adapter("l", LoraConfig())
    model.set_active(Fuse("l"))
    with pytest.raises(NotImplementedError, match="AdapterFusion fuses bottleneck"):
        model.embed(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
