import torch

from fedadapt.adapters import IA3Config


def test_ia3_vectors_have_peft_shapes_and_start_as_identity(fresh_model, batch):
    model = fresh_model()
    with torch.no_grad():
        before = model.embed(*batch)
        model.add_adapter("i", IA3Config())
        model.set_active("i")
        assert torch.equal(model.embed(*batch), before)
    state = model.adapter_state("i")
    assert state["encoder.layer.0.attention.self.key.ia3_l"].shape == (384, 1)
    assert state["encoder.layer.0.output.dense.ia3_l"].shape == (1, 1536)
    assert "encoder.layer.0.attention.self.query.ia3_l" not in state


def test_ia3_rescales_key_output_and_ffn_input(fresh_model):
    model = fresh_model()
    model.add_adapter("i", IA3Config())
    model.set_active("i")
    key = model.encoder.encoder.layer[0].attention.self.key
    ffn = model.encoder.encoder.layer[0].output.dense
    x, h = torch.randn(2, 384), torch.randn(2, 1536)
    with torch.no_grad():
        key.adapters["i"].ia3_l.fill_(2.0)
        torch.testing.assert_close(key(x), 2.0 * key.base_layer(x))
        ffn.adapters["i"].ia3_l.fill_(0.5)
        torch.testing.assert_close(ffn(h), ffn.base_layer(0.5 * h))
