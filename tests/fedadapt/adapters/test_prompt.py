import pytest
import torch

from fedadapt.adapters import PromptConfig
from fedadapt.base.bert import mean_pool


def test_zero_length_prompt_changes_nothing(fresh_model, batch):
    model = fresh_model()
    with torch.no_grad():
        before = model.embed(*batch)
        model.add_adapter("p", PromptConfig(num_virtual_tokens=0))
        model.set_active("p")
        assert torch.equal(model.embed(*batch), before)


def test_prompt_is_attended_but_pooling_covers_real_tokens_only(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("p", PromptConfig(num_virtual_tokens=5))
    model.set_active("p")
    ids, mask = batch
    with torch.no_grad():
        embeddings = model.encoder.embeddings(ids)
        hidden = model.encoder(ids, mask)
        pooled = model.embed(ids, mask)
        model.deactivate()
        base = model.embed(ids, mask)
    assert embeddings.shape[1] == ids.shape[1] + 5  # the virtual tokens enter the encoder
    assert hidden.shape == (*ids.shape, 384)  # and leave before pooling
    torch.testing.assert_close(pooled, mean_pool(hidden, mask))
    assert not torch.allclose(pooled, base, atol=1e-3)


def test_padding_does_not_change_a_prompted_embedding(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("p", PromptConfig(num_virtual_tokens=4, init="random", init_std=0.5))
    model.set_active("p")
    ids, mask = batch
    pad = torch.zeros(ids.shape[0], 6, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1)),
            model.embed(ids, mask),
        )


def test_gradients_reach_only_the_prompt_and_head(fresh_model, batch):
    model = fresh_model()
    model.add_adapter("p", PromptConfig(num_virtual_tokens=3), num_labels=2)
    model.train_adapter("p")
    model(*batch).sum().backward()
    got = {k for k, p in model.named_parameters() if p.grad is not None}
    assert got == {
        "heads.p.weight",
        "heads.p.bias",
        "encoder.embeddings.adapters.p.prompt_embeddings",
    }
    assert model.adapter_state("p")["embeddings.prompt_embeddings"].shape == (3, 384)


def test_prompt_init_is_seeded_and_bad_init_is_refused(fresh_model):
    a, b = fresh_model(), fresh_model()
    a.add_adapter("p", PromptConfig(num_virtual_tokens=3))
    b.add_adapter("p", PromptConfig(num_virtual_tokens=3, init_seed=1))
    key = "embeddings.prompt_embeddings"
    assert not torch.equal(a.adapter_state("p")[key], b.adapter_state("p")[key])
    with pytest.raises(ValueError, match="prompt init must be one of"):
        PromptConfig(init="text")
