"""The ClientApp's messages, inspected: what crosses the wire is adapter deltas only."""

from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedadapt.base_model import model_dir
from fedadapt.clients.app import app
from fedadapt.codecs import decode
from fedadapt.model_setup import build_fresh_global, trainable_global_keys
from fedadapt.records import delta_blob, state_to_record
from fedadapt.simconfig import SimConfig
from tests.clients import SMALL

CFG = SimConfig(**{**SMALL.to_dict(), "codec": "int8", "personalization": "fedrep"})


def _context():
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 2},
        state=RecordDict(),
        run_config=CFG.to_dict(),
    )


def _train_message():
    content = RecordDict(
        {
            "arrays": state_to_record(build_fresh_global(CFG)),
            "config": ConfigRecord({"server-round": 1, "phase": "adapter"}),
        }
    )
    return Message(content, dst_node_id=7, message_type="train")


def test_no_base_model_tensor_crosses_the_wire():
    from safetensors import safe_open

    with safe_open(model_dir() / "model.safetensors", "pt") as f:
        base_names = set(f.keys())
    ctx = _context()
    msg = _train_message()
    reply = app(msg, ctx)
    sent = msg.content["arrays"]
    assert not base_names & set(sent.keys())
    assert not any(
        k.startswith(("embeddings.", "encoder.")) and "adapter" not in k and "head" not in k
        for k in sent
    )
    delta = decode(delta_blob(reply.content["arrays"]))
    assert not base_names & set(delta)
    assert set(reply.content.keys()) == {"arrays", "metrics", "delta-meta"}
    # exactly one adapter's trainable tensors go up; the personal part and the int8
    # error-feedback residual stay in the node's state
    assert set(delta) == set(trainable_global_keys(CFG))
    assert "personal" in ctx.state and "ef-residual" in ctx.state


def test_reply_metrics_have_the_same_keys_every_time():
    ctx = _context()
    keys = {tuple(sorted(app(_train_message(), ctx).content["metrics"].keys())) for _ in range(2)}
    assert len(keys) == 1


def test_a_restarted_node_finds_its_personal_state_in_its_device_dir(tmp_path):
    import torch

    from fedadapt.clients.app import _load

    def ctx():
        return Context(
            run_id=1,
            node_id=7,
            node_config={"partition-id": 2, "device-dir": str(tmp_path / "dev")},
            state=RecordDict(),
            run_config=CFG.to_dict(),
        )

    first = ctx()
    app(_train_message(), first)
    assert (tmp_path / "dev" / "personal.safetensors").exists()
    assert (tmp_path / "dev" / "ef-residual.safetensors").exists()
    restarted = ctx()  # a new process: empty node state, same device folder
    before, after = _load(first, "personal"), _load(restarted, "personal")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
