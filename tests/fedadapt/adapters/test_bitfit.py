import torch

from fedadapt.adapters import BitFitConfig


def test_bitfit_trains_only_bias_changes(fresh_model):
    model = fresh_model()
    model.add_adapter("b", BitFitConfig(), num_labels=3)
    model.train_adapter("b")
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    body = [k for k in names if not k.startswith("heads.")]
    assert body and all(k.endswith(".bias") for k in body)
    # q, k, v, attention.output.dense, intermediate.dense, output.dense in 6 layers, plus head
    assert sum(".adapters.b." in k for k in names) == 36


def test_bitfit_adds_its_bias(fresh_model):
    model = fresh_model()
    model.add_adapter("b", BitFitConfig(target_modules=["query"]))
    model.set_active("b")
    q = model.encoder.encoder.layer[1].attention.self.query
    x = torch.randn(2, 384)
    with torch.no_grad():
        q.adapters["b"].bias.fill_(0.25)
        torch.testing.assert_close(q(x), q.base_layer(x) + 0.25)
