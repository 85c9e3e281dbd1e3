"""The ClientApp under HetLoRA tiers: a node trains its tier's rank and says so in its reply."""

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedadapt import hetlora
from fedadapt.clients.app import app
from fedadapt.codecs import decode
from fedadapt.model_setup import build_fresh_global
from fedadapt.records import delta_blob, state_to_record
from fedadapt.simconfig import SimConfig
from tests.clients import SMALL

CFG = SimConfig(**{**SMALL.to_dict(), "method": "lora", "lora_tier_ranks": "2,4,8"})


@pytest.mark.slow  # loads the int8 base and trains one local epoch
def test_a_tier_0_node_trains_rank_2_from_the_global_rank_8_state():
    global_state = build_fresh_global(hetlora.global_config(CFG))
    assert global_state["encoder.layer.0.attention.self.query.lora_B.weight"].shape == (384, 8)
    ctx = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "tier": 0},
        state=RecordDict(),
        run_config=CFG.to_dict(),
    )
    content = RecordDict(
        {
            "arrays": state_to_record(global_state),  # a full-rank state is cut on the device
            "config": ConfigRecord({"server-round": 1, "phase": "adapter"}),
        }
    )
    reply = app(Message(content, dst_node_id=7, message_type="train"), ctx)
    assert reply.content["delta-meta"][hetlora.RANK_KEY] == 2
    delta = decode(delta_blob(reply.content["arrays"]))
    b = [v for k, v in delta.items() if k.endswith("lora_B.weight")]
    assert b and all(v.shape == (384, 2) for v in b)
    assert not any(k.endswith("lora_A.weight") for k in delta)  # FFA-LoRA: A stays frozen
