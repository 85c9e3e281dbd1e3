"""A HetLoRA round at the function level: clients of ranks 2, 4 and 8 train on the real base,
the server screens their replies per tier, pads them, and Flower's FedAvg averages them;
the global adapter's dense change equals the weighted mean of the clients' dense changes."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedadapt import hetlora
from fedadapt.adapters import LoraConfig
from fedadapt.codecs import encode
from fedadapt.records import pack_delta, record_to_state, state_to_record, wire_bytes
from fedadapt.server.hetlora_round import screen_tiers, slice_messages
from fedadapt.server.strategy import build_strategy
from fedadapt.simconfig import SimConfig

SHA = "a" * 64
TIERS = (2, 4, 8)
EXAMPLES = {2: 30, 4: 10, 8: 20}


def _reply(delta, rank: int | None, n: int) -> Message:
    meta = {"base-sha256": SHA, "codec": "fp32"}
    if rank is not None:
        meta[hetlora.RANK_KEY] = rank
    content = RecordDict(
        {
            "arrays": pack_delta(encode(delta)),
            "metrics": MetricRecord({"num-examples": n, "train_loss": 0.5}),
            "delta-meta": ConfigRecord(meta),
        }
    )
    return Message(content, dst_node_id=1, message_type="train")


def _train(model, name: str, start: dict, batch) -> dict:
    """A few real SGD steps of adapter `name` from `start`; returns the delta."""
    model.load_adapter_state(name, start)
    model.train_adapter(name)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    labels = torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(*batch), labels).backward()
        opt.step()
    trained = model.adapter_state(name, trainable_only=True)
    return {k: v - start[k] for k, v in trained.items()}


def _dense(state: dict, rank: int, scaling: float) -> dict[str, torch.Tensor]:
    prefixes = [k[: -len(".lora_B.weight")] for k in state if k.endswith("lora_B.weight")]
    return {
        p: scaling * state[f"{p}.lora_B.weight"][:, :rank] @ state[f"{p}.lora_A.weight"][:rank]
        for p in prefixes
    }


@pytest.mark.slow  # three short trainings on the real base
def test_mixed_rank_round_equals_the_dense_mean(fresh_model, batch):
    model = fresh_model()
    for r in TIERS:  # one base, one adapter per tier (frozen A drawn from the same seed)
        cfg = LoraConfig(r=r, lora_alpha=16.0 * r / 8, freeze_a=True, init_seed=5)
        model.add_adapter(f"r{r}", cfg, num_labels=2)
    scaling = 16.0 / 8
    global_state = model.adapter_state("r8")
    trainable = set(model.adapter_state("r8", trainable_only=True))
    replies, dense_changes = [], []
    for r in TIERS:
        delta = _train(model, f"r{r}", hetlora.truncate(global_state, r), batch)
        assert all(delta[k].abs().max() > 0 for k in delta if k.endswith("lora_B.weight"))
        after = model.adapter_state(f"r{r}")
        dense_changes.append(
            {
                k: v - _dense(hetlora.truncate(global_state, r), r, scaling)[k]
                for k, v in _dense(after, r, scaling).items()
            }
        )
        replies.append(_reply(delta, r, EXAMPLES[r]))
    replies.append(_reply(delta, None, 5))  # no tier rank: rejected, not folded
    screened = screen_tiers(
        replies,
        global_state,
        trainable,
        TIERS,
        base_sha256=SHA,
        max_bytes=10_000_000,
        fold_by="num-examples",
    )
    assert dict(screened.rejected) == {"lora-rank": 1}
    assert screened.clients == 3 and len(screened.accepted) == 3  # one mean reply per tier
    strategy = build_strategy(SimConfig(method="lora", lora_tier_ranks="2,4,8"))
    arrays, _ = strategy.aggregate_train(1, screened.accepted)
    new_global = record_to_state(arrays)
    got = _dense(new_global, 8, scaling)
    start = _dense(global_state, 8, scaling)
    total = sum(EXAMPLES.values())
    for p in got:
        expected = sum(EXAMPLES[r] * c[p] for r, c in zip(TIERS, dense_changes, strict=True))
        torch.testing.assert_close(got[p] - start[p], expected / total, rtol=0, atol=1e-5)
    # A stays the shared frozen A (up to the weighted mean's rounding)
    for k in [k for k in global_state if k.endswith("lora_A.weight")]:
        torch.testing.assert_close(new_global[k], global_state[k], rtol=0, atol=1e-6)


def test_each_node_downloads_its_tier_slice():
    g = {"x.lora_A.weight": torch.ones(8, 64), "x.lora_B.weight": torch.ones(64, 8)}
    shared = RecordDict({"arrays": state_to_record(g), "config": ConfigRecord({"phase": "a"})})
    msgs = [Message(shared, dst_node_id=n, message_type="train") for n in (1, 2, 3)]
    slice_messages(msgs, g, {1: 2, 2: 4, 3: 8}.get)
    shapes = [record_to_state(m.content["arrays"])["x.lora_B.weight"].shape for m in msgs]
    assert shapes == [(64, 2), (64, 4), (64, 8)]
    assert all(m.content["config"]["phase"] == "a" for m in msgs)
    sizes = [wire_bytes(m.content) for m in msgs]
    assert sizes[0] < sizes[1] < sizes[2]


def test_a_reply_whose_tensors_do_not_have_its_named_rank_is_rejected():
    g = {"x.lora_A.weight": torch.ones(8, 6), "x.lora_B.weight": torch.zeros(6, 8)}
    trainable = {"x.lora_B.weight"}
    replies = [
        _reply({"x.lora_B.weight": torch.ones(6, 4)}, 2, 10),  # rank 4 tensors, says 2
        _reply({"x.lora_B.weight": torch.ones(6, 4)}, True, 10),  # a bool is no rank
        _reply({"x.lora_B.weight": torch.ones(6, 4)}, 4, 10),
    ]
    s = screen_tiers(
        replies, g, trainable, TIERS, base_sha256=SHA, max_bytes=10_000, fold_by="num-examples"
    )
    assert dict(s.rejected) == {"shape": 1, "lora-rank": 1}
    (accepted,) = s.accepted
    b = record_to_state(accepted.content["arrays"])["x.lora_B.weight"]
    assert torch.equal(b[:, :4], torch.ones(6, 4)) and not b[:, 4:].any()
