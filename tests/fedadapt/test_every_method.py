"""Every adapter method a run accepts trains on the device path and travels as a delta.

`method` in the run config takes each of `FEDERATED_METHODS`; the global adapter is built by
`global_adapter_config` over the run's (int8) base with the personal bottleneck beside it. One
optimizer step must move the adapter itself (not only the head), and the delta must survive
the wire codec and land on a fresh model as the trained state.
"""

import pytest
import torch

from fedadapt.codecs import decode, encode
from fedadapt.deltas import apply_delta, check_delta, compute_delta
from fedadapt.model_setup import GLOBAL, build_model, global_adapter_config
from fedadapt.simconfig import FEDERATED_METHODS, SimConfig
from fedadapt.train import TrainConfig, train

TEXTS = ["a warm, funny film", "dull and far too long", "a small gem", "a mess from start to end"]
LABELS = [1, 0, 1, 0]


def test_every_adapter_method_is_a_federated_method():
    assert set(FEDERATED_METHODS) == {"bottleneck", "lora", "ia3", "bitfit", "prefix", "prompt"}
    assert [global_adapter_config(SimConfig(method=m)).method for m in FEDERATED_METHODS] == list(
        FEDERATED_METHODS
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", FEDERATED_METHODS)
def test_a_train_step_moves_the_adapter_and_its_delta_round_trips(method, tok, batch):
    model = build_model(SimConfig(method=method))
    model.train_adapter(GLOBAL)
    before = model.adapter_state(GLOBAL)
    start = model.adapter_state(GLOBAL, trainable_only=True)
    train(model, tok, TEXTS, LABELS, TrainConfig(lr=1e-2, batch_size=4, max_steps=1))
    delta = compute_delta(model.adapter_state(GLOBAL, trainable_only=True), start)
    moved = [k for k, v in delta.items() if not k.startswith("head.") and v.abs().max() > 0]
    assert moved, f"{method}: one step left every adapter tensor where it was"
    model.set_active(GLOBAL)
    with torch.no_grad():
        trained = model(*batch)
    received = decode(encode(delta, "fp32"))
    check_delta(received, start, required=set(start))
    model.load_adapter_state(GLOBAL, before)  # back to round start, as the server holds it
    model.load_adapter_state(GLOBAL, apply_delta(before, received))
    with torch.no_grad():
        torch.testing.assert_close(model(*batch), trained, atol=1e-5, rtol=1e-5)
