import torch

from fedadapt.adapters import AdapterModel, LoraConfig
from fedadapt.base_model import load_base
from fedadapt.data import rotten_tomatoes
from fedadapt.train import TrainConfig, evaluate, train


def _run(seed):
    client = rotten_tomatoes.load_clients(3, seed=0)[0]
    model = AdapterModel(load_base("int8"))
    model.add_adapter("a", LoraConfig(lora_dropout=0.1), num_labels=2)
    model.train_adapter("a")
    from fedadapt.base_model import load_tokenizer

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


def test_training_fits_the_training_set():
    _, _, model, tok, client = _run(0)
    before = evaluate(model, tok, client.train_texts, client.train_labels)["loss"]
    train(model, tok, client.train_texts, client.train_labels, TrainConfig(epochs=8, batch_size=8))
    after = evaluate(model, tok, client.train_texts, client.train_labels)
    assert after["loss"] < 0.5 * before
    assert after["accuracy"] >= 0.9


def test_training_leaves_the_base_untouched():
    from fedadapt.adapters.layer import logical_name

    *_, model, _, _ = _run(0)
    fresh = load_base("int8").encoder.state_dict()
    trained = {
        logical_name(k): v for k, v in model.encoder.state_dict().items() if ".adapters." not in k
    }
    assert set(trained) == set(fresh)
    assert all(torch.equal(trained[k], fresh[k]) for k in fresh)
