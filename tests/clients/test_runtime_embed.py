"""The device graph's `pooled` output is the head's input: a device without torch can fit
heads over it in numpy and get the logits the graph gives."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fedadapt.clients.runtime import POOLED, EdgeRuntime
from fedadapt.errors import FedAdaptError
from tests.clients.conftest import link_graph

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TEXTS = ["a warm, funny film", "dull and far too long", "", "the cast is great " * 40]


def test_embed_times_the_graphs_own_head_is_the_logits(graph, tmp_path):
    rt = EdgeRuntime(link_graph(graph, tmp_path / "device"))
    emb = rt.embed(TEXTS, batch=3)  # two batches
    weight, bias = rt.head()
    assert emb.shape == (len(TEXTS), weight.shape[1])
    assert np.abs(emb @ weight.T + bias - rt.logits(TEXTS)).max() < 1e-4
    assert rt.embed([]).shape == (0, weight.shape[1])


def test_the_pooled_output_changes_no_input(graph):
    proto = onnx.load(str(graph / "model.onnx"), load_external_data=False)
    assert [o.name for o in proto.graph.output] == ["logits", POOLED]
    assert [i.name for i in proto.graph.input][:2] == ["input_ids", "attention_mask"]


def test_a_graph_without_pooled_says_to_reinstall_it(graph, tmp_path):
    device = link_graph(graph, tmp_path / "old")
    proto = onnx.load(str(graph / "model.onnx"))
    keep = [o for o in proto.graph.output if o.name != POOLED]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    (device / "model.onnx").unlink()
    onnx.save(proto, str(device / "model.onnx"))
    rt = EdgeRuntime(device)
    assert rt.logits(TEXTS[:1]).shape[0] == 1
    with pytest.raises(FedAdaptError, match="predates the pooled"):
        rt.embed(TEXTS)
