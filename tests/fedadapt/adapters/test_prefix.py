import pytest
import torch

from fedadapt.adapters import LoraConfig, PrefixConfig, Stack


def _grads_only_on(model, batch, name: str) -> set[str]:
    """Train adapter `name` for one backward pass; the parameter names that got a gradient."""
    model.train_adapter(name)
    model(*batch).sum().backward()
    return {k for k, p in model.named_parameters() if p.grad is not None}


def test_zero_length_prefix_changes_nothing(fresh_model, batch):
    model = fresh_model()
    with torch.no_grad():
        before = model.embed(*batch)
        model.add_adapter("p", PrefixConfig(num_virtual_tokens=0))
        model.set_active("p")
        assert torch.equal(model.embed(*batch), before)


def test_prefix_keys_and_values_reach_every_real_token_and_ignore_padding(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("p", PrefixConfig(num_virtual_tokens=4))
    model.set_active("p")
    ids, mask = batch
    pad = torch.zeros(ids.shape[0], 3, dtype=torch.long)
    with torch.no_grad():
        out = model.embed(ids, mask)
        torch.testing.assert_close(
            model.embed(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1)), out
        )
        model.deactivate()
        base = model.embed(ids, mask)
    assert not torch.allclose(out, base, atol=1e-3)  # a non-empty prefix is attended
    state = model.adapter_state("p")
    assert state["encoder.layer.5.attention.self.prefix_keys"].shape == (4, 384)
    assert len(state) == 6 * 2


def test_gradients_reach_only_the_prefix_and_head(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("p", PrefixConfig(num_virtual_tokens=3), num_labels=2)
    got = _grads_only_on(model, batch, "p")
    assert got == {f"heads.p.{t}" for t in ("weight", "bias")} | {
        f"encoder.encoder.layer.{i}.attention.self.adapters.p.prefix_{kv}"
        for i in range(6)
        for kv in ("keys", "values")
    }


def test_reparametrized_prefix_trains_the_mlp_and_folds_to_plain_tensors(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("p", PrefixConfig(num_virtual_tokens=3, reparam_hidden=16), num_labels=2)
    got = _grads_only_on(model, batch, "p")
    assert "encoder.encoder.layer.0.attention.self.adapters.p.reparam.0.weight" in got
    assert all(".adapters.p." in k or k.startswith("heads.p.") for k in got)
    with torch.no_grad():
        before = model(*batch)
        cfg, state = model.inference_state("p")
        assert cfg.reparam_hidden == 0
        assert model.configs["p"].reparam_hidden == 16  # saving a copy leaves training alone
        assert {k.rsplit(".", 1)[1] for k in state} == {
            "prefix_keys",
            "prefix_values",
            "weight",
            "bias",
        }
        model.fold("p")
        torch.testing.assert_close(model(*batch), before, atol=0, rtol=0)
        assert model.adapter_state("p").keys() == state.keys()


def test_stacked_prefixes_concatenate_and_compose_with_lora(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("a", PrefixConfig(num_virtual_tokens=2))
    model.add_adapter("b", PrefixConfig(num_virtual_tokens=3, init_seed=1))
    model.add_adapter("l", LoraConfig(r=2))
    model.set_active(Stack("a", "b", "l"))
    with torch.no_grad():
        two = model.embed(*batch)
        model.add_adapter("ab", PrefixConfig(num_virtual_tokens=5))
        joined = {
            k: torch.cat([model.adapter_state("a")[k], model.adapter_state("b")[k]])
            for k in model.adapter_state("ab")
        }
        model.load_adapter_state("ab", joined)
        model.set_active(Stack("ab", "l"))
        torch.testing.assert_close(model.embed(*batch), two, atol=1e-6, rtol=1e-6)


def test_prefix_layers_draw_their_own_values_and_bad_config_is_refused(fresh_model):
    model = fresh_model()
    model.add_adapter("p", PrefixConfig(num_virtual_tokens=2))
    s = model.adapter_state("p")
    k0 = s["encoder.layer.0.attention.self.prefix_keys"]
    assert not torch.equal(k0, s["encoder.layer.1.attention.self.prefix_keys"])
    with pytest.raises(ValueError, match="num_virtual_tokens, reparam_hidden and init_std must"):
        PrefixConfig(num_virtual_tokens=-1)
