import torch
import torch.nn.functional as F

from fedadapt.adapters import AdapterModel, LoraConfig
from fedadapt.base import load_base
from fedadapt.data import rotten_tomatoes
from fedadapt.train import TrainConfig, accuracy, embed, predict, train, train_probe


def _run(seed):
    client = rotten_tomatoes.load_clients(3, seed=0)[0]
    model = AdapterModel(load_base("int8"))
    model.add_adapter("a", LoraConfig(lora_dropout=0.1), num_labels=2)
    model.train_adapter("a")
    from fedadapt.base.checkpoint import load_tokenizer

    tok = load_tokenizer()
    stats = train(
        model,
        tok,
        client.train_texts,
        client.train_labels,
        TrainConfig(epochs=2, batch_size=8, seed=seed),
    )
    return model.adapter_state("a"), stats, model, tok, client


def test_training_is_deterministic_for_a_seed():
    s1, st1, *_ = _run(0)
    s2, st2, *_ = _run(0)
    s3, *_ = _run(1)
    assert st1 == st2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)


def test_examples_counts_each_example_once_not_once_per_epoch():
    """num-examples, a client's FedAvg weight, used to be examples x epochs."""
    model = AdapterModel(load_base("int8"))
    model.add_adapter("a", LoraConfig(), num_labels=2)
    model.train_adapter("a")
    from fedadapt.base.checkpoint import load_tokenizer

    tok, texts, labels = (
        load_tokenizer(),
        ["good film", "bad film", "fine", "awful"] * 3,
        [1, 0] * 6,
    )
    three = train(model, tok, texts, labels, TrainConfig(epochs=3, batch_size=4))
    assert three["examples"] == 12 and three["steps"] == 9
    cut = train(model, tok, texts, labels, TrainConfig(epochs=3, batch_size=4, max_steps=2))
    assert cut["examples"] == 8  # stopped inside the first epoch: 8 distinct examples seen


def test_training_fits_the_training_set():
    _, _, model, tok, client = _run(0)
    y = torch.tensor(client.train_labels)
    before = F.cross_entropy(predict(model, tok, client.train_texts), y)
    train(model, tok, client.train_texts, client.train_labels, TrainConfig(epochs=8, batch_size=8))
    logits = predict(model, tok, client.train_texts)
    assert F.cross_entropy(logits, y) < 0.5 * before
    assert accuracy(logits, client.train_labels) >= 0.9


def test_training_leaves_the_base_untouched():
    from fedadapt.adapters.layer import logical_name

    *_, model, _, _ = _run(0)
    fresh = load_base("int8").encoder.state_dict()
    trained = {
        logical_name(k): v for k, v in model.encoder.state_dict().items() if ".adapters." not in k
    }
    assert set(trained) == set(fresh)
    assert all(torch.equal(trained[k], fresh[k]) for k in fresh)


def _probe(seed: int) -> tuple[torch.nn.Linear, dict, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 8, generator=g)
    labels = (feats[:, 0] > 0).long().tolist()
    head = torch.nn.Linear(8, 2)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    stats = train_probe(head, feats, labels, TrainConfig(lr=0.05, epochs=20, seed=seed))
    return head, stats, feats, labels


def test_a_probe_fits_fixed_features_and_repeats_for_a_seed():
    head, stats, feats, labels = _probe(0)
    acc = (head(feats).argmax(-1) == torch.tensor(labels)).float().mean()
    assert acc > 0.9 and stats["examples"] == 64  # examples, not examples x 20 epochs
    again, *_ = _probe(0)
    other, *_ = _probe(1)
    assert torch.equal(head.weight, again.weight)
    assert not torch.equal(head.weight, other.weight)


def test_embed_is_what_the_head_sees():
    *_, model, tok, client = _run(0)
    texts = client.test_texts[:5]
    feats = embed(model, tok, texts)
    assert torch.allclose(model.heads["a"](feats), predict(model, tok, texts), atol=1e-6)
